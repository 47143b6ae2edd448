"""`serve` with two stage workers: both run, messages flow both ways, and a worker that dies
is restarted by `serve` while nothing is lost."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    Harness,
    make_harness,
    stage_count,
    two_free_ports,
    wait_for,
    worker_pids,
)
from wacloud.testing.fake_provider import FakeProviderServer
from wacloud.testing.webhooks import meta_envelope, meta_text

METRICS_PORT = two_free_ports()


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory,
            fake_server: FakeProviderServer) -> Iterator[Harness]:
    yield from make_harness(tmp_path_factory.mktemp("two-workers"), fake_server, {
        "WACLOUD_STAGE_WORKERS": "2", "WACLOUD_SERVER_STAGES": "",
        "WACLOUD_WORKER_METRICS_PORT": str(METRICS_PORT)})


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process table from /proc")
def test_two_workers_share_the_stages_and_a_dead_one_is_restarted(harness: Harness) -> None:
    running = wait_for(lambda: worker_pids(harness) if len(worker_pids(harness)) == 2 else None,
                       message="two stage workers")
    assert set(running) == {"inbound,save", "media,send"}
    # /readyz reports them (pid, alive, restarts) beside the queue depth.
    reported = {w["stages"]: w for w in harness.client.get("/readyz").json()["workers"]}
    assert {k: (w["pid"], w["alive"], w["restarts"]) for k, w in reported.items()} == {
        k: (pid, True, 0) for k, pid in running.items()}

    tenant = harness.tenant()
    channel = harness.meta_channel(tenant)

    def post(body: str) -> str:
        wamid = f"wamid.{uuid.uuid4().hex}"
        message, contact = meta_text("5511987650000", body, wamid)
        payload = meta_envelope(channel.key, channel.waba_id or "", "5511940001234",
                                [message], None, [contact])
        assert harness.post_meta(payload, channel.app_secret).status_code == 200
        return wamid

    first_in = post("antes")
    first_out = harness.insert_outbox(tenant, channel.key, "5511987650000", "text",
                                      {"body": "resposta 1"})
    harness.wait_rows(tenant, 1, predicate=lambda rows: first_in in {
        r["provider_message_id"] for r in rows})
    harness.wait_outbox(tenant, lambda rows: rows[first_out]["status"] == 3)
    # Each worker reports its own stages' metrics on its port (counted just after the ack).
    wait_for(lambda: stage_count(METRICS_PORT, "inbound") >= 1
             and stage_count(METRICS_PORT + 1, "send") >= 1, message="stage metrics")
    assert stage_count(METRICS_PORT + 1, "inbound") == 0

    # A worker killed hard: serve starts another; what was queued meanwhile is not lost.
    os.kill(running["inbound,save"], signal.SIGKILL)
    second_in = post("durante")
    second_out = harness.insert_outbox(tenant, channel.key, "5511987650000", "text",
                                       {"body": "resposta 2"})
    restarted = wait_for(lambda: worker_pids(harness).get("inbound,save"), timeout=30,
                         message="a new storing worker")
    assert restarted != running["inbound,save"]
    harness.wait_rows(tenant, 2, predicate=lambda rows: second_in in {
        r["provider_message_id"] for r in rows}, timeout=30)
    harness.wait_outbox(tenant, lambda rows: rows[second_out]["status"] == 3, timeout=30)
    reported = {w["stages"]: w for w in harness.client.get("/readyz").json()["workers"]}
    assert (reported["inbound,save"]["pid"], reported["inbound,save"]["restarts"]) \
        == (restarted, 1)
    assert reported["media,send"]["restarts"] == 0
