"""`wacloud status` and `wacloud doctor` against real data dirs (SQLite registry, tenant DBs and
queue file), a tenant database that is down (a closed port on 127.0.0.1) and a small real HTTP
server standing in for the provider, a running gateway's /readyz and its public URL."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner, Result

from wacloud.adapters.db.tenant.tables import messages, outbound_messages
from wacloud.adapters.db.types import utcnow
from wacloud.adapters.queue.sqlite.broker import SqliteBroker
from wacloud.bootstrap import open_registry, queue_specs
from wacloud.cli import app
from wacloud.domain.model import OutboundStatus, Provider
from wacloud.settings import load_settings
from wacloud.stages import envelopes

PN = "106540352242922"
GOOD, BAD = "good-token-secret", "bad-token-secret"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Handler(BaseHTTPRequestHandler):
    """Graph's number read, Whapi's /health, a gateway's verify handshake and /readyz."""

    readyz: dict[str, Any] = {}
    seen: list[str] = []

    def do_GET(self) -> None:
        good = self.headers.get("Authorization") == f"Bearer {GOOD}"
        self.seen.append(self.path)
        if self.path.startswith(f"/v23.0/{PN}?fields=id") or self.path == "/health":
            status, body = (200, {"id": PN}) if good else (
                401, {"error": {"code": 190, "message": "Invalid OAuth access token"}})
        elif self.path.startswith("/webhooks/meta?"):
            status, body = 403, {}
        elif self.path == "/readyz":
            status, body = 200, self.readyz
        else:
            status, body = 404, {}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def invoke(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, [*args, "--data-dir", str(data_dir)],
                              env={"WACLOUD_INTERNAL_PORT": str(closed_port()), **(env or {})})


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    return result


async def dead_letter(data_dir: Path, queue: str) -> None:
    settings = load_settings(data_dir)
    broker = SqliteBroker(settings.queue_path)
    try:
        q = broker.queue(queue_specs(settings)[queue])
        await q.send(b"{}")
        [msg] = await q.receive(1)
        await q.dead_letter(msg.receipt, "boom")
    finally:
        await broker.close()


def add_world(data_dir: Path, api: str) -> None:
    """acme (SQLite) with a Meta and a Whapi channel; `down`, whose database is down."""
    ok(invoke(data_dir, "tenant", "add", "acme"))
    registry = open_registry(load_settings(data_dir))
    try:
        registry.add_channel(tenant="acme", provider=Provider.META, key=PN, phone_number_id=PN,
                             waba_id="102290129340398", token=GOOD, api_base_url=api)
        registry.add_channel(tenant="acme", provider=Provider.WHAPI, key="MANTIS-1", token=BAD,
                             webhook_secret="hook", api_base_url=api)
        # Registered by an older version, or the database went down since.
        registry.add_tenant("down", f"postgresql+psycopg://u:pw-secret@127.0.0.1:"
                                    f"{closed_port()}/down")
    finally:
        registry.engine.dispose()


def test_status_shows_channels_queues_outbox_parked_and_problems(tmp_path: Path,
                                                                 server: str) -> None:
    add_world(tmp_path, server)
    ok(invoke(tmp_path, "channel", "pause", "2", "--reason", "token refused (190)"))
    for text in ("oi", "tchau"):
        ok(invoke(tmp_path, "send", "--tenant", "acme", "--channel", PN, "--to",
                  "5511987654321", "--text", text))
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'tenants' / 'acme.db'}")
    with engine.begin() as conn:  # the second one went out a moment ago
        conn.execute(outbound_messages.update().where(outbound_messages.c.id == 2).values(
            status=3, accepted_at=utcnow()))
    engine.dispose()
    asyncio.run(dead_letter(tmp_path, envelopes.OUTBOUND_RESULTS))
    registry = open_registry(load_settings(tmp_path))
    registry.park(stage="receive", reason="unknown channel", payload="{}")
    registry.engine.dispose()

    report = json.loads(ok(invoke(tmp_path, "status", "--json")).stdout)

    assert [(c["id"], c["tenant"], c["provider"], c["key"], c["paused"]) for c in
            report["channels"]] == [(1, "acme", "meta", PN, False),
                                    (2, "acme", "whapi", "MANTIS-1", True)]
    outbox = {o["tenant"]: o for o in report["outbox"]}
    assert outbox["acme"]["pending"] == 1 and outbox["acme"]["queued"] == 0
    assert (outbox["acme"]["sent_last_hour"], outbox["acme"]["received_last_hour"],
            outbox["acme"]["failed_last_hour"]) == (1, 0, 0)
    assert 0 <= outbox["acme"]["oldest_pending_age_s"] < 600
    assert outbox["down"]["reachable"] is False
    queues = {q["name"]: q for q in report["queues"]}
    assert queues[envelopes.OUTBOUND_RESULTS]["dead_letters"] == 1
    assert set(queues[envelopes.INBOUND_RAW]) == {"name", "depth", "in_flight", "delayed",
                                                  "dead_letters"}
    assert report["parked"] == 1 and report["serve"] is None
    kinds = sorted(p["kind"] for p in report["problems"])
    assert kinds == ["channel_paused", "dead_letters", "tenant_db_unreachable"]
    down = next(p for p in report["problems"] if p["kind"] == "tenant_db_unreachable")
    assert "u:***@127.0.0.1" in down["message"] and "refused" in down["message"].lower()

    text = ok(invoke(tmp_path, "status")).stdout
    assert "pw-secret" not in text and GOOD not in text and BAD not in text
    assert "PAUSED: token refused (190)" in text and "problems (3):" in text
    assert "fix: fix the cause, then `wacloud channel resume 2`" in text


