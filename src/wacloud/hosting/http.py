"""The ASGI app: provider webhooks, health and metrics. Thin: checks, queues, answers.

A webhook is answered 200 only after its raw body is durably queued (the SQLite queue's group
commit makes that cheap under concurrency), so a crash right after the answer loses nothing.
"""

from __future__ import annotations

import logging

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from wacloud.bootstrap import Gateway
from wacloud.hosting.api import api_routes
from wacloud.metrics import WEBHOOKS
from wacloud.model import Provider
from wacloud.stages import envelopes
from wacloud.stages.ingest import (
    meta_signature_ok,
    meta_verify_challenge,
    raw_output,
    shared_secret_ok,
)

log = logging.getLogger(__name__)

OK = Response(b'{"ok":true}', media_type="application/json")


class BodyTooLarge(Exception):
    pass


async def read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def bearer_or_query(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.query_params.get("token")


def create_app(gateway: Gateway) -> Starlette:
    broker = gateway.broker
    raw_queue = gateway.queues[envelopes.INBOUND_RAW]
    limit = gateway.settings.max_webhook_bytes

    async def enqueue(provider: Provider, body: bytes, channel_key: str | None = None) -> Response:
        output = raw_output(provider, body, channel_key)
        await raw_queue.send(output.message.body)
        WEBHOOKS.labels(provider.value, "accepted").inc()
        return OK

    def refuse(provider: Provider, status: int, reason: str) -> Response:
        WEBHOOKS.labels(provider.value, str(status)).inc()
        return JSONResponse({"error": reason}, status_code=status)

    async def meta_verify(request: Request) -> Response:
        params = request.query_params
        challenge = meta_verify_challenge(params.get("hub.mode"), params.get("hub.verify_token"),
                                          params.get("hub.challenge"), broker)
        if challenge is None:
            return PlainTextResponse("forbidden", status_code=403)
        return PlainTextResponse(challenge)

    async def meta_webhook(request: Request) -> Response:
        try:
            body = await read_body(request, limit)
        except BodyTooLarge:
            return refuse(Provider.META, 413, f"body over {limit} bytes")
        if not meta_signature_ok(body, request.headers.get("x-hub-signature-256"), broker):
            return refuse(Provider.META, 401, "missing or invalid X-Hub-Signature-256")
        return await enqueue(Provider.META, body)

    def secret_webhook(provider: Provider, param: str):  # type: ignore[no-untyped-def]
        async def endpoint(request: Request) -> Response:
            key = request.path_params[param]
            channel = broker.channel(provider, key)
            if not shared_secret_ok(channel.webhook_secret if channel else None,
                                    bearer_or_query(request)):
                return refuse(provider, 401, "unknown channel or wrong webhook secret")
            try:
                body = await read_body(request, limit)
            except BodyTooLarge:
                return refuse(provider, 413, f"body over {limit} bytes")
            return await enqueue(provider, body, key)
        return endpoint

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        depth = await raw_queue.depth()
        return JSONResponse({"status": "ready", "inbound_raw": depth})

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    routes = [
        Route("/webhooks/meta", meta_verify, methods=["GET"]),
        Route("/webhooks/meta", meta_webhook, methods=["POST"]),
        Route("/webhooks/whapi/{channel_id}", secret_webhook(Provider.WHAPI, "channel_id"),
              methods=["POST"]),
        Route("/webhooks/chakra/{plugin_id}", secret_webhook(Provider.CHAKRA, "plugin_id"),
              methods=["POST"]),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        *api_routes(broker, gateway.collect_wake.set),
    ]
    return Starlette(routes=routes)
