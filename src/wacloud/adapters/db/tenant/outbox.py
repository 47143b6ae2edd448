"""The outbox side of a tenant DB: insert rows (API/CLI), check them before sending, and write
send results back without ever moving a row backwards.

One send at a time per row, whatever the queue delivers: before calling the provider, an
attempt takes the row's send lease (`begin_attempt_in`: a random `send_owner` token and a
`send_lease_until`), only if the row is open, has no provider message id and no live lease of
another attempt. The attempt then writes its outcome on the row itself (`record_outcome_in`)
in the send stage's group commit: an acceptance is visible to every later copy at once, not
when the save stage gets to it. Outcomes other than acceptance apply only while the row is
still their attempt's (`send_owner` matches), so a late or redelivered result (pending for
order or pause, queued for a retry, failed) can never move a row that has moved on: a row
sent back to the outbox has no owner any more, and a newer attempt has its own.

Claiming rows atomically is in `claim.py` (one construct per database).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from wacloud.adapters.db.tenant import tables as t
from wacloud.adapters.db.tenant.store import TenantStore
from wacloud.adapters.db.types import utcnow
from wacloud.domain.model import DELIVERY_RANK, OutboundStatus

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
    # The row was sent back to the outbox (pending) in the same transaction, unless another
    # attempt holds it or it is no longer queued.
    earlier_waiting: bool = False
    # Set when THIS attempt holds the send lease: only then may it call the provider.
    owner: str | None = None
    # Another attempt's live lease, until when (None: no live lease of another).
    lease_until: datetime | None = None
    # When the row first failed temporarily (None: it has not yet).
    retry_since: datetime | None = None

    @property
    def open(self) -> bool:
        """Still to be sent: not past the queue and without a provider message id."""
        return self.status in OPEN and not self.provider_message_id


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


def row_ids_for(engine: Engine, channel: str, provider_message_ids: list[str]
                ) -> dict[str, int]:
    """{provider message id: outbox row id} of the rows sent through `channel` with those ids
    (for the log: a receipt names the trace of the message it is about)."""
    if not provider_message_ids:
        return {}
    with engine.connect() as conn:
        rows = conn.execute(sa.select(t.outbound_messages.c.provider_message_id,
                                      t.outbound_messages.c.id).where(
            t.outbound_messages.c.channel == channel,
            t.outbound_messages.c.provider_message_id.in_(provider_message_ids))).all()
    return {str(pmid): int(row_id) for pmid, row_id in rows}


def get_outbound(engine: Engine, row_id: int) -> Any | None:
    with engine.connect() as conn:
        return conn.execute(sa.select(t.outbound_messages).where(
            t.outbound_messages.c.id == row_id)).mappings().first()


def begin_attempt(engine: Engine, row_id: int, *, owner: str,
                  lease_seconds: float) -> OutboxState | None:
    """Take the row's send lease for attempt `owner` and count the attempt; None if the row
    is gone. The caller may call the provider only if the state's `owner` is its own."""
    with engine.begin() as conn:
        return begin_attempt_in(conn, row_id, owner=owner, lease_seconds=lease_seconds)


def begin_attempt_in(conn: Connection, row_id: int, *, owner: str, lease_seconds: float,
                     channel: str | None = None,
                     recipient: str | None = None) -> OutboxState | None:
    """`begin_attempt` inside the caller's transaction (e.g. a group commit). Given the row's
    channel and recipient, it first looks for an earlier message to that recipient still
    waiting (sent back to the outbox, or claimed by a slower collector); then nothing is
    counted, the row goes back to pending in this same transaction (so no late result can do
    it after the row moved on) and the state says `earlier_waiting`."""
    now = utcnow()
    if channel is not None and recipient is not None:
        earlier = conn.execute(_EARLIER_WAITING, {"row_id": row_id, "channel": channel,
                                                  "recipient": recipient}).first()
        if earlier is not None:
            conn.execute(_BACK_FOR_ORDER, {"row_id": row_id, "now": now})
            state = _state(conn, row_id, owner, now)
            if state is not None:
                state.earlier_waiting = True
            return state
    params = {"row_id": row_id, "now": now, "owner": owner,
              "until": now + timedelta(seconds=lease_seconds)}
    if conn.dialect.update_returning:
        row = conn.execute(_TAKE_LEASE_RETURNING, params).first()
        if row is not None:
            return OutboxState(int(row[0]), row[1], int(row[2]), owner=owner,
                               retry_since=row[3])
    else:  # MySQL / MariaDB: no UPDATE ... RETURNING; the owner read back says who won
        conn.execute(_TAKE_LEASE, params)
    # Not taken (not open, or leased by another), or MySQL: its state says which.
    return _state(conn, row_id, owner, now)


