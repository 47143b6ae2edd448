"""Shared steps of the send endpoints: auth, body parsing, scripted answers, recording."""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from wacloud.testing.fake_provider.form_data import parse_form
from wacloud.testing.fake_provider.send_errors import scripted_error
from wacloud.testing.fake_provider.send_state import SendState, SentMessage
from wacloud.testing.fake_provider.state import ProviderState

# Builds the success payload from the new send number; returns (payload, message id).
SuccessBuilder = Callable[[int], tuple[dict[str, Any], str | None]]


@dataclass(frozen=True)
class SendTarget:
    """What a validated send request is: who sends what to whom."""

    provider: str
    sender: str
    recipient: str | None
    type: str
    body: dict[str, Any]


def new_wamid(number: int) -> str:
    raw = f"FAKE{number:010d}{secrets.token_hex(8)}".encode()
    return "wamid." + base64.b64encode(raw).decode("ascii")


def new_whapi_id(number: int) -> str:
    return f"{secrets.token_urlsafe(12)}-fk{number:x}"


def authorized(
    state: ProviderState, sends: SendState, sender: str, token: str | None, *, whapi: bool = False
) -> bool:
    """A sender registered with `set_sender_token` accepts only that token; otherwise any
    token the fake knows (its token, per-media tokens, Whapi channel tokens)."""
    if token is None:
        return False
    required = None if whapi else sends.sender_token(sender)
    if required is not None:
        return hmac.compare_digest(token, required)
    if whapi and sends.whapi_token_known(token):
        return True
    return state.token_allowed(None, token)


async def json_object(request: Request) -> dict[str, Any] | None:
    try:
        payload = json.loads(await request.body() or b"{}")
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


async def json_or_form(request: Request) -> dict[str, Any] | None:
    """A JSON object body, or a multipart form flattened to fields plus file summaries."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/"):
        return await json_object(request)
    form = parse_form(content_type, await request.body())
    if form is None:
        return None
    body: dict[str, Any] = dict(form.fields)
    for name, upload in form.files.items():
        body[name] = {
            "filename": upload.filename,
            "mime_type": upload.content_type,
            "size": len(upload.data),
        }
    return body


async def answer_send(
    sends: SendState, request: Request, target: SendTarget, success: SuccessBuilder
) -> Response:
    """Apply any matching script (delay, error), answer, and record the `SentMessage`."""
    wall, mono = time.time(), time.monotonic()
    script = sends.take_script(target.provider, target.sender, target.recipient)
    if script is not None and script.delay > 0:
        await asyncio.sleep(script.delay)
    message_id: str | None = None
    response: Response
    if script is not None and script.drop:
        response = dropped_connection()
    elif script is not None and not 200 <= script.status < 300:
        response = scripted_error(target.provider, script)
    else:
        payload, message_id = success(sends.new_send_number())
        if script is not None and script.message_id and message_id:
            # The generated id sits where each provider puts it; swap it wherever it is.
            payload = json.loads(json.dumps(payload).replace(message_id, script.message_id))
            message_id = script.message_id
        status = script.status if script is not None else 200
        response = JSONResponse(payload, status_code=status)
    sends.record_sent(
        SentMessage(
            provider=target.provider,
            sender=target.sender,
            recipient=target.recipient,
            type=target.type,
            body=target.body,
            time=wall,
            monotonic=mono,
            status=0 if script is not None and script.drop else response.status_code,
            message_id=message_id,
            path=request.url.path,
            delay=script.delay if script is not None else 0.0,
        )
    )
    return response


class DroppedConnection(Exception):
    """Raised inside a started response so that the server closes the connection."""


def dropped_connection() -> Response:
    """A response that sends its status line and headers, then breaks off: the server closes
    the connection with the chunked body unfinished, which the client sees as a network error
    (an ASGI app has no socket to close before answering)."""

    async def body() -> Any:
        raise DroppedConnection("scripted dropped connection")
        yield b""  # pragma: no cover - makes this an async generator

    return StreamingResponse(body(), media_type="application/json")