def test_status_shows_each_channels_rates_errors_and_pause(tmp_path: Path,
                                                          server: str) -> None:
    add_world(tmp_path, server)
    ok(invoke(tmp_path, "channel", "pause", "2", "--reason", "token refused (190)"))
    registry = open_registry(load_settings(tmp_path))
    registry.add_channel(tenant="down", provider=Provider.WHAPI, key="DOWN-1", token=GOOD,
                         webhook_secret="hook", api_base_url=server)
    registry.engine.dispose()
    now = utcnow()

    def inbound(minutes_ago: float, channel: str, n: int) -> dict[str, object]:
        at = now - timedelta(minutes=minutes_ago)
        return {"provider": "meta", "channel": channel, "direction": "in", "type": "text",
                "provider_message_id": f"wamid.{channel}.{n}", "status": "received",
                "received_at": at, "updated_at": at}

    def outbound(minutes_ago: float, channel: str, status: OutboundStatus,
                 code: str | None = None) -> dict[str, object]:
        at = now - timedelta(minutes=minutes_ago)
        accepted = status.value >= OutboundStatus.ACCEPTED.value
        return {"channel": channel, "recipient": "5511987654321", "type": "text",
                "content": {"body": "oi"}, "status": status.value, "created_at": at,
                "updated_at": at, "accepted_at": at if accepted else None, "error_code": code}

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'tenants' / 'acme.db'}")
    with engine.begin() as conn:
        # Meta: 12 in over the hour (6 of them in the last 5 minutes), 3 out (1 recently),
        # 2 failed (131026 twice); Whapi: 1 in recently, 1 refused by the rate limit; an
        # inbound message older than the hour counts nowhere.
        conn.execute(messages.insert(), [
            *(inbound(1 + n * 0.5, PN, n) for n in range(6)),
            *(inbound(20 + n, PN, 10 + n) for n in range(6)),
            inbound(0.5, "MANTIS-1", 100), inbound(90, PN, 200)])
        conn.execute(outbound_messages.insert(), [
            outbound(2, PN, OutboundStatus.DELIVERED), outbound(30, PN, OutboundStatus.READ),
            outbound(40, PN, OutboundStatus.ACCEPTED),
            outbound(3, PN, OutboundStatus.FAILED, "131026"),
            outbound(50, PN, OutboundStatus.FAILED, "131026"),
            outbound(4, "MANTIS-1", OutboundStatus.QUEUED, "130429")])
    engine.dispose()

    report = json.loads(ok(invoke(tmp_path, "status", "--json")).stdout)

    meta, whapi, down = report["channels"]
    assert down["key"] == "DOWN-1" and down["reachable"] is False
    assert down["in_per_min_last_hour"] is None and down["errors_by_code"] is None
    assert (meta["in_last_hour"], meta["in_last_5m"], meta["out_last_hour"],
            meta["out_last_5m"]) == (12, 6, 3, 1)
    assert (meta["in_per_min_last_hour"], meta["in_per_min_last_5m"],
            meta["out_per_min_last_hour"], meta["out_per_min_last_5m"]) == (0.2, 1.2, 0.05, 0.2)
    assert meta["failed_last_hour"] == 2 and meta["errors_by_code"] == {"131026": 2}
    assert meta["paused"] is False and meta["reachable"] is True
    assert (whapi["in_last_5m"], whapi["out_last_hour"], whapi["errors_by_code"],
            whapi["rate_limit_hits"]) == (1, 0, {"130429": 1}, 1)
    assert whapi["paused"] is True and whapi["pause_reason"] == "token refused (190)"
    acme = next(o for o in report["outbox"] if o["tenant"] == "acme")
    assert (acme["received_last_hour"], acme["sent_last_hour"], acme["failed_last_hour"]) == (
        13, 3, 2)

    text = ok(invoke(tmp_path, "status")).stdout
    [meta_line] = [line for line in text.splitlines() if line.split()[:2] == ["1", "acme"]]
    assert "0.2 / 1.2" in meta_line and "0.05 / 0.2" in meta_line
    assert "131026 x2" in meta_line and "active" in meta_line
    [whapi_line] = [line for line in text.splitlines() if line.split()[:2] == ["2", "acme"]]
    assert "PAUSED: token refused (190)" in whapi_line and "130429 x1" in whapi_line
    [down_line] = [line for line in text.splitlines() if line.split()[:2] == ["3", "down"]]
    assert "database unreachable" in down_line


