"""SQL Server's claim statement, compiled offline (no server here): the locking hints must be
spelled out, since SQLAlchemy silently drops `with_for_update(skip_locked=True)` on mssql."""

from __future__ import annotations

from sqlalchemy.dialects.mssql import pymssql

from wacloud.adapters.db.tenant.claim import claim_statement, mssql_claim_statement
from wacloud.adapters.db.types import utcnow


def compiled(excluded: list[str]) -> str:
    stmt = claim_statement("mssql", 25, excluded, utcnow())
    dialect = pymssql.dialect(paramstyle="pyformat")  # type: ignore[no-untyped-call]
    return str(stmt.compile(dialect=dialect, compile_kwargs={"render_postcompile": True}))


def test_mssql_claim_has_locking_hints_top_and_output() -> None:
    sql = compiled([])
    for needle in ("READPAST", "UPDLOCK", "ROWLOCK", "OUTPUT inserted", "TOP (25)"):
        assert needle in sql, (needle, sql)
    assert sql.index("WITH (ROWLOCK, READPAST, UPDLOCK)") < sql.index("UPDATE c SET")
    assert "ORDER BY id" in sql
    assert "status = %(pending)s" in sql
    assert "NOT IN" not in sql


def test_mssql_claim_excludes_paused_channels() -> None:
    sql = compiled(["paused-a", "paused-b"])
    assert "channel NOT IN (%(excluded_1)s, %(excluded_2)s)" in sql, sql
    assert "READPAST" in sql and "OUTPUT inserted" in sql


def test_mssql_claim_binds_values_and_result_types() -> None:
    now = utcnow()
    stmt = mssql_claim_statement(3, ["x"], now)
    params = stmt.compile(dialect=pymssql.dialect()).params  # type: ignore[no-untyped-call]
    assert params["pending"] == 0
    assert params["reserved"] == 1
    assert params["now"] == now
    assert params["excluded"] == ["x"]
    # Result columns carry the table's types (UTC datetimes, JSON content).
    assert {c.name for c in stmt.selected_columns} >= {"id", "status", "reserved_at", "content"}


def test_mssql_pending_check_is_a_top_1_read_without_locks() -> None:
    from wacloud.adapters.db.tenant.claim import _ANY_PENDING

    sql = str(_ANY_PENDING.compile(dialect=pymssql.dialect(),  # type: ignore[no-untyped-call]
                                   compile_kwargs={"render_postcompile": True}))
    assert sql.startswith("SELECT TOP 1 outbound_messages.id"), sql
    assert "LOCK" not in sql.upper()


# Every other statement of the claim, the tenant store, outbox, submissions, views, privacy and
# the registry: tests/unit/adapters/db/test_mssql_statements.py; the migrations:
# tests/unit/adapters/db/test_migrations_mssql.py.
