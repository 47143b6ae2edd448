"""The tenant API: submit messages to the outbox and read them back.

Every request carries a tenant API key (`Authorization: Bearer KEY`); every query is scoped to
that key's tenant, so one tenant can never see or send for another (404, not 403, for another
tenant's rows: their existence is not revealed).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from wacloud.adapters.db import outbox
from wacloud.adapters.db.api_keys import ApiKey
from wacloud.adapters.db.views import outbound_view
from wacloud.credentials import CredentialsBroker
from wacloud.outbound_api import InvalidMessage, parse_submission


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def authenticate(request: Request, broker: CredentialsBroker) -> ApiKey | None:
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() != "bearer ":
        return None
    key = auth[7:].strip()
    found = broker.api_key(key)
    if found is None and await asyncio.to_thread(broker.refresh_after_miss):
        found = broker.api_key(key)
    return found


def api_routes(broker: CredentialsBroker, wake_collector: Callable[[], None]) -> list[Route]:
    async def submit(request: Request) -> Response:
        key = await authenticate(request, broker)
        if key is None or key.tenant is None:
            return error(401, "a tenant API key is required (Authorization: Bearer KEY)")
        try:
            submission = parse_submission(json.loads(await request.body()))
        except json.JSONDecodeError:
            return error(400, "the body is not JSON")
        except InvalidMessage as exc:
            return error(422, str(exc))
        if broker.tenant_channel(key.tenant, submission.channel) is None:
            return error(404, f"channel {submission.channel!r} not found for this tenant")
        store = await broker.tenant_store_async(key.tenant)
        row_id = await asyncio.to_thread(
            outbox.insert_outbound, store.engine, channel=submission.channel,
            recipient=submission.to, type=submission.type, content=submission.content,
            reply_to=submission.reply_to, client_reference=submission.client_reference,
            recipient_type=submission.recipient_type)
        wake_collector()
        return JSONResponse({"id": row_id, "status": "pending", "status_code": 0,
                             "channel": submission.channel, "to": submission.to,
                             "recipient_type": submission.recipient_type or "individual",
                             "type": submission.type,
                             "client_reference": submission.client_reference},
                            status_code=201)

    async def read(request: Request) -> Response:
        key = await authenticate(request, broker)
        if key is None or key.tenant is None:
            return error(401, "a tenant API key is required (Authorization: Bearer KEY)")
        try:
            row_id = int(request.path_params["id"])
        except ValueError:
            return error(404, "no such message")
        store = await broker.tenant_store_async(key.tenant)
        row = await asyncio.to_thread(outbox.get_outbound, store.engine, row_id)
        if row is None:
            return error(404, "no such message")
        return JSONResponse(outbound_view(row))

    return [Route("/v1/messages", submit, methods=["POST"]),
            Route("/v1/messages/{id}", read, methods=["GET"])]
