"""Error bodies in each provider's own shape, so clients exercise their real error parsing."""

from __future__ import annotations

from starlette.responses import JSONResponse

# Meta's code for each HTTP status the fake can be told to fail with (spec section 4.2).
_META_CODES: dict[int, tuple[int, str]] = {
    400: (100, "Invalid parameter"),
    401: (190, "Error validating access token"),
    403: (10, "Permission denied"),
    404: (100, "Unsupported get request"),
    429: (130429, "Rate limit hit"),
    500: (131000, "Something went wrong"),
    503: (2, "Service temporarily unavailable"),
}


def _retry_headers(status: int) -> dict[str, str]:
    # Lets clients that honour Retry-After be tested without making tests slow.
    return {"Retry-After": "1"} if status in (429, 503) else {}


def meta_error(status: int, message: str | None = None, *, code: int | None = None) -> JSONResponse:
    default_code, default_message = _META_CODES.get(status, (1, "An unknown error occurred"))
    body = {
        "error": {
            "message": message or default_message,
            "type": "OAuthException",
            "code": code if code is not None else default_code,
            "fbtrace_id": "FakeProviderTrace",
        }
    }
    return JSONResponse(body, status_code=status, headers=_retry_headers(status))


def meta_unauthorized() -> JSONResponse:
    return meta_error(401, "Invalid OAuth access token - Cannot parse access token", code=190)


def meta_not_found(media_id: str) -> JSONResponse:
    # Graph answers an unknown or expired object id with 400 / code 100 / subcode 33.
    body = {
        "error": {
            "message": f"Unsupported get request. Object with ID '{media_id}' does not exist, "
            "cannot be loaded due to missing permissions, or does not support this operation.",
            "type": "GraphMethodException",
            "code": 100,
            "error_subcode": 33,
            "fbtrace_id": "FakeProviderTrace",
        }
    }
    return JSONResponse(body, status_code=400)


def whapi_error(status: int, message: str) -> JSONResponse:
    body = {"error": {"code": status, "message": message}}
    return JSONResponse(body, status_code=status, headers=_retry_headers(status))


def chakra_error(status: int, message: str) -> JSONResponse:
    body: dict[str, object] = {
        "_data": None,
        "_meta": {},
        "_errors": [{"code": status, "message": message}],
    }
    return JSONResponse(body, status_code=status, headers=_retry_headers(status))


def plain_not_found() -> JSONResponse:
    return JSONResponse({"error": {"code": 404, "message": "Not found"}}, status_code=404)
