"""Whapi send side: Meta-format rows translated to Whapi endpoints, and answer classification."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from wacloud.domain.model import Channel, OutboundMessage, Provider, SendOutcome
from wacloud.providers.errors import UnsupportedMessage
from wacloud.providers.whapi import outbound as whapi_outbound

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures" / "whapi" / "send"
TOKEN = "wHaPiT0kenNeverShown8c1f2a9b3d4e"
BASE = "https://gate.whapi.cloud"
TO = "5511987654321"
QUOTED = "PsqXn5SAD5v7HRA-wHqB9tMeGQ"


def load(name: str) -> bytes:
    return (FIXTURES / f"{name}.json").read_bytes()


def channel(**overrides: Any) -> Channel:
    values: dict[str, Any] = {"id": 3, "tenant": "acme", "provider": Provider.WHAPI,
                              "key": "MANTIS-M72HC", "token": TOKEN}
    values.update(overrides)
    return Channel(**values)


def message(type_: str | None, content: Any, **overrides: Any) -> OutboundMessage:
    values: dict[str, Any] = {"tenant": "acme", "row_id": 9, "channel_key": "MANTIS-M72HC",
                              "recipient": TO, "type": type_, "content": content}
    values.update(overrides)
    return OutboundMessage(**values)


HEADERS = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}

CONTACT = {"name": {"formatted_name": "Suporte Loja", "first_name": "Suporte",
                    "last_name": "Loja"},
           "phones": [{"phone": "+55 11 4000-1234", "type": "WORK", "wa_id": "551140001234"},
                      {"phone": "+55 (11) 98765-4321", "type": "CELL"}],
           "emails": [{"email": "suporte@loja.example", "type": "WORK"}],
           "org": {"company": "Loja, Ltda", "department": "Atendimento", "title": "Suporte"},
           "urls": [{"url": "https://loja.example", "type": "WORK"}]}
VCARD = "\n".join([
    "BEGIN:VCARD", "VERSION:3.0", "N:Loja;Suporte;;;", "FN:Suporte Loja",
    "ORG:Loja\\, Ltda;Atendimento", "TITLE:Suporte",
    "TEL;type=WORK;waid=551140001234:+55 11 4000-1234",
    "TEL;type=CELL;waid=5511987654321:+55 (11) 98765-4321",
    "EMAIL;type=WORK:suporte@loja.example", "URL:https://loja.example", "END:VCARD"])

POST_CASES = [
    ("text", {"body": "Olá", "preview_url": True}, "text",
     {"body": "Olá", "no_link_preview": False}),
    ("text", {"body": "Olá"}, "text", {"body": "Olá", "no_link_preview": True}),
    ("image", {"link": "https://cdn.example.com/p.jpg", "caption": "Produto"}, "image",
     {"media": "https://cdn.example.com/p.jpg", "caption": "Produto"}),
    ("video", {"link": "https://cdn.example.com/v.mp4"}, "video",
     {"media": "https://cdn.example.com/v.mp4"}),
    ("document", {"link": "https://cdn.example.com/nf.pdf", "filename": "NF-8812.pdf",
                  "caption": "Nota"}, "document",
     {"media": "https://cdn.example.com/nf.pdf", "filename": "NF-8812.pdf", "caption": "Nota"}),
    ("audio", {"link": "https://cdn.example.com/a.mp3"}, "audio",
     {"media": "https://cdn.example.com/a.mp3"}),
    ("audio", {"link": "https://cdn.example.com/a.ogg", "voice": True}, "voice",
     {"media": "https://cdn.example.com/a.ogg"}),
    ("sticker", {"id": "webp-3a1b2c-gBgQ0aA1fZw"}, "sticker",
     {"media": "webp-3a1b2c-gBgQ0aA1fZw"}),
    ("location", {"latitude": -23.5614, "longitude": -46.6559, "name": "Loja Paulista",
                  "address": "Av. Paulista, 1000"}, "location",
     {"latitude": -23.5614, "longitude": -46.6559, "name": "Loja Paulista",
      "address": "Av. Paulista, 1000"}),
    ("location", {"latitude": -23.5614, "longitude": -46.6559}, "location",
     {"latitude": -23.5614, "longitude": -46.6559}),
    ("contacts", [CONTACT], "contact", {"name": "Suporte Loja", "vcard": VCARD}),
    ("interactive", {
        "type": "button", "header": {"type": "text", "text": "Entrega"},
        "body": {"text": "Confirma a entrega amanhã?"}, "footer": {"text": "Loja"},
        "action": {"buttons": [{"type": "reply", "reply": {"id": "conf_yes", "title": "Sim"}},
                               {"type": "reply", "reply": {"id": "conf_no", "title": "Não"}}]}},
     "interactive",
     {"type": "button", "header": {"text": "Entrega"},
      "body": {"text": "Confirma a entrega amanhã?"}, "footer": {"text": "Loja"},
      "action": {"buttons": [{"type": "quick_reply", "title": "Sim", "id": "conf_yes"},
                             {"type": "quick_reply", "title": "Não", "id": "conf_no"}]}}),
    ("interactive", {
        "type": "list", "body": {"text": "Escolha um horário"},
        "action": {"button": "Horários", "sections": [{"title": "Amanhã", "rows": [
            {"id": "slot_09", "title": "09:00", "description": "Manhã"},
            {"id": "slot_14", "title": "14:00"}]}]}},
     "interactive",
     {"type": "list", "body": {"text": "Escolha um horário"},
      "action": {"list": {"label": "Horários", "sections": [{"title": "Amanhã", "rows": [
          {"id": "slot_09", "title": "09:00", "description": "Manhã"},
          {"id": "slot_14", "title": "14:00"}]}]}}}),
    ("interactive", {
        "type": "cta_url", "body": {"text": "Acompanhe"},
        "action": {"name": "cta_url", "parameters": {"display_text": "Rastrear",
                                                     "url": "https://loja.example/r/1"}}},
     "interactive",
     {"type": "button", "body": {"text": "Acompanhe"},
      "action": {"buttons": [{"type": "url", "title": "Rastrear", "id": "cta_url",
                              "url": "https://loja.example/r/1"}]}}),
]


@pytest.mark.parametrize(("type_", "content", "kind", "fields"), POST_CASES)
def test_build_post(type_: str, content: Any, kind: str, fields: dict[str, Any]) -> None:
    request = whapi_outbound.build_send(channel(), message(type_, content))
    assert request.method == "POST"
    assert request.url == f"{BASE}/messages/{kind}"
    assert request.headers == HEADERS
    assert request.json == {"to": TO, **fields}


def test_reply_becomes_quoted_and_chat_id_kept() -> None:
    request = whapi_outbound.build_send(channel(), message(
        "text", {"body": "Oi"}, reply_to=QUOTED, recipient="5511987654321@s.whatsapp.net"))
    assert request.json == {"to": "5511987654321@s.whatsapp.net", "quoted": QUOTED,
                            "body": "Oi", "no_link_preview": True}


def test_reaction_is_put() -> None:
    request = whapi_outbound.build_send(channel(), message(
        "reaction", {"message_id": QUOTED, "emoji": "👍"}))
    assert request.method == "PUT"
    assert request.url == f"{BASE}/messages/{QUOTED}/reaction"
    assert request.json == {"emoji": "👍"}


def test_read_is_put_without_body() -> None:
    request = whapi_outbound.build_send(channel(), message("read", {"message_id": "a/b c"},
                                                       recipient=None))
    assert request.method == "PUT"
    assert request.url == f"{BASE}/messages/a%2Fb%20c"
    assert request.json is None
    assert request.headers == HEADERS


@pytest.mark.parametrize(("type_", "content", "reason"), [
    ("template", {"name": "pedido_enviado", "language": {"code": "pt_BR"}}, "template"),
    ("interactive", {"type": "flow", "action": {}}, "flow"),
    ("interactive", {"type": "button", "header": {"type": "image", "image": {"id": "1"}},
                     "body": {"text": "x"}, "action": {"buttons": []}}, "text header"),
    ("image", {"caption": "no media"}, "neither link nor id"),
    ("text", {}, "no body"),
    ("reaction", {"emoji": "👍"}, "message_id"),
    ("read", {}, "message_id"),
    ("contacts", [{"phones": []}], "no name"),
    ("order", {"x": 1}, "not supported"),
    (None, {"body": "x"}, "no type"),
])
def test_unsupported(type_: str | None, content: Any, reason: str) -> None:
    with pytest.raises(UnsupportedMessage, match=reason):
        whapi_outbound.build_send(channel(), message(type_, content))


def test_missing_recipient() -> None:
    with pytest.raises(UnsupportedMessage, match="no recipient"):
        whapi_outbound.build_send(channel(), message("text", {"body": "x"}, recipient=None))


def test_legacy_row_goes_to_whapi_host_only() -> None:
    row = message(None, {}, request_url=f"{BASE}/messages/text",
                  request_body='{"to":"5511987654321","body":"Oi"}',
                  request_headers="Authorization:Bearer other")
    request = whapi_outbound.build_send(channel(), row)
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.content == b'{"to":"5511987654321","body":"Oi"}'
    with pytest.raises(UnsupportedMessage):
        whapi_outbound.build_send(channel(), message(
            None, {}, request_url="https://graph.facebook.com/v23.0/1/messages",
            request_body="{}"))


def test_vcard_escapes_and_builds_name() -> None:
    name, card = whapi_outbound.vcard({"name": {"first_name": "Ana", "last_name": "Souza; Lima"}})
    assert name == "Ana Souza; Lima"
    assert "FN:Ana Souza\\; Lima" in card
    assert "N:Souza\\; Lima;Ana;;;" in card


# ---- classification ----------------------------------------------------------------------

@pytest.mark.parametrize(("fixture", "wamid"), [
    ("sent_text", "PsqXn5SAD5v7HRA-wHqB9tMeGQ"),
    ("sent_image", "Lw8b3EYt2xK9qZ-gBgQ0aA1fZw"),
    ("success", None),
])
def test_accepted(fixture: str, wamid: str | None) -> None:
    result = whapi_outbound.classify(200, load(fixture), {})
    assert result.outcome is SendOutcome.ACCEPTED
    assert result.provider_message_id == wamid
    assert result.error is None


def test_bare_2xx_accepted_without_id() -> None:
    result = whapi_outbound.classify(201, b"", {})
    assert result.outcome is SendOutcome.ACCEPTED
    assert result.provider_message_id is None


def test_sent_false_fails() -> None:
    result = whapi_outbound.classify(200, load("not_sent"), {})
    assert result.outcome is SendOutcome.FAILED
    assert result.error is not None


@pytest.mark.parametrize(("fixture", "status", "outcome"), [
    ("error_unauthorized", 401, SendOutcome.PAUSE),
    ("error_payment", 402, SendOutcome.PAUSE),
    ("error_forbidden", 403, SendOutcome.PAUSE),
    ("error_qr", 409, SendOutcome.PAUSE),
    ("error_stop", 503, SendOutcome.PAUSE),
    ("error_rate", 429, SendOutcome.RETRY),
    ("error_server", 500, SendOutcome.RETRY),
    ("error_bad_request", 400, SendOutcome.FAILED),
    ("error_not_found", 404, SendOutcome.FAILED),
])
def test_classify_errors(fixture: str, status: int, outcome: SendOutcome) -> None:
    result = whapi_outbound.classify(status, load(fixture), {"Retry-After": "30"})
    assert result.outcome is outcome
    assert result.http_status == status
    assert result.error is not None
    assert result.error.code == str(status)
    assert result.error.details
    assert result.retry_after == (None if outcome is SendOutcome.FAILED else 30.0)
    assert result.channel_throttled is (status == 429)


def test_error_message_is_reported() -> None:
    result = whapi_outbound.classify(400, load("error_bad_request"), {})
    assert result.error is not None
    assert result.error.reason == "Bad Request"
    assert result.error.details == '"to" must be a valid phone number or chat id'


def test_non_json_errors() -> None:
    assert whapi_outbound.classify(502, b"<html>Bad gateway</html>", {}).outcome \
        is SendOutcome.RETRY
    assert whapi_outbound.classify(400, b"channel not authorized", {}).outcome \
        is SendOutcome.PAUSE
    result = whapi_outbound.classify(400, b"bad", {})
    assert result.outcome is SendOutcome.FAILED
    assert result.error is not None and result.error.code == "http_400"


def test_excerpt_hides_token() -> None:
    body = f'{{"error": {{"code": 401, "message": "bad token {TOKEN}"}}}}'.encode()
    result = whapi_outbound.classify(401, body, {}, secrets=[TOKEN])
    assert result.response_excerpt is not None
    assert TOKEN not in result.response_excerpt
