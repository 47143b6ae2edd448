"""`make run`: the demo shows a message going in and one going out, then exits with --exit."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.e2e.conftest import free_port


def test_demo_shows_a_message_in_and_one_out(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WACLOUD_")}
    env["WACLOUD_WORKER_NICE"] = "0"  # the busy test machine must not starve the worker
    done = subprocess.run(
        [sys.executable, "-m", "wacloud.cli", "demo", "--data-dir", str(tmp_path / "demo"),
         "--port", str(free_port()), "--internal-port", str(free_port()), "--exit"],
        env=env, capture_output=True, text=True, timeout=120)
    out = done.stdout

    assert done.returncode == 0, out + done.stderr
    # In: the signed webhook, both rows stored, the image copied.
    assert "POST /webhooks/meta (signed, 1 text + 1 image) -> HTTP 200" in out
    assert '"text": "Olá! Meu pedido chegou?"' in out
    assert '"status": "stored"' in out
    # Out: submitted through the tenant API, accepted by the fake provider, then receipts.
    assert "-> HTTP 201, id 1, pending" in out
    assert "GET /v1/messages/1 -> accepted (3), provider_message_id wamid." in out
    assert "POST /v23.0/106540352242922/messages  Authorization: Bearer ***" in out
    assert '"context": {"message_id": "wamid.demo-text-1"}' in out
    assert "(signed receipt: delivered) -> HTTP 200" in out
    assert "GET /v1/messages/1 -> delivered (5)" in out
    assert "GET /v1/messages/1 -> read (6)" in out
    assert f"data dir: {(tmp_path / 'demo').resolve()}" in out
    # The API key is shown once, for the instructions; the channel's secrets never are.
    assert "wak_" in out
    assert re.search(r"demo-[0-9a-f]{32}", out + done.stderr) is None  # the channel token
