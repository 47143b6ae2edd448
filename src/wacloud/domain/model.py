"""Normalized records that flow between stages.

Provider modules turn provider JSON into these; stages and adapters only see these. Every
record converts to and from plain JSON-able dicts so it can cross a queue.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

JSON = dict[str, Any]


class Provider(enum.StrEnum):
    META = "meta"
    WHAPI = "whapi"
    CHAKRA = "chakra"


class Direction(enum.StrEnum):
    IN = "in"
    OUT = "out"


class MediaStatus(enum.StrEnum):
    """Where a message's media file is: copied to our store, still being fetched, or given up."""

    STORED = "stored"
    PENDING = "pending"
    FAILED = "failed"


class OutboundStatus(enum.IntEnum):
    """Outbound row status codes. The original system's numbers are kept (0, 1, 2, 3, -99, -100)
    so that existing readers of tenant tables keep working; 4..7 and -101 come from status
    webhooks after the provider accepted the message."""

    PENDING = 0
    RESERVED = 1
    QUEUED = 2
    ACCEPTED = 3
    SENT = 4
    DELIVERED = 5
    READ = 6
    PLAYED = 7
    NOT_QUEUED = -99
    FAILED = -100
    FAILED_AFTER_ACCEPT = -101

    @property
    def label(self) -> str:
        return self.name.lower()


# Rank of delivery receipts: a row only ever moves to a higher rank. "failed" after acceptance
# ranks just above "accepted" so that a later delivered/read (multi-device) still supersedes it,
# while a stale "sent" cannot undo it.
DELIVERY_RANK: dict[OutboundStatus, int] = {
    OutboundStatus.PENDING: 0,
    OutboundStatus.RESERVED: 1,
    OutboundStatus.QUEUED: 2,
    OutboundStatus.NOT_QUEUED: 2,
    OutboundStatus.FAILED: 3,
    OutboundStatus.ACCEPTED: 3,
    OutboundStatus.SENT: 4,
    OutboundStatus.FAILED_AFTER_ACCEPT: 5,
    OutboundStatus.DELIVERED: 6,
    OutboundStatus.READ: 7,
    OutboundStatus.PLAYED: 8,
}

RECEIPT_STATUS: dict[str, OutboundStatus] = {
    "sent": OutboundStatus.SENT,
    "delivered": OutboundStatus.DELIVERED,
    "read": OutboundStatus.READ,
    "played": OutboundStatus.PLAYED,
    "failed": OutboundStatus.FAILED_AFTER_ACCEPT,
}


def receipt_rank(status: str) -> int:
    """Rank of a delivery receipt name (unknown names rank lowest)."""
    code = RECEIPT_STATUS.get(status)
    return DELIVERY_RANK[code] if code is not None else 0


def shallow_dict(instance: Any) -> JSON:
    """A dataclass's fields as a dict, values as they are (no copies, unlike `asdict`)."""
    return {f.name: getattr(instance, f.name) for f in fields(instance)}


@dataclass(slots=True)
class ProviderError:
    """An error as the provider reported it (Meta `errors[]`, a Whapi error, ...)."""

    code: str
    reason: str
    details: str | None = None

    @classmethod
    def from_dict(cls, data: JSON) -> ProviderError:
        return cls(code=str(data.get("code", "")), reason=str(data.get("reason", "")),
                   details=data.get("details"))


@dataclass(slots=True)
class MediaRef:
    """A media attachment: where the provider keeps it, and (once copied) where we keep it."""

    provider_media_id: str | None = None
    link: str | None = None  # a direct download URL given in the webhook (Whapi auto-download)
    mime_type: str | None = None
    sha256: str | None = None  # as the provider gave it (hex or base64); verified on download
    size: int | None = None
    filename: str | None = None
    key: str | None = None  # our object-store key once stored
    status: MediaStatus = MediaStatus.PENDING
    error: str | None = None

    def to_dict(self) -> JSON:
        data = shallow_dict(self)
        data["status"] = self.status.value
        return data

    @classmethod
    def from_dict(cls, data: JSON) -> MediaRef:
        values = dict(data)
        values["status"] = MediaStatus(values.get("status", MediaStatus.PENDING))
        return cls(**values)


# Meta's business-scoped user id: a country code, then dot-separated letters and digits.
_BSUID = re.compile(r"^[A-Za-z]{2}(?:\.[A-Za-z0-9]+)+$")


def is_bsuid(recipient: str) -> bool:
    """Whether a recipient is a Meta BSUID rather than a phone number / wa_id."""
    return bool(_BSUID.match(recipient))


