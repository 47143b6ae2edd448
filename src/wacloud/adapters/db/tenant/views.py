"""Read models: tenant rows turned into the public JSON shape of `wacloud messages` and
`wacloud notices`; message search with a cursor and one message's status timeline (the admin
API and the dashboard)."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from wacloud.adapters.db.tenant import tables as t
from wacloud.domain.model import (
    Contact,
    Direction,
    InboundMessage,
    MediaRef,
    MediaStatus,
    OutboundStatus,
    Provider,
    ProviderError,
    receipt_rank,
)


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def message_view(row: Any) -> dict[str, Any]:
    errors = row["errors"] or []
    media = None
    if row["media_status"] is not None:
        media = {"key": row["media_key"], "mime_type": row["media_mime_type"],
                 "sha256": row["media_sha256"], "size": row["media_size"],
                 "filename": row["media_filename"], "status": row["media_status"],
                 "error": row["media_error"], "provider_media_id": row["media_provider_id"]}
    return {
        "id": row["id"], "source": "messages", "provider": row["provider"],
        "provider_message_id": row["provider_message_id"], "channel": row["channel"],
        "direction": row["direction"], "type": row["type"], "from": row["sender"],
        "to": row["recipient"],
        "contact": {"wa_id": row["contact_wa_id"], "user_id": row["contact_user_id"],
                    "name": row["contact_name"]},
        "text": row["text"], "reply_to": row["reply_to"], "status": row["status"],
        "status_code": None, "timestamp": row["timestamp"], "content": row["content"] or {},
        "error": {"code": errors[0]["code"], "reason": errors[0]["reason"]} if errors else None,
        "errors": errors, "media": media, "received_at": _iso(row["received_at"]),
        "group_id": row["group_id"],
    }


def outbound_view(row: Any) -> dict[str, Any]:
    status = OutboundStatus(row["status"])
    created = row["created_at"]
    return {
        "id": row["id"], "source": "outbound", "provider": None,
        "provider_message_id": row["provider_message_id"], "channel": row["channel"],
        "direction": "out", "type": row["type"], "from": row["channel"],
        "to": row["recipient"], "text": (row["content"] or {}).get("body")
        if row["type"] == "text" else None,
        "reply_to": row["reply_to"], "status": status.label, "status_code": status.value,
        "timestamp": int(created.timestamp()) if created else None,
        "content": row["content"] or {}, "client_reference": row["client_reference"],
        "attempts": row["attempts"],
        "error": {"code": row["error_code"], "reason": row["error_reason"]}
        if row["error_code"] or row["error_reason"] else None,
        "media": None, "created_at": _iso(created), "updated_at": _iso(row["updated_at"]),
        "recipient_type": row["recipient_type"] or "individual",
        "group_id": row["recipient"] if row["recipient_type"] == "group" else None,
        "expires_at": _iso(row["expires_at"]),
    }


def list_messages(engine: Engine, direction: str | None = None, limit: int = 1000
                  ) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        query = sa.select(t.messages).order_by(t.messages.c.id).limit(limit)
        if direction is not None:
            query = query.where(t.messages.c.direction == direction)
        views = [message_view(row) for row in conn.execute(query).mappings()]
        if direction in (None, "out"):
            outbound = sa.select(t.outbound_messages).order_by(
                t.outbound_messages.c.id).limit(limit)
            views += [outbound_view(row) for row in conn.execute(outbound).mappings()]
    return views


def row_to_inbound(row: Any) -> InboundMessage:
    """Rebuild the normalized message from its row (media refetch, exports)."""
    media = None
    if row["media_status"] is not None:
        media = MediaRef(provider_media_id=row["media_provider_id"], link=row["media_link"],
                         mime_type=row["media_mime_type"], sha256=row["media_sha256"],
                         size=row["media_size"], filename=row["media_filename"],
                         key=row["media_key"], status=MediaStatus(row["media_status"]),
                         error=row["media_error"])
    return InboundMessage(
        provider=Provider(row["provider"]), channel_key=row["channel"],
        provider_message_id=row["provider_message_id"], type=row["type"],
        direction=Direction(row["direction"]), sender=row["sender"],
        recipient=row["recipient"],
        contact=Contact(row["contact_wa_id"], row["contact_user_id"], row["contact_name"]),
        text=row["text"], reply_to=row["reply_to"], timestamp=row["timestamp"],
        content=row["content"] or {}, media=media,
        errors=[ProviderError.from_dict(e) for e in row["errors"] or []], raw=row["raw"] or {},
        group_id=row["group_id"])


def notice_view(row: Any) -> dict[str, Any]:
    return {"id": row["id"], "provider": row["provider"], "channel": row["channel"],
            "field": row["field"], "errors": row["errors"] or [], "raw": row["raw"] or {},
            "received_at": _iso(row["received_at"])}


def list_notices(engine: Engine, limit: int = 100) -> list[dict[str, Any]]:
    """The latest `limit` notices (webhook-level errors, account and template updates),
    oldest first."""
    with engine.connect() as conn:
        query = sa.select(t.notices).order_by(t.notices.c.id.desc()).limit(limit)
        rows = list(conn.execute(query).mappings())
    return [notice_view(row) for row in reversed(rows)]


# -- search and timelines (the admin API and dashboard) --------------------------------------

# Sources of a search, in the order ties on time are broken: inbound rows, then the outbox.
SOURCES = {"messages": 0, "outbound": 1}


@dataclass(slots=True)
class MessageFilter:
    """What a message search asks; every field optional. `contact`: a phone number / wa_id,
    a BSUID or a group id, matched against sender, recipient and the contact's ids."""

    channel: str | None = None
    contact: str | None = None
    direction: str | None = None  # "in" | "out"
    status: str | None = None  # a status label (received, queued, delivered, failed, ...)
    since: datetime | None = None
    until: datetime | None = None


