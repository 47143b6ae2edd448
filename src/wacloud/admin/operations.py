"""Operator actions shared by the CLI and the admin API: add tenants and channels, test a
channel's token, replay or discard parked items and dead letters, re-fetch media."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from wacloud.adapters.db.reachability import SERVER_FIX, check_and_migrate
from wacloud.adapters.db.registry.store import ParkedItem, Registry, RegistryError, Tenant
from wacloud.adapters.db.tenant import outbox
from wacloud.adapters.http.provider_client import ProviderCallError, ProviderClient, ProviderTimeout
from wacloud.adapters.queue.base import Queue, ReceivedMessage
from wacloud.credentials.broker import CredentialsBroker
from wacloud.domain import validation
from wacloud.domain.model import Channel, MediaStatus, Provider
from wacloud.observability.logs import mask
from wacloud.providers import port
from wacloud.providers.token_check import TokenCheck
from wacloud.stages.envelopes import (
    INBOUND_RAW,
    OUTBOUND_SEND,
    RawWebhook,
    dumps,
    envelope_bytes,
    media_job,
)

log = logging.getLogger("wacloud.admin.operations")
DLQ_DISCARDS = "dlq-discards.jsonl"
PARKED_DISCARDS = "parked-discards.jsonl"


def add_tenant(registry: Registry, tenants_dir: Path, slug: str,
               db_url: str | None = None, *, db_url_hint: str = "--db-url") -> Tenant:
    """Register a tenant whose database works: the slug and URL are checked, then the
    database is reached and migrated, and only then registered, so a database that is down
    leaves nothing behind. Raises InvalidValue (a value refused), RegistryError (the slug is
    taken) or DatabaseUnreachable (why, password masked). `db_url_hint` names the URL's
    field in the advice (the CLI's flag, the API's field)."""
    validation.slug(slug)
    if db_url is not None:
        db_url = validation.db_url(db_url)
    if any(t.slug == slug for t in registry.tenants()):
        raise RegistryError(f"tenant {slug!r} already exists")
    if db_url is None:
        tenants_dir.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{(tenants_dir / f'{slug}.db').resolve()}"
        fix = f"check that {tenants_dir} is writable"
    else:
        url, fix = db_url, SERVER_FIX + f", or leave out {db_url_hint} for a SQLite file"
    check_and_migrate(url, "tenant", "the tenant database", fix)
    return registry.add_tenant(slug, db_url)


def channel_values(values: dict[str, Any], *, allow_http: bool = False) -> dict[str, Any]:
    """A new channel's values (`Registry.add_channel` arguments) as they are stored: ids,
    token, display number, API base URL, Graph version, mps and media hosts checked (InvalidValue
    names the field and its rule). What `wacloud channel add` and the admin API both do."""
    provider: Provider = values["provider"]
    out = dict(values)
    out["key"] = validation.provider_key(provider, values["key"])
    if "token" in values:
        out["token"] = validation.token(values["token"])
    if provider is Provider.META:
        out["phone_number_id"] = out["key"]
        out["waba_id"] = validation.numeric_id(values["waba_id"], "WABA id")
        out["display_number"] = validation.display_number(values["display_number"])
    elif provider is Provider.CHAKRA:
        out["phone_number_id"] = validation.numeric_id(values["phone_number_id"],
                                                       "phone number id")
    if values.get("api_base_url") is not None:
        out["api_base_url"] = validation.api_base_url(values["api_base_url"],
                                                      allow_http=allow_http)
    if "graph_version" in values:
        out["graph_version"] = validation.graph_version(values["graph_version"])
    out["mps"] = validation.mps(values["mps"])
    out["media_hosts"] = validation.media_hosts(values.get("media_hosts") or ())
    return out


def add_channel(registry: Registry, values: dict[str, Any], *, allow_http: bool = False
                ) -> Channel:
    """Check a new channel's values (`channel_values`) and register it: what the admin API and
    the dashboard do. InvalidValue for a value refused, RegistryError for an unknown tenant or a
    channel that already exists."""
    return registry.add_channel(**channel_values(values, allow_http=allow_http))


async def check_channel_token(http: ProviderClient, channel: Channel,
                              timeout: float = 10.0) -> TokenCheck:
    """Ask the provider, with one cheap read-only call, whether the channel's token works."""
    provider = port(channel.provider)
    try:
        answer = await http.perform(provider.token_check_request(channel), timeout)
    except ProviderTimeout:
        return TokenCheck(False, None, "timeout", "the provider did not answer in time")
    except ProviderCallError as exc:
        return TokenCheck(False, None, "network", f"the provider could not be reached "
                          f"({exc.kind})")
    return provider.read_token_check(channel, answer.status_code, answer.content)


