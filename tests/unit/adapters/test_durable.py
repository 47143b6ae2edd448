"""Media files and the key file reach the disk before anything relies on them: written through
a temporary file that is fsynced, renamed over the target, and the directory fsynced after the
rename. A power cut cannot be tested; the order of the system calls can (an os.fsync spy)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from wacloud.adapters.media.local.store import LocalMediaStore
from wacloud.security.crypto import read_key_file, write_key_file

Event = tuple[str, ...]


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[Event]:
    events: list[Event] = []
    real_fsync: Callable[[int], None] = os.fsync
    real_replace = os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        events.append(("replace", str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def test_the_key_file_is_fsynced_then_renamed_then_its_directory(tmp_path: Path,
                                                                calls: list[Event]) -> None:
    path = tmp_path / "keys" / "encryption.key"
    write_key_file(path, ["k1"])
    calls.clear()
    write_key_file(path, ["k2", "k1"])  # a rotation: the new key in front
    tmp = str(path.with_suffix(".tmp"))
    assert calls == [("fsync", tmp), ("replace", tmp, str(path)),
                     ("fsync", str(path.parent))]
    assert read_key_file(path) == ["k2", "k1"]
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)


def test_a_media_file_is_on_disk_with_its_directories_before_put_returns(
        tmp_path: Path, calls: list[Event]) -> None:
    store = LocalMediaStore(tmp_path / "media")
    source = tmp_path / "download.part"
    source.write_bytes(b"\xff\xd8\xff\xe0 jpeg")
    asyncio.run(store.put_file("acme/123/abc.jpg", source, "image/jpeg"))
    target = tmp_path / "media" / "acme" / "123" / "abc.jpg"
    assert target.read_bytes() == b"\xff\xd8\xff\xe0 jpeg"
    assert calls[:3] == [("fsync", str(source)), ("replace", str(source), str(target)),
                         ("fsync", str(target.parent))]
    # The two directories created for it are named durably in their parents too.
    assert set(calls[3:]) == {("fsync", str(target.parent.parent)),
                              ("fsync", str(tmp_path / "media"))}

    calls.clear()  # an existing directory needs only the file and its own fsync
    again = tmp_path / "again.part"
    again.write_bytes(b"second")
    asyncio.run(store.put_file("acme/123/def.jpg", again))
    assert [c[0] for c in calls] == ["fsync", "replace", "fsync"]
