"""Is a channel's token accepted? What every provider's answer to its token check shares.

Each provider builds its own cheap, read-only call and reads a success its own way
(`ProviderPort.token_check_request`, `read_token_check`); an error answer is read here, the
same for all. The answer never carries the token: errors are redacted like send errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wacloud.domain.model import Channel
from wacloud.providers.errors import graph_error, load_json, redact_error


@dataclass(frozen=True, slots=True)
class TokenCheck:
    """`ok`: the provider accepted the token (and, for Whapi, the session can send)."""

    ok: bool
    http_status: int | None
    error_code: str | None = None
    error: str | None = None
    details: dict[str, Any] | None = None  # what the provider said about the number

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "http_status": self.http_status, "error_code": self.error_code,
                "error": self.error, "details": self.details or {}}


def pick(data: Any, *names: str) -> dict[str, Any]:
    """The plain (text, number, flag) values of `names` in an answer."""
    if not isinstance(data, dict):
        return {}
    return {name: data[name] for name in names
            if isinstance(data.get(name), str | int | float | bool)}


def answer_data(body: bytes) -> dict[str, Any]:
    payload = load_json(body)
    return payload if isinstance(payload, dict) else {}


def refused(channel: Channel, status: int, data: dict[str, Any]) -> TokenCheck:
    """A non-2xx answer: the provider's error (Graph's `error`, or Whapi's own `message`)."""
    found = graph_error(data.get("error")) if "error" in data else None
    if found is None and isinstance(data.get("message"), str):  # Whapi's own error shape
        found = graph_error({"message": data["message"], "code": data.get("code")})
    if found is not None:
        error = redact_error(found.error, [channel.token])
        code = error.code or f"http_{status}"
        reason = error.reason
    else:
        code, reason = f"http_{status}", f"HTTP {status} without a provider error"
    if status in (401, 403):
        reason = f"the provider refused the token: {reason}"
    return TokenCheck(False, status, code, reason)
