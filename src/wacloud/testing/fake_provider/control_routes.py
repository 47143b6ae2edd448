"""HTTP control plane (`/_fake/*`) so a fake running in another process can be driven.

Mirrors the Python helpers of `FakeProvider`: add media, inject failures (`/_fake/fail`),
damaged downloads (`/_fake/damage` `{media_id, damaged}`), stalled downloads (`/_fake/stall`
`{media_id, times, seconds}`), change the token or URL lifetime, read the recorded requests,
reset.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from wacloud.testing.fake_provider.state import ProviderState


def _bad_request(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=400)


async def _json_object(request: Request) -> dict[str, Any] | None:
    try:
        payload = json.loads(await request.body() or b"{}")
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


def control_routes(state: ProviderState) -> list[BaseRoute]:
    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def add_media(request: Request) -> Response:
        query = request.query_params
        mime_type = query.get("mime_type")
        if not mime_type:
            return _bad_request("mime_type is required")
        try:
            size = int(query["size"]) if query.get("size") else None
        except ValueError:
            return _bad_request("size must be an integer")
        body = await request.body()
        try:
            # Hashing a large generated body takes a while; keep the event loop free.
            media = await run_in_threadpool(
                state.add_media,
                body if body or size is None else None,
                mime_type=mime_type,
                size=size,
                filename=query.get("filename") or None,
                provider=query.get("provider") or "meta",
                token=query.get("token") or None,
                media_id=query.get("media_id") or None,
            )
        except ValueError as exc:
            return _bad_request(str(exc))
        payload = media.to_json()
        base = str(request.base_url).rstrip("/")
        if media.provider == "whapi":
            payload["link"] = f"{base}/whapi-files/{media.id}"
        return JSONResponse(payload, status_code=201)

    async def fail(request: Request) -> Response:
        payload = await _json_object(request)
        if payload is None:
            return _bad_request("body must be a JSON object")
        media_id, times = payload.get("media_id"), payload.get("times")
        status = payload.get("status", 500)
        if not isinstance(media_id, str) or not isinstance(times, int):
            return _bad_request("media_id (str) and times (int) are required")
        if not isinstance(status, int):
            return _bad_request("status must be an integer")
        try:
            state.fail_media(media_id, times, status)
        except KeyError:
            return JSONResponse({"error": f"unknown media {media_id!r}"}, status_code=404)
        except ValueError as exc:
            return _bad_request(str(exc))
        return JSONResponse({"media_id": media_id, "times": times, "status": status})

    async def damage(request: Request) -> Response:
        payload = await _json_object(request)
        media_id = None if payload is None else payload.get("media_id")
        damaged = True if payload is None else payload.get("damaged", True)
        if not isinstance(media_id, str) or not isinstance(damaged, bool):
            return _bad_request("media_id (str) is required; damaged must be a boolean")
        if state.get_media_any(media_id) is None:
            return JSONResponse({"error": f"unknown media {media_id!r}"}, status_code=404)
        state.damage_media(media_id, damaged)
        return JSONResponse({"media_id": media_id, "damaged": damaged})

    async def stall(request: Request) -> Response:
        payload = await _json_object(request)
        if payload is None:
            return _bad_request("body must be a JSON object")
        media_id, times = payload.get("media_id"), payload.get("times")
        seconds = payload.get("seconds")
        if not isinstance(media_id, str) or not isinstance(times, int) \
                or not isinstance(seconds, int | float) or isinstance(seconds, bool):
            return _bad_request("media_id (str), times (int) and seconds (number) are required")
        try:
            state.stall_media(media_id, times, float(seconds))
        except KeyError:
            return JSONResponse({"error": f"unknown media {media_id!r}"}, status_code=404)
        except ValueError as exc:
            return _bad_request(str(exc))
        return JSONResponse({"media_id": media_id, "times": times, "seconds": seconds})

    async def config(request: Request) -> Response:
        payload = await _json_object(request)
        if payload is None:
            return _bad_request("body must be a JSON object")
        token, url_ttl = payload.get("token"), payload.get("url_ttl")
        if token is not None:
            if not isinstance(token, str) or not token:
                return _bad_request("token must be a non-empty string")
            state.set_token(token)
        if url_ttl is not None:
            if not isinstance(url_ttl, int | float) or url_ttl < 0:
                return _bad_request("url_ttl must be a non-negative number")
            state.url_ttl = float(url_ttl)
        # The token itself is never echoed back.
        return JSONResponse({"url_ttl": state.url_ttl})

    async def requests(request: Request) -> Response:
        records = list(state.requests)
        limit = request.query_params.get("limit")
        if limit and limit.isdigit():
            records = records[-int(limit) :] if int(limit) else []
        return JSONResponse(
            {"count": len(state.requests), "requests": [r.to_json() for r in records]}
        )

    async def reset(request: Request) -> Response:
        state.reset()
        return JSONResponse({"status": "ok"})

    return [
        Route("/_fake/health", health, methods=["GET"]),
        Route("/_fake/media", add_media, methods=["POST"]),
        Route("/_fake/fail", fail, methods=["POST"]),
        Route("/_fake/damage", damage, methods=["POST"]),
        Route("/_fake/stall", stall, methods=["POST"]),
        Route("/_fake/config", config, methods=["POST"]),
        Route("/_fake/requests", requests, methods=["GET"]),
        Route("/_fake/reset", reset, methods=["POST"]),
    ]
