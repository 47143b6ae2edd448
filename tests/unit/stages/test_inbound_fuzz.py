"""Bad webhooks through the inbound stages as the worker runs them: real SQLite registry and
tenant databases, every body signed as its provider would. Whatever the body, the stage does
not raise, and every event the parser found is stored in the tenant database or the body left
a parked item with a reason. A body the parser refuses is parked whole, with why."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import example, given

from tests.fuzzing import bodies, fixtures
from wacloud.adapters.db.engines import create_engine
from wacloud.adapters.db.registry.store import Registry, parked
from wacloud.adapters.db.tenant import tables as t
from wacloud.adapters.db.tenant.store import fingerprint
from wacloud.adapters.http.download_client import DownloadClient
from wacloud.adapters.http.provider_client import ProviderClient
from wacloud.adapters.media.local.store import LocalMediaStore
from wacloud.credentials.broker import CredentialsBroker
from wacloud.domain.model import Event, InboundMessage, PayloadError, Provider, StatusUpdate
from wacloud.media.copier import MediaCopier
from wacloud.security.crypto import SecretBox, new_key
from wacloud.stages.envelopes import RawWebhook
from wacloud.stages.inbound import InboundContext, receive_and_write
from wacloud.stages.receive import ReceiveContext, parse, receive
from wacloud.stages.write import WriteContext, write
from wacloud.testing.webhooks import sign

APP_SECRET = "fuzz-app-secret"
ROUTES = {"meta": None, "whapi": "MANTIS-M72HC", "chakra": "plugin-fuzz"}
META_NUMBERS = {"106540352242922": "102290129340398", "106540352242999": "102290129340777"}
META_BODIES = bodies(fixtures("meta") + fixtures("chakra"))
WHAPI_BODIES = bodies(fixtures("whapi"))

# Found by this test, each once a crash of the stage (a RecursionError or a
# UnicodeEncodeError escaping it): deep nesting, a lone surrogate escape, UTF-8-encoded
# surrogate bytes, NaN, a flow reply whose response_json nests deeper than the body may.
DEEP = b'{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[' \
       + b"[" * 900 + b"]" * 900 + b"]}]}"
SURROGATE = b'{"channel_id":"MANTIS-M72HC","messages":[{"id":"w1","type":"text",' \
            b'"text":{"body":"\\ud800"}}]}'
SURROGATE_BYTES = b'{"channel_id":"MANTIS-M72HC","messages":[{"id":"w2","type":"text",' \
                  b'"text":{"body":"\xed\xa0\x80"}}]}'
NAN = b'{"channel_id":"MANTIS-M72HC","messages":[{"id":"w3","type":"text","x":NaN}]}'
DEEP_FLOW = (b'{"object":"whatsapp_business_account","entry":[{"id":"102290129340398",'
             b'"changes":[{"field":"messages","value":{"metadata":{"phone_number_id":'
             b'"106540352242922"},"messages":[{"id":"wamid.flow","type":"interactive",'
             b'"interactive":{"type":"nfm_reply","nfm_reply":{"response_json":"'
             + b"[" * 950 + b"]" * 950 + b'"}}}]}}]}]}')


@dataclass
class World:
    registry: Registry
    broker: CredentialsBroker
    ctx: InboundContext
    # Knows no channel: the receive stage's first media try then never leaves the process.
    bare: ReceiveContext
    runner: asyncio.Runner

    def last_parked(self) -> int:
        with self.registry.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(parked.c.id), 0)))
                       .scalar_one())

    def parked_since(self, last: int) -> list[tuple[str, str]]:
        with self.registry.engine.connect() as conn:
            rows = conn.execute(sa.select(parked.c.stage, parked.c.reason)
                                .where(parked.c.id > last)).all()
        return [(stage, reason) for stage, reason in rows]

    def stored(self, event: Event) -> bool:
        engine = self.broker.tenant_store("fuzz").engine
        if isinstance(event, InboundMessage):
            query = sa.select(t.messages.c.id).where(
                t.messages.c.provider_message_id == event.provider_message_id)
        elif isinstance(event, StatusUpdate):
            query = sa.select(t.status_events.c.id).where(
                t.status_events.c.provider_message_id == event.provider_message_id,
                t.status_events.c.status == event.status)
        else:
            query = sa.select(t.notices.c.id).where(
                t.notices.c.fingerprint == fingerprint(event.field, event.raw))
        with engine.connect() as conn:
            return conn.execute(query.limit(1)).first() is not None


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with tempfile.TemporaryDirectory() as tmp, asyncio.Runner() as runner:
        root = Path(tmp)
        secrets = SecretBox([new_key()])
        registry = Registry(create_engine(f"sqlite:///{root / 'registry.db'}"), secrets)
        registry.create_schema()
        registry.add_tenant("fuzz")
        for number, waba in META_NUMBERS.items():
            registry.add_channel(tenant="fuzz", provider=Provider.META, key=number,
                                 phone_number_id=number, waba_id=waba, token="tok")
        registry.add_channel(tenant="fuzz", provider=Provider.WHAPI, key=ROUTES["whapi"],
                             token="tok", webhook_secret="s")
        registry.add_channel(tenant="fuzz", provider=Provider.CHAKRA, key=ROUTES["chakra"],
                             token="tok", webhook_secret="s")
        broker = CredentialsBroker(registry, tenants_dir=root / "tenants",
                                   global_meta_app_secret=APP_SECRET)
        empty = Registry(create_engine(f"sqlite:///{root / 'empty.db'}"), secrets)
        empty.create_schema()
        bare_broker = CredentialsBroker(empty, tenants_dir=root / "none",
                                        global_meta_app_secret=APP_SECRET)

        async def park(**kwargs: Any) -> int:
            return await asyncio.to_thread(registry.park, **kwargs)

        async def open_clients() -> tuple[DownloadClient, ProviderClient]:
            return DownloadClient(), await ProviderClient().__aenter__()

        client, api = runner.run(open_clients())
        copier = MediaCopier(LocalMediaStore(root / "media"), client, tmp_dir=root / "tmp",
                             max_bytes=1024, allow_local=False, api=api)
        ctx = InboundContext(ReceiveContext(broker, copier, park), WriteContext(broker, park))
        try:
            yield World(registry, broker, ctx, ReceiveContext(bare_broker, copier, park), runner)
        finally:
            runner.run(client.aclose())
            runner.run(api.__aexit__(None, None, None))
            broker.close()
            bare_broker.close()
            registry.engine.dispose()
            empty.engine.dispose()


def envelope(provider: str, body: bytes) -> RawWebhook:
    signature = sign(body, APP_SECRET) if provider == "meta" else None
    return RawWebhook(provider, ROUTES[provider], 1.0, body, signature=signature)


def expect_stored_or_parked(world: World, raw: RawWebhook, last: int) -> None:
    new = world.parked_since(last)
    assert all(reason.strip() for _, reason in new)
    try:
        events = parse(raw)
    except PayloadError:
        assert [stage for stage, _ in new] == ["receive"]
        return
    missing = [e for e in events if not world.stored(e)]
    assert not missing or new, f"neither stored nor parked: {missing[:3]}"


def run_inbound(world: World, provider: str, body: bytes) -> None:
    raw = envelope(provider, body)
    last = world.last_parked()
    world.runner.run(receive_and_write([raw.encode()], world.ctx))
    expect_stored_or_parked(world, raw, last)


@pytest.mark.parametrize("provider", ["meta", "chakra"])
@given(body=META_BODIES)
@example(body=DEEP).via("regression")
@example(body=DEEP_FLOW).via("regression")
def test_meta_shaped_webhooks_are_stored_or_parked(world: World, provider: str,
                                                   body: bytes) -> None:
    run_inbound(world, provider, body)


@given(body=WHAPI_BODIES)
@example(body=SURROGATE).via("regression")
@example(body=SURROGATE_BYTES).via("regression")
@example(body=NAN).via("regression")
def test_whapi_webhooks_are_stored_or_parked(world: World, body: bytes) -> None:
    run_inbound(world, "whapi", body)


@pytest.mark.parametrize("provider", list(ROUTES))
@given(body=META_BODIES | WHAPI_BODIES)
@example(body=SURROGATE).via("regression")
def test_the_receive_then_write_stages_store_or_park(world: World, provider: str,
                                                     body: bytes) -> None:
    """The two-stage path (Lambda, distributed workers): receive, the events queue, write."""
    raw = envelope(provider, body)
    last = world.last_parked()
    outputs = world.runner.run(receive(raw.encode(), world.bare))
    for output in outputs:
        world.runner.run(write(output.message.body, world.ctx.write))
    expect_stored_or_parked(world, raw, last)
