"""What both HTTP clients share: one aiohttp session, opened on first use, and the proxies.

The session is created lazily because aiohttp binds it to the event loop that is running when
it is made, and the clients are built (in the composition root) before any loop runs. Proxies
come from the environment (HTTP(S)_PROXY, NO_PROXY), read once per client: aiohttp's
`trust_env` reads the environment and ~/.netrc again on every request (an eighth of a send's
CPU), so the clients ask here instead: one look per scheme and host, then a dict hit.
"""

from __future__ import annotations

import ssl
import urllib.request
from typing import Self
from urllib.parse import urlsplit

import aiohttp
import certifi


class EnvironmentProxies:
    def __init__(self) -> None:
        self._proxies = urllib.request.getproxies_environment()
        self._proxy_of: dict[tuple[str, str], str | None] = {}

    def for_url(self, url: str) -> str | None:
        """The proxy to reach `url` through, or None to connect directly."""
        parts = urlsplit(url)
        key = (parts.scheme, parts.hostname or "")
        if key not in self._proxy_of:
            proxy = self._proxies.get(parts.scheme)
            if proxy and urllib.request.proxy_bypass(key[1]):  # NO_PROXY
                proxy = None
            self._proxy_of[key] = proxy
        return self._proxy_of[key]


class LazySession:
    """One aiohttp session (created on first use, on the running loop) and its pool.
    `tls`: the context that checks servers' certificates (default: certifi's CAs)."""

    def __init__(self, *, connections_per_host: int, connect_timeout: float,
                 tls: ssl.SSLContext | None = None) -> None:
        self.connections_per_host = connections_per_host
        self.connect_timeout = connect_timeout
        self._tls = tls
        self._session: aiohttp.ClientSession | None = None
        self.proxies = EnvironmentProxies()

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=0, limit_per_host=self.connections_per_host,
                ssl=self._tls or ssl.create_default_context(cafile=certifi.where()))
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
