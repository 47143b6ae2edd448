"""`POST /internal/credentials`: the credentials broker over HTTP for distributed workers.

Thin: reads at most `MAX_BODY_BYTES`, hands the `Authorization` header and the body to
`CredentialsService` (service-key check, lookup, audit) off the event loop, and answers.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from wacloud.credentials.broker import CredentialsBroker
from wacloud.credentials.service import MAX_BODY_BYTES, CredentialsService

NO_STORE = {"Cache-Control": "no-store"}


async def _read_body(request: Request) -> bytes | None:
    """The body, or None when it is bigger than the limit."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def internal_routes(broker: CredentialsBroker, tenants_dir: Path) -> list[Route]:
    service = CredentialsService(broker, tenants_dir)

    async def credentials(request: Request) -> Response:
        try:
            body = await _read_body(request)
        except ClientDisconnect:
            return Response(status_code=400)
        if body is None:
            return JSONResponse({"error": "body too large"}, status_code=413, headers=NO_STORE)
        source = request.client.host if request.client else None
        answer = await asyncio.to_thread(service.handle, request.headers.get("authorization"),
                                         body, via="http", source=source)
        return JSONResponse(answer.body, status_code=answer.status, headers=NO_STORE)

    return [Route("/internal/credentials", credentials, methods=["POST"])]
