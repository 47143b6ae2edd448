"""API Gateway HTTP API / Lambda function URL events (payload format 2.0) as ASGI requests.

The receiver hands each event to the same ASGI app `wacloud serve` answers webhooks with, so
the checks are the same code; the answer goes back in the proxy shape (`statusCode`,
`headers`, `body`).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from wacloud.hosting.webhooks import ASGIApp, Message


def request_path(event: Mapping[str, Any]) -> str:
    """The path as the client sent it, without the HTTP API stage's prefix (a `$default`
    stage has none; a named one, `/prod/webhooks/meta`, does)."""
    context = event.get("requestContext") or {}
    path = str(event.get("rawPath") or (context.get("http") or {}).get("path") or "/")
    stage = context.get("stage")
    if stage and stage != "$default" and path.startswith(f"/{stage}/"):
        path = path[len(stage) + 1:]
    return path


def request_body(event: Mapping[str, Any]) -> bytes:
    body = event.get("body") or ""
    if event.get("isBase64Encoded"):
        return base64.b64decode(body)
    return body.encode() if isinstance(body, str) else bytes(body)


def scope_of(event: Mapping[str, Any]) -> dict[str, Any]:
    context = event.get("requestContext") or {}
    http = context.get("http") or {}
    path = request_path(event)
    # Payload 2.0 joins repeated headers with commas and gives cookies apart. Its text is
    # Unicode: UTF-8 gives back the bytes a client sent, whatever they were.
    headers = [(str(name).lower().encode(), str(value).encode())
               for name, value in (event.get("headers") or {}).items()]
    if event.get("cookies"):
        headers.append((b"cookie", "; ".join(event["cookies"]).encode()))
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": str(http.get("protocol") or "HTTP/1.1").removeprefix("HTTP/"),
        "method": str(http.get("method") or "GET").upper(), "scheme": "https",
        "path": unquote(path), "raw_path": path.encode(), "root_path": "",
        "query_string": str(event.get("rawQueryString") or "").encode(),
        "headers": headers, "client": (str(http.get("sourceIp") or ""), 0),
        "server": (str(context.get("domainName") or "lambda"), 443),
    }


async def call(app: ASGIApp, event: Mapping[str, Any]) -> dict[str, Any]:
    """Answer `event` with `app`; the answer as Lambda's proxy response."""
    body = request_body(event)
    sent = False
    status = 500
    headers: dict[str, str] = {}
    chunks: list[bytes] = []

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])
            for name, value in message.get("headers") or []:
                key = name.decode("latin-1").lower()
                text = value.decode("latin-1")
                headers[key] = f"{headers[key]},{text}" if key in headers else text
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope_of(event), receive, send)
    headers.pop("content-length", None)  # API Gateway sets its own
    data = b"".join(chunks)
    try:
        return {"statusCode": status, "headers": headers, "body": data.decode("utf-8"),
                "isBase64Encoded": False}
    except UnicodeDecodeError:
        return {"statusCode": status, "headers": headers,
                "body": base64.b64encode(data).decode(), "isBase64Encoded": True}
