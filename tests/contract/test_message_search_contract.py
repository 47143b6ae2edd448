"""Contract for the admin API's message search and timelines (`wacloud.adapters.db.tenant.views`):
the same pages, cursors and timelines on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa

from wacloud.adapters.db.engines import create_engine
from wacloud.adapters.db.tenant import tables as t
from wacloud.adapters.db.tenant.store import TenantStore
from wacloud.adapters.db.tenant.views import MessageFilter, message_detail, search_messages
from wacloud.adapters.db.types import utcnow
from wacloud.domain.model import Contact, InboundMessage, OutboundStatus, Provider, StatusUpdate

CHANNEL = "106540352242922"


@pytest.fixture
def store(tenant_db_url: str) -> Iterator[TenantStore]:
    tenant_store = TenantStore("acme", create_engine(tenant_db_url))
    tenant_store.create_schema()
    try:
        yield tenant_store
    finally:
        tenant_store.engine.dispose()


def test_pages_follow_each_other_and_timelines_join_receipts(store: TenantStore) -> None:
    now = utcnow()
    with store.engine.begin() as conn:
        # Two rows with the same created_at: the cursor must still not skip or repeat one.
        for n in range(5):
            conn.execute(t.outbound_messages.insert().values(
                channel=CHANNEL, recipient="5511987654321", type="text",
                content={"body": f"m{n}"}, status=OutboundStatus.ACCEPTED.value,
                provider_message_id=f"wamid.{n}", created_at=now - timedelta(
                    seconds=10 * (n // 2)), updated_at=now, accepted_at=now))
    store.store_events(
        [InboundMessage(provider=Provider.META, channel_key=CHANNEL,
                        provider_message_id=f"wamid.in{n}", type="text", text="oi",
                        sender="5511987654321", contact=Contact("5511987654321"), timestamp=1)
         for n in range(3)],
        [StatusUpdate(Provider.META, CHANNEL, "wamid.0", status, timestamp=100 + i)
         for i, status in enumerate(("read", "sent", "delivered"))], [])

    everything, last = search_messages(store.engine, MessageFilter(), limit=100)
    assert last is None and len(everything) == 8
    seen, cursor = [], None
    while True:
        page, cursor = search_messages(store.engine, MessageFilter(), 3, cursor)
        seen += [(item["source"], item["id"]) for item in page]
        if cursor is None:
            break
    assert seen == [(item["source"], item["id"]) for item in everything]
    assert len(set(seen)) == 8

    outbound, _ = search_messages(store.engine, MessageFilter(direction="out",
                                                              status="accepted"), 100)
    assert len(outbound) == 4  # the receipts moved the fifth on to read
    [read], _ = search_messages(store.engine, MessageFilter(status="read"), 100)
    assert read["provider_message_id"] == "wamid.0"
    inbound, _ = search_messages(store.engine, MessageFilter(contact="5511987654321",
                                                             direction="in"), 100)
    assert len(inbound) == 3

    with store.engine.connect() as conn:
        first = conn.execute(sa.select(t.outbound_messages.c.id).where(
            t.outbound_messages.c.provider_message_id == "wamid.0")).scalar_one()
    detail = message_detail(store.engine, "outbound", first)
    assert detail is not None
    assert [e["status"] for e in detail["timeline"]] == [
        "created", "accepted", "sent", "delivered", "read"]
    assert message_detail(store.engine, "outbound", 10**9) is None