def _state(conn: Connection, row_id: int, owner: str, now: datetime) -> OutboxState | None:
    row = conn.execute(_STATE, {"row_id": row_id}).first()
    if row is None:
        return None
    mine = row[3] == owner
    lease_until: datetime | None = row[4]
    live = lease_until is not None and lease_until > now and not mine
    return OutboxState(int(row[0]), row[1], int(row[2]), owner=owner if mine else None,
                       lease_until=lease_until if live else None, retry_since=row[5])


def release_lease_in(conn: Connection, row_id: int, *, owner: str) -> bool:
    """Give the lease back before the provider was called (the message waits for pacing or
    a rate-limit slot and is released by the queue): its next delivery may take the row at
    once, and the attempt is not counted (it never reached the provider)."""
    result = conn.execute(_RELEASE_LEASE, {"row_id": row_id, "owner": owner,
                                           "now": utcnow()})
    return result.rowcount > 0


def record_outcome_in(conn: Connection, row_id: int, *, owner: str | None, status: int,
                      provider_message_id: str | None = None, error_code: str | None = None,
                      error_reason: str | None = None,
                      response_excerpt: str | None = None) -> bool:
    """Write a send attempt's outcome on its row, in the send stage's transaction. Acceptance
    always applies to an open row (it is a fact: the message is on its way); pending (a
    paused channel), queued (a temporary error, to be retried) and failed only while the row
    is still attempt `owner`'s. Without an owner (the send stage gave up before taking the
    lease: unknown or paused channel) only while no attempt holds a live lease. Pending
    clears the owner, so that nothing of this attempt can move the row again. Receipts that
    arrived early are applied by `save_result_in`, which both stages call."""
    params: dict[str, Any] = {
        "row_id": row_id, "now": utcnow(), "owner": owner,
        "excerpt": response_excerpt[:2000] if response_excerpt is not None else None}
    code = OutboundStatus(status)
    if code is OutboundStatus.ACCEPTED:
        result = conn.execute(_ACCEPT, {**params, "pmid": provider_message_id})
        if result.rowcount == 0 and provider_message_id:
            conn.execute(_FILL_PROVIDER_ID, {**params, "pmid": provider_message_id})
        return result.rowcount > 0
    statement = (_SET_OWNED if owner is not None else _SET_OUTCOME).get(code)
    if statement is None:
        raise ValueError(f"send results do not set status {code.name}")
    result = conn.execute(statement, {**params, "error_code": error_code,
                                      "error_reason": error_reason[:1000] if error_reason
                                      else None})
    return result.rowcount > 0


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
                   channel: str | None = None, owner: str | None = None) -> bool:
    """`save_result` inside the caller's transaction (e.g. a group commit); `channel`, when
    the caller knows it, saves looking it up. A result of attempt `owner` other than an
    acceptance only applies while the row is still that attempt's (see `record_outcome_in`);
    results without one (queued by an older version) only while no attempt holds a lease."""
    changed = record_outcome_in(conn, row_id, owner=owner, status=status,
                                provider_message_id=provider_message_id, error_code=error_code,
                                error_reason=error_reason, response_excerpt=response_excerpt)
    if OutboundStatus(status) is OutboundStatus.ACCEPTED and provider_message_id:
        if channel is None:
            channel = conn.execute(_CHANNEL_OF, {"row_id": row_id}).scalar()
        if channel is not None:
            store.apply_known_receipts(conn, str(channel), [provider_message_id])
    return changed


# The statements above, built once: building them per call (SQLAlchemy's expression objects and
# cache keys) cost more CPU than running them, and every outbound message runs two or three.
_o = t.outbound_messages


def _status_in(values: list[int]) -> sa.ColumnElement[bool]:
    """`status IN (0, 1, 2)` with the numbers in the SQL text: a list of bound values is
    expanded again on every execution (SQLAlchemy's post-compile step), at a cost close to
    that of running the statement."""
    return _o.c.status.in_([sa.literal_column(str(int(v))) for v in values])


_ROW = _o.c.id == sa.bindparam("row_id")
_NOW = sa.bindparam("now", type_=_o.c.updated_at.type)
_EXCERPT = sa.func.coalesce(sa.bindparam("excerpt", type_=_o.c.response_excerpt.type),
                            _o.c.response_excerpt)
_STATE = sa.select(_o.c.status, _o.c.provider_message_id, _o.c.attempts, _o.c.send_owner,
                   _o.c.send_lease_until, _o.c.retry_since).where(_ROW)
