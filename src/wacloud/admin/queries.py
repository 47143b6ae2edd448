"""What an operator asks of the gateway, as plain dicts: tenants, channels and their health,
messages and their timelines, queues, parked items and dead letters.

Apart from the HTTP handlers (`wacloud.admin.api`) so that other front ends (the dashboard)
call the same functions. Synchronous functions touch databases: call them in a thread from
async code. Secrets are never part of an answer.
"""

from __future__ import annotations

import contextlib
import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from wacloud.adapters.db.registry.store import ParkedItem, Registry
from wacloud.adapters.db.tenant import tables as t
from wacloud.adapters.db.tenant.views import (
    MessageFilter,
    list_notices,
    message_detail,
    search_messages,
)
from wacloud.adapters.db.types import utcnow
from wacloud.adapters.queue.base import Queue
from wacloud.admin.operations import dead_letter_summary
from wacloud.credentials.broker import CredentialsBroker
from wacloud.domain.model import DELIVERY_RANK, Channel, OutboundStatus
from wacloud.providers import port
from wacloud.stages.envelopes import RawWebhook, envelope_bytes, envelope_text

# Rows counted as sent in a channel's health: the provider took them.
SENT_CODES = [c.value for c, r in DELIVERY_RANK.items()
              if r >= DELIVERY_RANK[OutboundStatus.ACCEPTED]
              and c not in (OutboundStatus.FAILED, OutboundStatus.FAILED_AFTER_ACCEPT)]
RATE_LIMIT_CODE = "130429"
HEALTH_WINDOW = timedelta(hours=1)
RECENT_MINUTES = 5  # the "now" of `channel_rates`, beside the hour
# Rows updated in the window are looked for among those created this long before it: the
# created_at index bounds the scan (receipts rarely come days after a send).
HEALTH_LOOKBACK = timedelta(days=1)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def channel_summary(channel: Channel) -> dict[str, Any]:
    """A channel without its secrets (what `wacloud channel list --json` shows)."""
    return {"id": channel.id, "tenant": channel.tenant, "provider": channel.provider.value,
            "key": channel.key, "phone_number_id": channel.phone_number_id,
            "waba_id": channel.waba_id, "display_number": channel.display_number,
            "api_base_url": channel.base_url, "graph_version": channel.graph_version,
            "mps": channel.mps, "media_hosts": list(channel.media_hosts),
            "paused": channel.paused, "pause_reason": channel.pause_reason}


def channel_view(channel: Channel, last_inbound_at: datetime | None = None
                 ) -> dict[str, Any]:
    """`channel_summary` with the webhook path providers are pointed at and when the
    channel's webhooks last brought an event."""
    webhook = port(channel.provider).channel_webhook_path(channel.key)
    return {**channel_summary(channel), "webhook_path": webhook,
            "last_inbound_at": _iso(last_inbound_at)}


def list_tenants(registry: Registry) -> list[dict[str, Any]]:
    counts: dict[str, int] = defaultdict(int)
    for channel in registry.channels():
        counts[channel.tenant] += 1
    return [{"id": tenant.id, "slug": tenant.slug, "own_db": tenant.db_url is not None,
             "retention_days": tenant.retention_days, "channels": counts[tenant.slug]}
            for tenant in registry.tenants()]


def list_channels(registry: Registry, tenant: str | None = None) -> list[dict[str, Any]]:
    last = registry.last_inbound()
    return [channel_view(c, last.get(c.id)) for c in registry.channels(tenant)]


def get_channel(registry: Registry, channel_id: int) -> dict[str, Any]:
    """RegistryError when there is no such channel."""
    channel = registry.channel_by_id(channel_id)
    return channel_view(channel, registry.last_inbound().get(channel_id))