@dataclass(slots=True)
class Contact:
    """Who sent (or, for echoes, received) a message: phone (wa_id) and/or Meta's BSUID."""

    wa_id: str | None = None
    user_id: str | None = None
    name: str | None = None


@dataclass(slots=True)
class InboundMessage:
    """One message from a webhook, of any type, normalized.

    `channel_key` is the provider id that routes it (Meta phone_number_id, Whapi channel_id,
    Chakra plugin id); `account_key` is the fallback route (Meta WABA id)."""

    provider: Provider
    channel_key: str
    provider_message_id: str
    type: str
    direction: Direction = Direction.IN
    account_key: str | None = None
    sender: str | None = None
    recipient: str | None = None
    contact: Contact = field(default_factory=Contact)
    text: str | None = None
    reply_to: str | None = None
    timestamp: int | None = None
    content: JSON = field(default_factory=dict)
    media: MediaRef | None = None
    errors: list[ProviderError] = field(default_factory=list)
    raw: JSON = field(default_factory=dict)
    # Set when the message was said in a WhatsApp group (Meta Groups API `group_id`, a Whapi
    # `...@g.us` chat): replies go to the group, not to `sender`.
    group_id: str | None = None

    kind = "message"

    def to_dict(self) -> JSON:
        # Field by field: `asdict` deep-copies `raw` and `content`, which cost more than the
        # rest of a media job; every caller serializes the dict at once, so they are shared.
        data = shallow_dict(self)
        data["kind"] = self.kind
        data["provider"] = self.provider.value
        data["direction"] = self.direction.value
        data["contact"] = shallow_dict(self.contact)
        data["media"] = self.media.to_dict() if self.media else None
        data["errors"] = [shallow_dict(error) for error in self.errors]
        return data

    @classmethod
    def from_dict(cls, data: JSON) -> InboundMessage:
        values = {k: v for k, v in data.items() if k != "kind"}
        values["provider"] = Provider(values["provider"])
        values["direction"] = Direction(values.get("direction", "in"))
        values["contact"] = Contact(**(values.get("contact") or {}))
        values["media"] = MediaRef.from_dict(values["media"]) if values.get("media") else None
        values["errors"] = [ProviderError.from_dict(e) for e in values.get("errors") or []]
        return cls(**values)


@dataclass(slots=True)
class StatusUpdate:
    """A delivery receipt for a message we sent: sent, delivered, read, played or failed."""

    provider: Provider
    channel_key: str
    provider_message_id: str
    status: str
    account_key: str | None = None
    timestamp: int | None = None
    recipient: str | None = None
    recipient_user_id: str | None = None
    errors: list[ProviderError] = field(default_factory=list)
    raw: JSON = field(default_factory=dict)

    kind = "status"

    def to_dict(self) -> JSON:
        data = asdict(self)
        data["kind"] = self.kind
        data["provider"] = self.provider.value
        return data

    @classmethod
    def from_dict(cls, data: JSON) -> StatusUpdate:
        values = {k: v for k, v in data.items() if k != "kind"}
        values["provider"] = Provider(values["provider"])
        values["errors"] = [ProviderError.from_dict(e) for e in values.get("errors") or []]
        return cls(**values)


@dataclass(slots=True)
class ProviderNotice:
    """Anything else a webhook carried that names a channel: Meta `value.errors[]`, account or
    template updates, Whapi channel health. Kept in the tenant's event log, never dropped."""

    provider: Provider
    channel_key: str
    field: str
    account_key: str | None = None
    errors: list[ProviderError] = dataclasses.field(default_factory=list)
    raw: JSON = dataclasses.field(default_factory=dict)

    kind = "notice"

    def to_dict(self) -> JSON:
        data = asdict(self)
        data["kind"] = self.kind
        data["provider"] = self.provider.value
        return data

    @classmethod
    def from_dict(cls, data: JSON) -> ProviderNotice:
        values = {k: v for k, v in data.items() if k != "kind"}
        values["provider"] = Provider(values["provider"])
        values["errors"] = [ProviderError.from_dict(e) for e in values.get("errors") or []]
        return cls(**values)


Event = InboundMessage | StatusUpdate | ProviderNotice


def event_from_dict(data: JSON) -> Event:
    kind = data.get("kind")
    if kind == "message":
        return InboundMessage.from_dict(data)
    if kind == "status":
        return StatusUpdate.from_dict(data)
    if kind == "notice":
        return ProviderNotice.from_dict(data)
    raise ValueError(f"unknown event kind: {kind!r}")


