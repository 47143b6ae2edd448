"""ASGI middleware that records every provider request (not the `/_fake/*` control plane).

It sits below routing so requests to wrong paths are recorded too: seeing a client hit a
URL the fake does not serve is often the whole diagnosis.
"""

from __future__ import annotations

import time
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from wacloud.testing.fake_provider.state import (
    ProviderState,
    RecordedRequest,
    mask_headers,
    mask_query,
)

CONTROL_PREFIX = "/_fake/"


class RecordingMiddleware:
    def __init__(self, app: ASGIApp, state: ProviderState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or str(scope["path"]).startswith(CONTROL_PREFIX):
            await self.app(scope, receive, send)
            return
        # Provider requests carry small bodies (JSON sends), so buffering them is fine and
        # keeps the record complete even when the endpoint never reads the body.
        chunks: list[bytes] = []
        more_body = True
        while more_body:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            more_body = message.get("more_body", False)
        body = b"".join(chunks)
        headers, fingerprint = mask_headers(list(scope.get("headers", [])))
        query = _parse_query(scope.get("query_string", b""))
        record = RecordedRequest(
            method=scope["method"],
            path=scope["path"],
            query=mask_query(query),
            headers=headers,
            body=body,
            time=time.time(),
            token_fingerprint=fingerprint,
        )
        self.state.record(record)

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        async def capture_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = int(message["status"])
            await send(message)

        await self.app(scope, replay, capture_status)


def _parse_query(raw: bytes) -> dict[str, str]:
    return dict(parse_qsl(raw.decode("latin-1"), keep_blank_values=True))
