"""Media downloads over aiohttp, each connection pinned to an address the SSRF policy checked.

The copier asks for a URL whose host is that address and passes the real host name for the
`Host` header and for TLS (SNI and the certificate check: aiohttp's `server_hostname`).
aiohttp keys its pooled connections by address, port, TLS settings and that host name, so a
connection verified for one host is never reused for another on the same address.

Why aiohttp and not httpx (which downloads used before): httpx pools connections by address
only, so two allowed names on one address could share a TLS connection checked for the first;
and one HTTP stack for every outbound call instead of two. (The CPU httpx costs per request,
see `provider_client`, made no difference visible in /proc at 2,000 webhooks/s with a tenth
carrying media: downloads are not where that load spends its CPU.)
Errors leave as `DownloadFailed` (or `ConnectFailed`, for the next checked address), named by
their kind only: no URL, no header.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Mapping

import aiohttp

from wacloud.adapters.http.session import LazySession

CHUNK_BYTES = 64 * 1024


class DownloadFailed(Exception):
    """No complete answer (reset, protocol error, TLS, ...); `kind` names the failure."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class ConnectFailed(DownloadFailed):
    """No connection to that address (refused, unreachable): another address may work."""


class Download:
    """An answer whose body is not read yet: read it with `chunks`, then `release` it."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers  # case-insensitive

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_chunked(CHUNK_BYTES):
                yield chunk
        except aiohttp.ClientError as exc:
            raise DownloadFailed(type(exc).__name__) from None

    def release(self) -> None:
        # close, not release: a body left half-read must not go back to the pool (one read to
        # its end is back there already: aiohttp returns the connection at the end of a body).
        self._response.close()


class DownloadClient(LazySession):
    def __init__(self, *, connections_per_host: int = 16, connect_timeout: float = 10.0,
                 tls: ssl.SSLContext | None = None) -> None:
        super().__init__(connections_per_host=connections_per_host,
                         connect_timeout=connect_timeout, tls=tls)

    async def get(self, url: str, headers: Mapping[str, str], *, server_hostname: str | None,
                  timeout: float) -> Download:
        """GET `url` without following redirects. `server_hostname`: the host name TLS checks
        when `url` names an address. `timeout` bounds the connection; the caller bounds the
        whole download (its deadline, not a read timeout here, says when it took too long)."""
        limits = aiohttp.ClientTimeout(total=None,
                                       sock_connect=min(self.connect_timeout, timeout))
        try:
            response = await self.session().get(
                url, headers=dict(headers), allow_redirects=False,
                server_hostname=server_hostname, proxy=self.proxies.for_url(url),
                timeout=limits)
        except aiohttp.ClientConnectorError as exc:
            raise ConnectFailed(type(exc).__name__) from None
        except aiohttp.ClientError as exc:
            raise DownloadFailed(type(exc).__name__) from None
        return Download(response)
