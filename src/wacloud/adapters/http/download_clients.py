"""httpx clients for media downloads, one connection pool per group of keys.

(Provider API calls go through `wacloud.adapters.http.provider_client`; downloads stay on httpx
because the SSRF policy pins their connections through it.) httpcore checks every connection of
a pool (a poll() and a peer lookup each) whenever a request starts or ends, so with dozens of
downloads in flight through one pool that check cost more CPU than the request itself. Spreading
keys over a few pools keeps each pool small; a key always uses the same pool, so its connections
stay warm.
"""

from __future__ import annotations

import ssl
import zlib
from typing import Any

import certifi
import httpx


class ClientShards:
    def __init__(self, count: int = 16, **client_options: Any) -> None:
        # One TLS context for all: each client would otherwise load the CA bundle (~2 MB).
        client_options.setdefault("verify", ssl.create_default_context(cafile=certifi.where()))
        self.clients = [httpx.AsyncClient(**client_options) for _ in range(max(1, count))]

    def for_key(self, key: str) -> httpx.AsyncClient:
        return self.clients[zlib.crc32(key.encode()) % len(self.clients)]

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()
