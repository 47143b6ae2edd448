"""Provider-shaped error answers for the send endpoints (spec sections 4, 5.4 and 6)."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from wacloud.testing.fake_provider.send_state import Script

# Default Meta error code for an HTTP status when a script gives none.
_META_CODE_FOR_STATUS: dict[int, int] = {
    400: 100,
    401: 190,
    403: 10,
    404: 100,
    429: 130429,
    500: 131000,
    503: 131016,
}

# Titles of the send-relevant Graph codes (spec section 4.2).
META_TITLES: dict[int, str] = {
    1: "API Unknown",
    2: "Service temporarily unavailable",
    4: "Application request limit reached",
    10: "Permission denied",
    100: "Invalid parameter",
    190: "Access token has expired",
    368: "Temporarily blocked for policies violations",
    80007: "Rate limit issues",
    130429: "Rate limit hit",
    131000: "Something went wrong",
    131005: "Access denied",
    131008: "Required parameter is missing",
    131009: "Parameter value is not valid",
    131016: "Service unavailable",
    131021: "Recipient cannot be sender",
    131026: "Message undeliverable",
    131047: "Re-engagement message",
    131048: "Spam rate limit hit",
    131049: "This message was not delivered to maintain healthy ecosystem engagement",
    131051: "Unsupported message type",
    131053: "Media upload error",
    131056: "(Business Account, Consumer Account) pair rate limit hit",
    131057: "Account in maintenance mode",
    132001: "Template does not exist",
    133004: "Server temporarily unavailable",
}


def _format_seconds(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


def _headers(retry_after: float | None) -> dict[str, str]:
    return {} if retry_after is None else {"Retry-After": _format_seconds(retry_after)}


def meta_send_error(
    status: int,
    code: int | None = None,
    message: str | None = None,
    *,
    retry_after: float | None = None,
) -> JSONResponse:
    code = code if code is not None else _META_CODE_FOR_STATUS.get(status, 1)
    title = message or META_TITLES.get(code, "Scripted failure")
    body: dict[str, Any] = {
        "error": {
            "message": f"(#{code}) {title}",
            "type": "OAuthException",
            "code": code,
            "error_data": {"messaging_product": "whatsapp", "details": title},
            "fbtrace_id": "FakeProviderTrace",
        }
    }
    return JSONResponse(body, status_code=status, headers=_headers(retry_after))


def whapi_send_error(
    status: int, message: str | None = None, *, retry_after: float | None = None
) -> JSONResponse:
    body = {"error": {"code": status, "message": message or "Scripted failure"}}
    return JSONResponse(body, status_code=status, headers=_headers(retry_after))


def chakra_send_error(
    status: int,
    code: int | None = None,
    message: str | None = None,
    *,
    retry_after: float | None = None,
) -> JSONResponse:
    error = {"code": code if code is not None else status, "message": message or "Scripted failure"}
    body: dict[str, Any] = {"_data": None, "_meta": {}, "_errors": [error]}
    return JSONResponse(body, status_code=status, headers=_headers(retry_after))


def scripted_error(provider: str, script: Script) -> JSONResponse:
    if provider == "whapi":
        return whapi_send_error(script.status, script.error_message, retry_after=script.retry_after)
    if provider == "chakra":
        return chakra_send_error(
            script.status, script.error_code, script.error_message, retry_after=script.retry_after
        )
    return meta_send_error(
        script.status, script.error_code, script.error_message, retry_after=script.retry_after
    )


def unauthorized(provider: str) -> JSONResponse:
    if provider == "whapi":
        return whapi_send_error(401, "Unauthorized")
    if provider == "chakra":
        return chakra_send_error(401, 401, "Unauthorized")
    return meta_send_error(401, 190, "Invalid OAuth access token - Cannot parse access token")


def bad_request(provider: str, message: str) -> JSONResponse:
    if provider == "whapi":
        return whapi_send_error(400, message)
    if provider == "chakra":
        return chakra_send_error(400, 100, message)
    return meta_send_error(400, 100, message)
