"""Which stages run where: the server's own stages, the workers' groups."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from wacloud.adapters.queue.base import LaneShare
from wacloud.bootstrap import build_gateway, init_data_dir
from wacloud.hosting.worker import (
    WORKER_SEND_SHARE,
    WorkerSupervisor,
    known_stage,
    server_stage_names,
    split_send_stage,
    stage_names,
    worker_groups,
)
from wacloud.settings import Settings
from wacloud.testing.memory_queue import MemoryQueueBroker


def test_by_default_the_server_sends_and_copies_media_and_one_worker_stores() -> None:
    on_server = server_stage_names(Settings(data_dir=Path("x")))
    assert on_server == ("media", "send")
    # The storing worker also copies media, but only while no webhook waits (defer_to).
    assert worker_groups(1, on_server) == [("inbound", "save", "media")]


def test_without_server_stages_one_worker_runs_everything_and_two_split_them() -> None:
    assert worker_groups(1) == [("inbound", "save", "media", "send")]
    assert worker_groups(2) == [("inbound", "save"), ("media", "send")]
    assert worker_groups(0) == []


def test_a_worker_with_nothing_left_to_run_is_not_started() -> None:
    assert worker_groups(2, ("media", "send")) == [("inbound", "save", "media")]
    assert server_stage_names(Settings(data_dir=Path("x"), server_stages=" send , bogus")) == (
        "send",)


def test_the_inbound_stage_answers_to_the_names_of_the_steps_it_fuses() -> None:
    """`receive` and `write` (the names before the stage was named after what it runs) still
    select it, in `WACLOUD_SERVER_STAGES` and `wacloud worker --stages`."""
    assert stage_names(["write", "save", "receive"]) == ("inbound", "save")
    assert server_stage_names(Settings(data_dir=Path("x"), server_stages="receive,media")) == (
        "inbound", "media")
    assert not known_stage("bogus") and known_stage("write") and known_stage("inbound")


async def test_with_the_embedded_queue_the_first_worker_sends_for_half_the_numbers(
        tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    init_data_dir(settings)
    gateway = build_gateway(settings)
    try:
        on_server = server_stage_names(settings)
        groups = worker_groups(1, on_server)
        assert split_send_stage(gateway, groups, on_server)
        assert groups == [("inbound", "save", "media", "send")]
        assert WorkerSupervisor(settings, groups[0], send_share=WORKER_SEND_SHARE).argv()[-2:] \
            == ["--send-share", "1/2"]
        # Off, or without a server that sends, or without workers: nothing is split.
        for off, server, workers in ((True, on_server, 1), (False, ("media",), 1),
                                     (False, on_server, 0)):
            gateway.settings.send_split = not off
            groups = worker_groups(workers, server)
            assert not split_send_stage(gateway, groups, server)
            assert groups == worker_groups(workers, server)
    finally:
        await gateway.close()


async def test_a_queue_that_cannot_share_lanes_keeps_the_send_stage_in_one_process(
        tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    gateway = build_gateway(settings, queue_broker=MemoryQueueBroker())
    try:
        on_server = server_stage_names(settings)
        groups = worker_groups(1, on_server)
        assert not split_send_stage(gateway, groups, on_server)
        assert groups == [("inbound", "save", "media")]
    finally:
        await gateway.close()


class ShortLivedWorker(WorkerSupervisor):
    """A worker process that exits at once, as one killed would."""

    def argv(self) -> list[str]:
        return [sys.executable, "-c", "pass"]


async def test_the_server_takes_the_sends_of_a_dead_worker_and_gives_them_back_at_its_restart(
        tmp_path: Path) -> None:
    told: list[bool] = []
    worker = ShortLivedWorker(Settings(data_dir=tmp_path), ("send",),
                              send_share=LaneShare(1, 2), on_alive=told.append)
    stop = asyncio.Event()
    worker.start()
    supervising = asyncio.create_task(worker.supervise(stop))
    deadline = time.monotonic() + 20
    while told.count(True) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    stop.set()
    await supervising
    worker.stop()
    # started, found dead (the server sends for every number), restarted (its share again)
    assert told[:3] == [True, False, True]
