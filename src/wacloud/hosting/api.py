"""The tenant API: submit messages to the outbox and read them back.

Every request carries a tenant API key (`Authorization: Bearer KEY`); every query is scoped to
that key's tenant, so one tenant can never see or send for another (404, not 403, for another
tenant's rows: their existence is not revealed).

A POST may carry an `Idempotency-Key` header: a retry with the same key and body gets the
row the first one made (200, header `Idempotent-Replayed: true`; the first answer is 201),
never a second row; the same key with another body is 409. Bodies are at most
`max_body_bytes` (413), UTF-8 JSON (400 otherwise): every refusal is a JSON `{"error": ...}`.
A created or replayed row's answer carries `X-Trace-Id`, the trace id its log lines carry
(`wacloud.observability.tracing.outbound_trace_id`). While the tenant's database is down, locked
or full the answer is 503 with `Retry-After` (a JSON error, no traceback).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from wacloud.adapters.db.errors import failure_reason, is_database_unavailable
from wacloud.adapters.db.registry.api_keys import ApiKey
from wacloud.adapters.db.tenant import outbox
from wacloud.adapters.db.tenant.submissions import IdempotencyConflict, submit_outbound
from wacloud.adapters.db.tenant.views import outbound_view
from wacloud.adapters.db.types import utcnow
from wacloud.credentials.broker import CredentialsBroker
from wacloud.domain.model import OutboundStatus
from wacloud.domain.submission import (
    InvalidMessage,
    parse_idempotency_key,
    parse_submission,
    parse_validity,
    request_hash,
)
from wacloud.observability.tracing import outbound_trace_id

DEFAULT_MAX_BODY_BYTES = 64 * 1024
MAX_ROW_ID = 2**63 - 1  # the largest id any of the databases stores

log = logging.getLogger(__name__)


class BodyError(Exception):
    """A request body refused before it is looked at: the HTTP status and the reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


# A tenant database that is down, locked or full answers this: the client retries (the row was
# not written, or an Idempotency-Key retry finds it), instead of a 500 with a traceback.
DB_RETRY_AFTER_S = 1


def database_unavailable(tenant: str, exc: Exception) -> JSONResponse:
    log.warning("tenant %s: database unavailable for the API (%s); answered 503", tenant,
                failure_reason(exc))
    return JSONResponse({"error": "the tenant database is unavailable; retry later"},
                        status_code=503, headers={"Retry-After": str(DB_RETRY_AFTER_S)})


async def authenticate(request: Request, broker: CredentialsBroker) -> ApiKey | None:
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() != "bearer ":
        return None
    key = auth[7:].strip()
    found = broker.api_key(key)
    if found is None and await asyncio.to_thread(broker.refresh_after_miss):
        found = broker.api_key(key)
    return found


async def read_json_body(request: Request, max_bytes: int) -> Any:
    """The body as parsed JSON; BodyError (413, 400) for one too large, not UTF-8 or not JSON.
    The size is checked as the body arrives: a missing or false Content-Length changes
    nothing."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_bytes:
        raise BodyError(413, f"the body is larger than {max_bytes} bytes")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_bytes:
                raise BodyError(413, f"the body is larger than {max_bytes} bytes")
    except ClientDisconnect:  # gone, or cut off by the server's read deadline (408)
        raise BodyError(400, "the client went away before the body was read") from None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BodyError(400, "the body is not UTF-8") from None
    try:
        data = json.loads(text)
        # A lone surrogate escape ("\ud800") parses, but no database can store it.
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeEncodeError included
        raise BodyError(400, "the body is not JSON (UTF-8, one JSON value)") from None
    return data


def submission_view(row: Any) -> dict[str, Any]:
    """What POST answers: the row as created (or, for a retry, as it is now)."""
    status = OutboundStatus(row["status"])
    expires = row["expires_at"]
    return {"id": row["id"], "status": status.label, "status_code": status.value,
            "channel": row["channel"], "to": row["recipient"],
            "recipient_type": row["recipient_type"] or "individual", "type": row["type"],
            "client_reference": row["client_reference"],
            "expires_at": expires.isoformat() if expires is not None else None}


def api_routes(broker: CredentialsBroker, wake_collector: Callable[[str], None], *,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> list[Route]:
    async def submit(request: Request) -> Response:
        key = await authenticate(request, broker)
        if key is None or key.tenant is None:
            return error(401, "a tenant API key is required (Authorization: Bearer KEY)")
        try:
            idempotency_key = parse_idempotency_key(request.headers.get("idempotency-key"))
        except InvalidMessage as exc:
            return error(400, str(exc))
        try:
            data = await read_json_body(request, max_body_bytes)
        except BodyError as exc:
            return error(exc.status, str(exc))
        try:
            submission = parse_submission(data)
            expires_at = parse_validity(data, utcnow())
        except InvalidMessage as exc:
            return error(422, str(exc))
        if broker.tenant_channel(key.tenant, submission.channel) is None:
            return error(404, f"channel {submission.channel!r} not found for this tenant")
        try:
            store = await broker.tenant_store_async(key.tenant)
            row, created = await asyncio.to_thread(
                submit_outbound, store.engine, channel=submission.channel,
                recipient=submission.to, type=submission.type, content=submission.content,
                reply_to=submission.reply_to, client_reference=submission.client_reference,
                recipient_type=submission.recipient_type, expires_at=expires_at,
                idempotency_key=idempotency_key,
                request_hash=request_hash(data) if idempotency_key is not None else None)
        except IdempotencyConflict as exc:
            return JSONResponse({"error": str(exc), "id": exc.row_id}, status_code=409)
        except Exception as exc:
            if is_database_unavailable(exc):
                return database_unavailable(key.tenant, exc)
            raise
        trace = outbound_trace_id(key.tenant, int(row["id"]))
        if not created:
            return JSONResponse(submission_view(row), status_code=200,
                                headers={"Idempotent-Replayed": "true", "X-Trace-Id": trace})
        wake_collector(key.tenant)
        log.debug("message submitted", extra={
            "trace_id": trace, "tenant": key.tenant, "channel": submission.channel,
            "message_id": row["id"], "stage": "api"})
        return JSONResponse(submission_view(row), status_code=201, headers={"X-Trace-Id": trace})

    async def read(request: Request) -> Response:
        key = await authenticate(request, broker)
        if key is None or key.tenant is None:
            return error(401, "a tenant API key is required (Authorization: Bearer KEY)")
        try:
            row_id = int(request.path_params["id"])
        except ValueError:
            return error(404, "no such message")
        if not 0 < row_id <= MAX_ROW_ID:  # no database holds it (the driver would overflow)
            return error(404, "no such message")
        try:
            store = await broker.tenant_store_async(key.tenant)
            row = await asyncio.to_thread(outbox.get_outbound, store.engine, row_id)
        except Exception as exc:
            if is_database_unavailable(exc):
                return database_unavailable(key.tenant, exc)
            raise
        if row is None:
            return error(404, "no such message")
        return JSONResponse(outbound_view(row))

    return [Route("/v1/messages", submit, methods=["POST"]),
            Route("/v1/messages/{id}", read, methods=["GET"])]
