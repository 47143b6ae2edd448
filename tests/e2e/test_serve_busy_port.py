"""`wacloud serve` on a port already in use stops at once with one line and a non-zero exit,
before it prints "serving on", builds the gateway or starts a worker or the collector (the
queue file it would open is never created)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import free_port, gateway_env


@pytest.mark.parametrize("busy", ["public", "internal"])
def test_serve_on_a_busy_port_fails_before_starting_anything(tmp_path: Path, busy: str) -> None:
    data_dir = tmp_path / "data"
    assert subprocess.run([sys.executable, "-m", "wacloud.cli", "init", "--data-dir",
                           str(data_dir)], env=gateway_env(data_dir), capture_output=True,
                          timeout=60, check=False).returncode == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        taken_port, other = taken.getsockname()[1], free_port()
        public, internal = (taken_port, other) if busy == "public" else (other, taken_port)
        result = subprocess.run(
            [sys.executable, "-m", "wacloud.cli", "serve", "--port", str(public),
             "--internal-port", str(internal), "--data-dir", str(data_dir)],
            env=gateway_env(data_dir), capture_output=True, text=True, timeout=60,
            check=False)

    assert result.returncode == 1
    assert "serving on" not in result.stdout
    flag = "--port" if busy == "public" else "--internal-port"
    assert result.stderr.strip().splitlines() == [
        f"error: cannot listen on 127.0.0.1:{taken_port} "
        f"({'webhooks and API' if busy == 'public' else 'metrics and credentials'}): "
        f"address already in use; another process is using it: stop it or choose another "
        f"{flag}"]
    assert not (data_dir / "queues.db").exists()  # no gateway was built
