"""Service keys, the credential audit and key rotation on every registry database: the
migrated schema matches the model, and the same calls behave the same on each.

Every test runs once per database through the `tenant_db_url` fixture (tests/conftest.py),
which gives a fresh, empty database (the registry schema fits in one just as well).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from wacloud.adapters.db.engines import create_engine
from wacloud.adapters.db.registry.api_keys import (
    active_key_hashes,
    create_api_key,
    match_service_key,
    revoke_api_key,
    service_keys_active,
)
from wacloud.adapters.db.registry.audit import AuditEntry, list_audit, record_audit
from wacloud.adapters.db.registry.rekey import census, reencrypt_all
from wacloud.adapters.db.registry.store import Registry, RegistryError, metadata
from wacloud.domain.model import Provider
from wacloud.security.crypto import SecretBox, new_key


@pytest.fixture
def registry(tenant_db_url: str) -> Iterator[Registry]:
    registry = Registry(create_engine(tenant_db_url), SecretBox([new_key()]))
    registry.create_schema()
    try:
        yield registry
    finally:
        registry.engine.dispose()


def test_migrations_match_the_model(registry: Registry) -> None:
    with registry.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = [d for d in compare_metadata(context, metadata) if d[0] != "remove_table"]
    assert diff == []


def test_service_keys_are_separate_from_tenant_and_admin_keys(registry: Registry) -> None:
    registry.add_tenant("acme")
    assert not service_keys_active(registry)
    record, key = create_api_key(registry, tenant=None, service=True, label="worker")
    tenant_key = create_api_key(registry, tenant="acme")[1]

    assert service_keys_active(registry)
    found = match_service_key(registry, key)
    assert found is not None and (found.id, found.label, found.kind) == (
        record.id, "worker", "service")
    assert match_service_key(registry, tenant_key) is None
    assert [k.kind for k in active_key_hashes(registry).values()] == ["tenant"]
    revoke_api_key(registry, record.id)
    assert match_service_key(registry, key) is None and not service_keys_active(registry)


def test_audit_rows_round_trip_and_clip_long_values(registry: Registry) -> None:
    with pytest.raises(RegistryError):
        create_api_key(registry, tenant=None, service=True, label="é" * 192)
    record = create_api_key(registry, tenant=None, service=True, label="é" * 191)[0]
    record_audit(registry, AuditEntry(via="http", outcome="denied", status=403,
                                      provider="meta" * 10, lookup_id="x" * 500,
                                      source="1" * 100))
    record_audit(registry, AuditEntry(via="lambda", outcome="ok", status=200, key=record,
                                      provider="whapi", lookup_id="MANTIS-M72HC",
                                      tenant="acme", channel_key="MANTIS-M72HC"))
    rows = list_audit(registry)
    assert [(r["via"], r["status"], r["key_id"]) for r in rows] == [
        ("http", 403, None), ("lambda", 200, record.id)]
    assert (len(rows[0]["lookup_id"]), len(rows[0]["provider"]), len(rows[0]["source"])) == (
        191, 16, 64)
    assert rows[1]["key_label"] == "é" * 191
    assert list_audit(registry, limit=1)[0]["outcome"] == "ok"


def test_reencrypt_moves_every_secret_to_the_new_key(registry: Registry) -> None:
    first = new_key()
    registry.secrets = SecretBox([first])
    registry.add_tenant("acme", "postgresql://u:pw@db/acme")
    registry.add_channel(tenant="acme", provider=Provider.META, key="1065", token="tok",
                         app_secret="app", verify_token="ver")
    registry.secrets = SecretBox([new_key(), first])
    assert census(registry).totals["under_older"] == 4

    counts = reencrypt_all(registry)

    assert sum(counts.values()) == 4
    assert census(registry).totals == {"under_newest": 4, "under_older": 0, "undecryptable": 0}
    registry.secrets = registry.secrets.newest_only()
    assert registry.channels()[0].token == "tok"
    assert registry.tenant("acme").db_url == "postgresql://u:pw@db/acme"
