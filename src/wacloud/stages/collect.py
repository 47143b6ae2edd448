"""Collect: claim pending outbox rows atomically and queue them for sending.

Rows go on `outbound.send` as FIFO groups of (sending number, recipient), de-duplicated by
tenant and row id, so messages to one recipient leave in the order they were created while
other recipients of the same number are not held up. Rows whose channel is paused stay
pending. Reservations older than the lease go back to pending (a collector that crashed
between claim and queue would otherwise leave them stuck).

At a stop a pass ends after the tenant it is on, and a tenant's claim, queue send and status
write run to their end even if the stop's deadline cancels the pass: nothing is left reserved.

A queue that refuses a batch (down, throttled) is a passing trouble: the rows go back to
pending and a later pass queues them. Only a row that can never be queued (it cannot be made
into an envelope) is marked -99. A row whose validity (`expires_at`) passed fails as `expired`
instead of being queued.

Queued rows nothing touched for `queued_stale_s` (no attempt, no result) may have lost their
queue message, or their result: the reclaim pass queues their envelope again, with the same
group and de-duplication id. This is safe whatever actually happened: if the first message
still exists the queue drops the copy (SQLite queue; SQS within its 5-minute window), and
otherwise the copy waits behind it in the recipient's FIFO group, and the send stage checks
the row (a row already accepted or being sent is not sent again). A row in a long retry
backoff is also `queued` and may look stale: it gets such a harmless copy. A row whose send
lease is still set gets none: its attempt may have reached the provider, and its outcome waits
for the tenant database in `outbound.results` (see `claim.stale_queued`).

A pass looks at up to `concurrency` tenants at once (each tenant by one task, so its rows keep
their order), and a tenant with no pending row costs one read, not a claim. With a
`CollectSchedule`, a pass looks only at the tenants that are due: a tenant that had nothing is
looked at again after a wait that doubles up to the schedule's maximum, and `wake(tenant)` (the
API, when it inserts a row) makes it due at once. Reclaim passes look at every tenant.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Collection, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy.engine import Engine

from wacloud.adapters.db.errors import TroubleLog
from wacloud.adapters.db.tenant import claim
from wacloud.adapters.db.types import utcnow
from wacloud.adapters.queue.base import OutgoingMessage, Queue
from wacloud.credentials.broker import CredentialsBroker
from wacloud.domain.model import OutboundMessage
from wacloud.observability.tracing import outbound_trace_id
from wacloud.stages.envelopes import dumps

T = TypeVar("T")
log = logging.getLogger(__name__)
_TROUBLE = TroubleLog(log)


@dataclass(slots=True)
class _Pace:
    due: float = 0.0  # monotonic time of the tenant's next look
    wait: float = 0.0  # the last wait after a look that found nothing
    woken: float = -1.0  # monotonic time of the last `wake`


@dataclass(slots=True)
class CollectSchedule:
    """When each tenant is looked at next: at the next pass after it had rows (or was woken);
    after a look that found nothing (or failed), after `poll_s`, then twice the last wait, up
    to `idle_max_s`. Unknown tenants are due."""

    poll_s: float = 1.0
    idle_max_s: float = 10.0
    _pace: dict[str, _Pace] = field(default_factory=dict)
    # Woken tenants, taken before the rest of a pass that is under way.
    _woken: dict[str, None] = field(default_factory=dict)

    def due(self, tenants: list[str], now: float) -> list[str]:
        return [t for t in tenants if (p := self._pace.get(t)) is None or p.due <= now]

    def wake(self, tenant: str) -> None:
        """A row was inserted for `tenant`: look at it at the next pass."""
        pace = self._pace.setdefault(tenant, _Pace())
        pace.due, pace.wait, pace.woken = 0.0, 0.0, time.monotonic()
        self._woken[tenant] = None

    def take_woken(self) -> str | None:
        """The longest-waiting woken tenant, if any (each is taken once)."""
        if not self._woken:
            return None
        tenant = next(iter(self._woken))
        del self._woken[tenant]
        return tenant

    def looked(self, tenant: str, found: int, started: float) -> None:
        """A look that began at `started` queued `found` rows."""
        pace = self._pace.setdefault(tenant, _Pace())
        if found or pace.woken >= started:
            # Rows, or a wake during the look (its row may have come after the look read
            # the outbox): due at the next pass.
            pace.due, pace.wait = 0.0, 0.0
            return
        pace.wait = min(max(pace.wait * 2, self.poll_s), max(self.idle_max_s, self.poll_s))
        # Up to a tenth later: tenants idle since the same pass do not all fall due together.
        pace.due = time.monotonic() + pace.wait * (1 + random.random() / 10)

    def forget(self, keep: Collection[str]) -> None:
        """Drop the pace of tenants no longer registered."""
        known = set(keep)
        for tenant in [t for t in self._pace if t not in known]:
            del self._pace[tenant]
        for tenant in [t for t in self._woken if t not in known]:
            del self._woken[tenant]


@dataclass(slots=True)
class CollectContext:
    broker: CredentialsBroker
    send_queue: Queue
    batch: int = 500
    lease_seconds: float = 300.0
    # Queued rows untouched this long are queued again (see the module docstring).
    queued_stale_seconds: float = 900.0
    # Set at a stop: a pass ends after the tenant it is on.
    stop: asyncio.Event | None = None
    # Tenants collected at the same time; 1 is one after another.
    concurrency: int = 16
    # Which tenants a pass looks at; None: every tenant at every pass.
    schedule: CollectSchedule | None = None


def outbound_from_row(tenant: str, row: Any) -> OutboundMessage:
    created: datetime | None = row["created_at"]
    return OutboundMessage(
        tenant=tenant, row_id=int(row["id"]), channel_key=row["channel"],
        recipient=row["recipient"], type=row["type"], content=row["content"] or {},
        reply_to=row["reply_to"], client_reference=row["client_reference"],
        request_url=row["request_url"], request_body=row["request_body"],
        request_headers=row["request_headers"],
        created_at=created.timestamp() if created else 0.0,
        recipient_type=row["recipient_type"],
        expires_at=expires.timestamp() if (expires := row.get("expires_at")) else None)


def send_group(message: OutboundMessage) -> str:
    if message.type == "read":  # a mark-as-read keeps no order: a group of its own
        return f"{message.tenant}/{message.channel_key}/read:{message.row_id}"
    return f"{message.tenant}/{message.channel_key}/{message.recipient or '-'}"


def send_envelope(message: OutboundMessage) -> OutgoingMessage:
    return OutgoingMessage(dumps({"message": message.to_dict()}), group_id=send_group(message),
                           dedup_id=f"{message.tenant}:{message.row_id}")


def expired_reason(expires_at: datetime) -> str:
    return (f"expired: its validity ended at {expires_at.isoformat()} before it could be "
            "sent")


def split_expired(rows: list[dict[str, Any]], now: datetime
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(rows still valid, rows whose `expires_at` passed)."""
    live: list[dict[str, Any]] = []
    expired: list[dict[str, Any]] = []
    for row in rows:
        expires = row.get("expires_at")
        (expired if expires is not None and expires <= now else live).append(row)
    return live, expired


