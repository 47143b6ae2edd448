"""A value out of range for its column is the data's fault on every tenant database that refuses
it: the write stage parks that one event (and retries nothing for hours). MariaDB outside
strict mode stores it clipped instead, which loses nothing either."""

from __future__ import annotations

from tests.contract.test_tenant_store_contract import inbound, receipt
from wacloud.adapters.db.engines import create_engine
from wacloud.adapters.db.errors import failure_reason, is_database_unavailable, is_refused_value
from wacloud.adapters.db.tenant.store import TenantStore


def test_an_integer_too_large_is_a_refused_value(tenant_db_url: str) -> None:
    store = TenantStore("acme", create_engine(tenant_db_url))
    store.create_schema()
    try:
        message = inbound("wamid.BIG")
        message.timestamp = 10**25
        for attempt in (lambda: store.store_events([message], [], []),
                        lambda: store.store_events([], [receipt("wamid.X", "read", 10**25)], [])):
            try:
                attempt()
            except Exception as exc:
                assert is_refused_value(exc), exc
                assert not is_database_unavailable(exc)
                assert "INSERT" not in failure_reason(exc)
            else:
                assert store.engine.dialect.name in ("mysql", "mariadb")
        store.store_events([inbound("wamid.FINE")], [], [])  # the database is fine meanwhile
    finally:
        store.engine.dispose()
