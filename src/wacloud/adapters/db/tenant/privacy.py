"""SQL for LGPD: find, export, erase or anonymize one contact's rows in a tenant DB, purge rows
past the tenant's retention, and the registry side (retention setting, parked payloads).

Synchronous SQLAlchemy Core like the rest of `adapters/db`; `wacloud.privacy.lgpd` runs it in a
thread. Every change goes by primary key in chunks of short transactions, so a running gateway
writing the same SQLite file waits milliseconds, not the length of the whole erasure.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from wacloud.adapters.db.registry.store import ParkedItem, Registry, RegistryError, Tenant, parked
from wacloud.adapters.db.registry.store import tenants as tenants_table
from wacloud.adapters.db.tenant import tables as t
from wacloud.adapters.db.tenant.views import message_view, outbound_view
from wacloud.domain.contacts import ContactMatcher, MessageRef
from wacloud.domain.model import OutboundStatus

CHUNK = 500
PURGE_BATCH = 1000
# Outbox rows still on their way out: erasing keeps them from leaving, retention never
# touches them (a send waiting that long is a problem to see, not to lose silently).
OPEN_OUTBOUND = [OutboundStatus.PENDING.value, OutboundStatus.RESERVED.value,
                 OutboundStatus.QUEUED.value]
ERASED_REASON = "erased at the contact's request (LGPD)"


@dataclass(slots=True)
class ContactRows:
    """Primary keys of one contact's rows in one tenant DB."""

    messages: list[int] = field(default_factory=list)
    outbound: list[int] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    notices: list[int] = field(default_factory=list)
    refs: set[MessageRef] = field(default_factory=set)
    media_keys: set[str] = field(default_factory=set)

    def counts(self) -> dict[str, int]:
        return {"messages": len(self.messages), "outbound_messages": len(self.outbound),
                "status_events": len(self.statuses), "notices": len(self.notices)}


def _chunks(ids: Sequence[Any], size: int = CHUNK) -> Iterator[list[Any]]:
    for start in range(0, len(ids), size):
        yield list(ids[start:start + size])


def like_pattern(digits: str) -> str:
    """A LIKE pattern for the digits in order with anything between them: it finds every
    written form of the number ("+55 (11) 98765-4321", chat ids); Python then confirms."""
    return "%" + "%".join(digits) + "%"


def _identity_filter(columns: Sequence[sa.ColumnElement[Any]], matcher: ContactMatcher
                     ) -> sa.ColumnElement[bool]:
    terms: list[sa.ColumnElement[bool]] = []
    for column in columns:
        terms.append(column == matcher.given)
        if matcher.digits is not None:
            terms.append(column.like(like_pattern(matcher.digits)))
    return sa.or_(*terms)


def _contact_messages(conn: Connection, matcher: ContactMatcher, found: ContactRows) -> None:
    m = t.messages.c
    query = sa.select(m.id, m.channel, m.provider_message_id, m.sender, m.recipient,
                      m.contact_wa_id, m.contact_user_id, m.media_key).where(
        _identity_filter([m.sender, m.recipient, m.contact_wa_id, m.contact_user_id], matcher))
    for row in conn.execute(query):
        if matcher.matches_any((row.sender, row.recipient, row.contact_wa_id,
                                row.contact_user_id)):
            found.messages.append(row.id)
            found.refs.add((row.channel, row.provider_message_id))
            if row.media_key:
                found.media_keys.add(row.media_key)


def _contact_outbound(conn: Connection, matcher: ContactMatcher, found: ContactRows) -> None:
    o = t.outbound_messages.c
    query = sa.select(o.id, o.channel, o.provider_message_id, o.recipient).where(
        _identity_filter([o.recipient], matcher))
    for row in conn.execute(query):
        if matcher.matches(row.recipient):
            found.outbound.append(row.id)
            if row.provider_message_id:
                found.refs.add((row.channel, row.provider_message_id))


def _contact_statuses(conn: Connection, matcher: ContactMatcher, found: ContactRows) -> None:
    s = t.status_events.c
    ids: set[int] = set()
    query = sa.select(s.id, s.recipient, s.recipient_user_id).where(
        _identity_filter([s.recipient, s.recipient_user_id], matcher))
    ids.update(row.id for row in conn.execute(query)
               if matcher.matches_any((row.recipient, row.recipient_user_id)))
    # Receipts of the contact's messages that do not name a recipient.
    for chunk in _chunks(sorted({pmid for _, pmid in found.refs})):
        by_ref = sa.select(s.id, s.channel, s.provider_message_id).where(
            s.provider_message_id.in_(chunk))
        ids.update(row.id for row in conn.execute(by_ref)
                   if (row.channel, row.provider_message_id) in found.refs)
    found.statuses = sorted(ids)


