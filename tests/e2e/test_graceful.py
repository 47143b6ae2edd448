"""Graceful stop and backpressure of a real `wacloud serve` with a slow fake provider.

SIGTERM to `serve` (or to one of its stage workers) under a steady stream of signed webhooks
and outbox rows: the process exits 0 within its grace, leaves no queue message in flight and no
outbox row reserved, and after a restart every acknowledged webhook is stored once and every row
sent once. Visibility timeouts and reservation leases are long here, so anything left hidden
or reserved would still be so when the test looks. Backpressure: with the storing worker
stopped (SIGSTOP) ingest answers 503 with Retry-After past its queue limit, and everything it
acknowledged is stored once the worker runs again.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Harness, make_harness, wait_for
from wacloud.domain.model import Channel, OutboundStatus
from wacloud.testing.fake_provider import FakeProviderServer
from wacloud.testing.webhooks import dumps, meta_envelope, meta_text, sign

GRACE_S = 6
PROVIDER_DELAY_S = 1.0
STEADY_ENV = {
    "WACLOUD_SHUTDOWN_GRACE_S": str(GRACE_S),
    # Long enough that a message left in flight, or a row left reserved, would still be so
    # when the test looks (and would not be redelivered within the test's deadlines).
    "WACLOUD_QUEUE_VISIBILITY_TIMEOUT_S": "300",
    "WACLOUD_RESERVATION_LEASE_S": "300",
    "WACLOUD_SEND_TIMEOUT_S": "20",
}

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds workers in /proc")


@pytest.fixture
def harness(tmp_path: Path, fake_server: FakeProviderServer) -> Iterator[Harness]:
    yield from make_harness(tmp_path, fake_server, STEADY_ENV)


@dataclass
class Load:
    """Signed webhooks and outbox rows, one after another, until stopped."""

    harness: Harness
    tenant: str
    channel: Channel
    acked: list[str] = field(default_factory=list)  # wamids answered 200
    rows: list[int] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        self.threads = [threading.Thread(target=self._webhooks, daemon=True),
                        threading.Thread(target=self._outbox, daemon=True)]
        for thread in self.threads:
            thread.start()

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)

    def _webhooks(self) -> None:
        with httpx.Client(base_url=self.harness.gateway.base_url, timeout=10) as client:
            while not self.stop.is_set():
                wamid = f"wamid.{uuid.uuid4().hex}"
                message, contact = meta_text("5511987650000", "oi", wamid)
                body = dumps(meta_envelope(self.channel.key, self.channel.waba_id or "",
                                           "5511940001234", [message], None, [contact]))
                headers = {"Content-Type": "application/json",
                           "X-Hub-Signature-256": sign(body, self.channel.app_secret or "")}
                try:
                    answer = client.post("/webhooks/meta", content=body, headers=headers)
                except httpx.HTTPError:  # stopping or restarting: not acknowledged
                    time.sleep(0.05)  # pacing a retry loop, not synchronization
                    continue
                if answer.status_code == 200:
                    self.acked.append(wamid)
                time.sleep(0.01)  # a steady stream, not a flood

    def _outbox(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            self.rows.append(self.harness.insert_outbox(
                self.tenant, self.channel.key, f"55119876{n % 50:05d}", "text",
                {"body": f"row {self.tenant} {n}"}))
            time.sleep(0.05)


def start_load(harness: Harness) -> Load:
    tenant = harness.tenant()
    channel = harness.meta_channel(tenant)
    # A slow provider: every send in flight at the stop still has a second to go.
    harness.fake.script(channel.phone_number_id, times=100_000, status=200,
                        delay=PROVIDER_DELAY_S)
    load = Load(harness, tenant, channel)
    load.start()
    # Steady state: webhooks stored and rows sent while the load goes on.
    harness.wait_rows(tenant, 5, timeout=30)
    harness.wait_outbox(tenant, lambda rows: sum(
        r["status"] == OutboundStatus.ACCEPTED.value for r in rows.values()) >= 3, timeout=30)
    return load


def in_flight(data_dir: Path, queues: tuple[str, ...] | None = None) -> dict[str, int]:
    """Messages hidden by a receive right now, per queue, read from the queue file."""
    with sqlite3.connect(data_dir / "queues.db") as conn:
        rows = conn.execute("SELECT queue, COUNT(*) FROM messages WHERE receipt IS NOT NULL"
                            " AND visible_at > ? GROUP BY queue", (time.time(),)).fetchall()
    return {q: n for q, n in rows if queues is None or q in queues}


def reserved(harness: Harness, tenant: str) -> list[int]:
    return [i for i, r in harness.outbox(tenant).items()
            if r["status"] == OutboundStatus.RESERVED.value]


def check_everything_once(harness: Harness, load: Load) -> None:
    """Every acknowledged webhook stored once; every row accepted and sent once."""
    acked = set(load.acked)

    def stored() -> Counter[str]:
        return Counter(r["provider_message_id"] for r in harness.rows(load.tenant, "in"))

    wait_for(lambda: acked <= set(stored()), timeout=60,
             message=f"{len(acked)} acknowledged webhooks stored")
    assert max(stored().values()) == 1, "a webhook was stored twice"
    rows = harness.wait_outbox(load.tenant, lambda rows: all(
        r["status"] == OutboundStatus.ACCEPTED.value for r in rows.values()), timeout=90,
        message="every row accepted")
    texts = Counter(m.body["text"]["body"] for m in harness.fake.sent_snapshot()
                    if m.sender == load.channel.phone_number_id)
    expected = {f"row {load.tenant} {n}" for n in range(1, len(rows) + 1)}
    assert set(texts) == expected
    assert [t for t, n in texts.items() if n != 1] == [], "a row was sent more than once"


def worker_pid(harness: Harness) -> int:
    def live() -> int | None:
        workers = harness.client.get("/readyz").json()["workers"]
        return next((int(w["pid"]) for w in workers if w["alive"] and w["pid"]), None)
    pid: int = wait_for(live, 30, message="a live stage worker")
    return pid


def test_sigterm_of_serve_drains_and_exits_0_leaving_nothing_in_flight(
        harness: Harness) -> None:
    load = start_load(harness)
    process = harness.gateway.process
    assert process is not None
    try:
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(GRACE_S + 15)
        took = time.monotonic() - started
    finally:
        load.finish()
    assert code == 0, harness.gateway.log_tail()
    assert took < GRACE_S + 10, f"serve took {took:.1f} s to stop"
    # Right after the stop: nothing hidden until a visibility timeout, nothing reserved.
    assert in_flight(harness.gateway.data_dir) == {}
    assert reserved(harness, load.tenant) == []
    assert "Traceback" not in harness.gateway.log_tail(200)

    harness.gateway.start()
    check_everything_once(harness, load)


def test_sigterm_of_a_worker_drains_it_and_serve_restarts_it(harness: Harness) -> None:
    load = start_load(harness)
    try:
        pid = worker_pid(harness)
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not Path(f"/proc/{pid}").exists()
                 or "zombie" in Path(f"/proc/{pid}/status").read_text().lower(),
                 GRACE_S + 15, interval=0.02, message="the worker to exit")
        # Its queues: nothing left hidden (serve restarts it only after a second or more).
        assert in_flight(harness.gateway.data_dir,
                         ("inbound.raw", "inbound.events", "outbound.results")) == {}
        wait_for(lambda: "exited with code 0" in harness.gateway.log_tail(200), 10,
                 message="serve to see the worker exit 0")
        wait_for(lambda: worker_pid(harness) != pid, 30, message="a new worker")
        time.sleep(1)  # more load on the new worker (pacing, not synchronization)
    finally:
        load.finish()
    check_everything_once(harness, load)
    assert reserved(harness, load.tenant) == []


@pytest.fixture
def limited(tmp_path: Path, fake_server: FakeProviderServer) -> Iterator[Harness]:
    yield from make_harness(tmp_path, fake_server, {"WACLOUD_INBOUND_QUEUE_LIMIT": "20"})


def test_ingest_answers_503_with_retry_after_past_the_queue_limit(limited: Harness) -> None:
    harness = limited
    tenant = harness.tenant()
    channel = harness.meta_channel(tenant)
    pid = worker_pid(harness)
    acked: list[str] = []

    def post() -> httpx.Response:
        wamid = f"wamid.{uuid.uuid4().hex}"
        message, contact = meta_text("5511987650000", "oi", wamid)
        answer = harness.post_meta(meta_envelope(
            channel.key, channel.waba_id or "", "5511940001234", [message], None, [contact]),
            channel.app_secret)
        if answer.status_code == 200:
            acked.append(wamid)
        return answer

    assert post().status_code == 200
    harness.wait_rows(tenant, 1)  # the storing worker is idle again: holds no lock
    os.kill(pid, signal.SIGSTOP)
    try:
        refused = None
        for _ in range(500):
            answer = post()
            if answer.status_code == 503:
                refused = answer
                break
            assert answer.status_code == 200
        assert refused is not None, "never refused"
        assert int(refused.headers["retry-after"]) > 0
        assert "retry later" in refused.json()["error"]
        assert len(acked) >= 20
        ready = harness.client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "backpressure"
        assert ready.json()["lag_s"]["inbound.raw"] > 0
        assert ready.json()["oldest_age_s"]["inbound.raw"] > 0
        assert ready.json()["ingest"]["accepting"] is False
        assert harness.metric("wacloud_ingest_backpressure") == 1
        assert harness.metric("wacloud_queue_lag_seconds", queue="inbound.raw") > 0
        assert harness.metric("wacloud_webhooks_total", result="503") >= 1
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: set(acked) <= {r["provider_message_id"]
                                    for r in harness.rows(tenant, "in")}, 30,
             message="every acknowledged webhook stored")
    assert len(harness.rows(tenant, "in")) == len(acked)
    wait_for(lambda: post().status_code == 200, 10, message="webhooks accepted again")
    assert harness.client.get("/readyz").status_code == 200


def test_sigint_stops_like_sigterm_and_a_second_signal_exits_at_once(harness: Harness) -> None:
    process = harness.gateway.process
    assert process is not None
    process.send_signal(signal.SIGINT)
    assert process.wait(GRACE_S + 15) == 0

    harness.gateway.start()
    tenant = harness.tenant()
    channel = harness.meta_channel(tenant)
    harness.fake.script(channel.phone_number_id, times=1, status=200, delay=60)
    row = harness.insert_outbox(tenant, channel.key, "5511987650000", "text", {"body": "x"})
    harness.wait_outbox(tenant, lambda rows: rows[row]["attempts"] >= 1,
                        message="the send in flight")
    process = harness.gateway.process
    assert process is not None
    process.send_signal(signal.SIGTERM)
    with pytest.raises(subprocess.TimeoutExpired):
        process.wait(1)  # draining: the send has GRACE_S to finish
    process.send_signal(signal.SIGTERM)
    assert process.wait(5) != 0
