"""Where `serve` keeps its memory-mapped metric files: off the data dir's disk (bench/chaos.py
found `serve` killed by SIGBUS when that disk filled up while a metric file grew)."""

from __future__ import annotations

from pathlib import Path

from wacloud.hosting.embedded import METRICS_DIR, metrics_directory
from wacloud.settings import load_settings


def test_metric_files_live_in_shared_memory_one_directory_per_data_dir(tmp_path: Path) -> None:
    shm = tmp_path / "shm"
    shm.mkdir()
    first = metrics_directory(load_settings(tmp_path / "a"), shm)
    second = metrics_directory(load_settings(tmp_path / "b"), shm)
    assert first.parent == shm and second.parent == shm and first != second
    assert metrics_directory(load_settings(tmp_path / "a"), shm) == first


def test_without_shared_memory_or_with_a_setting(tmp_path: Path) -> None:
    settings = load_settings(tmp_path / "data")
    assert metrics_directory(settings, tmp_path / "no-shm") == settings.data_dir / METRICS_DIR
    chosen = tmp_path / "mine"
    assert metrics_directory(load_settings(tmp_path / "data", metrics_dir=chosen),
                             tmp_path) == chosen


def test_the_default_is_not_on_the_data_dir_disk(tmp_path: Path) -> None:
    if not Path("/dev/shm").is_dir():
        return
    directory = metrics_directory(load_settings(tmp_path / "data"))
    assert directory.parent == Path("/dev/shm")
