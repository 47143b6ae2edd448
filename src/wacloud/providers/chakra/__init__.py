"""Chakra (chakrahq.com): the provider port (`ChakraProvider`) over its modules: `inbound`
(Meta's parser, routed by plugin id), `media` (Chakra's media endpoint), `outbound` (Meta's
send body through the plugin, media re-hosting, Chakra's answers) and `checks`. Meta's error
code table (`wacloud.providers.errors`) classifies its errors too. Webhooks carry the
channel's secret, not a signature."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from wacloud.domain.model import (
    JSON,
    Channel,
    Event,
    MediaRef,
    OutboundMessage,
    PayloadError,
    Provider,
    ProviderRequest,
    SendResult,
)
from wacloud.providers.base import ProviderPort, WebhookAuth
from wacloud.providers.chakra import checks, inbound, media, outbound
from wacloud.providers.errors import graph_error_code
from wacloud.providers.media import MediaDownload
from wacloud.providers.token_check import TokenCheck


class ChakraProvider(ProviderPort):
    provider = Provider.CHAKRA
    default_base_url = "https://api.chakrahq.com"
    media_hosts = ("api.chakrahq.com", ".chakrahq.com")
    webhook_auth = WebhookAuth.CHANNEL_SECRET
    webhook_path = "/webhooks/chakra/"

    def parse_webhook(self, payload: JSON, channel_key: str | None) -> list[Event]:
        if not channel_key:
            raise PayloadError("chakra webhook without a plugin id")
        return inbound.parse_webhook(payload, plugin_id=channel_key)

    def media_download(self, channel: Channel, media_ref: MediaRef) -> MediaDownload:
        return media.media_download(channel, media_ref)

    def build_send(self, channel: Channel, message: OutboundMessage) -> ProviderRequest:
        return outbound.build_send(channel, message)

    def classify(self, status: int, body: bytes, headers: Mapping[str, str], *,
                 secrets: Iterable[str] = ()) -> SendResult:
        return outbound.classify(status, body, headers, secrets=secrets)

    def rehost_link(self, message: OutboundMessage) -> str | None:
        return outbound.media_link(message)

    def upload_request(self, channel: Channel, filename: str, path: str,
                       mime_type: str) -> ProviderRequest:
        return outbound.upload_request(channel, filename, path, mime_type)

    def read_upload(self, status: int, body: bytes) -> str:
        return outbound.parse_upload(status, body)

    def with_link(self, message: OutboundMessage, url: str) -> OutboundMessage:
        return outbound.with_link(message, url)

    def token_check_request(self, channel: Channel) -> ProviderRequest:
        return checks.token_check_request(channel)

    def read_token_check(self, channel: Channel, status: int, body: bytes) -> TokenCheck:
        return checks.read_token_check(channel, status, body)

    def number_check_request(self, channel: Channel) -> ProviderRequest:
        return checks.number_check_request(channel)

    def check_error_code(self, body: bytes) -> int | None:
        return graph_error_code(body)
