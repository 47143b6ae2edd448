"""Outbound under failure: SIGKILL while sending, and two gateways sharing one data dir."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import GatewayProcess, Harness, free_port, make_harness, wait_for
from wacloud.testing.fake_provider import FakeProviderServer


@pytest.fixture
def own_harness(tmp_path: Path, fake_server: FakeProviderServer) -> Iterator[Harness]:
    # A row whose send was at the provider at the kill is sent again after its send lease
    # (3 x the send timeout + 2 s + this margin; 30 s by default): keep the wait short.
    yield from make_harness(tmp_path, fake_server, {"WACLOUD_SEND_LEASE_MARGIN_S": "2"})


def test_sigkill_while_sending_every_row_ends_final_and_only_in_flight_repeat(
        own_harness: Harness) -> None:
    harness = own_harness
    tenant = harness.tenant()
    channel = harness.meta_channel(tenant, mps=1000)
    harness.fake.script(channel.key, times=10_000, status=200, delay=0.02)
    total = 400
    for n in range(total):
        harness.insert_outbox(tenant, channel.key, f"5521{n % 40:09d}", "text",
                              {"body": f"row-{n}"})

    def accepted_bodies() -> list[str]:
        return [s.body["text"]["body"] for s in harness.fake.sent
                if s.sender == channel.key and s.accepted]

    wait_for(lambda: len(accepted_bodies()) >= 120, 30, message="sending under way")
    harness.gateway.kill()
    killed_at = time.time()
    at_kill = harness.outbox(tenant)
    assert sum(1 for r in at_kill.values() if r["status"] == 3) < total, "killed too late"

    harness.gateway.start()
    rows = harness.wait_outbox(tenant, lambda rows: all(r["status"] == 3 for r in rows.values()),
                               timeout=60, message="every row accepted after restart")
    assert len(rows) == total
    counts = Counter(accepted_bodies())
    assert set(counts) == {f"row-{n}" for n in range(total)}
    repeated = {body for body, count in counts.items() if count > 1}
    first_send = {}
    for sent in harness.fake.sent:
        if sent.sender == channel.key and sent.accepted:
            first_send.setdefault(sent.body["text"]["body"], sent.time)
    saved_at_kill = {r["content"]["body"] for r in at_kill.values() if r["status"] == 3}
    # A repeat is only a message in flight at the kill: sent before it, result not yet saved.
    for body in repeated:
        assert first_send[body] <= killed_at and body not in saved_at_kill
    assert all(count <= 2 for count in counts.values())
    print(f"in flight at the kill and sent again after restart: {len(repeated)}")


def test_two_gateways_on_one_data_dir_never_send_a_row_twice_and_keep_order(
        harness: Harness) -> None:
    second = GatewayProcess(harness.gateway.data_dir, free_port(), harness.gateway.env)
    second.start()
    try:
        tenant = harness.tenant()
        channel = harness.meta_channel(tenant, mps=1000)
        recipients = [f"5531{n:09d}" for n in range(10)]
        for n in range(30):
            for to in recipients:
                harness.insert_outbox(tenant, channel.key, to, "text", {"body": f"{to}/{n}"})
        harness.wait_outbox(tenant, lambda rows: all(r["status"] == 3 for r in rows.values()),
                            timeout=60)
        by_recipient: dict[str, list[str]] = defaultdict(list)
        for sent in harness.fake.sent:
            if sent.sender == channel.key and sent.accepted:
                by_recipient[sent.recipient or ""].append(sent.body["text"]["body"])
        for to in recipients:
            assert by_recipient[to] == [f"{to}/{n}" for n in range(30)]
    finally:
        second.stop()
