"""Contract for claiming outbox rows: the same behaviour on SQLite, PostgreSQL and MariaDB.

Every test runs once per database through the `tenant_db_url` fixture (tests/conftest.py);
PostgreSQL and MariaDB are skipped when their server is unreachable, unless
WACLOUD_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from wacloud.adapters.db.engines import create_engine
from wacloud.adapters.db.tenant import tables as t
from wacloud.adapters.db.tenant.claim import (
    claim_pending,
    mark_expired,
    mark_not_queued,
    mark_queued,
    mark_requeued,
    pending_count,
    reclaim_stale,
    release,
    stale_queued,
)
from wacloud.adapters.db.tenant.outbox import begin_attempt_in, requeue_failed
from wacloud.adapters.db.tenant.store import TenantStore
from wacloud.adapters.db.types import utcnow
from wacloud.domain.model import OutboundStatus

PENDING = OutboundStatus.PENDING.value
RESERVED = OutboundStatus.RESERVED.value
QUEUED = OutboundStatus.QUEUED.value
NOT_QUEUED = OutboundStatus.NOT_QUEUED.value
ACCEPTED = OutboundStatus.ACCEPTED.value
FAILED = OutboundStatus.FAILED.value
om = t.outbound_messages


@pytest.fixture
def engine(tenant_db_url: str) -> Iterator[Engine]:
    tenant_engine = create_engine(tenant_db_url)
    TenantStore("acme", tenant_engine).create_schema()
    try:
        yield tenant_engine
    finally:
        tenant_engine.dispose()


def insert_minimal(engine: Engine, count: int, channel: str = "chan-a") -> list[int]:
    """Rows as a tenant's own system writes them: only the message, server defaults for the
    rest. Returns their ids in order."""
    rows = [{"channel": channel, "recipient": f"+3161234{i:04d}", "type": "text",
             "content": {"body": f"hello {i}"}} for i in range(count)]
    with engine.begin() as conn:
        before = conn.execute(sa.select(sa.func.max(om.c.id))).scalar() or 0
        conn.execute(om.insert(), rows)
        return [int(i) for i in conn.execute(
            sa.select(om.c.id).where(om.c.id > before).order_by(om.c.id)).scalars()]


def set_rows(engine: Engine, ids: list[int], **values: Any) -> None:
    with engine.begin() as conn:
        conn.execute(om.update().where(om.c.id.in_(ids)).values(**values))


def statuses(engine: Engine) -> dict[int, int]:
    with engine.connect() as conn:
        return {int(r.id): int(r.status) for r in conn.execute(sa.select(om.c.id, om.c.status))}


def row(engine: Engine, row_id: int) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.select(om).where(om.c.id == row_id)).mappings().one()


def close_to_now(value: datetime | None) -> bool:
    # MariaDB's DATETIME keeps whole seconds.
    return value is not None and abs(value - utcnow()) < timedelta(seconds=60)


def test_claims_oldest_first_and_respects_limit(engine: Engine) -> None:
    ids = insert_minimal(engine, 5)
    assert pending_count(engine) == 5

    first = claim_pending(engine, 2)
    assert [r["id"] for r in first] == ids[:2]
    for claimed in first:
        assert claimed["status"] == RESERVED
        assert claimed["reserved_at"].tzinfo is not None
        assert close_to_now(claimed["reserved_at"])
        assert claimed["updated_at"] == claimed["reserved_at"]
        assert claimed["channel"] == "chan-a"
        assert claimed["content"] == {"body": f"hello {ids.index(claimed['id'])}"}
        # Every column comes back.
        assert set(claimed) == {c.name for c in om.c}
    assert pending_count(engine) == 3

    second = claim_pending(engine, 10)
    assert [r["id"] for r in second] == ids[2:]
    assert claim_pending(engine, 10) == []
    assert claim_pending(engine, 0) == []
    assert pending_count(engine) == 0
    assert statuses(engine) == dict.fromkeys(ids, RESERVED)
    stored = row(engine, ids[0])
    assert stored["reserved_at"] == first[0]["reserved_at"]


def test_claim_skips_other_statuses(engine: Engine) -> None:
    ids = insert_minimal(engine, 4)
    set_rows(engine, [ids[0]], status=QUEUED)
    set_rows(engine, [ids[1]], status=NOT_QUEUED)
    set_rows(engine, [ids[2]], status=ACCEPTED)
    assert [r["id"] for r in claim_pending(engine, 10)] == [ids[3]]


def test_exclude_channels_leaves_paused_channels_pending(engine: Engine) -> None:
    a = insert_minimal(engine, 3, channel="chan-a")
    b = insert_minimal(engine, 3, channel="chan-b")
    c = insert_minimal(engine, 2, channel="chan-c")

    got = claim_pending(engine, 100, exclude_channels={"chan-b", "chan-c"})
    assert [r["id"] for r in got] == a
    assert claim_pending(engine, 100, exclude_channels=["chan-b", "chan-c"]) == []

    got = claim_pending(engine, 2, exclude_channels=("chan-b",))
    assert [r["id"] for r in got] == c
    assert pending_count(engine) == 3

    got = claim_pending(engine, 100, exclude_channels=["nonexistent"])
    assert [r["id"] for r in got] == b


def test_minimal_insert_gets_defaults(engine: Engine) -> None:
    (row_id,) = insert_minimal(engine, 1)
    stored = row(engine, row_id)
    assert stored["status"] == PENDING
    assert stored["attempts"] == 0
    assert stored["created_at"] is not None
    assert stored["updated_at"] is not None
    # The server's clock may not be in UTC on every backend: only check it is a real time.
    assert abs(stored["created_at"] - utcnow()) < timedelta(days=1)
    assert stored["reserved_at"] is None
    assert stored["queued_at"] is None

    (claimed,) = claim_pending(engine, 1)
    assert claimed["id"] == row_id
    assert claimed["created_at"] == stored["created_at"]
    assert claimed["recipient"] == stored["recipient"]


def claim_concurrently(url: str, workers: int, batch: int) -> list[list[int]]:
    """`workers` threads, each with its own engine, claim until nothing is pending."""
    barrier = threading.Barrier(workers)
    results: list[list[int]] = [[] for _ in range(workers)]
    errors: list[BaseException] = []

    def work(index: int) -> None:
        own = create_engine(url)
        try:
            barrier.wait(timeout=30)
            while True:
                got = claim_pending(own, batch)
                assert len(got) <= batch
                results[index].extend(int(r["id"]) for r in got)
                if not got and pending_count(own) == 0:
                    return
        except BaseException as exc:
            errors.append(exc)
        finally:
            own.dispose()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in threads)
    assert not errors, errors
    return results


def test_concurrent_claimers_never_share_a_row(engine: Engine) -> None:
    ids = insert_minimal(engine, 2000)
    url = engine.url.render_as_string(hide_password=False)

    results = claim_concurrently(url, workers=4, batch=25)

    claimed = [i for result in results for i in result]
    assert len(claimed) == len(set(claimed)), "a row was claimed twice"
    assert sorted(claimed) == ids
    for result in results:
        assert result == sorted(result)  # each claimer sees oldest first
    assert statuses(engine) == dict.fromkeys(ids, RESERVED)
    assert pending_count(engine) == 0


def test_reclaim_stale_only_touches_expired_reservations(engine: Engine) -> None:
    ids = insert_minimal(engine, 6)
    claim_pending(engine, 6)
    old = utcnow() - timedelta(hours=1)
    expired, fresh, queued, failed, pending = ids[0], ids[1], ids[2], ids[3], ids[4]
    legacy = ids[5]  # reserved by the original system: no reserved_at
    set_rows(engine, [expired], reserved_at=old)
    set_rows(engine, [queued], status=QUEUED, reserved_at=old)
    set_rows(engine, [failed], status=NOT_QUEUED, reserved_at=old)
    set_rows(engine, [pending], status=PENDING, reserved_at=old)
    set_rows(engine, [legacy], reserved_at=None, updated_at=old)

    assert reclaim_stale(engine, lease_seconds=600) == 2

    assert statuses(engine) == {expired: PENDING, fresh: RESERVED, queued: QUEUED,
                                failed: NOT_QUEUED, pending: PENDING, legacy: PENDING}
    assert row(engine, expired)["reserved_at"] is None
    assert close_to_now(row(engine, expired)["updated_at"])
    assert reclaim_stale(engine, lease_seconds=600) == 0
    # Reclaimed rows are claimable again, oldest first.
    assert [r["id"] for r in claim_pending(engine, 10)] == [expired, pending, legacy]


def test_reclaim_stale_with_short_lease(engine: Engine) -> None:
    ids = insert_minimal(engine, 2)
    claim_pending(engine, 2)
    set_rows(engine, [ids[0]], reserved_at=utcnow() - timedelta(seconds=120))
    assert reclaim_stale(engine, lease_seconds=60.0) == 1
    assert statuses(engine) == {ids[0]: PENDING, ids[1]: RESERVED}


def test_mark_queued_only_from_reserved(engine: Engine) -> None:
    ids = insert_minimal(engine, 4)
    claim_pending(engine, 2)  # ids[0], ids[1] reserved
    set_rows(engine, [ids[2]], status=NOT_QUEUED)  # ids[3] stays pending

    mark_queued(engine, ids)

    assert statuses(engine) == {ids[0]: QUEUED, ids[1]: QUEUED, ids[2]: NOT_QUEUED,
                                ids[3]: PENDING}
    assert close_to_now(row(engine, ids[0])["queued_at"])
    assert row(engine, ids[3])["queued_at"] is None
    mark_queued(engine, [])  # nothing to do


def test_mark_not_queued_only_from_reserved(engine: Engine) -> None:
    ids = insert_minimal(engine, 3)
    claim_pending(engine, 2)
    set_rows(engine, [ids[1]], status=QUEUED)

    mark_not_queued(engine, ids, "channel unknown")

    assert statuses(engine) == {ids[0]: NOT_QUEUED, ids[1]: QUEUED, ids[2]: PENDING}
    assert row(engine, ids[0])["error_reason"] == "channel unknown"
    assert row(engine, ids[1])["error_reason"] is None
    assert row(engine, ids[2])["error_reason"] is None


def test_release_from_reserved_or_queued_only(engine: Engine) -> None:
    ids = insert_minimal(engine, 5)
    claim_pending(engine, 4)
    mark_queued(engine, [ids[1]])
    mark_not_queued(engine, [ids[2]], "invalid")
    set_rows(engine, [ids[3]], status=ACCEPTED)  # ids[4] stays pending

    release(engine, ids, "channel paused")

    assert statuses(engine) == {ids[0]: PENDING, ids[1]: PENDING, ids[2]: NOT_QUEUED,
                                ids[3]: ACCEPTED, ids[4]: PENDING}
    assert row(engine, ids[0])["error_reason"] == "channel paused"
    assert row(engine, ids[0])["reserved_at"] is None
    assert row(engine, ids[1])["error_reason"] == "channel paused"
    assert row(engine, ids[2])["error_reason"] == "invalid"
    assert row(engine, ids[3])["error_reason"] is None
    assert row(engine, ids[4])["error_reason"] is None

    # Released rows are claimed again; a None reason clears the previous one.
    assert [r["id"] for r in claim_pending(engine, 10)] == [ids[0], ids[1], ids[4]]
    release(engine, [ids[0]], None)
    assert row(engine, ids[0])["error_reason"] is None
    assert row(engine, ids[0])["status"] == PENDING


def test_transitions_handle_many_ids(engine: Engine) -> None:
    ids = insert_minimal(engine, 1200)
    claimed = [r["id"] for r in claim_pending(engine, 1200)]
    assert claimed == ids
    mark_queued(engine, ids + ids[:10])  # duplicates are harmless; chunks past 500 ids
    assert set(statuses(engine).values()) == {QUEUED}
    release(engine, ids, None)
    assert pending_count(engine) == 1200


def test_reclaimed_row_is_not_moved_by_a_late_collector(engine: Engine) -> None:
    (row_id,) = insert_minimal(engine, 1)
    claim_pending(engine, 1)
    set_rows(engine, [row_id], reserved_at=datetime(2000, 1, 1, tzinfo=UTC))
    assert reclaim_stale(engine, 60) == 1
    # The first collector, late, tries to finish: nothing happens to the pending row.
    mark_queued(engine, [row_id])
    mark_not_queued(engine, [row_id], "late")
    assert statuses(engine) == {row_id: PENDING}
    assert row(engine, row_id)["error_reason"] is None


def test_mark_queued_notes_the_attempts_so_far(engine: Engine) -> None:
    ids = insert_minimal(engine, 2)
    set_rows(engine, [ids[1]], attempts=3)
    claim_pending(engine, 2)
    mark_queued(engine, ids)
    assert [row(engine, i)["queued_attempts"] for i in ids] == [0, 3]


def test_stale_queued_finds_only_queued_rows_nothing_touched(engine: Engine) -> None:
    ids = insert_minimal(engine, 6)
    claim_pending(engine, 6)
    mark_queued(engine, ids)
    old = utcnow() - timedelta(hours=1)
    stale, stale_later, fresh, reserved, accepted, leased = ids
    set_rows(engine, [stale, stale_later], updated_at=old, queued_at=old)
    set_rows(engine, [reserved], status=RESERVED, updated_at=old)
    set_rows(engine, [accepted], status=ACCEPTED, updated_at=old)
    # An attempt that may have reached the provider, its outcome not written yet (waiting
    # for the database in outbound.results): a copy would send it twice.
    set_rows(engine, [leased], updated_at=old, queued_at=old, attempts=1, send_owner="a1",
             send_lease_until=old)

    found = stale_queued(engine, 600, 10)
    assert [r["id"] for r in found] == [stale, stale_later]
    assert set(found[0]) == {c.name for c in om.c}  # a whole row: enough for an envelope
    assert [r["id"] for r in stale_queued(engine, 600, 1)] == [stale]

    set_rows(engine, [stale], attempts=2)
    mark_requeued(engine, [stale, stale_later, fresh, reserved, accepted])
    again = row(engine, stale)
    assert again["status"] == QUEUED and close_to_now(again["queued_at"])
    assert again["queued_attempts"] == 2  # later messages wait for its next attempt
    assert close_to_now(again["updated_at"])
    assert row(engine, reserved)["status"] == RESERVED  # only queued rows move
    assert row(engine, accepted)["updated_at"] < utcnow() - timedelta(minutes=30)
    assert stale_queued(engine, 600, 10) == []


def test_mark_expired_only_from_reserved_or_queued(engine: Engine) -> None:
    ids = insert_minimal(engine, 4)
    claim_pending(engine, 3)
    mark_queued(engine, [ids[1]])
    set_rows(engine, [ids[2]], status=ACCEPTED)  # ids[3] stays pending

    mark_expired(engine, ids, "expired: its validity ended")

    assert statuses(engine) == {ids[0]: FAILED, ids[1]: FAILED, ids[2]: ACCEPTED,
                                ids[3]: PENDING}
    assert row(engine, ids[0])["error_code"] == "expired"
    assert row(engine, ids[1])["error_reason"] == "expired: its validity ended"
    assert row(engine, ids[2])["error_code"] is None


def earlier_waiting(engine: Engine, row_id: int, recipient: str, *, keep: bool = False) -> bool:
    """Whether the send stage finds an earlier message waiting for this row. Unless `keep`,
    the row is put back as it was (the probe sends it to the outbox, or takes its lease)."""
    before = row(engine, row_id)
    with engine.begin() as conn:
        state = begin_attempt_in(conn, row_id, owner=uuid.uuid4().hex, lease_seconds=60,
                                 channel="chan-a", recipient=recipient)
    assert state is not None
    if not keep:
        set_rows(engine, [row_id], **{k: before[k] for k in (
            "status", "attempts", "send_owner", "send_lease_until", "reserved_at",
            "queued_at", "error_code", "error_reason")})
    return state.earlier_waiting


def test_a_queued_earlier_row_blocks_until_the_send_stage_saw_it(engine: Engine) -> None:
    """Two collectors may queue one recipient's rows out of order: the later row's message
    then reaches the send stage first, while the earlier row is queued (or still reserved)."""
    first, second = insert_minimal(engine, 2)
    set_rows(engine, [second], recipient=row(engine, first)["recipient"])
    to = row(engine, first)["recipient"]
    claim_pending(engine, 2)
    assert earlier_waiting(engine, second, to)  # reserved: claimed, not queued yet
    mark_queued(engine, [first, second])
    assert earlier_waiting(engine, second, to)  # queued, its message not seen yet
    assert not earlier_waiting(engine, first, to, keep=True)  # the earlier row itself goes
    # The send stage counted an attempt of the first (its message came first) and holds it;
    # the second no longer waits for it.
    assert statuses(engine)[first] == QUEUED
    assert not earlier_waiting(engine, second, to)
    set_rows(engine, [first], send_lease_until=None)  # a retry backoff: still queued
    assert not earlier_waiting(engine, second, to)
    # Queued again by the stale reclaim: waiting again until its copy is seen.
    mark_requeued(engine, [first])
    assert earlier_waiting(engine, second, to)
    # Rows queued before queued_attempts existed (NULL) do not block, as before.
    set_rows(engine, [first], queued_attempts=None)
    assert not earlier_waiting(engine, second, to)



def test_a_replayed_dead_letter_blocks_later_rows_until_it_is_attempted(engine: Engine) -> None:
    first, second = insert_minimal(engine, 2)
    to = row(engine, first)["recipient"]
    set_rows(engine, [second], recipient=to)
    claim_pending(engine, 2)
    mark_queued(engine, [first, second])
    assert not earlier_waiting(engine, first, to, keep=True)  # attempt 1
    set_rows(engine, [first], send_lease_until=None)
    mark_requeued(engine, [first])  # (queued again once, after that attempt)
    set_rows(engine, [first], status=FAILED)  # then it ran out of time
    assert requeue_failed(engine, first)  # `wacloud dlq replay`: its message goes to the end
    assert earlier_waiting(engine, second, to)
    assert not earlier_waiting(engine, first, to, keep=True)
    set_rows(engine, [first], send_lease_until=None)  # backing off after that attempt
    assert not earlier_waiting(engine, second, to)
