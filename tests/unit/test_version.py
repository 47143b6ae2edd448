"""The version an operator sees (`wacloud --version`, `/healthz`) is the installed package's,
which pyproject.toml sets."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
from typer.testing import CliRunner

import wacloud
from wacloud.adapters.db.migrate import head_revision
from wacloud.bootstrap import build_gateway
from wacloud.cli import app
from wacloud.hosting.http import create_apps
from wacloud.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]


def pyproject_version() -> str:
    version: str = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    return version


def test_package_version_is_pyprojects() -> None:
    assert wacloud.__version__ == pyproject_version()


def test_cli_prints_the_version_and_exits() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output == f"wacloud {pyproject_version()}\n"
    # The console script as installed, in a process of its own.
    run = subprocess.run([sys.executable, "-m", "wacloud.cli", "--version"],
                         capture_output=True, text=True, timeout=60, check=True)
    assert run.stdout == f"wacloud {pyproject_version()}\n"


async def test_healthz_answers_the_version_on_both_listeners(tmp_path: Path) -> None:
    gateway = build_gateway(load_settings(tmp_path))
    try:
        public, internal = create_apps(gateway)
        for asgi in (public, internal):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi),
                                         base_url="http://gateway") as client:
                answer = await client.get("/healthz")
            assert answer.status_code == 200
            assert answer.json() == {"status": "ok", "version": pyproject_version()}
    finally:
        await gateway.close()


def test_upgrading_guide_names_this_releases_schema_revisions() -> None:
    """A new migration or version bump shows in the revision table operators roll back by."""
    row = (f"| {pyproject_version()} | {head_revision('registry')} | "
           f"{head_revision('tenant')} |")
    assert row in (ROOT / "docs" / "upgrading.md").read_text()
    assert f"## [{pyproject_version()}]" in (ROOT / "CHANGELOG.md").read_text()
