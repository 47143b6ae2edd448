"""GroupCommit over a real SQLite file: concurrent writes share transactions, one bad write
fails alone, a locked database fails the batch at once."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from wacloud.adapters.db.engines import create_engine
from wacloud.adapters.db.tenant.group_commit import GroupCommit


@pytest.fixture
def engine(tmp_path: Path) -> sa.Engine:
    engine = create_engine(f"sqlite:///{tmp_path / 't.db'}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)"))
    return engine


def insert(value: str | None):  # type: ignore[no-untyped-def]
    def write(conn: Connection) -> int:
        return int(conn.execute(sa.text("INSERT INTO t (v) VALUES (:v) RETURNING id"),
                                {"v": value}).scalar_one())
    return write


async def test_concurrent_writes_share_transactions(engine: sa.Engine) -> None:
    writes = GroupCommit(engine)
    ids = await asyncio.gather(*(writes.run(insert(f"v{i}")) for i in range(200)))
    writes.close()
    assert len(set(ids)) == 200
    assert writes.transactions < 200  # grouped, not one commit per write
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM t")).scalar() == 200


async def test_a_failing_write_fails_alone(engine: sa.Engine) -> None:
    writes = GroupCommit(engine)
    results = await asyncio.gather(writes.run(insert("a")), writes.run(insert(None)),
                                   writes.run(insert("b")), return_exceptions=True)
    writes.close()
    assert isinstance(results[1], sa.exc.IntegrityError)
    assert isinstance(results[0], int) and isinstance(results[2], int)
    with engine.connect() as conn:
        assert sorted(conn.execute(sa.text("SELECT v FROM t")).scalars()) == ["a", "b"]


async def test_a_locked_database_fails_the_whole_batch_at_once(tmp_path: Path,
                                                               engine: sa.Engine) -> None:
    # A short busy timeout stands for SQLite's 30 s: each wait for the lock costs one.
    quick = sa.create_engine(f"sqlite:///{tmp_path / 't.db'}", connect_args={"timeout": 0.2})
    writes = GroupCommit(quick)
    tried: list[str] = []
    busy, go = threading.Event(), threading.Event()

    def hold_the_writer(conn: Connection) -> None:
        busy.set()
        assert go.wait(10)  # keeps the writer busy until the batch below is all queued

    def counted(value: str):  # type: ignore[no-untyped-def]
        def write(conn: Connection) -> int:
            tried.append(value)
            result: int = insert(value)(conn)
            return result
        return write

    first = asyncio.ensure_future(writes.run(hold_the_writer))
    assert await asyncio.to_thread(busy.wait, 10)
    holder = sqlite3.connect(tmp_path / "t.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process's long write transaction
    batch = [asyncio.ensure_future(writes.run(counted(f"v{i}"))) for i in range(5)]
    await asyncio.sleep(0)  # a scheduling point, not synchronization: the writes are submitted
    go.set()
    await first
    results = await asyncio.gather(*batch, return_exceptions=True)
    holder.execute("ROLLBACK")
    holder.close()
    writes.close()
    assert all(isinstance(r, sa.exc.OperationalError) for r in results), results
    assert tried == ["v0"]  # one wait for the lock, not one more per write
    quick.dispose()
