"""Channel health facts kept outside the tenant databases: when a channel's webhooks last
brought an event (registry column, revision 0005, noted by the write stage at most every few
seconds), and how old the oldest message of a queue is."""

from __future__ import annotations

import contextlib
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command

from wacloud.adapters.db.engines import create_engine
from wacloud.adapters.db.migrate import alembic_config
from wacloud.adapters.db.registry.store import Registry
from wacloud.adapters.db.types import utcnow
from wacloud.adapters.queue.base import QueueSpec
from wacloud.adapters.queue.sqlite.broker import SqliteBroker
from wacloud.credentials.broker import CredentialsBroker
from wacloud.domain.model import InboundMessage, Provider
from wacloud.security.crypto import SecretBox, new_key
from wacloud.stages import write as write_stage
from wacloud.stages.write import WriteContext, write_events

PN = "106540352242922"


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    registry = Registry(create_engine(f"sqlite:///{tmp_path / 'registry.db'}"),
                        SecretBox([new_key()]))
    registry.create_schema()
    registry.add_tenant("acme")
    registry.add_channel(tenant="acme", provider=Provider.META, key=PN, phone_number_id=PN,
                         waba_id="W1", display_number="5511940001234", token="tok")
    return registry


def message(n: int) -> InboundMessage:
    return InboundMessage(provider=Provider.META, channel_key=PN,
                          provider_message_id=f"wamid.{n}", type="text", sender="5511987654321",
                          text="oi", timestamp=1)


async def test_the_write_stage_notes_the_last_inbound_time_at_most_every_interval(
        registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broker = CredentialsBroker(registry, tenants_dir=tmp_path / "tenants", cache_seconds=0)
    parked: list[Any] = []

    async def park(**kwargs: Any) -> int:
        parked.append(kwargs)
        return 1

    ctx = WriteContext(broker, park)
    [channel] = registry.channels()
    assert registry.last_inbound() == {channel.id: None}
    version = registry.version()
    before = utcnow()
    await write_events([message(1)], ctx)
    first = registry.last_inbound()[channel.id]
    assert first is not None and first >= before
    assert registry.version() == version  # not a configuration change: nobody reloads
    await write_events([message(2)], ctx)
    assert registry.last_inbound()[channel.id] == first  # within the interval: no write
    monkeypatch.setattr(write_stage, "INBOUND_NOTE_INTERVAL_S", 0.0)
    await write_events([message(3)], ctx)
    later = registry.last_inbound()[channel.id]
    assert later is not None and later > first
    assert parked == []
    broker.close()


def test_the_last_inbound_time_never_moves_back(registry: Registry) -> None:
    [channel] = registry.channels()
    now = utcnow()
    registry.touch_inbound([channel.id], now)
    registry.touch_inbound([channel.id], now - timedelta(minutes=5))  # a slower process
    assert registry.last_inbound()[channel.id] == now


def test_migration_0005_adds_and_drops_the_column(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    config = alembic_config("registry")
    try:
        for target, step in (("0004", command.upgrade), ("0005", command.upgrade)):
            with engine.begin() as connection:
                config.attributes["connection"] = connection
                step(config, target)
        added = {c["name"] for c in sa.inspect(engine).get_columns("channels")}
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "0004")
        dropped = {c["name"] for c in sa.inspect(engine).get_columns("channels")}
    finally:
        engine.dispose()
    assert "last_inbound_at" in added and added - dropped == {"last_inbound_at"}


async def test_a_queue_tells_the_age_of_its_oldest_message(tmp_path: Path) -> None:
    broker = SqliteBroker(tmp_path / "q.db")
    try:
        queue = broker.queue(QueueSpec("q"))
        assert await queue.oldest_age() is None
        await queue.send(b"first")
        await queue.send(b"second", delay=60)
        age = await queue.oldest_age()
        assert age is not None and 0 <= age < 30
        [received] = await queue.receive(1)  # in flight still counts: it is not done
        assert await queue.oldest_age() is not None
        await queue.dead_letter(received.receipt, "broken")
        other = await queue.oldest_age()  # the delayed one is left
        assert other is not None
        with contextlib.closing(sqlite3.connect(tmp_path / "q.db", isolation_level=None)) as conn:
            conn.execute("UPDATE messages SET sent_at = sent_at - 3600 WHERE queue = 'q'")
        age = await queue.oldest_age()
        assert age is not None and age >= 3600
    finally:
        await broker.close()

