"""SQLite-specific behaviour of the embedded queue (the shared semantics live in the contract)."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import time
from pathlib import Path

import pytest

from wacloud.adapters.batching import power_of_two_chunks
from wacloud.adapters.queue.base import LaneShare, OutgoingMessage, QueueSpec
from wacloud.adapters.queue.sqlite import broker as sqlite_broker
from wacloud.adapters.queue.sqlite import queue as sqlite_queue
from wacloud.adapters.queue.sqlite.broker import SqliteBroker


async def test_group_commit_batches_concurrent_sends(tmp_path: Path) -> None:
    broker = SqliteBroker(tmp_path / "q.db")
    queue = broker.queue(QueueSpec("q"))
    before = broker.commits
    await asyncio.gather(*(queue.send(f"m{i}".encode()) for i in range(500)))
    commits = broker.commits - before
    assert 1 <= commits <= 50, commits
    assert (await queue.depth())["visible"] == 500
    await broker.close()


async def test_close_flushes_pending_writes(tmp_path: Path) -> None:
    broker = SqliteBroker(tmp_path / "q.db")
    queue = broker.queue(QueueSpec("q"))
    sends = [asyncio.create_task(queue.send(b"x")) for _ in range(200)]
    await asyncio.sleep(0)  # let every send enqueue its write
    await broker.close()
    await asyncio.gather(*sends)
    with pytest.raises(RuntimeError):
        await queue.send(b"too late")
    reopened = SqliteBroker(tmp_path / "q.db")
    assert (await reopened.queue(QueueSpec("q")).depth())["visible"] == 200
    await reopened.close()


async def test_failing_operation_does_not_fail_its_batch(tmp_path: Path) -> None:
    broker = SqliteBroker(tmp_path / "q.db")
    queue = broker.queue(QueueSpec("q"))

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO no_such_table VALUES (1)")

    results = await asyncio.gather(*(queue.send(b"ok") for _ in range(20)), broker.call(broken),
                                   *(queue.send(b"ok") for _ in range(20)),
                                   return_exceptions=True)
    assert isinstance(results[20], sqlite3.OperationalError)
    assert [r for i, r in enumerate(results) if i != 20] == [None] * 40
    assert (await queue.depth())["visible"] == 40
    await broker.close()


async def test_file_is_wal_and_schema_is_shared(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "q.db"
    first, second = SqliteBroker(path), SqliteBroker(path, synchronous="NORMAL")
    await first.queue(QueueSpec("a")).send(b"1")
    await first.queue(QueueSpec("b")).send(b"2")
    [msg] = await second.queue(QueueSpec("a")).receive()
    assert msg.body == b"1"
    mode = await first.call(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0])
    assert mode == "wal"
    await first.close()
    await second.close()


def test_rejects_unknown_synchronous_mode(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        SqliteBroker(tmp_path / "q.db", synchronous="SOMETIMES")


async def test_garbage_receipts_are_ignored(tmp_path: Path) -> None:
    broker = SqliteBroker(tmp_path / "q.db")
    queue = broker.queue(QueueSpec("q"))
    await queue.send(b"x")
    [msg] = await queue.receive()
    await queue.ack(["", "nonsense", "12", "x:y", msg.receipt.split(":")[0] + ":wrong"])
    await queue.release("garbage")
    assert (await queue.depth())["in_flight"] == 1
    await broker.close()


async def test_dead_letter_keeps_source_queue_and_iter_all_sees_every_state(
        tmp_path: Path) -> None:
    broker = SqliteBroker(tmp_path / "q.db")
    queue = broker.queue(QueueSpec("q", max_receives=1))
    await queue.send(b"dead")
    [dead] = await queue.receive(1, visibility_timeout=0)
    await queue.send_batch([OutgoingMessage(b"flight"), OutgoingMessage(b"later", delay=60),
                            OutgoingMessage(b"ready")])
    # The expired "dead" comes first: it goes to the DLQ and "flight" is handed out instead.
    assert [m.body for m in await queue.receive(1)] == [b"flight"]
    [letter] = await queue.dead_letters()
    assert letter.message_id == dead.message_id
    assert letter.attributes["source_queue"] == "q"
    # The DLQ is an ordinary queue too.
    assert (await broker.queue(QueueSpec("q.dlq")).depth())["visible"] == 1
    states = {m.body: m.attributes["state"] for m in await queue.iter_all()}
    assert states == {b"dead": "dead", b"flight": "in_flight", b"later": "delayed",
                      b"ready": "visible"}
    await broker.close()


async def test_dead_copies_of_one_dedup_id_coexist(tmp_path: Path) -> None:
    broker = SqliteBroker(tmp_path / "q.db")
    queue = broker.queue(QueueSpec("q", max_receives=1))
    for _ in range(2):
        await queue.send(b"x", dedup_id="same")
        await queue.receive(1, visibility_timeout=0)
        assert await queue.receive(1) == []  # dead-letters it, freeing the dedup id
    assert len(await queue.dead_letters()) == 2
    assert await queue.redrive() == 2
    assert (await queue.depth())["visible"] == 2
    await broker.close()


async def test_long_poll_wakes_on_in_process_send(tmp_path: Path) -> None:
    broker = SqliteBroker(tmp_path / "q.db")
    queue = broker.queue(QueueSpec("q"))
    waiting = asyncio.create_task(queue.receive(wait_seconds=10))
    await asyncio.sleep(0.1)
    sent = time.monotonic()
    await queue.send(b"x")
    [msg] = await asyncio.wait_for(waiting, 5)
    assert msg.body == b"x"
    assert time.monotonic() - sent < 1.0
    assert await queue.receive(wait_seconds=0.1) == []  # an empty long poll ends on time
    await broker.close()


async def test_fifo_ignores_other_queues_and_ungrouped_messages(tmp_path: Path) -> None:
    broker = SqliteBroker(tmp_path / "q.db")
    fifo, other = broker.queue(QueueSpec("f", fifo=True)), broker.queue(QueueSpec("o", fifo=True))
    await other.send(b"o1", group_id="g")
    await other.receive(1)  # group g is in flight in *another* queue
    await fifo.send_batch([OutgoingMessage(b"g1", group_id="g"), OutgoingMessage(b"n1"),
                           OutgoingMessage(b"n2")])
    [g1] = await fifo.receive(1)
    assert [m.body for m in await fifo.receive(10)] == [b"n1", b"n2"]
    assert g1.body == b"g1"
    await broker.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="doorbells need Linux")
async def test_send_from_another_broker_rings_the_long_poll(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Polling is made far slower than the deadline: only the doorbell can deliver in time.
    monkeypatch.setattr(sqlite_queue, "POLL_INTERVAL", 120.0)
    consumer_side = SqliteBroker(tmp_path / "q.db")
    producer_side = SqliteBroker(tmp_path / "q.db")  # as another process sharing the file
    waiting = asyncio.create_task(consumer_side.queue(QueueSpec("q")).receive(wait_seconds=60))
    deadline = time.monotonic() + 10
    while not consumer_side._waiters.get("q") and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await producer_side.queue(QueueSpec("q")).send(b"rung")
    [msg] = await asyncio.wait_for(waiting, 10)
    assert msg.body == b"rung"
    await producer_side.close()
    await consumer_side.close()


async def test_concurrent_sends_share_multi_row_inserts(tmp_path: Path) -> None:
    broker = SqliteBroker(tmp_path / "q.db")
    queue = broker.queue(QueueSpec("q"))
    statements: list[str] = []
    await broker.call(lambda conn: conn.set_trace_callback(statements.append))
    await asyncio.gather(*(queue.send(f"m{i}".encode()) for i in range(300)))
    inserts = [s for s in statements if s.startswith("INSERT OR IGNORE INTO messages")]
    assert 1 <= len(inserts) <= 60, len(inserts)  # one per power-of-two chunk of each commit
    got = await queue.receive(300)
    assert sorted(m.body for m in got) == sorted(f"m{i}".encode() for i in range(300))
    await broker.close()


async def test_a_batch_of_many_claims_is_acked_per_claim(tmp_path: Path) -> None:
    broker = SqliteBroker(tmp_path / "q.db")
    queue = broker.queue(QueueSpec("q"))
    await queue.send_batch([OutgoingMessage(f"m{i}".encode()) for i in range(30)])
    first, second = await queue.receive(10), await queue.receive(20)
    stale = f"{first[0].message_id}:{'0' * 16}"
    await queue.ack([m.receipt for m in first[1:] + second] + [stale])
    depth = await queue.depth()
    assert (depth["visible"], depth["in_flight"]) == (0, 1)  # the stale receipt deleted nothing
    await broker.close()


async def test_only_transactions_with_sends_wait_for_the_disk(tmp_path: Path) -> None:
    broker = SqliteBroker(tmp_path / "q.db", synchronous="FULL")
    queue = broker.queue(QueueSpec("q"))

    def mode(conn: sqlite3.Connection) -> int:
        return int(conn.execute("PRAGMA synchronous").fetchone()[0])

    await queue.send(b"x")
    assert await broker.call(mode) == 2  # FULL: the commit syncs the WAL
    [message] = await queue.receive(1)
    assert await broker.call(mode, durable=False) == 1  # NORMAL: claims, acks, reads
    await queue.ack([message.receipt])
    assert await broker.call(mode) == 2
    await broker.close()


def test_power_of_two_chunks_cover_every_item_in_order() -> None:
    for n in (0, 1, 7, 256, 300, 1000):
        chunks = list(power_of_two_chunks(list(range(n)), largest=256))
        assert [x for chunk in chunks for x in chunk] == list(range(n))
        assert all(len(c) & (len(c) - 1) == 0 and len(c) <= 256 for c in chunks)
    assert [len(c) for c in power_of_two_chunks(list(range(300)))] == [256, 32, 8, 4]


async def test_erasure_overwrites_the_deleted_bodies_in_the_file(tmp_path: Path) -> None:
    broker = SqliteBroker(tmp_path / "q.db")
    queue = broker.queue(QueueSpec("q"))
    # Bodies of a page each: emptied pages go to the free list, unwritten unless scrubbed.
    await queue.send_batch([OutgoingMessage(b"KEEP-ME-" + bytes(3000))] + [
        OutgoingMessage(b"ERASE-ME-%d-" % i + bytes(3000)) for i in range(6)])
    erased = [m.message_id for m in await queue.iter_all() if m.body.startswith(b"ERASE")]
    assert await queue.delete(erased) == 6
    await broker.close()
    with sqlite3.connect(tmp_path / "q.db") as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = (tmp_path / "q.db").read_bytes()
    assert b"KEEP-ME-" in data and b"ERASE-ME-" not in data


async def test_wal_is_cut_back_while_writes_go_on(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_broker, "CHECKPOINT_INTERVAL_S", 0.02)
    monkeypatch.setattr(sqlite_broker, "WAL_RESTART_BYTES", 256 * 1024)
    broker = SqliteBroker(tmp_path / "q.db")
    queue = broker.queue(QueueSpec("q"))
    wal = tmp_path / "q.db-wal"
    body = bytes(1500)
    # A reader's open snapshot holds every checkpoint back (none may overwrite pages it reads,
    # nor start the log over), so the WAL grows past the limit whatever the checkpoint thread
    # does meanwhile; once it ends, only the checkpoints can bring the file back.
    reader = sqlite3.connect(tmp_path / "q.db", isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM messages").fetchall()
    try:
        await asyncio.gather(*(queue.send(body) for _ in range(2000)))  # ~4 MB of WAL at least
        grew_to = wal.stat().st_size
    finally:
        reader.execute("COMMIT")
        reader.close()
    assert grew_to > 1024 * 1024
    deadline = time.monotonic() + 30
    while wal.stat().st_size > 256 * 1024 and time.monotonic() < deadline:
        await asyncio.gather(*(queue.send(body) for _ in range(20)))  # writes never stop
        got = await queue.receive(20)
        await queue.ack([m.receipt for m in got])
    assert wal.stat().st_size <= 256 * 1024
    await broker.close()


async def _claim_steps(queue: sqlite_queue.SqliteQueue, broker: SqliteBroker) -> int:
    """SQLite VM steps (in hundreds) one receive of one message takes under the write lock."""
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    await broker.call(lambda conn: conn.set_progress_handler(count, 100))
    try:
        got = await queue.receive(1, visibility_timeout=60)
    finally:
        await broker.call(lambda conn: conn.set_progress_handler(None, 100))
    assert got, "the receive found nothing"
    await queue.ack([m.receipt for m in got])
    return steps[0]


@pytest.mark.parametrize("backlog", [50, 5000])
async def test_fifo_claim_does_not_walk_a_blocked_backlog(tmp_path: Path, backlog: int) -> None:
    broker = SqliteBroker(tmp_path / "q.db")
    queue = broker.queue(QueueSpec("send", fifo=True))
    # Queued behind an in-flight head: one recipient's long queue ...
    await queue.send_batch([OutgoingMessage(b"x", group_id="t/n/busy") for _ in range(backlog)])
    [head] = await queue.receive(1, visibility_timeout=60)
    # ... and a campaign released until its rate-limit slots (hidden heads of one lane).
    await queue.send_batch([OutgoingMessage(b"c", group_id=f"t/n/r{i}", delay=600)
                            for i in range(backlog)])
    await queue.send(b"ready", group_id="t2/n2/r")
    steps = await _claim_steps(queue, broker)
    assert steps < 20, steps  # a few index seeks, whatever the backlog (~2 with either size)
    await queue.ack([head.receipt])
    await broker.close()


async def test_a_file_from_before_lanes_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, queue TEXT NOT NULL,"
                 " body BLOB NOT NULL, group_id TEXT, dedup_id TEXT, sent_at REAL NOT NULL,"
                 " visible_at REAL NOT NULL, receive_count INTEGER NOT NULL DEFAULT 0,"
                 " receipt TEXT, origin TEXT)")
    now = time.time()
    for body, group in ((b"a1", "t/n/a"), (b"b1", "t/n/b"), (b"a2", "t/n/a"), (b"n1", None)):
        conn.execute("INSERT INTO messages (queue, body, group_id, sent_at, visible_at)"
                     " VALUES ('send', ?, ?, ?, ?)", (body, group, now, now))
    conn.close()
    broker = SqliteBroker(path)
    queue = broker.queue(QueueSpec("send", fifo=True))
    got = await queue.receive(10)
    assert sorted(m.body for m in got) == [b"a1", b"a2", b"b1", b"n1"]
    assert [m.body for m in got if m.group_id == "t/n/a"] == [b"a1", b"a2"]
    await queue.ack([m.receipt for m in got])
    await queue.send(b"a3", group_id="t/n/a")  # a new message of an emptied group is its head
    [msg] = await queue.receive(10)
    assert msg.body == b"a3"
    await broker.close()


async def test_writer_survives_a_batch_that_breaks_the_transaction(tmp_path: Path) -> None:
    """An op that ends the transaction itself makes the ROLLBACK after its error fail too: that
    used to kill the writer thread, and every later send (every webhook) waited forever."""
    broker = SqliteBroker(tmp_path / "q.db")
    queue = broker.queue(QueueSpec("q"))

    def breaks_the_transaction(conn: sqlite3.Connection) -> None:
        conn.execute("ROLLBACK")
        raise ValueError("injected")

    def commit_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute("COMMIT")
        raise ValueError("injected after commit")

    for bad in (breaks_the_transaction, commit_then_fail):
        results = await asyncio.wait_for(asyncio.gather(
            queue.send(b"before"), broker.call(bad), queue.send(b"after"),
            return_exceptions=True), 10)
        assert isinstance(results[1], ValueError)
        # The writer goes on: later operations are served (in time, not hanging).
        await asyncio.wait_for(queue.send(b"later"), 10)
    assert (await asyncio.wait_for(queue.depth(), 10))["visible"] >= 2
    await broker.close()


async def test_writer_survives_when_processing_itself_raises(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    broker = SqliteBroker(tmp_path / "q.db")
    queue = broker.queue(QueueSpec("q"))
    calls = 0
    real = broker._execute_batch

    def once_broken(batch: list[sqlite_broker._Op]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise sqlite3.OperationalError("disk I/O error (injected)")
        real(batch)

    monkeypatch.setattr(broker, "_execute_batch", once_broken)
    with pytest.raises(sqlite3.OperationalError, match="injected"):
        await asyncio.wait_for(queue.send(b"lost"), 10)
    await asyncio.wait_for(queue.send(b"kept"), 10)
    assert (await asyncio.wait_for(queue.depth(), 10))["visible"] == 1
    await broker.close()


async def test_an_older_queue_file_gets_the_reason_column(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, queue TEXT NOT NULL,
            body BLOB NOT NULL, group_id TEXT, dedup_id TEXT, sent_at REAL NOT NULL,
            visible_at REAL NOT NULL, receive_count INTEGER NOT NULL DEFAULT 0, receipt TEXT,
            origin TEXT);
        INSERT INTO messages (queue, body, sent_at, visible_at, receive_count, origin)
            VALUES ('q.dlq', x'00', 1, 1, 5, 'q');
    """)
    old.close()
    broker = SqliteBroker(path)
    queue = broker.queue(QueueSpec("q"))
    [letter] = await queue.dead_letters()
    assert letter.attributes["reason"] == ""
    await queue.send(b"x")
    [msg] = await queue.receive(1)
    await queue.release(msg.receipt, reason="why")
    await broker.close()
    again = SqliteBroker(path)  # opening a current file again changes nothing
    await again.close()