def channel_health(registry: Registry, broker: CredentialsBroker,
                   tenant: str | None = None, now: datetime | None = None
                   ) -> list[dict[str, Any]]:
    """Per channel: the last webhook event stored, sends and errors of the last hour (by
    error code, from the outbox rows updated in it), rate-limit hits (130429) and whether
    and why it is paused. A tenant database that cannot be read gives `error` for its
    channels instead of failing the rest."""
    now = now or utcnow()
    since = now - HEALTH_WINDOW
    last = registry.last_inbound()
    channels = registry.channels(tenant)
    by_tenant: dict[str, list[Channel]] = defaultdict(list)
    for channel in channels:
        by_tenant[channel.tenant].append(channel)
    out = []
    for slug, group in by_tenant.items():
        stats: dict[str, dict[str, Any]] = {}
        problem = None
        try:
            with broker.tenant_store(slug).engine.connect() as conn:
                stats = outbox_stats(conn, since)
        except Exception as exc:  # one tenant's database down must not hide the others
            problem = f"the tenant database could not be read ({type(exc).__name__})"
        for channel in group:
            mine = stats.get(channel.key, {"sent": 0, "errors": {}})
            errors: dict[str, int] = mine["errors"]
            out.append({
                "id": channel.id, "tenant": slug, "provider": channel.provider.value,
                "key": channel.key, "paused": channel.paused,
                "pause_reason": channel.pause_reason,
                "last_inbound_at": _iso(last.get(channel.id)),
                "window_s": int(HEALTH_WINDOW.total_seconds()),
                "sent": mine["sent"], "errors": sum(errors.values()),
                "errors_by_code": dict(sorted(errors.items())),
                "rate_limit_hits": errors.get(RATE_LIMIT_CODE, 0), "error": problem})
    out.sort(key=lambda item: item["id"])
    return out


def outbox_stats(conn: Connection, since: datetime) -> dict[str, dict[str, Any]]:
    """Per channel key of one tenant's database: outbox rows updated since `since` that the
    provider took (`sent`) and their error codes (`errors`: code -> rows)."""
    o = t.outbound_messages
    query = sa.select(o.c.channel, o.c.status, o.c.error_code, sa.func.count()).where(
        o.c.created_at >= since - HEALTH_LOOKBACK, o.c.updated_at >= since).group_by(
        o.c.channel, o.c.status, o.c.error_code)
    stats: dict[str, dict[str, Any]] = {}
    for channel, status, code, count in conn.execute(query):
        entry = stats.setdefault(channel, {"sent": 0, "errors": defaultdict(int)})
        if status in SENT_CODES:
            entry["sent"] += count
        if code:
            entry["errors"][str(code)] += count
    return stats


def find_messages(broker: CredentialsBroker, tenant: str, filters: MessageFilter,
                  limit: int = 50, cursor: str | None = None) -> dict[str, Any]:
    """A page of a tenant's messages, newest first: `{"messages": [...], "next_cursor"}`.
    KeyError for an unknown tenant, ValueError for a bad cursor."""
    engine = broker.tenant_store(tenant).engine
    messages, next_cursor = search_messages(engine, filters, limit, cursor)
    return {"tenant": tenant, "messages": messages, "next_cursor": next_cursor}


def tenant_notices(broker: CredentialsBroker, tenant: str, limit: int = 100
                   ) -> list[dict[str, Any]]:
    """The tenant's latest notices (webhook-level errors, account updates), oldest first."""
    return list_notices(broker.tenant_store(tenant).engine, limit)


def get_message(broker: CredentialsBroker, tenant: str, source: str, row_id: int
                ) -> dict[str, Any] | None:
    """One message with its timeline (see `views.message_detail`); None if there is none."""
    detail = message_detail(broker.tenant_store(tenant).engine, source, row_id)
    if detail is not None:
        detail["tenant"] = tenant
    return detail


async def queue_stats(queues: dict[str, Queue]) -> list[dict[str, Any]]:
    """Per queue: visible, in flight, delayed, dead (its DLQ), age of the oldest message."""
    out = []
    for name, queue in queues.items():
        depth = await queue.depth()
        age = await queue.oldest_age()
        out.append({"name": name, "fifo": queue.spec.fifo, "visible": depth["visible"],
                    "in_flight": depth["in_flight"], "delayed": depth["delayed"],
                    "dead": depth["dead"],
                    "oldest_age_s": round(age, 3) if age is not None else None})
    return out