def encode_cursor(at: datetime, source: str, row_id: int) -> str:
    raw = json.dumps([at.isoformat(), SOURCES[source], row_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int, int]:
    """(time, source rank, id) of a cursor; ValueError when it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, rank, row_id = json.loads(raw)
        when = datetime.fromisoformat(at).astimezone(UTC)
        if (rank not in SOURCES.values() or not isinstance(row_id, int)
                or not 0 <= row_id < 2**63):
            raise ValueError
    except (ValueError, TypeError, OverflowError, binascii.Error, UnicodeDecodeError):
        raise ValueError("the cursor is not valid (use `next_cursor` as given)") from None
    return when, rank, row_id


def _window(at: Any, row_id: Any, source: int, filters: MessageFilter,
            after: tuple[datetime, int, int] | None) -> list[Any]:
    """The search's time range on one source's time column, and the page after the cursor."""
    conditions: list[Any] = []
    if filters.since:
        conditions.append(at >= filters.since)
    if filters.until:
        conditions.append(at < filters.until)
    if after:
        conditions.append(_after_cursor(at, row_id, source, after))
    return conditions


def _after_cursor(time_col: Any, id_col: Any, rank: int,
                  cursor: tuple[datetime, int, int]) -> Any:
    """Rows of a source ranked `rank` that come after the cursor in (time, rank, id)
    descending order."""
    at, crank, cid = cursor
    if rank < crank:
        return time_col <= at
    if rank > crank:
        return time_col < at
    return sa.or_(time_col < at, sa.and_(time_col == at, id_col < cid))


def _outbound_code(label: str) -> int | None:
    try:
        return OutboundStatus[label.upper()].value
    except KeyError:
        return None


def search_messages(engine: Engine, filters: MessageFilter, limit: int = 50,
                    cursor: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """Messages of one tenant, newest first (inbound by `received_at`, outbound by
    `created_at`), in the shape of `wacloud messages --json`; and the cursor of the next page
    (None on the last). ValueError for a cursor that is not one."""
    after = decode_cursor(cursor) if cursor else None
    m, o = t.messages, t.outbound_messages
    found: list[tuple[datetime, int, int, dict[str, Any]]] = []
    with engine.connect() as conn:
        conditions: list[Any] = []
        if filters.channel:
            conditions.append(m.c.channel == filters.channel)
        if filters.direction:
            conditions.append(m.c.direction == filters.direction)
        if filters.status:
            conditions.append(m.c.status == filters.status)
        if filters.contact:
            conditions.append(sa.or_(m.c.contact_wa_id == filters.contact,
                                     m.c.contact_user_id == filters.contact,
                                     m.c.sender == filters.contact,
                                     m.c.recipient == filters.contact,
                                     m.c.group_id == filters.contact))
        conditions += _window(m.c.received_at, m.c.id, 0, filters, after)
        query = sa.select(m).where(*conditions).order_by(
            m.c.received_at.desc(), m.c.id.desc()).limit(limit + 1)
        found += [(row["received_at"], 0, row["id"], message_view(row))
                  for row in conn.execute(query).mappings()]
        code = _outbound_code(filters.status) if filters.status else None
        if filters.direction in (None, "out") and (filters.status is None or code is not None):
            conditions = []
            if filters.channel:
                conditions.append(o.c.channel == filters.channel)
            if code is not None:
                conditions.append(o.c.status == code)
            if filters.contact:
                conditions.append(o.c.recipient == filters.contact)
            conditions += _window(o.c.created_at, o.c.id, 1, filters, after)
            query = sa.select(o).where(*conditions).order_by(
                o.c.created_at.desc(), o.c.id.desc()).limit(limit + 1)
            found += [(row["created_at"], 1, row["id"], outbound_view(row))
                      for row in conn.execute(query).mappings()]
    found.sort(key=lambda item: (item[0], item[1], item[2]), reverse=True)
    page = found[:limit]
    next_cursor = None
    if len(found) > limit and page:
        at, rank, row_id, _ = page[-1]
        next_cursor = encode_cursor(at, "outbound" if rank else "messages", row_id)
    return [item[3] for item in page], next_cursor


def _event(status: str, at: Any, source: str, error: Any = None,
           **extra: Any) -> dict[str, Any]:
    return {"status": status, "at": _iso(at), "source": source, "error": error, **extra}


def _receipts(conn: Any, channel: str, provider_message_id: str | None
              ) -> list[dict[str, Any]]:
    if not provider_message_id:
        return []
    s = t.status_events
    rows = conn.execute(sa.select(s).where(
        s.c.channel == channel, s.c.provider_message_id == provider_message_id).order_by(
        s.c.timestamp, s.c.id)).mappings().all()
    return [{"status": row["status"], "timestamp": row["timestamp"],
             "at": _iso(datetime.fromtimestamp(row["timestamp"], UTC)),
             "received_at": _iso(row["received_at"]), "errors": row["errors"] or []}
            for row in rows]


def _receipt_events(receipts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Receipts in the order of delivery (sent, delivered, read), then time: providers'
    clocks and ours differ, and receipts arrive out of order."""
    ordered = sorted(receipts, key=lambda r: (receipt_rank(r["status"]), r["timestamp"]))
    return [_event(r["status"], None, "receipt", r["errors"][0] if r["errors"] else None,
                   received_at=r["received_at"]) | {"at": r["at"]} for r in ordered]


def message_detail(engine: Engine, source: str, row_id: int) -> dict[str, Any] | None:
    """One message (`source` "messages" or "outbound", as its view says) with its status
    timeline, in the order a message goes through (not sorted by time: the provider's
    receipt times come from its clock): for the outbox created / reserved / queued /
    accepted from the row, then the provider's receipts (sent, delivered, read, failed) from
    `status_events`, and a failure or a wait with its error; for an inbound message
    received and its media.
    `receipts` lists the receipts as stored; `attempts` and `last_response` (the provider's
    last answer, token-free) come with outbound messages. None when there is no such row."""
    table = t.outbound_messages if source == "outbound" else t.messages
    with engine.connect() as conn:
        row = conn.execute(sa.select(table).where(table.c.id == row_id)).mappings().first()
        if row is None:
            return None
        receipts = _receipts(conn, row["channel"], row["provider_message_id"])
    timeline: list[dict[str, Any]] = []
    if source == "outbound":
        view = outbound_view(row)
        status = OutboundStatus(row["status"])
        for label, column in (("created", "created_at"), ("reserved", "reserved_at"),
                              ("queued", "queued_at"), ("accepted", "accepted_at")):
            if row[column] is not None:
                timeline.append(_event(label, row[column], "row"))
        timeline += _receipt_events(receipts)
        seen = {r["status"] for r in receipts}
        for label, column in (("delivered", "delivered_at"), ("read", "read_at")):
            if row[column] is not None and label not in seen:
                timeline.append(_event(label, row[column], "row"))
        if status in (OutboundStatus.FAILED, OutboundStatus.NOT_QUEUED) or (
                view["error"] is not None and status in (OutboundStatus.PENDING,
                                                         OutboundStatus.QUEUED)):
            timeline.append(_event(status.label, row["updated_at"], "row", view["error"]))
        view.update(attempts=row["attempts"], last_response=row["response_excerpt"])
    else:
        view = message_view(row)
        sent = (datetime.fromtimestamp(row["timestamp"], UTC)
                if row["timestamp"] is not None else None)
        if sent is not None:
            timeline.append(_event("sent_by_contact" if row["direction"] == "in" else "sent",
                                   sent, "provider"))
        timeline.append(_event("received", row["received_at"], "row",
                               view["error"]))
        timeline += _receipt_events(receipts)
        if row["media_status"] is not None:
            timeline.append(_event(f"media_{row['media_status']}", row["updated_at"], "row",
                                   {"code": "media", "reason": row["media_error"]}
                                   if row["media_error"] else None))
    view.update(timeline=timeline, receipts=receipts)
    return view
