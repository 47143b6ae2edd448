"""Each Meta entry is authenticated by the app secret of the channel it routes to.

Real SQLite registry and tenant databases, the inbound stage as the worker runs it, the parked
replay as `wacloud parked replay` builds it, and the webhook receiver over ASGI with a real
SQLite queue.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from starlette.applications import Starlette

from wacloud.adapters.db.engines import create_engine
from wacloud.adapters.db.registry.store import Registry
from wacloud.adapters.db.tenant.views import list_messages
from wacloud.adapters.http.download_client import DownloadClient
from wacloud.adapters.http.provider_client import ProviderClient
from wacloud.adapters.media.local.store import LocalMediaStore
from wacloud.adapters.queue.base import QueueSpec
from wacloud.adapters.queue.sqlite.broker import SqliteBroker
from wacloud.admin.operations import replay_envelope
from wacloud.credentials.broker import CredentialsBroker
from wacloud.domain.model import Provider
from wacloud.hosting.webhooks import WebhookReceiver
from wacloud.media.copier import MediaCopier
from wacloud.providers.meta.inbound import parse_webhook
from wacloud.providers.meta.webhook_auth import other_object
from wacloud.security.crypto import SecretBox, new_key
from wacloud.stages.envelopes import RawWebhook, envelope_text
from wacloud.stages.inbound import InboundContext, receive_and_write
from wacloud.stages.receive import ReceiveContext
from wacloud.stages.write import WriteContext
from wacloud.testing.webhooks import dumps, meta_envelope, meta_text, sign

NUMBER_A, NUMBER_B, WABA_A, WABA_B = "1065000000001", "1065000000002", "1022000001", "1022000002"


def refused(reason: str) -> float:
    return REGISTRY.get_sample_value("wacloud_inbound_refused_total",
                                     {"provider": "meta", "reason": reason}) or 0.0


def entry(number: str, waba: str, text: str) -> dict[str, Any]:
    message, contact = meta_text("5511987654321", text, f"wamid.{uuid.uuid4().hex}")
    envelope = meta_envelope(number, waba, "5511940001234", [message], None, [contact])
    return dict(envelope["entry"][0])


def body_of(*entries: dict[str, Any]) -> bytes:
    return dumps({"object": "whatsapp_business_account", "entry": list(entries)})


@dataclass
class World:
    registry: Registry
    broker: CredentialsBroker
    ctx: InboundContext

    def channel(self, tenant: str, number: str, waba: str, secret: str | None) -> None:
        if tenant not in {t.slug for t in self.registry.tenants()}:
            self.registry.add_tenant(tenant)
        self.registry.add_channel(tenant=tenant, provider=Provider.META, key=number,
                                  phone_number_id=number, waba_id=waba, token="tok",
                                  app_secret=secret)
        self.broker.refresh(force=True)

    def texts(self, tenant: str) -> list[str]:
        return [r["text"] for r in list_messages(self.broker.tenant_store(tenant).engine)]

    async def inbound(self, *envelopes: bytes) -> None:
        await receive_and_write(list(envelopes), self.ctx)


def world_fixture(global_secret: str | None) -> Any:
    async def make(tmp_path: Path) -> AsyncIterator[World]:
        engine = create_engine(f"sqlite:///{tmp_path / 'registry.db'}")
        registry = Registry(engine, SecretBox([new_key()]))
        registry.create_schema()
        broker = CredentialsBroker(registry, tenants_dir=tmp_path / "tenants", cache_seconds=0,
                                   global_meta_app_secret=global_secret)

        async def park(**kwargs: Any) -> int:
            return await asyncio.to_thread(registry.park, **kwargs)

        async with DownloadClient() as client, ProviderClient() as api:
            copier = MediaCopier(LocalMediaStore(tmp_path / "media"), client,
                                 tmp_dir=tmp_path / "tmp", max_bytes=1024, allow_local=True,
                                 api=api)
            ctx = InboundContext(ReceiveContext(broker, copier, park),
                                 WriteContext(broker, park))
            try:
                yield World(registry, broker, ctx)
            finally:
                broker.close()
                engine.dispose()
    return make


world = pytest.fixture(world_fixture(None))
world_with_global_secret = pytest.fixture(world_fixture("one-app-for-everyone"))


def webhook(body: bytes, signature: str | None) -> bytes:
    return RawWebhook("meta", None, 1.0, body, signature=signature).encode()


# -- one body, two tenants --------------------------------------------------------------------


async def test_an_entry_signed_with_another_tenants_secret_is_refused_and_counted(
        world: World) -> None:
    world.channel("a", NUMBER_A, WABA_A, "secret-a")
    world.channel("b", NUMBER_B, WABA_B, "secret-b")
    body = body_of(entry(NUMBER_A, WABA_A, "for a"), entry(NUMBER_B, WABA_B, "forged for b"))
    before = refused("signature")

    await world.inbound(webhook(body, sign(body, "secret-a")))

    assert world.texts("a") == ["for a"]  # the mix is stored in part: A signed A's entry
    assert world.texts("b") == []
    assert refused("signature") == before + 1
    assert world.registry.parked_items() == []


async def test_one_app_for_every_tenant_stores_every_entry(world: World) -> None:
    world.channel("a", NUMBER_A, WABA_A, "shared")
    world.channel("b", NUMBER_B, WABA_B, "shared")
    body = body_of(entry(NUMBER_A, WABA_A, "for a"), entry(NUMBER_B, WABA_B, "for b"))

    await world.inbound(webhook(body, sign(body, "shared")))

    assert (world.texts("a"), world.texts("b")) == (["for a"], ["for b"])


async def test_the_global_app_secret_authenticates_every_channel(
        world_with_global_secret: World) -> None:
    world = world_with_global_secret
    world.channel("a", NUMBER_A, WABA_A, None)
    world.channel("b", NUMBER_B, WABA_B, "own-secret-b")
    body = body_of(entry(NUMBER_A, WABA_A, "for a"), entry(NUMBER_B, WABA_B, "for b"))

    await world.inbound(webhook(body, sign(body, "one-app-for-everyone")))

    assert (world.texts("a"), world.texts("b")) == (["for a"], ["for b"])


async def test_a_webhook_without_its_signature_is_refused_but_a_v1_envelope_is_not(
        world: World) -> None:
    world.channel("a", NUMBER_A, WABA_A, "secret-a")
    body = body_of(entry(NUMBER_A, WABA_A, "unsigned"))
    before = refused("no_signature")

    await world.inbound(webhook(body, None))
    assert world.texts("a") == [] and refused("no_signature") == before + 1

    # Queued by the previous version, which checked the whole body before queueing it.
    legacy = b'{"v":1,"provider":"meta","channel_key":null,"received_at":1.0,' \
             b'"kind":"webhook"}\n' + body_of(entry(NUMBER_A, WABA_A, "from the old queue"))
    assert RawWebhook.decode(legacy).legacy
    await world.inbound(legacy)
    assert world.texts("a") == ["from the old queue"]


# -- parked and replayed ----------------------------------------------------------------------


async def test_a_parked_entry_is_checked_again_against_the_channel_it_replays_to(
        world: World) -> None:
    world.channel("a", NUMBER_A, WABA_A, "secret-a")
    body = body_of(entry(NUMBER_A, WABA_A, "for a"), entry("1077000000001", "1099000001", "x1"),
                   entry("1077000000002", "1099000002", "x2"))
    signature = sign(body, "secret-a")
    await world.inbound(webhook(body, signature))
    parked = world.registry.parked_items()
    assert len(parked) == 2 and {p.channel_key for p in parked} == {"1077000000001",
                                                                    "1077000000002"}
    assert all(p.raw_body == envelope_text(body) and p.signature == signature for p in parked)
    assert all(p.summary()["signed_body"] for p in parked)

    # One number now belongs to a tenant of the same app, the other to a tenant whose app
    # did not sign this body.
    world.channel("same-app", "1077000000001", "1099000001", "secret-a")
    world.channel("other-app", "1077000000002", "1099000002", "secret-c")
    before = refused("signature")
    await world.inbound(*(replay_envelope(item) for item in parked))

    assert world.texts("same-app") == ["x1"]
    assert world.texts("other-app") == []
    assert refused("signature") == before + 1
    assert world.texts("a") == ["for a"]


async def test_a_replay_with_nothing_to_check_is_refused(world: World) -> None:
    world.channel("a", NUMBER_A, WABA_A, "secret-a")
    message, _ = meta_text("5511987654321", "old", f"wamid.{uuid.uuid4().hex}")
    events = meta_envelope(NUMBER_A, WABA_A, "5511940001234", [message])
    payload = json.dumps([e.to_dict() for e in parse_webhook(events)])
    # Parked before signatures were kept: events only, or a v1 envelope.
    old_write = world.registry.park(stage="write", reason="no tenant", payload=payload,
                                    provider="meta", channel_key=NUMBER_A)
    legacy = ('{"v":1,"provider":"meta","channel_key":null,"received_at":1.0,"kind":"webhook"}'
              "\n" + dumps(events).decode())
    old_receive = world.registry.park(stage="receive", reason="cannot parse", payload=legacy,
                                      provider="meta")
    unverifiable, unsigned = refused("unverifiable"), refused("no_signature")

    await world.inbound(*(replay_envelope(world.registry.parked_item(i))
                          for i in (old_write, old_receive)))

    assert world.texts("a") == []
    assert refused("unverifiable") == unverifiable + 1
    assert refused("no_signature") == unsigned + 1


# -- envelopes and other Meta products --------------------------------------------------------


def test_the_envelope_keeps_the_signature_and_the_replay_mark() -> None:
    raw = RawWebhook("meta", None, 2.5, b'{"x":1}\n', signature="sha256=" + "ab" * 32,
                     replay=True)
    decoded = RawWebhook.decode(raw.encode())
    assert decoded == raw and not decoded.legacy
    assert RawWebhook.decode(RawWebhook("meta", None, 1.0, b"{}").encode()).signature is None


@pytest.mark.parametrize(("body", "expected"), [
    (b'{"object":"whatsapp_business_account","entry":[]}', None),
    (b'{ "entry": [], "object": "whatsapp_business_account" }', None),
    (b'{"object":"page","entry":[]}', "page"),
    (b'{"entry":[],"object":"instagram"}', "instagram"),
    (b'{"object":"' + b"x" * 100 + b'"}', "other"),
    (b'{"object":"a b{}"}', "other"),
    (b'{"object":1}', None),
    (b'{"entry":[]}', None),
    (b"not json", None),
    (b"[1]", None),
])
def test_other_meta_objects_are_recognized(body: bytes, expected: str | None) -> None:
    assert other_object(body) == expected


@pytest.mark.parametrize("park_them", [False, True])
async def test_other_meta_objects_are_answered_and_counted_or_parked_by_setting(
        tmp_path: Path, park_them: bool) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    registry = Registry(engine, SecretBox([new_key()]))
    registry.create_schema()
    registry.add_tenant("a")
    registry.add_channel(tenant="a", provider=Provider.META, key=NUMBER_A, token="tok",
                         app_secret="secret-a")
    broker = CredentialsBroker(registry, tenants_dir=tmp_path / "tenants", cache_seconds=0)
    queues = SqliteBroker(tmp_path / "queues.db")
    raw_queue = queues.queue(QueueSpec("inbound.raw"))
    receiver = WebhookReceiver(Starlette(), broker, raw_queue, 1 << 20, park_them)
    page = b'{"object":"page","entry":[{"id":"1","time":1,"messaging":[]}]}'
    counted = REGISTRY.get_sample_value("wacloud_meta_other_objects_total",
                                        {"object": "page"}) or 0.0
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=receiver),
                                     base_url="http://gw") as client:
            forged = await client.post("/webhooks/meta", content=page,
                                       headers={"X-Hub-Signature-256": sign(page, "nope")})
            answer = await client.post("/webhooks/meta", content=page,
                                       headers={"X-Hub-Signature-256": sign(page, "secret-a")})
        queued = await raw_queue.receive(10)
    finally:
        await queues.close()
        broker.close()
        engine.dispose()

    assert forged.status_code == 401  # the signature is checked first
    assert answer.status_code == 200
    after = REGISTRY.get_sample_value("wacloud_meta_other_objects_total",
                                      {"object": "page"}) or 0.0
    if park_them:  # queued as before: the receive stage parks it as not a WhatsApp body
        assert [RawWebhook.decode(m.body).body for m in queued] == [page]
        assert after == counted
    else:
        assert queued == [] and after == counted + 1
