"""The credentials broker as an AWS Lambda handler (the original system's "Get Meta
Credentials" function, now authenticated and audited).

`handler(event, context)` takes either an API Gateway / function URL proxy event (`headers`,
`body`, `isBase64Encoded`) or a direct invocation `{"provider": ..., "id": ..., "headers":
{"Authorization": "Bearer KEY"}}`, and answers in the proxy shape (`statusCode`, `headers`,
`body` as JSON text). Settings come from the environment (`WACLOUD_REGISTRY_URL`,
`WACLOUD_ENCRYPTION_KEY`, ...); the registry connection and the broker's cache live as long
as the warm container.
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Callable
from typing import Any

from wacloud.bootstrap import open_credentials, open_registry
from wacloud.credentials.service import CredentialsService
from wacloud.settings import Settings, load_settings

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]


def _body(event: dict[str, Any]) -> bytes | str:
    if "body" in event:
        body = event.get("body") or ""
        if event.get("isBase64Encoded") and isinstance(body, str):
            return base64.b64decode(body)
        return body if isinstance(body, bytes | str) else json.dumps(body)
    return json.dumps({k: v for k, v in event.items() if k not in {"headers", "requestContext"}})


def _source(event: dict[str, Any]) -> str | None:
    context = event.get("requestContext") or {}
    http = context.get("http") or {}
    identity = context.get("identity") or {}
    source = http.get("sourceIp") or identity.get("sourceIp")
    return str(source) if source else None


def build_handler(settings: Settings) -> Handler:
    registry = open_registry(settings)
    broker = open_credentials(settings, registry)
    service = CredentialsService(broker, settings.tenants_dir)

    def handle(event: dict[str, Any], context: Any) -> dict[str, Any]:
        headers = {str(k).lower(): v for k, v in (event.get("headers") or {}).items()}
        answer = service.handle(headers.get("authorization"), _body(event), via="lambda",
                                source=_source(event))
        return {"statusCode": answer.status,
                "headers": {"Content-Type": "application/json", "Cache-Control": "no-store"},
                "body": json.dumps(answer.body)}

    return handle


@functools.cache
def _default_handler() -> Handler:
    return build_handler(load_settings())


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The Lambda entry point: `wacloud.hosting.lambda_credentials.handler`."""
    return _default_handler()(event, context)