async def list_dead_letters(queues: dict[str, Queue], name: str | None = None,
                            limit: int = 1000) -> list[dict[str, Any]]:
    """Dead letters (ids, sizes, times, reasons, whom they concern; never bodies)."""
    names = [name] if name is not None else list(queues)
    return [dead_letter_summary(n, letter) for n in names
            for letter in await queues[n].dead_letters(limit=limit)]


async def get_dead_letter(queues: dict[str, Queue], name: str, letter_id: str
                          ) -> dict[str, Any] | None:
    for letter in await queues[name].dead_letters(limit=100_000):
        if letter.message_id == letter_id:
            return dead_letter_summary(name, letter)
    return None


def list_parked(registry: Registry, include_replayed: bool = False, limit: int = 1000
                ) -> list[dict[str, Any]]:
    return [item.summary() for item in
            registry.parked_items(include_replayed=include_replayed, limit=limit)]


def parked_detail(item: ParkedItem) -> dict[str, Any]:
    """A parked item with its payload (parsed when it is JSON): what an operator reads to
    decide between a replay and a discard. The signed body and signature are not shown."""
    payload: Any = item.payload
    with contextlib.suppress(ValueError):
        payload = json.loads(item.payload)
    if item.stage == "receive" and isinstance(payload, str):
        # A raw webhook envelope (a header line, then the body): shown as its parts, the
        # body parsed when it is JSON; the signature header stays out.
        with contextlib.suppress(ValueError, KeyError, TypeError):
            raw = RawWebhook.decode(envelope_bytes(item.payload))
            body: Any = envelope_text(raw.body)
            with contextlib.suppress(ValueError):
                body = json.loads(raw.body)
            payload = {"provider": raw.provider, "channel_key": raw.channel_key,
                       "received_at": raw.received_at, "kind": raw.kind, "body": body}
    return {**item.summary(), "payload": payload}


def _minute_bucket(column: Any, since: datetime, minutes: int) -> Any:
    """The minute of the window (0 = oldest) a time falls in, as a portable CASE: SQLite,
    PostgreSQL, MariaDB and SQL Server have no common date-truncation function."""
    whens = [(column >= since + timedelta(minutes=i), i) for i in range(minutes - 1, 0, -1)]
    return sa.case(*whens, else_=0)


@dataclass(frozen=True, slots=True)
class MinuteCounts:
    """One tenant database's traffic in a window: (channel, minute of the window, messages)
    for inbound messages and for outbox rows the provider took, and failures per channel."""

    inbound: list[tuple[str, int, int]]
    outbound: list[tuple[str, int, int]]
    failed: dict[str, int]


def channel_minutes(conn: Connection, since: datetime, minutes: int) -> MinuteCounts:
    """Inbound rows by `received_at`, outbox rows by `accepted_at` (when the provider took
    them), per channel and minute since `since`; failures of outbox rows updated since."""
    m, o = t.messages, t.outbound_messages
    failed = [OutboundStatus.FAILED.value, OutboundStatus.FAILED_AFTER_ACCEPT.value]
    bucket = _minute_bucket(m.c.received_at, since, minutes)
    inbound = conn.execute(sa.select(m.c.channel, bucket, sa.func.count()).where(
        m.c.received_at >= since, m.c.direction == "in").group_by(m.c.channel, bucket)).all()
    bucket = _minute_bucket(o.c.accepted_at, since, minutes)
    outbound = conn.execute(sa.select(o.c.channel, bucket, sa.func.count()).where(
        o.c.created_at >= since - HEALTH_LOOKBACK, o.c.accepted_at >= since
    ).group_by(o.c.channel, bucket)).all()
    failures = conn.execute(sa.select(o.c.channel, sa.func.count()).where(
        o.c.created_at >= since - HEALTH_LOOKBACK, o.c.updated_at >= since,
        o.c.status.in_(failed)).group_by(o.c.channel)).all()
    return MinuteCounts([(str(c), int(b), int(n)) for c, b, n in inbound],
                        [(str(c), int(b), int(n)) for c, b, n in outbound],
                        {str(c): int(n) for c, n in failures})


