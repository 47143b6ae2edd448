"""Contract for the media store port: every MediaStore adapter must pass these.

To add an adapter, add a param to `backend` that opens stores on one fresh, shared place (a
second store on it stands in for another process) and, if it can, says how many parts an
object was uploaded in. The in-memory store of `wacloud.testing` passes it too.
"""

from __future__ import annotations

import asyncio
import random
import tracemalloc
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from wacloud.adapters.media import open_media_store
from wacloud.adapters.media.base import MediaNotFound, MediaStore
from wacloud.adapters.media.local.store import LocalMediaStore
from wacloud.settings import Settings
from wacloud.testing.memory_media import MemoryMediaStore, MemoryObjects

MiB = 1024 * 1024
# Small parts so that a few MiB already make a multipart upload (S3's minimum part size).
PART = 5 * MiB
KEY = "acme/1065/2026/12/05/" + "ab" * 32 + ".jpg"


@dataclass
class Backend:
    name: str
    open: Callable[[], MediaStore]  # a new store (new connections) on the shared place
    parts_of: Callable[[str], int] | None = None  # how many parts an object was uploaded in
    # What the adapter cannot do, with the reason a test skipped for it gives.
    cannot: dict[str, str] = field(default_factory=dict)

    def require(self, feature: str) -> None:
        if feature in self.cannot:
            pytest.skip(f"{self.name}: {self.cannot[feature]}")


def _local(tmp_path: Path) -> Backend:
    root = tmp_path / "media"
    return Backend("local", lambda: open_media_store(root.as_uri(), Settings()))


def _s3(request: pytest.FixtureRequest) -> Backend:
    import boto3

    from wacloud.adapters.media.s3 import S3MediaStore

    request.getfixturevalue("aws_env")
    bucket = f"wacloud-test-{uuid.uuid4().hex[:16]}"
    client = boto3.client("s3")
    client.create_bucket(Bucket=bucket)

    def empty_and_remove() -> None:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                client.delete_object(Bucket=bucket, Key=item["Key"])
        client.delete_bucket(Bucket=bucket)
        client.close()

    request.addfinalizer(empty_and_remove)

    def parts_of(key: str) -> int:
        etag = str(client.head_object(Bucket=bucket, Key=f"media/{key}")["ETag"]).strip('"')
        # A multipart object's ETag is `<md5 of the parts' md5s>-<number of parts>`.
        return int(etag.rpartition("-")[2]) if "-" in etag else 1

    return Backend("s3", lambda: S3MediaStore(bucket, "media", part_size=PART), parts_of)


def _memory() -> Backend:
    place = MemoryObjects()
    return Backend("memory", lambda: MemoryMediaStore(place), cannot={
        "objects_off_the_heap": "an in-memory store keeps its objects in memory by design"})


