"""The SQL Server check of `tests.mssql_compile` (loaded for every test; it compiles each
statement the database suites execute for mssql+pymssql): it is on for those suites, and it
tells a statement SQL Server cannot run from one it can."""

from __future__ import annotations

import sqlalchemy as sa

from tests import mssql_compile
from wacloud.adapters.db.tenant import tables as t

om = t.outbound_messages


def test_the_check_refuses_what_sql_server_cannot_compile() -> None:
    # OFFSET without ORDER BY: valid on SQLite and PostgreSQL, refused for SQL Server.
    problem = mssql_compile.mssql_problem(sa.select(om.c.id).offset(5))
    assert problem is not None and "requires an order_by" in problem
    assert mssql_compile.mssql_problem(
        sa.select(om.c.id).order_by(om.c.id).offset(5).limit(10)) is None


def test_the_database_suites_are_checked() -> None:
    for suite in ("tests/contract/test_outbox_contract.py", "tests/unit/privacy/",
                  "tests/contract/test_credentials_registry_contract.py",
                  "tests/contract/test_claim_contract.py"):
        assert suite in mssql_compile.SUITES
    assert "tests/unit/adapters/db/test_mssql_statements.py" not in mssql_compile.SUITES
