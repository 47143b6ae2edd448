"""Whapi.Cloud: the provider port (`WhapiProvider`) over its modules: `inbound` (webhook
parsing), `media` (download requests), `outbound` (send requests, answers and the channel-state
error texts) and `checks` (token checks). Webhooks carry the channel's secret, not a
signature."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from wacloud.domain.model import (
    JSON,
    Channel,
    Event,
    MediaRef,
    OutboundMessage,
    Provider,
    ProviderRequest,
    SendResult,
)
from wacloud.providers.base import ProviderPort, WebhookAuth
from wacloud.providers.media import MediaDownload
from wacloud.providers.token_check import TokenCheck
from wacloud.providers.whapi import checks, inbound, media, outbound


class WhapiProvider(ProviderPort):
    provider = Provider.WHAPI
    default_base_url = "https://gate.whapi.cloud"
    # Whapi's "Auto Download" links point at its Wasabi S3 buckets.
    media_hosts = ("gate.whapi.cloud", ".whapi.cloud", ".wasabisys.com")
    webhook_auth = WebhookAuth.CHANNEL_SECRET
    webhook_path = "/webhooks/whapi/"

    def parse_webhook(self, payload: JSON, channel_key: str | None) -> list[Event]:
        return inbound.parse_webhook(payload, channel_key=channel_key)

    def media_download(self, channel: Channel, media_ref: MediaRef) -> MediaDownload:
        return media.media_download(channel, media_ref)

    def build_send(self, channel: Channel, message: OutboundMessage) -> ProviderRequest:
        return outbound.build_send(channel, message)

    def classify(self, status: int, body: bytes, headers: Mapping[str, str], *,
                 secrets: Iterable[str] = ()) -> SendResult:
        return outbound.classify(status, body, headers, secrets=secrets)

    def token_check_request(self, channel: Channel) -> ProviderRequest:
        return checks.token_check_request(channel)

    def read_token_check(self, channel: Channel, status: int, body: bytes) -> TokenCheck:
        return checks.read_token_check(channel, status, body)

    def number_check_request(self, channel: Channel) -> ProviderRequest:
        return checks.number_check_request(channel)
