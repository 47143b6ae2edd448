"""Which stages run where: the server's own stages, the workers' groups."""

from __future__ import annotations

from pathlib import Path

from wacloud.hosting.worker import server_stage_names, worker_groups
from wacloud.settings import Settings


def test_by_default_the_server_sends_and_copies_media_and_one_worker_stores() -> None:
    on_server = server_stage_names(Settings(data_dir=Path("x")))
    assert on_server == ("media", "send")
    # The storing worker also copies media, but only while no webhook waits (defer_to).
    assert worker_groups(1, on_server) == [("receive", "write", "save", "media")]


def test_without_server_stages_one_worker_runs_everything_and_two_split_them() -> None:
    assert worker_groups(1) == [("receive", "write", "save", "media", "send")]
    assert worker_groups(2) == [("receive", "write", "save"), ("media", "send")]
    assert worker_groups(0) == []


def test_a_worker_with_nothing_left_to_run_is_not_started() -> None:
    assert worker_groups(2, ("media", "send")) == [("receive", "write", "save", "media")]
    assert server_stage_names(Settings(data_dir=Path("x"), server_stages=" send , bogus")) == (
        "send",)
