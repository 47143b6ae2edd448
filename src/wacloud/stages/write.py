"""Write: route each event to its tenant through the broker and store it there, once.

Routing uses only the registry (Meta phone_number_id, falling back to the WABA id; Whapi
channel id; Chakra plugin id). Events of an unknown channel are parked with the reason, to be
replayed once the channel exists. Messages whose media is still pending get a retry job.
A value the tenant's database refuses (a constraint, an integer out of range) parks only the
event that carries it, with the reason; the other events of the same webhook are stored.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

from wacloud.adapters.db.errors import failure_reason, is_refused_value
from wacloud.adapters.db.tenant import outbox
from wacloud.adapters.db.tenant.store import StoreResult, TenantStore
from wacloud.adapters.db.types import utcnow
from wacloud.credentials.broker import CredentialsBroker
from wacloud.domain.model import (
    Event,
    InboundMessage,
    ProviderNotice,
    StatusUpdate,
    event_from_dict,
)
from wacloud.observability.metrics import INBOUND_LATENCY, MESSAGES_STORED, STATUSES_STORED
from wacloud.observability.tracing import new_trace_id, outbound_trace_id
from wacloud.stages.envelopes import INBOUND_MEDIA, Output, Park, dumps, media_job
from wacloud.stages.receive import describe

log = logging.getLogger(__name__)

# Where an event came from: the signed webhook as text and its signature header.
Origin = tuple[str, str]
# An event's trace id and when its webhook was received (epoch seconds).
Trail = tuple[str, float]

# A channel's "last inbound at" (channel health) is written at most this often per channel
# and process: one small registry write per busy channel every few seconds, not per webhook.
INBOUND_NOTE_INTERVAL_S = 10.0


@dataclass(slots=True)
class WriteContext:
    broker: CredentialsBroker
    park: Park
    # Channel id -> monotonic time its last inbound was noted in the registry (this process).
    noted: dict[int, float] = field(default_factory=dict)


def _route(events: list[Event], broker: CredentialsBroker, seen: set[int] | None = None
           ) -> tuple[dict[str, list[Event]], dict[str, list[Event]]]:
    by_tenant: dict[str, list[Event]] = defaultdict(list)
    unroutable: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        channel = broker.channel(event.provider, event.channel_key, event.account_key)
        if channel is None:
            unroutable[describe(event)].append(event)
            continue
        event.channel_key = channel.key  # a WABA-id fallback stores under the channel's id
        by_tenant[channel.tenant].append(event)
        if seen is not None:
            seen.add(channel.id)
    return by_tenant, unroutable


async def note_inbound(ctx: WriteContext, channel_ids: set[int]) -> None:
    """Record in the registry that these channels' webhooks brought events (channel health),
    at most every INBOUND_NOTE_INTERVAL_S per channel. Never fails the write: it is a hint."""
    now = time.monotonic()
    due = [i for i in channel_ids if now - ctx.noted.get(i, -INBOUND_NOTE_INTERVAL_S)
           >= INBOUND_NOTE_INTERVAL_S]
    if not due:
        return
    for channel_id in due:
        ctx.noted[channel_id] = now
    try:
        await asyncio.to_thread(ctx.broker.registry.touch_inbound, due, utcnow())
    except Exception as exc:
        log.warning("last inbound time of %d channel(s) not recorded (%s)", len(due),
                    type(exc).__name__)


async def write(data: bytes, ctx: WriteContext) -> list[Output]:
    batch = json.loads(data)
    events = [event_from_dict(item) for item in batch["events"]]
    trail = (str(batch.get("trace") or new_trace_id()),
             float(batch.get("received_at") or time.time()))
    return await write_events(events, ctx, trails={id(e): trail for e in events})


async def write_events(events: list[Event], ctx: WriteContext,
                       origins: Mapping[int, Origin] | None = None,
                       trails: Mapping[int, Trail] | None = None) -> list[Output]:
    """Store `events` (of any tenants) with one transaction per tenant; park the unroutable.
    `origins`: by `id(event)`, the signed webhook (text) and signature the event came from,
    kept with an event parked here so that its replay is checked again. `trails`: by
    `id(event)`, its trace id and reception time, for the metrics and the log."""
    seen: set[int] = set()
    by_tenant, unroutable = _route(events, ctx.broker, seen)
    # A channel added a moment ago may be known to the process that took the webhook and not
    # yet to ours: look again with a fresh registry before parking anything (whatever
    # `refresh` says: False also when another task renewed the snapshot since our look).
    if unroutable:
        await asyncio.to_thread(ctx.broker.refresh)
        more, unroutable = _route([e for group in unroutable.values() for e in group],
                                  ctx.broker, seen)
        for tenant, routed in more.items():
            by_tenant.setdefault(tenant, []).extend(routed)

    for description, events in unroutable.items():
        await ctx.park(stage="write", reason=f"no tenant for {description}",
                       payload=dumps([e.to_dict() for e in events]).decode(),
                       provider=events[0].provider.value, channel_key=events[0].channel_key)

    # Tenants side by side: each waits on its own database (and writer thread), and a batch
    # is as slow as its slowest tenant instead of the sum of them all.
    per_tenant = await asyncio.gather(*(_write_tenant(tenant, events, ctx, origins, trails)
                                        for tenant, events in by_tenant.items()),
                                      return_exceptions=True)
    failed = [result for result in per_tenant if isinstance(result, BaseException)]
    if failed:  # raised once every tenant's write is over, so none runs on behind the retry
        raise failed[0]
    outputs = [output for result in per_tenant if not isinstance(result, BaseException)
               for output in result]
    await note_inbound(ctx, seen)
    return outputs


async def _write_tenant(tenant: str, events: list[Event], ctx: WriteContext,
                        origins: Mapping[int, Origin] | None,
                        trails: Mapping[int, Trail] | None) -> list[Output]:
    store = await ctx.broker.tenant_store_async(tenant)
    stored = events
    try:
        result = await store.store_events_grouped(*_split(events))
    except Exception as exc:
        if not is_refused_value(exc):
            raise  # the database's trouble, not the data's: the runner retries the lot
        stored = []
        result = await _store_each(store, events, ctx, origins or {}, stored)
    await _account(tenant, store, stored, trails or {})
    return [Output(INBOUND_MEDIA, media_job(tenant, message, just_stored=True))
            for message in result.pending_media]


def _split(events: list[Event]) -> tuple[list[InboundMessage], list[StatusUpdate],
                                         list[ProviderNotice]]:
    return ([e for e in events if isinstance(e, InboundMessage)],
            [e for e in events if isinstance(e, StatusUpdate)],
            [e for e in events if isinstance(e, ProviderNotice)])


def _store(store: TenantStore, events: list[Event]) -> StoreResult:
    return store.store_events(*_split(events))


async def _account(tenant: str, store: TenantStore, events: list[Event],
                   trails: Mapping[int, Trail]) -> None:
    """Count what was stored and how long it took since its webhook came; with debug logging,
    one line per event with its trace id (a receipt's line also names the trace of the
    message it is about, `outbound_trace_id`)."""
    now = time.time()
    messages: Counter[tuple[str, str]] = Counter()
    statuses: Counter[str] = Counter()
    latency = INBOUND_LATENCY.labels(tenant)
    for event in events:
        if isinstance(event, InboundMessage):
            messages[(event.channel_key, event.direction.value)] += 1
        elif isinstance(event, StatusUpdate):
            statuses[event.channel_key] += 1
        trail = trails.get(id(event))
        if trail is not None:
            latency.observe(max(now - trail[1], 0.0))
    for (channel, direction), count in messages.items():
        MESSAGES_STORED.labels(tenant, channel, direction).inc(count)
    for channel, count in statuses.items():
        STATUSES_STORED.labels(tenant, channel).inc(count)
    if log.isEnabledFor(logging.DEBUG):
        await _log_stored(tenant, store, events, trails)


async def _log_stored(tenant: str, store: TenantStore, events: list[Event],
                      trails: Mapping[int, Trail]) -> None:
    receipts: dict[str, list[str]] = defaultdict(list)
    for event in events:
        if isinstance(event, StatusUpdate):
            receipts[event.channel_key].append(event.provider_message_id)
    rows: dict[tuple[str, str], int] = {}
    for channel, ids in receipts.items():
        found = await asyncio.to_thread(outbox.row_ids_for, store.engine, channel, ids)
        rows.update(((channel, pmid), row_id) for pmid, row_id in found.items())
    for event in events:
        trace = trails.get(id(event), ("", 0.0))[0] or None
        fields: dict[str, object] = {"trace_id": trace, "tenant": tenant,
                                     "channel": event.channel_key,
                                     "provider": event.provider.value}
        if isinstance(event, InboundMessage):
            log.debug("message stored", extra={**fields, "direction": event.direction.value,
                                               "message_id": event.provider_message_id})
        elif isinstance(event, StatusUpdate):
            row_id = rows.get((event.channel_key, event.provider_message_id))
            log.debug("receipt stored", extra={
                **fields, "status": event.status,
                "provider_message_id": event.provider_message_id,
                "message_id": row_id,
                "outbound_trace_id": None if row_id is None else outbound_trace_id(
                    tenant, row_id)})


async def _store_each(store: TenantStore, events: list[Event], ctx: WriteContext,
                      origins: Mapping[int, Origin], stored: list[Event]) -> StoreResult:
    """One transaction per event (storing is idempotent, so those already stored are no-ops);
    an event the database refuses is parked with the reason instead of failing the rest.
    The events stored are added to `stored`."""
    total = StoreResult()
    for event in events:
        try:
            result = await asyncio.to_thread(_store, store, [event])
        except Exception as exc:
            if not is_refused_value(exc):
                raise
            raw_body, signature = origins.get(id(event), (None, None))
            await ctx.park(stage="write",
                           reason=f"the tenant database refused this event: {failure_reason(exc)}",
                           payload=dumps([event.to_dict()]).decode(),
                           provider=event.provider.value, channel_key=event.channel_key,
                           raw_body=raw_body, signature=signature)
            continue
        stored.append(event)
        total.pending_media.extend(result.pending_media)
    return total
