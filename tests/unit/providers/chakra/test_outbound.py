"""Chakra send side: pass-through send, public-media re-hosting, defensive answer parsing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from wacloud.domain.model import Channel, OutboundMessage, Provider, SendOutcome
from wacloud.providers.chakra import outbound as chakra_outbound
from wacloud.providers.errors import UnsupportedMessage
from wacloud.providers.meta import outbound as meta_outbound

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures"
PLUGIN = "3f1c2a9e-8b7d-4c6e-9a51-0d2e4f6b8c10"
TOKEN = "chakra-token-never-shown-55"
BASE = "https://api.chakrahq.com"
PLUGIN_URL = f"{BASE}/v1/ext/plugin/whatsapp/{PLUGIN}"
SEND_URL = f"{PLUGIN_URL}/api/v23.0/106540352242922/messages"
WAMID = "wamid.HBgNNTUxMTk4NzY1NDMyMRUCABEYEjA4RkY3QTAxMjk3MUMxRUJBQQA="
PUBLIC = ("https://chakra-public-media.chakrahq.com/3f1c2a9e-8b7d-4c6e-9a51-0d2e4f6b8c10/"
          "2026-11-12/6b1f4f0e-0d6a-4f57-8f0e-31a5a2f0c9d4.jpg")


def load(name: str) -> bytes:
    return (FIXTURES / "chakra" / "send" / f"{name}.json").read_bytes()


def channel(**overrides: Any) -> Channel:
    values: dict[str, Any] = {"id": 11, "tenant": "acme", "provider": Provider.CHAKRA,
                              "key": PLUGIN, "phone_number_id": "106540352242922",
                              "token": TOKEN}
    values.update(overrides)
    return Channel(**values)


def message(type_: str | None, content: Any, **overrides: Any) -> OutboundMessage:
    values: dict[str, Any] = {"tenant": "acme", "row_id": 5, "channel_key": PLUGIN,
                              "recipient": "5511987654321", "type": type_, "content": content}
    values.update(overrides)
    return OutboundMessage(**values)


CASES = [
    ("text", {"body": "Olá", "preview_url": False}, None),
    ("image", {"link": PUBLIC, "caption": "Produto"}, None),
    ("document", {"id": "1037543291543636", "filename": "NF.pdf"}, WAMID),
    ("template", {"name": "pedido_enviado", "language": {"code": "pt_BR"}}, None),
    ("interactive", {"type": "button", "body": {"text": "Ok?"}, "action": {"buttons": [
        {"type": "reply", "reply": {"id": "y", "title": "Sim"}}]}}, None),
    ("reaction", {"message_id": WAMID, "emoji": "👍"}, None),
    ("location", {"latitude": -23.5, "longitude": -46.6}, None),
    ("contacts", [{"name": {"formatted_name": "Ana"}}], None),
    ("read", {"message_id": WAMID}, None),
]


@pytest.mark.parametrize(("type_", "content", "reply_to"), CASES)
def test_build_is_meta_body_under_plugin_url(type_: str, content: Any,
                                             reply_to: str | None) -> None:
    row = message(type_, content, reply_to=reply_to)
    request = chakra_outbound.build_send(channel(), row)
    assert request.method == "POST"
    assert request.url == SEND_URL
    assert request.headers == {"Authorization": f"Bearer {TOKEN}",
                               "Content-Type": "application/json"}
    assert request.json == meta_outbound.message_body(row)


def test_build_exact_body_with_bsuid() -> None:
    request = chakra_outbound.build_send(channel(), message("text", {"body": "Oi"},
                                                        recipient="BR.1502576394655843"))
    assert request.json == {"messaging_product": "whatsapp", "recipient_type": "individual",
                            "recipient": "BR.1502576394655843", "type": "text",
                            "text": {"body": "Oi"}}


def test_build_needs_phone_number_id() -> None:
    with pytest.raises(chakra_outbound.ChannelMisconfigured):
        chakra_outbound.build_send(channel(phone_number_id=None), message("text", {"body": "x"}))


def test_build_unknown_type_refused() -> None:
    with pytest.raises(UnsupportedMessage):
        chakra_outbound.build_send(channel(), message("order", {"x": 1}))


def test_legacy_row_to_chakra() -> None:
    body = json.dumps({"messaging_product": "whatsapp", "to": "5511987654321", "type": "image",
                       "image": {"link": "https://files.example.com/a.jpg"}})
    row = message(None, {}, request_url=SEND_URL.replace("v23.0", "v19.0"), request_body=body,
                  request_headers="Authorization:Bearer stale;Accept:application/json")
    request = chakra_outbound.build_send(channel(), row)
    assert request.url == SEND_URL.replace("v23.0", "v19.0")
    assert request.headers == {"Accept": "application/json", "Content-Type": "application/json",
                               "Authorization": f"Bearer {TOKEN}"}
    assert request.content == body.encode()
    with pytest.raises(UnsupportedMessage):
        chakra_outbound.build_send(channel(), message(
            None, {}, request_url="https://chakra.evil.example/x", request_body=body))


# ---- media re-hosting ----------------------------------------------------------------------

def test_upload_request() -> None:
    request = chakra_outbound.upload_request(channel(), "foto.jpg", "/tmp/spool/abc", "image/jpeg")
    assert request.method == "POST"
    assert request.url == f"{PLUGIN_URL}/upload-public-media"
    assert request.headers == {"Authorization": f"Bearer {TOKEN}"}
    assert request.files == {"file": ("foto.jpg", "/tmp/spool/abc", "image/jpeg")}
    assert request.data == {"filename": "foto.jpg"}
    assert request.json is None


def test_parse_upload() -> None:
    assert chakra_outbound.parse_upload(200, load("upload")) == PUBLIC


@pytest.mark.parametrize(("status", "body", "temporary", "reason"), [
    (400, load("upload_error"), False, "maximum allowed size"),
    (200, b'{"_data": {}}', False, "without a publicMediaUrl"),
    (200, b'{"_data": {"publicMediaUrl": "ftp://x/y"}}', False, "without a publicMediaUrl"),
    (503, b"<html>down</html>", True, "HTTP 503"),
    (429, b"", True, "HTTP 429"),
])
def test_parse_upload_errors(status: int, body: bytes, temporary: bool, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as info:
        chakra_outbound.parse_upload(status, body)
    assert isinstance(info.value, chakra_outbound.UploadError)
    assert info.value.temporary is temporary


def test_media_link_and_with_link() -> None:
    row = message("document", {"link": "https://files.example.com/nf.pdf",
                               "filename": "NF.pdf", "caption": "Nota"})
    assert chakra_outbound.media_link(row) == "https://files.example.com/nf.pdf"
    moved = chakra_outbound.with_link(row, PUBLIC)
    assert moved.content == {"link": PUBLIC, "filename": "NF.pdf", "caption": "Nota"}
    assert row.content["link"] == "https://files.example.com/nf.pdf"  # the original is untouched
    assert chakra_outbound.media_link(moved) is None  # already on Chakra: not uploaded twice
    assert chakra_outbound.build_send(channel(), moved).json == {
        "messaging_product": "whatsapp", "recipient_type": "individual",
        "to": "5511987654321", "type": "document",
        "document": {"link": PUBLIC, "filename": "NF.pdf", "caption": "Nota"}}


@pytest.mark.parametrize("row", [
    message("text", {"body": "https://files.example.com/a.jpg"}),
    message("image", {"id": "1037543291543636"}),
    message("template", {"name": "x"}),
])
def test_media_link_none(row: OutboundMessage) -> None:
    assert chakra_outbound.media_link(row) is None


def test_with_link_refuses_non_media() -> None:
    with pytest.raises(UnsupportedMessage):
        chakra_outbound.with_link(message("text", {"body": "x"}), PUBLIC)


def test_legacy_media_link_rewritten() -> None:
    body = {"messaging_product": "whatsapp", "to": "5511987654321", "type": "image",
            "image": {"link": "https://files.example.com/a.jpg", "caption": "Olá"}}
    row = message(None, {}, request_url=SEND_URL, request_body=json.dumps(body))
    assert chakra_outbound.media_link(row) == "https://files.example.com/a.jpg"
    moved = chakra_outbound.with_link(row, PUBLIC)
    assert json.loads(moved.request_body or "") == {
        **body, "image": {"link": PUBLIC, "caption": "Olá"}}
    assert chakra_outbound.media_link(message(None, {}, request_url=SEND_URL,
                                          request_body="not json")) is None


# ---- classification ----------------------------------------------------------------------

@pytest.mark.parametrize(("fixture", "wamid"), [
    ("accepted", WAMID),
    ("accepted_wrapped_meta", "wamid.HBgNNTUxMTk4NzY1NDMyMRUCABEYEjBCOEMzNUQ3RjE1QzA1RTc5AA=="),
    ("accepted_raw_meta", "wamid.HBgNNTUxMTk4NzY1NDMyMRUCABEYEjk5QUQyRjY0MTc0RUQ3QTMyAA=="),
    ("read_success", None),
])
def test_accepted(fixture: str, wamid: str | None) -> None:
    result = chakra_outbound.classify(200, load(fixture), {})
    assert result.outcome is SendOutcome.ACCEPTED
    assert result.provider_message_id == wamid


@pytest.mark.parametrize(("fixture", "status", "outcome", "code"), [
    ("error_wrapped", 400, SendOutcome.FAILED, "131047"),
    ("error_flat", 400, SendOutcome.RETRY, "131056"),
    ("error_message_only", 400, SendOutcome.PAUSE, "190"),
    ("error_passthrough", 429, SendOutcome.RETRY, "130429"),
    ("error_chakra_auth", 401, SendOutcome.PAUSE, "UNAUTHORIZED"),
    ("error_wrapped", 200, SendOutcome.FAILED, "131047"),  # an error inside a 2xx
    # Meta's "Object with ID ... does not exist" passed through: the channel is wrong.
    ("error_unknown_phone_number_id", 400, SendOutcome.PAUSE, "100"),
])
def test_classify_errors(fixture: str, status: int, outcome: SendOutcome, code: str) -> None:
    result = chakra_outbound.classify(status, load(fixture), {"Retry-After": "12"})
    assert result.outcome is outcome
    assert result.error is not None
    assert result.error.code == code
    assert result.error.reason
    assert result.recipient_throttled is (code == "131056")
    assert result.channel_throttled is (code == "130429")
    assert result.retry_after == (None if outcome is SendOutcome.FAILED else 12.0)


def test_wrapped_error_details() -> None:
    result = chakra_outbound.classify(400, load("error_wrapped"), {})
    assert result.error is not None
    assert result.error.reason == "(#131047) Re-engagement message"
    assert result.error.details is not None and "24 hours" in result.error.details


def test_shares_meta_code_table() -> None:
    table = json.loads((FIXTURES / "meta" / "send" / "errors.json").read_text(encoding="utf-8"))
    for code, case in table.items():
        wrapped = json.dumps({"_data": None, "_errors": [{"error": case["body"]["error"]}]})
        chakra = chakra_outbound.classify(case["status"], wrapped.encode(), {})
        meta = meta_outbound.classify(case["status"], json.dumps(case["body"]).encode(), {})
        assert (chakra.outcome, chakra.error) == (meta.outcome, meta.error), code


@pytest.mark.parametrize(("status", "outcome"), [
    (500, SendOutcome.RETRY), (502, SendOutcome.RETRY), (429, SendOutcome.RETRY),
    (401, SendOutcome.PAUSE), (400, SendOutcome.FAILED), (404, SendOutcome.FAILED),
])
def test_no_code_falls_back_to_status(status: int, outcome: SendOutcome) -> None:
    assert chakra_outbound.classify(status, b'{"_data": null, "_errors": []}', {}).outcome \
        is outcome


def test_excerpt_hides_token() -> None:
    body = json.dumps({"_errors": [{"message": f"token {TOKEN} is invalid",
                                    "headers": {"Authorization": f"Bearer {TOKEN}"}}]})
    result = chakra_outbound.classify(401, body.encode(), {}, secrets=[TOKEN])
    assert result.response_excerpt is not None
    assert TOKEN not in result.response_excerpt


def test_message_only_error_without_code_gets_http_code() -> None:
    body = b'{"_errors": ["Something failed upstream"]}'
    result = chakra_outbound.classify(502, body, {})
    assert result.outcome is SendOutcome.RETRY
    assert result.error is not None
    assert (result.error.code, result.error.reason) == ("http_502", "Something failed upstream")
