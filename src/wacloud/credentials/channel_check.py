"""Does a channel's token still work? One cheap read call to its provider, nothing sent
(the provider's `number_check_request`: Meta's Graph read of the number, the same through a
Chakra plugin, Whapi's `GET /health`).

200 means the token opens the number; 401, or Meta error 190 (any status), means it does not
(replace it with `wacloud channel set-token`); a 403 or a Meta permission error (10, 200-299)
means the token is valid but lacks a permission for this number; anything else (a 5xx, no
answer) cannot tell. The answer never holds the token or the response body, only the status
and Meta's error code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from wacloud.adapters.http.provider_client import ProviderCallError, ProviderClient
from wacloud.domain.model import Channel
from wacloud.providers import port

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


def judge(channel: Channel, status: int, body: bytes) -> TokenCheck:
    """The verdict on the provider's answer to its `number_check_request`."""
    code = port(channel.provider).check_error_code(body)
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
        response = await client.perform(port(channel.provider).number_check_request(channel),
                                         timeout)
    except ProviderCallError as exc:
        return TokenCheck("unknown", None, None, f"no answer from the provider ({exc.kind})",
                          f"check that {channel.base_url} is reachable from here")
    return judge(channel, response.status_code, response.content)
