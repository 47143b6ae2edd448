"""The receiver function: provider webhooks over HTTP (API Gateway HTTP API or a function URL)
onto `inbound.raw`, answered 200 only once queued.

The checks are `wacloud serve`'s own (`hosting.webhooks.WebhookReceiver`): Meta's
`X-Hub-Signature-256` against the app secrets of the channels it names, the Whapi / Chakra
channel secret before the body is looked at, the size limit, other Meta products answered and
only counted. What no channel routes to is parked by the writer, as in `serve`. Meta's
verification handshake (`GET /webhooks/meta`, by the same receiver) and `GET /healthz` are
answered too; nothing else is served here (the admin API and the dashboard stay off the public
function). Backpressure needs no gate: SQS does not fill up.
"""

from __future__ import annotations

import json
from typing import Any

from wacloud import __version__
from wacloud.hosting.aws_lambda import http_event
from wacloud.hosting.aws_lambda.runtime import Container, container
from wacloud.hosting.webhooks import ASGIApp, Receive, Scope, Send, WebhookReceiver, respond
from wacloud.stages.envelopes import INBOUND_RAW

_app: tuple[Container, ASGIApp] | None = None  # built once per container


def other_requests() -> ASGIApp:
    """What `WebhookReceiver` passes on (it answers all of `/webhooks/*`, the handshake too):
    health; 404 for the rest."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] == "GET" and scope["path"] == "/healthz":
            return await respond(send, 200, json.dumps({"status": "ok",
                                                        "version": __version__}).encode())
        await respond(send, 404, b'{"error":"not found"}')

    return app


def app_of(current: Container) -> ASGIApp:
    global _app
    if _app is None or _app[0] is not current:
        gateway = current.gateway
        settings = current.settings
        _app = (current, WebhookReceiver(
            other_requests(), gateway.broker, gateway.queues[INBOUND_RAW],
            settings.max_webhook_bytes, settings.park_other_meta_objects))
    return _app[1]


async def answer(current: Container, event: dict[str, Any]) -> dict[str, Any]:
    await current.fresh()
    return await http_event.call(app_of(current), event)


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Lambda entry point: `wacloud.hosting.aws_lambda.receiver.handler`."""
    current = container()
    return current.run(answer(current, event))
