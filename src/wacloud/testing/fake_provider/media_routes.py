"""Inbound-media download endpoints of the three providers (spec sections 2, 5 and 6).

- Meta: `GET /{version}/{media_id}` resolves to a short-lived signed `/meta-cdn/{media_id}`
  URL; both steps need the Bearer token, the CDN also a valid, unexpired `hash`.
- Whapi: `GET /whapi-files/{media_id}` (the public "Auto Download" link) and
  `GET /media/{media_id}` (Bearer header or `?token=`).
- Chakra: `GET /v1/whatsapp/{version}/media/{media_id}/show` (Bearer).

A media object is only served by the provider it was added for. An injected failure
(`fail_media`) is consumed before the token is checked, like an outage in front of the API.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from wacloud.testing.fake_provider.content import CHUNK_SIZE
from wacloud.testing.fake_provider.errors import (
    chakra_error,
    meta_error,
    meta_not_found,
    meta_unauthorized,
    plain_not_found,
    whapi_error,
)
from wacloud.testing.fake_provider.state import FakeMedia, ProviderState

_GRAPH_VERSION_RE = re.compile(r"v\d+\.\d+")


def bearer_token(request: Request, *, allow_query: bool = False) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, credential = header.partition(" ")
    if scheme.lower() == "bearer" and credential.strip():
        return credential.strip()
    if allow_query:
        return request.query_params.get("token") or None
    return None


def stream_media(media: FakeMedia) -> Response:
    headers = {"Content-Length": str(media.size), "Cache-Control": "no-store"}
    if media.filename:
        headers["Content-Disposition"] = f'attachment; filename="{media.filename}"'
    response: Response
    if media.size <= CHUNK_SIZE:
        # One chunk: answered whole, without a streaming response's task group. With the
        # chunk cache in content.py, the fake took 11% of a core instead of 16% serving
        # bench/soak.py's ~400 media requests/s (CPU the gateway it measures then has).
        response = Response(media.read_bytes(), headers=headers, media_type=media.mime_type)
    else:
        response = StreamingResponse(
            media.content.aiter_chunks(), headers=headers, media_type=media.mime_type
        )
    # Starlette would append "; charset=utf-8" to text/* types; a CDN echoes the stored type.
    response.headers["content-type"] = media.mime_type
    return response


def damaged_media(media: FakeMedia) -> Response:
    """The media's bytes with the first one changed: same length and headers, wrong hash."""
    data = bytearray(media.read_bytes())
    if data:
        data[0] ^= 0xFF
    return Response(bytes(data), media_type=media.mime_type,
                    headers={"Cache-Control": "no-store"})


def stalled_media(media: FakeMedia, seconds: float) -> StreamingResponse:
    """The first chunk of the media, then `seconds` of silence, then the rest."""

    async def body() -> AsyncIterator[bytes]:
        first = True
        async for chunk in media.content.aiter_chunks():
            yield chunk
            if first:
                first = False
                await asyncio.sleep(seconds)

    headers = {"Content-Length": str(media.size), "Cache-Control": "no-store"}
    return StreamingResponse(body(), headers=headers, media_type=media.mime_type)


def media_routes(state: ProviderState,
                 phone_number: Callable[[Request], Awaitable[Response]] | None = None
                 ) -> list[BaseRoute]:
    """Routes for the download endpoints; the Meta resolve route must stay last (catch-all).
    `phone_number` answers `GET /{version}/{id}?fields=...` for an id that is no media: a
    phone number's object shares the pattern."""

    async def meta_resolve(request: Request) -> Response:
        version = request.path_params["version"]
        media_id = request.path_params["media_id"]
        if not _GRAPH_VERSION_RE.fullmatch(version):
            return plain_not_found()
        media = state.get_media(media_id, "meta")
        if media is None and phone_number is not None and "fields" in request.query_params:
            return await phone_number(request)
        if media is None:
            if not state.token_allowed(None, bearer_token(request)):
                return meta_unauthorized()
            return meta_not_found(media_id)
        failure = state.take_failure(media_id)
        if failure is not None:
            return meta_error(failure)
        if not state.token_allowed(media, bearer_token(request)):
            return meta_unauthorized()
        ext, url_hash = state.sign_url(media_id)
        base = str(request.base_url).rstrip("/")
        return JSONResponse(
            {
                "messaging_product": "whatsapp",
                "url": f"{base}/meta-cdn/{media_id}?ext={ext}&hash={url_hash}",
                "mime_type": media.mime_type,
                "sha256": media.sha256_hex,
                "file_size": media.size,
                "id": media.id,
            }
        )

    async def meta_cdn(request: Request) -> Response:
        media_id = request.path_params["media_id"]
        media = state.get_media(media_id, "meta")
        if media is None:
            return plain_not_found()
        failure = state.take_failure(media_id)
        if failure is not None:
            return meta_error(failure)
        if not state.token_allowed(media, bearer_token(request)):
            return meta_unauthorized()
        query = request.query_params
        if not state.check_url(media_id, query.get("ext"), query.get("hash")):
            # Expired and forged URLs look the same to the client: re-resolve and retry.
            return plain_not_found()
        if state.is_damaged(media_id):
            return damaged_media(media)
        stall = state.take_stall(media_id)
        if stall is not None:
            return stalled_media(media, stall)
        return stream_media(media)

    async def whapi_auto_download(request: Request) -> Response:
        return _whapi(request, needs_token=False)

    async def whapi_media(request: Request) -> Response:
        return _whapi(request, needs_token=True)

    def _whapi(request: Request, *, needs_token: bool) -> Response:
        media_id = request.path_params["media_id"]
        media = state.get_media(media_id, "whapi")
        if media is None:
            return whapi_error(404, "Media not found")
        failure = state.take_failure(media_id)
        if failure is not None:
            return whapi_error(failure, "Injected failure")
        if needs_token and not state.token_allowed(media, bearer_token(request, allow_query=True)):
            return whapi_error(401, "Unauthorized")
        return stream_media(media)

    async def chakra_show(request: Request) -> Response:
        media_id = request.path_params["media_id"]
        media = state.get_media(media_id, "chakra")
        if media is None:
            return chakra_error(404, "Media not found")
        failure = state.take_failure(media_id)
        if failure is not None:
            return chakra_error(failure, "Injected failure")
        if not state.token_allowed(media, bearer_token(request)):
            return chakra_error(401, "Unauthorized")
        return stream_media(media)

    return [
        Route("/whapi-files/{media_id}", whapi_auto_download, methods=["GET"]),
        Route("/media/{media_id}", whapi_media, methods=["GET"]),
        Route("/v1/whatsapp/{version}/media/{media_id}/show", chakra_show, methods=["GET"]),
        Route("/meta-cdn/{media_id}", meta_cdn, methods=["GET"]),
        Route("/{version}/{media_id}", meta_resolve, methods=["GET"]),
    ]
