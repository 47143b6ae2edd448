"""Chakra, token checks: `GET /v1/health` (what Chakra's integrations use to test a key), and
the number's Graph object read through the channel's plugin."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from wacloud.domain.model import Channel, ProviderRequest
from wacloud.providers.token_check import TokenCheck, answer_data, refused


def token_check_request(channel: Channel) -> ProviderRequest:
    headers = {"Authorization": f"Bearer {channel.token}", "Accept": "application/json"}
    return ProviderRequest("GET", f"{channel.base_url}/v1/health", headers)


def _unwrapped(data: dict[str, Any]) -> dict[str, Any]:
    """Chakra's wrapper `{_data, _meta, _errors}` opened, Meta's error possibly passed
    through."""
    if "_data" not in data and "_errors" not in data:
        return data
    found_data = data.get("_data")
    inner: dict[str, Any] = found_data if isinstance(found_data, dict) else {}
    errors = data.get("_errors")
    wrapped = inner.get("error") or (errors[0] if isinstance(errors, list) and errors else None)
    return {**inner, **({"error": wrapped} if wrapped else {})}


def read_token_check(channel: Channel, status: int, body: bytes) -> TokenCheck:
    data = _unwrapped(answer_data(body))
    if 200 <= status < 300:
        return TokenCheck(True, status)
    return refused(channel, status, data)


def number_check_request(channel: Channel) -> ProviderRequest:
    number = quote(channel.phone_number_id or channel.key, safe="")
    base = (f"{channel.base_url}/v1/ext/plugin/whatsapp/{quote(channel.key, safe='')}"
            f"/api/{channel.graph_version}")
    return ProviderRequest(method="GET", url=f"{base}/{number}?fields=id",
                           headers={"Authorization": f"Bearer {channel.token}"})
