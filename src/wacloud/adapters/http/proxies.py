"""Proxies from the environment (HTTP(S)_PROXY, NO_PROXY), read once per client.

aiohttp's `trust_env` reads the environment and ~/.netrc again on every request (an eighth of a
send's CPU), so the clients ask here instead: one look per scheme and host, then a dict hit.
"""

from __future__ import annotations

import urllib.request
from urllib.parse import urlsplit


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
