"""Read models: tenant rows turned into the public JSON shape of `wacloud messages` and
`wacloud notices`."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from wacloud.adapters.db import tenant as t
from wacloud.model import (
    Contact,
    Direction,
    InboundMessage,
    MediaRef,
    MediaStatus,
    OutboundStatus,
    Provider,
    ProviderError,
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
