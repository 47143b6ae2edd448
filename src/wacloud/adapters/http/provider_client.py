"""Performs the HTTP requests the provider modules build (sends, media uploads), with aiohttp.

Measured against the fake provider on this 2-core machine (`bench/outbound.py` notes): httpx
spent about 1.4 ms of CPU per request and aiohttp about 0.13 ms. At hundreds of sends a second
that difference was most of the outbound pipeline's CPU, and it capped the pipeline below a
single number's Meta tier. Media downloads have a client of their own
(`wacloud.adapters.http.download_client`), pinned to the addresses the SSRF policy checked.

Like the httpx client it replaces here: no redirects are followed (an API answers, it does
not send us elsewhere with our token), proxies come from the environment, TLS is checked
against certifi's CA bundle.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from wacloud.adapters.http.session import LazySession
from wacloud.domain.model import ProviderRequest


@dataclass(frozen=True, slots=True)
class ProviderResponse:
    status_code: int
    content: bytes
    headers: Mapping[str, str]  # case-insensitive


class ProviderCallError(Exception):
    """The request got no HTTP answer (connection refused or reset, DNS, TLS, ...); `kind`
    names the failure without any URL or header in it."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class ProviderTimeout(ProviderCallError):
    def __init__(self) -> None:
        super().__init__("timeout")


class ProviderClient(LazySession):
    def __init__(self, *, connections_per_host: int = 64, connect_timeout: float = 10.0) -> None:
        super().__init__(connections_per_host=connections_per_host,
                         connect_timeout=connect_timeout)

    async def perform(self, request: ProviderRequest, timeout: float) -> ProviderResponse:
        """Send `request`; ProviderTimeout or ProviderCallError when no answer came."""
        session = self.session()
        limits = aiohttp.ClientTimeout(total=timeout, connect=min(self.connect_timeout, timeout))
        try:
            with _body(request) as (body, headers):
                async with session.request(request.method, request.url, data=body,
                                           headers=headers, allow_redirects=False,
                                           proxy=self.proxies.for_url(request.url),
                                           timeout=limits) as response:
                    content = await response.read()
                    return ProviderResponse(response.status, content, response.headers)
        except TimeoutError:
            raise ProviderTimeout() from None
        except aiohttp.ClientError as exc:
            raise ProviderCallError(type(exc).__name__) from None


@contextlib.contextmanager
def _body(request: ProviderRequest) -> Iterator[tuple[Any, dict[str, str]]]:
    """The request's body as aiohttp takes it, with the content type it implies."""
    headers = dict(request.headers)
    if request.files:
        form = aiohttp.FormData()
        for name, value in (request.data or {}).items():
            form.add_field(name, value)
        with contextlib.ExitStack() as files:
            for name, (filename, path, mime) in request.files.items():
                form.add_field(name, files.enter_context(open(path, "rb")),
                               filename=filename, content_type=mime)
            yield form, headers
        return
    if request.json is not None:
        headers.setdefault("Content-Type", "application/json")
        yield json.dumps(request.json, ensure_ascii=False, separators=(",", ":")).encode(), headers
        return
    yield (request.data if request.data is not None else request.content), headers
