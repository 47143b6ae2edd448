"""A tenant database that is down costs one warning a minute in the collector's log, not a
traceback per poll; the other tenants are collected meanwhile, and the recovery is logged."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import pytest
import sqlalchemy as sa

from wacloud.adapters.db.errors import TroubleLog
from wacloud.adapters.db.registry.store import Registry
from wacloud.adapters.db.tenant import tables as t
from wacloud.adapters.queue.base import QueueSpec
from wacloud.adapters.queue.sqlite.broker import SqliteBroker
from wacloud.credentials.broker import CredentialsBroker
from wacloud.domain.model import Provider
from wacloud.security.crypto import SecretBox, new_key
from wacloud.stages import collect as collect_module
from wacloud.stages import envelopes
from wacloud.stages.collect import CollectContext, collect

PN = "106540352242922"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_down_tenant_is_one_warning_per_interval(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(collect_module, "_TROUBLE",
                        TroubleLog(collect_module.log, 60.0, clock=lambda: clock[0]))
    registry = Registry(sa.create_engine(f"sqlite:///{tmp_path / 'registry.db'}"),
                        SecretBox([new_key()]))
    registry.create_schema()
    registry.add_tenant("down", f"postgresql+psycopg://u:pw@127.0.0.1:{closed_port()}/down")
    registry.add_tenant("up")
    registry.add_channel(tenant="up", provider=Provider.META, key=PN, phone_number_id=PN,
                         token="tok")
    broker = CredentialsBroker(registry, tenants_dir=tmp_path / "tenants")
    with broker.tenant_store("up").engine.begin() as conn:
        conn.execute(t.outbound_messages.insert().values(
            channel=PN, recipient="5511987654321", type="text", content={"body": "oi"}))
    queues = SqliteBroker(tmp_path / "queues.db")
    ctx = CollectContext(broker, queues.queue(QueueSpec(envelopes.OUTBOUND_SEND, fifo=True)))

    async def passes(n: int) -> list[int]:
        return [await collect(ctx) for _ in range(n)]

    try:
        with caplog.at_level(logging.WARNING, logger="wacloud.stages.collect"):
            assert asyncio.run(passes(3)) == [1, 0, 0]  # the healthy tenant is collected
            clock[0] += 61
            asyncio.run(passes(1))
    finally:
        asyncio.run(queues.close())
        broker.close()
        registry.engine.dispose()

    records = [r for r in caplog.records if r.name == "wacloud.stages.collect"]
    assert [r.levelno for r in records] == [logging.WARNING, logging.WARNING]
    assert all(r.exc_info is None for r in records)
    assert "tenant down: database unreachable" in records[0].getMessage()
    # One line each, though psycopg's reason has a second line ("Is the server running ...").
    assert all("\n" not in r.getMessage() for r in records)
    assert "2 more failure(s) since the last warning" in records[1].getMessage()
    assert "pw" not in " ".join(r.getMessage() for r in records).replace("psycopg", "")


def test_trouble_log_keeps_tracebacks_for_bugs_and_logs_the_recovery(
        caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.trouble")
    trouble = TroubleLog(log, 60.0, clock=lambda: 0.0)
    down = sa.exc.OperationalError("SELECT 1", {}, Exception("connection refused"))
    with caplog.at_level(logging.WARNING, logger="test.trouble"):
        assert trouble.failed("tenant a", "collect", down) is True
        assert trouble.failed("tenant a", "collect", down) is True
        assert trouble.failed("tenant a", "collect", KeyError("bug")) is False
        trouble.succeeded("tenant a")
        trouble.succeeded("tenant a")  # nothing more: it was already fine
    messages = [(r.levelno, r.getMessage(), r.exc_info is not None) for r in caplog.records]
    assert messages[0][0] == logging.WARNING and not messages[0][2]
    assert messages[1] == (logging.ERROR, "collect failed for tenant a", True)
    assert messages[2] == (logging.WARNING, "tenant a: database reachable again", False)
    assert len(messages) == 3
