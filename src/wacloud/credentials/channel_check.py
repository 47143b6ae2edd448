"""Does a channel's token still work? One cheap read call to its provider, nothing sent.

- Meta: `GET /{version}/{phone_number_id}?fields=id` on the Graph API;
- Chakra: the same Graph read through the channel's plugin (`/v1/ext/plugin/whatsapp/{id}/api`);
- Whapi: `GET /health` of the channel.

200 means the token opens the number; 401, or Meta error 190 (any status), means it does not
(replace it with `wacloud channel set-token`); a 403 or a Meta permission error (10, 200-299)
means the token is valid but lacks a permission for this number; anything else (a 5xx, no
answer) cannot tell. The answer never holds the token or the response body, only the status
and Meta's error code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote

from wacloud.adapters.http.provider_client import ProviderCallError, ProviderClient
from wacloud.domain.model import Channel, Provider, ProviderRequest

Verdict = Literal["valid", "invalid", "no_permission", "unknown"]


@dataclass(frozen=True, slots=True)
class TokenCheck:
    verdict: Verdict
    status: int | None  # the provider's HTTP status; None when no answer came
    error_code: int | None  # Meta's error code, when it gave one
    detail: str  # one line, no secret
    fix: str | None  # what the operator should do; None when valid

    @property
    def ok(self) -> bool:
        return self.verdict == "valid"

    def to_json(self) -> dict[str, object]:
        return {"verdict": self.verdict, "ok": self.ok, "status": self.status,
                "error_code": self.error_code, "detail": self.detail, "fix": self.fix}


def token_check_request(channel: Channel) -> ProviderRequest:
    headers = {"Authorization": f"Bearer {channel.token}"}
    if channel.provider is Provider.WHAPI:
        return ProviderRequest(method="GET", url=f"{channel.base_url}/health", headers=headers)
    number = quote(channel.phone_number_id or channel.key, safe="")
    if channel.provider is Provider.CHAKRA:
        base = (f"{channel.base_url}/v1/ext/plugin/whatsapp/{quote(channel.key, safe='')}"
                f"/api/{channel.graph_version}")
    else:
        base = f"{channel.base_url}/{channel.graph_version}"
    return ProviderRequest(method="GET", url=f"{base}/{number}?fields=id", headers=headers)


def _meta_error_code(body: bytes) -> int | None:
    try:
        error = json.loads(body).get("error")
        code = error.get("code") if isinstance(error, dict) else None
    except (ValueError, AttributeError):
        return None
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def judge(channel: Channel, status: int, body: bytes) -> TokenCheck:
    """The verdict on the provider's answer to `token_check_request`."""
    code = None if channel.provider is Provider.WHAPI else _meta_error_code(body)
    replace = (f"replace the token: wacloud channel set-token {channel.id} --token -  "
               "(reads it from standard input)")
    if 200 <= status < 300:
        return TokenCheck("valid", status, None, "the token works", None)
    if status == 401 or code == 190:
        return TokenCheck("invalid", status, code, "the provider refused the token "
                          f"(HTTP {status}{f', error {code}' if code else ''})", replace)
    if status == 403 or code == 10 or (code is not None and 200 <= code <= 299):
        return TokenCheck("no_permission", status, code, "the token is valid but may not use "
                          f"this number (HTTP {status}{f', error {code}' if code else ''})",
                          "give the token's system user access to this number (WhatsApp "
                          "Manager) or " + replace)
    return TokenCheck("unknown", status, code, f"the provider answered HTTP {status}"
                      + (f", error {code}" if code else ""),
                      "check the channel's ids and API base URL (`wacloud channel list`), "
                      "and try again later")


async def check_token(channel: Channel, client: ProviderClient, timeout: float = 10.0
                      ) -> TokenCheck:
    """Ask the provider whether the channel's token works (one read call)."""
    try:
        response = await client.perform(token_check_request(channel), timeout)
    except ProviderCallError as exc:
        return TokenCheck("unknown", None, None, f"no answer from the provider ({exc.kind})",
                          f"check that {channel.base_url} is reachable from here")
    return judge(channel, response.status_code, response.content)