_OWNER = sa.bindparam("owner", type_=_o.c.send_owner.type)
_NO_LIVE_LEASE = sa.or_(_o.c.send_lease_until.is_(None), _o.c.send_lease_until < _NOW)
_ORDER_REASON = "waits for an earlier message to the same recipient"
# Waiting: pending or reserved (back in the outbox, or claimed by a slower collector), or
# queued with no attempt counted since (its queue message has not reached the send stage: with
# several collectors it may be behind this one in the queue, or lost until the stale reclaim
# queues it again). A queued row already attempted is not waiting: its message came first (it
# is backing off, or another copy is sending it). A lease given back before the provider was
# called uncounts its attempt, but that message is then delayed ahead in the FIFO group.
_EARLIER_WAITING = sa.select(_o.c.id).where(
    _o.c.channel == sa.bindparam("channel"), _o.c.recipient == sa.bindparam("recipient"),
    _o.c.id < sa.bindparam("row_id"),
    sa.or_(_status_in([OutboundStatus.PENDING.value, OutboundStatus.RESERVED.value]),
           sa.and_(_o.c.status == OutboundStatus.QUEUED.value,
                   _o.c.queued_attempts == _o.c.attempts)),
    _o.c.provider_message_id.is_(None)).limit(1)
_TAKE_LEASE = _o.update().where(_ROW, _o.c.provider_message_id.is_(None),
                                _status_in(OPEN), _NO_LIVE_LEASE).values(
    attempts=_o.c.attempts + 1, updated_at=_NOW, send_owner=_OWNER,
    send_lease_until=sa.bindparam("until", type_=_o.c.send_lease_until.type))
_TAKE_LEASE_RETURNING = _TAKE_LEASE.returning(_o.c.status, _o.c.provider_message_id,
                                              _o.c.attempts, _o.c.retry_since)
_RELEASE_LEASE = _o.update().where(_ROW, _o.c.send_owner == _OWNER,
                                   _o.c.send_lease_until.is_not(None)).values(
    send_lease_until=None, updated_at=_NOW,
    attempts=sa.case((_o.c.attempts > 0, _o.c.attempts - 1), else_=0))
# Back to the outbox behind an earlier message, unless another attempt is sending it now.
_BACK_FOR_ORDER = _o.update().where(
    _ROW, _o.c.provider_message_id.is_(None),
    _status_in([OutboundStatus.RESERVED.value, OutboundStatus.QUEUED.value]),
    _NO_LIVE_LEASE).values(
    status=OutboundStatus.PENDING.value, reserved_at=None, queued_at=None, error_code="order",
    error_reason=_ORDER_REASON, send_owner=None, send_lease_until=None, updated_at=_NOW)
_ACCEPT = _o.update().where(_ROW, _status_in(OPEN)).values(
    status=OutboundStatus.ACCEPTED.value, provider_message_id=sa.bindparam("pmid"),
    accepted_at=_NOW, error_code=None, error_reason=None, updated_at=_NOW,
    response_excerpt=_EXCERPT, send_lease_until=None)
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
_OUTCOME_VALUES: dict[OutboundStatus, dict[str, Any]] = {
    # Back to the outbox: nothing of this attempt may move the row again, and a paused
    # channel's rows get a fresh retry budget once a person has fixed it.
    OutboundStatus.PENDING: {"reserved_at": None, "queued_at": None, "send_owner": None,
                             "send_lease_until": None, "retry_since": None},
    OutboundStatus.QUEUED: {"send_lease_until": None,
                            "retry_since": sa.func.coalesce(_o.c.retry_since, _NOW)},
    OutboundStatus.FAILED: {"send_lease_until": None},
}


def _set_outcome(code: OutboundStatus, allowed: list[int], *guard: Any) -> sa.Update:
    return _o.update().where(_ROW, _status_in(allowed), *guard).values(
        status=code.value, error_code=sa.bindparam("error_code"),
        error_reason=sa.bindparam("error_reason"), updated_at=_NOW, response_excerpt=_EXCERPT,
        **_OUTCOME_VALUES.get(code, {}))


# Results of a known attempt: only while the row is still that attempt's. Results without one
# (a send stage that never took the lease, or queued by an older version): only while no
# attempt holds a live lease (one is calling the provider right now) and the row has no
# provider message id.
_SET_OWNED: dict[OutboundStatus, sa.Update] = {
    code: _set_outcome(code, allowed, _o.c.send_owner == _OWNER)
    for code, allowed in _OUTCOME_FROM.items() if code is not OutboundStatus.NOT_QUEUED}
_SET_OUTCOME: dict[OutboundStatus, sa.Update] = {
    code: _set_outcome(code, allowed, _NO_LIVE_LEASE, _o.c.provider_message_id.is_(None))
    for code, allowed in _OUTCOME_FROM.items()}


def requeue_failed(engine: Engine, row_id: int) -> bool:
    """Before a dead letter is replayed: its row goes from failed back to queued, with its
    attempts reset, so the send stage will try it again."""
    table = t.outbound_messages
    with engine.begin() as conn:
        result = conn.execute(table.update().where(
            table.c.id == row_id, table.c.status == OutboundStatus.FAILED.value,
            table.c.provider_message_id.is_(None)).values(
            status=OutboundStatus.QUEUED.value, attempts=0, updated_at=utcnow(),
            send_owner=None, send_lease_until=None, retry_since=None,
            # Its message goes back at the end of the queue: later rows wait for it.
            queued_attempts=0))
        return result.rowcount > 0