def replay_envelope(item: ParkedItem) -> bytes:
    """What goes back on `inbound.raw` for a parked item, by the stage that parked it.

    Marked as a replay, with the signed webhook and its signature when the item kept them:
    the receive stage checks each Meta event again against the channel it now routes to, and
    refuses Meta events that bring nothing to check (parked before signatures were kept)."""
    if item.stage == "receive":
        data = envelope_bytes(item.payload)
        try:
            raw = RawWebhook.decode(data)
        except (ValueError, KeyError, TypeError):
            return data  # not an envelope at all: the receive stage parks it again
        raw.replay = True
        return raw.encode()
    if item.stage == "write":
        body = item.payload.encode()
        if item.raw_body is not None:
            body = dumps({"events": json.loads(item.payload), "webhook": item.raw_body})
        return RawWebhook(provider=item.provider or "meta", channel_key=item.channel_key,
                          received_at=time.time(), body=body, kind="events",
                          signature=item.signature, replay=True).encode()
    raise ValueError(f"parked item {item.id} comes from stage {item.stage!r}, "
                     "which has no replay path")


async def replay_parked(registry: Registry, raw_queue: Queue, items: list[ParkedItem],
                        progress: Callable[[int], None] | None = None) -> list[int]:
    replayed: list[int] = []
    for item in items:
        await raw_queue.send(replay_envelope(item))
        await asyncio.to_thread(registry.mark_replayed, item.id)
        replayed.append(item.id)
        if progress is not None:
            progress(1)
    return replayed


async def refetch_media(broker: CredentialsBroker, tenant: str, media_queue: Queue,
                        statuses: list[str]) -> int:
    """Queue a fresh copy attempt for every message of `tenant` whose media is in `statuses`."""
    store = broker.tenant_store(tenant)
    messages = await asyncio.to_thread(store.messages_with_media,
                                       statuses or [MediaStatus.FAILED.value])
    jobs = [media_job(tenant, message, force=True) for message in messages]
    if jobs:
        await media_queue.send_batch(jobs)
    return len(jobs)


def dead_letter_summary(queue: str, message: ReceivedMessage) -> dict[str, Any]:
    """What an operator may see of a dead letter: ids, size, times, the reason of its last
    failure and whom it concerns; never its content (texts, media links, tokens). A letter
    without a recorded failure was moved for its receives alone (by the broker itself: SQS's
    redrive policy, RabbitMQ's delivery limit): the processes that took it died or ran out of
    time holding it, which the reason then says."""
    reason = message.attributes.get("reason") or (
        f"no failure recorded: received {message.receive_count} times without being "
        "acknowledged (the processes handling it died or ran out of time)")
    summary: dict[str, Any] = {
        "id": message.message_id, "queue": queue, "size": len(message.body),
        "sent_at": datetime.fromtimestamp(message.sent_at, UTC).isoformat(),
        "receive_count": message.receive_count, "reason": reason, "tenant": None}
    if queue == INBOUND_RAW:
        with contextlib.suppress(ValueError, KeyError):
            raw = RawWebhook.decode(message.body)
            summary.update(provider=raw.provider, channel=raw.channel_key, kind=raw.kind)
        return summary
    try:
        data = json.loads(message.body)
    except ValueError:
        return summary
    if not isinstance(data, dict):
        return summary
    if queue == OUTBOUND_SEND and isinstance(data.get("message"), dict):
        # The fields `wacloud dlq list` always showed for outbound messages.
        item = data["message"]
        summary.update(tenant=item.get("tenant"), row_id=item.get("row_id"),
                       channel=item.get("channel_key"), to=item.get("recipient"),
                       type=item.get("type"))
    elif isinstance(data.get("tenant"), str):
        summary["tenant"] = data["tenant"]
        if "row_id" in data:
            summary["row_id"] = data["row_id"]
    return summary


