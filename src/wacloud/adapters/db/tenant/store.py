"""Reads and writes on one tenant's database: store events idempotently, move receipts forward.

Everything here is synchronous SQLAlchemy Core; stages call it through a thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

from wacloud.adapters.db.dialect import insert_ignore
from wacloud.adapters.db.migrate import upgrade
from wacloud.adapters.db.tenant import tables as t
from wacloud.adapters.db.tenant.group_commit import GroupCommit
from wacloud.adapters.db.tenant.views import row_to_inbound
from wacloud.adapters.db.types import utcnow
from wacloud.domain.model import (
    DELIVERY_RANK,
    RECEIPT_STATUS,
    Direction,
    InboundMessage,
    MediaRef,
    MediaStatus,
    OutboundStatus,
    ProviderError,
    ProviderNotice,
    StatusUpdate,
    receipt_rank,
)

T = TypeVar("T")

# Status names of message rows (echoes of our own messages) ranked like receipts.
MESSAGE_STATUS_RANK = {"received": 0, "pending": 1, "accepted": 3, "sent": 4, "failed": 5,
                       "delivered": 6, "read": 7, "played": 8}


@dataclass(slots=True)
class StoreResult:
    messages_inserted: int = 0
    statuses_inserted: int = 0
    notices_inserted: int = 0
    pending_media: list[InboundMessage] = field(default_factory=list)


def message_row(message: InboundMessage, now: Any) -> dict[str, Any]:
    media = message.media
    status = "received"
    if message.direction is Direction.OUT:
        raw_status = str(message.raw.get("status", ""))
        status = raw_status if raw_status in MESSAGE_STATUS_RANK else "accepted"
    return {
        "provider": message.provider.value, "channel": message.channel_key,
        "provider_message_id": message.provider_message_id,
        "direction": message.direction.value, "type": message.type, "sender": message.sender,
        "recipient": message.recipient, "contact_wa_id": message.contact.wa_id,
        "contact_user_id": message.contact.user_id, "contact_name": message.contact.name,
        "text": message.text, "reply_to": message.reply_to, "timestamp": message.timestamp,
        "content": message.content or None,
        "errors": [{"code": e.code, "reason": e.reason, "details": e.details}
                   for e in message.errors] or None,
        "status": status,
        "media_status": media.status.value if media else None,
        "media_key": media.key if media else None,
        "media_mime_type": media.mime_type if media else None,
        "media_sha256": media.sha256 if media else None,
        "media_size": media.size if media else None,
        "media_filename": media.filename if media else None,
        "media_provider_id": media.provider_media_id if media else None,
        "media_link": media.link if media else None,
        "media_error": media.error if media else None,
        "raw": message.raw, "received_at": now, "updated_at": now,
        "group_id": message.group_id,
    }


# Built once: each accepted send looks here (building the statement per call cost more CPU
# than running it).
_CHANNEL_RECEIPTS = sa.select(
    t.status_events.c.provider_message_id, t.status_events.c.status,
    t.status_events.c.errors).where(t.status_events.c.channel == sa.bindparam("channel"))
_KNOWN_RECEIPTS = _CHANNEL_RECEIPTS.where(
    t.status_events.c.provider_message_id.in_(sa.bindparam("ids", expanding=True)))


# Early receipts: "store a receipt, then move the row with its provider id" and "set a row's
# provider id, then apply the receipts already stored for it" run in two transactions. Under
# READ COMMITTED each can miss the other's uncommitted write, and the receipt is never applied.
# PostgreSQL: both take a transaction-scoped advisory lock per (channel, provider id), before
# the statement that looks for the other's write, so the later one sees the earlier one's
# commit. MariaDB: the look-up is a locking read, which waits for an uncommitted receipt (at
# READ COMMITTED nothing else would; the receipt's UPDATE already waits for the row's lock);
# SQLite runs one writer at a time.
_PG_RECEIPT_LOCK = sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))")
_KNOWN_RECEIPTS_LOCKING = _KNOWN_RECEIPTS.with_for_update(read=True)
# The send stage's case, once per acceptance: one id, without the IN list that SQLAlchemy
# expands again on every execution.
_KNOWN_RECEIPT = _CHANNEL_RECEIPTS.where(
    t.status_events.c.provider_message_id == sa.bindparam("id"))
_KNOWN_RECEIPT_LOCKING = _KNOWN_RECEIPT.with_for_update(read=True)


def lock_receipts(conn: Connection, keys: Iterable[tuple[str, str]]) -> None:
    """Take the early-receipt locks of (channel, provider message id) pairs, in sorted order
    (two transactions locking overlapping sets in different orders would deadlock)."""
    if conn.dialect.name != "postgresql":
        return
    for channel, provider_message_id in sorted(set(keys)):
        conn.execute(_PG_RECEIPT_LOCK, {"key": f"{channel}\x1f{provider_message_id}"})


def fingerprint(field: str, raw: Any) -> str:
    canonical = json.dumps([field, raw], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


# Built once, the SET columns given as parameters: each media copy runs it (building the
# statement per call, and its cache key, cost more CPU than the update).
_SET_MEDIA = t.messages.update().where(
    t.messages.c.channel == sa.bindparam("row_channel"),
    t.messages.c.provider_message_id == sa.bindparam("row_provider_message_id"))


def set_media_in(conn: Connection, channel: str, provider_message_id: str,
                 media: MediaRef) -> bool:
    result = conn.execute(_SET_MEDIA, {
        "row_channel": channel, "row_provider_message_id": provider_message_id,
        "media_status": media.status.value, "media_key": media.key,
        "media_mime_type": media.mime_type, "media_sha256": media.sha256,
        "media_size": media.size, "media_filename": media.filename,
        "media_error": media.error, "updated_at": utcnow()})
    return result.rowcount > 0


class DirectWrites:
    """The writes of a closed store: each in a transaction of its own (see `TenantStore.close`)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def run(self, fn: Callable[[Connection], T]) -> T:
        def in_transaction() -> T:
            with self.engine.begin() as conn:
                return fn(conn)
        return await asyncio.to_thread(in_transaction)


