"""`wacloud migrate` on real databases: a registry and tenant databases (SQLite, PostgreSQL,
MariaDB) at an older revision are brought to head, or down to an older revision for a rollback;
a database that is down or migrated by a newer wacloud is reported and the others still done."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from typer.testing import CliRunner

from wacloud.adapters.db.engines import create_engine
from wacloud.adapters.db.migrate import (
    VERSION_TABLES,
    Schema,
    UnknownRevisionError,
    alembic_config,
    current_revision,
    head_revision,
)
from wacloud.adapters.db.tenant.store import TenantStore
from wacloud.bootstrap import open_registry
from wacloud.cli import app
from wacloud.settings import load_settings

# What wacloud 0.1.0 shipped (CHANGELOG.md).
OLD = {"registry": "0003", "tenant": "0003"}


def cli(data_dir: Path, *args: str, code: int = 0) -> str:
    result = CliRunner().invoke(app, [*args, "--data-dir", str(data_dir)])
    assert result.exit_code == code, result.output
    return result.output


def migrate_json(data_dir: Path, *args: str, code: int = 0) -> list[dict[str, Any]]:
    return [json.loads(line)
            for line in cli(data_dir, "migrate", "--json", *args, code=code).splitlines()]


def revision(url: str, schema: Schema) -> str | None:
    engine = create_engine(url)
    try:
        return current_revision(engine, schema)
    finally:
        engine.dispose()


def downgrade(url: str, schema: Schema, target: str) -> None:
    """With Alembic itself, not the code under test."""
    engine = create_engine(url)
    config = alembic_config(schema)
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, target)
    finally:
        engine.dispose()


def columns(url: str, table: str) -> set[str]:
    engine = create_engine(url)
    try:
        return {column["name"] for column in sa.inspect(engine).get_columns(table)}
    finally:
        engine.dispose()


@pytest.fixture
def deployment(tmp_path: Path, tenant_db_url: str) -> dict[str, str]:
    """A data dir with tenant `acme` (default SQLite file) and `remote` (its own database on
    each backend), registry and both tenants taken back to 0.1.0's revisions."""
    cli(tmp_path, "tenant", "add", "acme")
    cli(tmp_path, "tenant", "add", "remote", "--db-url", tenant_db_url)
    urls = {"registry": f"sqlite:///{tmp_path / 'registry.db'}",
            "acme": f"sqlite:///{tmp_path / 'tenants' / 'acme.db'}", "remote": tenant_db_url}
    downgrade(urls["registry"], "registry", OLD["registry"])
    for slug in ("acme", "remote"):
        downgrade(urls[slug], "tenant", OLD["tenant"])
    return urls


def test_migrate_brings_every_database_from_an_older_revision_to_head(
        tmp_path: Path, deployment: dict[str, str]) -> None:
    registry_head, tenant_head = head_revision("registry"), head_revision("tenant")
    assert "group_id" not in columns(deployment["remote"], "messages")

    planned = migrate_json(tmp_path, "--dry-run")
    assert [(r["database"], r["tenant"], r["from"], r["to"], r["changed"]) for r in planned] == [
        ("registry", None, "0003", registry_head, False),
        ("tenant", "acme", "0003", tenant_head, False),
        ("tenant", "remote", "0003", tenant_head, False)]
    assert revision(deployment["remote"], "tenant") == "0003"  # the dry run changed nothing

    done = migrate_json(tmp_path)
    assert [(r["tenant"], r["from"], r["to"], r["changed"], r["error"]) for r in done] == [
        (None, "0003", registry_head, True, None), ("acme", "0003", tenant_head, True, None),
        ("remote", "0003", tenant_head, True, None)]
    assert revision(deployment["registry"], "registry") == registry_head
    for slug in ("acme", "remote"):
        assert revision(deployment[slug], "tenant") == tenant_head
    assert {"group_id"} <= columns(deployment["remote"], "messages")
    assert {"idempotency_key", "send_owner", "recipient_type"} <= columns(
        deployment["remote"], "outbound_messages")
    assert {"raw_body", "signature"} <= columns(deployment["registry"], "parked")

    again = cli(tmp_path, "migrate")
    assert again.splitlines() == [f"registry: {registry_head} (up to date)",
                                  f"tenant acme: {tenant_head} (up to date)",
                                  f"tenant remote: {tenant_head} (up to date)"]
    # The gateway's own commands work on the migrated databases.
    assert cli(tmp_path, "messages", "--tenant", "remote", "--json") == ""


def test_migrate_down_for_a_rollback_and_up_again(
        tmp_path: Path, deployment: dict[str, str]) -> None:
    cli(tmp_path, "migrate")
    text = cli(tmp_path, "migrate", "--registry-to", OLD["registry"],
               "--tenant-to", OLD["tenant"])
    assert text.splitlines() == [
        f"registry: {head_revision('registry')} -> {OLD['registry']}",
        f"tenant acme: {head_revision('tenant')} -> {OLD['tenant']}",
        f"tenant remote: {head_revision('tenant')} -> {OLD['tenant']}"]
    assert revision(deployment["remote"], "tenant") == OLD["tenant"]
    assert "group_id" not in columns(deployment["remote"], "messages")
    cli(tmp_path, "migrate")
    assert revision(deployment["remote"], "tenant") == head_revision("tenant")


