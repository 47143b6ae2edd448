"""`serve` with two stage workers: both run, messages flow both ways, and a worker that dies
is restarted by `serve` while nothing is lost."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Harness, make_harness, wait_for
from wacloud.testing.fake_provider import FakeProviderServer
from wacloud.testing.webhooks import meta_envelope, meta_text


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory,
            fake_server: FakeProviderServer) -> Iterator[Harness]:
    yield from make_harness(tmp_path_factory.mktemp("two-workers"), fake_server,
                            {"WACLOUD_STAGE_WORKERS": "2"})


def workers(harness: Harness) -> dict[str, int]:
    """`--stages` argument -> pid of each live worker child of `serve`."""
    assert harness.gateway.process is not None
    parent = harness.gateway.process.pid
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat[1]) == parent and b"worker" in argv and b"--stages" in argv:
            found[argv[argv.index(b"--stages") + 1].decode()] = int(entry.name)
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process table from /proc")
def test_two_workers_share_the_stages_and_a_dead_one_is_restarted(harness: Harness) -> None:
    running = wait_for(lambda: workers(harness) if len(workers(harness)) == 2 else None,
                       message="two stage workers")
    assert set(running) == {"receive,write,save", "media,send"}

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

    # A worker killed hard: serve starts another; what was queued meanwhile is not lost.
    os.kill(running["receive,write,save"], signal.SIGKILL)
    second_in = post("durante")
    second_out = harness.insert_outbox(tenant, channel.key, "5511987650000", "text",
                                       {"body": "resposta 2"})
    restarted = wait_for(lambda: workers(harness).get("receive,write,save"), timeout=30,
                         message="a new storing worker")
    assert restarted != running["receive,write,save"]
    harness.wait_rows(tenant, 2, predicate=lambda rows: second_in in {
        r["provider_message_id"] for r in rows}, timeout=30)
    harness.wait_outbox(tenant, lambda rows: rows[second_out]["status"] == 3, timeout=30)
