"""Outbox rows submitted through the tenant API, made idempotent by the `Idempotency-Key`.

A key is unique per tenant database (a unique index), so of two concurrent submissions with
one key exactly one inserts; the other, like any later retry, reads that row back. A key reused
with a different body (another `request_hash`) is a conflict, never a second row. A key is
remembered as long as its row exists (the tenant's retention period).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from wacloud.adapters.db.tenant import tables as t
from wacloud.adapters.db.types import utcnow
from wacloud.domain.model import OutboundStatus

_om = t.outbound_messages
_INSERT = _om.insert()
_BY_ID = sa.select(_om).where(_om.c.id == sa.bindparam("id"))


class IdempotencyConflict(Exception):
    """The key was first used with a different request; `row_id` is the row it made."""

    def __init__(self, row_id: int) -> None:
        super().__init__(f"the Idempotency-Key was already used for message {row_id} with "
                         "a different request")
        self.row_id = row_id


def _by_key(engine: Engine, key: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(sa.select(_om).where(_om.c.idempotency_key == key)).mappings().first()
        return None if row is None else dict(row)


def _replay(row: dict[str, Any], request_hash: str | None) -> dict[str, Any]:
    if row["request_hash"] != request_hash:
        raise IdempotencyConflict(int(row["id"]))
    return row


def submit_outbound(engine: Engine, *, channel: str, recipient: str, type: str,
                    content: dict[str, Any], reply_to: str | None = None,
                    client_reference: str | None = None, recipient_type: str | None = None,
                    expires_at: datetime | None = None,
                    idempotency_key: str | None = None, request_hash: str | None = None,
                    ) -> tuple[dict[str, Any], bool]:
    """Insert a pending row; returns (the row, True). With an `idempotency_key` already used:
    (the row it made, False), or IdempotencyConflict when `request_hash` differs."""
    if idempotency_key is not None:
        found = _by_key(engine, idempotency_key)
        if found is not None:  # the usual retry: no failed insert to log on the server
            return _replay(found, request_hash), False
    now = utcnow()
    values = {"channel": channel, "recipient": recipient, "type": type, "content": content,
              "reply_to": reply_to, "client_reference": client_reference,
              "recipient_type": recipient_type, "expires_at": expires_at,
              "idempotency_key": idempotency_key,
              "request_hash": request_hash if idempotency_key is not None else None,
              "status": OutboundStatus.PENDING.value, "attempts": 0, "created_at": now,
              "updated_at": now}
    try:
        with engine.begin() as conn:
            # Values as parameters: the compiled INSERT is cached (`.values()` built a new
            # statement, and its cache key, for every submission).
            key = conn.execute(_INSERT, values).inserted_primary_key
            assert key is not None
            row = conn.execute(_BY_ID, {"id": key[0]}).mappings().one()
            return dict(row), True
    except IntegrityError:
        # A concurrent retry with the same key inserted first: its row is the answer.
        found = _by_key(engine, idempotency_key) if idempotency_key is not None else None
        if found is None:
            raise
        return _replay(found, request_hash), False
