"""Tenant databases on one real PostgreSQL server, more tenants than open engines allowed: the
server never sees more of our connections than the broker's bounds, every tenant is served,
and idle engines are closed (watched in `pg_stat_activity`, polled with a deadline)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import wait_for
from tests.services import (
    CONNECT_TIMEOUT_S,
    PG_HOST,
    PG_PORT,
    PG_USER,
    fresh_name,
    unreachable,
)
from wacloud.adapters.db.engines import create_engine
from wacloud.adapters.db.migrate import upgrade
from wacloud.adapters.db.registry.store import Registry
from wacloud.adapters.db.tenant import claim
from wacloud.adapters.db.tenant.submissions import submit_outbound
from wacloud.credentials.broker import CredentialsBroker
from wacloud.security.crypto import SecretBox, new_key

# Six tenants per open engine. (Each database costs the server about a second to create and
# drop on this machine: the suite keeps the count modest.)
TENANTS = 30
ENGINES_MAX = 5
POOL_SIZE = 2
WORKERS = 4  # threads doing tenant work at once


def pg_url(name: str) -> str:
    return f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"


@contextlib.contextmanager
def tenant_databases(count: int) -> Iterator[tuple[str, list[str]]]:
    """`count` migrated databases named PREFIX_N (copies of one migrated template); yields
    (PREFIX, their URLs) and drops them all afterwards."""
    try:
        import psycopg
    except ImportError as exc:
        unreachable("PostgreSQL", exc)
    prefix = fresh_name("wacloud_pools")
    try:
        admin = psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres",
                                autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg.OperationalError as exc:
        unreachable("PostgreSQL", exc)
    template = f"{prefix}_template"
    names = [f"{prefix}_{i}" for i in range(count)]
    try:
        admin.execute(f'CREATE DATABASE "{template}" ENCODING \'UTF8\' TEMPLATE template0')
        engine = create_engine(pg_url(template))
        upgrade(engine, "tenant")
        engine.dispose()
        for name in names:
            admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        yield prefix, [pg_url(name) for name in names]
    finally:
        admin.close()
        # In parallel: each DROP waits for a checkpoint, and concurrent ones share it.
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(drop_database, [*names, template]))


def drop_database(name: str) -> None:
    import psycopg

    with psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres",
                         autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class ConnectionWatch:
    """Samples how many server connections our tenant databases have, in a thread."""

    def __init__(self, prefix: str) -> None:
        import psycopg

        self.prefix = prefix
        self.conn = psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres",
                                    autocommit=True)
        self.most = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def count(self) -> int:
        row = self.conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname LIKE %s",
                                (f"{self.prefix}\\_%",)).fetchone()
        return int(row[0]) if row else 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.most = max(self.most, self.count())
            self.samples += 1
            self._stop.wait(0.005)  # a sampling period, not a synchronization

    def __enter__(self) -> ConnectionWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.most = max(self.most, self.count())

    def close(self) -> None:
        self.conn.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[str, Registry, list[str]]]:
    tmp_path = tmp_path_factory.mktemp("pools")
    with tenant_databases(TENANTS) as (prefix, urls):
        registry = Registry(create_engine(f"sqlite:///{tmp_path / 'registry.db'}"),
                            SecretBox([new_key()]))
        registry.create_schema()
        slugs = [f"t{i:03d}" for i in range(TENANTS)]
        for slug, url in zip(slugs, urls, strict=True):
            registry.add_tenant(slug, url)
        try:
            yield prefix, registry, slugs
        finally:
            registry.engine.dispose()


def test_many_tenants_stay_within_the_connection_bounds_and_idle_ones_close(
        world: tuple[str, Registry, list[str]], tmp_path: Path) -> None:
    prefix, registry, slugs = world
    broker = CredentialsBroker(registry, tenants_dir=tmp_path / "tenants", cache_seconds=3600,
                               tenant_pool_size=POOL_SIZE, tenant_engines_max=ENGINES_MAX,
                               tenant_idle_close_s=0.5)
    watch = ConnectionWatch(prefix)

    def work(slug: str) -> None:
        store = broker.tenant_store(slug)
        submit_outbound(store.engine, channel="PN", recipient="5511987654321", type="text",
                        content={"text": {"body": slug}})
        assert claim.pending_count(broker.tenant_store(slug).engine) >= 1

    try:
        with watch, ThreadPoolExecutor(WORKERS) as pool:
            # Three rounds over every tenant, interleaved: engines are closed and reopened.
            for result in pool.map(work, slugs * 3):
                assert result is None
            assert broker.open_tenant_count() <= ENGINES_MAX
        assert watch.samples > 0
        # Pooled connections: engines_max x pool_size; a task still holding a store closed
        # under it (evicted between fetch and use) has one unpooled connection meanwhile.
        assert 0 < watch.most <= ENGINES_MAX * POOL_SIZE + WORKERS, watch.most
        for slug in slugs:  # every tenant's rows went in
            assert claim.pending_count(broker.tenant_store(slug).engine) == 3, slug

        async def closes_idle() -> None:
            stop = asyncio.Event()
            watcher = asyncio.create_task(broker.watch(0.05, stop))
            try:
                await asyncio.to_thread(wait_for, lambda: watch.count() == 0, 20.0, 0.05,
                                        "idle tenant engines closed")
            finally:
                stop.set()
                await watcher
        asyncio.run(closes_idle())
        assert broker.open_tenant_count() == 0
        # Used again after closing: opened again without trouble.
        assert claim.pending_count(broker.tenant_store(slugs[0]).engine) == 3
    finally:
        broker.close()
        watch.close()
    assert wait_for(lambda: watch_count(prefix) == 0, 10.0, 0.05, "every connection closed")


def watch_count(prefix: str) -> bool | int:
    import psycopg

    with psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres") as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname LIKE %s",
                           (f"{prefix}\\_%",)).fetchone()
    return int(row[0]) if row else 0


def test_a_store_closed_under_its_user_still_works_and_leaves_no_pool(
        world: tuple[str, Registry, list[str]], tmp_path: Path) -> None:
    prefix, registry, slugs = world
    broker = CredentialsBroker(registry, tenants_dir=tmp_path / "tenants", cache_seconds=3600,
                               tenant_pool_size=POOL_SIZE, tenant_engines_max=1)
    try:
        held = broker.tenant_store(slugs[1])
        broker.tenant_store(slugs[2])  # closes the first: one engine at most
        assert held.closed and broker.open_tenant_count() == 1
        row, _ = submit_outbound(held.engine, channel="PN", recipient="5511987654321",
                                 type="text", content={})  # a late user is still served ...
        asyncio.run(held.writes.run(lambda conn: None))
        # ... and its connections are closed when returned: only slugs[2]'s one remains.
        assert watch_count(prefix) == 1
        reopened = broker.tenant_store(slugs[1])
        assert reopened is not held and not reopened.closed
        assert int(row["id"]) in {int(r["id"]) for r in claim.claim_pending(reopened.engine, 100)}
    finally:
        broker.close()
