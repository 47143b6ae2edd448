"""The command line as a new user meets it: every error is one line on stderr with exit code
1 (a traceback only with --debug), and nothing is half done: a tenant whose database cannot be
reached is not registered; bad slugs, ids and URLs are refused where they enter."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner, Result

from wacloud.bootstrap import open_registry
from wacloud.cli import app
from wacloud.security.crypto import new_key
from wacloud.settings import load_settings

META = ["--phone-number-id", "106540352242922", "--waba-id", "102290129340398",
        "--display-number", "5511940001234", "--token", "tok-secret", "--app-secret", "app",
        "--verify-token", "verify"]


def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def invoke(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, [*args, "--data-dir", str(data_dir)], env=env)


def one_error_line(result: Result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def tenants(data_dir: Path) -> list[str]:
    registry = open_registry(load_settings(data_dir))
    try:
        return [t.slug for t in registry.tenants()]
    finally:
        registry.engine.dispose()


def test_tenant_add_with_a_database_that_is_down_registers_nothing(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://wacloud:pw-secret@127.0.0.1:{closed_port()}/acme"

    result = invoke(tmp_path, "tenant", "add", "acme", "--db-url", url)

    line = one_error_line(result)
    assert "cannot reach the tenant database at postgresql+psycopg://wacloud:***@127.0.0.1" in line
    assert "refused" in line.lower() and "tenant acme was not added" in line
    assert "pw-secret" not in result.output
    assert tenants(tmp_path) == []
    # The same slug can be added once the database is right.
    assert invoke(tmp_path, "tenant", "add", "acme").exit_code == 0
    assert tenants(tmp_path) == ["acme"]
    assert (tmp_path / "tenants" / "acme.db").is_file()


def test_tenant_add_refuses_a_bad_slug_or_url_and_a_duplicate(tmp_path: Path) -> None:
    line = one_error_line(invoke(tmp_path, "tenant", "add", "Bad Slug!"))
    assert "lower-case letters, digits, '-' and '_'" in line
    line = one_error_line(invoke(tmp_path, "tenant", "add", "../etc"))
    assert "invalid tenant slug" in line
    line = one_error_line(invoke(tmp_path, "tenant", "add", "acme", "--db-url", "nonsense"))
    assert "not a SQLAlchemy URL" in line
    line = one_error_line(invoke(tmp_path, "tenant", "add", "acme", "--db-url",
                                 "oracle://u:p@h/db"))
    assert "unsupported database 'oracle'" in line and ":p@" not in line
    assert not (tmp_path / "tenants").exists() or not any((tmp_path / "tenants").iterdir())
    assert invoke(tmp_path, "tenant", "add", "acme").exit_code == 0
    assert "already exists" in one_error_line(invoke(tmp_path, "tenant", "add", "acme"))


def test_channel_add_validates_urls_and_ids(tmp_path: Path) -> None:
    assert invoke(tmp_path, "tenant", "add", "acme").exit_code == 0
    whapi = ["channel", "add", "whapi", "--tenant", "acme", "--channel-id", "MANTIS-1",
             "--token", "tok-secret", "--webhook-secret", "hook"]

    line = one_error_line(invoke(tmp_path, *whapi, "--api-base-url", "http://[::1"))
    assert "invalid API base URL" in line and "https" in line
    line = one_error_line(invoke(tmp_path, *whapi, "--api-base-url", "http://127.0.0.1:9"))
    assert "scheme 'http'" in line and "WACLOUD_DEV_ALLOW_LOCAL_URLS" in line
    line = one_error_line(invoke(tmp_path, *whapi, "--api-base-url", "https://"))
    assert "no host" in line
    line = one_error_line(invoke(tmp_path, "channel", "add", "whapi", "--tenant", "acme",
                                 "--channel-id", "bad id/..", "--token", "t",
                                 "--webhook-secret", "h"))
    assert "invalid channel id" in line
    meta = ["channel", "add", "meta", "--tenant", "acme", *META]
    bad_pnid = [*meta[:5], "--phone-number-id", "10654-abc", *meta[7:]]
    assert "Meta ids are digits only" in one_error_line(invoke(tmp_path, *bad_pnid))
    assert "tok-secret" not in invoke(tmp_path, *bad_pnid).output
    assert "media host" in one_error_line(invoke(tmp_path, *meta, "--media-host",
                                                 "https://cdn.example/x"))
    assert "between 1 and 10000" in one_error_line(invoke(tmp_path, *meta, "--mps", "0"))
    bad_token = [*meta[:11], "--token", "tok\nX-Injected: 1", *meta[13:]]
    line = one_error_line(invoke(tmp_path, *bad_token))
    assert "invalid token" in line and "Injected" not in line
    registry = open_registry(load_settings(tmp_path))
    try:
        assert registry.channels() == []  # nothing of the refused ones was stored
    finally:
        registry.engine.dispose()

    # Plain http is for development only; the URL is stored without its trailing slash.
    dev = invoke(tmp_path, *whapi, "--api-base-url", "http://127.0.0.1:9/", "--json",
                 env={"WACLOUD_DEV_ALLOW_LOCAL_URLS": "1"})
    assert dev.exit_code == 0, dev.output
    assert json.loads(dev.stdout)["api_base_url"] == "http://127.0.0.1:9"
    added = invoke(tmp_path, *meta, "--api-base-url", "https://graph.example.net/", "--json")
    assert added.exit_code == 0, added.output
    assert json.loads(added.stdout)["key"] == "106540352242922"
    # A token no HTTP header can carry would fail every send: refused when it is replaced too.
    line = one_error_line(invoke(tmp_path, "channel", "set-token", "1", "--token", "tök"))
    assert "invalid token" in line and "tök" not in line


@pytest.mark.parametrize("debug", [["--debug"], []])
def test_unexpected_errors_are_one_line_unless_debug(tmp_path: Path, debug: list[str]) -> None:
    env = {"WACLOUD_REGISTRY_URL":
           f"postgresql+psycopg://wacloud:pw-secret@127.0.0.1:{closed_port()}/registry",
           "WACLOUD_ENCRYPTION_KEY": new_key()}
    result = CliRunner().invoke(app, [*debug, "tenant", "list", "--data-dir", str(tmp_path)],
                                env=env)
    if debug:
        assert result.exit_code == 1 and result.exception is not None
        assert type(result.exception).__name__ == "OperationalError"
        return
    line = one_error_line(result)
    assert "a database could not be reached" in line and "--debug" in line
    assert "pw-secret" not in result.output


def test_wacloud_debug_environment_variable_keeps_the_traceback(tmp_path: Path) -> None:
    env = {"WACLOUD_REGISTRY_URL": f"postgresql+psycopg://u@127.0.0.1:{closed_port()}/r",
           "WACLOUD_ENCRYPTION_KEY": new_key(), "WACLOUD_DEBUG": "1"}
    result = CliRunner().invoke(app, ["tenant", "list", "--data-dir", str(tmp_path)], env=env)
    assert result.exit_code == 1 and type(result.exception).__name__ == "OperationalError"


def test_an_error_written_for_the_operator_is_shown_as_it_is(tmp_path: Path) -> None:
    (tmp_path / "no-key").mkdir()  # a data dir, but no key in it nor in the environment
    line = one_error_line(invoke(tmp_path / "no-key", "tenant", "list"))
    assert line == "error: no encryption key configured (run `wacloud init`)"


def test_tenant_add_migrates_a_reachable_postgresql_before_registering(tmp_path: Path) -> None:
    from tests.services import fresh_postgres_db

    with fresh_postgres_db() as url:
        result = invoke(tmp_path, "tenant", "add", "globex", "--db-url", url, "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["slug"] == "globex"
        engine = sa.create_engine(url)
        try:
            with engine.connect() as conn:
                assert sa.inspect(conn).has_table("outbound_messages")
        finally:
            engine.dispose()
    assert tenants(tmp_path) == ["globex"]


@pytest.mark.parametrize("args", [["tenant", "list"], ["dlq", "list"], ["dlq", "replay", "--all"],
                                  ["keys", "rotate"], ["status"], ["migrate"],
                                  ["channel", "pause", "1"]])
def test_a_missing_data_dir_is_one_line_and_creates_nothing(tmp_path: Path,
                                                            args: list[str]) -> None:
    data_dir = tmp_path / "nowhere"
    line = one_error_line(invoke(data_dir, *args))
    assert line == (f"error: no data dir at {data_dir.resolve()} (run `wacloud init`, or give "
                    "--data-dir or WACLOUD_DATA_DIR)")
    assert not data_dir.exists()


@pytest.mark.parametrize(("args", "expected"), [
    (["channel", "resume", "abc"], "error: Invalid value for 'channel_id': "),
    (["messages"], "error: Missing option '--tenant'; see `wacloud messages --help`"),
    (["tenant", "add"], "error: Missing argument 'slug'; see `wacloud tenant add --help`"),
    (["channel", "list", "--bogus"], "error: No such option: --bogus; see `wacloud channel "
                                     "list --help`"),
    (["nosuch"], "error: No such command 'nosuch'; see `wacloud --help`")])
def test_usage_errors_are_one_line_naming_the_help(tmp_path: Path, args: list[str],
                                                   expected: str) -> None:
    result = CliRunner().invoke(app, args, prog_name="wacloud")
    assert result.exit_code == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(expected), line


def test_no_arguments_still_show_the_help() -> None:
    result = CliRunner().invoke(app, ["tenant"], prog_name="wacloud")
    assert "Usage: wacloud tenant" in result.output and "add" in result.output


def test_privacy_refuses_a_contact_that_is_no_phone_nor_id_and_an_unwritable_file(
        tmp_path: Path) -> None:
    assert invoke(tmp_path, "tenant", "add", "acme").exit_code == 0
    line = one_error_line(invoke(tmp_path, "privacy", "erase", "--tenant", "acme",
                                 "--contact", "not a phone"))
    assert "'not a phone' is neither a phone number nor a user id" in line
    target = tmp_path / "missing-dir" / "export.json"
    line = one_error_line(invoke(tmp_path, "privacy", "export", "--tenant", "acme",
                                 "--contact", "5511987654321", "-o", str(target)))
    assert line == f"error: cannot write {target}: No such file or directory"
