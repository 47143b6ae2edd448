"""The media store port: put a finished local file under a key, read it back, delete it."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from pathlib import Path


class MediaStore(abc.ABC):
    @abc.abstractmethod
    async def put_file(self, key: str, path: Path, content_type: str | None = None) -> None:
        """Store the file at `path` under `key` (the file is consumed: moved or uploaded)."""

    @abc.abstractmethod
    async def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def open(self, key: str) -> AsyncIterator[bytes]:
        """Stream the object's bytes."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None: ...
