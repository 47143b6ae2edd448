"""The shapes of the admin API and the tenant API as pydantic models.

Request models validate what the admin API accepts (a body or query the model refuses is a 422
`{"error": ...}`), and the OpenAPI document (`wacloud.admin.openapi`) is generated from the same
models, so the two cannot drift. Response models describe what the handlers answer; the tests
check every answer against them. The tenant API keeps its own validation
(`wacloud.domain.submission`); its model here takes the message types and limits from there, and the
document's examples are checked against that validation in the tests.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from wacloud.domain.submission import MAX_IDEMPOTENCY_KEY, MAX_TTL_S, TYPES
from wacloud.domain.validation import SLUG_RULE


class Request(BaseModel):
    """A request body or query: unknown fields are refused (a typo must not pass silently)."""

    model_config = ConfigDict(extra="forbid")


class Answer(BaseModel):
    """An answer: fields added later are not a break for clients."""

    model_config = ConfigDict(extra="allow")


class Error(Answer):
    error: str = Field(description="What went wrong and what to do; every 4xx has one.")


# -- tenants and channels -----------------------------------------------------------------


class TenantCreate(Request):
    slug: str = Field(min_length=1, max_length=64, description=f"The tenant's slug: {SLUG_RULE}.")
    db_url: str | None = Field(None, description="SQLAlchemy URL of the tenant's own "
                               "database (default: a SQLite file in the data dir). Its schema "
                               "is created first: a database that cannot be used registers "
                               "nothing.")


class Tenant(Answer):
    id: int
    slug: str
    own_db: bool
    retention_days: int | None
    channels: int


# Field rules are `wacloud.domain.validation`'s (the CLI's, with the same words); lengths here
# are the registry's columns, which PostgreSQL or MariaDB would otherwise refuse only when written.
ProviderId = Annotated[str, Field(min_length=1, max_length=128)]


class _ChannelCreate(Request):
    tenant: str = Field(min_length=1, max_length=64)
    token: str = Field(min_length=1, description="The provider's API token (never shown "
                       "again).")
    api_base_url: str | None = Field(None, max_length=255, description=(
        "Replace the provider's API origin (https; plain http only with "
        "WACLOUD_DEV_ALLOW_LOCAL_URLS)."))
    mps: int = Field(80, ge=1, le=10_000, description="Messages per second allowed.")
    media_hosts: list[str] = Field(default_factory=list, max_length=50, description=(
        "Other hosts this channel may fetch media from (host, host:port or .domain)."))



class MetaChannelCreate(_ChannelCreate):
    provider: Literal["meta"]
    phone_number_id: ProviderId
    waba_id: ProviderId
    display_number: str = Field(min_length=1, max_length=32)
    app_secret: str = Field(min_length=1)
    verify_token: str = Field(min_length=1)
    graph_version: str = Field("v23.0", max_length=16, description="Like v23.0.")

    def registry_values(self) -> dict[str, Any]:
        return self.model_dump() | {"key": self.phone_number_id}


class WhapiChannelCreate(_ChannelCreate):
    provider: Literal["whapi"]
    channel_id: ProviderId
    webhook_secret: str = Field(min_length=1)

    def registry_values(self) -> dict[str, Any]:
        return self.model_dump(exclude={"channel_id"}) | {"key": self.channel_id}


class ChakraChannelCreate(_ChannelCreate):
    provider: Literal["chakra"]
    plugin_id: ProviderId
    phone_number_id: ProviderId
    webhook_secret: str = Field(min_length=1)
    graph_version: str = Field("v23.0", max_length=16, description="Like v23.0.")

    def registry_values(self) -> dict[str, Any]:
        return self.model_dump(exclude={"plugin_id"}) | {"key": self.plugin_id}


class ChannelCreate(RootModel[Annotated[
        MetaChannelCreate | WhapiChannelCreate | ChakraChannelCreate,
        Field(discriminator="provider")]]):
    """A channel of one provider, with what `wacloud channel add PROVIDER` asks for."""


class Channel(Answer):
    id: int
    tenant: str
    provider: Literal["meta", "whapi", "chakra"]
    key: str = Field(description="The routing id: Meta phone_number_id, Whapi channel id, "
                     "Chakra plugin id.")
    phone_number_id: str | None
    waba_id: str | None
    display_number: str | None
    api_base_url: str
    graph_version: str
    mps: int
    media_hosts: list[str]
    paused: bool
    pause_reason: str | None
    webhook_path: str = Field(description="Where the provider posts this channel's webhooks.")
    last_inbound_at: datetime | None


class ChannelQuery(Request):
    tenant: str | None = Field(None, description="Only this tenant's channels.")


class PauseRequest(Request):
    reason: str = Field("paused by an operator", min_length=1, max_length=500)


class TokenReplace(Request):
    token: str = Field(min_length=1, description="The new token; the channel is resumed.")


class TokenReplaced(Answer):
    id: int
    token_replaced: bool
    paused: bool
    was_paused: bool


class TokenCheck(Answer):
    ok: bool
    http_status: int | None = Field(description="The provider's HTTP status (None: no "
                                    "answer).")
    error_code: str | None
    error: str | None
    details: dict[str, Any] = Field(description="What the provider said about the number "
                                    "or session (never the token).")


class ChannelHealth(Answer):
    id: int
    tenant: str
    provider: str
    key: str
    paused: bool
    pause_reason: str | None
    last_inbound_at: datetime | None = Field(description="When an event of this channel's "
                                             "webhooks was last stored.")
    window_s: int
    sent: int = Field(description="Outbox rows the provider took, updated in the window.")
    errors: int
    errors_by_code: dict[str, int]
    rate_limit_hits: int = Field(description="Rows whose last error is 130429.")
    error: str | None = Field(description="Set when the tenant database could not be read.")


# -- messages -----------------------------------------------------------------------------


class MessageQuery(Request):
    channel: str | None = Field(None, max_length=191, description="The channel's provider id.")
    contact: str | None = Field(None, max_length=191, description=(
        "Phone number / wa_id, BSUID or group id."))
    direction: Literal["in", "out"] | None = None
    status: str | None = Field(None, max_length=32, description="received, queued, accepted, sent, "
                               "delivered, read, failed, ...")
    since: datetime | None = Field(None, description="ISO 8601; inclusive.")
    until: datetime | None = Field(None, description="ISO 8601; exclusive.")
    limit: int = Field(50, ge=1, le=500)
    cursor: str | None = Field(None, max_length=200, description=(
        "`next_cursor` of the previous page."))


class NoticeQuery(Request):
    limit: int = Field(100, ge=1, le=1000, description="The latest this many, oldest first.")


class Notice(Answer):
    """A webhook-level event that named a channel: Meta `value.errors[]`, account or template
    updates, Whapi channel health."""

    id: int
    provider: str
    channel: str
    field: str
    errors: list[dict[str, Any]]
    raw: dict[str, Any]
    received_at: str | None


class ProviderErrorOut(Answer):
    code: str | None
    reason: str | None


class Message(Answer):
    """A message as `wacloud messages --json` prints it (inbound rows carry `contact`,
    `media`, `received_at`; outbound rows `attempts`, `client_reference`, `expires_at`)."""

    id: int
    source: Literal["messages", "outbound"]
    channel: str
    direction: Literal["in", "out"]
    type: str | None
    status: str
    status_code: int | None
    provider_message_id: str | None
    error: ProviderErrorOut | None


class MessagePage(Answer):
    tenant: str
    messages: list[Message]
    next_cursor: str | None


class TimelineEvent(Answer):
    status: str = Field(description="created, reserved, queued, accepted, sent, delivered, "
                        "read, failed, received, media_stored, ...")
    at: datetime | None
    source: Literal["row", "receipt", "provider"]
    error: dict[str, Any] | None


class Receipt(Answer):
    status: str
    timestamp: int
    at: datetime
    received_at: datetime | None
    errors: list[dict[str, Any]]


class MessageDetail(Message):
    tenant: str
    timeline: list[TimelineEvent]
    receipts: list[Receipt]


# -- queues, dead letters, parked items -------------------------------------------------------


class QueueStats(Answer):
    name: str
    fifo: bool
    visible: int
    in_flight: int
    delayed: int
    dead: int = Field(description="Messages in its dead-letter queue.")
    oldest_age_s: float | None


class DeadLetterQuery(Request):
    queue: str | None = Field(None, description="Only this queue's dead letters.")


class DeadLetter(Answer):
    """Never the body: ids, size, times, the last failure and whom it concerns."""

    id: str
    queue: str
    size: int
    sent_at: datetime
    receive_count: int
    reason: str | None
    tenant: str | None


class Selection(Request):
    ids: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        None, min_length=1, max_length=10_000, description="These ids ...")
    all: bool = Field(False, description="... or every one (give one of the two).")


class Discard(Selection):
    reason: str = Field(min_length=1, max_length=1000, description="Why (kept in the "
                        "discard record of the data dir).")


class Replayed(Answer):
    replayed: list[str | int]


class Discarded(Answer):
    discarded: list[str | int]
    reason: str


class ParkedQuery(Request):
    include_replayed: bool = False


class ParkedItem(Answer):
    id: int
    created_at: datetime
    stage: str
    provider: str | None
    channel_key: str | None
    reason: str
    replayed_at: datetime | None
    replay_count: int
    size: int
    signed_body: bool


class ParkedDetail(ParkedItem):
    payload: Any = Field(description="What was parked (parsed when it is JSON).")


# -- the tenant API -------------------------------------------------------------------------


class MessageSubmission(BaseModel):
    """`POST /v1/messages`: Meta's send format. The object named by `type` (e.g. `text`,
    `template`, `image`) carries the content; validated by `wacloud.domain.submission`."""

    model_config = ConfigDict(extra="allow")

    channel: str = Field(description="The channel's provider id (Meta phone_number_id, Whapi "
                         "channel id, Chakra plugin id).")
    type: Literal[tuple(sorted(TYPES))]  # type: ignore[valid-type]
    to: str | None = Field(None, description="Phone number / wa_id, or a group id with "
                           "`recipient_type` group. Required unless `recipient` is given.")
    recipient: str | None = Field(None, description="A business-scoped user id (BSUID, like "
                                  "BR.1502576394655843); `to` wins when both are given.")
    recipient_type: Literal["individual", "group"] = "individual"
    reply_to: str | None = Field(None, description="Message id to reply to (or Meta's "
                                 "`context.message_id`).")
    client_reference: str | None = Field(None, max_length=191)
    ttl_s: float | None = Field(None, gt=0, le=MAX_TTL_S, description="Validity in seconds: "
                                "still unsent then, the message fails as `expired`.")
    expires_at: str | int | None = Field(None, description="Or the validity as a time: ISO "
                                         "8601 (UTC when no offset) or unix seconds; at most "
                                         "30 days ahead.")
    text: dict[str, Any] | None = None
    template: dict[str, Any] | None = None
    image: dict[str, Any] | None = None
    document: dict[str, Any] | None = None


class Submission(Answer):
    id: int
    status: str
    status_code: int
    channel: str
    to: str | None
    recipient_type: str
    type: str | None
    client_reference: str | None
    expires_at: datetime | None


class OutboundMessage(Message):
    attempts: int
    client_reference: str | None
    expires_at: datetime | None


SUBMISSION_EXAMPLES: dict[str, dict[str, Any]] = {
    "text": {"summary": "A text message", "value": {
        "channel": "106540352242922", "to": "5511987654321", "type": "text",
        "text": {"body": "Seu pedido saiu para entrega."}, "client_reference": "order-1234"}},
    "template": {"summary": "A template (outside the 24 h window)", "value": {
        "channel": "106540352242922", "to": "5511987654321", "type": "template",
        "template": {"name": "order_update", "language": {"code": "pt_BR"}, "components": [
            {"type": "body", "parameters": [{"type": "text", "text": "1234"}]}]}}},
    "media": {"summary": "An image by link", "value": {
        "channel": "106540352242922", "to": "5511987654321", "type": "image",
        "image": {"link": "https://example.com/receipt.png", "caption": "Seu recibo"}}},
    "group": {"summary": "To a WhatsApp group", "value": {
        "channel": "106540352242922", "to": "120363025246125888", "recipient_type": "group",
        "type": "text", "text": {"body": "Bom dia, equipe!"}}},
    "bsuid": {"summary": "To a business-scoped user id", "value": {
        "channel": "106540352242922", "recipient": "BR.1502576394655843", "type": "text",
        "text": {"body": "Olá!"}}},
    "validity": {"summary": "A one-time password valid for 5 minutes", "value": {
        "channel": "106540352242922", "to": "5511987654321", "type": "text",
        "text": {"body": "Seu código: 123456"}, "ttl_s": 300}},
    "expires_at": {"summary": "Valid until a given time", "value": {
        "channel": "106540352242922", "to": "5511987654321", "type": "text",
        "text": {"body": "Promoção até meia-noite"}, "expires_at": "2026-12-31T23:59:59Z"}},
}
IDEMPOTENCY_KEY_MAX = MAX_IDEMPOTENCY_KEY
