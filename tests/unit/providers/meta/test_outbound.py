"""Meta send side: request building for every type, legacy rows, and error classification."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest

from wacloud.domain.model import Channel, OutboundMessage, Provider, SendOutcome
from wacloud.providers import errors
from wacloud.providers.errors import UnsupportedMessage
from wacloud.providers.meta import outbound as meta_outbound

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures" / "meta" / "send"
TOKEN = "EAAGm0PX4ZCpsBAKZBmeta-token-never-shown-91"
URL = "https://graph.facebook.com/v23.0/106540352242922/messages"
WAMID = "wamid.HBgNNTUxMTk4NzY1NDMyMRUCABEYEjA4RkY3QTAxMjk3MUMxRUJBQQA="
ERRORS: dict[str, Any] = json.loads((FIXTURES / "errors.json").read_text(encoding="utf-8"))


def load(name: str) -> bytes:
    return (FIXTURES / f"{name}.json").read_bytes()


def channel(**overrides: Any) -> Channel:
    values: dict[str, Any] = {"id": 7, "tenant": "acme", "provider": Provider.META,
                              "key": "106540352242922", "phone_number_id": "106540352242922",
                              "token": TOKEN}
    values.update(overrides)
    return Channel(**values)


def message(type_: str | None, content: Any, **overrides: Any) -> OutboundMessage:
    values: dict[str, Any] = {"tenant": "acme", "row_id": 42, "channel_key": "106540352242922",
                              "recipient": "5511987654321", "type": type_, "content": content}
    values.update(overrides)
    return OutboundMessage(**values)


def envelope(type_: str, content: Any, **extra: Any) -> dict[str, Any]:
    return {"messaging_product": "whatsapp", "recipient_type": "individual",
            "to": "5511987654321", "type": type_, type_: content, **extra}


TEMPLATE = {"name": "pedido_enviado", "language": {"code": "pt_BR"}, "components": [
    {"type": "header", "parameters": [{"type": "image",
                                       "image": {"link": "https://cdn.example.com/p.jpg"}}]},
    {"type": "body", "parameters": [{"type": "text", "text": "Maria"},
                                    {"type": "text", "text": "#8812"}]},
    {"type": "button", "sub_type": "url", "index": "0",
     "parameters": [{"type": "text", "text": "8812"}]}]}
BUTTONS = {"type": "button", "body": {"text": "Confirma a entrega amanhã?"}, "action": {
    "buttons": [{"type": "reply", "reply": {"id": "conf_yes", "title": "Sim"}},
                {"type": "reply", "reply": {"id": "conf_no", "title": "Não"}}]}}
LIST = {"type": "list", "body": {"text": "Escolha um horário"}, "action": {
    "button": "Horários", "sections": [{"title": "Amanhã", "rows": [
        {"id": "slot_09", "title": "09:00", "description": "Manhã"}]}]}}
CTA = {"type": "cta_url", "body": {"text": "Acompanhe seu pedido"}, "action": {
    "name": "cta_url", "parameters": {"display_text": "Rastrear",
                                      "url": "https://loja.example/r/8812"}}}
FLOW = {"type": "flow", "body": {"text": "Agende"}, "action": {"name": "flow", "parameters": {
    "flow_message_version": "3", "flow_id": "1234567890", "flow_cta": "Agendar"}}}
CONTACT = {"name": {"formatted_name": "Suporte Loja", "first_name": "Suporte"},
           "phones": [{"phone": "+551140001234", "type": "WORK"}]}

CASES = [
    ("text", {"preview_url": True, "body": "Seu pedido: https://loja.example/r/8812"}),
    ("image", {"link": "https://cdn.example.com/p.jpg", "caption": "Produto"}),
    ("image", {"id": "1037543291543636"}),
    ("video", {"link": "https://cdn.example.com/v.mp4", "caption": "Vídeo"}),
    ("audio", {"id": "1037543291543636"}),
    ("audio", {"link": "https://cdn.example.com/a.ogg"}),
    ("document", {"link": "https://cdn.example.com/nf/8812.pdf", "filename": "NF-8812.pdf",
                  "caption": "Nota fiscal"}),
    ("sticker", {"id": "798882015472548"}),
    ("template", TEMPLATE),
    ("interactive", BUTTONS),
    ("interactive", LIST),
    ("interactive", CTA),
    ("interactive", FLOW),
    ("location", {"latitude": -23.5614, "longitude": -46.6559, "name": "Loja Paulista",
                  "address": "Av. Paulista, 1000"}),
]


@pytest.mark.parametrize(("type_", "content"), CASES)
def test_build_every_type(type_: str, content: dict[str, Any]) -> None:
    request = meta_outbound.build_send(channel(), message(type_, content))
    assert request.method == "POST"
    assert request.url == URL
    assert request.headers == {"Authorization": f"Bearer {TOKEN}",
                               "Content-Type": "application/json"}
    assert request.json == envelope(type_, content)
    assert request.content is None


def test_build_reaction_has_no_context() -> None:
    content = {"message_id": WAMID, "emoji": "👍"}
    request = meta_outbound.build_send(channel(), message("reaction", content, reply_to=WAMID))
    assert request.json == envelope("reaction", content)


@pytest.mark.parametrize("content", [[CONTACT], {"contacts": [CONTACT]}, CONTACT])
def test_build_contacts(content: Any) -> None:
    request = meta_outbound.build_send(channel(), message("contacts", content))
    assert request.json == envelope("contacts", [CONTACT])


def test_build_reply_context() -> None:
    content = {"body": "Sim, saiu hoje."}
    request = meta_outbound.build_send(channel(), message("text", content, reply_to=WAMID))
    assert request.json == envelope("text", content, context={"message_id": WAMID})


@pytest.mark.parametrize("recipient", ["BR.1502576394655843", "US.ENT.118273645"])
def test_build_bsuid_recipient(recipient: str) -> None:
    request = meta_outbound.build_send(channel(), message("text", {"body": "Oi"},
                                                      recipient=recipient))
    assert request.json == {"messaging_product": "whatsapp", "recipient_type": "individual",
                            "recipient": recipient, "type": "text", "text": {"body": "Oi"}}


@pytest.mark.parametrize("recipient", ["5511987654321", "+5511987654321", "551198765432"])
def test_phone_is_not_bsuid(recipient: str) -> None:
    assert not meta_outbound.is_bsuid(recipient)


def test_build_mark_as_read() -> None:
    request = meta_outbound.build_send(channel(), message("read", {"message_id": WAMID},
                                                      recipient=None))
    assert request.url == URL
    assert request.json == {"messaging_product": "whatsapp", "status": "read",
                            "message_id": WAMID}


def test_build_mark_as_read_with_typing() -> None:
    content = {"message_id": WAMID, "typing_indicator": {"type": "text"}}
    request = meta_outbound.build_send(channel(), message("read", content))
    assert request.json == {"messaging_product": "whatsapp", "status": "read",
                            "message_id": WAMID, "typing_indicator": {"type": "text"}}


def test_url_uses_key_without_phone_number_id_and_custom_base() -> None:
    ch = channel(phone_number_id=None, api_base_url="https://graph.example.net/",
                 graph_version="v25.0")
    request = meta_outbound.build_send(ch, message("text", {"body": "Oi"}))
    assert request.url == "https://graph.example.net/v25.0/106540352242922/messages"


@pytest.mark.parametrize(("type_", "content", "recipient", "reason"), [
    (None, {"body": "x"}, "5511987654321", "no type"),
    ("order", {"x": 1}, "5511987654321", "not supported"),
    ("text", {"body": "x"}, None, "no recipient"),
    ("text", {}, "5511987654321", "no content"),
    ("read", {}, None, "message_id"),
    ("contacts", {}, "5511987654321", "no content"),
])
def test_build_unsupported(type_: str | None, content: Any, recipient: str | None,
                           reason: str) -> None:
    with pytest.raises(UnsupportedMessage, match=reason) as info:
        meta_outbound.build_send(channel(), message(type_, content, recipient=recipient))
    assert isinstance(info.value, ValueError)
    assert reason in info.value.reason


LEGACY_BODY = ('{"messaging_product":"whatsapp","to":"5511987654321","type":"text",'
               '"text":{"body":"Olá"}}')


def legacy(url: str = URL, headers: str | None = None) -> OutboundMessage:
    return message(None, {}, request_url=url, request_body=LEGACY_BODY, request_headers=headers)


def test_legacy_replayed_as_is_without_its_authorization() -> None:
    row = legacy(headers="Content-Type:application/json; charset=utf-8;"
                         "Authorization:Bearer OLD-LEAKED-TOKEN;X-Trace:abc;authorization:x")
    request = meta_outbound.build_send(channel(), row)
    assert request.method == "POST"
    assert request.url == URL
    assert request.content == LEGACY_BODY.encode("utf-8")
    assert request.json is None
    assert request.headers == {"Content-Type": "application/json; charset=utf-8",
                               "X-Trace": "abc", "Authorization": f"Bearer {TOKEN}"}


def test_legacy_defaults_content_type() -> None:
    request = meta_outbound.build_send(channel(), legacy(headers=None))
    assert request.headers == {"Content-Type": "application/json",
                               "Authorization": f"Bearer {TOKEN}"}


def test_legacy_same_origin_with_explicit_default_port() -> None:
    url = "https://GRAPH.facebook.com:443/v17.0/106540352242922/messages"
    assert meta_outbound.build_send(channel(), legacy(url)).url == url


@pytest.mark.parametrize("url", [
    "https://evil.example.com/v23.0/106540352242922/messages",
    "http://graph.facebook.com/v23.0/106540352242922/messages",
    "https://graph.facebook.com:8443/v23.0/106540352242922/messages",
    "https://graph.facebook.com.evil.example/v23.0/x/messages",
    "ftp://graph.facebook.com/x",
    "not a url",
])
def test_legacy_foreign_host_refused(url: str) -> None:
    with pytest.raises(UnsupportedMessage, match="not the channel's API host"):
        meta_outbound.build_send(channel(), legacy(url))


# ---- classification ----------------------------------------------------------------------

def test_accepted() -> None:
    result = meta_outbound.classify(200, load("accepted"), {})
    assert result.outcome is SendOutcome.ACCEPTED
    assert result.provider_message_id == WAMID
    assert result.http_status == 200
    assert result.error is None


def test_accepted_by_bsuid_without_wa_id() -> None:
    result = meta_outbound.classify(200, load("accepted_bsuid"), {})
    assert result.outcome is SendOutcome.ACCEPTED
    assert result.provider_message_id == (
        "wamid.HBgMQlIuMTUwMjU3NjM5NBUCABEYEjQ0QkQ1MDc3RTMzRjRFNjkA")


def test_mark_as_read_success_is_accepted_without_id() -> None:
    result = meta_outbound.classify(200, load("read_success"), {})
    assert result.outcome is SendOutcome.ACCEPTED
    assert result.provider_message_id is None


def test_2xx_without_message_id_is_accepted_not_retried() -> None:
    # It may have been sent: a retry could duplicate it, a failure would be a lie.
    for body in (load("accepted_no_id"), b"", b"<html>ok</html>"):
        result = meta_outbound.classify(200, body, {})
        assert result.outcome is SendOutcome.ACCEPTED
        assert result.provider_message_id is None


def test_success_false_fails() -> None:
    result = meta_outbound.classify(200, b'{"success": false}', {})
    assert result.outcome is SendOutcome.FAILED


RETRY = [1, 2, 4, 80007, 130429, 131000, 131016, 131056, 131057, 133004]
FAILED = [3, 100, 130472, 131005, 131008, 131009, 131021, 131026, 131047, 131048,
          131049, 131050, 131051, 131052, 131053, 132000, 132001, 132005, 132007, 132012,
          132015, 132016]
# 10 and 200-299: the token lost permission for this number; the channel waits for a person.
PAUSE = [0, 10, 190, 200, 299, 368, 131031, 131042, 131045, 133010]
EXPECTED = ([(c, SendOutcome.RETRY) for c in RETRY] + [(c, SendOutcome.FAILED) for c in FAILED]
            + [(c, SendOutcome.PAUSE) for c in PAUSE])


def test_fixture_covers_every_code() -> None:
    assert sorted(ERRORS) == sorted(str(c) for c, _ in EXPECTED)


@pytest.mark.parametrize(("code", "outcome"), EXPECTED)
def test_classify_every_code(code: int, outcome: SendOutcome) -> None:
    case = ERRORS[str(code)]
    body = json.dumps(case["body"]).encode()
    result = meta_outbound.classify(case["status"], body, {})
    assert result.outcome is outcome
    assert result.http_status == case["status"]
    assert result.provider_message_id is None
    assert result.error is not None
    assert result.error.code == str(code)
    assert result.error.reason == case["body"]["error"]["message"]
    assert result.error.details == case["body"]["error"].get("error_data", {}).get("details")
    assert result.recipient_throttled is (code == 131056)
    assert result.channel_throttled is (code == 130429)
    assert errors.code_outcome(code) is outcome


def test_code_100_about_an_unknown_phone_number_id_pauses_the_channel() -> None:
    # Subcode 33: the phone number id does not exist or this token cannot see it. Every row of
    # the channel would fail the same way: the channel pauses and its rows wait.
    result = meta_outbound.classify(400, load("error_unknown_phone_number_id"), {})
    assert result.outcome is SendOutcome.PAUSE
    assert result.error is not None and result.error.code == "100"
    assert "does not exist" in result.error.reason
    assert errors.code_outcome(100, 33) is SendOutcome.PAUSE
    # Without the subcode (a wrapper dropped it) the message still says so.
    payload = json.loads(load("error_unknown_phone_number_id"))
    del payload["error"]["error_subcode"]
    assert meta_outbound.classify(400, json.dumps(payload).encode(), {}).outcome \
        is SendOutcome.PAUSE


def test_code_100_about_a_parameter_of_the_message_fails_only_that_message() -> None:
    result = meta_outbound.classify(400, load("error_invalid_recipient"), {})
    assert result.outcome is SendOutcome.FAILED
    assert result.error is not None and result.error.code == "100"
    assert result.error.details is not None and "to is not a valid" in result.error.details
    assert errors.code_outcome(100) is SendOutcome.FAILED


def test_code_not_http_status_decides() -> None:
    # 131056 comes as HTTP 400 and must be retried; 132001 as 404 and must fail.
    assert meta_outbound.classify(400, json.dumps(ERRORS["131056"]["body"]).encode(),
                              {}).outcome is SendOutcome.RETRY
    assert meta_outbound.classify(500, json.dumps(ERRORS["3"]["body"]).encode(),
                              {}).outcome is SendOutcome.FAILED


def test_retry_after_seconds_honoured() -> None:
    body = json.dumps(ERRORS["130429"]["body"]).encode()
    result = meta_outbound.classify(429, body, {"retry-after": "17"})
    assert result.outcome is SendOutcome.RETRY
    assert result.retry_after == 17.0


def test_maintenance_defaults_to_a_minute() -> None:
    body = json.dumps(ERRORS["131057"]["body"]).encode()
    assert meta_outbound.classify(500, body, {}).retry_after == 60.0
    assert meta_outbound.classify(500, body, {"Retry-After": "5"}).retry_after == 5.0


def test_failed_has_no_retry_after() -> None:
    body = json.dumps(ERRORS["131047"]["body"]).encode()
    assert meta_outbound.classify(400, body, {"Retry-After": "5"}).retry_after is None


@pytest.mark.parametrize(("status", "body", "outcome"), [
    (401, b"", SendOutcome.PAUSE),
    (429, b"", SendOutcome.RETRY),
    (500, b"<html>Internal error</html>", SendOutcome.RETRY),
    (502, b"Bad gateway", SendOutcome.RETRY),
    (503, b'{"error": {"message": "weird", "code": 999999}}', SendOutcome.RETRY),
    (400, b'{"error": {"message": "weird", "code": 999999}}', SendOutcome.FAILED),
    (404, b"Not found", SendOutcome.FAILED),
    (403, b"", SendOutcome.FAILED),
    (200, b'{"error": {"message": "weird", "code": 999999}}', SendOutcome.FAILED),
])
def test_unknown_code_falls_back_to_status(status: int, body: bytes,
                                           outcome: SendOutcome) -> None:
    result = meta_outbound.classify(status, body, {})
    assert result.outcome is outcome
    assert result.error is not None


def test_http_only_error_has_synthetic_code() -> None:
    result = meta_outbound.classify(502, b"Bad gateway", {})
    assert result.error is not None
    assert result.error.code == "http_502"
    assert result.response_excerpt == "Bad gateway"


def test_code_parsed_from_message_when_missing() -> None:
    body = b'{"error": {"message": "(#131026) Message Undeliverable"}}'
    result = meta_outbound.classify(400, body, {})
    assert result.outcome is SendOutcome.FAILED
    assert result.error is not None and result.error.code == "131026"


def test_excerpt_never_echoes_a_token() -> None:
    body = json.dumps({"error": {
        "message": f"Invalid OAuth access token: Bearer {TOKEN}", "code": 190,
        "debug": {"access_token": "abc123secret", "url": f"https://x/?access_token={TOKEN}"},
        "other": "EAAGm0PX4ZCpsBAKZBxyzxyzxyzxyzxyz"}}).encode()
    result = meta_outbound.classify(401, body, {}, secrets=[TOKEN])
    assert result.outcome is SendOutcome.PAUSE
    assert result.response_excerpt is not None
    assert TOKEN not in result.response_excerpt
    assert "abc123secret" not in result.response_excerpt
    assert "EAAGm0PX4ZCpsBAKZB" not in result.response_excerpt
    assert "[redacted]" in result.response_excerpt


def test_excerpt_is_cut_at_500() -> None:
    body = json.dumps({"error": {"message": "x " * 1000, "code": 100}}).encode()
    excerpt = meta_outbound.classify(400, body, {}).response_excerpt
    assert excerpt is not None and len(excerpt) == 500


# ---- Retry-After ---------------------------------------------------------------------------

NOW = datetime(2026, 11, 12, 10, 0, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(("value", "expected"), [
    ("120", 120.0),
    (" 1.5 ", 1.5),
    ("0", 0.0),
    ("-3", 0.0),
    (format_datetime(datetime(2026, 11, 12, 10, 0, 30, tzinfo=UTC), usegmt=True), 30.0),
    ("Thu, 12 Nov 2026 09:59:00 GMT", 0.0),
    ("soon", None),
    ("", None),
    (None, None),
    ("nan", None),
    ("Thu, 12 Nov 2026 10:00:30", None),
])
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert errors.parse_retry_after(value, now=NOW) == expected


def test_header_lookup_is_case_insensitive() -> None:
    assert errors.header({"RETRY-AFTER": "3"}, "Retry-After") == "3"
    assert errors.header({}, "Retry-After") is None


def test_build_group_recipient() -> None:
    group = "Y2FwaV9ncm91cDo1NTExOTQwMDAxMjM0OjEyMDM2MzA0MDQ2OTQyMzM4MjAZD"
    request = meta_outbound.build_send(channel(), message(
        "text", {"body": "Abre sim, das 9h às 13h"}, recipient=group, recipient_type="group",
        reply_to=WAMID))
    assert request.json == {"messaging_product": "whatsapp", "recipient_type": "group",
                            "to": group, "type": "text",
                            "text": {"body": "Abre sim, das 9h às 13h"},
                            "context": {"message_id": WAMID}}
