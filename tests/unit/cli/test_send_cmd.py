"""`wacloud send` in-process: a message file's validity (`ttl_s` / `expires_at`) is kept, and
`wacloud messages --json` shows it as `expires_at`."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from typer.testing import CliRunner

from wacloud.bootstrap import open_registry
from wacloud.cli import app
from wacloud.domain.model import Provider
from wacloud.settings import load_settings

PN = "106540352242922"


def run(data_dir: Path, *args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    return result.output


def test_send_keeps_the_validity_and_messages_shows_it(tmp_path: Path) -> None:
    run(tmp_path, "tenant", "add", "acme")
    registry = open_registry(load_settings(tmp_path))
    registry.add_channel(tenant="acme", provider=Provider.META, key=PN, phone_number_id=PN,
                         waba_id="W", display_number="5511940001234", token="tok")
    registry.engine.dispose()
    message = tmp_path / "otp.json"
    message.write_text(json.dumps({"type": "text", "text": {"body": "Código 123456"},
                                   "ttl_s": 120}))
    before = datetime.now(UTC)
    run(tmp_path, "send", "--tenant", "acme", "--channel", PN, "--to", "5511987654321",
        "--json-file", str(message))
    run(tmp_path, "send", "--tenant", "acme", "--channel", PN, "--to", "5511987654321",
        "--text", "sem validade")

    rows = [json.loads(line) for line in run(tmp_path, "messages", "--tenant", "acme",
                                             "--json").splitlines()]
    expires = datetime.fromisoformat(rows[0]["expires_at"])
    assert before + timedelta(seconds=119) <= expires <= datetime.now(UTC) + timedelta(
        seconds=121)
    assert rows[1]["expires_at"] is None

    message.write_text(json.dumps({"type": "text", "text": {"body": "x"}, "ttl_s": -1}))
    refused = CliRunner().invoke(app, ["send", "--tenant", "acme", "--channel", PN, "--to",
                                       "5511987654321", "--json-file", str(message),
                                       "--data-dir", str(tmp_path)])
    assert refused.exit_code != 0 and "ttl_s" in refused.output