class TenantStore:
    def __init__(self, slug: str, engine: Engine) -> None:
        self.slug = slug
        self.engine = engine
        self.closed = False
        self._writes: GroupCommit | None = None
        self._writes_lock = threading.Lock()

    @property
    def writes(self) -> GroupCommit | DirectWrites:
        """Small writes from many tasks, grouped into shared transactions."""
        with self._writes_lock:
            if self.closed:
                return DirectWrites(self.engine)
            if self._writes is None:
                self._writes = GroupCommit(self.engine, self.slug)
            return self._writes

    def close(self) -> None:
        """Close the writer thread and every pooled connection.

        The credentials broker closes stores that were idle or least recently used while a
        task that fetched one just before may still use it once: from then on each use opens
        a connection of its own and closes it when done (a NullPool), and writes run one
        transaction each, so a late user neither fails nor leaves a pool open behind the
        broker's bounds."""
        with self._writes_lock:
            self.closed = True
            if self._writes is not None:
                self._writes.close()
                self._writes = None
        old = self.engine.pool
        # Swapped before the old pool is emptied, so no thread checks out of a pool that
        # nobody would empty again. `recreate()`'s arguments: the same creator and events
        # (SQLite's PRAGMAs), pre-ping and dialect.
        self.engine.pool = NullPool(
            old._creator, pre_ping=old._pre_ping, _dispatch=old.dispatch,
            dialect=old._dialect)
        old.dispose()

    def create_schema(self) -> None:
        upgrade(self.engine, "tenant")

    # -- inbound ---------------------------------------------------------------------------

    def store_events(self, messages: Sequence[InboundMessage], statuses: Sequence[StatusUpdate],
                     notices: Sequence[ProviderNotice]) -> StoreResult:
        """Store a batch in one transaction. Safe to repeat: duplicates leave one row."""
        with self.engine.begin() as conn:
            return self.store_events_in(conn, messages, statuses, notices)

    async def store_events_grouped(self, messages: Sequence[InboundMessage],
                                   statuses: Sequence[StatusUpdate],
                                   notices: Sequence[ProviderNotice]) -> StoreResult:
        """`store_events` in the next shared transaction (`writes`): the batches in flight
        for this tenant, and the media copies finishing beside them, cost one commit instead
        of queueing one by one for the tenant's connection (SQLite's only one)."""
        return await self.writes.run(
            lambda conn: self.store_events_in(conn, messages, statuses, notices))

    def store_events_in(self, conn: Connection, messages: Sequence[InboundMessage],
                        statuses: Sequence[StatusUpdate],
                        notices: Sequence[ProviderNotice]) -> StoreResult:
        """`store_events` inside the caller's transaction."""
        now = utcnow()
        result = StoreResult()
        result.messages_inserted = insert_ignore(
            conn, t.messages, [message_row(m, now) for m in messages])
        result.statuses_inserted = insert_ignore(conn, t.status_events, [{
            "provider": s.provider.value, "channel": s.channel_key,
            "provider_message_id": s.provider_message_id, "status": s.status,
            "timestamp": s.timestamp or 0, "recipient": s.recipient,
            "recipient_user_id": s.recipient_user_id,
            "errors": [{"code": e.code, "reason": e.reason, "details": e.details}
                       for e in s.errors] or None,
            "raw": s.raw, "received_at": now} for s in statuses])
        echoes = [m for m in messages if m.direction is Direction.OUT]
        lock_receipts(conn, [(s.channel_key, s.provider_message_id) for s in statuses]
                      + [(m.channel_key, m.provider_message_id) for m in echoes])
        for status in statuses:
            self._apply_receipt(conn, status.channel_key, status.provider_message_id,
                                status.status, status.errors[0] if status.errors else None)
        for echo in echoes:
            self.apply_known_receipts(conn, echo.channel_key, [echo.provider_message_id])
        if notices:
            result.notices_inserted = insert_ignore(conn, t.notices, [{
                "provider": n.provider.value, "channel": n.channel_key, "field": n.field,
                "fingerprint": fingerprint(n.field, n.raw),
                "errors": [{"code": e.code, "reason": e.reason} for e in n.errors] or None,
                "raw": n.raw, "received_at": now} for n in notices])
        result.pending_media = [m for m in messages
                                if m.media is not None and m.media.status is MediaStatus.PENDING]
        return result

    def _apply_receipt(self, conn: Connection, channel: str, provider_message_id: str,
                       status: str, error: Any | None) -> None:
        """Move the matching outbound row (or echo) forward to `status`; never backwards."""
        code = RECEIPT_STATUS.get(status)
        if code is None:
            return
        rank = DELIVERY_RANK[code]
        lower = [c.value for c, r in DELIVERY_RANK.items() if r < rank]
        now = utcnow()
        values: dict[str, Any] = {"status": code.value, "updated_at": now}
        if code is OutboundStatus.DELIVERED:
            values["delivered_at"] = now
        elif code in (OutboundStatus.READ, OutboundStatus.PLAYED):
            values["read_at"] = now
        elif code is OutboundStatus.FAILED_AFTER_ACCEPT and error is not None:
            values["error_code"] = error.code
            values["error_reason"] = error.reason[:1000]
        conn.execute(t.outbound_messages.update().where(
            t.outbound_messages.c.channel == channel,
            t.outbound_messages.c.provider_message_id == provider_message_id,
            t.outbound_messages.c.status.in_(lower)).values(**values))
        lower_names = [n for n, r in MESSAGE_STATUS_RANK.items() if r < receipt_rank(status)]
        conn.execute(t.messages.update().where(
            t.messages.c.channel == channel,
            t.messages.c.provider_message_id == provider_message_id,
            t.messages.c.direction == Direction.OUT.value,
            t.messages.c.status.in_(lower_names)).values(status=status, updated_at=now))

    def apply_known_receipts(self, conn: Connection, channel: str,
                             provider_message_ids: Iterable[str]) -> None:
        """Apply receipts that arrived before their message was known (kept in the history)."""
        ids = list(provider_message_ids)
        if not ids:
            return
        lock_receipts(conn, [(channel, pmid) for pmid in ids])
        locking = conn.dialect.name in ("mysql", "mariadb")
        if len(ids) == 1:
            rows = conn.execute(_KNOWN_RECEIPT_LOCKING if locking else _KNOWN_RECEIPT,
                                {"channel": channel, "id": ids[0]}).all()
        else:
            rows = conn.execute(_KNOWN_RECEIPTS_LOCKING if locking else _KNOWN_RECEIPTS,
                                {"channel": channel, "ids": ids}).all()
        for pmid, status, errors in sorted(rows, key=lambda r: receipt_rank(r[1])):
            error = None
            if errors:
                error = ProviderError.from_dict(errors[0])
            self._apply_receipt(conn, channel, pmid, status, error)

    def set_media(self, channel: str, provider_message_id: str, media: MediaRef) -> bool:
        """Record where a message's media went; False if the message row is not there yet."""
        with self.engine.begin() as conn:
            return set_media_in(conn, channel, provider_message_id, media)

    async def set_media_grouped(self, channel: str, provider_message_id: str,
                                media: MediaRef) -> bool:
        """`set_media` in the next shared transaction (`writes`): concurrent media copies
        finishing together cost one commit, and wait less for the write lock."""
        return await self.writes.run(
            lambda conn: set_media_in(conn, channel, provider_message_id, media))

    def media_status(self, channel: str, provider_message_id: str) -> str | None:
        with self.engine.connect() as conn:
            value = conn.execute(sa.select(t.messages.c.media_status).where(
                t.messages.c.channel == channel,
                t.messages.c.provider_message_id == provider_message_id)).scalar()
        return None if value is None else str(value)

    def messages_with_media(self, statuses: Sequence[str]) -> list[InboundMessage]:
        """Messages whose media is in one of `statuses` (for `wacloud media refetch`)."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t.messages).where(
                t.messages.c.media_status.in_(list(statuses)))).mappings().all()
        return [row_to_inbound(row) for row in rows]
