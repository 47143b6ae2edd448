"""Meta provider: every webhook fixture parsed field by field, and signatures."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest

from wacloud.domain.model import (
    Direction,
    Event,
    InboundMessage,
    MediaStatus,
    PayloadError,
    Provider,
    ProviderError,
    ProviderNotice,
    StatusUpdate,
)
from wacloud.providers.meta import inbound as meta
from wacloud.providers.meta import webhook_auth as meta_auth

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures" / "meta"
PNID_A, WABA_A, DISPLAY_A = "106540352242922", "102290129340398", "5511940001234"
PNID_B, WABA_B = "106540352242999", "102290129340777"
MARIA, MARIA_BSUID = "5511987654321", "BR.1502576394655843"
TOKEN = "EAAG-test-token-never-shown-4242"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))
    return data


def parse(name: str) -> list[Event]:
    return meta.parse_webhook(load(name))


def one_message(name: str) -> InboundMessage:
    events = parse(name)
    assert len(events) == 1
    event = events[0]
    assert isinstance(event, InboundMessage)
    assert event.provider is Provider.META
    assert event.channel_key == PNID_A
    assert event.account_key == WABA_A
    assert event.direction is Direction.IN
    assert event.recipient == DISPLAY_A
    assert event.raw == load(name)["entry"][0]["changes"][0]["value"]["messages"][0]
    return event


def one_status(name: str) -> StatusUpdate:
    events = parse(name)
    assert len(events) == 1
    event = events[0]
    assert isinstance(event, StatusUpdate)
    assert event.channel_key == PNID_A
    assert event.account_key == WABA_A
    assert event.raw == load(name)["entry"][0]["changes"][0]["value"]["statuses"][0]
    return event


# --- messages ---------------------------------------------------------------------------------

def test_text() -> None:
    msg = one_message("text")
    assert msg.type == "text"
    assert msg.provider_message_id.startswith("wamid.HBgNNTUxMTk4NzY1NDMyMRUCABIY")
    assert msg.text == "Olá, meu pedido chegou?"
    assert msg.sender == MARIA
    assert msg.contact.wa_id == MARIA
    assert msg.contact.user_id == MARIA_BSUID
    assert msg.contact.name == "Maria Souza"
    assert msg.timestamp == 1750857384
    assert msg.reply_to is None
    assert msg.media is None
    assert msg.errors == []
    assert msg.content == {"body": "Olá, meu pedido chegou?"}


@pytest.mark.parametrize(("name", "kind", "media_id", "mime", "caption"), [
    ("image", "image", "1038542891735201", "image/jpeg", "Comprovante do Pix"),
    ("video", "video", "1187203945662817", "video/mp4", "Olha o defeito"),
    ("document", "document", "2093847561029384", "application/pdf", "Nota fiscal de outubro"),
    ("sticker", "sticker", "1456789012345678", "image/webp", None),
])
def test_media_messages(name: str, kind: str, media_id: str, mime: str,
                        caption: str | None) -> None:
    msg = one_message(name)
    body = msg.raw[kind]
    assert msg.type == kind
    assert msg.text == caption
    assert msg.media is not None
    assert msg.media.provider_media_id == media_id
    assert msg.media.mime_type == mime
    assert msg.media.sha256 == body["sha256"]
    assert msg.media.status is MediaStatus.PENDING
    assert msg.media.link is None
    assert msg.media.filename == body.get("filename")


def test_document_filename_and_sticker_animated() -> None:
    doc = one_message("document")
    assert doc.media is not None and doc.media.filename == "NF-2026-10-0042.pdf"
    assert doc.content["filename"] == "NF-2026-10-0042.pdf"
    sticker = one_message("sticker")
    assert sticker.content["animated"] is True


def test_audio_voice_reply() -> None:
    msg = one_message("audio_voice_reply")
    assert msg.type == "audio"
    assert msg.content["voice"] is True
    assert msg.text is None
    assert msg.sender == "5521998765432"
    assert msg.contact.name == "João Pereira"
    assert msg.contact.user_id == "BR.2208841175530921"
    assert msg.reply_to == "wamid.HBgNNTUyMTk5ODc2NTQzMhUCABEYEjRFNUY2QTdCOEM5RDBFMUYyQQA="
    assert msg.content["context"] == {"from": DISPLAY_A, "id": msg.reply_to}
    assert msg.media is not None
    assert msg.media.provider_media_id == "1274583920174635"
    assert msg.media.mime_type == "audio/ogg; codecs=opus"
    assert msg.timestamp == 1750857400


def test_location() -> None:
    msg = one_message("location")
    assert msg.type == "location"
    assert msg.content["latitude"] == -23.561414
    assert msg.content["longitude"] == -46.655881
    assert msg.content["name"] == "MASP"
    assert msg.content["address"].startswith("Av. Paulista")
    assert msg.media is None


def test_contacts() -> None:
    msg = one_message("contacts")
    assert msg.type == "contacts"
    cards = msg.content["contacts"]
    assert cards[0]["name"]["formatted_name"] == "Carlos Lima"
    assert cards[0]["phones"][0]["wa_id"] == "5531998765432"
    # The shared card is not the sender: the sender still comes from value.contacts.
    assert msg.contact.wa_id == MARIA and msg.contact.name == "Maria Souza"


def test_interactive_button_reply() -> None:
    msg = one_message("interactive_button_reply")
    assert msg.type == "interactive"
    assert msg.content["interactive_type"] == "button_reply"
    assert msg.content["reply_id"] == "confirmar_entrega"
    assert msg.content["title"] == "Confirmar entrega"
    assert msg.content["description"] is None
    assert msg.text == "Confirmar entrega"
    assert msg.reply_to == "wamid.HBgNNTUxMTk4NzY1NDMyMRUCABEYEkJVVFRPTlNfTVNHXzAwMQA="


def test_interactive_list_reply() -> None:
    msg = one_message("interactive_list_reply")
    assert msg.content["interactive_type"] == "list_reply"
    assert msg.content["reply_id"] == "horario_manha"
    assert msg.content["title"] == "Manhã (8h-12h)"
    assert msg.content["description"] == "Entrega entre 8h e 12h"
    assert msg.text == "Manhã (8h-12h)"


def test_interactive_nfm_reply_decodes_flow_json() -> None:
    msg = one_message("interactive_nfm_reply")
    assert msg.content["interactive_type"] == "nfm_reply"
    assert msg.content["response_json"] == {
        "flow_token": "pedido-7781", "nota": "5", "comentario": "Ótimo atendimento"}
    assert msg.content["body"] == "Sent"
    assert msg.content["name"] == "flow"
    assert msg.text == "Sent"


def test_nfm_reply_keeps_non_json_string() -> None:
    payload = load("interactive_nfm_reply")
    message = payload["entry"][0]["changes"][0]["value"]["messages"][0]
    message["interactive"]["nfm_reply"]["response_json"] = "not json {"
    msg = meta.parse_webhook(payload)[0]
    assert isinstance(msg, InboundMessage)
    assert msg.content["response_json"] == "not json {"


def test_button() -> None:
    msg = one_message("button")
    assert msg.type == "button"
    assert msg.content == {
        "payload": "PARAR_PROMOCOES", "text": "Parar promoções",
        "context": msg.raw["context"]}
    assert msg.text == "Parar promoções"
    assert msg.reply_to == msg.raw["context"]["id"]


def test_reaction_added_and_removed() -> None:
    added, removed = parse("reaction")
    assert isinstance(added, InboundMessage) and isinstance(removed, InboundMessage)
    target = "wamid.HBgNNTUxMTk4NzY1NDMyMRUCABEYEk9VVF9NU0dfMDAwMDA1AA=="
    assert added.type == removed.type == "reaction"
    assert added.content == {"message_id": target, "emoji": "👍", "removed": False}
    assert removed.content == {"message_id": target, "emoji": "", "removed": True}
    assert removed.timestamp == 1750857390


def test_order() -> None:
    msg = one_message("order")
    assert msg.content["catalog_id"] == "784512369874512"
    assert msg.content["text"] == "Quero retirar na loja"
    assert msg.text == "Quero retirar na loja"
    items = msg.content["product_items"]
    assert [i["product_retailer_id"] for i in items] == ["SKU-CAMISA-AZ-M", "SKU-BONE-PT"]
    assert items[0]["currency"] == "BRL"


def test_system() -> None:
    msg = one_message("system")
    assert msg.content == {
        "body": "Maria Souza changed from 5511987654321 to 5511976543210",
        "system_type": "user_changed_number", "new_wa_id": "5511976543210"}
    assert msg.text == msg.content["body"]


@pytest.mark.parametrize("name", ["unsupported", "unknown"])
def test_unsupported_and_unknown_keep_type_and_errors(name: str) -> None:
    msg = one_message(name)
    assert msg.type == name
    assert len(msg.errors) == 1
    error = msg.errors[0]
    assert error.code == "131051"
    assert error.reason == "Message type unknown"
    assert error.details is not None and "not" in error.details
    if name == "unsupported":
        assert msg.content["unsupported_type"] == "edit"


def test_referral_and_forwarded_context() -> None:
    msg = one_message("referral")
    assert msg.content["referral"]["source_type"] == "ad"
    assert msg.content["referral"]["ctwa_clid"].startswith("ARAk")
    assert msg.content["context"] == {"forwarded": False}
    assert msg.reply_to is None
    assert msg.text == "Oi! Quero saber mais sobre o plano fibra"


# --- statuses, errors, notices ----------------------------------------------------------------

def test_status_sent_with_bsuid_and_pricing() -> None:
    status = one_status("status_sent")
    assert status.provider_message_id == (
        "wamid.HBgNNTUxMTk4NzY1NDMyMRUCABEYEjgxQkVFRDVBQTVDODFDOTg3MQA=")
    assert status.status == "sent"
    assert status.recipient == MARIA
    assert status.recipient_user_id == MARIA_BSUID
    assert status.timestamp == 1750857384
    assert status.errors == []
    assert status.raw["biz_opaque_callback_data"] == "tenant42:outbox:9911"


@pytest.mark.parametrize(("name", "expected", "ts"), [
    ("status_delivered", "delivered", 1750857386),
    ("status_read", "read", 1750857402),
    ("status_played", "played", 1750857460),
])
def test_status_names_without_conversation(name: str, expected: str, ts: int) -> None:
    status = one_status(name)
    assert status.status == expected
    assert status.timestamp == ts
    assert status.recipient == MARIA
    assert status.recipient_user_id is None
    assert "conversation" not in status.raw


def test_status_failed_errors() -> None:
    status = one_status("status_failed")
    assert status.status == "failed"
    assert status.errors == [ProviderError(
        code="131047", reason="Re-engagement message",
        details="Message failed to send because more than 24 hours have passed since the "
                "customer last replied to this number.")]


def test_value_errors_become_notice() -> None:
    (notice,) = parse("value_errors")
    assert isinstance(notice, ProviderNotice)
    assert notice.field == "messages"
    assert notice.channel_key == PNID_A
    assert notice.account_key == WABA_A
    assert notice.errors == [ProviderError(
        code="130429", reason="Rate limit hit",
        details="Cloud API message throughput has been reached.")]
    assert notice.raw == load("value_errors")["entry"][0]["changes"][0]["value"]


def test_account_update_notice_keyed_by_waba() -> None:
    (notice,) = parse("account_update")
    assert isinstance(notice, ProviderNotice)
    assert notice.field == "account_update"
    assert notice.channel_key == WABA_A
    assert notice.account_key == WABA_A
    assert notice.errors == []
    assert notice.raw == {"phone_number": "5511940001234", "event": "VERIFIED_ACCOUNT"}


def test_template_status_update_notice() -> None:
    (notice,) = parse("template_status_update")
    assert isinstance(notice, ProviderNotice)
    assert notice.field == "message_template_status_update"
    assert notice.raw["message_template_name"] == "confirmacao_pedido"


def test_batch_two_tenants_every_item_in_order() -> None:
    events = parse("batch_two_tenants")
    summary = [(type(e).__name__, e.channel_key, e.account_key) for e in events]
    assert summary == [
        ("InboundMessage", PNID_A, WABA_A),
        ("InboundMessage", PNID_A, WABA_A),
        ("InboundMessage", PNID_A, WABA_A),
        ("StatusUpdate", PNID_A, WABA_A),
        ("StatusUpdate", PNID_A, WABA_A),
        ("InboundMessage", PNID_B, WABA_B),
        ("InboundMessage", PNID_B, WABA_B),
        ("StatusUpdate", PNID_B, WABA_B),
        ("StatusUpdate", PNID_B, WABA_B),
    ]
    a1, a2, a3, s1, s2, b1, b2, s3, s4 = events
    assert isinstance(a2, InboundMessage) and a2.media is not None
    assert a2.media.provider_media_id == "1000000000000001"
    # Each message gets its own sender's contact out of the shared contacts list.
    assert isinstance(a1, InboundMessage) and a1.contact.name == "Maria Souza"
    assert isinstance(a3, InboundMessage) and a3.contact.name == "João Pereira"
    assert isinstance(b1, InboundMessage) and b1.recipient == "5521930005678"
    assert b1.contact.name == "Ana Costa" and b1.contact.user_id is None
    assert isinstance(b2, InboundMessage) and b2.content["emoji"] == "❤️"
    assert [(s.provider_message_id, s.status) for s in (s1, s2, s3, s4)  # type: ignore[union-attr]
            ] == [("wamid.A_OUT_1", "delivered"), ("wamid.A_OUT_1", "read"),
                  ("wamid.B_OUT_1", "sent"), ("wamid.B_OUT_2", "failed")]
    assert isinstance(s4, StatusUpdate) and s4.errors[0].code == "131026"


def test_events_roundtrip_through_dicts() -> None:
    from wacloud.domain.model import event_from_dict

    for path in sorted(FIXTURES.glob("*.json")):
        for event in meta.parse_webhook(json.loads(path.read_text(encoding="utf-8"))):
            assert event_from_dict(json.loads(json.dumps(event.to_dict()))) == event


def test_channel_key_override_for_all_events() -> None:
    events = meta.parse_webhook(load("batch_two_tenants"), provider=Provider.CHAKRA,
                                channel_key="plugin-1")
    assert {e.channel_key for e in events} == {"plugin-1"}
    assert {e.provider for e in events} == {Provider.CHAKRA}
    assert {e.account_key for e in events} == {WABA_A, WABA_B}


def test_contact_by_bsuid_when_phone_is_hidden() -> None:
    payload = load("text")
    value = payload["entry"][0]["changes"][0]["value"]
    del value["messages"][0]["from"]
    value["messages"][0]["from_user_id"] = MARIA_BSUID
    value["contacts"] = [{"profile": {"name": "Maria"}, "user_id": MARIA_BSUID}]
    msg = meta.parse_webhook(payload)[0]
    assert isinstance(msg, InboundMessage)
    assert msg.contact.wa_id is None
    assert msg.contact.user_id == MARIA_BSUID
    assert msg.contact.name == "Maria"
    assert msg.sender == MARIA_BSUID


# --- broken payloads ----------------------------------------------------------------------------

def _without(name: str, *path: Any) -> dict[str, Any]:
    payload = load(name)
    target: Any = payload
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return payload


@pytest.mark.parametrize("payload", [
    [], "x", None, {}, {"object": "whatsapp_business_account"},
    {"object": "whatsapp_business_account", "entry": {}},
    {"entry": []},
    {"object": "page", "entry": []},
    {"object": "whatsapp_business_account", "entry": ["nope"]},
    {"object": "whatsapp_business_account", "entry": [{"changes": []}]},
    {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "x"}]}]},
    {"object": "whatsapp_business_account",
     "entry": [{"id": "1", "changes": [{"field": "messages", "value": {"messages": []}}]}]},
])
def test_junk_raises_payload_error(payload: Any) -> None:
    with pytest.raises(PayloadError):
        meta.parse_webhook(payload)


@pytest.mark.parametrize(("name", "path"), [
    ("text", ("entry", 0, "changes", 0, "value", "messages", 0, "id")),
    ("status_read", ("entry", 0, "changes", 0, "value", "statuses", 0, "id")),
    ("status_read", ("entry", 0, "changes", 0, "value", "statuses", 0, "status")),
    ("text", ("entry", 0, "id")),
])
def test_item_without_id_raises(name: str, path: tuple[Any, ...]) -> None:
    with pytest.raises(PayloadError):
        meta.parse_webhook(_without(name, *path))


# --- routing ids and signatures -----------------------------------------------------------------

def test_routing_ids() -> None:
    assert meta_auth.routing_ids(load("batch_two_tenants")) == ({PNID_A, PNID_B}, {WABA_A, WABA_B})
    assert meta_auth.routing_ids(load("account_update")) == (set(), {WABA_A})


@pytest.mark.parametrize("junk", [
    None, [], "s", 3, {}, {"entry": None}, {"entry": "x"}, {"entry": [None, 1, "a"]},
    {"entry": [{"id": {"x": 1}, "changes": "x"}]},
    {"entry": [{"id": True, "changes": [None, {"value": []}, {"value": {"metadata": 5}}]}]},
])
def test_routing_ids_never_raise(junk: Any) -> None:
    assert meta_auth.routing_ids(junk) == (set(), set())


def _sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_verify_signature() -> None:
    body = (FIXTURES / "text.json").read_bytes()
    good = _sign(body, "app-secret-a")
    assert meta_auth.verify_signature(body, good, ["app-secret-a"])
    assert meta_auth.verify_signature(body, good.upper().replace("SHA256=", "sha256="),
                                 ["app-secret-a"])
    assert meta_auth.verify_signature(body, good, ["other", "", "app-secret-a"])
    assert not meta_auth.verify_signature(body, good, ["app-secret-b"])
    assert not meta_auth.verify_signature(body, good, [])
    assert not meta_auth.verify_signature(body + b" ", good, ["app-secret-a"])
    assert not meta_auth.verify_signature(body, None, ["app-secret-a"])
    assert not meta_auth.verify_signature(body, "", ["app-secret-a"])
    assert not meta_auth.verify_signature(body, good.replace("sha256=", "sha1="), ["app-secret-a"])
    assert not meta_auth.verify_signature(body, "sha256=", ["app-secret-a"])
    assert not meta_auth.verify_signature(body, "sha256=zz\u00e9", ["app-secret-a"])


# --- groups and older voice notes -----------------------------------------------------------------

GROUP_ID = "Y2FwaV9ncm91cDo1NTExOTQwMDAxMjM0OjEyMDM2MzA0MDQ2OTQyMzM4MjAZD"


def test_group_message_keeps_group_id_and_the_participant() -> None:
    msg = one_message("group_text")
    assert msg.group_id == GROUP_ID
    assert msg.sender == "5531991234567"
    assert msg.contact.name == "Carla Mendes"
    assert msg.text == "Alguém sabe se a loja abre no feriado?"
    assert InboundMessage.from_dict(msg.to_dict()).group_id == GROUP_ID


def test_direct_message_has_no_group_id() -> None:
    assert one_message("text").group_id is None


def test_group_status_names_the_group_as_recipient() -> None:
    status = one_status("status_group_sent")
    assert status.status == "sent"
    assert status.recipient == GROUP_ID
    assert status.raw["recipient_type"] == "group"


def test_older_voice_type_carries_its_media_like_audio() -> None:
    msg = one_message("voice")
    assert msg.type == "voice"
    assert msg.content["voice"] is True
    assert msg.media is not None
    assert msg.media.provider_media_id == "1309876543210987"
    assert msg.media.mime_type == "audio/ogg; codecs=opus"
    assert msg.media.sha256 == msg.raw["voice"]["sha256"]
    assert msg.media.status is MediaStatus.PENDING
