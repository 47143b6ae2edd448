"""LGPD erasure, anonymization, export and retention over real files: a SQLite registry and
tenant DBs, the SQLite queue file, the local media store and parked items.

Two contacts of tenant "acme" share everything a pair of customers can share (a channel, a
webhook batch, an event batch, a parked payload and one identical media file); Maria asks to be
forgotten, João must keep every byte. Tenant "beta" also talks to Maria and is not asked.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from wacloud.adapters.db.engines import create_engine
from wacloud.adapters.db.registry.store import Registry
from wacloud.adapters.db.tenant import tables as t
from wacloud.adapters.db.tenant.outbox import insert_outbound
from wacloud.adapters.db.tenant.privacy import set_retention
from wacloud.adapters.db.tenant.store import TenantStore
from wacloud.adapters.db.tenant.submissions import IdempotencyConflict, submit_outbound
from wacloud.adapters.db.types import utcnow
from wacloud.adapters.media.local.store import LocalMediaStore
from wacloud.adapters.queue.base import Queue, QueueSpec
from wacloud.adapters.queue.sqlite.broker import SqliteBroker
from wacloud.bootstrap import build_gateway, queue_specs
from wacloud.credentials.broker import CredentialsBroker
from wacloud.domain.model import (
    Contact,
    Direction,
    InboundMessage,
    MediaRef,
    MediaStatus,
    OutboundStatus,
    Provider,
    ProviderNotice,
    StatusUpdate,
)
from wacloud.domain.submission import request_hash
from wacloud.privacy.lgpd import (
    PrivacyContext,
    PrivacyError,
    erase_contact,
    export_contact,
    purge_expired,
    retention_loop,
    run_retention,
)
from wacloud.security.crypto import SecretBox, new_key
from wacloud.settings import Settings
from wacloud.stages import envelopes
from wacloud.stages.envelopes import RawWebhook, dumps
from wacloud.testing.webhooks import meta_envelope, meta_text, sign

MARIA = "5511987654321"
MARIA_BSUID = "BR.1502576394655843"
JOAO = "5521912345678"
BUSINESS = "5511940001234"
PN_A, WABA_A, WHAPI_A, PN_B = "106540352242922", "102290129340398", "MANTIS-M72HC", "1065999"
APP_SECRETS = {PN_A: "app-secret-a", PN_B: "app-secret-b"}
SHARED_KEY = "acme/PN/2026/11/20/shared.jpg"  # the same picture sent by both contacts


def message(pmid: str, wa_id: str, *, channel: str = PN_A, text: str = "oi",
            user_id: str | None = None, media_key: str | None = None,
            provider: Provider = Provider.META) -> InboundMessage:
    media = None
    if media_key is not None:
        media = MediaRef(provider_media_id=f"media-{pmid}", mime_type="image/jpeg", size=4,
                         sha256="x", key=media_key, status=MediaStatus.STORED)
    return InboundMessage(provider, channel, pmid, "image" if media else "text",
                          sender=wa_id, recipient=BUSINESS,
                          contact=Contact(wa_id, user_id, f"name of {wa_id}"), text=text,
                          content={"body": text}, timestamp=1_750_000_000, media=media,
                          raw={"from": wa_id, "id": pmid})


def status(pmid: str, name: str, recipient: str | None, channel: str = PN_A,
           provider: Provider = Provider.META) -> StatusUpdate:
    return StatusUpdate(provider, channel, pmid, name, timestamp=1_750_000_100,
                        recipient=recipient, raw={"id": pmid, "recipient_id": recipient})


def meta_raw(*senders: tuple[str, str], phone_number_id: str = PN_A) -> bytes:
    """An `inbound.raw` envelope: one Meta webhook with a text from each (wa_id, wamid)."""
    messages, contacts = [], []
    for wa_id, wamid in senders:
        msg, contact = meta_text(wa_id, f"hello from {wa_id}", wamid)
        messages.append(msg)
        contacts.append(contact)
    body = dumps(meta_envelope(phone_number_id, WABA_A, BUSINESS, messages, contacts=contacts))
    # Signed as the gateway queues it (each channel's own app secret).
    secret = APP_SECRETS.get(phone_number_id, APP_SECRETS[PN_A])
    return RawWebhook("meta", None, 1.0, body, signature=sign(body, secret)).encode()


@dataclass
class World:
    tmp: Path
    registry: Registry
    broker: CredentialsBroker
    media: LocalMediaStore
    queues: dict[str, Queue]
    queue_broker: SqliteBroker
    acme: TenantStore
    beta: TenantStore

    @property
    def ctx(self) -> PrivacyContext:
        return PrivacyContext(self.broker, self.registry, self.queues, self.media,
                              lambda name: self.queue_broker.queue(QueueSpec(name)))

    async def store_media(self, key: str) -> None:
        source = self.tmp / "upload.bin"
        source.write_bytes(b"\xff\xd8\xff\xe0")
        await self.media.put_file(key, source)

    async def queued(self, name: str) -> list[bytes]:
        found = await self.queue_broker.queue(QueueSpec(name)).iter_all()
        return [m.body for m in found]


def table_rows(store: TenantStore, table: sa.Table) -> list[dict[str, Any]]:
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(table).order_by(table.c.id)).mappings()]


def dump(store: TenantStore) -> str:
    """Every column of every row, as text: what "nothing of X is left" is checked against."""
    return json.dumps({table.name: table_rows(store, table) for table in t.metadata.sorted_tables},
                      default=str, ensure_ascii=False)


def mentions(text: str, number: str) -> bool:
    return number in text.replace("+", "").replace(" ", "").replace("-", "")


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    engine = create_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    registry = Registry(engine, SecretBox([new_key()]))
    registry.create_schema()
    registry.add_tenant("acme")
    registry.add_tenant("beta")
    registry.add_channel(tenant="acme", provider=Provider.META, key=PN_A, phone_number_id=PN_A,
                         waba_id=WABA_A, display_number=BUSINESS, token="tok-a",
                         app_secret=APP_SECRETS[PN_A])
    registry.add_channel(tenant="acme", provider=Provider.WHAPI, key=WHAPI_A, token="tok-w")
    registry.add_channel(tenant="beta", provider=Provider.META, key=PN_B, phone_number_id=PN_B,
                         waba_id="W-B", display_number="5531900000000", token="tok-b",
                         app_secret=APP_SECRETS[PN_B])
    broker = CredentialsBroker(registry, tenants_dir=tmp_path / "tenants", cache_seconds=0)
    queue_broker = SqliteBroker(tmp_path / "queues.db")
    queues: dict[str, Queue] = {
        name: queue_broker.queue(spec)
        for name, spec in queue_specs(Settings(data_dir=tmp_path)).items()}
    world = World(tmp_path, registry, broker, LocalMediaStore(tmp_path / "media"), queues,
                  queue_broker, broker.tenant_store("acme"), broker.tenant_store("beta"))
    try:
        yield world
    finally:
        await queue_broker.close()
        broker.close()
        engine.dispose()


async def seed(w: World) -> dict[str, Any]:
    """Maria's and João's data everywhere it can be; returns ids the tests look at."""
    for key in ("acme/PN/maria.jpg", "acme/PN/joao.jpg", SHARED_KEY, "beta/PN/maria.jpg"):
        await w.store_media(key)
    w.acme.store_events(
        [message("wamid.m1", MARIA, user_id=MARIA_BSUID),
         message("wamid.m2", MARIA, media_key="acme/PN/maria.jpg"),
         message("wamid.m3", MARIA, media_key=SHARED_KEY),
         message("wamid.j1", JOAO),
         message("wamid.j2", JOAO, media_key="acme/PN/joao.jpg"),
         message("wamid.j3", JOAO, media_key=SHARED_KEY),
         # A Whapi echo of our own send to Maria: she is the chat, not the sender.
         InboundMessage(Provider.WHAPI, WHAPI_A, "echo.m", "text", direction=Direction.OUT,
                        sender=BUSINESS, recipient=f"{MARIA}@s.whatsapp.net",
                        contact=Contact(wa_id=MARIA), text="seu pedido saiu",
                        raw={"chat_id": f"{MARIA}@s.whatsapp.net", "from_me": True})],
        [status("wamid.out-m", "delivered", MARIA),
         status("echo.m", "read", None, channel=WHAPI_A, provider=Provider.WHAPI),
         status("wamid.out-j", "delivered", JOAO)],
        [ProviderNotice(Provider.META, PN_A, "user_preferences",
                        raw={"user_preferences": [{"wa_id": MARIA, "value": "stop"}]}),
         ProviderNotice(Provider.META, PN_A, "account_update", raw={"event": "VERIFIED"})])
    # Outbox rows as a tenant's own system writes them: any phone format.
    out_m = insert_outbound(w.acme.engine, channel=PN_A, recipient="+55 (11) 98765-4321",
                            type="text", content={"body": "Seu pedido saiu"})
    pending_m = insert_outbound(w.acme.engine, channel=PN_A, recipient=MARIA, type="text",
                                content={"body": "Oferta"})
    out_j = insert_outbound(w.acme.engine, channel=PN_A, recipient=JOAO, type="text",
                            content={"body": "Olá João"})
    with w.acme.engine.begin() as conn:
        for row_id, pmid in ((out_m, "wamid.out-m"), (out_j, "wamid.out-j")):
            conn.execute(t.outbound_messages.update().where(t.outbound_messages.c.id == row_id)
                         .values(status=OutboundStatus.DELIVERED.value,
                                 provider_message_id=pmid))
    w.beta.store_events([message("wamid.b1", MARIA, channel=PN_B,
                                 media_key="beta/PN/maria.jpg")], [], [])

    q = w.queues
    await q[envelopes.INBOUND_RAW].send(meta_raw((MARIA, "wamid.q1"), (JOAO, "wamid.q2")))
    await q[envelopes.INBOUND_RAW].send(meta_raw((MARIA, "wamid.q3")))
    await q[envelopes.INBOUND_RAW].send(meta_raw((MARIA, "wamid.qb"), phone_number_id=PN_B))
    await q[envelopes.INBOUND_EVENTS].send(dumps({"received_at": 1.0, "events": [
        status("wamid.out-m", "read", MARIA).to_dict(),
        message("wamid.q4", JOAO).to_dict()]}))
    for pmid, wa_id in (("wamid.m9", MARIA), ("wamid.j9", JOAO)):
        job = message(pmid, wa_id).to_dict()
        job["media"] = MediaRef(provider_media_id="m", status=MediaStatus.PENDING).to_dict()
        await q[envelopes.INBOUND_MEDIA].send(dumps({"tenant": "acme", "message": job}))
    for row_id, recipient in ((pending_m, MARIA), (out_j, JOAO)):
        await q[envelopes.OUTBOUND_SEND].send(
            dumps({"message": {"tenant": "acme", "row_id": row_id, "channel_key": PN_A,
                               "recipient": recipient, "type": "text",
                               "content": {"body": "x"}}}),
            group_id=f"acme/{PN_A}/{recipient}", dedup_id=f"acme:{row_id}")
    await q[envelopes.OUTBOUND_RESULTS].send(dumps({"tenant": "acme", "row_id": out_m,
                                                    "status": 5}))

    parked_split = w.registry.park(
        stage="write", reason="no tenant for meta channel '999'", provider="meta",
        channel_key="999", payload=json.dumps([
            message("wamid.p1", MARIA, channel="999").to_dict(),
            message("wamid.p2", JOAO, channel="999").to_dict()]))
    parked_maria = w.registry.park(stage="receive", reason="cannot parse",
                                   payload=RawWebhook("meta", None, 1.0, (
                                       '{"from": "' + MARIA + '", truncated').encode()
                                   ).encode().decode())
    parked_joao = w.registry.park(stage="receive", reason="cannot parse",
                                  payload=RawWebhook("meta", None, 1.0, (
                                      '{"from": "' + JOAO + '", truncated').encode()
                                  ).encode().decode())
    return {"pending_m": pending_m, "out_m": out_m, "out_j": out_j,
            "parked_split": parked_split, "parked_maria": parked_maria,
            "parked_joao": parked_joao}


def joao_rows(store: TenantStore) -> dict[str, list[dict[str, Any]]]:
    data = {table.name: table_rows(store, table) for table in t.metadata.sorted_tables}
    return {name: [r for r in rows if mentions(json.dumps(r, default=str), JOAO)
                   or r.get("provider_message_id") == "wamid.out-j"
                   or r.get("field") == "account_update"]
            for name, rows in data.items()}


async def test_erase_removes_everything_of_one_contact_and_nothing_of_another(
        world: World) -> None:
    ids = await seed(world)
    joao_before = joao_rows(world.acme)
    beta_before = dump(world.beta)

    report = await erase_contact(world.ctx, "acme", "+55 11 98765-4321")

    # Tenant DB: every row of Maria, in every table and every column, is gone.
    assert not mentions(dump(world.acme), MARIA)
    assert MARIA_BSUID not in dump(world.acme)
    assert joao_rows(world.acme) == joao_before
    assert (report.messages, report.outbound_messages, report.status_events,
            report.notices) == (4, 2, 2, 1)
    statuses = {r["provider_message_id"] for r in table_rows(world.acme, t.status_events)}
    assert statuses == {"wamid.out-j"}  # the recipient-less Whapi receipt went with its echo
    # Media: Maria's own file goes; the picture João sent too stays; other tenants' stay.
    assert not world.media.path_for("acme/PN/maria.jpg").exists()
    assert world.media.path_for(SHARED_KEY).exists()
    assert world.media.path_for("acme/PN/joao.jpg").exists()
    assert world.media.path_for("beta/PN/maria.jpg").exists()
    assert report.media_objects == 1
    # Another tenant's data about the same person is that tenant's business.
    assert dump(world.beta) == beta_before

    # Queues: Maria's events are out; João's and beta's are still on their way.
    raw = [RawWebhook.decode(b) for b in await world.queued(envelopes.INBOUND_RAW)]
    texts = [r.body.decode() for r in raw]
    assert len(raw) == 2
    assert any(PN_B in text and MARIA in text for text in texts)  # beta's, untouched
    split = next(r for r in raw if r.kind == "events")
    kept = json.loads(split.body)
    assert [e["provider_message_id"] for e in kept] == ["wamid.q2"]
    batches = [json.loads(b) for b in await world.queued(envelopes.INBOUND_EVENTS)]
    assert [[e["provider_message_id"] for e in b["events"]] for b in batches] == [["wamid.q4"]]
    media_jobs = [json.loads(b) for b in await world.queued(envelopes.INBOUND_MEDIA)]
    assert [j["message"]["provider_message_id"] for j in media_jobs] == ["wamid.j9"]
    sends = [json.loads(b) for b in await world.queued(envelopes.OUTBOUND_SEND)]
    assert [s["message"]["row_id"] for s in sends] == [ids["out_j"]]
    assert await world.queued(envelopes.OUTBOUND_RESULTS) == []
    assert (report.queue_messages_deleted, report.queue_messages_rewritten,
            report.queued_events) == (4, 2, 6)

    # Parked: the batch is split, Maria's unparseable body is gone, João's is kept.
    parked = {p.id: p for p in world.registry.parked_items(include_replayed=True)}
    assert set(parked) == {ids["parked_split"], ids["parked_joao"]}
    remaining = json.loads(parked[ids["parked_split"]].payload)
    assert [e["provider_message_id"] for e in remaining] == ["wamid.p2"]
    assert (report.parked_deleted, report.parked_rewritten, report.parked_events) == (1, 1, 2)

    # Nothing left: a second run finds nothing.
    again = await erase_contact(world.ctx, "acme", MARIA)
    assert set(again.removed().values()) == {0}


async def test_erase_clears_the_signed_body_kept_with_a_parked_item(world: World) -> None:
    """A parked item keeps the signed webhook for the replay check; that body also carries
    what the same webhook brought this tenant about the contact."""
    body = RawWebhook.decode(meta_raw((MARIA, "wamid.s1"))).body.decode()
    only_joao = world.registry.park(
        stage="write", reason="no tenant for meta channel '999'", provider="meta",
        channel_key="999", payload=json.dumps([message("wamid.s2", JOAO, channel="999")
                                               .to_dict()]),
        raw_body=body, signature="sha256=" + "0" * 64)
    untouched = world.registry.park(
        stage="write", reason="no tenant for meta channel '998'", provider="meta",
        channel_key="998", payload=json.dumps([message("wamid.s3", JOAO, channel="998")
                                               .to_dict()]),
        raw_body=RawWebhook.decode(meta_raw((JOAO, "wamid.s4"))).body.decode(),
        signature="sha256=" + "1" * 64)

    await erase_contact(world.ctx, "acme", MARIA)

    item = world.registry.parked_item(only_joao)
    assert (item.raw_body, item.signature) == (None, None)
    assert [e["provider_message_id"] for e in json.loads(item.payload)] == ["wamid.s2"]
    assert world.registry.parked_item(untouched).raw_body is not None


async def test_a_queued_webhook_split_by_erase_keeps_only_entries_its_signature_covers(
        world: World) -> None:
    """The remainder is queued without the signed body: the entry check happens here."""
    mine = json.loads(RawWebhook.decode(meta_raw((MARIA, "wamid.f1"), (JOAO, "wamid.f2"))).body)
    forged = json.loads(RawWebhook.decode(meta_raw((JOAO, "wamid.f3"),
                                                   phone_number_id=PN_B)).body)
    body = dumps({"object": "whatsapp_business_account",
                  "entry": mine["entry"] + forged["entry"]})
    await world.queues[envelopes.INBOUND_RAW].send(RawWebhook(
        "meta", None, 1.0, body, signature=sign(body, APP_SECRETS[PN_A])).encode())

    await erase_contact(world.ctx, "acme", MARIA)

    [left] = [RawWebhook.decode(b) for b in await world.queued(envelopes.INBOUND_RAW)]
    assert left.kind == "events"
    assert [e["provider_message_id"] for e in json.loads(left.body)] == ["wamid.f2"]


async def test_erase_by_business_scoped_user_id(world: World) -> None:
    world.acme.store_events([message("wamid.u1", MARIA, user_id=MARIA_BSUID),
                             message("wamid.u2", "", user_id=MARIA_BSUID),
                             message("wamid.u3", MARIA)], [], [])
    report = await erase_contact(world.ctx, "acme", MARIA_BSUID)
    assert report.messages == 2
    left = [r["provider_message_id"] for r in table_rows(world.acme, t.messages)]
    assert left == ["wamid.u3"]  # same phone, but the BSUID alone does not say it is her


async def test_dry_run_counts_and_changes_nothing(world: World) -> None:
    await seed(world)
    before = dump(world.acme), await world.queued(envelopes.INBOUND_RAW)
    parked_before = world.registry.parked_items(include_replayed=True)
    dry = await erase_contact(world.ctx, "acme", MARIA, dry_run=True)
    assert (dump(world.acme), await world.queued(envelopes.INBOUND_RAW)) == before
    assert world.registry.parked_items(include_replayed=True) == parked_before
    assert world.media.path_for("acme/PN/maria.jpg").exists()
    real = await erase_contact(world.ctx, "acme", MARIA)
    assert dry.removed() == real.removed()


async def test_anonymize_keeps_rows_for_statistics(world: World) -> None:
    ids = await seed(world)
    joao_before = joao_rows(world.acme)
    counts_before = {table.name: len(table_rows(world.acme, table))
                     for table in t.metadata.sorted_tables}

    report = await erase_contact(world.ctx, "acme", MARIA, anonymize=True)

    assert report.mode == "anonymize"
    assert {table.name: len(table_rows(world.acme, table))
            for table in t.metadata.sorted_tables} == counts_before
    assert not mentions(dump(world.acme), MARIA)
    assert "name of 5511987654321" not in dump(world.acme)
    assert joao_rows(world.acme) == joao_before
    by_pmid = {r["provider_message_id"]: r for r in table_rows(world.acme, t.messages)}
    photo = by_pmid["wamid.m2"]
    assert (photo["type"], photo["direction"], photo["timestamp"]) == ("image", "in",
                                                                       1_750_000_000)
    assert photo["media_mime_type"] == "image/jpeg" and photo["media_size"] == 4
    for column in ("text", "content", "raw", "contact_name", "sender", "media_key"):
        assert photo[column] is None, column
    assert not world.media.path_for("acme/PN/maria.jpg").exists()
    assert world.media.path_for(SHARED_KEY).exists()
    outbox = {r["id"]: r for r in table_rows(world.acme, t.outbound_messages)}
    # Never sent now that its recipient is gone; the delivered one keeps its status.
    assert outbox[ids["pending_m"]]["status"] == OutboundStatus.FAILED.value
    assert outbox[ids["pending_m"]]["error_code"] == "erased"
    assert outbox[ids["out_m"]]["status"] == OutboundStatus.DELIVERED.value
    assert outbox[ids["out_m"]]["recipient"] is None
    # Queued events stay in the pipeline, anonymized, so they are counted once stored.
    split = next(RawWebhook.decode(b) for b in await world.queued(envelopes.INBOUND_RAW)
                 if RawWebhook.decode(b).kind == "events" and b"wamid.q2" in b)
    events = json.loads(split.body)
    assert [e["provider_message_id"] for e in events] == ["wamid.q1", "wamid.q2"]
    assert events[0]["sender"] is None and events[0]["text"] is None
    queued = [*await world.queued(envelopes.INBOUND_RAW),
              *await world.queued(envelopes.INBOUND_EVENTS)]
    assert not any(MARIA in b.decode() for b in queued if PN_B.encode() not in b)


async def test_export_has_everything_of_the_contact_and_nothing_of_others(
        world: World) -> None:
    ids = await seed(world)
    data = await export_contact(world.ctx, "acme", "+55 11 98765-4321")
    text = json.dumps(data, ensure_ascii=False)
    assert not mentions(text, JOAO)
    assert {m["provider_message_id"] for m in data["messages"]} == {
        "wamid.m1", "wamid.m2", "wamid.m3", "echo.m"}
    first = next(m for m in data["messages"] if m["provider_message_id"] == "wamid.m1")
    assert first["raw"] == {"from": MARIA, "id": "wamid.m1"}
    assert first["contact"] == {"wa_id": MARIA, "user_id": MARIA_BSUID,
                                "name": "name of 5511987654321"}
    assert {o["id"] for o in data["outbound_messages"]} == {ids["out_m"], ids["pending_m"]}
    assert {o["recipient"] for o in data["outbound_messages"]} == {"+55 (11) 98765-4321",
                                                                    MARIA}
    assert {s["provider_message_id"] for s in data["status_events"]} == {"wamid.out-m",
                                                                         "echo.m"}
    assert [n["field"] for n in data["notices"]] == ["user_preferences"]
    assert {m["key"] for m in data["media"]} == {"acme/PN/maria.jpg", SHARED_KEY}
    assert all(m["mime_type"] == "image/jpeg" and m["status"] == "stored"
               for m in data["media"])
    queued = {(q["queue"], len(q["items"])) for q in data["queued"]}
    assert queued == {("inbound.raw", 1), ("inbound.events", 1), ("inbound.media", 1),
                      ("outbound.send", 1), ("outbound.results", 1)}
    assert sum(len(q["items"]) for q in data["queued"]) == 6  # two raw bodies, one each
    assert {p["id"] for p in data["parked"]} == {ids["parked_split"], ids["parked_maria"]}
    # Reading changes nothing.
    assert world.media.path_for("acme/PN/maria.jpg").exists()


async def test_refuses_unknown_tenant_and_the_channels_own_number(world: World) -> None:
    with pytest.raises(PrivacyError, match="unknown tenant"):
        await erase_contact(world.ctx, "nobody", MARIA)
    with pytest.raises(PrivacyError, match="own channel"):
        await erase_contact(world.ctx, "acme", "+55 11 94000-1234")
    with pytest.raises(PrivacyError, match="digits"):
        await export_contact(world.ctx, "acme", "+55")


# -- retention --------------------------------------------------------------------------------

def age(store: TenantStore, table: sa.Table, where: sa.ColumnElement[bool], days: float,
        column: str = "received_at") -> None:
    with store.engine.begin() as conn:
        conn.execute(table.update().where(where).values(
            {column: utcnow() - timedelta(days=days)}))


async def seed_ages(w: World) -> None:
    for key in ("acme/old.jpg", "acme/new.jpg", "acme/both.jpg"):
        await w.store_media(key)
    w.acme.store_events(
        [message("old.1", MARIA, media_key="acme/old.jpg"),
         message("old.2", JOAO, media_key="acme/both.jpg"),
         message("new.1", JOAO, media_key="acme/new.jpg"),
         message("new.2", MARIA, media_key="acme/both.jpg")],
        [status("old.s", "read", MARIA), status("new.s", "read", MARIA)],
        [ProviderNotice(Provider.META, PN_A, "old", raw={"n": 1}),
         ProviderNotice(Provider.META, PN_A, "new", raw={"n": 2})])
    done = insert_outbound(w.acme.engine, channel=PN_A, recipient=MARIA, type="text",
                           content={"body": "old and delivered"})
    waiting = insert_outbound(w.acme.engine, channel=PN_A, recipient=MARIA, type="text",
                              content={"body": "old and still pending"})
    insert_outbound(w.acme.engine, channel=PN_A, recipient=MARIA, type="text",
                    content={"body": "new"})
    o = t.outbound_messages
    with w.acme.engine.begin() as conn:
        conn.execute(o.update().where(o.c.id == done).values(
            status=OutboundStatus.DELIVERED.value))
    m, s, n = t.messages, t.status_events, t.notices
    age(w.acme, m, m.c.provider_message_id.like("old.%"), 31)
    age(w.acme, m, m.c.provider_message_id.like("new.%"), 29)
    age(w.acme, s, s.c.provider_message_id == "old.s", 45)
    age(w.acme, n, n.c.field == "old", 400)
    age(w.acme, o, o.c.id.in_([done, waiting]), 31, column="created_at")


async def test_retention_purges_only_what_is_older_than_n_days(world: World) -> None:
    await seed_ages(world)
    counts = await purge_expired(world.acme, 30, world.media, utcnow())
    assert counts == {"messages": 2, "outbound_messages": 1, "status_events": 1,
                      "notices": 1, "media_objects": 1}
    assert [r["provider_message_id"] for r in table_rows(world.acme, t.messages)] == [
        "new.1", "new.2"]
    assert [r["provider_message_id"] for r in table_rows(world.acme, t.status_events)] == [
        "new.s"]
    assert [r["field"] for r in table_rows(world.acme, t.notices)] == ["new"]
    # A send still waiting is never purged silently.
    assert sorted(r["content"]["body"] for r in table_rows(world.acme, t.outbound_messages)) == [
        "new", "old and still pending"]
    assert not world.media.path_for("acme/old.jpg").exists()
    assert world.media.path_for("acme/both.jpg").exists()  # a newer message uses it too
    assert world.media.path_for("acme/new.jpg").exists()
    assert await purge_expired(world.acme, 30, world.media, utcnow()) == dict.fromkeys(
        counts, 0)


async def test_run_retention_only_touches_tenants_with_a_period(world: World) -> None:
    await seed_ages(world)
    world.beta.store_events([message("old.b", MARIA, channel=PN_B)], [], [])
    age(world.beta, t.messages, t.messages.c.provider_message_id == "old.b", 1000)
    assert await run_retention(world.registry, world.broker, world.media) == {}
    set_retention(world.registry, "acme", 30)
    results = await run_retention(world.registry, world.broker, world.media)
    assert set(results) == {"acme"} and results["acme"]["messages"] == 2
    assert len(table_rows(world.beta, t.messages)) == 1
    assert set_retention(world.registry, "acme", 0).retention_days is None


async def poll(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.05)


async def test_retention_loop_purges_every_tenant_until_stopped(tmp_path: Path) -> None:
    gateway = build_gateway(Settings(data_dir=tmp_path, retention_interval_s=3600))
    try:
        gateway.registry.add_tenant("acme")
        set_retention(gateway.registry, "acme", 7)
        store = gateway.broker.tenant_store("acme")
        store.store_events([message("old.1", MARIA), message("new.1", MARIA)], [], [])
        age(store, t.messages, t.messages.c.provider_message_id == "old.1", 8)
        task = asyncio.create_task(retention_loop(gateway))
        await poll(lambda: len(table_rows(store, t.messages)) == 1)
        assert table_rows(store, t.messages)[0]["provider_message_id"] == "new.1"
        gateway.stop.set()
        await asyncio.wait_for(task, 5)  # it waits on `stop`, not the hour
    finally:
        gateway.stop.set()
        await gateway.close()


async def test_media_of_queued_messages_goes_unless_someone_else_queued_the_same_file(
        world: World) -> None:
    for key in ("acme/q/maria-only.jpg", "acme/q/same-file.jpg"):
        await world.store_media(key)
    await world.queues[envelopes.INBOUND_EVENTS].send(dumps({"received_at": 1.0, "events": [
        message("wamid.qm1", MARIA, media_key="acme/q/maria-only.jpg").to_dict(),
        message("wamid.qm2", MARIA, media_key="acme/q/same-file.jpg").to_dict()]}))
    await world.queues[envelopes.INBOUND_EVENTS].send(dumps({"received_at": 1.0, "events": [
        message("wamid.qj1", JOAO, media_key="acme/q/same-file.jpg").to_dict()]}))

    report = await erase_contact(world.ctx, "acme", MARIA)

    assert report.queued_events == 2 and report.media_objects == 1
    assert not world.media.path_for("acme/q/maria-only.jpg").exists()
    assert world.media.path_for("acme/q/same-file.jpg").exists()
    batches = [json.loads(b) for b in await world.queued(envelopes.INBOUND_EVENTS)]
    assert [[e["provider_message_id"] for e in b["events"]] for b in batches] == [["wamid.qj1"]]


async def test_a_gateways_own_stores_serve_erasure(tmp_path: Path) -> None:
    gateway = build_gateway(Settings(data_dir=tmp_path))
    try:
        gateway.registry.add_tenant("acme")
        gateway.broker.tenant_store("acme").store_events(
            [message("wamid.1", MARIA), message("wamid.2", JOAO)], [], [])
        await gateway.queues[envelopes.INBOUND_RAW].send(meta_raw((MARIA, "wamid.3")))
        report = await erase_contact(PrivacyContext.from_gateway(gateway), "acme", MARIA)
        assert (report.messages, report.queue_messages_deleted) == (1, 1)
    finally:
        await gateway.close()


async def test_anonymizing_drops_the_request_digest_and_a_late_retry_is_refused(
        world: World) -> None:
    body_hash = request_hash({"to": MARIA, "text": {"body": "Seu código"}})
    submit_outbound(world.acme.engine, channel=PN_A, recipient=MARIA, type="text",
                    content={"body": "Seu código"}, idempotency_key="otp-maria",
                    request_hash=body_hash)
    await erase_contact(world.ctx, "acme", MARIA, anonymize=True)
    (erased,) = table_rows(world.acme, t.outbound_messages)
    assert erased["request_hash"] is None and erased["error_code"] == "erased"
    with pytest.raises(IdempotencyConflict):  # never a new row to an erased contact
        submit_outbound(world.acme.engine, channel=PN_A, recipient=MARIA, type="text",
                        content={"body": "Seu código"}, idempotency_key="otp-maria",
                        request_hash=body_hash)
    assert len(table_rows(world.acme, t.outbound_messages)) == 1
