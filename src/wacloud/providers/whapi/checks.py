"""Whapi.Cloud, token checks: `GET /health`, the channel of the token with its session state
(`AUTH` is good; `QR`, `STOP`, ... mean the session cannot send)."""

from __future__ import annotations

from wacloud.domain.model import Channel, ProviderRequest
from wacloud.providers.token_check import TokenCheck, answer_data, refused


def token_check_request(channel: Channel) -> ProviderRequest:
    headers = {"Authorization": f"Bearer {channel.token}", "Accept": "application/json"}
    return ProviderRequest("GET", f"{channel.base_url}/health", headers)


def read_token_check(channel: Channel, status: int, body: bytes) -> TokenCheck:
    data = answer_data(body)
    if not 200 <= status < 300:
        return refused(channel, status, data)
    state = data.get("status")
    text = state.get("text") if isinstance(state, dict) else None
    details = {"channel_id": data.get("channel_id"), "status": text}
    if text is not None and text != "AUTH":
        return TokenCheck(False, status, "session",
                          f"the token is accepted but the session is {text}: it "
                          "cannot send until it is fixed (QR scan, subscription)", details)
    return TokenCheck(True, status, details=details)


def number_check_request(channel: Channel) -> ProviderRequest:
    return ProviderRequest(method="GET", url=f"{channel.base_url}/health",
                           headers={"Authorization": f"Bearer {channel.token}"})
