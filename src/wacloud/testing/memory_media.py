"""A media store in memory, for fast tests of the stages that copy and serve media: the
semantics of the media store port (`adapters/media/base.py`: keys checked the same way, a file
consumed by `put_file`, a key already stored left alone, streams in bounded chunks) without a
disk or a bucket, and it passes the same contract suite
(`tests/contract/test_media_store_contract.py`) but for what memory cannot do (not holding
objects in memory). Stores opened on one `MemoryObjects` share their objects, as two processes
share a folder or a bucket.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from wacloud.adapters.media.base import MediaNotFound, MediaStore, check_key

CHUNK = 256 * 1024


@dataclass
class MemoryObjects:
    """The shared place: key -> (bytes, content type)."""

    objects: dict[str, tuple[bytes, str | None]] = field(default_factory=dict)


class MemoryMediaStore(MediaStore):
    def __init__(self, place: MemoryObjects | None = None) -> None:
        self.place = place if place is not None else MemoryObjects()

    async def put_file(self, key: str, path: Path, content_type: str | None = None) -> None:
        check_key(key)
        data = await asyncio.to_thread(path.read_bytes)
        # The key names its content: a second put is the same bytes, kept as they are.
        self.place.objects.setdefault(key, (data, content_type))
        path.unlink(missing_ok=True)

    async def exists(self, key: str) -> bool:
        return check_key(key) in self.place.objects

    async def open(self, key: str) -> AsyncIterator[bytes]:
        stored = self.place.objects.get(check_key(key))
        if stored is None:
            raise MediaNotFound("no media object under this key")
        data = stored[0]
        for start in range(0, len(data), CHUNK):
            yield data[start:start + CHUNK]
            await asyncio.sleep(0)  # a stream, not one blocking read

    async def delete(self, key: str) -> None:
        self.place.objects.pop(check_key(key), None)

    async def presigned_url(self, key: str, expires_s: int) -> str:
        """A `data:` URL with the object's bytes: a reader needs no credentials (and it does
        not expire)."""
        stored = self.place.objects.get(check_key(key))
        if stored is None:
            raise MediaNotFound("no media object under this key")
        data, content_type = stored
        return (f"data:{content_type or 'application/octet-stream'};base64,"
                f"{base64.b64encode(data).decode()}")
