"""Queue envelopes of the inbound pipeline and the receive stage's parsing."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from wacloud.adapters.db.engines import create_engine
from wacloud.adapters.db.registry.store import Registry
from wacloud.adapters.http.download_client import DownloadClient
from wacloud.adapters.http.provider_client import ProviderClient
from wacloud.adapters.media.local.store import LocalMediaStore
from wacloud.credentials.broker import CredentialsBroker
from wacloud.domain.model import (
    Event,
    InboundMessage,
    PayloadError,
    Provider,
    ProviderError,
    StatusUpdate,
)
from wacloud.media.copier import MediaCopier
from wacloud.security.crypto import SecretBox, new_key
from wacloud.stages.envelopes import RawWebhook, envelope_bytes, envelope_text
from wacloud.stages.receive import ReceiveContext, parse, receive

ARBITRARY_BODIES = [
    b"",
    b"\n\n\r\n",
    b'{"object":"whatsapp_business_account"}\n{"second":"line"}',
    bytes(range(256)),
    b"\xff\xfe\x00\x80 not utf-8 \xc3\x28",
    "Olá 👍 日本語".encode(),
    os.urandom(4096),
]


def webhook(provider: str, body: bytes | dict[str, Any] | list[Any],
            channel_key: str | None = None) -> RawWebhook:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return RawWebhook(provider=provider, channel_key=channel_key, received_at=1.5, body=data)


# -- RawWebhook ------------------------------------------------------------------------------


@pytest.mark.parametrize("body", ARBITRARY_BODIES)
@pytest.mark.parametrize("channel_key", [None, "MANTIS-X7K2P", "ключ\n\"x\""])
def test_raw_webhook_round_trips_arbitrary_bytes(body: bytes, channel_key: str | None) -> None:
    raw = RawWebhook(provider="whapi", channel_key=channel_key, received_at=1_700_000_000.25,
                     body=body, kind="webhook")

    encoded = raw.encode()
    decoded = RawWebhook.decode(encoded)

    assert decoded == raw
    assert encoded.endswith(body)
    assert encoded.count(b"\n") >= 1 and b"\n" not in encoded[:encoded.index(b"\n")]


def test_raw_webhook_round_trips_the_events_kind() -> None:
    raw = RawWebhook(provider="meta", channel_key=None, received_at=2.0, body=b"[]",
                     kind="events")

    assert RawWebhook.decode(raw.encode()).kind == "events"


# -- parked envelope text --------------------------------------------------------------------


@pytest.mark.parametrize("body", ARBITRARY_BODIES)
def test_envelope_text_round_trips_any_bytes(body: bytes) -> None:
    data = RawWebhook("meta", None, 3.0, body).encode()

    text = envelope_text(data)

    assert isinstance(text, str)
    assert envelope_bytes(text) == data


def test_envelope_text_is_readable_for_utf8_and_base64_otherwise() -> None:
    utf8 = '{"v":1}\n{"text":"Olá 👍"}'.encode()
    binary = b'{"v":1}\n\xff\xfe\x80'

    assert envelope_text(utf8) == utf8.decode()
    assert envelope_text(binary).startswith("base64:")
    assert envelope_bytes(envelope_text(binary)) == binary


# -- parse -----------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"", b"not json", b'{"object": ', b"\x80\x81\x82",
                                  b"\xff\xfe\x00"])
@pytest.mark.parametrize(("provider", "channel_key"), [("meta", None), ("whapi", "CH"),
                                                       ("chakra", "plugin-1")])
def test_parse_non_json_raises_payload_error(body: bytes, provider: str,
                                             channel_key: str | None) -> None:
    with pytest.raises(PayloadError, match=r"not JSON|not UTF-8"):
        parse(webhook(provider, body, channel_key))


@pytest.mark.parametrize("body", [b"[]", b'[{"object": "whatsapp_business_account"}]',
                                  b'"text"', b"42", b"null", b"true"])
@pytest.mark.parametrize(("provider", "channel_key"), [("meta", None), ("whapi", "CH"),
                                                       ("chakra", "plugin-1")])
def test_parse_non_object_raises_payload_error(body: bytes, provider: str,
                                               channel_key: str | None) -> None:
    with pytest.raises(PayloadError, match="not a JSON object"):
        parse(webhook(provider, body, channel_key))


@pytest.mark.parametrize(("provider", "channel_key", "body"), [
    ("meta", None, {"hello": "world"}),
    ("meta", None, {"object": "page", "entry": []}),
    ("meta", None, {"object": "whatsapp_business_account", "entry": "x"}),
    ("meta", None, {"object": "whatsapp_business_account", "entry": [1]}),
    ("chakra", "plugin-1", {"hello": "world"}),
    ("chakra", None, {"object": "whatsapp_business_account", "entry": []}),
    ("whapi", "CH", {"messages": "not a list"}),
    ("whapi", None, {"messages": []}),
])
def test_parse_unknown_shapes_raise_payload_error(provider: str, channel_key: str | None,
                                                  body: dict[str, Any]) -> None:
    with pytest.raises(PayloadError):
        parse(webhook(provider, body, channel_key))


def test_parse_events_kind_rebuilds_the_events() -> None:
    events: list[Event] = [
        InboundMessage(provider=Provider.META, channel_key="111", provider_message_id="wamid.1",
                       type="text", text="hi", raw={"id": "wamid.1"}),
        StatusUpdate(provider=Provider.META, channel_key="111", provider_message_id="wamid.2",
                     status="failed", timestamp=5, errors=[ProviderError("131026", "nope")]),
    ]
    raw = RawWebhook(provider="meta", channel_key=None, received_at=1.0,
                     body=json.dumps([e.to_dict() for e in events]).encode(), kind="events")

    assert parse(raw) == events


async def test_receive_parks_an_unparseable_body_losslessly(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    registry = Registry(engine, SecretBox([new_key()]))
    registry.create_schema()
    broker = CredentialsBroker(registry, tenants_dir=tmp_path / "tenants")

    async def park(**kwargs: Any) -> int:
        return await asyncio.to_thread(registry.park, **kwargs)

    data = RawWebhook("whapi", "CH", 4.0, b"\xff not json \x80").encode()
    try:
        async with DownloadClient() as client, ProviderClient() as api:
            copier = MediaCopier(LocalMediaStore(tmp_path / "media"), client,
                                 tmp_dir=tmp_path / "tmp", max_bytes=1024, allow_local=True,
                                 api=api)
            outputs = await receive(data, ReceiveContext(broker, copier, park))
        [item] = registry.parked_items()
    finally:
        broker.close()
        engine.dispose()

    assert outputs == []
    assert (item.stage, item.provider, item.channel_key) == ("receive", "whapi", "CH")
    assert "cannot parse whapi webhook" in item.reason
    assert envelope_bytes(item.payload) == data
