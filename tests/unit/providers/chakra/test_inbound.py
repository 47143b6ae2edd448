"""Chakra provider: Meta-format webhooks routed by plugin id, and its media endpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from wacloud.domain.model import Channel, InboundMessage, MediaRef, PayloadError, Provider
from wacloud.providers.chakra import inbound as chakra
from wacloud.providers.chakra import media as chakra_media
from wacloud.providers.media import MediaResolveError

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures" / "chakra"
PLUGIN = "3f1c2a9e-8b7d-4c6e-9a51-0d2e4f6b8c10"
TOKEN = "chakra-token-never-shown-55"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))
    return data


def test_text_routed_by_plugin() -> None:
    (msg,) = chakra.parse_webhook(load("text"), plugin_id=PLUGIN)
    assert isinstance(msg, InboundMessage)
    assert msg.provider is Provider.CHAKRA
    assert msg.channel_key == PLUGIN
    assert msg.account_key == "102290129340777"
    assert msg.recipient == "5521930005678"
    assert msg.type == "text"
    assert msg.text == "Olá, meu pedido chegou?"
    assert msg.sender == "5511987654321"
    assert msg.contact.user_id == "BR.1502576394655843"
    assert msg.timestamp == 1750857384


def test_image() -> None:
    (msg,) = chakra.parse_webhook(load("image"), plugin_id=PLUGIN)
    assert isinstance(msg, InboundMessage)
    assert msg.channel_key == PLUGIN
    assert msg.text == "Comprovante do Pix"
    assert msg.media is not None
    assert msg.media.provider_media_id == "1038542891735201"
    assert msg.media.mime_type == "image/jpeg"


def test_junk() -> None:
    with pytest.raises(PayloadError):
        chakra.parse_webhook({"_data": {}}, plugin_id=PLUGIN)


def _channel() -> Channel:
    return Channel(id=3, tenant="acme", provider=Provider.CHAKRA, key=PLUGIN,
                   phone_number_id="106540352242999", graph_version="v23.0", token=TOKEN)


def test_media_download() -> None:
    media = MediaRef(provider_media_id="1038542891735201", mime_type="image/jpeg", sha256="s=",
                     filename="f.jpg")
    download = chakra_media.media_download(_channel(), media)
    assert download.url == (
        "https://api.chakrahq.com/v1/whatsapp/v23.0/media/1038542891735201/show")
    assert download.headers == {"Authorization": f"Bearer {TOKEN}"}
    assert (download.mime_type, download.sha256, download.filename) == (
        "image/jpeg", "s=", "f.jpg")
    assert TOKEN not in repr(download)


def test_media_download_without_id() -> None:
    with pytest.raises(MediaResolveError) as info:
        chakra_media.media_download(_channel(), MediaRef(link="https://x.example/a"))
    assert not info.value.temporary
