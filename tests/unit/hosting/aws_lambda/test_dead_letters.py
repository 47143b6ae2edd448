"""A message the runner dead-letters (its tenant database down longer than the retry period)
is moved by an adapter that adopted Lambda's records, and otherwise reported failed: never
deleted by Lambda without having been moved."""

from __future__ import annotations

import sqlite3

import pytest

from tests.unit.hosting.aws_lambda.conftest import APP_SECRET
from tests.unit.hosting.aws_lambda.harness import AdoptingQueue, LambdaWorld, meta_event
from tests.unit.hosting.aws_lambda.test_pipeline import text_webhook
from wacloud.hosting.aws_lambda import receiver, writer
from wacloud.stages.envelopes import INBOUND_RAW


@pytest.mark.parametrize("adopting", [True, False])
def test_a_dead_letter_is_moved_or_reported_failed(world: LambdaWorld, adopting: bool,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WACLOUD_DB_RETRY_PERIOD_S", "0")  # the first database failure is final
    monkeypatch.setenv("WACLOUD_SQLITE_BUSY_TIMEOUT_S", "0.1")
    gateway = world.app.gateway
    source = gateway.queues[INBOUND_RAW]
    if adopting:
        gateway.queues[INBOUND_RAW] = AdoptingQueue(source)  # type: ignore[index]
    assert world.invoke("receiver", receiver.handler, meta_event(
        text_webhook("while the database is locked", "wamid.locked"), APP_SECRET)
    )["statusCode"] == 200
    path = world.broker.tenant_store("acme").engine.url.database
    assert path
    lock = sqlite3.connect(path, timeout=0)
    lock.execute("BEGIN EXCLUSIVE")  # another process holds the tenant database
    try:
        messages, failed = world.deliver(INBOUND_RAW, "writer", writer.handler)
    finally:
        lock.rollback()
        lock.close()
    [message] = messages
    dead = world.app.run(source.dead_count())
    if adopting:
        assert failed == [] and dead == 1
        [letter] = world.app.run(source.dead_letters())
        assert "database unavailable" in letter.attributes["reason"]
        adopting_queue = gateway.queues[INBOUND_RAW]
        assert isinstance(adopting_queue, AdoptingQueue)
        assert [m["MessageId"] for m in adopting_queue.adopted] == [message.message_id]
    else:
        assert failed == [message.message_id] and dead == 0
    assert world.inbound_rows("acme") == []
