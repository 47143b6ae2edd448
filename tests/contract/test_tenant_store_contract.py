"""Contract for the tenant store: the same behaviour on SQLite, PostgreSQL and MariaDB.

Every test runs once per database through the `tenant_db_url` fixture (tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from wacloud.adapters.db.dialect import insert_ignore
from wacloud.adapters.db.engines import create_engine
from wacloud.adapters.db.tenant import tables as t
from wacloud.adapters.db.tenant.outbox import insert_outbound
from wacloud.adapters.db.tenant.store import TenantStore
from wacloud.adapters.db.tenant.views import list_messages, list_notices
from wacloud.adapters.db.types import utcnow
from wacloud.domain.model import (
    Contact,
    Direction,
    InboundMessage,
    MediaRef,
    MediaStatus,
    OutboundStatus,
    Provider,
    ProviderError,
    ProviderNotice,
    StatusUpdate,
)

CHANNEL = "106540352242922"
WHAPI_CHANNEL = "MANTIS-X7K2P"
CONTRACT_KEYS = {"id", "provider_message_id", "channel", "direction", "type", "from", "to",
                 "text", "reply_to", "status", "status_code", "timestamp", "content", "error",
                 "media"}
MEDIA_KEYS = {"key", "mime_type", "sha256", "size", "filename", "status"}


@pytest.fixture
def store(tenant_db_url: str) -> Iterator[TenantStore]:
    tenant_store = TenantStore("acme", create_engine(tenant_db_url))
    tenant_store.create_schema()
    try:
        yield tenant_store
    finally:
        tenant_store.engine.dispose()


def backend(store: TenantStore) -> str:
    return store.engine.dialect.name


def inbound(pmid: str, *, text: str | None = "hello", channel: str = CHANNEL,
            provider: Provider = Provider.META, direction: Direction = Direction.IN,
            media: MediaRef | None = None, raw: dict[str, Any] | None = None,
            contact_name: str | None = "Ana") -> InboundMessage:
    return InboundMessage(
        provider=provider, channel_key=channel, provider_message_id=pmid,
        type="text" if media is None else "image", direction=direction,
        sender="5511987654321" if direction is Direction.IN else channel,
        recipient=channel if direction is Direction.IN else "5511987654321",
        contact=Contact(wa_id="5511987654321", name=contact_name), text=text,
        timestamp=1_700_000_000, content={"body": text} if text is not None else {},
        media=media, raw=raw if raw is not None else {"id": pmid})


def receipt(pmid: str, status: str, timestamp: int, *, channel: str = CHANNEL,
            provider: Provider = Provider.META,
            errors: list[ProviderError] | None = None) -> StatusUpdate:
    return StatusUpdate(provider=provider, channel_key=channel, provider_message_id=pmid,
                        status=status, timestamp=timestamp, recipient="5511987654321",
                        errors=errors or [], raw={"id": pmid, "status": status})


def add_outbound(store: TenantStore, pmid: str, status: OutboundStatus = OutboundStatus.ACCEPTED,
                 *, channel: str = CHANNEL, body: str = "hi there") -> int:
    now = utcnow()
    with store.engine.begin() as conn:
        result = conn.execute(t.outbound_messages.insert().values(
            channel=channel, recipient="5511987654321", type="text", content={"body": body},
            status=status.value, provider_message_id=pmid, attempts=1, created_at=now,
            updated_at=now, accepted_at=now))
        key = result.inserted_primary_key
        assert key is not None
        return int(key[0])


def outbound_row(store: TenantStore, row_id: int) -> sa.RowMapping:
    with store.engine.connect() as conn:
        return conn.execute(sa.select(t.outbound_messages).where(
            t.outbound_messages.c.id == row_id)).mappings().one()


def outbound_status(store: TenantStore, row_id: int) -> OutboundStatus:
    return OutboundStatus(outbound_row(store, row_id)["status"])


def count(store: TenantStore, table: sa.Table) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def message_status(store: TenantStore, channel: str, pmid: str) -> str:
    with store.engine.connect() as conn:
        return str(conn.execute(sa.select(t.messages.c.status).where(
            t.messages.c.channel == channel,
            t.messages.c.provider_message_id == pmid)).scalar_one())


def apply(store: TenantStore, *statuses: StatusUpdate) -> None:
    store.store_events([], list(statuses), [])


# -- idempotency -----------------------------------------------------------------------------


def test_store_events_same_batch_twice_leaves_one_row_per_message_and_status_event(
        store: TenantStore) -> None:
    messages = [inbound("wamid.M1"), inbound("wamid.M2", text="second")]
    statuses = [receipt("wamid.OUT1", "sent", 100), receipt("wamid.OUT1", "delivered", 101),
                receipt("wamid.OUT1", "delivered", 102)]

    store.store_events(messages, statuses, [])
    store.store_events(messages, statuses, [])

    assert count(store, t.messages) == 2
    with store.engine.connect() as conn:
        events = conn.execute(sa.select(
            t.status_events.c.channel, t.status_events.c.provider_message_id,
            t.status_events.c.status, t.status_events.c.timestamp).order_by(
            t.status_events.c.timestamp)).all()
    assert [tuple(e) for e in events] == [(CHANNEL, "wamid.OUT1", "sent", 100),
                                          (CHANNEL, "wamid.OUT1", "delivered", 101),
                                          (CHANNEL, "wamid.OUT1", "delivered", 102)]


def test_store_result_counts_rows_inserted_and_zero_on_repeat(
        store: TenantStore) -> None:
    messages = [inbound("wamid.M1"), inbound("wamid.M2")]
    statuses = [receipt("wamid.OUT1", "sent", 100), receipt("wamid.OUT1", "delivered", 101),
                receipt("wamid.OUT1", "delivered", 102)]

    first = store.store_events(messages, statuses, [])
    second = store.store_events(messages, statuses, [])

    assert (first.messages_inserted, first.statuses_inserted) == (2, 3)
    assert (second.messages_inserted, second.statuses_inserted) == (0, 0)


def test_store_events_duplicates_inside_one_batch_store_once(store: TenantStore) -> None:
    store.store_events([inbound("wamid.D"), inbound("wamid.D")],
                       [receipt("wamid.D", "read", 5), receipt("wamid.D", "read", 5)], [])

    assert count(store, t.messages) == 1
    assert count(store, t.status_events) == 1


def test_store_events_same_message_id_on_two_channels_is_two_messages(
        store: TenantStore) -> None:
    store.store_events([inbound("wamid.X", channel="111"), inbound("wamid.X", channel="222")],
                       [], [])

    assert count(store, t.messages) == 2


def test_store_events_same_batch_twice_leaves_one_row_per_notice(store: TenantStore) -> None:
    notice = ProviderNotice(provider=Provider.META, channel_key=CHANNEL, field="account_update",
                            errors=[ProviderError("131042", "payment issue")],
                            raw={"field": "account_update", "id": "evt-1"})

    store.store_events([], [], [notice])
    store.store_events([], [], [notice])

    assert count(store, t.notices) == 1


def test_pending_media_lists_only_messages_whose_media_is_pending(store: TenantStore) -> None:
    pending = inbound("wamid.P", media=MediaRef(provider_media_id="9001", mime_type="image/jpeg"))
    stored = inbound("wamid.S", media=MediaRef(key="k", status=MediaStatus.STORED))

    result = store.store_events([pending, stored, inbound("wamid.T")], [], [])

    assert [m.provider_message_id for m in result.pending_media] == ["wamid.P"]


# -- receipts move an outbound row forward only ----------------------------------------------


def test_receipts_move_outbound_row_forward_only(store: TenantStore) -> None:
    row_id = add_outbound(store, "wamid.OUT")

    apply(store, receipt("wamid.OUT", "read", 30))
    assert outbound_status(store, row_id) is OutboundStatus.READ
    apply(store, receipt("wamid.OUT", "delivered", 20))
    assert outbound_status(store, row_id) is OutboundStatus.READ
    apply(store, receipt("wamid.OUT", "sent", 10))

    row = outbound_row(store, row_id)
    assert OutboundStatus(row["status"]) is OutboundStatus.READ
    assert row["read_at"] is not None


def test_receipts_in_order_step_through_sent_delivered_read(store: TenantStore) -> None:
    row_id = add_outbound(store, "wamid.OUT")

    seen = []
    for status, ts in (("sent", 1), ("delivered", 2), ("read", 3)):
        apply(store, receipt("wamid.OUT", status, ts))
        seen.append(outbound_status(store, row_id))

    assert seen == [OutboundStatus.SENT, OutboundStatus.DELIVERED, OutboundStatus.READ]
    assert outbound_row(store, row_id)["delivered_at"] is not None


def test_failed_after_read_stays_read(store: TenantStore) -> None:
    row_id = add_outbound(store, "wamid.OUT")
    apply(store, receipt("wamid.OUT", "read", 30))

    apply(store, receipt("wamid.OUT", "failed", 40,
                         errors=[ProviderError("131026", "Message undeliverable")]))

    row = outbound_row(store, row_id)
    assert OutboundStatus(row["status"]) is OutboundStatus.READ
    assert row["error_code"] is None
    assert row["error_reason"] is None


def test_failed_on_accepted_row_sets_failed_after_accept_with_error(store: TenantStore) -> None:
    row_id = add_outbound(store, "wamid.OUT")

    apply(store, receipt("wamid.OUT", "failed", 40,
                         errors=[ProviderError("131026", "Message undeliverable")]))

    row = outbound_row(store, row_id)
    assert row["status"] == -101
    assert OutboundStatus(row["status"]) is OutboundStatus.FAILED_AFTER_ACCEPT
    assert row["error_code"] == "131026"
    assert row["error_reason"] == "Message undeliverable"


def test_receipt_only_touches_the_row_with_its_channel_and_id(store: TenantStore) -> None:
    target = add_outbound(store, "wamid.A")
    other_id = add_outbound(store, "wamid.B")
    other_channel = add_outbound(store, "wamid.A", channel="999")

    apply(store, receipt("wamid.A", "delivered", 1))

    assert outbound_status(store, target) is OutboundStatus.DELIVERED
    assert outbound_status(store, other_id) is OutboundStatus.ACCEPTED
    assert outbound_status(store, other_channel) is OutboundStatus.ACCEPTED


def test_apply_known_receipts_moves_a_row_that_appears_after_its_receipts(
        store: TenantStore) -> None:
    apply(store, receipt("wamid.LATE", "sent", 1), receipt("wamid.LATE", "read", 3),
          receipt("wamid.LATE", "delivered", 2))
    row_id = add_outbound(store, "wamid.LATE")
    assert outbound_status(store, row_id) is OutboundStatus.ACCEPTED

    with store.engine.begin() as conn:
        store.apply_known_receipts(conn, CHANNEL, ["wamid.LATE"])

    assert outbound_status(store, row_id) is OutboundStatus.READ


def test_apply_known_receipts_replays_a_stored_failure_with_its_error(
        store: TenantStore) -> None:
    apply(store, receipt("wamid.LATE", "failed", 1,
                         errors=[ProviderError("131047", "Re-engagement message")]))
    row_id = add_outbound(store, "wamid.LATE")

    with store.engine.begin() as conn:
        store.apply_known_receipts(conn, CHANNEL, ["wamid.LATE"])

    row = outbound_row(store, row_id)
    assert OutboundStatus(row["status"]) is OutboundStatus.FAILED_AFTER_ACCEPT
    assert (row["error_code"], row["error_reason"]) == ("131047", "Re-engagement message")


def test_whapi_echo_takes_a_later_receipt(store: TenantStore) -> None:
    echo = inbound("PsqXn5SAD5v7HRA-wB2mRg", provider=Provider.WHAPI, channel=WHAPI_CHANNEL,
                   direction=Direction.OUT, raw={"status": "sent", "from_me": True})
    store.store_events([echo], [], [])
    assert message_status(store, WHAPI_CHANNEL, "PsqXn5SAD5v7HRA-wB2mRg") == "sent"

    apply(store, receipt("PsqXn5SAD5v7HRA-wB2mRg", "delivered", 5, channel=WHAPI_CHANNEL,
                         provider=Provider.WHAPI))
    assert message_status(store, WHAPI_CHANNEL, "PsqXn5SAD5v7HRA-wB2mRg") == "delivered"

    apply(store, receipt("PsqXn5SAD5v7HRA-wB2mRg", "sent", 4, channel=WHAPI_CHANNEL,
                         provider=Provider.WHAPI))
    assert message_status(store, WHAPI_CHANNEL, "PsqXn5SAD5v7HRA-wB2mRg") == "delivered"


def test_whapi_echo_arriving_after_its_receipt_takes_it(store: TenantStore) -> None:
    apply(store, receipt("Echo-1", "read", 9, channel=WHAPI_CHANNEL, provider=Provider.WHAPI))

    echo = inbound("Echo-1", provider=Provider.WHAPI, channel=WHAPI_CHANNEL,
                   direction=Direction.OUT, raw={"status": "sent"})
    store.store_events([echo], [], [])

    assert message_status(store, WHAPI_CHANNEL, "Echo-1") == "read"


def test_receipt_does_not_touch_an_inbound_message(store: TenantStore) -> None:
    store.store_events([inbound("wamid.IN")], [], [])

    apply(store, receipt("wamid.IN", "read", 1))

    assert message_status(store, CHANNEL, "wamid.IN") == "received"


# -- media -----------------------------------------------------------------------------------


def test_set_media_updates_the_row_and_returns_true(store: TenantStore) -> None:
    store.store_events([inbound("wamid.IMG", text=None, media=MediaRef(
        provider_media_id="9001", mime_type="image/jpeg"))], [], [])
    assert store.media_status(CHANNEL, "wamid.IMG") == "pending"

    stored = MediaRef(provider_media_id="9001", mime_type="image/jpeg", sha256="ab" * 32,
                      size=1234, filename="photo.jpg", key="acme/106/2024/01/02/ab.jpg",
                      status=MediaStatus.STORED)
    assert store.set_media(CHANNEL, "wamid.IMG", stored) is True

    assert store.media_status(CHANNEL, "wamid.IMG") == "stored"
    [again] = store.messages_with_media(["stored"])
    assert again.media == stored


def test_set_media_returns_false_for_an_unknown_row(store: TenantStore) -> None:
    media = MediaRef(key="k", status=MediaStatus.STORED)

    assert store.set_media(CHANNEL, "wamid.NOPE", media) is False
    assert count(store, t.messages) == 0


async def test_set_media_grouped_and_writes_share_one_transaction_per_group(
        store: TenantStore) -> None:
    """`set_media_grouped` goes through `writes` (the group commit): concurrent copies that
    finish together all land, and an unknown row answers False without touching the rest."""
    names = [f"wamid.G{i}" for i in range(6)]
    store.store_events([inbound(n, text=None, media=MediaRef(provider_media_id=n,
                                                             mime_type="image/jpeg"))
                        for n in names], [], [])
    done = await asyncio.gather(*(store.set_media_grouped(CHANNEL, n, MediaRef(
        provider_media_id=n, mime_type="image/jpeg", key=f"acme/{n}.jpg",
        status=MediaStatus.STORED)) for n in [*names, "wamid.NOPE"]))
    assert done == [True] * 6 + [False]
    assert {store.media_status(CHANNEL, n) for n in names} == {"stored"}
    assert store.media_status(CHANNEL, "wamid.NOPE") is None
    assert sorted(m.media.key for m in store.messages_with_media(["stored"])
                  if m.media is not None) == sorted(f"acme/{n}.jpg" for n in names)


async def test_a_closed_store_opens_again_with_a_fresh_group_commit(
        store: TenantStore) -> None:
    assert await store.writes.run(lambda conn: conn.execute(sa.select(1)).scalar()) == 1
    store.close()
    # The same store again (as the broker does after a failover): a fresh group commit.
    store.store_events([inbound("wamid.AFTER")], [], [])
    assert await store.set_media_grouped(CHANNEL, "wamid.AFTER", MediaRef(
        key="acme/after.jpg", status=MediaStatus.STORED)) is True
    assert store.media_status(CHANNEL, "wamid.AFTER") == "stored"


# -- read model ------------------------------------------------------------------------------


def test_list_messages_returns_the_public_json_contract(store: TenantStore) -> None:
    media = MediaRef(provider_media_id="9001", mime_type="image/jpeg", sha256="cd" * 32,
                     size=42, filename="a.jpg", key="acme/x/a.jpg", status=MediaStatus.STORED)
    store.store_events([inbound("wamid.IN", text="caption", media=media)], [], [])
    add_outbound(store, "wamid.OUT", body="hi there")

    views = list_messages(store.engine)

    json.dumps(views)  # the contract is JSON
    inbound_view, outbound_view = views
    for view in views:
        assert view.keys() >= CONTRACT_KEYS, CONTRACT_KEYS - view.keys()
    assert inbound_view["media"] is not None
    assert inbound_view["media"].keys() >= MEDIA_KEYS
    assert {k: inbound_view["media"][k] for k in MEDIA_KEYS} == {
        "key": "acme/x/a.jpg", "mime_type": "image/jpeg", "sha256": "cd" * 32, "size": 42,
        "filename": "a.jpg", "status": "stored"}
    assert {k: inbound_view[k] for k in ("provider_message_id", "channel", "direction", "from",
                                         "to", "text", "status", "status_code", "timestamp",
                                         "error")} == {
        "provider_message_id": "wamid.IN", "channel": CHANNEL, "direction": "in",
        "from": "5511987654321", "to": CHANNEL, "text": "caption", "status": "received",
        "status_code": None, "timestamp": 1_700_000_000, "error": None}
    assert {k: outbound_view[k] for k in ("provider_message_id", "direction", "type", "text",
                                          "status", "status_code", "media")} == {
        "provider_message_id": "wamid.OUT", "direction": "out", "type": "text",
        "text": "hi there", "status": "accepted", "status_code": 3, "media": None}


def test_tenant_migrations_match_the_model(store: TenantStore) -> None:
    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = [d for d in compare_metadata(context, t.metadata) if d[0] != "remove_table"]
    assert diff == []


def test_group_message_and_group_outbound_row_show_their_group_id(store: TenantStore) -> None:
    group = "Y2FwaV9ncm91cDo1NTExOTQwMDAxMjM0OjEyMDM2MzA0MDQ2OTQyMzM4MjAZD"
    said_in_group = inbound("wamid.GROUP")
    said_in_group.group_id = group
    store.store_events([said_in_group, inbound("wamid.DIRECT")], [], [])
    row_id = insert_outbound(store.engine, channel=CHANNEL, recipient=group, type="text",
                             content={"body": "to all"}, reply_to="wamid.GROUP",
                             recipient_type="group")
    insert_outbound(store.engine, channel=CHANNEL, recipient="5511987654321", type="text",
                    content={"body": "to one"})

    views = {v["provider_message_id"] or v["id"]: v for v in list_messages(store.engine)}

    assert views["wamid.GROUP"]["group_id"] == group
    assert views["wamid.GROUP"]["from"] == "5511987654321"
    assert views["wamid.DIRECT"]["group_id"] is None
    outbound = [v for v in views.values() if v["source"] == "outbound"]
    assert [(v["to"], v["recipient_type"], v["group_id"]) for v in outbound] == [
        (group, "group", group), ("5511987654321", "individual", None)]
    assert outbound_row(store, row_id)["recipient_type"] == "group"


def test_outbound_row_to_a_bsuid_takes_a_receipt_that_names_only_the_bsuid(
        store: TenantStore) -> None:
    bsuid = "BR.7718203344556677"
    row_id = insert_outbound(store.engine, channel=CHANNEL, recipient=bsuid, type="text",
                             content={"body": "oi"})
    with store.engine.begin() as conn:
        conn.execute(t.outbound_messages.update().where(t.outbound_messages.c.id == row_id)
                     .values(status=OutboundStatus.ACCEPTED.value,
                             provider_message_id="wamid.BSUID"))
    apply(store, StatusUpdate(provider=Provider.META, channel_key=CHANNEL,
                              provider_message_id="wamid.BSUID", status="delivered",
                              timestamp=5, recipient=None, recipient_user_id=bsuid))

    assert outbound_status(store, row_id) is OutboundStatus.DELIVERED
    [view] = list_messages(store.engine, direction="out")
    assert (view["to"], view["recipient_type"]) == (bsuid, "individual")


def test_list_notices_shows_the_latest_oldest_first(store: TenantStore) -> None:
    notices = [ProviderNotice(provider=Provider.META, channel_key=CHANNEL, field="messages",
                              errors=[ProviderError(str(130429 + n), f"error {n}")],
                              raw={"errors": [{"code": 130429 + n}]}) for n in range(3)]
    for notice in notices:
        store.store_events([], [], [notice])

    views = list_notices(store.engine, limit=2)

    json.dumps(views)
    assert [v["errors"][0]["code"] for v in views] == ["130430", "130431"]
    assert views[0].keys() == {"id", "provider", "channel", "field", "errors", "raw",
                               "received_at"}
    assert (views[0]["channel"], views[0]["field"], views[0]["provider"]) == (
        CHANNEL, "messages", "meta")
    assert views[0]["raw"] == {"errors": [{"code": 130430}]}
    assert [v["errors"][0]["code"] for v in list_notices(store.engine)] == [
        "130429", "130430", "130431"]


def test_list_messages_shows_an_outbound_failure_as_error(store: TenantStore) -> None:
    add_outbound(store, "wamid.OUT")
    apply(store, receipt("wamid.OUT", "failed", 1, errors=[ProviderError("131026", "nope")]))

    [view] = list_messages(store.engine, direction="out")

    assert (view["status"], view["status_code"]) == ("failed_after_accept", -101)
    assert view["error"] == {"code": "131026", "reason": "nope"}


@pytest.mark.parametrize("text", [
    "Olá, ação! Über café ñandú — 👍🏽🎉 日本語 😀",
    "'); DROP TABLE messages; --",
    "Robert'); DELETE FROM outbound_messages WHERE 1=1; -- \" \\ %s %(x)s ?",
])
def test_text_is_stored_verbatim(store: TenantStore, text: str) -> None:
    store.store_events([inbound("wamid.U", text=text, contact_name=text[:100])], [], [])

    [view] = list_messages(store.engine)

    assert view["text"] == text
    assert view["contact"]["name"] == text[:100]
    assert view["content"] == {"body": text}
    assert count(store, t.messages) == 1
    assert count(store, t.outbound_messages) == 0


def test_provider_message_ids_differing_only_in_case_are_two_messages(
        store: TenantStore) -> None:
    store.store_events([inbound("PsqXn5SAD5v7HRA"), inbound("psqxn5sad5v7hra")], [], [])

    assert count(store, t.messages) == 2


# -- dialect ---------------------------------------------------------------------------------


def _event_row(pmid: str, status: str, timestamp: int) -> dict[str, Any]:
    return {"provider": "meta", "channel": CHANNEL, "provider_message_id": pmid,
            "status": status, "timestamp": timestamp, "received_at": utcnow()}


def test_insert_ignore_skips_duplicates_and_keeps_new_rows(store: TenantStore) -> None:
    with store.engine.begin() as conn:
        insert_ignore(conn, t.status_events, [_event_row("a", "sent", 1)])
        insert_ignore(conn, t.status_events, [_event_row("a", "sent", 1),
                                              _event_row("b", "sent", 1)])

    with store.engine.connect() as conn:
        ids = conn.execute(sa.select(t.status_events.c.provider_message_id).order_by(
            t.status_events.c.provider_message_id)).scalars().all()
    assert ids == ["a", "b"]


def test_insert_ignore_returns_the_number_of_rows_inserted(
        store: TenantStore) -> None:
    with store.engine.begin() as conn:
        assert insert_ignore(conn, t.status_events, []) == 0
        assert insert_ignore(conn, t.status_events, [
            _event_row("a", "sent", 1), _event_row("a", "delivered", 2)]) == 2
        assert insert_ignore(conn, t.status_events, [
            _event_row("a", "sent", 1), _event_row("b", "sent", 1),
            _event_row("a", "delivered", 2)]) == 1
        assert insert_ignore(conn, t.status_events, [_event_row("b", "sent", 1)]) == 0
        assert insert_ignore(conn, t.status_events, [_event_row("c", "sent", 1)]) == 1

    assert count(store, t.status_events) == 4
