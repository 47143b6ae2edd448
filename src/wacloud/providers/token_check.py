"""Is a channel's token accepted? One cheap, read-only provider call per provider, and what
its answer means.

- Meta: `GET /{version}/{phone_number_id}?fields=...` (the number's own object: it needs a
  token allowed to use that number).
- Whapi: `GET /health` (the channel of the token, with its session state: `AUTH` is good,
  `QR`, `STOP`, ... mean the session cannot send).
- Chakra: `GET /v1/health` (what Chakra's integrations use to test a key).

The answer never carries the token: errors are redacted like send errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wacloud.domain.model import Channel, Provider, ProviderRequest
from wacloud.providers.errors import graph_error, load_json, redact_error

META_FIELDS = "id,display_phone_number,verified_name,quality_rating"


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


def check_request(channel: Channel) -> ProviderRequest:
    headers = {"Authorization": f"Bearer {channel.token}", "Accept": "application/json"}
    if channel.provider is Provider.META:
        number = channel.phone_number_id or channel.key
        return ProviderRequest(
            "GET", f"{channel.base_url}/{channel.graph_version}/{number}?fields={META_FIELDS}",
            headers)
    if channel.provider is Provider.WHAPI:
        return ProviderRequest("GET", f"{channel.base_url}/health", headers)
    return ProviderRequest("GET", f"{channel.base_url}/v1/health", headers)


def _pick(data: Any, *names: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        return {}
    return {name: data[name] for name in names
            if isinstance(data.get(name), str | int | float | bool)}


def read_answer(channel: Channel, status: int, body: bytes) -> TokenCheck:
    """What the provider's answer to `check_request` says about the token."""
    payload = load_json(body)
    data: dict[str, Any] = payload if isinstance(payload, dict) else {}
    if channel.provider is Provider.CHAKRA and ("_data" in data or "_errors" in data):
        # Chakra's wrapper: `{_data, _meta, _errors}`, Meta's error possibly passed through.
        found_data = data.get("_data")
        inner: dict[str, Any] = found_data if isinstance(found_data, dict) else {}
        errors = data.get("_errors")
        wrapped = inner.get("error") or (errors[0] if isinstance(errors, list) and errors
                                         else None)
        data = {**inner, **({"error": wrapped} if wrapped else {})}
    if 200 <= status < 300:
        if channel.provider is Provider.WHAPI:
            state = data.get("status")
            text = state.get("text") if isinstance(state, dict) else None
            details = {"channel_id": data.get("channel_id"), "status": text}
            if text is not None and text != "AUTH":
                return TokenCheck(False, status, "session",
                                  f"the token is accepted but the session is {text}: it "
                                  "cannot send until it is fixed (QR scan, subscription)",
                                  details)
            return TokenCheck(True, status, details=details)
        if channel.provider is Provider.META:
            return TokenCheck(True, status, details=_pick(data, *META_FIELDS.split(",")))
        return TokenCheck(True, status)
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