@pytest.fixture(params=["local", "s3", "memory"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "memory":
        return _memory()
    return _local(tmp_path) if request.param == "local" else _s3(request)


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[MediaStore]:
    opened = backend.open()
    try:
        yield opened
    finally:
        await opened.close()


def a_file(tmp_path: Path, data: bytes, name: str | None = None) -> Path:
    path = tmp_path / (name or f"{uuid.uuid4().hex}.part")
    path.write_bytes(data)
    return path


async def read_all(store: MediaStore, key: str) -> bytes:
    return b"".join([chunk async for chunk in store.open(key)])


def random_bytes(size: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)


async def test_put_then_exists_and_open_give_the_bytes_back(store: MediaStore,
                                                            tmp_path: Path) -> None:
    source = a_file(tmp_path, b"\xff\xd8\xff\xe0 a jpeg")
    assert not await store.exists(KEY)
    await store.put_file(KEY, source, "image/jpeg")
    assert await store.exists(KEY)
    assert await read_all(store, KEY) == b"\xff\xd8\xff\xe0 a jpeg"
    assert not source.exists()  # the file is consumed


async def test_an_object_is_there_for_another_store_once_put_returns(
        backend: Backend, store: MediaStore, tmp_path: Path) -> None:
    await store.put_file(KEY, a_file(tmp_path, b"durable"), "image/jpeg")
    other = backend.open()  # another process, after this one died
    try:
        assert await other.exists(KEY)
        assert await read_all(other, KEY) == b"durable"
    finally:
        await other.close()


async def test_a_multi_megabyte_file_round_trips_in_parts_and_streams_in_bounded_chunks(
        backend: Backend, store: MediaStore, tmp_path: Path) -> None:
    data = random_bytes(2 * PART + MiB)  # three parts
    await store.put_file(KEY, a_file(tmp_path, data), "video/mp4")
    if backend.parts_of is not None:
        assert backend.parts_of(KEY) == 3
    chunks = [chunk async for chunk in store.open(KEY)]
    assert b"".join(chunks) == data
    assert len(chunks) > 1 and max(len(c) for c in chunks) <= MiB


async def test_a_missing_key_does_not_exist_cannot_be_opened_and_deletes_quietly(
        store: MediaStore) -> None:
    assert not await store.exists("acme/nothing/here.jpg")
    with pytest.raises(MediaNotFound):
        await read_all(store, "acme/nothing/here.jpg")
    with pytest.raises(FileNotFoundError):  # MediaNotFound is a FileNotFoundError
        await read_all(store, "acme/nothing/here.jpg")
    await store.delete("acme/nothing/here.jpg")


async def test_delete_removes_the_object_and_twice_is_fine(store: MediaStore,
                                                          tmp_path: Path) -> None:
    await store.put_file(KEY, a_file(tmp_path, b"bye"))
    await store.delete(KEY)
    assert not await store.exists(KEY)
    with pytest.raises(MediaNotFound):
        await read_all(store, KEY)
    await store.delete(KEY)
    assert not await store.exists(KEY)


ESCAPING_KEYS = ["../outside.jpg", "acme/../../outside.jpg", "/etc/passwd", "..", "acme/./x",
                 "acme//x.jpg", "acme/", "", "acme/x\x00.jpg"]


async def test_keys_that_try_to_escape_are_refused_by_every_operation(
        store: MediaStore, tmp_path: Path) -> None:
    source = a_file(tmp_path, b"evil")
    for key in ESCAPING_KEYS:
        with pytest.raises(ValueError):
            await store.put_file(key, source)
        with pytest.raises(ValueError):
            await store.exists(key)
        with pytest.raises(ValueError):
            await read_all(store, key)
        with pytest.raises(ValueError):
            await store.delete(key)
        with pytest.raises(ValueError):
            await store.presigned_url(key, 60)
    assert source.read_bytes() == b"evil"  # refused before anything was done with it
    assert not (tmp_path / "outside.jpg").exists()


async def test_unicode_keys_round_trip(store: MediaStore, tmp_path: Path) -> None:
    key = "açaí-tenant/canal é/2026/12/05/ação 東京 🎉 #1?.jpg"
    await store.put_file(key, a_file(tmp_path, "olá 東京".encode()), "image/jpeg")
    assert await store.exists(key)
    assert await read_all(store, key) == "olá 東京".encode()
    assert not await store.exists(key.replace("ação", "acao"))
    await store.delete(key)
    assert not await store.exists(key)


async def test_a_second_put_of_a_key_overwrites_nothing(store: MediaStore,
                                                        tmp_path: Path) -> None:
    await store.put_file(KEY, a_file(tmp_path, b"first copy"), "image/jpeg")
    retry = a_file(tmp_path, b"a retry")
    await store.put_file(KEY, retry, "image/jpeg")
    assert await read_all(store, KEY) == b"first copy"
    assert not retry.exists()  # consumed all the same: the caller's temporary file is gone


async def test_concurrent_puts_of_many_keys_and_of_one_key_all_land(store: MediaStore,
                                                                    tmp_path: Path) -> None:
    contents = {f"acme/1065/2026/12/05/{i:02d}.bin": random_bytes(64 * 1024 + i, seed=i)
                for i in range(12)}
    same = random_bytes(300 * 1024, seed=99)
    await asyncio.gather(
        *(store.put_file(key, a_file(tmp_path, data)) for key, data in contents.items()),
        *(store.put_file(KEY, a_file(tmp_path, same)) for _ in range(4)))
    for key, data in contents.items():
        assert await read_all(store, key) == data
    assert await read_all(store, KEY) == same
    assert not list(tmp_path.glob("*.part"))


async def test_a_reader_that_stops_early_leaves_the_store_usable(store: MediaStore,
                                                                tmp_path: Path) -> None:
    data = random_bytes(3 * MiB)
    await store.put_file(KEY, a_file(tmp_path, data))
    for _ in range(20):  # more than any connection pool: an abandoned stream gives its back
        stream = store.open(KEY)
        first = await anext(stream)
        assert first and data.startswith(first)
        await stream.aclose()  # type: ignore[attr-defined]
    assert await read_all(store, KEY) == data
    await store.delete(KEY)
    assert not await store.exists(KEY)


async def test_put_and_open_do_not_hold_the_file_in_memory(backend: Backend, store: MediaStore,
                                                          tmp_path: Path) -> None:
    backend.require("objects_off_the_heap")
    size = 6 * PART  # several times what a few parts in flight take
    source = a_file(tmp_path, random_bytes(size))
    tracemalloc.start()
    try:
        await store.put_file(KEY, source, "video/mp4")
        _, put_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        total = 0
        async for chunk in store.open(KEY):
            total += len(chunk)
        _, open_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == size
    assert put_peak < size // 2, f"put_file peaked at {put_peak} bytes for a {size}-byte file"
    assert open_peak < size // 4, f"open peaked at {open_peak} bytes for a {size}-byte file"


async def test_presigned_url_serves_the_bytes_to_a_reader(store: MediaStore,
                                                          tmp_path: Path) -> None:
    await store.put_file(KEY, a_file(tmp_path, b"for a reader"), "image/jpeg")
    url = await store.presigned_url(KEY, 300)

    def fetch() -> Any:
        with urllib.request.urlopen(url, timeout=10) as answer:  # http(s):// or file://
            return answer.read()

    assert await asyncio.to_thread(fetch) == b"for a reader"


def test_the_local_store_is_what_file_urls_open(tmp_path: Path) -> None:
    store = open_media_store((tmp_path / "m").as_uri(), Settings())
    assert isinstance(store, LocalMediaStore) and store.root == (tmp_path / "m").resolve()