def empty_rates() -> dict[str, Any]:
    """`channel_rates` of a channel without traffic."""
    return {"in_last_hour": 0, "out_last_hour": 0, "in_last_5m": 0, "out_last_5m": 0,
            "in_per_min_last_hour": 0.0, "out_per_min_last_hour": 0.0,
            "in_per_min_last_5m": 0.0, "out_per_min_last_5m": 0.0, "failed_last_hour": 0,
            "errors_last_hour": 0, "errors_by_code": {}, "rate_limit_hits": 0}


def channel_rates(conn: Connection, now: datetime | None = None) -> dict[str, dict[str, Any]]:
    """Per channel key of one tenant's database: messages in and out over the last hour and
    the last RECENT_MINUTES (counts and per-minute rates), failed sends, and the hour's error
    codes (what `wacloud status` shows; `channel_health` and `traffic` count alike)."""
    now = now or utcnow()
    recent_minutes = RECENT_MINUTES
    minutes = int(HEALTH_WINDOW.total_seconds() // 60)
    since = now - HEALTH_WINDOW
    counts = channel_minutes(conn, since, minutes)
    stats = outbox_stats(conn, since)
    rates: dict[str, dict[str, Any]] = {}

    def entry(channel: str) -> dict[str, Any]:
        return rates.setdefault(channel, empty_rates())

    recent = minutes - recent_minutes  # the first minute bucket of the recent window
    for direction, rows in (("in", counts.inbound), ("out", counts.outbound)):
        for channel, minute, n in rows:
            entry(channel)[f"{direction}_last_hour"] += n
            if minute >= recent:
                entry(channel)[f"{direction}_last_5m"] += n
    for channel, n in counts.failed.items():
        entry(channel)["failed_last_hour"] += n
    for channel, found in stats.items():
        entry(channel)["errors_by_code"] = dict(sorted(found["errors"].items()))
    for item in rates.values():
        for direction in ("in", "out"):
            item[f"{direction}_per_min_last_hour"] = round(
                item[f"{direction}_last_hour"] / minutes, 2)
            item[f"{direction}_per_min_last_5m"] = round(
                item[f"{direction}_last_5m"] / recent_minutes, 2)
        item["errors_last_hour"] = sum(item["errors_by_code"].values())
        item["rate_limit_hits"] = item["errors_by_code"].get(RATE_LIMIT_CODE, 0)
    return rates


def traffic(broker: CredentialsBroker, tenants: list[str], now: datetime | None = None,
            minutes: int = 60) -> dict[str, Any]:
    """Messages in and out per minute over the last `minutes` (inbound rows by `received_at`,
    outbox rows by `accepted_at`: when the provider took them), in total and per tenant and
    channel; failures of outbox rows updated in the window. A tenant database that cannot be
    read is named in `errors` instead of failing the rest.

    `{"since", "minutes", "in": [per minute], "out": [...], "channels": [{"tenant",
    "channel", "in", "out", "failed"}], "errors": {tenant: reason}}`."""
    now = now or utcnow()
    since = now - timedelta(minutes=minutes)
    per_in, per_out = [0] * minutes, [0] * minutes
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    problems: dict[str, str] = {}

    def entry(tenant: str, channel: str) -> dict[str, Any]:
        return rows.setdefault((tenant, channel), {"tenant": tenant, "channel": channel,
                                                   "in": 0, "out": 0, "failed": 0})

    for slug in tenants:
        try:
            with broker.tenant_store(slug).engine.connect() as conn:
                minute_counts = channel_minutes(conn, since, minutes)
        except Exception as exc:  # one tenant's database down must not hide the others
            problems[slug] = f"the tenant database could not be read ({type(exc).__name__})"
            continue
        for channel, minute, count in minute_counts.inbound:
            per_in[minute] += count
            entry(slug, channel)["in"] += count
        for channel, minute, count in minute_counts.outbound:
            per_out[minute] += count
            entry(slug, channel)["out"] += count
        for channel, count in minute_counts.failed.items():
            entry(slug, channel)["failed"] += count
    return {"since": _iso(since), "minutes": minutes, "in": per_in, "out": per_out,
            "channels": sorted(rows.values(), key=lambda r: (r["tenant"], r["channel"])),
            "errors": problems}
