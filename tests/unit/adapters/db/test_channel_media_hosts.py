"""A channel's own media hosts (the per-channel SSRF allow list): registry, CLI, migration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from typer.testing import CliRunner

from wacloud.adapters.db.migrate import alembic_config
from wacloud.adapters.db.registry.store import Registry
from wacloud.bootstrap import open_registry
from wacloud.cli import app
from wacloud.domain.model import Provider
from wacloud.security.crypto import SecretBox, new_key
from wacloud.settings import load_settings


def registry(tmp_path: Path) -> Registry:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    reg = Registry(engine, SecretBox([new_key()]))
    reg.create_schema()
    reg.add_tenant("acme")
    return reg


def test_media_hosts_are_stored_normalized_and_read_back(tmp_path: Path) -> None:
    reg = registry(tmp_path)
    try:
        added = reg.add_channel(tenant="acme", provider=Provider.WHAPI, key="CH-1", token="t",
                                media_hosts=[" CDN.Tenant.example ", ".files.example.net",
                                             "cdn.tenant.example", "media.example.org:8443"])
        plain = reg.add_channel(tenant="acme", provider=Provider.WHAPI, key="CH-2", token="t")

        assert added.media_hosts == ("cdn.tenant.example", ".files.example.net",
                                     "media.example.org:8443")
        assert reg.channels("acme")[0].media_hosts == added.media_hosts
        assert plain.media_hosts == ()
    finally:
        reg.engine.dispose()


def test_invalid_media_hosts_are_refused(tmp_path: Path) -> None:
    reg = registry(tmp_path)
    try:
        with pytest.raises(ValueError, match="media host"):
            reg.add_channel(tenant="acme", provider=Provider.WHAPI, key="CH-1", token="t",
                            media_hosts=["https://cdn.example.com/x"])
        assert reg.channels() == []
    finally:
        reg.engine.dispose()


def test_cli_channel_add_takes_repeatable_media_hosts(tmp_path: Path) -> None:
    runner = CliRunner()
    data = ["--data-dir", str(tmp_path / "data")]
    assert runner.invoke(app, ["tenant", "add", "acme", *data]).exit_code == 0

    added = runner.invoke(app, [
        "channel", "add", "whapi", "--tenant", "acme", "--channel-id", "MANTIS-1",
        "--token", "tok", "--webhook-secret", "hook", "--media-host", "cdn.acme.example",
        "--media-host", ".files.acme.example", "--json", *data])
    bad = runner.invoke(app, [
        "channel", "add", "whapi", "--tenant", "acme", "--channel-id", "MANTIS-2",
        "--token", "tok", "--webhook-secret", "hook", "--media-host", "http://x.example/",
        *data])

    assert added.exit_code == 0, added.output
    assert json.loads(added.stdout)["key"] == "MANTIS-1"
    assert json.loads(added.stdout)["media_hosts"] == ["cdn.acme.example", ".files.acme.example"]
    assert bad.exit_code == 1 and "media host" in bad.output
    reg = open_registry(load_settings(tmp_path / "data"))
    try:
        [channel] = reg.channels("acme")
        assert channel.media_hosts == ("cdn.acme.example", ".files.acme.example")
    finally:
        reg.engine.dispose()


def test_migration_adds_the_column_to_an_existing_registry(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    config = alembic_config("registry")
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "0002")
        before = {c["name"] for c in sa.inspect(engine).get_columns("channels")}
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "0003")  # later revisions add columns of their own
        after = {c["name"] for c in sa.inspect(engine).get_columns("channels")}
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "0002")
        downgraded = {c["name"] for c in sa.inspect(engine).get_columns("channels")}
    finally:
        engine.dispose()

    assert "media_hosts" not in before
    assert after - before == {"media_hosts"}
    assert downgraded == before
