"""`make run`: the demo shows a message going in and one going out, then exits with --exit."""

from __future__ import annotations

import json
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


def test_demo_json_is_one_object_with_what_was_stored_and_sent(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WACLOUD_")}
    env["WACLOUD_WORKER_NICE"] = "0"
    done = subprocess.run(
        [sys.executable, "-m", "wacloud.cli", "demo", "--data-dir", str(tmp_path / "demo"),
         "--port", str(free_port()), "--internal-port", str(free_port()), "--exit", "--json"],
        env=env, capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stdout + done.stderr
    [line] = done.stdout.splitlines()  # no narration around the JSON
    result = json.loads(line)
    assert result["ok"] is True and result["error"] is None
    assert result["tenant"] == "demo" and result["channel"] == "106540352242922"
    assert result["data_dir"] == str((tmp_path / "demo").resolve())
    inbound = result["inbound"]
    assert inbound["ok"] is True and inbound["webhook_status"] == 200
    by_id = {m["provider_message_id"]: m for m in inbound["messages"]}
    assert by_id["wamid.demo-text-1"]["text"] == "Olá! Meu pedido chegou?"
    assert by_id["wamid.demo-image-1"]["media"]["status"] == "stored"
    outbound = result["outbound"]
    assert outbound["ok"] is True and outbound["id"] == 1 and outbound["submit_status"] == 201
    assert (outbound["status"], outbound["status_code"]) == ("read", 6)
    assert outbound["provider_message_id"].startswith("wamid.")
    assert outbound["provider_request"]["body"]["context"] == {
        "message_id": "wamid.demo-text-1"}
    for step in ("stored_s",):
        assert isinstance(inbound[step], float) and inbound[step] >= 0
    for step in ("accepted_s", "delivered_s", "read_s"):
        assert isinstance(outbound[step], float) and outbound[step] >= 0
    assert result["api_key"].startswith("wak_")
    assert re.search(r"demo-[0-9a-f]{32}", done.stdout + done.stderr) is None  # channel token
