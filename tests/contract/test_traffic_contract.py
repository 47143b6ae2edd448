"""Contract for the dashboard's traffic figures (`wacloud.admin.queries.traffic`): messages in
and out per minute of the last hour, per channel, and failures, counted alike on SQLite,
PostgreSQL and MariaDB (the minute buckets are a portable CASE, not a date function)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from wacloud.adapters.db.engines import create_engine
from wacloud.adapters.db.registry.store import Registry
from wacloud.adapters.db.tenant import tables as t
from wacloud.adapters.db.types import utcnow
from wacloud.admin.queries import traffic
from wacloud.credentials.broker import CredentialsBroker
from wacloud.domain.model import OutboundStatus
from wacloud.security.crypto import SecretBox, new_key

CHANNEL, OTHER = "106540352242922", "106540352242933"


@pytest.fixture
def broker(tenant_db_url: str, tmp_path: Path) -> Iterator[CredentialsBroker]:
    engine = create_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    registry = Registry(engine, SecretBox([new_key()]))
    registry.create_schema()
    registry.add_tenant("acme", tenant_db_url)
    registry.add_tenant("down", "sqlite:////nonexistent-dir/for/sure/down.db")
    broker = CredentialsBroker(registry, tenants_dir=tmp_path / "tenants", cache_seconds=0)
    try:
        yield broker
    finally:
        broker.close()
        engine.dispose()


def test_messages_are_counted_per_minute_and_channel(broker: CredentialsBroker) -> None:
    now = utcnow().replace(microsecond=0)
    engine = broker.tenant_store("acme").engine

    def inbound(minutes_ago: float, channel: str = CHANNEL, n: int = 0) -> dict[str, object]:
        at = now - timedelta(minutes=minutes_ago)
        return {"provider": "meta", "channel": channel, "direction": "in", "type": "text",
                "provider_message_id": f"wamid.{channel}.{minutes_ago}.{n}",
                "status": "received", "received_at": at, "updated_at": at}

    def outbound(minutes_ago: float, status: OutboundStatus = OutboundStatus.ACCEPTED,
                 accepted: bool = True) -> dict[str, object]:
        at = now - timedelta(minutes=minutes_ago)
        return {"channel": CHANNEL, "recipient": "5511987654321", "type": "text",
                "content": {"body": "oi"}, "status": status.value, "created_at": at,
                "updated_at": at, "accepted_at": at if accepted else None}

    with engine.begin() as conn:
        conn.execute(t.messages.insert(), [
            inbound(0.5), inbound(0.5, n=1), inbound(30.5), inbound(59.5), inbound(61),
            inbound(10.5, OTHER)])
        conn.execute(t.outbound_messages.insert(), [
            outbound(0.2), outbound(5.5), outbound(90),
            outbound(2.5, OutboundStatus.FAILED, accepted=False),
            outbound(3.5, OutboundStatus.QUEUED, accepted=False)])

    figures = traffic(broker, ["acme", "down"], now=now)
    assert len(figures["in"]) == len(figures["out"]) == 60
    assert sum(figures["in"]) == 5 and sum(figures["out"]) == 2  # the hour's only
    assert figures["in"][59] == 2 and figures["in"][29] == 1 and figures["in"][0] == 1
    assert figures["in"][49] == 1
    assert figures["out"][59] == 1 and figures["out"][54] == 1
    by_channel = {row["channel"]: row for row in figures["channels"]}
    assert (by_channel[CHANNEL]["in"], by_channel[CHANNEL]["out"],
            by_channel[CHANNEL]["failed"]) == (4, 2, 1)
    assert (by_channel[OTHER]["in"], by_channel[OTHER]["out"]) == (1, 0)
    # One tenant's database that cannot be opened is named, not a failure of the page.
    assert list(figures["errors"]) == ["down"]
