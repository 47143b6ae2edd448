"""The SQL of LGPD erasure and retention on every supported tenant database (SQLite always;
PostgreSQL and MariaDB when their servers are up): LIKE over written phone forms, JSON columns
set to SQL NULL, deletes and updates by id."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa

from wacloud.adapters.db.engines import create_engine
from wacloud.adapters.db.tenant import privacy as db
from wacloud.adapters.db.tenant import tables as t
from wacloud.adapters.db.tenant.outbox import insert_outbound
from wacloud.adapters.db.tenant.store import TenantStore
from wacloud.adapters.db.types import utcnow
from wacloud.domain.contacts import ContactMatcher
from wacloud.domain.model import (
    Contact,
    InboundMessage,
    MediaRef,
    MediaStatus,
    Provider,
    StatusUpdate,
)

MARIA, JOAO = "5511987654321", "5521912345678"


@pytest.fixture
def store(tenant_db_url: str) -> Iterator[TenantStore]:
    store = TenantStore("acme", create_engine(tenant_db_url))
    store.create_schema()
    try:
        yield store
    finally:
        store.engine.dispose()


def inbound(pmid: str, wa_id: str, key: str | None = None) -> InboundMessage:
    media = MediaRef(mime_type="image/jpeg", size=3, key=key,
                     status=MediaStatus.STORED) if key else None
    return InboundMessage(Provider.META, "PN", pmid, "image" if key else "text", sender=wa_id,
                          recipient="5511940001234", contact=Contact(wa_id, None, "Nome"),
                          text="oi", content={"body": "oi"}, media=media, raw={"from": wa_id})


def seed(store: TenantStore) -> None:
    store.store_events(
        [inbound("m1", MARIA, "k/maria.jpg"), inbound("j1", JOAO, "k/joao.jpg")],
        [StatusUpdate(Provider.META, "PN", "out-m", "read", timestamp=1, recipient=MARIA),
         StatusUpdate(Provider.META, "PN", "out-j", "read", timestamp=1, recipient=JOAO)], [])
    insert_outbound(store.engine, channel="PN", recipient="+55 (11) 98765-4321", type="text",
                    content={"body": "a"})
    insert_outbound(store.engine, channel="PN", recipient=JOAO, type="text",
                    content={"body": "b"})


def test_find_and_delete(store: TenantStore) -> None:
    seed(store)
    found = db.find_contact_rows(store.engine, ContactMatcher.parse("+55 11 98765-4321"))
    assert found.counts() == {"messages": 1, "outbound_messages": 1, "status_events": 1,
                              "notices": 0}
    assert found.media_keys == {"k/maria.jpg"}
    assert db.delete_rows(store.engine, found) == found.counts()
    with store.engine.connect() as conn:
        senders = conn.execute(sa.select(t.messages.c.sender)).scalars().all()
        recipients = conn.execute(sa.select(t.outbound_messages.c.recipient)).scalars().all()
    assert senders == [JOAO] and recipients == [JOAO]
    assert db.referenced_media_keys(store.engine, ["k/maria.jpg", "k/joao.jpg"]) == {
        "k/joao.jpg"}


def test_anonymize_sets_sql_null(store: TenantStore) -> None:
    seed(store)
    found = db.find_contact_rows(store.engine, ContactMatcher.parse(MARIA))
    db.anonymize_rows(store.engine, found, utcnow())
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(t.messages).where(
            t.messages.c.provider_message_id == "m1")).mappings().one()
        null_raw = conn.execute(sa.select(sa.func.count()).select_from(t.messages).where(
            t.messages.c.raw.is_(None))).scalar_one()
    assert row["sender"] is None and row["text"] is None and row["raw"] is None
    assert row["media_mime_type"] == "image/jpeg"
    assert null_raw == 1  # a real NULL, not the JSON text 'null'
    assert db.find_contact_rows(store.engine, ContactMatcher.parse(MARIA)).counts() == {
        "messages": 0, "outbound_messages": 0, "status_events": 0, "notices": 0}


def test_purge_before(store: TenantStore) -> None:
    seed(store)
    with store.engine.begin() as conn:
        conn.execute(t.messages.update().where(t.messages.c.provider_message_id == "m1")
                     .values(received_at=utcnow() - timedelta(days=10)))
        conn.execute(t.outbound_messages.update().values(
            created_at=utcnow() - timedelta(days=10), status=5))
    counts, keys = db.purge_before(store.engine, utcnow() - timedelta(days=5), batch=1)
    assert counts == {"messages": 1, "outbound_messages": 2, "status_events": 0, "notices": 0}
    assert keys == {"k/maria.jpg"}


def test_a_bsuid_finds_what_was_sent_to_it_and_its_receipts_not_a_phone(
        store: TenantStore) -> None:
    bsuid = "BR.7718203344556677"
    seed(store)
    insert_outbound(store.engine, channel="PN", recipient=bsuid, type="text",
                    content={"body": "por bsuid"})
    store.store_events(
        [InboundMessage(Provider.META, "PN", "u1", "text", sender=bsuid,
                        contact=Contact(None, bsuid, "Ana"), raw={"from_user_id": bsuid})],
        [StatusUpdate(Provider.META, "PN", "out-u", "delivered", timestamp=1,
                      recipient_user_id=bsuid)], [])

    found = db.find_contact_rows(store.engine, ContactMatcher.parse(bsuid))

    assert found.counts() == {"messages": 1, "outbound_messages": 1, "status_events": 1,
                              "notices": 0}
    # The digits of a BSUID are nobody's phone number.
    assert db.find_contact_rows(store.engine, ContactMatcher.parse("7718203344556677")
                                ).counts()["outbound_messages"] == 0
