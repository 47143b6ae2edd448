"""A pytest plugin: every statement a test runs is also compiled for SQL Server (`mssql+pymssql`),
and a test whose statements do not compile fails.

No SQL Server can run here, so the tenant store, outbox, claim, submissions, views, privacy
and registry are checked this way: their suites run on SQLite (`-p tests.mssql_compile
-k sqlite`, see `tests/unit/adapters/db/test_mssql_statements.py`), and each statement they
execute, with its parameters, goes through the mssql compiler too. Statements built for one
other database on purpose are left out: a dialect's own INSERT (SQLite's and PostgreSQL's ON
CONFLICT, `insert_ignore` runs plain INSERTs with savepoints on SQL Server) and the SQLite and
PostgreSQL claim (SQL Server has its own, `claim.mssql_claim_statement`)."""

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
_checked: set[Any] = set()
_failures: list[str] = []
compiled_count = 0


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
    if not isinstance(statement, ClauseElement) or _skipped(statement):
        return
    key = statement._generate_cache_key()
    marker = key.key if key is not None else id(statement)
    if marker in _checked:
        return
    _checked.add(marker)
    try:
        # Without render_postcompile: values passed at execution are not in the statement.
        str(statement.compile(dialect=DIALECT))
        compiled_count += 1
    except Exception as exc:
        _failures.append(f"{type(exc).__name__}: {exc}\n  statement: {statement}")


def pytest_configure(config: pytest.Config) -> None:
    sa.event.listen(Engine, "before_execute", _before_execute)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    del _failures[:]
    yield
    if _failures:
        failures = "\n".join(_failures)
        del _failures[:]
        pytest.fail(f"statements that do not compile for mssql+pymssql:\n{failures}",
                    pytrace=False)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    terminalreporter.write_line(f"mssql: {compiled_count} distinct statements compiled")