class PayloadError(ValueError):
    """A webhook body that cannot be understood: it is parked, never dropped."""


@dataclass(slots=True)
class Channel:
    """A sending/receiving WhatsApp number as the registry knows it, secrets decrypted.

    Only the credentials broker builds these; `__repr__` hides every secret so a channel can
    never leak one through a log line or a traceback."""

    id: int
    tenant: str
    provider: Provider
    key: str  # the routing id: Meta phone_number_id, Whapi channel_id, Chakra plugin_id
    phone_number_id: str | None = None
    waba_id: str | None = None
    display_number: str | None = None
    api_base_url: str | None = None
    graph_version: str = "v23.0"
    mps: int = 80
    paused: bool = False
    pause_reason: str | None = None
    # Extra hosts ("host", "host:port" or ".domain") this channel may fetch media from,
    # besides its provider's own (SSRF allow list, see wacloud.security.urlpolicy).
    media_hosts: tuple[str, ...] = ()
    token: str = field(default="", repr=False)
    app_secret: str | None = field(default=None, repr=False)
    verify_token: str | None = field(default=None, repr=False)
    webhook_secret: str | None = field(default=None, repr=False)

    # Each provider's API origin, for channels that set no `api_base_url`: filled by the
    # provider registry (`wacloud.providers`, from each port's `default_base_url`), so this
    # module names no provider.
    DEFAULT_BASE_URLS: ClassVar[dict[Provider, str]] = {}

    @property
    def base_url(self) -> str:
        return (self.api_base_url or self.DEFAULT_BASE_URLS[self.provider]).rstrip("/")


@dataclass(slots=True)
class OutboundMessage:
    """One outbox row on its way to a provider.

    `type` and `content` are in Meta's send format: `content` is the type's object (for text:
    `{"body": ..., "preview_url": ...}`; for media: `{"link"|"id": ..., "caption", "filename"}`;
    for template: `{"name", "language", "components"}`; for mark-as-read: type "read" and
    content `{"message_id": ...}`). Legacy rows instead carry a ready request
    (`request_url`, `request_body`, `request_headers` = "Name:Value;Name2:Value2", never
    credentials: those come from the channel at send time)."""

    tenant: str
    row_id: int
    channel_key: str
    recipient: str | None = None
    type: str | None = None
    content: JSON = field(default_factory=dict)
    reply_to: str | None = None
    client_reference: str | None = None
    request_url: str | None = None
    request_body: str | None = None
    request_headers: str | None = None
    created_at: float = 0.0
    recipient_type: str | None = None
    # Unix time after which the message must not be sent (the API's `ttl_s` / `expires_at`).
    expires_at: float | None = None

    @property
    def is_legacy(self) -> bool:
        return self.request_url is not None

    def to_dict(self) -> JSON:
        # Shallow: every field is a JSON value already, and the dict is serialized at once
        # (`asdict` deep-copied `content`, a few percent of the outbound pipeline's CPU).
        return {name: getattr(self, name) for name in _OUTBOUND_FIELDS}

    @classmethod
    def from_dict(cls, data: JSON) -> OutboundMessage:
        return cls(**data)


_OUTBOUND_FIELDS = tuple(f.name for f in fields(OutboundMessage))


class SendOutcome(enum.StrEnum):
    ACCEPTED = "accepted"  # the provider took it: store its message id, status 3
    RETRY = "retry"  # temporary: try again after a backoff (or the provider's Retry-After)
    FAILED = "failed"  # permanent for this message: status -100 with the reason
    PAUSE = "pause"  # token or account problem: pause the channel, the message waits


@dataclass(slots=True)
class SendResult:
    """A provider's answer to one send, classified by its error code (not HTTP status alone)."""

    outcome: SendOutcome
    provider_message_id: str | None = None
    error: ProviderError | None = None
    retry_after: float | None = None
    http_status: int | None = None
    response_excerpt: str | None = None
    # 131056: only this recipient must slow down; 130429: the whole number must.
    recipient_throttled: bool = False
    channel_throttled: bool = False


@dataclass(slots=True)
class ProviderRequest:
    """An HTTP request a provider module built; the send stage performs it."""

    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    json: JSON | None = None
    content: bytes | None = None
    # multipart uploads: field name -> (filename, path on disk, mime type)
    files: dict[str, tuple[str, str, str]] | None = None
    data: dict[str, str] | None = None
