"""Long commands show a progress bar on a terminal, and `--json` output stays clean JSON even
there: the commands run as real processes under a pseudo-terminal (stdout and stderr both on
it, as in an operator's shell)."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from wacloud.adapters.queue.sqlite.broker import SqliteBroker
from wacloud.bootstrap import queue_specs
from wacloud.cli import app
from wacloud.settings import load_settings
from wacloud.stages import envelopes

ESC = "\x1b"


def run_in_pty(data_dir: Path, *args: str) -> tuple[int, str]:
    """Run `wacloud ARGS --data-dir DIR` with stdin, stdout and stderr on a pseudo-terminal;
    (exit code, everything the terminal received)."""
    primary, secondary = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WACLOUD_")}
    env.update(TERM="xterm-256color", COLUMNS="120", LINES="40")
    env.pop("NO_COLOR", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "wacloud.cli", *args, "--data-dir", str(data_dir)],
        stdin=secondary, stdout=secondary, stderr=secondary, env=env, close_fds=True)
    os.close(secondary)
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the child closed its end of the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(primary)
    code = process.wait(timeout=120)
    return code, b"".join(chunks).decode("utf-8", "replace")


def json_lines(output: str) -> list[dict[str, object]]:
    assert ESC not in output, output  # no bar, no colours, no cursor movement
    return [json.loads(line) for line in output.replace("\r", "").splitlines() if line]


def setup_tenants(data_dir: Path) -> None:
    for slug in ("acme", "beta"):
        result = CliRunner().invoke(app, ["tenant", "add", slug, "--data-dir", str(data_dir)])
        assert result.exit_code == 0, result.output


async def dead_letters(data_dir: Path, queue: str, count: int) -> None:
    settings = load_settings(data_dir)
    broker = SqliteBroker(settings.queue_path)
    try:
        q = broker.queue(queue_specs(settings)[queue])
        for n in range(count):
            await q.send(json.dumps({"n": n}).encode())
        for message in await q.receive(count):
            await q.dead_letter(message.receipt, "boom")
    finally:
        await broker.close()


def test_migrate_shows_a_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    setup_tenants(tmp_path)
    code, output = run_in_pty(tmp_path, "migrate")
    assert code == 0, output
    assert "migrating databases" in output and ESC in output
    # The bar counted the registry and both tenants; each database still has its line.
    assert "3/3" in output and "100%" in output, output
    for name in ("registry:", "tenant acme:", "tenant beta:"):
        assert name in output


def test_migrate_json_on_a_terminal_is_clean_json(tmp_path: Path) -> None:
    setup_tenants(tmp_path)
    code, output = run_in_pty(tmp_path, "migrate", "--json")
    assert code == 0, output
    rows = json_lines(output)
    assert [(r["database"], r["tenant"]) for r in rows] == [
        ("registry", None), ("tenant", "acme"), ("tenant", "beta")]


def test_dlq_replay_shows_a_progress_bar_and_json_stays_clean(tmp_path: Path) -> None:
    setup_tenants(tmp_path)
    asyncio.run(dead_letters(tmp_path, envelopes.INBOUND_EVENTS, 3))
    code, output = run_in_pty(tmp_path, "dlq", "replay", "--queue", envelopes.INBOUND_EVENTS,
                              "--all")
    assert code == 0, output
    assert f"replaying dead letters of {envelopes.INBOUND_EVENTS}" in output and ESC in output
    assert f"replayed 3 message(s) to {envelopes.INBOUND_EVENTS}" in output

    asyncio.run(dead_letters(tmp_path, envelopes.INBOUND_EVENTS, 2))
    code, output = run_in_pty(tmp_path, "dlq", "replay", "--queue", envelopes.INBOUND_EVENTS,
                              "--all", "--json")
    assert code == 0, output
    [result] = json_lines(output)
    assert result["queue"] == envelopes.INBOUND_EVENTS and len(result["replayed"]) == 2


def test_media_refetch_and_erase_show_progress_and_json_stays_clean(tmp_path: Path) -> None:
    setup_tenants(tmp_path)
    code, output = run_in_pty(tmp_path, "media", "refetch", "--tenant", "acme")
    assert code == 0, output
    assert "queueing media downloads of acme" in output and "queued 0 media" in output
    code, output = run_in_pty(tmp_path, "media", "refetch", "--tenant", "acme", "--json")
    assert code == 0, output
    assert json_lines(output) == [{"queued": 0}]

    code, output = run_in_pty(tmp_path, "privacy", "erase", "--tenant", "acme", "--contact",
                              "5511987654321")
    assert code == 0, output
    assert "erasing the contact's data" in output
    code, output = run_in_pty(tmp_path, "privacy", "erase", "--tenant", "acme", "--contact",
                              "5511987654321", "--json")
    assert code == 0, output
    [report] = json_lines(output)
    assert report["tenant"] == "acme"
