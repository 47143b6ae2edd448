"""Whapi provider: every webhook fixture parsed field by field, and media download requests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from wacloud.domain.model import (
    Channel,
    Direction,
    Event,
    InboundMessage,
    MediaRef,
    MediaStatus,
    PayloadError,
    Provider,
    ProviderError,
    ProviderNotice,
    StatusUpdate,
    event_from_dict,
)
from wacloud.providers.media import MediaResolveError
from wacloud.providers.whapi import inbound as whapi
from wacloud.providers.whapi import media as whapi_media

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures" / "whapi"
CHANNEL = "MANTIS-M72HC"
TOKEN = "whapi-token-never-shown-77"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))
    return data


def one_message(name: str) -> InboundMessage:
    events = whapi.parse_webhook(load(name))
    assert len(events) == 1
    msg = events[0]
    assert isinstance(msg, InboundMessage)
    assert msg.provider is Provider.WHAPI
    assert msg.channel_key == CHANNEL
    assert msg.account_key is None
    assert msg.raw == load(name)["messages"][0]
    return msg


def inbound(name: str) -> InboundMessage:
    msg = one_message(name)
    assert msg.direction is Direction.IN
    assert msg.recipient is None
    assert msg.sender == msg.raw["from"]
    assert msg.contact.wa_id == msg.raw["from"]
    assert msg.contact.name == msg.raw["from_name"]
    assert msg.content["chat_id"] == msg.raw["chat_id"]
    assert msg.timestamp == msg.raw["timestamp"]
    return msg


def test_text() -> None:
    msg = inbound("text")
    assert msg.provider_message_id == "p.w30M7fgwWD4XwHu.g4CA-gBgTwl0rVw"
    assert msg.type == "text"
    assert msg.text == "Olá"
    assert msg.sender == "5511987654321"
    assert msg.contact.name == "Maria"
    assert msg.timestamp == 1712995245
    assert msg.media is None
    assert msg.reply_to is None


def test_image_without_link() -> None:
    msg = inbound("image_no_link")
    assert msg.type == "image"
    assert msg.text == "Comprovante"
    assert msg.media is not None
    assert msg.media.provider_media_id == "jpeg-9b2f3c4d5e6f7a8b-gNEIDpL.CQ"
    assert msg.media.link is None
    assert msg.media.mime_type == "image/jpeg"
    assert msg.media.size == 25950
    assert msg.media.sha256 == "IKc25C+1fi7Q5+k4Pejd4+t+022TLlu94wkFQv0X5+Y="
    assert msg.media.status is MediaStatus.PENDING
    assert "preview" not in msg.content
    assert msg.content["width"] == 356


def test_image_autodownload_link() -> None:
    msg = inbound("image_autodownload")
    assert msg.media is not None
    assert msg.media.link == msg.raw["image"]["link"]
    assert msg.media.provider_media_id == "jpeg-1a2b3c4d5e6f7a8b-hOFJEqM.DR"


@pytest.mark.parametrize(("name", "kind", "voice", "caption"), [
    ("video", "video", None, "Olha o defeito"),
    ("audio", "audio", False, None),
    ("voice", "voice", True, None),
    ("document", "document", None, "Nota fiscal"),
    ("sticker", "sticker", None, None),
])
def test_media_types(name: str, kind: str, voice: bool | None, caption: str | None) -> None:
    msg = inbound(name)
    body = msg.raw[kind]
    assert msg.type == kind
    assert msg.text == caption
    assert msg.media is not None
    assert msg.media.provider_media_id == body["id"]
    assert msg.media.mime_type == body["mime_type"]
    assert msg.media.size == body["file_size"]
    assert msg.media.sha256 == body["sha256"]
    assert msg.media.link == body.get("link")
    assert msg.media.filename == body.get("filename")
    if voice is not None:
        assert msg.content["voice"] is voice


def test_voice_reply_context() -> None:
    msg = inbound("voice")
    assert msg.reply_to == "PsqXn5SAD5v7HRA-wHqB9tMeGQ"
    assert msg.content["context"]["quoted_author"] == "5511940001234"


def test_document_filename_and_sticker_flag() -> None:
    doc = inbound("document")
    assert doc.media is not None and doc.media.filename == "NF-2026-10-0042.pdf"
    assert inbound("sticker").content["animated"] is False


def test_location() -> None:
    msg = inbound("location")
    assert msg.content["latitude"] == -23.561414
    assert msg.content["name"] == "MASP"


def test_contact_and_contact_list() -> None:
    single = inbound("contact")
    assert single.type == "contact"
    assert single.content["contacts"][0]["name"] == "Carlos Lima"
    assert "waid=5531998765432" in single.content["contacts"][0]["vcard"]
    many = inbound("contact_list")
    assert [c["name"] for c in many.content["contacts"]] == ["Carlos Lima", "Ana Costa"]


def test_link_preview() -> None:
    msg = inbound("link_preview")
    assert msg.type == "link_preview"
    assert msg.text == "Veja https://www.example.com.br/promo"
    assert msg.content["title"] == "Promoção de outubro"


def test_reply_buttons() -> None:
    msg = inbound("reply_buttons")
    assert msg.type == "reply"
    assert msg.content["reply_type"] == "buttons_reply"
    assert msg.content["reply_id"] == "ButtonsV3:confirmar"
    assert msg.content["title"] == "Confirmar"
    assert msg.text == "Confirmar"
    assert msg.reply_to == "PsqXn5SAD5v7HRA-wHqB9tMeGQ"


def test_reply_list() -> None:
    msg = inbound("reply_list")
    assert msg.content["reply_type"] == "list_reply"
    assert msg.content["reply_id"] == "ListV3:horario_manha"
    assert msg.content["description"] == "Entrega entre 8h e 12h"
    assert msg.reply_to == "QtrYo6TBE6w8ISB-xIrC0uNfHR"


def test_reaction_action() -> None:
    msg = inbound("reaction")
    assert msg.type == "reaction"
    assert msg.content["message_id"] == "PsqXn5SAD5v7HRA-wHqB9tMeGQ"
    assert msg.content["emoji"] == "👍"
    assert msg.content["removed"] is False


def test_poll_order_unknown() -> None:
    poll = inbound("poll")
    assert poll.text == "Qual horário prefere?"
    assert poll.content["options"] == ["Manhã", "Tarde"]
    order = inbound("order")
    assert order.content["order_id"] == "4815162342"
    assert order.text == "Quero retirar na loja"
    unknown = inbound("unknown_type")
    assert unknown.type == "hologram"
    assert unknown.content["frames"] == 3


def test_from_me_echo_is_outbound() -> None:
    msg = one_message("from_me_echo")
    assert msg.direction is Direction.OUT
    assert msg.sender == "5511940001234"
    assert msg.recipient == "5511987654321@s.whatsapp.net"
    assert msg.contact.wa_id == "5511987654321"
    assert msg.contact.name is None
    assert msg.text == "Olá! Seu pedido saiu para entrega."
    assert msg.content["from_me"] is True
    assert msg.content["source"] == "api"


@pytest.mark.parametrize(("name", "status", "ts"), [
    ("status_sent", "sent", 1712995260),
    ("status_delivered", "delivered", 1712995270),
    ("status_read", "read", 1712995290),
    ("status_played", "played", 1712995300),
    ("status_failed", "failed", 1712995310),
])
def test_statuses(name: str, status: str, ts: int) -> None:
    (event,) = whapi.parse_webhook(load(name))
    assert isinstance(event, StatusUpdate)
    assert event.provider is Provider.WHAPI
    assert event.channel_key == CHANNEL
    assert event.status == status
    assert event.timestamp == ts
    assert event.recipient == "5511987654321@s.whatsapp.net"
    assert event.raw == load(name)["statuses"][0]


def test_status_failed_errors() -> None:
    (event,) = whapi.parse_webhook(load("status_failed"))
    assert isinstance(event, StatusUpdate)
    assert event.errors == [ProviderError(code="470", reason="Recipient is not on WhatsApp",
                                          details="the number 5511987654321 is not registered")]


def test_batch_messages_then_statuses() -> None:
    events = whapi.parse_webhook(load("batch"))
    assert [type(e).__name__ for e in events] == [
        "InboundMessage", "InboundMessage", "StatusUpdate", "StatusUpdate"]
    assert [e.provider_message_id for e in events[:2]] == [  # type: ignore[union-attr]
        "pIq8.MsuGWTuJnWXGVPVUx-xEVZUgC.TH", "qJr9.NtvHXUvKoXYHWQWVy-yFWAVhD.UI"]
    assert [e.status for e in events[2:]] == ["delivered", "read"]  # type: ignore[union-attr]


def test_health_notice() -> None:
    (notice,) = whapi.parse_webhook(load("health"))
    assert isinstance(notice, ProviderNotice)
    assert notice.field == "channel"
    assert notice.channel_key == CHANNEL
    assert notice.raw["health"]["status"]["text"] == "AUTH"
    assert notice.raw["event"] == {"type": "channel", "event": "post"}


def test_chats_notice() -> None:
    (notice,) = whapi.parse_webhook(load("chats"))
    assert isinstance(notice, ProviderNotice)
    assert notice.field == "chats"
    assert notice.raw["chats_updates"][0]["changes"] == ["unread"]


def test_notice_field_falls_back_to_key() -> None:
    (notice,) = whapi.parse_webhook({"groups": [{"id": "1203@g.us"}], "channel_id": CHANNEL})
    assert isinstance(notice, ProviderNotice) and notice.field == "groups"


def test_events_roundtrip_through_dicts() -> None:
    for path in sorted(FIXTURES.glob("*.json")):
        events: list[Event] = whapi.parse_webhook(json.loads(path.read_text(encoding="utf-8")))
        assert events, path.name
        for event in events:
            assert event_from_dict(json.loads(json.dumps(event.to_dict()))) == event


def test_channel_argument() -> None:
    payload = load("text")
    del payload["channel_id"]
    (msg,) = whapi.parse_webhook(payload, channel_key=CHANNEL)
    assert msg.channel_key == CHANNEL
    with pytest.raises(PayloadError):
        whapi.parse_webhook(payload)
    assert whapi.parse_webhook(load("text"), channel_key=CHANNEL)[0].channel_key == CHANNEL
    with pytest.raises(PayloadError, match="names channel"):
        whapi.parse_webhook(load("text"), channel_key="OTHER-CH4NN")


@pytest.mark.parametrize("payload", [
    None, [], "x", {}, {"messages": [{"id": "1"}]},
    {"channel_id": CHANNEL, "messages": {"id": "1"}},
    {"channel_id": CHANNEL, "messages": ["x"]},
    {"channel_id": CHANNEL, "messages": [{"type": "text", "text": {"body": "no id"}}]},
    {"channel_id": CHANNEL, "statuses": [{"status": "read"}]},
    {"channel_id": CHANNEL, "statuses": [{"id": "x"}]},
])
def test_junk_raises_payload_error(payload: Any) -> None:
    with pytest.raises(PayloadError):
        whapi.parse_webhook(payload)


# --- media downloads ----------------------------------------------------------------------------

def _channel(base_url: str | None = None) -> Channel:
    return Channel(id=2, tenant="acme", provider=Provider.WHAPI, key=CHANNEL,
                   api_base_url=base_url, token=TOKEN)


def test_media_download_by_id() -> None:
    media = MediaRef(provider_media_id="jpeg-9b2f3c4d5e6f7a8b-gNEIDpL.CQ", mime_type="image/jpeg",
                     sha256="abc=", size=25950, filename="x.jpg")
    download = whapi_media.media_download(_channel(), media)
    assert download.url == "https://gate.whapi.cloud/media/jpeg-9b2f3c4d5e6f7a8b-gNEIDpL.CQ"
    assert download.headers == {"Authorization": f"Bearer {TOKEN}"}
    assert (download.mime_type, download.sha256, download.size, download.filename) == (
        "image/jpeg", "abc=", 25950, "x.jpg")
    assert TOKEN not in repr(download)


def test_media_download_id_is_escaped() -> None:
    download = whapi_media.media_download(_channel(), MediaRef(provider_media_id="../settings?x=1"))
    assert download.url == "https://gate.whapi.cloud/media/..%2Fsettings%3Fx%3D1"


def test_media_download_foreign_link_gets_no_token() -> None:
    msg = inbound("image_autodownload")
    assert msg.media is not None
    download = whapi_media.media_download(_channel(), msg.media)
    assert download.url == msg.raw["image"]["link"]
    assert download.headers == {}


@pytest.mark.parametrize(("link", "authorized"), [
    ("https://gate.whapi.cloud/media/oga-1", True),
    ("https://GATE.whapi.cloud:443/media/oga-1", True),
    ("http://gate.whapi.cloud/media/oga-1", False),
    ("https://gate.whapi.cloud.evil.example/media/oga-1", False),
    ("https://gate.whapi.cloud:8443/media/oga-1", False),
    ("https://user@evil.example/gate.whapi.cloud/oga-1", False),
])
def test_media_download_link_token_only_for_own_origin(link: str, authorized: bool) -> None:
    download = whapi_media.media_download(_channel(),
                                          MediaRef(link=link, provider_media_id="oga-1"))
    assert download.url == link
    assert ("Authorization" in download.headers) is authorized


def test_media_download_custom_base_url() -> None:
    channel = _channel("http://127.0.0.1:8089/")
    download = whapi_media.media_download(channel, MediaRef(link="http://127.0.0.1:8089/files/a.ogg"))
    assert download.headers == {"Authorization": f"Bearer {TOKEN}"}
    download = whapi_media.media_download(channel, MediaRef(provider_media_id="a"))
    assert download.url == "http://127.0.0.1:8089/media/a"


def test_media_download_without_id_or_link() -> None:
    with pytest.raises(MediaResolveError) as info:
        whapi_media.media_download(_channel(), MediaRef())
    assert not info.value.temporary


def test_group_chat_message_keeps_the_group_id() -> None:
    payload = load("text")
    payload["messages"][0]["chat_id"] = "120363040469423382@g.us"
    (msg,) = whapi.parse_webhook(payload)
    assert isinstance(msg, InboundMessage)
    assert msg.group_id == "120363040469423382@g.us"
    assert msg.sender == "5511987654321"
    assert one_message("text").group_id is None