async def replay_queue_dead_letters(broker: CredentialsBroker, name: str, queue: Queue,
                                    ids: list[str] | None,
                                    progress: Callable[[int], None] | None = None) -> list[str]:
    """Put dead letters of queue `name` back on it (all, or `ids`): outbound rows go back to
    queued first. Returns the ids moved; `progress` hears of each letter handled."""
    if name == OUTBOUND_SEND:
        return await replay_dead_letters(broker, queue, ids, progress)
    letters = [m.message_id for m in await queue.dead_letters(limit=100_000)
               if ids is None or m.message_id in ids]
    if letters:
        await queue.redrive(letters)
    if progress is not None:
        progress(len(letters))
    return letters


async def discard_dead_letters(data_dir: Path, name: str, queue: Queue, ids: list[str] | None,
                               reason: str) -> dict[str, Any]:
    """Delete dead letters of queue `name` for good (all, or `ids`); the reason and what was
    discarded (ids, sizes, times, tenants; never bodies) go to `dlq-discards.jsonl` in the
    data dir and the log. Returns that record."""
    letters = [dead_letter_summary(name, m) for m in await queue.dead_letters(limit=100_000)
               if ids is None or m.message_id in ids]
    if letters:
        await queue.discard([item["id"] for item in letters])
    done = [item["id"] for item in letters]
    record = {"at": time.time(), "queue": name, "ids": done, "reason": mask(reason.strip()),
              "letters": [{k: item.get(k) for k in ("id", "size", "sent_at", "receive_count",
                                                     "reason", "tenant")} for item in letters]}
    _append_record(data_dir / DLQ_DISCARDS, record)
    logging.getLogger("wacloud.dlq").warning(
        "discarded %d dead letter(s) of %s (%s): %s", len(done), name,
        ", ".join(done) or "none", record["reason"])
    return record


def discard_parked(registry: Registry, data_dir: Path, ids: Sequence[int],
                   reason: str) -> dict[str, Any]:
    """Delete parked items for good; their summaries (never payloads) and the reason go to
    `parked-discards.jsonl` in the data dir and the log. Returns that record."""
    items = []
    for item_id in ids:
        with contextlib.suppress(RegistryError):
            items.append(registry.parked_item(item_id).summary())
    done = registry.delete_parked([item["id"] for item in items])
    record = {"at": time.time(), "ids": done, "reason": mask(reason.strip()),
              "items": [item for item in items if item["id"] in done]}
    _append_record(data_dir / PARKED_DISCARDS, record)
    log.warning("discarded %d parked item(s) (%s): %s", len(done),
                ", ".join(map(str, done)) or "none", record["reason"])
    return record


def _append_record(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")


async def replay_dead_letters(broker: CredentialsBroker, send_queue: Queue,
                              ids: list[str] | None,
                              progress: Callable[[int], None] | None = None) -> list[str]:
    """Reset each dead letter's row to queued, then move the letters back to the send queue."""
    letters = await send_queue.dead_letters(limit=100_000)
    chosen = [m for m in letters if ids is None or m.message_id in ids]
    for letter in chosen:
        data = json.loads(letter.body)["message"]
        store = await asyncio.to_thread(broker.tenant_store, data["tenant"])
        await asyncio.to_thread(outbox.requeue_failed, store.engine, int(data["row_id"]))
        if progress is not None:
            progress(1)
    if chosen:
        await send_queue.redrive([m.message_id for m in chosen])
    return [m.message_id for m in chosen]
