"""Contract for the outbox's send lease and send results, on SQLite, PostgreSQL and MariaDB.

One attempt at a time may call the provider for a row, an acceptance is seen by every later
copy at once, and a late or redelivered result never moves a row backwards. Orders that a
loaded system produces now and then are forced here step by step.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Engine

from wacloud.adapters.db.engines import create_engine
from wacloud.adapters.db.tenant import claim, outbox
from wacloud.adapters.db.tenant import tables as t
from wacloud.adapters.db.tenant.store import TenantStore
from wacloud.adapters.db.types import utcnow
from wacloud.domain.model import OutboundStatus, Provider, StatusUpdate

CHANNEL = "106540352242922"
TO = "5511987654321"
LEASE_S = 60.0


@pytest.fixture
def store(tenant_db_url: str) -> Iterator[TenantStore]:
    tenant_store = TenantStore("acme", create_engine(tenant_db_url))
    tenant_store.create_schema()
    try:
        yield tenant_store
    finally:
        tenant_store.engine.dispose()


def queued_row(store: TenantStore, recipient: str = TO) -> int:
    """A row as the collector leaves it: claimed and on the send queue."""
    row_id = outbox.insert_outbound(store.engine, channel=CHANNEL, recipient=recipient,
                                    type="text", content={"body": "oi"})
    requeue(store, row_id)
    return row_id


def requeue(store: TenantStore, row_id: int) -> None:
    """What the collector does with a pending row: claim it, queue it."""
    claimed = [int(r["id"]) for r in claim.claim_pending(store.engine, 100)]
    assert row_id in claimed
    claim.mark_queued(store.engine, claimed)


def begin(store: TenantStore, row_id: int, owner: str, *, lease_seconds: float = LEASE_S,
          recipient: str | None = None) -> outbox.OutboxState:
    with store.engine.begin() as conn:
        state = outbox.begin_attempt_in(conn, row_id, owner=owner, lease_seconds=lease_seconds,
                                        channel=CHANNEL if recipient else None,
                                        recipient=recipient)
    assert state is not None
    return state


def record(store: TenantStore, row_id: int, owner: str | None, status: OutboundStatus,
           **values: str | None) -> bool:
    with store.engine.begin() as conn:
        return outbox.record_outcome_in(conn, row_id, owner=owner, status=status.value,
                                        **values)


def save(store: TenantStore, row_id: int, owner: str | None, status: OutboundStatus,
         **values: str | None) -> bool:
    """The save stage applying a result from `outbound.results` (late, or redelivered)."""
    with store.engine.begin() as conn:
        return outbox.save_result_in(conn, store, row_id, status=status.value, owner=owner,
                                     channel=CHANNEL, **values)


def row(store: TenantStore, row_id: int) -> sa.RowMapping:
    with store.engine.connect() as conn:
        return conn.execute(sa.select(t.outbound_messages).where(
            t.outbound_messages.c.id == row_id)).mappings().one()


def status(store: TenantStore, row_id: int) -> OutboundStatus:
    return OutboundStatus(row(store, row_id)["status"])


def test_migrations_match_the_model(store: TenantStore) -> None:
    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = [d for d in compare_metadata(context, t.metadata) if d[0] != "remove_table"]
    assert diff == []


# -- the lease -------------------------------------------------------------------------------


def test_one_attempt_holds_the_row_and_a_copy_does_not_send(store: TenantStore) -> None:
    row_id = queued_row(store)
    first = begin(store, row_id, "a" * 32)
    assert (first.owner, first.attempts, first.open) == ("a" * 32, 1, True)

    # The queue delivers the message again while the first attempt is at the provider.
    copy = begin(store, row_id, "b" * 32)
    assert copy.owner is None and copy.open
    assert copy.lease_until is not None
    assert utcnow() < copy.lease_until <= utcnow() + timedelta(seconds=LEASE_S + 1)
    assert copy.attempts == 1  # not counted: it does not send
    assert row(store, row_id)["send_owner"] == "a" * 32


def test_an_acceptance_is_seen_by_every_later_copy_before_any_result_is_saved(
        store: TenantStore) -> None:
    row_id = queued_row(store)
    begin(store, row_id, "a" * 32)
    assert record(store, row_id, "a" * 32, OutboundStatus.ACCEPTED,
                  provider_message_id="wamid.ONE")

    # No save stage has run; a copy that comes after the lease would have ended still sees it.
    late = begin(store, row_id, "b" * 32, lease_seconds=-1)
    assert not late.open and late.provider_message_id == "wamid.ONE"
    assert late.owner is None
    saved = row(store, row_id)
    assert (saved["status"], saved["provider_message_id"], saved["attempts"]) == (3, "wamid.ONE",
                                                                                   1)
    assert saved["send_lease_until"] is None


def test_the_save_of_an_acceptance_already_written_changes_nothing_but_applies_receipts(
        store: TenantStore) -> None:
    row_id = queued_row(store)
    begin(store, row_id, "a" * 32)
    # A receipt that came before the acceptance was written: kept in the history only.
    store.store_events([], [StatusUpdate(Provider.META, CHANNEL, "wamid.ONE", "delivered",
                                         timestamp=1)], [])
    record(store, row_id, "a" * 32, OutboundStatus.ACCEPTED, provider_message_id="wamid.ONE")
    for _ in range(2):  # the result, and a redelivery of it
        save(store, row_id, "a" * 32, OutboundStatus.ACCEPTED,
             provider_message_id="wamid.ONE")
    saved = row(store, row_id)
    assert (saved["status"], saved["provider_message_id"]) == (
        OutboundStatus.DELIVERED.value, "wamid.ONE")


def test_an_expired_lease_is_taken_over_and_the_old_attempt_loses_the_row(
        store: TenantStore) -> None:
    row_id = queued_row(store)
    begin(store, row_id, "a" * 32, lease_seconds=-1)  # died mid-call: its lease ran out
    second = begin(store, row_id, "b" * 32)
    assert second.owner == "b" * 32 and second.attempts == 2

    # The first attempt's outcome arrives after all: it may not close what the second holds.
    assert not record(store, row_id, "a" * 32, OutboundStatus.FAILED, error_code="131026",
                      error_reason="undeliverable")
    assert not save(store, row_id, "a" * 32, OutboundStatus.PENDING, error_code="190",
                    error_reason="token")
    assert status(store, row_id) is OutboundStatus.QUEUED
    assert record(store, row_id, "b" * 32, OutboundStatus.ACCEPTED,
                  provider_message_id="wamid.TWO")
    assert status(store, row_id) is OutboundStatus.ACCEPTED


def test_a_lease_given_back_before_the_call_is_not_counted_and_frees_the_row(
        store: TenantStore) -> None:
    row_id = queued_row(store)
    begin(store, row_id, "a" * 32)
    with store.engine.begin() as conn:
        assert not outbox.release_lease_in(conn, row_id, owner="b" * 32)  # not its lease
        assert outbox.release_lease_in(conn, row_id, owner="a" * 32)
    saved = row(store, row_id)
    assert (saved["attempts"], saved["send_lease_until"]) == (0, None)
    assert begin(store, row_id, "b" * 32).owner == "b" * 32


def test_a_closed_row_is_never_leased(store: TenantStore) -> None:
    row_id = queued_row(store)
    begin(store, row_id, "a" * 32)
    record(store, row_id, "a" * 32, OutboundStatus.FAILED, error_code="131026",
           error_reason="undeliverable")
    again = begin(store, row_id, "b" * 32, lease_seconds=-1)
    assert (again.owner, again.open, again.status) == (None, False, -100)


def blocked_waiters(engine: Engine) -> int:
    """Sessions of this database waiting for a row lock (0 where that cannot be seen)."""
    name = engine.dialect.name
    with engine.connect() as conn:
        if name == "postgresql":
            return int(conn.execute(sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()")).scalar_one())
        if name in ("mysql", "mariadb"):  # innodb_trx does not always list the waiter yet
            return int(conn.execute(sa.text(
                "SELECT count(*) FROM information_schema.processlist WHERE db = DATABASE() "
                "AND command = 'Query' AND info LIKE 'UPDATE outbound_messages%'")).scalar_one())
    return 0


def test_two_attempts_at_the_same_moment_one_wins(store: TenantStore) -> None:
    row_id = queued_row(store)
    other_engine = create_engine(str(store.engine.url.render_as_string(hide_password=False)))
    results: list[outbox.OutboxState | None] = []
    try:
        with store.engine.connect() as conn:
            trans = conn.begin()
            first = outbox.begin_attempt_in(conn, row_id, owner="a" * 32,
                                            lease_seconds=LEASE_S)
            assert first is not None and first.owner == "a" * 32

            def second() -> None:
                results.append(outbox.begin_attempt(other_engine, row_id, owner="b" * 32,
                                                    lease_seconds=LEASE_S))

            thread = threading.Thread(target=second)
            thread.start()
            # Force the order: the second waits on the first's uncommitted lease (on
            # SQLite it waits for the write lock; either way it must see the lease after).
            if store.engine.dialect.name != "sqlite":
                deadline = time.monotonic() + 10
                while blocked_waiters(other_engine) == 0:
                    assert time.monotonic() < deadline, "the second attempt never waited"
                    time.sleep(0.02)
            trans.commit()
        thread.join(30)
        assert not thread.is_alive()
    finally:
        other_engine.dispose()
    [state] = results
    assert state is not None and state.owner is None and state.open
    assert row(store, row_id)["send_owner"] == "a" * 32
    assert row(store, row_id)["attempts"] == 1


# -- results never move a row backwards ------------------------------------------------------


def test_a_stale_pending_for_order_does_not_put_a_requeued_row_back(store: TenantStore) -> None:
    earlier = outbox.insert_outbound(store.engine, channel=CHANNEL, recipient=TO, type="text",
                                     content={"body": "1"})
    later = queued_row(store)  # claims the earlier one too
    claim.release(store.engine, [earlier], "sent back")  # e.g. its channel was paused

    # The later one must wait for the earlier one: back to the outbox, in the same step.
    state = begin(store, later, "a" * 32, recipient=TO)
    assert state.earlier_waiting and state.lease_until is None
    moved = row(store, later)
    assert (moved["status"], moved["error_code"], moved["send_owner"]) == (0, "order", None)
    assert moved["attempts"] == 0

    # Claimed and queued again (both rows), then the old attempt's pending arrives late
    # (a result of an older send stage, or a redelivery): the row stays queued.
    claim.mark_queued(store.engine, [int(r["id"]) for r in claim.claim_pending(
        store.engine, 100)])
    assert status(store, later) is OutboundStatus.QUEUED
    assert not save(store, later, "a" * 32, OutboundStatus.PENDING, error_code="order",
                    error_reason="waits for an earlier message to the same recipient")
    assert status(store, later) is OutboundStatus.QUEUED


def test_a_stale_pending_of_a_paused_channel_does_not_put_a_requeued_row_back(
        store: TenantStore) -> None:
    row_id = queued_row(store)
    begin(store, row_id, "a" * 32)
    assert record(store, row_id, "a" * 32, OutboundStatus.PENDING, error_code="190",
                  error_reason="token expired")
    assert status(store, row_id) is OutboundStatus.PENDING
    requeue(store, row_id)  # the channel was resumed: claimed and queued again
    assert not save(store, row_id, "a" * 32, OutboundStatus.PENDING, error_code="190",
                    error_reason="token expired")  # the same result, redelivered
    assert status(store, row_id) is OutboundStatus.QUEUED


def test_a_stale_queued_never_reopens_a_closed_row(store: TenantStore) -> None:
    failed = queued_row(store)
    begin(store, failed, "a" * 32)
    record(store, failed, "a" * 32, OutboundStatus.QUEUED, error_code="131000",
           error_reason="something went wrong")
    second = begin(store, failed, "b" * 32)
    assert second.owner == "b" * 32
    record(store, failed, "b" * 32, OutboundStatus.FAILED, error_code="131026",
           error_reason="undeliverable")
    assert not save(store, failed, "a" * 32, OutboundStatus.QUEUED, error_code="131000",
                    error_reason="something went wrong")
    assert not save(store, failed, "b" * 32, OutboundStatus.QUEUED)
    assert status(store, failed) is OutboundStatus.FAILED

    accepted = queued_row(store, "5511900000002")
    begin(store, accepted, "c" * 32)
    record(store, accepted, "c" * 32, OutboundStatus.ACCEPTED, provider_message_id="wamid.A")
    assert not save(store, accepted, "c" * 32, OutboundStatus.QUEUED)
    assert not save(store, accepted, None, OutboundStatus.PENDING)
    assert status(store, accepted) is OutboundStatus.ACCEPTED


def test_a_result_without_an_attempt_leaves_a_row_another_attempt_holds(
        store: TenantStore) -> None:
    row_id = queued_row(store)
    begin(store, row_id, "a" * 32)
    # "channel paused" from a copy that never took the lease, or an older version's result.
    assert not record(store, row_id, None, OutboundStatus.PENDING, error_code="paused",
                      error_reason="channel paused")
    assert not save(store, row_id, None, OutboundStatus.FAILED, error_code="channel",
                    error_reason="no channel")
    assert status(store, row_id) is OutboundStatus.QUEUED
    # With no live lease it applies as it always did.
    with store.engine.begin() as conn:
        outbox.release_lease_in(conn, row_id, owner="a" * 32)
    assert record(store, row_id, None, OutboundStatus.PENDING, error_code="paused",
                  error_reason="channel paused")
    assert status(store, row_id) is OutboundStatus.PENDING


# -- the retry budget ------------------------------------------------------------------------


def test_retry_since_is_the_first_temporary_failure_until_a_pause_or_a_replay(
        store: TenantStore) -> None:
    row_id = queued_row(store)
    assert begin(store, row_id, "a" * 32).retry_since is None
    record(store, row_id, "a" * 32, OutboundStatus.QUEUED, error_code="131000",
           error_reason="something went wrong")
    since = row(store, row_id)["retry_since"]
    assert since is not None and abs((utcnow() - since).total_seconds()) < 5
    second = begin(store, row_id, "b" * 32)
    assert second.retry_since == since
    record(store, row_id, "b" * 32, OutboundStatus.QUEUED, error_code="2",
           error_reason="service unavailable")
    assert row(store, row_id)["retry_since"] == since  # measured from the first failure

    begin(store, row_id, "c" * 32)
    record(store, row_id, "c" * 32, OutboundStatus.PENDING, error_code="190",
           error_reason="token")  # a person fixes the channel: a fresh budget after
    assert row(store, row_id)["retry_since"] is None

    requeue(store, row_id)
    begin(store, row_id, "d" * 32)
    record(store, row_id, "d" * 32, OutboundStatus.QUEUED, error_code="2", error_reason="x")
    record(store, row_id, "d" * 32, OutboundStatus.FAILED, error_code="2", error_reason="x")
    assert outbox.requeue_failed(store.engine, row_id)  # a dead letter replayed
    replayed = row(store, row_id)
    assert (replayed["retry_since"], replayed["send_owner"], replayed["attempts"]) == (
        None, None, 0)
