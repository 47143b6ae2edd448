"""Outbound endpoints of Meta and Chakra (spec sections 2, 3 and 6) and the plain file host.

- Meta: `POST /{version}/{phone_number_id}/messages` (send, or mark-as-read) and
  `POST /{version}/{phone_number_id}/media` (multipart upload; the media is then served by
  the normal Meta download endpoints).
- Chakra: `POST /v1/ext/plugin/whatsapp/{plugin_id}/api/{version}/{phone_number_id}/messages`
  (Meta body passed through) and `POST /v1/ext/plugin/whatsapp/{plugin_id}/upload-public-media`,
  whose URL `GET /chakra-public-media/{uuid}/{filename}` needs no auth.
- `GET /files/{name}`: bytes registered with `add_file`, for outbound media links.

Whapi lives in `whapi_routes`. `FakeProvider` mounts these before the media routes, whose
Meta resolve pattern `/{version}/{media_id}` would otherwise shadow two-segment paths.
"""

from __future__ import annotations

import mimetypes
import re
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from wacloud.testing.fake_provider.errors import plain_not_found
from wacloud.testing.fake_provider.form_data import parse_form
from wacloud.testing.fake_provider.media_routes import bearer_token
from wacloud.testing.fake_provider.send_common import (
    SendTarget,
    answer_send,
    authorized,
    json_object,
    new_wamid,
)
from wacloud.testing.fake_provider.send_errors import bad_request, unauthorized
from wacloud.testing.fake_provider.send_state import READ, HostedFile, SendState
from wacloud.testing.fake_provider.state import ProviderState

_GRAPH_VERSION_RE = re.compile(r"v\d+\.\d+")
_UNSAFE_FILENAME_RE = re.compile(r"[^A-Za-z0-9._-]")


def _chakra_ok(data: dict[str, Any]) -> dict[str, Any]:
    return {"_data": data, "_meta": {}, "_errors": []}


def _validate_meta_body(provider: str, sender: str, body: dict[str, Any]) -> SendTarget | str:
    """The `SendTarget` of a Meta-format send body, or why it is invalid."""
    if body.get("messaging_product") != "whatsapp":
        return 'messaging_product must be "whatsapp"'
    if body.get("status") == "read":
        if not isinstance(body.get("message_id"), str):
            return "message_id is required to mark a message as read"
        return SendTarget(provider, sender, None, READ, body)
    recipient = body.get("to") or body.get("recipient")
    if not isinstance(recipient, str):
        return "to (or recipient) is required"
    message_type = body.get("type", "text")
    return SendTarget(provider, sender, recipient, str(message_type), body)


def _meta_success(target: SendTarget, number: int) -> tuple[dict[str, Any], str | None]:
    if target.type == READ:
        return {"success": True}, None
    wamid = new_wamid(number)
    to = target.body.get("to")
    contact = {"input": to, "wa_id": to} if isinstance(to, str) else {"input": target.recipient}
    payload = {
        "messaging_product": "whatsapp",
        "contacts": [contact],
        "messages": [{"id": wamid, "message_status": "accepted"}],
    }
    return payload, wamid


def _serve(file: HostedFile | None) -> Response:
    if file is None:
        return plain_not_found()
    response = Response(file.data, headers={"Cache-Control": "no-store"})
    response.headers["content-type"] = file.mime_type  # no "; charset" appended
    return response


def meta_phone_number(state: ProviderState, sends: SendState
                      ) -> Callable[[Request], Awaitable[Response]]:
    """`GET /{version}/{phone_number_id}?fields=...`: the number's object, for a token the
    number accepts (what a token check asks). Served through the media resolve route, whose
    pattern it shares (see `media_routes`)."""

    async def answer(request: Request) -> Response:
        number = request.path_params["media_id"]
        if not authorized(state, sends, number, bearer_token(request)):
            return unauthorized("meta")
        return JSONResponse({"id": number, "display_phone_number": "15550001234",
                             "verified_name": "Fake Business", "quality_rating": "GREEN"})

    return answer


def health_routes(state: ProviderState, sends: SendState) -> list[BaseRoute]:
    """Whapi `GET /health` (the token's channel and session state) and Chakra
    `GET /v1/health`, both refusing unknown tokens."""

    async def whapi_health(request: Request) -> Response:
        token = bearer_token(request, allow_query=True)
        if token is None or not authorized(state, sends, "", token, whapi=True):
            return unauthorized("whapi")
        return JSONResponse({"channel_id": sends.whapi_sender(token), "uptime": 1,
                             "status": {"code": 4, "text": sends.whapi_status(token)}})

    async def chakra_health(request: Request) -> Response:
        if not authorized(state, sends, "", bearer_token(request)):
            return unauthorized("chakra")
        return JSONResponse(_chakra_ok({"status": "ok"}))

    return [Route("/health", whapi_health, methods=["GET"]),
            Route("/v1/health", chakra_health, methods=["GET"])]


