"""The outbox side of a tenant DB: insert rows (API/CLI), check them before sending, and write
send results back without ever moving a row backwards.

Claiming rows atomically is in `claim.py` (one construct per database).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from wacloud.adapters.db import tenant as t
from wacloud.adapters.db.tenant_store import TenantStore
from wacloud.adapters.db.types import utcnow
from wacloud.model import DELIVERY_RANK, OutboundStatus

ACCEPTED_OR_LATER = [c.value for c, r in DELIVERY_RANK.items()
                     if r >= DELIVERY_RANK[OutboundStatus.ACCEPTED] and c is not
                     OutboundStatus.FAILED]
OPEN = [OutboundStatus.PENDING.value, OutboundStatus.RESERVED.value,
        OutboundStatus.QUEUED.value]


@dataclass(slots=True)
class OutboxState:
    status: int
    provider_message_id: str | None
    attempts: int
    # An earlier message to the same recipient is still waiting: this one must not pass it.
    earlier_waiting: bool = False


def insert_outbound(engine: Engine, *, channel: str, recipient: str, type: str,
                    content: dict[str, Any], reply_to: str | None = None,
                    client_reference: str | None = None,
                    recipient_type: str | None = None) -> int:
    now = utcnow()
    with engine.begin() as conn:
        result = conn.execute(t.outbound_messages.insert().values(
            channel=channel, recipient=recipient, type=type, content=content,
            reply_to=reply_to, client_reference=client_reference,
            recipient_type=recipient_type,
            status=OutboundStatus.PENDING.value, attempts=0, created_at=now, updated_at=now))
        key = result.inserted_primary_key
        assert key is not None
        return int(key[0])


def get_outbound(engine: Engine, row_id: int) -> Any | None:
    with engine.connect() as conn:
        return conn.execute(sa.select(t.outbound_messages).where(
            t.outbound_messages.c.id == row_id)).mappings().first()


def begin_attempt(engine: Engine, row_id: int) -> OutboxState | None:
    """Count one more attempt before a send; None if the row is gone. The caller must not send
    a row that already has a provider message id or is past the queue (it was sent)."""
    with engine.begin() as conn:
        return begin_attempt_in(conn, row_id)


def begin_attempt_in(conn: Connection, row_id: int, *, channel: str | None = None,
                     recipient: str | None = None) -> OutboxState | None:
    """`begin_attempt` inside the caller's transaction (e.g. a group commit). Given the row's
    channel and recipient, it first looks for an earlier message to that recipient still
    pending or reserved (sent back to the outbox, or claimed by a slower collector); then
    nothing is counted and the state says `earlier_waiting`."""
    if channel is not None and recipient is not None:
        earlier = conn.execute(_EARLIER_WAITING, {"row_id": row_id, "channel": channel,
                                                  "recipient": recipient}).first()
        if earlier is not None:
            row = conn.execute(_STATE, {"row_id": row_id}).first()
            return None if row is None else OutboxState(int(row[0]), row[1], int(row[2]),
                                                        earlier_waiting=True)
    params = {"row_id": row_id, "now": utcnow()}
    if conn.dialect.update_returning:
        row = conn.execute(_COUNT_ATTEMPT_RETURNING, params).first()
        if row is None:  # not open any more (or gone): its state says which
            row = conn.execute(_STATE, params).first()
    else:  # MySQL / MariaDB: no UPDATE ... RETURNING
        conn.execute(_COUNT_ATTEMPT, params)
        row = conn.execute(_STATE, params).first()
    if row is None:
        return None
    return OutboxState(int(row[0]), row[1], int(row[2]))


def save_result(store: TenantStore, row_id: int, *, status: int,
                provider_message_id: str | None = None, error_code: str | None = None,
                error_reason: str | None = None, response_excerpt: str | None = None) -> bool:
    """Write a send result. Idempotent, and forward only: a receipt that arrived first (a
    delivered before the accepted) is never overwritten. Returns whether the row changed."""
    with store.engine.begin() as conn:
        return save_result_in(conn, store, row_id, status=status,
                              provider_message_id=provider_message_id, error_code=error_code,
                              error_reason=error_reason, response_excerpt=response_excerpt)


def save_result_in(conn: Connection, store: TenantStore, row_id: int, *, status: int,
                   provider_message_id: str | None = None, error_code: str | None = None,
                   error_reason: str | None = None, response_excerpt: str | None = None,
                   channel: str | None = None) -> bool:
    """`save_result` inside the caller's transaction (e.g. a group commit); `channel`, when
    the caller knows it, saves looking it up."""
    params: dict[str, Any] = {
        "row_id": row_id, "now": utcnow(),
        "excerpt": response_excerpt[:2000] if response_excerpt is not None else None}
    code = OutboundStatus(status)
    if code is OutboundStatus.ACCEPTED:
        result = conn.execute(_ACCEPT, {**params, "pmid": provider_message_id})
        if provider_message_id:
            if result.rowcount == 0:
                # Fill the id even when a receipt already moved the row past accepted.
                conn.execute(_FILL_PROVIDER_ID, {**params, "pmid": provider_message_id})
            if channel is None:
                channel = conn.execute(_CHANNEL_OF, params).scalar()
            if channel is not None:
                store.apply_known_receipts(conn, str(channel), [provider_message_id])
        return result.rowcount > 0
    statement = _SET_OUTCOME.get(code)
    if statement is None:
        raise ValueError(f"send results do not set status {code.name}")
    result = conn.execute(statement, {**params, "error_code": error_code,
                                      "error_reason": error_reason[:1000] if error_reason
                                      else None})
    return result.rowcount > 0


# The statements above, built once: building them per call (SQLAlchemy's expression objects and
# cache keys) cost more CPU than running them, and every outbound message runs two or three.
_o = t.outbound_messages
_ROW = _o.c.id == sa.bindparam("row_id")
_NOW = sa.bindparam("now", type_=_o.c.updated_at.type)
_EXCERPT = sa.func.coalesce(sa.bindparam("excerpt", type_=_o.c.response_excerpt.type),
                            _o.c.response_excerpt)
_STATE = sa.select(_o.c.status, _o.c.provider_message_id, _o.c.attempts).where(_ROW)
_EARLIER_WAITING = sa.select(_o.c.id).where(
    _o.c.channel == sa.bindparam("channel"), _o.c.recipient == sa.bindparam("recipient"),
    _o.c.id < sa.bindparam("row_id"),
    _o.c.status.in_([OutboundStatus.PENDING.value, OutboundStatus.RESERVED.value]),
    _o.c.provider_message_id.is_(None)).limit(1)
_COUNT_ATTEMPT = _o.update().where(_ROW, _o.c.provider_message_id.is_(None),
                                   _o.c.status.in_(OPEN)).values(
    attempts=_o.c.attempts + 1, updated_at=_NOW)
_COUNT_ATTEMPT_RETURNING = _COUNT_ATTEMPT.returning(_o.c.status, _o.c.provider_message_id,
                                                    _o.c.attempts)
_ACCEPT = _o.update().where(_ROW, _o.c.status.in_(OPEN)).values(
    status=OutboundStatus.ACCEPTED.value, provider_message_id=sa.bindparam("pmid"),
    accepted_at=_NOW, error_code=None, error_reason=None, updated_at=_NOW,
    response_excerpt=_EXCERPT)
_FILL_PROVIDER_ID = _o.update().where(_ROW, _o.c.provider_message_id.is_(None)).values(
    provider_message_id=sa.bindparam("pmid"))
_CHANNEL_OF = sa.select(_o.c.channel).where(_ROW)
# Which rows each other result may move: failed / could-not-queue only from an open status;
# pending (a paused channel) back from reserved or queued; queued (a temporary error shown).
_OUTCOME_FROM = {
    OutboundStatus.FAILED: OPEN,
    OutboundStatus.NOT_QUEUED: OPEN,
    OutboundStatus.PENDING: [OutboundStatus.RESERVED.value, OutboundStatus.QUEUED.value],
    OutboundStatus.QUEUED: [OutboundStatus.QUEUED.value, OutboundStatus.RESERVED.value],
}
_SET_OUTCOME = {code: _o.update().where(_ROW, _o.c.status.in_(allowed)).values(
    status=code.value, error_code=sa.bindparam("error_code"),
    error_reason=sa.bindparam("error_reason"), updated_at=_NOW, response_excerpt=_EXCERPT)
    for code, allowed in _OUTCOME_FROM.items()}


def requeue_failed(engine: Engine, row_id: int) -> bool:
    """Before a dead letter is replayed: its row goes from failed back to queued, with its
    attempts reset, so the send stage will try it again."""
    table = t.outbound_messages
    with engine.begin() as conn:
        result = conn.execute(table.update().where(
            table.c.id == row_id, table.c.status == OutboundStatus.FAILED.value,
            table.c.provider_message_id.is_(None)).values(
            status=OutboundStatus.QUEUED.value, attempts=0, updated_at=utcnow()))
        return result.rowcount > 0
