"""`serve` splits the send stage by sending number between its HTTP process and its worker:
both send, each number's messages go out once and in order, and when the worker is killed its
numbers' messages are still sent (by the HTTP process until the worker is back), none twice."""

from __future__ import annotations

import os
import signal
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    Harness,
    free_port,
    make_harness,
    stage_count,
    wait_for,
    worker_pids,
)
from wacloud.adapters.queue.base import LaneShare
from wacloud.domain.model import Channel
from wacloud.testing.fake_provider import FakeProviderServer

METRICS_PORT = free_port()
WORKER_SHARE = LaneShare(1, 2)
RECIPIENTS = ("5511987650001", "5511987650002")


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory,
            fake_server: FakeProviderServer) -> Iterator[Harness]:
    yield from make_harness(tmp_path_factory.mktemp("send-split"), fake_server, {
        "WACLOUD_WORKER_METRICS_PORT": str(METRICS_PORT)})


def channels_of_both_shares(harness: Harness, tenant: str) -> list[Channel]:
    channels: list[Channel] = []
    while len({WORKER_SHARE.owns(f"{tenant}/{c.key}") for c in channels}) < 2 \
            or len(channels) < 4:
        channels.append(harness.meta_channel(tenant, mps=1000))
    return channels


def queue_round(harness: Harness, tenant: str, channels: list[Channel], tag: str) -> list[int]:
    return [harness.insert_outbox(tenant, channel.key, to, "text",
                                  {"body": f"{tag}/{channel.key}/{to}/{n}"})
            for n in range(3) for channel in channels for to in RECIPIENTS]


def check_sent_once_in_order(harness: Harness, tags: list[str]) -> None:
    sent = [m for m in harness.fake.sent_snapshot()
            if m.accepted and str(m.body.get("text", {}).get("body", "")).startswith(tuple(tags))]
    bodies = [str(m.body["text"]["body"]) for m in sent]
    assert len(bodies) == len(set(bodies)), "a message was sent twice"
    by_pair: dict[str, list[int]] = defaultdict(list)
    for body in bodies:
        pair, _, n = body.rpartition("/")
        by_pair[pair].append(int(n))
    assert all(ns == sorted(ns) for ns in by_pair.values()), by_pair


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process table from /proc")
def test_both_processes_send_each_for_its_own_numbers_and_a_killed_worker_loses_nothing(
        harness: Harness) -> None:
    [(stages, worker)] = wait_for(lambda: list(worker_pids(harness).items()) or None,
                                  message="the stage worker").copy()
    assert stages.split(",")[-1] == "send"
    tenant = harness.tenant()
    channels = channels_of_both_shares(harness, tenant)
    theirs = [c for c in channels if WORKER_SHARE.owns(f"{tenant}/{c.key}")]

    rows = queue_round(harness, tenant, channels, "first")
    harness.wait_outbox(tenant, lambda got: all(got[r]["status"] == 3 for r in rows),
                        timeout=30, message="the first round accepted")
    # The worker sent exactly its numbers' messages (counted just after each ack); the HTTP
    # process the others.
    expected = 3 * len(RECIPIENTS) * len(theirs)
    wait_for(lambda: stage_count(METRICS_PORT, "send") == expected,
             message=f"the worker's {expected} sends")
    check_sent_once_in_order(harness, ["first/"])

    os.kill(worker, signal.SIGKILL)
    rows = queue_round(harness, tenant, channels, "second")
    harness.wait_outbox(tenant, lambda got: all(got[r]["status"] == 3 for r in rows),
                        timeout=60, message="the second round accepted after the kill")
    check_sent_once_in_order(harness, ["first/", "second/"])
    restarted = wait_for(lambda: worker_pids(harness).get(stages), timeout=30,
                         message="a new worker")
    assert restarted != worker
