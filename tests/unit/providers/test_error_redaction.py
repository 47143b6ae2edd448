"""A provider error that echoes the channel's token must not carry it into the row, the
channel's pause reason or the logs (the send stage stores `SendResult.error` as is)."""

from __future__ import annotations

import json

import pytest

from wacloud.domain.model import SendOutcome
from wacloud.providers.chakra import outbound as chakra_outbound
from wacloud.providers.meta import outbound as meta_outbound
from wacloud.providers.whapi import outbound as whapi_outbound

TOKEN = "tenant-token-Zx81-q"  # not shaped like a Meta token: only the exact value can catch it


def test_meta_error_reason_and_details_lose_the_echoed_token() -> None:
    body = json.dumps({"error": {
        "message": f"(#190) Error validating access token {TOKEN}", "code": 190,
        "error_data": {"details": f"token={TOKEN} Bearer {TOKEN}"}}}).encode()

    result = meta_outbound.classify(401, body, {}, secrets=[TOKEN])

    assert result.outcome is SendOutcome.PAUSE
    assert result.error is not None
    assert result.error.reason == "(#190) Error validating access token [redacted]"
    assert TOKEN not in (result.error.details or "")
    assert TOKEN not in (result.response_excerpt or "")


def test_chakra_error_reason_loses_the_echoed_token() -> None:
    body = json.dumps({"_data": {"error": {"message": f"(#131026) bad {TOKEN}",
                                           "code": 131026}}}).encode()

    result = chakra_outbound.classify(400, body, {}, secrets=[TOKEN])

    assert result.error is not None and TOKEN not in result.error.reason


@pytest.mark.parametrize("status", [401, 400, 503])
def test_whapi_error_reason_loses_the_echoed_token(status: int) -> None:
    body = json.dumps({"error": {"code": status, "message": f"Unauthorized token {TOKEN}",
                                 "details": f"got {TOKEN}"}}).encode()

    result = whapi_outbound.classify(status, body, {}, secrets=[TOKEN])

    assert result.error is not None
    assert TOKEN not in result.error.reason and TOKEN not in (result.error.details or "")


def test_readable_reasons_are_left_alone() -> None:
    message = "Error validating access token: Session has expired on Monday, 09-Nov-26."
    body = json.dumps({"error": {"message": message, "code": 190}}).encode()

    result = meta_outbound.classify(401, body, {}, secrets=[TOKEN])

    assert result.error is not None and result.error.reason == message
