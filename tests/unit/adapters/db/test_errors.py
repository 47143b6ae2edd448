"""Which database errors are the database's (retry for hours) and which are the data's."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc

from wacloud.adapters.db.errors import failure_reason, is_database_unavailable, is_refused_value


def raised_by(url: str, sql: str, params: dict[str, object] | None = None) -> BaseException:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE IF NOT EXISTS t (x BIGINT UNIQUE)"))
            conn.execute(sa.text("INSERT OR IGNORE INTO t VALUES (1)"))
            conn.execute(sa.text(sql), params or {})
    except Exception as exc:
        return exc
    finally:
        engine.dispose()
    raise AssertionError("no error")


def test_a_database_that_cannot_be_opened_or_is_locked_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    exc = raised_by(f"sqlite:///{tmp_path / 'dir.db'}", "SELECT 1")
    assert is_database_unavailable(exc) and not is_refused_value(exc)
    locked = sa_exc.OperationalError("UPDATE", {}, sqlite3.OperationalError("database is locked"))
    assert is_database_unavailable(locked)
    assert is_database_unavailable(sa_exc.TimeoutError("QueuePool limit reached"))


def test_refused_values_are_the_datas(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    for exc in (raised_by(url, "INSERT INTO t VALUES (:x)", {"x": 10**25}),
                raised_by(url, "INSERT INTO t VALUES (1)")):
        assert is_refused_value(exc) and not is_database_unavailable(exc)
    assert not is_database_unavailable(ValueError("a bug"))


def test_the_reason_has_no_sql_and_no_parameters(tmp_path: Path) -> None:
    exc = raised_by(f"sqlite:///{tmp_path / 'x.db'}", "INSERT INTO t VALUES (:x)", {"x": 1})
    reason = failure_reason(exc)
    assert reason == "IntegrityError: UNIQUE constraint failed: t.x"
    assert failure_reason(ValueError("call 5511987654321")) == "ValueError: call *********4321"
