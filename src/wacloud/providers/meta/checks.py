"""Meta WhatsApp Cloud API, token checks: read calls on the number's own Graph object, which
need a token allowed to use that number."""

from __future__ import annotations

from urllib.parse import quote

from wacloud.domain.model import Channel, ProviderRequest
from wacloud.providers.token_check import TokenCheck, answer_data, pick, refused

FIELDS = "id,display_phone_number,verified_name,quality_rating"


def token_check_request(channel: Channel) -> ProviderRequest:
    headers = {"Authorization": f"Bearer {channel.token}", "Accept": "application/json"}
    number = channel.phone_number_id or channel.key
    return ProviderRequest(
        "GET", f"{channel.base_url}/{channel.graph_version}/{number}?fields={FIELDS}", headers)


def read_token_check(channel: Channel, status: int, body: bytes) -> TokenCheck:
    data = answer_data(body)
    if 200 <= status < 300:
        return TokenCheck(True, status, details=pick(data, *FIELDS.split(",")))
    return refused(channel, status, data)


def number_check_request(channel: Channel) -> ProviderRequest:
    number = quote(channel.phone_number_id or channel.key, safe="")
    return ProviderRequest(method="GET", url=f"{channel.base_url}/{channel.graph_version}/"
                           f"{number}?fields=id",
                           headers={"Authorization": f"Bearer {channel.token}"})
