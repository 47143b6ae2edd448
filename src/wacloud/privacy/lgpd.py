"""LGPD (Brazil's data-protection law): erase or export everything stored about one contact in
one tenant, and purge what is older than a tenant's retention period.

Erasure covers the tenant DB (messages in and out, outbox rows, receipts, notices), the media
objects of those messages, the contact's events still in the queues and the parked payloads.
Order matters while a gateway is running: queues first, then a fresh look at the DB, so that
whatever the stages wrote while the queues were being cleaned is caught. A queued message that
a stage was working on at that moment can still be written after the DB pass; the report counts
those (`in_flight`) and running the erasure again once they have landed removes them.

Nothing here logs a phone number or a user id; the identifier only appears in the export.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from wacloud.adapters.db.errors import TroubleLog
from wacloud.adapters.db.registry.store import ParkedItem, Registry
from wacloud.adapters.db.tenant import privacy as db
from wacloud.adapters.db.tenant.store import TenantStore
from wacloud.adapters.db.types import utcnow
from wacloud.adapters.media.base import MediaStore
from wacloud.adapters.queue.base import Queue
from wacloud.credentials.broker import CredentialsBroker
from wacloud.domain.contacts import ContactMatcher
from wacloud.privacy.queues import (
    Plan,
    QueueFinding,
    Scope,
    apply_queue_findings,
    parked_remainder,
    plan_parked,
    queue_map_targets,
    scan_queues,
)

if TYPE_CHECKING:
    from wacloud.bootstrap import Gateway

log = logging.getLogger(__name__)
_TROUBLE = TroubleLog(log)


class PrivacyError(ValueError):
    """A request that cannot be carried out as asked (unknown tenant, a channel's own number)."""


@dataclass(slots=True)
class PrivacyContext:
    """What erasure and export reach into. `dead_letter` gives a queue for a DLQ name, so
    that the remainder of a split dead letter stays a dead letter."""

    broker: CredentialsBroker
    registry: Registry
    queues: Mapping[str, Queue]
    media_store: MediaStore
    dead_letter: Callable[[str], Queue] | None = None

    @classmethod
    def from_gateway(cls, gateway: Gateway) -> PrivacyContext:
        from wacloud.adapters.queue.base import QueueSpec

        return cls(gateway.broker, gateway.registry, gateway.queues, gateway.media_store,
                   lambda name: gateway.queue_broker.queue(QueueSpec(name)))


@dataclass(slots=True)
class ErasureReport:
    tenant: str
    mode: str  # "delete" or "anonymize"
    dry_run: bool
    messages: int = 0
    outbound_messages: int = 0
    status_events: int = 0
    notices: int = 0
    media_objects: int = 0
    queue_messages_deleted: int = 0
    queue_messages_rewritten: int = 0  # split: the contact's events out, the rest kept
    queued_events: int = 0
    in_flight: int = 0  # being processed while erased: run the erasure again shortly
    parked_deleted: int = 0
    parked_rewritten: int = 0
    parked_events: int = 0
    queues_not_scanned: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def removed(self) -> dict[str, int]:
        """The counts per kind, for printing."""
        return {k: v for k, v in self.to_dict().items() if isinstance(v, int)
                and not isinstance(v, bool)}


def _matcher(contact: str | ContactMatcher) -> ContactMatcher:
    if isinstance(contact, ContactMatcher):
        return contact
    try:
        return ContactMatcher.parse(contact)
    except ValueError as exc:
        raise PrivacyError(str(exc)) from None


def _check_tenant(ctx: PrivacyContext, tenant: str, matcher: ContactMatcher) -> None:
    if not ctx.broker.has_tenant(tenant):
        ctx.broker.refresh(force=True)
        if not ctx.broker.has_tenant(tenant):
            raise PrivacyError(f"unknown tenant {tenant!r}")
    # The business's own number is on every message of a channel (Meta puts it in the
    # recipient column): "erasing" it would wipe the channel, which no LGPD request means.
    for channel in ctx.registry.channels(tenant):
        if matcher.matches_any((channel.display_number, channel.phone_number_id, channel.key)):
            raise PrivacyError(f"that is the number of {tenant}'s own channel {channel.key}, "
                               "not a contact")


async def _scope(ctx: PrivacyContext, tenant: str, matcher: ContactMatcher
                 ) -> tuple[TenantStore, db.ContactRows, Scope]:
    await asyncio.to_thread(_check_tenant, ctx, tenant, matcher)
    store = await asyncio.to_thread(ctx.broker.tenant_store, tenant)
    found = await asyncio.to_thread(db.find_contact_rows, store.engine, matcher)
    scope = Scope(tenant, matcher, ctx.broker, set(found.outbound), set(found.refs))
    return store, found, scope


def _plan_parked(registry: Registry, scope: Scope, anonymize: bool
                 ) -> list[tuple[ParkedItem, Plan]]:
    plans = []
    for item in db.all_parked(registry):
        plan = plan_parked(item.stage, item.payload, scope, anonymize)
        if (plan.action == "keep" and item.raw_body is not None
                and scope.matcher.mentioned_in_text(item.raw_body)):
            # The signed webhook kept for the replay check also holds the contact's entries
            # that went to this tenant; it goes, the parked events stay.
            plan = Plan(action="rewrite", body=item.payload.encode(),
                        matched=[{"signed_body_of_parked_item": item.id}])
        if plan.action != "keep":
            plans.append((item, plan))
    return plans


def _apply_parked(registry: Registry, plans: list[tuple[ParkedItem, Plan]]) -> None:
    for item, plan in plans:
        if plan.action == "rewrite":
            db.rewrite_parked(registry, item.id, parked_remainder(plan))
    db.delete_parked(registry, [item.id for item, plan in plans if plan.action == "delete"])


async def _delete_unreferenced(store: TenantStore, media_store: MediaStore, keys: Iterable[str],
                               exclude_ids: Iterable[int] = (), dry_run: bool = False) -> int:
    """Delete the media objects no other row uses; returns how many existed."""
    wanted = sorted(set(keys))
    if not wanted:
        return 0
    used = await asyncio.to_thread(db.referenced_media_keys, store.engine, wanted,
                                   set(exclude_ids))
    count = 0
    for key in wanted:
        if key in used or not await media_store.exists(key):
            continue
        if not dry_run:
            await media_store.delete(key)
        count += 1
    return count


async def erase_contact(ctx: PrivacyContext, tenant: str, contact: str | ContactMatcher, *,
                        anonymize: bool = False, dry_run: bool = False) -> ErasureReport:
    """Delete (or anonymize) every trace of one contact in one tenant; see the module doc."""
    matcher = _matcher(contact)
    store, found, scope = await _scope(ctx, tenant, matcher)
    report = ErasureReport(tenant, "anonymize" if anonymize else "delete", dry_run)
    findings, report.queues_not_scanned = await scan_queues(ctx.queues.values(), scope,
                                                            anonymize)
    parked = await asyncio.to_thread(_plan_parked, ctx.registry, scope, anonymize)
    media_keys = set(found.media_keys)
    for plan in [f.plan for f in findings] + [p for _, p in parked]:
        media_keys |= plan.media_keys
    media_keys -= scope.others_media
    report.queued_events = sum(len(f.plan.matched) for f in findings)
    report.parked_events = sum(len(p.matched) for _, p in parked)
    report.parked_deleted = sum(1 for _, p in parked if p.action == "delete")
    report.parked_rewritten = len(parked) - report.parked_deleted
    if dry_run:
        _count_findings(report, findings)
        counts = found.counts()
        report.media_objects = await _delete_unreferenced(
            store, ctx.media_store, media_keys, found.messages, dry_run=True)
    else:
        queue_counts = await apply_queue_findings(
            findings, queue_map_targets(ctx.queues, ctx.dead_letter))
        report.queue_messages_deleted = queue_counts["deleted"]
        report.queue_messages_rewritten = queue_counts["rewritten"]
        report.in_flight = queue_counts["in_flight"]
        await asyncio.to_thread(_apply_parked, ctx.registry, parked)
        # A fresh look: rows the stages stored while the queues were being cleaned.
        found = await asyncio.to_thread(db.find_contact_rows, store.engine, matcher,
                                        scope.refs)
        media_keys |= found.media_keys - scope.others_media
        if anonymize:
            counts = await asyncio.to_thread(db.anonymize_rows, store.engine, found, utcnow())
        else:
            counts = await asyncio.to_thread(db.delete_rows, store.engine, found)
        report.media_objects = await _delete_unreferenced(store, ctx.media_store, media_keys)
    report.messages = counts["messages"]
    report.outbound_messages = counts["outbound_messages"]
    report.status_events = counts["status_events"]
    report.notices = counts["notices"]
    if not dry_run:
        log.info("privacy: %s contact data in tenant %s: %s", report.mode, tenant,
                 report.removed())
    return report


def _count_findings(report: ErasureReport, findings: list[QueueFinding]) -> None:
    for finding in findings:
        if finding.plan.action == "rewrite":
            report.queue_messages_rewritten += 1
        else:
            report.queue_messages_deleted += 1
        if finding.message.attributes.get("state") == "in_flight":
            report.in_flight += 1


async def export_contact(ctx: PrivacyContext, tenant: str, contact: str | ContactMatcher
                         ) -> dict[str, Any]:
    """Everything stored about one contact in one tenant, as JSON-able data (right of
    access): rows in full, media metadata and object keys, and what is still queued or
    parked."""
    matcher = _matcher(contact)
    store, found, scope = await _scope(ctx, tenant, matcher)
    rows = await asyncio.to_thread(db.export_rows, store.engine, found)
    findings, not_scanned = await scan_queues(ctx.queues.values(), scope, anonymize=False)
    parked = await asyncio.to_thread(_plan_parked, ctx.registry, scope, False)
    media = [{"message_id": m["id"], "provider_message_id": m["provider_message_id"],
              **m["media"]} for m in rows["messages"] if m["media"] is not None]
    return {
        "tenant": tenant,
        "contact": matcher.given,
        "exported_at": utcnow().isoformat(),
        **rows,
        "media": media,
        "queued": [{"queue": f.message.attributes.get("queue", f.queue.spec.name),
                    "state": f.message.attributes.get("state"),
                    "queue_message_id": f.message.message_id, "items": f.plan.matched}
                   for f in findings],
        "parked": [{"id": item.id, "stage": item.stage, "reason": item.reason,
                    "created_at": item.created_at.isoformat(), "items": plan.matched}
                   for item, plan in parked],
        "queues_not_scanned": not_scanned,
    }


# -- retention --------------------------------------------------------------------------------

async def purge_expired(store: TenantStore, days: int, media_store: MediaStore,
                        now: datetime) -> dict[str, int]:
    """Delete a tenant's messages, finished outbox rows, receipts and notices stored more than
    `days` days before `now`, and the media objects only they used."""
    cutoff = now - timedelta(days=days)
    counts, keys = await asyncio.to_thread(db.purge_before, store.engine, cutoff)
    counts["media_objects"] = await _delete_unreferenced(store, media_store, keys)
    return counts


async def run_retention(registry: Registry, broker: CredentialsBroker, media_store: MediaStore,
                        now: datetime | None = None, only: str | None = None
                        ) -> dict[str, dict[str, int]]:
    """One pass over every tenant that has a retention period (or just `only`)."""
    now = now or utcnow()
    results: dict[str, dict[str, int]] = {}
    for tenant in await asyncio.to_thread(registry.tenants):
        if only is not None and tenant.slug != only:
            continue
        if not tenant.retention_days or tenant.retention_days <= 0:
            continue
        try:
            store = await asyncio.to_thread(broker.tenant_store, tenant.slug)
            counts = await purge_expired(store, tenant.retention_days, media_store, now)
        except Exception as exc:  # one tenant's unreachable DB must not stop the others' purge
            _TROUBLE.failed(f"tenant {tenant.slug}", "retention", exc)
            continue
        _TROUBLE.succeeded(f"tenant {tenant.slug}")
        results[tenant.slug] = counts
        if any(counts.values()):
            log.info("retention: tenant %s, older than %d days: %s", tenant.slug,
                     tenant.retention_days, counts)
    return results


async def retention_loop(gateway: Gateway) -> None:
    """Purge expired data of every tenant now and then every `retention_interval_s`, until
    `gateway.stop` is set."""
    while not gateway.stop.is_set():
        try:
            await run_retention(gateway.registry, gateway.broker, gateway.media_store)
        except Exception:  # a registry hiccup: try again next interval
            log.exception("retention pass failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(gateway.stop.wait(),
                                   timeout=gateway.settings.retention_interval_s)
