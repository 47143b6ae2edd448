"""Media on the local disk (embedded mode): files under `<data dir>/media/<key>`.

URLs to objects are `file://` URLs: they work only on this machine and never expire."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from wacloud.adapters.durable import fsync_dir, replace_durably
from wacloud.adapters.media.base import MediaNotFound, MediaStore, check_key

if TYPE_CHECKING:
    from wacloud.settings import Settings

CHUNK = 256 * 1024


class LocalMediaStore(MediaStore):
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def path_for(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError("media key escapes the media directory")
        return path

    async def put_file(self, key: str, path: Path, content_type: str | None = None) -> None:
        target = self.path_for(key)
        await asyncio.to_thread(self._move, path, target)

    def _move(self, source: Path, target: Path) -> None:
        if target.is_file():  # the key names its content: the stored file is the same bytes
            source.unlink(missing_ok=True)
            return
        # The row says `stored` once this returns: the file must be on disk by then, with the
        # directories that name it (a power cut must not leave a `stored` row and no file).
        missing = [parent for parent in target.parents
                   if parent.is_relative_to(self.root) and not parent.exists()]
        target.parent.mkdir(parents=True, exist_ok=True)
        replace_durably(source, target)
        for created in missing:  # deepest first: each new directory's entry in its parent
            fsync_dir(created.parent)

    async def exists(self, key: str) -> bool:
        return self.path_for(key).is_file()

    async def open(self, key: str) -> AsyncIterator[bytes]:
        path = self.path_for(key)
        try:
            handle = await asyncio.to_thread(path.open, "rb")
        except (FileNotFoundError, IsADirectoryError):
            raise MediaNotFound("no media object under this key") from None
        try:
            while chunk := await asyncio.to_thread(handle.read, CHUNK):
                yield chunk
        finally:
            handle.close()

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self.path_for(key).unlink, True)

    async def presigned_url(self, key: str, expires_s: int) -> str:
        """The file's `file://` URL (`expires_s` does not apply: the file is simply there)."""
        return self.path_for(key).as_uri()


def open_store(url: str, settings: Settings) -> LocalMediaStore:
    """`file:///PATH` (absolute) or `file:PATH` (relative to the working directory)."""
    parts = urlsplit(url)
    return LocalMediaStore(Path(unquote(parts.netloc + parts.path)))