async def fail_expired(tenant: str, engine: Engine, rows: list[dict[str, Any]]) -> None:
    for row in rows:  # each its own reason (its own time); expiring rows are few
        await asyncio.to_thread(claim.mark_expired, engine, [int(row["id"])],
                                expired_reason(row["expires_at"]))
    if rows:
        log.info("tenant %s: %d rows expired before they were sent", tenant, len(rows))


def envelopes_of(tenant: str, rows: list[dict[str, Any]]
                 ) -> tuple[list[OutboundMessage], list[OutgoingMessage], dict[int, str]]:
    """(messages, their envelopes, {row id: why it can never be queued})."""
    messages: list[OutboundMessage] = []
    envelopes: list[OutgoingMessage] = []
    invalid: dict[int, str] = {}
    for row in rows:
        try:
            message = outbound_from_row(tenant, row)
            envelope = send_envelope(message)
        except Exception as exc:  # a row that no pass could ever queue
            invalid[int(row["id"])] = f"invalid row: {type(exc).__name__}: {exc}"[:1000]
            continue
        messages.append(message)
        envelopes.append(envelope)
    return messages, envelopes, invalid


async def requeue_stale(tenant: str, ctx: CollectContext, engine: Engine) -> int:
    """Queue again the envelopes of queued rows nothing touched for `queued_stale_seconds`."""
    rows = await asyncio.to_thread(claim.stale_queued, engine, ctx.queued_stale_seconds,
                                   ctx.batch)
    if not rows:
        return 0
    rows, expired = split_expired(rows, utcnow())
    await fail_expired(tenant, engine, expired)
    messages, envelopes, invalid = envelopes_of(tenant, rows)
    for row_id, reason in invalid.items():
        log.error("tenant %s: queued row %d cannot be queued again: %s", tenant, row_id, reason)
    if not envelopes:
        return 0
    try:
        await ctx.send_queue.send_batch(envelopes)
    except Exception:  # the next reclaim pass tries again
        log.exception("tenant %s: could not queue %d stale rows again", tenant, len(envelopes))
        return 0
    await asyncio.to_thread(claim.mark_requeued, engine, [m.row_id for m in messages])
    log.warning("tenant %s: %d queued rows untouched for %.0f s queued again", tenant,
                len(messages), ctx.queued_stale_seconds)
    return len(messages)


