"""What each provider's answer to a token check means (each port's `token_check_request` and
`read_token_check`, sharing `wacloud.providers.token_check`); the calls themselves run against
the fake provider in tests/unit/hosting/test_admin_api.py."""

from __future__ import annotations

import json

import pytest

from wacloud.domain.model import Channel, Provider, ProviderRequest
from wacloud.providers import port
from wacloud.providers.token_check import TokenCheck

TOKEN = "EAAGm0PX4ZCpsBAKZC0secret0token0value0123456789"


def channel(provider: Provider) -> Channel:
    return Channel(id=1, tenant="acme", provider=provider, key="K1", phone_number_id="555",
                   token=TOKEN)


def check_request(checked: Channel) -> ProviderRequest:
    return port(checked.provider).token_check_request(checked)


def read_answer(checked: Channel, status: int, body: bytes) -> TokenCheck:
    return port(checked.provider).read_token_check(checked, status, body)


def test_the_requests_are_cheap_reads_of_each_provider() -> None:
    meta = check_request(channel(Provider.META))
    assert (meta.method, meta.url.split("?")[0]) == ("GET",
                                                     "https://graph.facebook.com/v23.0/555")
    assert check_request(channel(Provider.WHAPI)).url == "https://gate.whapi.cloud/health"
    assert check_request(channel(Provider.CHAKRA)).url == "https://api.chakrahq.com/v1/health"
    assert all(r.headers["Authorization"] == f"Bearer {TOKEN}" for r in (meta,))


@pytest.mark.parametrize(("provider", "status", "body", "ok", "code"), [
    (Provider.META, 200, {"id": "555", "verified_name": "Acme"}, True, None),
    (Provider.META, 401, {"error": {"message": f"Invalid OAuth access token {TOKEN}",
                                    "code": 190}}, False, "190"),
    (Provider.CHAKRA, 200, {"_data": {"status": "ok"}, "_errors": []}, True, None),
    (Provider.CHAKRA, 400, {"_data": {"error": {"message": "(#190) expired", "code": 190}}},
     False, "190"),
    (Provider.CHAKRA, 401, {"_data": None, "_errors": [{"code": 401,
                                                        "message": "Unauthorized"}]},
     False, "401"),
    (Provider.WHAPI, 200, {"channel_id": "K1", "status": {"code": 4, "text": "AUTH"}}, True,
     None),
    (Provider.WHAPI, 200, {"status": {"code": 2, "text": "QR"}}, False, "session"),
    (Provider.WHAPI, 401, {"error": {"code": 401, "message": "Unauthorized"}}, False, "401"),
    (Provider.WHAPI, 502, "<html>bad gateway</html>", False, "http_502"),
])
def test_answers_are_read_without_ever_showing_the_token(
        provider: Provider, status: int, body: object, ok: bool, code: str | None) -> None:
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    check = read_answer(channel(provider), status, raw)
    assert (check.ok, check.error_code) == (ok, code)
    assert (check.error is None) == ok
    assert TOKEN not in json.dumps(check.to_dict())
