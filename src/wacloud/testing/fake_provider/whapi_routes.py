"""Whapi.Cloud outbound endpoints (spec section 5.4).

- `POST /messages/{type}` for the types in `WHAPI_SEND_TYPES` (JSON or multipart body)
  -> `{"sent": true, "message": {...}}`.
- `PUT /messages/{message_id}` (mark read) and `PUT /messages/{message_id}/reaction`
  -> `{"success": true}`.

Auth: `Authorization: Bearer <token>` or `?token=`. The sender id recorded for a token is the
channel id given to `set_whapi_channel(token, channel_id)`, else the token's fingerprint.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from wacloud.testing.fake_provider.media_routes import bearer_token
from wacloud.testing.fake_provider.send_common import (
    SendTarget,
    answer_send,
    authorized,
    json_object,
    json_or_form,
    new_whapi_id,
)
from wacloud.testing.fake_provider.send_errors import bad_request, unauthorized, whapi_send_error
from wacloud.testing.fake_provider.send_state import READ, SendState
from wacloud.testing.fake_provider.state import ProviderState

WHAPI_SEND_TYPES = frozenset(
    {
        "text",
        "image",
        "video",
        "document",
        "audio",
        "voice",
        "sticker",
        "contact",
        "location",
        "interactive",
        "poll",
        "link_preview",
    }
)


def chat_id(to: str) -> str:
    return to if "@" in to else f"{to}@s.whatsapp.net"


def whapi_routes(state: ProviderState, sends: SendState) -> list[BaseRoute]:
    def sender_of(request: Request) -> str | None:
        token = bearer_token(request, allow_query=True)
        if token is None or not authorized(state, sends, "", token, whapi=True):
            return None
        return sends.whapi_sender(token)

    async def send(request: Request) -> Response:
        message_type = request.path_params["type"]
        if message_type not in WHAPI_SEND_TYPES:
            return whapi_send_error(404, f"Unknown message type {message_type!r}")
        sender = sender_of(request)
        if sender is None:
            return unauthorized("whapi")
        body = await json_or_form(request)
        if body is None:
            return bad_request("whapi", "body must be a JSON object or multipart form")
        to = body.get("to")
        if not isinstance(to, str) or not to:
            return bad_request("whapi", "to is required")
        target = SendTarget("whapi", sender, to, message_type, body)

        def success(number: int) -> tuple[dict[str, Any], str | None]:
            message_id = new_whapi_id(number)
            message: dict[str, Any] = {
                "id": message_id,
                "from_me": True,
                "type": message_type,
                "chat_id": chat_id(to),
                "timestamp": int(time.time()),
                "source": "api",
                "status": "pending",
            }
            if message_type == "text" and isinstance(body.get("body"), str):
                message["text"] = {"body": body["body"]}
            return {"sent": True, "message": message}, message_id

        return await answer_send(sends, request, target, success)

    async def by_message_id(request: Request, message_type: str) -> Response:
        sender = sender_of(request)
        if sender is None:
            return unauthorized("whapi")
        body = await json_object(request)
        if body is None:
            return bad_request("whapi", "body must be a JSON object")
        body = {"message_id": request.path_params["message_id"], **body}
        target = SendTarget("whapi", sender, None, message_type, body)
        return await answer_send(sends, request, target, lambda _n: ({"success": True}, None))

    async def mark_read(request: Request) -> Response:
        return await by_message_id(request, READ)

    async def react(request: Request) -> Response:
        if sender_of(request) is not None:
            body = await json_object(request)
            if body is not None and not isinstance(body.get("emoji"), str):
                return bad_request("whapi", "emoji is required")
        return await by_message_id(request, "reaction")

    return [
        Route("/messages/{type}", send, methods=["POST"]),
        Route("/messages/{message_id}", mark_read, methods=["PUT"]),
        Route("/messages/{message_id}/reaction", react, methods=["PUT"]),
    ]