def send_routes(state: ProviderState, sends: SendState) -> list[BaseRoute]:
    async def send(request: Request, provider: str, sender: str) -> Response:
        if not authorized(state, sends, sender, bearer_token(request)):
            return unauthorized(provider)
        body = await json_object(request)
        if body is None:
            return bad_request(provider, "body must be a JSON object")
        target = _validate_meta_body(provider, sender, body)
        if isinstance(target, str):
            return bad_request(provider, target)
        if provider == "meta":
            return await answer_send(sends, request, target, lambda n: _meta_success(target, n))

        def chakra_success(number: int) -> tuple[dict[str, Any], str | None]:
            if target.type == READ:
                return _chakra_ok({"success": True}), None
            wamid = new_wamid(number)
            return _chakra_ok({"whatsappMessageId": wamid}), wamid

        return await answer_send(sends, request, target, chakra_success)

    async def meta_messages(request: Request) -> Response:
        if not _GRAPH_VERSION_RE.fullmatch(request.path_params["version"]):
            return plain_not_found()
        return await send(request, "meta", request.path_params["phone_number_id"])

    async def chakra_messages(request: Request) -> Response:
        if not _GRAPH_VERSION_RE.fullmatch(request.path_params["version"]):
            return plain_not_found()
        return await send(request, "chakra", request.path_params["plugin_id"])

    async def meta_upload(request: Request) -> Response:
        sender = request.path_params["phone_number_id"]
        token = bearer_token(request)
        if not _GRAPH_VERSION_RE.fullmatch(request.path_params["version"]):
            return plain_not_found()
        if token is None or not authorized(state, sends, sender, token):
            return unauthorized("meta")
        form = parse_form(request.headers.get("content-type", ""), await request.body())
        if form is None or "file" not in form.files:
            return bad_request("meta", "multipart/form-data with a file field is required")
        if form.fields.get("messaging_product") != "whatsapp":
            return bad_request("meta", 'messaging_product must be "whatsapp"')
        upload = form.files["file"]
        mime_type = form.fields.get("type") or upload.content_type
        if not mime_type:
            return bad_request("meta", "type is required")
        media = await run_in_threadpool(
            state.add_media,
            upload.data,
            mime_type=mime_type,
            filename=upload.filename,
            provider="meta",
            # Downloadable with the token that uploaded it (a tenant's own token).
            token=None if token == state.token else token,
        )
        return JSONResponse({"id": media.id})

    async def chakra_upload(request: Request) -> Response:
        if not authorized(state, sends, request.path_params["plugin_id"], bearer_token(request)):
            return unauthorized("chakra")
        form = parse_form(request.headers.get("content-type", ""), await request.body())
        if form is None or "file" not in form.files:
            return bad_request("chakra", "multipart/form-data with a file field is required")
        upload = form.files["file"]
        filename = form.fields.get("filename") or upload.filename or "file"
        filename = _UNSAFE_FILENAME_RE.sub("_", filename.rsplit("/", 1)[-1]) or "file"
        mime_type = (
            upload.content_type or mimetypes.guess_type(filename)[0] or "application/octet-stream"
        )
        key = sends.add_public_media(filename, upload.data, mime_type)
        base = str(request.base_url).rstrip("/")
        return JSONResponse(_chakra_ok({"publicMediaUrl": f"{base}/chakra-public-media/{key}"}))

    async def chakra_public_media(request: Request) -> Response:
        return _serve(sends.get_public_media(request.path_params["key"]))

    async def hosted_file(request: Request) -> Response:
        return _serve(sends.get_file(request.path_params["name"]))

    chakra = "/v1/ext/plugin/whatsapp/{plugin_id}"
    return [
        Route("/{version}/{phone_number_id}/messages", meta_messages, methods=["POST"]),
        Route("/{version}/{phone_number_id}/media", meta_upload, methods=["POST"]),
        Route(
            chakra + "/api/{version}/{phone_number_id}/messages", chakra_messages, methods=["POST"]
        ),
        Route(chakra + "/upload-public-media", chakra_upload, methods=["POST"]),
        Route("/chakra-public-media/{key:path}", chakra_public_media, methods=["GET"]),
        Route("/files/{name:path}", hosted_file, methods=["GET"]),
    ]
