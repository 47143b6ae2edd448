"""The credential audit: one row per call of the credentials endpoint (HTTP or Lambda).

Rows say who asked (the service key's id, prefix and label), through what, from where, for
which provider id, what it resolved to and the outcome. Never a token or any other secret.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from wacloud.adapters.db.registry.api_keys import ApiKey
from wacloud.adapters.db.registry.store import Registry, credential_audit
from wacloud.adapters.db.types import utcnow


@dataclass(slots=True)
class AuditEntry:
    via: str
    outcome: str
    status: int
    key: ApiKey | None = None
    source: str | None = None
    provider: str | None = None
    lookup_id: str | None = None
    tenant: str | None = None
    channel_key: str | None = None


def _clip(value: str | None, length: int) -> str | None:
    return None if value is None else value[:length]


def record_audit(registry: Registry, entry: AuditEntry) -> int:
    key = entry.key
    with registry.engine.begin() as conn:
        result = conn.execute(credential_audit.insert().values(
            at=utcnow(), key_id=key.id if key else None, key_prefix=key.prefix if key else None,
            key_label=_clip(key.label if key else None, 191), via=entry.via,
            source=_clip(entry.source, 64), provider=_clip(entry.provider, 16),
            lookup_id=_clip(entry.lookup_id, 191), tenant=_clip(entry.tenant, 64),
            channel_key=_clip(entry.channel_key, 191), outcome=entry.outcome,
            status=entry.status))
        new_id = result.inserted_primary_key
        assert new_id is not None
        return int(new_id[0])


def list_audit(registry: Registry, limit: int = 1000) -> list[dict[str, Any]]:
    """The newest `limit` rows, oldest first."""
    query = sa.select(credential_audit).order_by(credential_audit.c.id.desc()).limit(limit)
    with registry.engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    return [_row(row) for row in reversed(rows)]


def _row(row: Any) -> dict[str, Any]:
    data = dict(row)
    at: datetime = data["at"]
    data["at"] = at.isoformat()
    return data
