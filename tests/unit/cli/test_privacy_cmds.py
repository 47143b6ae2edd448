"""The LGPD commands in-process: retention settings, erase/export output, the export file."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from typer.testing import CliRunner

from wacloud.bootstrap import open_registry
from wacloud.cli import app
from wacloud.credentials.broker import CredentialsBroker
from wacloud.domain.model import Contact, InboundMessage, Provider
from wacloud.settings import load_settings

MARIA, JOAO = "5511987654321", "5521912345678"


def run(data_dir: Path, *args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    return result.output


def test_set_retention_and_list(tmp_path: Path) -> None:
    run(tmp_path, "tenant", "add", "acme")
    run(tmp_path, "tenant", "add", "beta")
    out = json.loads(run(tmp_path, "tenant", "set-retention", "acme", "--days", "30", "--json"))
    assert out == {"slug": "acme", "retention_days": 30}
    listed = [json.loads(line) for line in run(tmp_path, "privacy", "retention",
                                               "--json").splitlines()]
    assert listed == [{"slug": "acme", "retention_days": 30},
                      {"slug": "beta", "retention_days": None}]
    assert "kept forever" in run(tmp_path, "tenant", "set-retention", "acme", "--none")
    run(tmp_path, "tenant", "set-retention", "beta", "--days", "0")
    assert json.loads(run(tmp_path, "privacy", "purge", "--json")) == {}

    bad = CliRunner().invoke(app, ["tenant", "set-retention", "nobody", "--days", "3",
                                   "--data-dir", str(tmp_path)])
    assert bad.exit_code == 1 and "unknown tenant" in bad.output
    neither = CliRunner().invoke(app, ["tenant", "set-retention", "acme",
                                       "--data-dir", str(tmp_path)])
    assert neither.exit_code == 1


def test_erase_and_export(tmp_path: Path) -> None:
    run(tmp_path, "tenant", "add", "acme")
    settings = load_settings(tmp_path)
    registry = open_registry(settings)
    broker = CredentialsBroker(registry, tenants_dir=settings.tenants_dir)
    broker.tenant_store("acme").store_events([
        InboundMessage(Provider.META, "PN", f"wamid.{who}", "text", sender=who,
                       contact=Contact(wa_id=who), text=f"text of {who}")
        for who in (MARIA, JOAO)], [], [])
    broker.close()
    registry.engine.dispose()

    target = tmp_path / "export.json"
    run(tmp_path, "privacy", "export", "--tenant", "acme", "--contact", f"+{MARIA}",
        "-o", str(target))
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    exported = json.loads(target.read_text())
    assert [m["text"] for m in exported["messages"]] == [f"text of {MARIA}"]

    dry = run(tmp_path, "privacy", "erase", "--tenant", "acme", "--contact", MARIA,
              "--dry-run")
    assert "would be removed" in dry and MARIA not in dry
    report = json.loads(run(tmp_path, "privacy", "erase", "--tenant", "acme", "--contact",
                            MARIA, "--json"))
    assert report["messages"] == 1 and report["mode"] == "delete"
    lines = run(tmp_path, "messages", "--tenant", "acme", "--json").splitlines()
    assert [json.loads(line)["from"] for line in lines] == [JOAO]

    unknown = CliRunner().invoke(app, ["privacy", "erase", "--tenant", "nobody", "--contact",
                                       MARIA, "--data-dir", str(tmp_path)])
    assert unknown.exit_code == 1 and "unknown tenant" in unknown.output
