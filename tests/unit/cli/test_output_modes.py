"""Lists are tables on a terminal and the old tab-separated lines otherwise (scripts keep
working); --json is one object per line and never mixed with tables or progress bars."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from wacloud.bootstrap import open_registry
from wacloud.cli import app, common
from wacloud.settings import load_settings


def run(data_dir: Path, *args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    return result.stdout


def world(data_dir: Path) -> None:
    run(data_dir, "tenant", "add", "acme")
    run(data_dir, "channel", "add", "whapi", "--tenant", "acme", "--channel-id", "MANTIS-1",
        "--token", "tok", "--webhook-secret", "hook")
    run(data_dir, "channel", "pause", "1", "--reason", "token refused")
    registry = open_registry(load_settings(data_dir))
    for n in range(3):
        registry.park(stage="receive", reason=f"unknown channel {n}", payload="{}")
    registry.engine.dispose()


def test_lists_are_tab_separated_when_not_a_terminal(tmp_path: Path) -> None:
    world(tmp_path)
    assert run(tmp_path, "channel", "list") == "1\tacme\twhapi\tMANTIS-1\tPAUSED: token refused\n"
    assert run(tmp_path, "tenant", "list") == "acme\n"
    [row] = [json.loads(line) for line in run(tmp_path, "channel", "list", "--json").splitlines()]
    assert row["key"] == "MANTIS-1" and row["paused"] is True


def test_lists_are_tables_on_a_terminal_and_json_stays_json(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    world(tmp_path)
    monkeypatch.setattr(common, "is_tty", lambda stream=None: True)

    table = run(tmp_path, "channel", "list")
    assert "\t" not in table and "MANTIS-1" in table and "PAUSED: token refused" in table
    assert "provider" in table and "┃" in table
    assert "unknown channel 2" in run(tmp_path, "parked")
    lines = run(tmp_path, "parked", "--json").splitlines()
    assert [json.loads(line)["reason"] for line in lines] == [
        f"unknown channel {n}" for n in range(3)]
    # No progress bar in --json output, even on a terminal.
    assert json.loads(run(tmp_path, "parked", "replay", "--all", "--json")) == {
        "replayed": [1, 2, 3]}


def test_keys_generate_has_json() -> None:
    result = CliRunner().invoke(app, ["keys", "generate", "--json"])
    assert result.exit_code == 0, result.output
    key = json.loads(result.stdout)["key"]
    assert isinstance(key, str) and len(key) == 44


def _commands(command: Any, path: list[str]) -> Iterator[tuple[str, Any]]:
    """Every command of the `wacloud` tree (a group that runs on its own counts too)."""
    if hasattr(command, "commands"):
        if path and getattr(command, "invoke_without_command", False):
            yield " ".join(path), command
        for name, sub in command.commands.items():
            yield from _commands(sub, [*path, name])
    else:
        yield " ".join(path), command


def test_every_command_takes_json() -> None:
    tree = list(_commands(typer.main.get_command(app), []))
    assert len(tree) > 40  # the walk found the groups' commands
    missing = [name for name, command in tree
               if "--json" not in {opt for param in command.params
                                   for opt in getattr(param, "opts", [])}]
    assert missing == []


def test_messages_and_notices_are_tables_on_a_terminal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run(tmp_path, "tenant", "add", "acme")
    run(tmp_path, "channel", "add", "whapi", "--tenant", "acme", "--channel-id", "MANTIS-1",
        "--token", "tok", "--webhook-secret", "hook")
    run(tmp_path, "send", "--tenant", "acme", "--channel", "MANTIS-1", "--to", "5511987654321",
        "--text", "[b]oi[/b]")
    piped = run(tmp_path, "messages", "--tenant", "acme")
    assert piped == "out text         MANTIS-1 -> 5511987654321: [b]oi[/b] (pending)\n"
    [row] = [json.loads(line) for line in run(tmp_path, "messages", "--tenant", "acme",
                                              "--json").splitlines()]
    assert row["text"] == "[b]oi[/b]"

    monkeypatch.setattr(common, "is_tty", lambda stream=None: True)
    table = run(tmp_path, "messages", "--tenant", "acme")
    assert "┃" in table and "status" in table
    assert "[b]oi[/b]" in table  # shown as written, never read as markup
    assert "┃" in run(tmp_path, "tenant", "list") and "SQLite file" in run(
        tmp_path, "tenant", "list")
    assert run(tmp_path, "notices", "--tenant", "acme") == ""  # none yet, no empty table
