"""Copy one provider media file into our object store: resolve, stream, verify, store.

Every URL fetched, and every redirect hop, passes the SSRF policy of `wacloud.security.urlpolicy`.

The file is streamed to a temporary file while it is hashed (never held whole in memory),
checked against the provider's sha256 and the size limit, then stored under a collision-free
key `tenant/channel/yyyy/mm/dd/<sha256><ext>` with the extension of its real MIME type.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import os
import re
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO
from urllib.parse import urljoin

from wacloud.adapters.http.download_client import (
    ConnectFailed,
    Download,
    DownloadClient,
    DownloadFailed,
)
from wacloud.adapters.http.provider_client import ProviderCallError, ProviderClient, ProviderTimeout
from wacloud.adapters.media.base import MediaStore
from wacloud.domain.mediatypes import extension_for, real_type
from wacloud.domain.model import Channel, MediaRef, MediaStatus, ProviderRequest
from wacloud.providers import PROVIDERS
from wacloud.providers.base import ProviderPort
from wacloud.providers.media import MediaDownload, MediaResolveError
from wacloud.security.urlpolicy import (
    MAX_REDIRECTS,
    REDIRECT_STATUSES,
    HostAllowList,
    Target,
    UrlPolicy,
    UrlRefused,
)

SAFE = re.compile(r"[^A-Za-z0-9._-]")
# A provider's media lookup call (Meta's Graph API: media id -> URL); the copy's own timeout
# bounds it too.
LOOKUP_TIMEOUT_S = 30.0


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


async def look_up(api: ProviderClient, provider: ProviderPort, channel: Channel, media: MediaRef,
                  request: ProviderRequest, timeout: float = LOOKUP_TIMEOUT_S) -> MediaDownload:
    """Perform a provider's media lookup (`ProviderPort.media_lookup`) and read its answer:
    where the file is. MediaResolveError when the provider will not say (temporary when it
    did not answer)."""
    media_id = media.provider_media_id
    try:
        answer = await api.perform(request, timeout)
    except ProviderTimeout:
        raise MediaResolveError(f"timed out resolving media {media_id}",
                                temporary=True) from None
    except ProviderCallError as exc:
        raise MediaResolveError(f"could not reach {provider.api_name} for media {media_id}: "
                                f"{exc.kind}", temporary=True) from None
    return provider.read_media_lookup(channel, media, answer.status_code, answer.content)


class MediaCopier:
    """Copies media under the SSRF policy (`wacloud.security.urlpolicy`): every URL and every
    redirect hop is checked, connections go to the checked address, and size and total time are
    capped.

    `policy` defaults to `UrlPolicy(allow_local=allow_local)`; tests pass one with a fake
    resolver or `local_origins` to exercise refusals while their servers run on 127.0.0.1."""

    def __init__(self, store: MediaStore, client: DownloadClient, *,
                 tmp_dir: Path,
                 max_bytes: int, allow_local: bool, policy: UrlPolicy | None = None,
                 api: ProviderClient | None = None) -> None:
        self.store = store
        self.client = client
        # Graph API lookups (media id -> URL) go through the provider client like sends;
        # downloads stay on `client`, whose connections the SSRF policy pins.
        self._owns_api = api is None
        self.api = api or ProviderClient()
        self.tmp_dir = tmp_dir
        self.max_bytes = max_bytes
        self.policy = policy or UrlPolicy(allow_local=allow_local)
        self.allow_local = self.policy.allow_local
        tmp_dir.mkdir(parents=True, exist_ok=True)

    async def aclose(self) -> None:
        if self._owns_api:
            await self.api.aclose()

    async def _download_spec(self, channel: Channel, media: MediaRef,
                             allowed: HostAllowList) -> MediaDownload:
        provider = PROVIDERS[channel.provider]
        lookup = provider.media_lookup(channel, media)
        if lookup is None:
            return provider.media_download(channel, media)
        # The API origin comes from the registry, not from a payload; checked anyway so a
        # misconfigured base URL cannot reach an internal address. This one call is not
        # pinned to the checked address (it goes through the provider client).
        await self.policy.check(channel.base_url, allowed)
        return await look_up(self.api, provider, channel, media, lookup)

    async def copy(self, channel: Channel, media: MediaRef, *, timeout: float) -> MediaRef:
        """Return the media as stored, or raise MediaCopyError. `timeout` bounds the whole
        network part (lookup, every redirect, the download), not just one socket read."""
        deadline = time.monotonic() + timeout
        allowed = HostAllowList.for_channel(channel)
        try:
            async with asyncio.timeout(timeout):
                spec = await self._download_spec(channel, media, allowed)
                first = await self.policy.check(spec.url, allowed)
        except TimeoutError:
            raise MediaCopyError(f"media lookup took longer than {timeout:.3g} s",
                                 temporary=True) from None
        except MediaResolveError as exc:
            raise MediaCopyError(str(exc), temporary=exc.temporary) from None
        except UrlRefused as exc:
            raise MediaCopyError(str(exc), temporary=exc.temporary) from None
        declared_size = spec.size or media.size
        if declared_size and declared_size > self.max_bytes:
            raise MediaCopyError(f"media is {declared_size} bytes, over the "
                                 f"{self.max_bytes}-byte limit", temporary=False)
        download = await self._fetch(first, spec.headers, allowed,
                                     max(0.1, deadline - time.monotonic()),
                                     too_slow=f"media copy took longer than {timeout:.3g} s")
        tmp_path, digest, size = download.path, download.digest, download.size
        head, header_type = download.head, download.content_type
        expected = media.sha256 or spec.sha256
        if expected and not digest_matches(expected, digest):
            tmp_path.unlink(missing_ok=True)
            # Temporary: a download cut or damaged on the way may come whole next time; the
            # media stage gives up after its attempts and keeps this reason with the row.
            said = "webhook" if media.sha256 else "provider"
            raise MediaCopyError(f"sha256 mismatch: {said} said {expected.strip()[:128]}, "
                                 f"file is {digest.hex()}", temporary=True)
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

    async def fetch_to_file(self, url: str, headers: dict[str, str], timeout: float, *,
                            channel: Channel | None = None) -> Downloaded:
        """Stream `url` into a temporary file (the caller owns and removes it).

        Without `channel` (a tenant's outbound link) any host is allowed, but only at public
        addresses and over https; with it, only the channel's media hosts."""
        allowed = HostAllowList.for_channel(channel) if channel is not None else None
        return await self._fetch(url, headers, allowed, timeout)

    async def _fetch(self, first: str | Target, headers: dict[str, str],
                     allowed: HostAllowList | None, timeout: float, *,
                     too_slow: str | None = None) -> Downloaded:
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp_dir, suffix=".part")
        tmp_path = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                async with asyncio.timeout(timeout):
                    digest, size, head, header_type = await self._stream(
                        first, headers, allowed, out, timeout)
        except TimeoutError:
            tmp_path.unlink(missing_ok=True)
            raise MediaCopyError(too_slow or f"media download took longer than {timeout:.3g} s",
                                 temporary=True) from None
        except BaseException:
            tmp_path.unlink(missing_ok=True)
            raise
        return Downloaded(tmp_path, digest, size, head, header_type)

    async def _check(self, url: str, allowed: HostAllowList | None, what: str) -> Target:
        try:
            return await self.policy.check(url, allowed)
        except UrlRefused as exc:
            raise MediaCopyError(f"{what}{exc}", temporary=exc.temporary) from None

    async def _open(self, target: Target, headers: dict[str, str], timeout: float) -> Download:
        """GET `target` without following redirects, connecting only to an address the policy
        approved (the next one if a connection is refused, e.g. IPv6 without a route)."""
        failure: ConnectFailed | None = None
        for address in target.addresses:
            url, pin_headers, server_hostname = target.pinned_request(address)
            try:
                return await self.client.get(url, {**headers, **pin_headers},
                                             server_hostname=server_hostname, timeout=timeout)
            except ConnectFailed as exc:
                failure = exc
        assert failure is not None  # a Target always has at least one address
        raise failure

    async def _stream(self, first: str | Target, headers: dict[str, str],
                      allowed: HostAllowList | None, out: IO[bytes], timeout: float
                      ) -> tuple[bytes, int, bytes, str | None]:
        """Follow up to MAX_REDIRECTS redirects by hand, checking every hop's URL (scheme,
        host, resolved addresses) like the first; then stream the body within the limits."""
        target = first if isinstance(first, Target) else await self._check(first, allowed, "")
        hop_headers = dict(headers)
        try:
            for hop in range(MAX_REDIRECTS + 1):
                resp = await self._open(target, hop_headers, timeout)
                try:
                    if resp.status in REDIRECT_STATUSES:
                        location = resp.headers.get("location")
                        if not location:
                            raise MediaCopyError("media download answered a redirect without "
                                                 "a Location", temporary=False)
                        if hop == MAX_REDIRECTS:
                            raise MediaCopyError(f"media download redirected more than "
                                                 f"{MAX_REDIRECTS} times", temporary=False)
                        following = await self._check(urljoin(target.url, location), allowed,
                                                      "media download redirected to a refused "
                                                      "URL: ")
                        if following.origin != target.origin:
                            # Like a browser: credentials never follow to another origin.
                            hop_headers = {k: v for k, v in hop_headers.items()
                                           if k.lower() != "authorization"}
                        target = following
                        continue
                    return await self._read_body(resp, out)
                finally:
                    resp.release()
        except DownloadFailed as exc:
            raise MediaCopyError(f"media download failed: {exc.kind}", temporary=True) from None
        raise AssertionError("unreachable: the loop returns or raises")

    async def _read_body(self, resp: Download, out: IO[bytes]
                         ) -> tuple[bytes, int, bytes, str | None]:
        if resp.status != 200:
            temporary = resp.status >= 500 or resp.status in (404, 408, 429)
            raise MediaCopyError(f"media download answered HTTP {resp.status}",
                                 temporary=temporary)
        length = resp.headers.get("content-length")
        if length and length.isdigit() and int(length) > self.max_bytes:
            raise MediaCopyError(f"media is {length} bytes, over the {self.max_bytes}-byte "
                                 "limit", temporary=False)
        hasher = hashlib.sha256()
        size = 0
        head = b""
        async for chunk in resp.chunks():
            size += len(chunk)
            if size > self.max_bytes:
                raise MediaCopyError(f"media exceeds the {self.max_bytes}-byte limit",
                                     temporary=False)
            if len(head) < 16:
                head += chunk[:16]
            hasher.update(chunk)
            out.write(chunk)
        return hasher.digest(), size, head, resp.headers.get("content-type")
