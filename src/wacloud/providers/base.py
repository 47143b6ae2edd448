"""The provider port: everything the gateway needs to know about one WhatsApp provider.

Stages, hosts and adapters never name a provider: they look its `ProviderPort` up in the
registry (`wacloud.providers.PROVIDERS`, once per route or channel) and call it. A port is
pure: it builds requests and reads answers, and its callers do the I/O (the webhook receiver,
the media copier, the send stage, the token checks).

Two kinds of webhook authentication exist (`WebhookAuth`):
- SIGNED_BODY (Meta): one fixed path for every channel; each body carries an HMAC of itself
  made with an app secret, checked against the secrets of the channels it names; the path
  also answers a GET verification handshake.
- CHANNEL_SECRET (Whapi, Chakra): one path per channel, `<webhook_path><channel key>`; the
  channel's webhook secret comes as `Authorization: Bearer ...` or `?token=...`.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Iterable, Mapping
from typing import ClassVar

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
from wacloud.providers.errors import UnsupportedMessage
from wacloud.providers.media import MediaDownload
from wacloud.providers.token_check import TokenCheck


class WebhookAuth(enum.Enum):
    SIGNED_BODY = "signed_body"
    CHANNEL_SECRET = "channel_secret"


class ChannelMisconfigured(Exception):
    """The channel lacks something every send needs (Chakra: Meta's phone_number_id). Not the
    message's fault: the caller should pause the channel, not fail the row."""


class UploadError(ValueError):
    """A provider did not take a media upload. `temporary` is True for 429/5xx answers."""

    def __init__(self, reason: str, temporary: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.temporary = temporary


class ProviderPort(abc.ABC):
    """One provider, as the gateway sees it. Subclasses set the class attributes and
    implement the abstract methods; the others have the defaults most providers want."""

    provider: ClassVar[Provider]
    # The API origin of a channel that sets no `api_base_url`.
    default_base_url: ClassVar[str]
    # Hosts it serves media from besides the channel's API origin ("host", or ".domain" for
    # any subdomain; the scheme's default port only). The SSRF allow list starts from these.
    media_hosts: ClassVar[tuple[str, ...]]
    webhook_auth: ClassVar[WebhookAuth]
    # SIGNED_BODY: the exact path; CHANNEL_SECRET: the prefix the channel key follows.
    webhook_path: ClassVar[str]
    # SIGNED_BODY: the header (lower case) carrying the body's signature.
    signature_header: ClassVar[str | None] = None
    # Whether an event whose channel key is unknown may route by its account id (Meta: the
    # WABA id, when it has a single number).
    routes_by_account: ClassVar[bool] = False
    # Whether a channel's key is its phone number id (Meta), when none is set apart.
    key_is_number: ClassVar[bool] = False
    # What a failed lookup call is said to have missed, in media errors.
    api_name: ClassVar[str] = "the provider"

    # -- webhooks --------------------------------------------------------------------------

    def channel_webhook_path(self, channel_key: str) -> str:
        """The path a channel's provider is pointed at."""
        if self.webhook_auth is WebhookAuth.CHANNEL_SECRET:
            return f"{self.webhook_path}{channel_key}"
        return self.webhook_path

    @abc.abstractmethod
    def parse_webhook(self, payload: JSON, channel_key: str | None) -> list[Event]:
        """Every event of a webhook body (a JSON object), in order; `channel_key` is the one
        its URL named (None on a SIGNED_BODY path). PayloadError when it is not this
        provider's webhook or an item lacks its id: the caller parks the whole body."""

    def verify_signature(self, body: bytes, signature: str | None,
                         secrets: Iterable[str]) -> bool:
        """SIGNED_BODY: whether `signature` signs `body` with one of `secrets`."""
        return False

    def sign(self, body: bytes, secret: str) -> str:
        """SIGNED_BODY: the signature header's value the provider sends with `body` signed
        by `secret` (what the fake provider and the tests sign with)."""
        raise NotImplementedError(f"{self.provider.value} does not sign its webhooks")

    def signing_ids(self, payload: object) -> tuple[set[str], set[str]]:
        """SIGNED_BODY: (channel keys, account ids) a body names, to pick the secrets that
        may have signed it. Never raises."""
        return set(), set()

    def verify_challenge(self, query: Mapping[str, str], tokens: Iterable[str]) -> str | None:
        """SIGNED_BODY: the answer to a GET on the webhook path, or None (403)."""
        return None

    def other_object(self, body: bytes) -> str | None:
        """A signed body of another product sharing the webhook path, as a metric label (it
        is answered and counted, not queued); None for this provider's own bodies."""
        return None

    # -- media -----------------------------------------------------------------------------

    def media_lookup(self, channel: Channel, media: MediaRef) -> ProviderRequest | None:
        """The API call that says where a media file is, when the file's URL is not known
        yet (then `read_media_lookup` reads its answer); None when `media_download` can tell
        at once. MediaResolveError when neither can."""
        return None

    def read_media_lookup(self, channel: Channel, media: MediaRef, status: int,
                          body: bytes) -> MediaDownload:
        raise NotImplementedError(f"{self.provider.value} has no media lookup")

    @abc.abstractmethod
    def media_download(self, channel: Channel, media: MediaRef) -> MediaDownload:
        """The GET that returns the file, when `media_lookup` said no lookup is needed."""

    # -- sending ---------------------------------------------------------------------------

    @abc.abstractmethod
    def build_send(self, channel: Channel, message: OutboundMessage) -> ProviderRequest:
        """The request that sends `message`. UnsupportedMessage when this provider cannot
        send it, ChannelMisconfigured when the channel lacks what every send needs."""

    @abc.abstractmethod
    def classify(self, status: int, body: bytes, headers: Mapping[str, str], *,
                 secrets: Iterable[str] = ()) -> SendResult:
        """What a send's answer means for the outbox row; `secrets` never reach the result."""

    def rehost_link(self, message: OutboundMessage) -> str | None:
        """A media link the sender must download and upload to the provider (`upload_request`,
        `read_upload`, `with_link`) before sending, or None."""
        return None

    def upload_request(self, channel: Channel, filename: str, path: str,
                       mime_type: str) -> ProviderRequest:
        raise NotImplementedError(f"{self.provider.value} does not re-host media")

    def read_upload(self, status: int, body: bytes) -> str:
        """The URL an upload's answer gives the file; UploadError otherwise."""
        raise NotImplementedError(f"{self.provider.value} does not re-host media")

    def with_link(self, message: OutboundMessage, url: str) -> OutboundMessage:
        raise UnsupportedMessage(f"{self.provider.value} does not re-host media")

    # -- token checks ----------------------------------------------------------------------

    @abc.abstractmethod
    def token_check_request(self, channel: Channel) -> ProviderRequest:
        """One cheap read-only call that tells whether the token is accepted (admin API)."""

    @abc.abstractmethod
    def read_token_check(self, channel: Channel, status: int, body: bytes) -> TokenCheck:
        """What the answer to `token_check_request` says about the token."""

    @abc.abstractmethod
    def number_check_request(self, channel: Channel) -> ProviderRequest:
        """One read call that needs a token allowed to use the channel's number (doctor)."""

    def check_error_code(self, body: bytes) -> int | None:
        """The provider's numeric error code in an error answer (Graph's), if it has one."""
        return None
