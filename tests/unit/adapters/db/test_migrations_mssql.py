"""Every migration of the registry and the tenant schema, up and down, compiles for SQL Server
(Alembic's offline mode, `--sql`, against the mssql+pymssql dialect: no server runs here)."""

from __future__ import annotations

import io

import pytest
from alembic import command

from wacloud.adapters.db.migrate import alembic_config, revisions


@pytest.mark.parametrize("schema", ["registry", "tenant"])
def test_every_migration_renders_for_sql_server(schema: str) -> None:
    out = io.StringIO()
    config = alembic_config(schema)  # type: ignore[arg-type]
    config.output_buffer = out
    config.set_main_option("sqlalchemy.url", "mssql+pymssql://")
    command.upgrade(config, "head", sql=True)
    up = out.getvalue()
    assert f"wacloud_{schema}_version" in up
    assert up.count("CREATE TABLE") >= 3
    order = revisions(schema)  # type: ignore[arg-type]
    for revision in order:  # each revision's version-table update is in the script
        assert f"'{revision}'" in up, revision
    assert "GO" in up  # batches as sqlcmd runs them

    out.seek(0)
    out.truncate()
    command.downgrade(config, f"{order[-1]}:base", sql=True)
    assert "DROP TABLE" in out.getvalue()
