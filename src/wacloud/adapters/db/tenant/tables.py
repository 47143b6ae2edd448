"""Tables of a tenant's own database.

- `messages`: every inbound message (and Whapi `from_me` echoes, direction "out"), normalized
  columns plus the raw provider JSON; unique on (channel, provider_message_id).
- `outbound_messages`: the outbox that the tenant's systems (or our API) fill; status codes
  keep the original system's numbers (see `wacloud.domain.model.OutboundStatus`).
- `status_events`: the history of every delivery receipt, kept even for messages not yet known.
- `notices`: other provider events that named this tenant's channels (errors, account updates).
"""

from __future__ import annotations

import sqlalchemy as sa

from wacloud.adapters.db.types import Id, LongText, UtcDateTime, key_string

metadata = sa.MetaData()

messages = sa.Table(
    "messages", metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("provider", sa.String(16), nullable=False),
    sa.Column("channel", key_string(), nullable=False),
    sa.Column("provider_message_id", key_string(), nullable=False),
    sa.Column("direction", sa.String(3), nullable=False),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("sender", sa.String(191), nullable=True),
    sa.Column("recipient", sa.String(191), nullable=True),
    sa.Column("contact_wa_id", sa.String(64), nullable=True, index=True),
    sa.Column("contact_user_id", sa.String(191), nullable=True, index=True),
    sa.Column("contact_name", sa.Unicode(255), nullable=True),
    sa.Column("text", LongText, nullable=True),
    sa.Column("reply_to", key_string(), nullable=True),
    sa.Column("timestamp", sa.BigInteger, nullable=True),
    sa.Column("content", sa.JSON, nullable=True),
    sa.Column("errors", sa.JSON, nullable=True),
    # For echoes of our own messages: the delivery receipt reached so far (sent, read, ...).
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("media_status", sa.String(16), nullable=True),
    sa.Column("media_key", sa.String(500), nullable=True),
    sa.Column("media_mime_type", sa.String(191), nullable=True),
    sa.Column("media_sha256", sa.String(128), nullable=True),
    sa.Column("media_size", sa.BigInteger, nullable=True),
    sa.Column("media_filename", sa.Unicode(500), nullable=True),
    sa.Column("media_provider_id", sa.String(191), nullable=True),
    sa.Column("media_link", LongText, nullable=True),
    sa.Column("media_error", sa.Unicode(1000), nullable=True),
    sa.Column("raw", sa.JSON, nullable=True),
    sa.Column("received_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    # The WhatsApp group the message was said in (None: a direct message); answer there.
    sa.Column("group_id", sa.String(191), nullable=True),
    sa.UniqueConstraint("channel", "provider_message_id", name="uq_messages_channel_msgid"),
    sa.Index("ix_messages_received_at", "received_at"),  # retention purges by age
)

outbound_messages = sa.Table(
    "outbound_messages", metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("channel", key_string(), nullable=False),
    sa.Column("recipient", sa.String(191), nullable=True),
    sa.Column("type", sa.String(32), nullable=True),
    sa.Column("content", sa.JSON, nullable=True),  # the type's object in Meta's send format
    sa.Column("reply_to", key_string(), nullable=True),
    sa.Column("client_reference", sa.Unicode(191), nullable=True),
    # Legacy rows carry a ready HTTP request; credentials still come from the channel.
    sa.Column("request_url", sa.String(1000), nullable=True),
    sa.Column("request_body", LongText, nullable=True),
    sa.Column("request_headers", sa.Unicode(2000), nullable=True),
    # Server defaults let the tenant's own systems insert a row with just its message.
    sa.Column("status", sa.Integer, nullable=False, server_default="0"),
    sa.Column("provider_message_id", key_string(), nullable=True, index=True),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("error_code", sa.String(32), nullable=True),
    sa.Column("error_reason", sa.Unicode(1000), nullable=True),
    sa.Column("response_excerpt", sa.Unicode(2000), nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False,
              server_default=sa.func.current_timestamp()),
    sa.Column("updated_at", UtcDateTime, nullable=False,
              server_default=sa.func.current_timestamp()),
    sa.Column("reserved_at", UtcDateTime, nullable=True),
    sa.Column("queued_at", UtcDateTime, nullable=True),
    sa.Column("accepted_at", UtcDateTime, nullable=True),
    sa.Column("delivered_at", UtcDateTime, nullable=True),
    sa.Column("read_at", UtcDateTime, nullable=True),
    # The send lease: the attempt (a random token) that may call the provider for this row,
    # and until when; a copy of the send message that finds a live lease of another attempt
    # does not send. Results only apply while the row is still their attempt's.
    sa.Column("send_owner", sa.String(32), nullable=True),
    sa.Column("send_lease_until", UtcDateTime, nullable=True),
    # When the row first failed temporarily: the retry budget runs from here.
    sa.Column("retry_since", UtcDateTime, nullable=True),
    # "group": `recipient` is a group id (Meta Groups API); NULL: one person (phone or BSUID).
    sa.Column("recipient_type", sa.String(16), nullable=True),
    # The tenant API's Idempotency-Key and a hash of the body first sent with it: a retried
    # POST gets this row back (a different body under the same key is refused).
    sa.Column("idempotency_key", key_string(), nullable=True),
    sa.Column("request_hash", sa.String(64), nullable=True),
    # Validity: a row still unsent at this time fails as `expired` instead of being sent.
    sa.Column("expires_at", UtcDateTime, nullable=True),
    # `attempts` when the row was last queued: equal while its queue message has not reached
    # the send stage, so later messages to the same recipient wait for it.
    sa.Column("queued_attempts", sa.Integer, nullable=True),
    sa.Index("ix_outbound_messages_status_id", "status", "id"),
    sa.Index("ix_outbound_messages_created_at", "created_at"),
    # Order per recipient: the send stage looks for an earlier message still waiting.
    sa.Index("ix_outbound_messages_conversation", "channel", "recipient", "id"),
    sa.Index("ux_outbound_messages_idempotency_key", "idempotency_key", unique=True,
             mssql_where=sa.text("idempotency_key IS NOT NULL")),
)

status_events = sa.Table(
    "status_events", metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("provider", sa.String(16), nullable=False),
    sa.Column("channel", key_string(), nullable=False),
    sa.Column("provider_message_id", key_string(), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("timestamp", sa.BigInteger, nullable=False),
    sa.Column("recipient", sa.String(191), nullable=True),
    sa.Column("recipient_user_id", sa.String(191), nullable=True),
    sa.Column("errors", sa.JSON, nullable=True),
    sa.Column("raw", sa.JSON, nullable=True),
    sa.Column("received_at", UtcDateTime, nullable=False),
    sa.UniqueConstraint("channel", "provider_message_id", "status", "timestamp",
                        name="uq_status_events"),
    sa.Index("ix_status_events_msgid", "channel", "provider_message_id"),
    sa.Index("ix_status_events_received_at", "received_at"),
)

notices = sa.Table(
    "notices", metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("provider", sa.String(16), nullable=False),
    sa.Column("channel", key_string(), nullable=False),
    sa.Column("field", sa.String(64), nullable=False),
    # A hash of the notice, so a redelivered webhook does not store it twice.
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("errors", sa.JSON, nullable=True),
    sa.Column("raw", sa.JSON, nullable=True),
    sa.Column("received_at", UtcDateTime, nullable=False),
    sa.UniqueConstraint("channel", "fingerprint", name="uq_notices_fingerprint"),
    sa.Index("ix_notices_received_at", "received_at"),
)
