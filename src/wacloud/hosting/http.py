"""The HTTP apps. Public (the webhook port): provider webhooks and their verification
handshakes (all of `/webhooks/*`, the plain-ASGI hot path in `webhooks.py`), the tenant API,
the admin API with `/openapi.json` (`wacloud.admin.api`), the dashboard at `/ui`
(`wacloud.ui`) and health. Internal (its own listener, 127.0.0.1:8081 by default): metrics and
the credentials endpoint, which must not be reachable where Meta and the tenants are; health
answers there too. Thin: checks, queues, answers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from wacloud import __version__
from wacloud.adapters.queue.sqlite.queue import SqliteQueue
from wacloud.admin.api import AdminContext, admin_routes
from wacloud.bootstrap import Gateway
from wacloud.hosting.api import api_routes
from wacloud.hosting.backpressure import IngestGate
from wacloud.hosting.internal import internal_routes
from wacloud.hosting.webhooks import ASGIApp, WebhookReceiver
from wacloud.observability.metrics import render
from wacloud.stages import envelopes
from wacloud.ui.app import UiContext, ui_routes
from wacloud.ui.sessions import SessionStore


def create_app(gateway: Gateway,
               workers: Callable[[], list[dict[str, object]]] = list) -> ASGIApp:
    """The public app. `workers`: the stage workers' state for `/readyz` (none when the
    stages run here)."""
    return create_apps(gateway, workers)[0]


def create_apps(gateway: Gateway, workers: Callable[[], list[dict[str, object]]] = list
                ) -> tuple[ASGIApp, ASGIApp]:
    """(public, internal): the internal one serves `/metrics`, `/internal/credentials`,
    `/healthz` and `/readyz`, for the internal listener only."""
    broker = gateway.broker
    raw_queue = gateway.queues[envelopes.INBOUND_RAW]
    settings = gateway.settings
    gate = IngestGate(raw_queue.holds_at_least if isinstance(raw_queue, SqliteQueue)
                      else lambda _limit: False, settings.data_dir,
                      settings.inbound_queue_limit, settings.min_free_disk_mb)

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok", "version": __version__})

    async def readyz(_: Request) -> Response:
        # Ready means webhooks are accepted (they wait durably in the queue); whether the stage
        # workers run, and how often they were restarted, is reported beside it. While
        # backpressure refuses webhooks it answers 503 (status "backpressure").
        depth = await raw_queue.depth()
        # Acknowledged work that stopped: messages waiting in each queue's dead-letter queue.
        dead = await gateway.dead_letter_counts()
        # How far behind each stage is (seconds its oldest ready message has waited), and the
        # age of each queue's oldest message in any state (a stuck one keeps ageing).
        queues = gateway.dead_letter_sources()
        lag = {name: await queue.lag_seconds() for name, queue in queues.items()}
        oldest = {name: await queue.oldest_age() for name, queue in queues.items()}
        accepting = await gate.admit_fresh()
        return JSONResponse({"status": "ready" if accepting else "backpressure",
                             "inbound_raw": depth, "dead_letters": dead,
                             "lag_s": _rounded(lag), "oldest_age_s": _rounded(oldest),
                             "ingest": gate.state(), "workers": workers()},
                            status_code=200 if accepting else 503)

    async def metrics(_: Request) -> Response:
        gauges = await gateway.gauges(workers())
        gauges.ingest_backpressure = 0 if gate.open else 1
        # Reading the workers' files is off the loop: webhooks are answered on it.
        body = await asyncio.to_thread(render, gauges)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    health = [Route("/healthz", healthz), Route("/readyz", readyz)]
    admin = AdminContext(
        gateway.registry, broker, dict(gateway.queues), gateway.dead_letter_sources(),
        gateway.settings.data_dir, gateway.settings.tenants_dir, gateway.send_http,
        allow_http=gateway.settings.dev_allow_local_urls)
    routes = [
        *health,
        *api_routes(broker, gateway.wake_collector,
                    max_body_bytes=gateway.settings.api_max_body_bytes),
        *admin_routes(admin),
        *ui_routes(UiContext(admin, gateway.media_store, SessionStore())),
    ]
    internal = [
        *health,
        Route("/metrics", metrics),
        *internal_routes(broker, gateway.settings.tenants_dir),
    ]
    public = WebhookReceiver(Starlette(routes=routes), broker, raw_queue,
                             gateway.settings.max_webhook_bytes,
                             gateway.settings.park_other_meta_objects, gate)
    return public, Starlette(routes=internal)


def _rounded(seconds: dict[str, float | None]) -> dict[str, float | None]:
    return {name: None if value is None else round(value, 3) for name, value in seconds.items()}
