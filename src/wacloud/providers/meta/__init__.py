"""Meta WhatsApp Cloud API: the provider port (`MetaProvider`) over its modules: `inbound`
(webhook parsing), `webhook_auth` (signatures, handshake), `media` (Graph media lookup),
`outbound` (send requests, answers) and `checks` (token checks). The Graph error code table
is `wacloud.providers.errors`, shared with Chakra."""

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
from wacloud.providers.errors import graph_error_code
from wacloud.providers.media import MediaDownload
from wacloud.providers.meta import checks, inbound, media, outbound
from wacloud.providers.meta import webhook_auth as auth
from wacloud.providers.token_check import TokenCheck


class MetaProvider(ProviderPort):
    provider = Provider.META
    default_base_url = "https://graph.facebook.com"
    media_hosts = ("graph.facebook.com", "lookaside.fbsbx.com", ".fbcdn.net", ".whatsapp.net")
    webhook_auth = WebhookAuth.SIGNED_BODY
    webhook_path = "/webhooks/meta"
    signature_header = auth.SIGNATURE_HEADER
    routes_by_account = True
    key_is_number = True
    api_name = "the Graph API"

    def parse_webhook(self, payload: JSON, channel_key: str | None) -> list[Event]:
        return inbound.parse_webhook(payload)

    def verify_signature(self, body: bytes, signature: str | None,
                         secrets: Iterable[str]) -> bool:
        return auth.verify_signature(body, signature, secrets)

    def sign(self, body: bytes, secret: str) -> str:
        return auth.sign(body, secret)

    def signing_ids(self, payload: object) -> tuple[set[str], set[str]]:
        return auth.routing_ids(payload)

    def verify_challenge(self, query: Mapping[str, str], tokens: Iterable[str]) -> str | None:
        return auth.verify_challenge(query, tokens)

    def other_object(self, body: bytes) -> str | None:
        return auth.other_object(body)

    def media_lookup(self, channel: Channel, media_ref: MediaRef) -> ProviderRequest | None:
        if media_ref.link and not media_ref.provider_media_id:
            return None
        return media.lookup_request(channel, media_ref)

    def read_media_lookup(self, channel: Channel, media_ref: MediaRef, status: int,
                          body: bytes) -> MediaDownload:
        return media.read_lookup(channel, media_ref, status, body)

    def media_download(self, channel: Channel, media_ref: MediaRef) -> MediaDownload:
        return media.link_download(media_ref)

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

    def check_error_code(self, body: bytes) -> int | None:
        return graph_error_code(body)
