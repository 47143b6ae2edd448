"""Which stages run where: the server's own stages, the workers' groups."""

from __future__ import annotations

from pathlib import Path

from wacloud.hosting.worker import known_stage, server_stage_names, stage_names, worker_groups
from wacloud.settings import Settings


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
