"""Copy one provider media file into our object store: resolve, stream, verify, store.

The file is streamed to a temporary file while it is hashed (never held whole in memory),
checked against the provider's sha256 and the size limit, then stored under a collision-free
key `tenant/channel/yyyy/mm/dd/<sha256><ext>` with the extension of its real MIME type.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import httpx

from wacloud.adapters.media.base import MediaStore
from wacloud.mediatypes import extension_for, real_type
from wacloud.model import Channel, MediaRef, MediaStatus, Provider
from wacloud.providers import chakra, meta, whapi
from wacloud.providers.media import MediaDownload, MediaResolveError
from wacloud.urlpolicy import UrlRefused, check_url

SAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(slots=True)
class Downloaded:
    path: Path
    digest: bytes
    size: int
    head: bytes
    content_type: str | None


class MediaCopyError(Exception):
    """Copying failed; `temporary` says whether a retry may succeed."""

    def __init__(self, reason: str, *, temporary: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.temporary = temporary


def digest_matches(expected: str, digest: bytes) -> bool:
    """Providers give sha256 as hex (Graph) or base64 (webhooks); accept either."""
    value = expected.strip()
    if value.lower() == digest.hex():
        return True
    try:
        return base64.b64decode(value + "=" * (-len(value) % 4), validate=False) == digest
    except (binascii.Error, ValueError):
        return False


class MediaCopier:
    def __init__(self, store: MediaStore, client: httpx.AsyncClient, *, tmp_dir: Path,
                 max_bytes: int, allow_local: bool) -> None:
        self.store = store
        self.client = client
        self.tmp_dir = tmp_dir
        self.max_bytes = max_bytes
        self.allow_local = allow_local
        tmp_dir.mkdir(parents=True, exist_ok=True)

    async def _download_spec(self, channel: Channel, media: MediaRef) -> MediaDownload:
        if channel.provider is Provider.META:
            if media.link and not media.provider_media_id:
                return MediaDownload(url=media.link, headers={}, mime_type=media.mime_type,
                                     sha256=media.sha256, size=media.size,
                                     filename=media.filename)
            await check_url(channel.base_url, channel, allow_local=self.allow_local)
            return await meta.resolve_media(self.client, channel, media)
        if channel.provider is Provider.WHAPI:
            return whapi.media_download(channel, media)
        return chakra.media_download(channel, media)

    async def copy(self, channel: Channel, media: MediaRef, *, timeout: float) -> MediaRef:
        """Return the media as stored, or raise MediaCopyError."""
        deadline = time.monotonic() + timeout
        try:
            spec = await self._download_spec(channel, media)
        except MediaResolveError as exc:
            raise MediaCopyError(str(exc), temporary=exc.temporary) from None
        except UrlRefused as exc:
            raise MediaCopyError(str(exc), temporary=False) from None
        except httpx.HTTPError as exc:
            raise MediaCopyError(f"media lookup failed: {type(exc).__name__}",
                                 temporary=True) from None
        try:
            await check_url(spec.url, channel, allow_local=self.allow_local)
        except UrlRefused as exc:
            raise MediaCopyError(str(exc), temporary=False) from None
        declared_size = spec.size or media.size
        if declared_size and declared_size > self.max_bytes:
            raise MediaCopyError(f"media is {declared_size} bytes, over the "
                                 f"{self.max_bytes}-byte limit", temporary=False)
        download = await self.fetch_to_file(spec.url, spec.headers,
                                            max(0.1, deadline - time.monotonic()))
        tmp_path, digest, size = download.path, download.digest, download.size
        head, header_type = download.head, download.content_type
        expected = media.sha256 or spec.sha256
        if expected and not digest_matches(expected, digest):
            tmp_path.unlink(missing_ok=True)
            raise MediaCopyError("downloaded media does not match the provider's sha256",
                                 temporary=True)
        mime = real_type(media.mime_type or spec.mime_type, header_type, head)
        filename = media.filename or spec.filename
        day = time.strftime("%Y/%m/%d", time.gmtime())
        key = (f"{SAFE.sub('_', channel.tenant)}/{SAFE.sub('_', channel.key)}/{day}/"
               f"{digest.hex()}{extension_for(mime, filename)}")
        try:
            await self.store.put_file(key, tmp_path, content_type=mime)
        except BaseException:
            tmp_path.unlink(missing_ok=True)
            raise
        return replace(media, key=key, mime_type=media.mime_type or mime,
                       sha256=digest.hex(), size=size, filename=filename,
                       status=MediaStatus.STORED, error=None)

    async def fetch_to_file(self, url: str, headers: dict[str, str], timeout: float
                            ) -> Downloaded:
        """Stream `url` into a temporary file (the caller owns and removes it)."""
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp_dir, suffix=".part")
        tmp_path = Path(tmp_name)
        try:
            digest, size, head, header_type = await self._stream(url, headers, fd, timeout)
        except BaseException:
            tmp_path.unlink(missing_ok=True)
            raise
        return Downloaded(tmp_path, digest, size, head, header_type)

    async def _stream(self, url: str, headers: dict[str, str], fd: int, timeout: float
                      ) -> tuple[bytes, int, bytes, str | None]:
        hasher = hashlib.sha256()
        size = 0
        head = b""
        try:
            with os.fdopen(fd, "wb") as out:
                async with self.client.stream("GET", url, headers=headers,
                                              timeout=timeout, follow_redirects=False) as resp:
                    if resp.status_code != 200:
                        temporary = resp.status_code >= 500 or resp.status_code in (404, 408, 429)
                        raise MediaCopyError(f"media download answered HTTP {resp.status_code}",
                                             temporary=temporary)
                    length = resp.headers.get("content-length")
                    if length and length.isdigit() and int(length) > self.max_bytes:
                        raise MediaCopyError(f"media is {length} bytes, over the "
                                             f"{self.max_bytes}-byte limit", temporary=False)
                    async for chunk in resp.aiter_bytes(256 * 1024):
                        size += len(chunk)
                        if size > self.max_bytes:
                            raise MediaCopyError(f"media exceeds the {self.max_bytes}-byte "
                                                 "limit", temporary=False)
                        if len(head) < 16:
                            head += chunk[:16]
                        hasher.update(chunk)
                        out.write(chunk)
                    header_type = resp.headers.get("content-type")
        except httpx.HTTPError as exc:
            raise MediaCopyError(f"media download failed: {type(exc).__name__}",
                                 temporary=True) from None
        return hasher.digest(), size, head, header_type
