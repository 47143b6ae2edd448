"""GroupCommit over a real SQLite file: concurrent writes share transactions, one bad write
fails alone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from wacloud.adapters.db.engines import create_engine
from wacloud.adapters.db.group_commit import GroupCommit


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
