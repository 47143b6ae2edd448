"""A pytest plugin: the statements the database suites run are also compiled for SQL Server
(`mssql+pymssql`), and a test whose statements do not compile fails.

No SQL Server can run here, so the tenant store, outbox, claim, submissions, views, privacy
and registry are checked this way: while a test of `SUITES` runs (the plugin is loaded by
`tests/conftest.py`), each statement it executes on SQLite goes through the mssql compiler
too. Statements built for one other database on purpose are left out: a dialect's own
INSERT (SQLite's and PostgreSQL's ON CONFLICT; `insert_ignore` runs plain INSERTs with
savepoints on SQL Server) and the SQLite and PostgreSQL claim (SQL Server has its own,
`claim.mssql_claim_statement`)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.dialects.mssql import pymssql
from sqlalchemy.engine import Engine
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.ddl import ExecutableDDLElement

DIALECT = pymssql.dialect()  # type: ignore[no-untyped-call]
# Test files (and folders) whose statements must compile for SQL Server.
SUITES = (
    "tests/contract/test_tenant_store_contract.py",
    "tests/contract/test_outbox_contract.py",
    "tests/contract/test_claim_contract.py",
    "tests/contract/test_collect_order_contract.py",
    "tests/contract/test_submissions_contract.py",
    "tests/contract/test_message_search_contract.py",
    "tests/contract/test_credentials_registry_contract.py",
    "tests/unit/adapters/db/tenant/",
    "tests/unit/privacy/",
    "tests/unit/stages/test_collect_tenants.py",
)
_checked: set[Any] = set()
_failures: list[str] = []
_active = False
compiled_count = 0


def mssql_problem(statement: ClauseElement) -> str | None:
    """Why `statement` does not compile for mssql+pymssql, or None."""
    try:
        # Without render_postcompile: values passed at execution are not in the statement.
        str(statement.compile(dialect=DIALECT))
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}\n  statement: {statement}"
    return None


def _skipped(statement: ClauseElement) -> bool:
    if isinstance(statement, sqlite.Insert | postgresql.Insert | mysql.Insert):
        return True
    if isinstance(statement, ExecutableDDLElement):
        return True  # schema changes: the migrations, checked with Alembic's --sql
    # The claim for SQLite/PostgreSQL: UPDATE outbound_messages ... RETURNING.
    return (isinstance(statement, sa.Update) and statement.table.name == "outbound_messages"
            and bool(statement._returning))


def _before_execute(conn: Any, statement: Any, multiparams: Any, params: Any,
                    execution_options: Any) -> None:
    global compiled_count
    if not _active or not isinstance(statement, ClauseElement) or _skipped(statement):
        return
    if conn.dialect.name != "sqlite":
        # The same code's statements are checked on SQLite; here they would meet the server
        # dialects' own (SQLAlchemy's reflection queries of pg_catalog, for one).
        return
    key = statement._generate_cache_key()
    marker = key.key if key is not None else id(statement)
    if marker in _checked:
        return
    _checked.add(marker)
    compiled_count += 1
    problem = mssql_problem(statement)
    if problem is not None:
        _failures.append(problem)


def pytest_configure(config: pytest.Config) -> None:
    sa.event.listen(Engine, "before_execute", _before_execute)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    global _active
    del _failures[:]
    _active = item.nodeid.startswith(SUITES)
    try:
        yield
    finally:
        _active = False
    if _failures:
        failures = "\n".join(_failures)
        del _failures[:]
        pytest.fail(f"statements that do not compile for mssql+pymssql:\n{failures}",
                    pytrace=False)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if compiled_count:
        terminalreporter.write_line(
            f"mssql: {compiled_count} distinct statements compiled for SQL Server")
