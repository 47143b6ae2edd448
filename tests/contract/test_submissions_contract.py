"""Contract for idempotent submissions (the tenant API's `Idempotency-Key`) on SQLite,
PostgreSQL and MariaDB: concurrent retries of one POST make exactly one row."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from wacloud.adapters.db.engines import create_engine
from wacloud.adapters.db.tenant import submissions
from wacloud.adapters.db.tenant import tables as t
from wacloud.adapters.db.tenant.store import TenantStore
from wacloud.adapters.db.tenant.submissions import IdempotencyConflict, submit_outbound
from wacloud.adapters.db.types import utcnow

om = t.outbound_messages


@pytest.fixture
def engine(tenant_db_url: str) -> Iterator[Engine]:
    tenant_engine = create_engine(tenant_db_url)
    TenantStore("acme", tenant_engine).create_schema()
    try:
        yield tenant_engine
    finally:
        tenant_engine.dispose()


def submit(engine: Engine, key: str | None, digest: str | None = "h1",
           body: str = "oi") -> tuple[dict[str, Any], bool]:
    return submit_outbound(engine, channel="PN", recipient="5511987654321", type="text",
                           content={"body": body}, client_reference="ref-1",
                           expires_at=utcnow() + timedelta(minutes=5),
                           idempotency_key=key, request_hash=digest)


def row_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(om)).scalar() or 0)


def test_a_retry_gets_the_first_row_and_another_body_conflicts(engine: Engine) -> None:
    first, created = submit(engine, "order-1")
    assert created and first["status"] == 0 and first["idempotency_key"] == "order-1"
    assert first["expires_at"] is not None and first["expires_at"].tzinfo is not None
    again, created = submit(engine, "order-1")
    assert not created and again["id"] == first["id"]
    with pytest.raises(IdempotencyConflict) as conflict:
        submit(engine, "order-1", digest="h2", body="other")
    assert conflict.value.row_id == first["id"]
    # Keys are case-sensitive (MariaDB's default collation is not); no key: always a new row.
    assert submit(engine, "ORDER-1")[1]
    assert submit(engine, None, None)[1] and submit(engine, None, None)[1]
    assert row_count(engine) == 4


def test_concurrent_retries_make_one_row(engine: Engine) -> None:
    url = engine.url.render_as_string(hide_password=False)
    workers = 6
    barrier = threading.Barrier(workers)
    results: list[tuple[int, bool]] = []
    errors: list[BaseException] = []

    def work() -> None:
        own = create_engine(url)
        try:
            barrier.wait(timeout=30)
            for n in range(5):
                got, created = submit(own, f"key-{n}")
                results.append((int(got["id"]), created))
        except BaseException as exc:
            errors.append(exc)
        finally:
            own.dispose()

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert row_count(engine) == 5
    assert len(results) == workers * 5
    assert sum(created for _, created in results) == 5  # each key inserted exactly once
    assert len({row_id for row_id, _ in results}) == 5


def test_a_retry_that_loses_the_insert_race_reads_the_winner(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The other request inserts between this one's look-up and its insert: the unique index
    refuses the second row, and the winner's row is the answer."""
    winner, _ = submit(engine, "raced")
    real_lookup = submissions._by_key
    lookups: list[str] = []

    def late_lookup(engine: Engine, key: str) -> dict[str, Any] | None:
        lookups.append(key)
        return None if len(lookups) == 1 else real_lookup(engine, key)

    monkeypatch.setattr(submissions, "_by_key", late_lookup)
    again, created = submit(engine, "raced")
    assert not created and again["id"] == winner["id"] and len(lookups) == 2
    lookups.clear()
    with pytest.raises(IdempotencyConflict):
        submit(engine, "raced", digest="h2")
    assert row_count(engine) == 1