def test_migrate_one_tenant_only(tmp_path: Path, deployment: dict[str, str]) -> None:
    done = migrate_json(tmp_path, "--tenant", "remote")
    assert [(r["database"], r["tenant"]) for r in done] == [("registry", None),
                                                           ("tenant", "remote")]
    assert revision(deployment["remote"], "tenant") == head_revision("tenant")
    assert revision(deployment["acme"], "tenant") == OLD["tenant"]
    assert "unknown tenant 'nobody'" in cli(tmp_path, "migrate", "--tenant", "nobody", code=1)


@pytest.mark.parametrize("tenant_db_url", ["sqlite"], indirect=True)
def test_a_database_down_or_newer_is_reported_and_the_others_migrated(
        tmp_path: Path, deployment: dict[str, str]) -> None:
    # Registered while its server was up (`tenant add` checks the database it is given).
    registry = open_registry(load_settings(tmp_path))
    registry.add_tenant(
        "down", "postgresql+psycopg://wacloud:s3cret-pw@127.0.0.1:1/nothing?connect_timeout=2")
    registry.engine.dispose()
    engine = create_engine(deployment["acme"])
    with engine.begin() as conn:  # as a later wacloud would leave it
        conn.execute(sa.text(f"UPDATE {VERSION_TABLES['tenant']} SET version_num = '0999'"))
    engine.dispose()

    result = CliRunner().invoke(app, ["migrate", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    lines = dict(line.split(": ", 1) for line in result.output.splitlines())
    assert lines["registry"] == f"{OLD['registry']} -> {head_revision('registry')}"
    assert lines["tenant remote"] == f"{OLD['tenant']} -> {head_revision('tenant')}"
    assert lines["tenant acme"].startswith("error: the tenant database is at revision 0999")
    assert "newer wacloud" in lines["tenant acme"]
    assert lines["tenant down"].startswith("error: OperationalError")
    assert "s3cret-pw" not in result.output
    assert revision(deployment["remote"], "tenant") == head_revision("tenant")

    # The gateway refuses such a database with the same explanation, not Alembic's.
    store = TenantStore("acme", create_engine(deployment["acme"]))
    with pytest.raises(UnknownRevisionError, match="newer wacloud"):
        store.create_schema()
    store.close()


def test_migrate_needs_a_registry_and_known_revisions(tmp_path: Path) -> None:
    assert "wacloud init" in cli(tmp_path / "none", "migrate", code=1)
    cli(tmp_path, "init")
    assert "no tenant revision '0999'" in cli(tmp_path, "migrate", "--tenant-to", "0999",
                                              code=1)
    assert cli(tmp_path, "migrate", "--dry-run").splitlines() == [
        f"registry: {head_revision('registry')} (up to date)"]


def test_a_registry_on_postgresql_is_migrated_with_its_tenants(
        tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry and a tenant's tables in one PostgreSQL database (separate histories)."""
    monkeypatch.setenv("WACLOUD_REGISTRY_URL", postgres_url)
    cli(tmp_path, "tenant", "add", "acme", "--db-url", postgres_url)
    assert not (tmp_path / "registry.db").exists()
    downgrade(postgres_url, "registry", OLD["registry"])
    downgrade(postgres_url, "tenant", OLD["tenant"])

    done = migrate_json(tmp_path)
    assert [(r["database"], r["tenant"], r["from"], r["to"]) for r in done] == [
        ("registry", None, OLD["registry"], head_revision("registry")),
        ("tenant", "acme", OLD["tenant"], head_revision("tenant"))]
    assert revision(postgres_url, "registry") == head_revision("registry")
    assert revision(postgres_url, "tenant") == head_revision("tenant")


def test_tenants_on_postgresql_and_mariadb_at_once_are_migrated_together(
        tmp_path: Path, postgres_url: str, mariadb_url: str) -> None:
    """One `wacloud migrate` over tenants on different engines: a SQLite file, PostgreSQL and
    MariaDB, each from the old revision to head."""
    urls = {"pg": postgres_url, "maria": mariadb_url}
    cli(tmp_path, "tenant", "add", "local")
    for slug, url in urls.items():
        cli(tmp_path, "tenant", "add", slug, "--db-url", url)
        downgrade(url, "tenant", OLD["tenant"])
    downgrade(f"sqlite:///{tmp_path / 'tenants' / 'local.db'}", "tenant", OLD["tenant"])

    done = migrate_json(tmp_path)
    assert [(r["tenant"], r["from"], r["to"], r["error"]) for r in done[1:]] == [
        (slug, OLD["tenant"], head_revision("tenant"), None)
        for slug in ("local", "maria", "pg")]
    for url in urls.values():
        assert revision(url, "tenant") == head_revision("tenant")
