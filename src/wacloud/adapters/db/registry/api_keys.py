"""API keys: random, shown once at creation, stored only as a SHA-256 hash.

Three kinds share the table: tenant keys (the tenant API, scoped to one tenant), admin keys,
and service keys (`wsk_...`), which only open the internal credentials endpoint.

Keys carry 256 bits of randomness, so a plain hash (no salt, no slow KDF) is the right
storage: nothing to brute-force, and a lookup by hash compares nothing secret in Python.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from wacloud.adapters.db.registry.store import Registry, RegistryError, api_keys, tenants
from wacloud.adapters.db.types import utcnow

PREFIX = "wak_"
SERVICE_PREFIX = "wsk_"


@dataclass(slots=True)
class ApiKey:
    id: int
    tenant: str | None  # None for an admin key
    is_admin: bool
    prefix: str
    label: str | None
    revoked: bool
    is_service: bool = False

    @property
    def kind(self) -> str:
        return "service" if self.is_service else "admin" if self.is_admin else "tenant"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(registry: Registry, *, tenant: str | None, admin: bool = False,
                   service: bool = False, label: str | None = None) -> tuple[ApiKey, str]:
    """Returns the key record and the key itself (the only time it is ever available)."""
    if [tenant is not None, admin, service].count(True) != 1:
        raise RegistryError("an API key is for one tenant, an admin key or a service key")
    if label is not None and len(label) > 191:
        raise RegistryError("the label is longer than 191 characters")
    tenant_id = registry.tenant(tenant).id if tenant else None
    key = (SERVICE_PREFIX if service else PREFIX) + secrets.token_urlsafe(32)
    with registry.engine.begin() as conn:
        result = conn.execute(api_keys.insert().values(
            tenant_id=tenant_id, is_admin=admin, is_service=service, prefix=key[:12],
            key_hash=hash_key(key), label=label, created_at=utcnow()))
        registry.bump(conn)
        new_id = result.inserted_primary_key
        assert new_id is not None
    return ApiKey(int(new_id[0]), tenant, admin, key[:12], label, False, service), key


def _query() -> sa.Select[Any]:
    return sa.select(api_keys, tenants.c.slug).outerjoin(tenants,
                                                         tenants.c.id == api_keys.c.tenant_id)


def _record(row: Any) -> ApiKey:
    return ApiKey(int(row["id"]), row["slug"], bool(row["is_admin"]), row["prefix"],
                  row["label"], row["revoked_at"] is not None, bool(row["is_service"]))


def list_api_keys(registry: Registry) -> list[ApiKey]:
    with registry.engine.connect() as conn:
        return [_record(r) for r in conn.execute(_query().order_by(api_keys.c.id)).mappings()]


def active_key_hashes(registry: Registry) -> dict[str, ApiKey]:
    """hash -> key record of tenant and admin keys, for the credentials snapshot."""
    with registry.engine.connect() as conn:
        rows = conn.execute(_query().add_columns(api_keys.c.key_hash).where(
            api_keys.c.revoked_at.is_(None), api_keys.c.is_service == sa.false())).mappings().all()
    return {row["key_hash"]: _record(row) for row in rows}


def service_keys_active(registry: Registry) -> bool:
    with registry.engine.connect() as conn:
        return conn.execute(sa.select(api_keys.c.id).where(
            api_keys.c.is_service == sa.true(), api_keys.c.revoked_at.is_(None)).limit(1)
                            ).first() is not None


def match_service_key(registry: Registry, presented: str) -> ApiKey | None:
    """The active service key equal to `presented`. Read from the registry on every call (a
    revocation counts at once); the hash is compared in constant time against every key, with
    no early exit, so timing tells nothing about how close a guess came."""
    presented_hash = hash_key(presented).encode()
    with registry.engine.connect() as conn:
        rows = conn.execute(_query().add_columns(api_keys.c.key_hash).where(
            api_keys.c.is_service == sa.true(), api_keys.c.revoked_at.is_(None))).mappings().all()
    found: ApiKey | None = None
    for row in rows:
        if hmac.compare_digest(presented_hash, str(row["key_hash"]).encode()):
            found = _record(row)
    return found


def revoke_api_key(registry: Registry, key_id: int) -> None:
    with registry.engine.begin() as conn:
        result = conn.execute(api_keys.update().where(
            api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None)).values(
            revoked_at=utcnow()))
        if result.rowcount == 0:
            raise RegistryError(f"no active API key {key_id}")
        registry.bump(conn)