def _contact_notices(conn: Connection, matcher: ContactMatcher, found: ContactRows) -> None:
    # Notices are few and their contact, if any, sits anywhere in the provider's JSON.
    n = t.notices.c
    for row in conn.execute(sa.select(n.id, n.raw).execution_options(yield_per=CHUNK)):
        if row.raw is not None and matcher.mentioned_in(row.raw):
            found.notices.append(row.id)


def find_contact_rows(engine: Engine, matcher: ContactMatcher,
                      extra_refs: set[MessageRef] | None = None) -> ContactRows:
    """Every row of the contact: messages in and out (by sender, recipient, wa_id or user
    id), outbox rows (by recipient), receipts (by recipient or for one of those messages, or
    of `extra_refs`) and notices that name the contact anywhere in their body."""
    found = ContactRows(refs=set(extra_refs or ()))
    with engine.connect() as conn:
        _contact_messages(conn, matcher, found)
        _contact_outbound(conn, matcher, found)
        _contact_statuses(conn, matcher, found)
        _contact_notices(conn, matcher, found)
    return found


def _rows(conn: Connection, table: sa.Table, ids: Sequence[int]) -> list[Any]:
    out: list[Any] = []
    for chunk in _chunks(sorted(ids)):
        out.extend(conn.execute(sa.select(table).where(table.c.id.in_(chunk))
                                .order_by(table.c.id)).mappings().all())
    return out


def _plain(row: Any) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in dict(row).items()}


def export_rows(engine: Engine, found: ContactRows) -> dict[str, list[dict[str, Any]]]:
    """The contact's rows in full (right of access): the public message shape plus every
    stored column that shape leaves out (raw provider JSON, legacy request, media source)."""
    with engine.connect() as conn:
        messages = []
        for row in _rows(conn, t.messages, found.messages):
            view = message_view(row)
            view.update(raw=row["raw"], media_link=row["media_link"],
                        updated_at=_plain(row)["updated_at"])
            messages.append(view)
        outbound = []
        for row in _rows(conn, t.outbound_messages, found.outbound):
            view = outbound_view(row)
            plain = _plain(row)
            view.update({k: plain[k] for k in (
                "recipient", "request_url", "request_body", "request_headers",
                "response_excerpt", "reserved_at", "queued_at", "accepted_at",
                "delivered_at", "read_at")})
            outbound.append(view)
        statuses = [_plain(r) for r in _rows(conn, t.status_events, found.statuses)]
        notices = [_plain(r) for r in _rows(conn, t.notices, found.notices)]
    return {"messages": messages, "outbound_messages": outbound, "status_events": statuses,
            "notices": notices}


def _by_ids(conn: Connection, statement: Any, table: sa.Table, ids: Sequence[int]) -> int:
    count = 0
    for chunk in _chunks(sorted(ids)):
        count += max(conn.execute(statement.where(table.c.id.in_(chunk))).rowcount, 0)
    return count


def delete_rows(engine: Engine, found: ContactRows) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name, table, ids in (("messages", t.messages, found.messages),
                             ("outbound_messages", t.outbound_messages, found.outbound),
                             ("status_events", t.status_events, found.statuses),
                             ("notices", t.notices, found.notices)):
        counts[name] = 0
        for chunk in _chunks(sorted(ids)):
            with engine.begin() as conn:
                counts[name] += _by_ids(conn, table.delete(), table, chunk)
    return counts


def anonymize_rows(engine: Engine, found: ContactRows, now: datetime) -> dict[str, int]:
    """Blank what identifies or describes the person; keep what statistics need (type,
    direction, channel, ids, timestamps, statuses, error codes, media type and size).
    JSON columns get SQL NULL (`sa.null()`), not the JSON text `null`."""
    null = sa.null()
    m, o = t.messages, t.outbound_messages
    plans: list[tuple[str, sa.Table, list[int], list[Any]]] = [
        ("messages", m, found.messages, [m.update().values(
            sender=None, recipient=None, contact_wa_id=None, contact_user_id=None,
            contact_name=None, text=None, content=null, raw=null, media_status=None,
            media_key=None, media_sha256=None, media_filename=None, media_provider_id=None,
            media_link=None, media_error=None, updated_at=now)]),
        ("outbound_messages", o, found.outbound, [
            # A message not sent yet must never leave once its recipient is gone.
            o.update().where(o.c.status.in_(OPEN_OUTBOUND)).values(
                status=OutboundStatus.FAILED.value, error_code="erased",
                error_reason=ERASED_REASON),
            # request_hash: a digest of the body (recipient and text); the idempotency key
            # stays, so a late retry of the erased message is refused (409), not sent.
            o.update().values(recipient=None, content=null, request_body=None,
                              request_headers=None, client_reference=None,
                              response_excerpt=None, request_hash=None, updated_at=now)]),
        ("status_events", t.status_events, found.statuses, [t.status_events.update().values(
            recipient=None, recipient_user_id=None, raw=null)]),
        ("notices", t.notices, found.notices, [t.notices.update().values(raw=null)]),
    ]
    counts: dict[str, int] = {}
    for name, table, ids, statements in plans:
        counts[name] = 0
        for chunk in _chunks(sorted(ids)):
            with engine.begin() as conn:
                for index, statement in enumerate(statements):
                    changed = _by_ids(conn, statement, table, chunk)
                    if index == len(statements) - 1:
                        counts[name] += changed
    return counts


