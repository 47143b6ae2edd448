"""HTTP control plane for the outbound side, mirroring the `SendState` helpers.

- `POST /_fake/script`: JSON `{match?, times, status, error_code?, error_message?, delay?,
  retry_after?, provider?, drop?}` -> the script as stored (201); `drop: true` breaks the
  connection off instead of answering.
- `GET /_fake/sent?limit=&window=`: `{count, sent (last `limit`), max_rate_per_sender,
  max_rate_per_recipient, window, duplicates (count of duplicate groups), pending_scripts}`.
- `POST /_fake/files?name=&mime_type=` (raw body) -> `{"path": "/files/<name>", "url": ...}`.
- `POST /_fake/whapi-channel` `{token, channel_id}`; `POST /_fake/sender-token`
  `{sender, token}` (tokens are never echoed back).

`POST /_fake/reset` (in `control_routes`) also clears all of this via `FakeProvider.reset`.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from wacloud.testing.fake_provider.control_routes import _bad_request, _json_object
from wacloud.testing.fake_provider.send_state import SendState

_NUMBER = (int, float)


def _optional(payload: dict[str, Any], key: str, kinds: tuple[type, ...]) -> bool:
    value = payload.get(key)
    return value is None or (isinstance(value, kinds) and not isinstance(value, bool))


def send_control_routes(sends: SendState) -> list[BaseRoute]:
    async def script(request: Request) -> Response:
        payload = await _json_object(request)
        if payload is None:
            return _bad_request("body must be a JSON object")
        times, status = payload.get("times"), payload.get("status")
        if not isinstance(times, int) or not isinstance(status, int):
            return _bad_request("times (int) and status (int) are required")
        checks = {
            "match": (str,),
            "error_code": (int,),
            "error_message": (str,),
            "delay": _NUMBER,
            "retry_after": _NUMBER,
            "provider": (str,),
        }
        for key, kinds in checks.items():
            if not _optional(payload, key, kinds):
                return _bad_request(f"{key} has the wrong type")
        if not isinstance(payload.get("drop", False), bool):
            return _bad_request("drop has the wrong type")
        retry_after = payload.get("retry_after")
        try:
            entry = sends.script(
                payload.get("match"),
                times=times,
                status=status,
                error_code=payload.get("error_code"),
                error_message=payload.get("error_message"),
                delay=float(payload.get("delay") or 0.0),
                retry_after=None if retry_after is None else float(retry_after),
                provider=payload.get("provider"),
                drop=bool(payload.get("drop", False)),
            )
        except ValueError as exc:
            return _bad_request(str(exc))
        return JSONResponse(entry.to_json(), status_code=201)

    async def sent(request: Request) -> Response:
        query = request.query_params
        try:
            window = float(query.get("window") or 1.0)
            limit = int(query["limit"]) if query.get("limit") else None
        except ValueError:
            return _bad_request("window must be a number and limit an integer")
        if window <= 0 or (limit is not None and limit < 0):
            return _bad_request("window must be > 0 and limit >= 0")
        records = sends.sent_snapshot()
        shown = records if limit is None else (records[-limit:] if limit else [])
        return JSONResponse(
            {
                "count": len(records),
                "window": window,
                "max_rate_per_sender": sends.max_rate_per_sender(window),
                "max_rate_per_recipient": sends.max_rate_per_recipient(window),
                "duplicates": len(sends.duplicates()),
                "pending_scripts": [s.to_json() for s in sends.pending_scripts()],
                "sent": [m.to_json() for m in shown],
            }
        )

    async def add_file(request: Request) -> Response:
        name = request.query_params.get("name")
        mime_type = request.query_params.get("mime_type") or "application/octet-stream"
        if not name:
            return _bad_request("name is required")
        try:
            path = sends.add_file(name, await request.body(), mime_type)
        except ValueError as exc:
            return _bad_request(str(exc))
        base = str(request.base_url).rstrip("/")
        return JSONResponse({"path": path, "url": base + path}, status_code=201)

    async def whapi_channel(request: Request) -> Response:
        payload = await _json_object(request)
        token = None if payload is None else payload.get("token")
        channel_id = None if payload is None else payload.get("channel_id")
        if not isinstance(token, str) or not isinstance(channel_id, str):
            return _bad_request("token (str) and channel_id (str) are required")
        try:
            sends.set_whapi_channel(token, channel_id)
        except ValueError as exc:
            return _bad_request(str(exc))
        return JSONResponse({"channel_id": channel_id})

    async def sender_token(request: Request) -> Response:
        payload = await _json_object(request)
        token = None if payload is None else payload.get("token")
        sender = None if payload is None else payload.get("sender")
        if not isinstance(token, str) or not isinstance(sender, str):
            return _bad_request("sender (str) and token (str) are required")
        try:
            sends.set_sender_token(sender, token)
        except ValueError as exc:
            return _bad_request(str(exc))
        return JSONResponse({"sender": sender})

    return [
        Route("/_fake/script", script, methods=["POST"]),
        Route("/_fake/sent", sent, methods=["GET"]),
        Route("/_fake/files", add_file, methods=["POST"]),
        Route("/_fake/whapi-channel", whapi_channel, methods=["POST"]),
        Route("/_fake/sender-token", sender_token, methods=["POST"]),
    ]
