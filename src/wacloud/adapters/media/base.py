"""The media store port: put a finished local file under a key, read it back, delete it.

Keys are relative paths (`tenant/channel/yyyy/mm/dd/<sha256><ext>` from the media copier): the
content's sha256 is part of the key, so one key always names one content. Every store therefore
treats a `put_file` of a key it already holds as done (the first object stays, nothing is
uploaded or overwritten): a retried copy costs no second upload and can never replace a file a
reader is streaming. The contract every adapter passes is
`tests/contract/test_media_store_contract.py`.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from pathlib import Path


class MediaNotFound(FileNotFoundError):
    """No object under this key (`open` of a missing key)."""


class MediaStoreMissing(RuntimeError):
    """The store itself is absent (an S3 bucket not created): the message says which and how
    to create it."""


def check_key(key: str) -> str:
    """Return `key` if it is a relative path of plain parts, else raise ValueError.

    Refused: empty keys, a leading `/`, empty parts (`a//b`, a trailing `/`), `.` and `..`
    parts and NUL. Every store refuses the same keys, so a key that works on the local disk
    works on S3 and cannot reach outside the store's folder or prefix on either."""
    if not key or key.startswith("/") or "\x00" in key:
        raise ValueError("media key must be a non-empty relative path")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError("media key must not have empty, '.' or '..' parts")
    return key


class MediaStore(abc.ABC):
    @abc.abstractmethod
    async def put_file(self, key: str, path: Path, content_type: str | None = None) -> None:
        """Store the file at `path` under `key`; the object is durable when this returns and
        the file is consumed (moved or uploaded, then removed). A key already stored is left
        as it is (see the module docstring) and the file is removed all the same."""

    @abc.abstractmethod
    async def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def open(self, key: str) -> AsyncIterator[bytes]:
        """Stream the object's bytes in bounded chunks; raises MediaNotFound when the key is
        missing (at the first iteration)."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Remove the object; a missing key is not an error."""

    async def presigned_url(self, key: str, expires_s: int) -> str:
        """A URL a reader can fetch the object from without wacloud's credentials, valid for
        `expires_s` seconds where the store can limit it."""
        raise NotImplementedError(f"{type(self).__name__} cannot give URLs to its objects")

    async def ensure_bucket(self) -> str | None:
        """Create what the store keeps its objects in (an S3 bucket) if it is missing;
        idempotent. Returns its name, or None for a store that needs nothing created."""
        return None

    async def close(self) -> None:
        """Release connections and threads (nothing to release by default)."""
        return None