def referenced_media_keys(engine: Engine, keys: Sequence[str],
                          exclude_ids: set[int] | None = None) -> set[str]:
    """Keys still used by some message row (other than `exclude_ids`): media keys are
    content-addressed per tenant, channel and day, so two people sending the same file the
    same day share one object, and it must stay for the one not being erased."""
    used: set[str] = set()
    m = t.messages.c
    with engine.connect() as conn:
        for chunk in _chunks(sorted(keys)):
            rows = conn.execute(sa.select(m.id, m.media_key).where(m.media_key.in_(chunk)))
            used.update(row.media_key for row in rows
                        if not exclude_ids or row.id not in exclude_ids)
    return used


# -- retention --------------------------------------------------------------------------------

def purge_before(engine: Engine, cutoff: datetime, batch: int = PURGE_BATCH
                 ) -> tuple[dict[str, int], set[str]]:
    """Delete rows stored before `cutoff`, in batches; returns counts and the media keys of
    the deleted messages (the caller deletes those no longer referenced)."""
    counts: dict[str, int] = {}
    keys: set[str] = set()
    o = t.outbound_messages
    targets: list[tuple[str, sa.Table, sa.ColumnElement[bool]]] = [
        ("messages", t.messages, t.messages.c.received_at < cutoff),
        ("outbound_messages", o, sa.and_(o.c.created_at < cutoff,
                                         o.c.status.not_in(OPEN_OUTBOUND))),
        ("status_events", t.status_events, t.status_events.c.received_at < cutoff),
        ("notices", t.notices, t.notices.c.received_at < cutoff),
    ]
    for name, table, condition in targets:
        counts[name] = 0
        while True:
            with engine.begin() as conn:
                columns = [table.c.id]
                if table is t.messages:
                    columns.append(t.messages.c.media_key)
                rows = conn.execute(sa.select(*columns).where(condition)
                                    .order_by(table.c.id).limit(batch)).all()
                if not rows:
                    break
                if table is t.messages:
                    keys.update(row[1] for row in rows if row[1])
                counts[name] += _by_ids(conn, table.delete(), table, [row[0] for row in rows])
            if len(rows) < batch:
                break
    return counts, keys


# -- registry side ----------------------------------------------------------------------------

def set_retention(registry: Registry, slug: str, days: int | None) -> Tenant:
    """Keep a tenant's messages `days` days (None: forever)."""
    if days is not None and days <= 0:
        days = None
    with registry.engine.begin() as conn:
        result = conn.execute(tenants_table.update().where(tenants_table.c.slug == slug)
                              .values(retention_days=days))
        if result.rowcount == 0:
            raise RegistryError(f"unknown tenant {slug!r}")
        registry.bump(conn)
    return registry.tenant(slug)


def all_parked(registry: Registry) -> list[ParkedItem]:
    """Every parked item, replayed or not (a replayed one still holds its payload)."""
    with registry.engine.connect() as conn:
        rows = conn.execute(sa.select(parked).order_by(parked.c.id)).mappings().all()
    return [ParkedItem(**row) for row in rows]


def delete_parked(registry: Registry, ids: Sequence[int]) -> int:
    with registry.engine.begin() as conn:
        return _by_ids(conn, parked.delete(), parked, ids)


def rewrite_parked(registry: Registry, item_id: int, payload: str) -> None:
    """Replace a parked payload by what remains of it once a contact's events are gone. The
    signed webhook kept beside it goes too: it holds the contact's events (a replay of the
    remainder then has nothing to check its signature against, and refuses Meta events)."""
    with registry.engine.begin() as conn:
        conn.execute(parked.update().where(parked.c.id == item_id).values(
            payload=payload, raw_body=None, signature=None))