async def test_two_processes_sharing_lanes_each_own_whole_lanes_and_together_all(
        tmp_path: Path) -> None:
    """`share_lanes`: two brokers on one file (two processes) take disjoint shares of the
    lanes (sending numbers); a lane's messages all go to one of them, in order, and nothing
    is left for neither. Without a share a consumer takes every lane again."""
    spec = QueueSpec("s", fifo=True)
    here, there = SqliteBroker(tmp_path / "q.db"), SqliteBroker(tmp_path / "q.db")
    mine, theirs = here.queue(spec), there.queue(spec)
    assert mine.share_lanes(LaneShare(0, 2)) and theirs.share_lanes(LaneShare(1, 2))
    assert not here.queue(QueueSpec("standard")).share_lanes(LaneShare(0, 2))
    lanes = [f"acme/{number}" for number in range(20)]
    await mine.send_batch([OutgoingMessage(f"{lane}/{to}:{n}".encode(), group_id=f"{lane}/{to}")
                           for n in range(3) for lane in lanes for to in ("a", "b")])
    got: dict[str, list[str]] = {"mine": [], "theirs": []}
    for name, queue in (("mine", mine), ("theirs", theirs)):
        while batch := await queue.receive(10):
            got[name] += [m.body.decode() for m in batch]
            await queue.ack([m.receipt for m in batch])
    owned = {name: {body.rpartition("/")[0] for body in bodies} for name, bodies in got.items()}
    assert owned["mine"] and owned["theirs"] and not owned["mine"] & owned["theirs"]
    assert owned["mine"] | owned["theirs"] == set(lanes)
    assert {lane for lane in lanes if LaneShare(0, 2).owns(lane)} == owned["mine"]
    for bodies in got.values():  # each group's messages in the order they were sent
        for group in {body.partition(":")[0] for body in bodies}:
            assert [b for b in bodies if b.startswith(group + ":")] == [
                f"{group}:{n}" for n in range(3)]
    # Taking over: the share dropped, one consumer receives every lane.
    await theirs.send_batch([OutgoingMessage(b"late", group_id=f"{lane}/c") for lane in lanes])
    assert mine.share_lanes(None)
    assert len(await mine.receive(100)) == len(lanes)
    await here.close()
    await there.close()


def test_a_lane_share_is_parsed_from_index_slash_count() -> None:
    assert LaneShare.parse("1/2") == LaneShare(1, 2) and str(LaneShare(1, 2)) == "1/2"
    for bad in ("2/2", "1", "a/b", "-1/2"):
        with pytest.raises(ValueError):
            LaneShare.parse(bad)
