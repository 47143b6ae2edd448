"""`wacloud notices` in-process: webhook-level errors kept for a tenant become visible."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from wacloud.bootstrap import open_registry
from wacloud.cli import app
from wacloud.credentials.broker import CredentialsBroker
from wacloud.domain.model import Provider, ProviderError, ProviderNotice
from wacloud.settings import load_settings


def run(data_dir: Path, *args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    return result.output


def test_notices_lists_webhook_errors_as_json_lines_and_text(tmp_path: Path) -> None:
    run(tmp_path, "tenant", "add", "acme")
    settings = load_settings(tmp_path)
    registry = open_registry(settings)
    broker = CredentialsBroker(registry, tenants_dir=settings.tenants_dir)
    broker.tenant_store("acme").store_events([], [], [
        ProviderNotice(Provider.META, "106540352242922", "messages",
                       errors=[ProviderError("130429", "Rate limit hit")],
                       raw={"errors": [{"code": 130429, "title": "Rate limit hit"}]}),
        ProviderNotice(Provider.META, "102290129340398", "account_update",
                       raw={"event": "ACCOUNT_UPDATE", "n": 2})])
    broker.close()
    registry.engine.dispose()

    lines = [json.loads(line) for line in run(tmp_path, "notices", "--tenant", "acme",
                                              "--json").splitlines()]
    assert [(n["channel"], n["field"]) for n in lines] == [
        ("106540352242922", "messages"), ("102290129340398", "account_update")]
    assert lines[0]["errors"] == [{"code": "130429", "reason": "Rate limit hit"}]
    assert lines[0]["raw"]["errors"][0]["code"] == 130429
    assert len(run(tmp_path, "notices", "--tenant", "acme", "--json", "--limit", "1")
               .splitlines()) == 1
    text = run(tmp_path, "notices", "--tenant", "acme")
    assert "130429 Rate limit hit" in text and "account_update" in text

    unknown = CliRunner().invoke(app, ["notices", "--tenant", "nobody",
                                       "--data-dir", str(tmp_path)])
    assert unknown.exit_code == 1 and "unknown tenant" in unknown.output