def test_status_reports_stage_workers_of_a_running_serve(tmp_path: Path, server: str) -> None:
    ok(invoke(tmp_path, "tenant", "add", "acme"))
    Handler.readyz = {"status": "ready", "inbound_raw": 0, "dead_letters": {},
                      "workers": [{"stages": "receive,write,save", "alive": False,
                                   "restarts": 4, "pid": None}]}
    port = server.rsplit(":", 1)[1]
    report = json.loads(ok(invoke(tmp_path, "status", "--json",
                                  env={"WACLOUD_INTERNAL_PORT": port})).stdout)
    assert report["serve"]["status"] == "ready"
    [problem] = report["problems"]
    assert problem["kind"] == "stage_worker_down" and "restarted 4" in problem["message"]


def test_doctor_finds_each_problem_with_its_fix_and_passes_once_fixed(tmp_path: Path,
                                                                      server: str) -> None:
    add_world(tmp_path, server)
    (tmp_path / "encryption.key").chmod(0o644)
    dev = {"WACLOUD_DEV_ALLOW_LOCAL_URLS": "1"}

    result = invoke(tmp_path, "doctor", "--public-url", server, "--json", env=dev)

    assert result.exit_code == 1, result.output
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    failed = {name for name, c in checks.items() if not c["ok"]}
    assert failed == {"key file mode", "tenant down database",
                      "token of channel 2 (whapi MANTIS-1, tenant acme)"}
    assert checks["key file mode"]["fix"] == f"chmod 600 {tmp_path / 'encryption.key'}"
    assert checks["token of channel 1 (meta 106540352242922, tenant acme)"]["ok"]
    assert "set-token 2" in checks["token of channel 2 (whapi MANTIS-1, tenant acme)"]["fix"]
    assert checks[f"webhook URL {server}/webhooks/meta"]["ok"]
    assert checks["stored secrets"]["ok"] and checks["registry database"]["ok"]
    assert checks["tenant acme database"]["ok"] and checks["queue"]["ok"]
    assert "pw-secret" not in result.output and GOOD not in result.output
    assert BAD not in result.output

    text = invoke(tmp_path, "doctor", env=dev).stdout
    assert "FAIL  key file mode" in text and "fix: chmod 600" in text
    assert "3 problem(s) found" in text

    (tmp_path / "encryption.key").chmod(0o600)
    ok(invoke(tmp_path, "channel", "set-token", "2", "--token", GOOD))
    registry = open_registry(load_settings(tmp_path))
    with registry.engine.begin() as conn:  # the down tenant is gone
        conn.exec_driver_sql("DELETE FROM tenants WHERE slug = 'down'")
    registry.engine.dispose()
    fixed = invoke(tmp_path, "doctor", "--no-tokens")
    assert fixed.exit_code == 0, fixed.output
    assert "no problems found" in fixed.stdout
    assert ok(invoke(tmp_path, "doctor", env=dev)).exit_code == 0


def test_doctor_on_a_missing_data_dir_says_to_run_init(tmp_path: Path) -> None:
    result = invoke(tmp_path / "absent", "doctor")
    assert result.exit_code == 1
    assert "FAIL  data dir" in result.stdout and "run `wacloud init`" in result.stdout