async def collect_tenant(tenant: str, ctx: CollectContext, *, reclaim: bool = False) -> int:
    """One pass over one tenant; returns how many rows were queued."""
    store = await ctx.broker.tenant_store_async(tenant)
    engine = store.engine
    if reclaim:
        stale = await asyncio.to_thread(claim.reclaim_stale, engine, ctx.lease_seconds)
        if stale:
            log.warning("tenant %s: %d stale reservations returned to pending", tenant, stale)
        await requeue_stale(tenant, ctx, engine)
    if not await asyncio.to_thread(claim.has_pending, engine):
        return 0  # a read, where a claim would take SQLite's write lock for nothing
    paused = ctx.broker.paused_channel_keys(tenant)
    return await uninterrupted(claim_and_queue(tenant, ctx, engine, paused))


async def uninterrupted(work: Coroutine[Any, Any, T]) -> T:
    """Run `work` to its end even when the caller is cancelled meanwhile (a stop past its
    deadline), then pass the cancellation on. From the claim to the status write a pass must
    not stop half-way: its thread would reserve rows that nobody then queues or gives back,
    and they would wait for their lease to run out."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait({task})
        if not task.cancelled() and task.exception() is not None:  # retrieved: logged here
            log.error("collect pass failed while stopping", exc_info=task.exception())
        raise


async def claim_and_queue(tenant: str, ctx: CollectContext, engine: Engine,
                          paused: Collection[str]) -> int:
    """Claim pending rows, queue them and mark them queued (or give them back)."""
    rows = await asyncio.to_thread(claim.claim_pending, engine, ctx.batch,
                                   exclude_channels=paused)
    if not rows:
        return 0
    rows, expired = split_expired(rows, utcnow())
    await fail_expired(tenant, engine, expired)
    messages, envelopes, invalid = envelopes_of(tenant, rows)
    for row_id, reason in invalid.items():
        log.error("tenant %s: row %d can never be queued: %s", tenant, row_id, reason)
        await asyncio.to_thread(claim.mark_not_queued, engine, [row_id], reason)
    if not envelopes:
        return 0
    ids = [m.row_id for m in messages]
    try:
        await ctx.send_queue.send_batch(envelopes)
    except Exception as exc:
        # The queue's trouble, not the rows': back to pending, to be queued at a later pass
        # (a row whose message did get in meanwhile is de-duplicated or checked by the send
        # stage, never sent twice).
        log.exception("tenant %s: could not queue %d rows; they wait for the next pass",
                      tenant, len(ids))
        await asyncio.to_thread(claim.release, engine, ids,
                                f"could not queue yet ({type(exc).__name__}); will retry")
        return 0
    await asyncio.to_thread(claim.mark_queued, engine, ids)
    if log.isEnabledFor(logging.DEBUG):
        for message in messages:
            log.debug("queued for sending", extra={
                "trace_id": outbound_trace_id(tenant, message.row_id), "tenant": tenant,
                "channel": message.channel_key, "message_id": message.row_id,
                "stage": "collect"})
    return len(ids)


async def collect(ctx: CollectContext, *, reclaim: bool = False) -> int:
    """One pass over every tenant that is due (a Lambda schedule calls this; embedded mode
    loops it), `ctx.concurrency` tenants at a time; returns how many rows were queued."""
    tenants = ctx.broker.tenant_slugs()
    schedule = ctx.schedule
    if schedule is not None:
        schedule.forget(tenants)
        if not reclaim:
            tenants = schedule.due(tenants, time.monotonic())
    todo = iter(tenants)
    busy: set[str] = set()  # tenants a worker is on: never two looks at one at once (order)
    total = 0

    def next_tenant() -> str | None:
        # Woken tenants first: a row the API just inserted need not wait for the whole pass.
        # One a worker is on is left: `looked` sees its wake, and it is due at the next pass.
        while schedule is not None and (woken := schedule.take_woken()) is not None:
            if woken not in busy:
                return woken
        for tenant in todo:
            if tenant not in busy:
                return tenant
        return None

    async def worker() -> None:
        nonlocal total
        while (tenant := next_tenant()) is not None:
            if ctx.stop is not None and ctx.stop.is_set():
                return  # stopping: the other tenants' rows wait, pending, for the next start
            busy.add(tenant)
            queued = 0
            started = time.monotonic()
            try:
                queued = await collect_tenant(tenant, ctx, reclaim=reclaim)
            except Exception as exc:  # one tenant's broken DB must not stop the others
                # A database that is down: a warning a minute, not a traceback per poll.
                _TROUBLE.failed(f"tenant {tenant}", "collect", exc)
            else:
                _TROUBLE.succeeded(f"tenant {tenant}")
            finally:
                busy.discard(tenant)
            total += queued
            if schedule is not None:
                schedule.looked(tenant, queued, started)

    workers = max(1, min(ctx.concurrency, len(tenants)))
    await asyncio.gather(*(worker() for _ in range(workers)))
    return total
