"""The embedded queue: every queue of a broker in one SQLite file (WAL), with SQS semantics.

One writer thread owns the connection. Every operation (sends, receives, acks, releases, peeks)
is queued to it; it drains whatever is pending into ONE `BEGIN IMMEDIATE` transaction, commits
once and then resolves the waiting asyncio futures. Under load that turns thousands of awaited
sends into a few fsyncs per second (group commit), and no two receivers, even in two processes
sharing the file, can claim the same message because claims run under SQLite's write lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from wacloud.adapters.queue.base import (
    OutgoingMessage,
    Queue,
    QueueBroker,
    QueueSpec,
    ReceivedMessage,
)
from wacloud.adapters.queue.doorbell import Doorbell

T = TypeVar("T")

# A long poll re-checks this often even without a wake-up: delayed messages become visible, and
# a doorbell ring from another process sharing the file can be lost.
POLL_INTERVAL = 0.05
# Waiting for another process's write lock: SQLite's own busy handler sleeps 1, 2, 5, 10, 15,
# 20, 25 ms ... between tries, which turned sub-millisecond lock holds by the stage worker into
# 100+ ms stalls of webhook answers. The writer retries at this finer step instead.
LOCK_RETRY_S = 0.0002
LOCK_RETRY_MAX_S = 0.002
CHECKPOINT_INTERVAL_S = 0.5
_SYNC_MODES = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})

# `origin` is NULL for a live message and the source queue name for a dead letter; dedup ids are
# unique only among live messages so that two dead copies of one id can sit in the same DLQ.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    body BLOB NOT NULL,
    group_id TEXT,
    dedup_id TEXT,
    sent_at REAL NOT NULL,
    visible_at REAL NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt TEXT,
    origin TEXT
);
CREATE INDEX IF NOT EXISTS messages_ready ON messages (queue, visible_at);
CREATE INDEX IF NOT EXISTS messages_seq ON messages (queue);
CREATE INDEX IF NOT EXISTS messages_group ON messages (queue, group_id, visible_at)
    WHERE group_id IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS messages_dedup ON messages (queue, dedup_id)
    WHERE dedup_id IS NOT NULL AND origin IS NULL;
"""

_INSERT = ("INSERT OR IGNORE INTO messages (queue, body, group_id, dedup_id, sent_at, visible_at)"
           " VALUES (?, ?, ?, ?, ?, ?)")
_CLAIM = ("UPDATE messages SET receipt = :tok, visible_at = :until,"
          " receive_count = receive_count + 1 WHERE id IN ({pick})"
          " RETURNING id, body, group_id, sent_at, receive_count")
_PICK_STANDARD = ("SELECT id FROM messages WHERE queue = :q AND visible_at <= :now"
                  " ORDER BY visible_at, id LIMIT :n")
# FIFO: a message is eligible when no message of its group is in flight and no earlier one of
# its group is still hidden (delayed or backing off); ordering by id keeps each group in order.
# Walking messages_seq (queue, id) stops at LIMIT instead of sorting the whole visible backlog;
# the cost that remains is one probe per message queued behind an in-flight group.
_PICK_FIFO = ("SELECT m.id FROM messages m INDEXED BY messages_seq"
              " WHERE m.queue = :q AND m.visible_at <= :now"
              " AND (m.group_id IS NULL OR NOT EXISTS (SELECT 1 FROM messages p"
              " WHERE p.queue = m.queue AND p.group_id = m.group_id AND p.visible_at > :now"
              " AND p.id != m.id AND (p.receipt IS NOT NULL OR p.id < m.id)))"
              " ORDER BY m.id LIMIT :n")
_COLUMNS = "id, body, group_id, sent_at, receive_count, queue, origin, receipt, visible_at"


@dataclass(slots=True)
class _Op:
    fn: Callable[[sqlite3.Connection], Any]
    fut: asyncio.Future[Any]
    wake: str | None  # queue whose long-pollers to wake once this op is committed


def _settle(items: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for fut, result, exc in items:
        if fut.done():  # the awaiting task was cancelled
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _parse_receipt(receipt: str) -> tuple[int, str] | None:
    row_id, _, token = receipt.partition(":")
    return (int(row_id), token) if row_id.isdigit() and token else None


def _message(row: sqlite3.Row | tuple[Any, ...], receipt: str = "",
             attributes: dict[str, str] | None = None) -> ReceivedMessage:
    return ReceivedMessage(body=bytes(row[1]), receipt=receipt, receive_count=int(row[4]),
                           message_id=str(row[0]), group_id=row[2], sent_at=float(row[3]),
                           attributes=attributes or {})


class SqliteBroker(QueueBroker):
    """All queues in one SQLite file; safe to share between processes."""

    def __init__(self, path: Path, *, synchronous: str = "FULL",
                 busy_timeout: float = 30.0) -> None:
        if synchronous.upper() not in _SYNC_MODES:
            raise ValueError(f"synchronous must be one of {sorted(_SYNC_MODES)}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.busy_timeout = busy_timeout
        self.commits = 0  # committed transactions: lets tests check that group commit batches
        self.operations = 0
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves so that the write lock is
        # taken up front instead of failing on upgrade from a read lock.
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                     timeout=busy_timeout)
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._waiters_lock = threading.Lock()
        self._readers = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._doorbell = Doorbell(self._wake_local)
        self._conn.execute("BEGIN IMMEDIATE")
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                self._conn.execute(statement)
        self._doorbell.register(self._conn)
        self._conn.execute("COMMIT")
        # Within a write transaction nothing else waits for a lock in WAL mode; taking the
        # lock is retried by `_lock` (autocheckpoints are passive and never wait).
        self._conn.execute("PRAGMA busy_timeout = 0")
        self._pending: list[_Op] = []
        self._cond = threading.Condition()
        self._closing = False
        # Checkpoints (copying the WAL back into the file, with an fsync) run on a thread of
        # their own: inside a COMMIT they stalled every waiting webhook for tens of ms.
        self._conn.execute("PRAGMA wal_autocheckpoint = 0")
        self._checkpoint_stop = threading.Event()
        threading.Thread(target=self._checkpoint, name=f"sqlite-queue-checkpoint:{self.path.name}",
                         daemon=True).start()
        self._thread = threading.Thread(target=self._run, name=f"sqlite-queue:{self.path.name}",
                                        daemon=True)
        self._thread.start()

    @property
    def closed(self) -> bool:
        return self._closing

    def queue(self, spec: QueueSpec) -> SqliteQueue:
        return SqliteQueue(self, spec)

    async def close(self) -> None:
        """Stop accepting work, let the writer commit everything pending, then close."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        await asyncio.to_thread(self._thread.join)
        self._checkpoint_stop.set()
        for conn in self._reader_conns:
            conn.close()

    async def call(self, fn: Callable[[sqlite3.Connection], T], wake: str | None = None) -> T:
        """Run `fn(connection)` inside the writer's next transaction and return once committed."""
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        with self._cond:
            if self._closing:
                raise RuntimeError("SqliteBroker is closed")
            self._pending.append(_Op(fn, fut, wake))
            self._cond.notify()
        return await fut

    def has_visible(self, name: str) -> bool:
        """Whether `name` has a message visible now, read without the write lock: an empty
        poll then costs a read, not a write transaction that other processes wait for."""
        conn = getattr(self._readers, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=self.busy_timeout)
            self._readers.conn = conn
            self._reader_conns.append(conn)
        row = conn.execute("SELECT 1 FROM messages WHERE queue = ? AND visible_at <= ? LIMIT 1",
                           (name, time.time())).fetchone()
        return row is not None

    def add_waiter(self, name: str) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._waiters_lock:
            self._waiters.setdefault(name, set()).add(fut)
        return fut

    def drop_waiter(self, name: str, fut: asyncio.Future[None]) -> None:
        with self._waiters_lock:
            self._waiters.get(name, set()).discard(fut)

    # -- writer thread ------------------------------------------------------------------------

    def _checkpoint(self) -> None:
        """PASSIVE checkpoints every CHECKPOINT_INTERVAL_S: they never block writers, and a
        second process checkpointing at the same moment just makes one of them skip a turn."""
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=0)
        try:
            while not self._checkpoint_stop.wait(CHECKPOINT_INTERVAL_S):
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        finally:
            conn.close()

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._pending and not self._closing:
                        self._cond.wait()
                    if not self._pending:
                        return
                    batch, self._pending = self._pending, []
                self._execute(batch)
        finally:
            with contextlib.suppress(sqlite3.Error):
                self._doorbell.unregister(self._conn)
            self._conn.close()
            self._doorbell.close()

    def _execute(self, batch: list[_Op]) -> None:
        conn = self._conn
        try:
            self._lock()
        except BaseException as exc:  # locked for longer than busy_timeout, I/O error, ...
            self._resolve([(op, None, exc) for op in batch])
            return
        try:
            results: list[tuple[_Op, Any, BaseException | None]] = [
                (op, op.fn(conn), None) for op in batch]
        except BaseException as exc:
            conn.execute("ROLLBACK")
            if len(batch) == 1:
                self._resolve([(batch[0], None, exc)])
            else:  # one bad operation must not fail its neighbours: redo each on its own
                for op in batch:
                    self._execute([op])
            return
        try:
            conn.execute("COMMIT")
            self.commits += 1
            self.operations += len(batch)
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            results = [(op, None, exc) for op in batch]
        self._resolve(results)

    def _lock(self) -> None:
        """BEGIN IMMEDIATE, retrying briefly and often while another process holds the lock."""
        deadline = time.monotonic() + self.busy_timeout
        pause = LOCK_RETRY_S
        while True:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, LOCK_RETRY_MAX_S)

    def _resolve(self, results: list[tuple[_Op, Any, BaseException | None]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        woken: set[str] = set()
        for op, result, exc in results:
            by_loop.setdefault(op.fut.get_loop(), []).append((op.fut, result, exc))
            if op.wake is not None and exc is None:
                woken.add(op.wake)
        if woken:
            self._doorbell.refresh_peers(self._conn)
            self._doorbell.ring(woken, self._conn)
        self._wake_local(woken, by_loop)

    def _wake_local(self, names: set[str],
                    by_loop: dict[asyncio.AbstractEventLoop, list[Any]] | None = None) -> None:
        """Settle futures and wake this process's long polls on `names` (also a doorbell's
        listener thread calls this when another process rings)."""
        by_loop = {} if by_loop is None else by_loop
        if names:
            with self._waiters_lock:
                for name in names:
                    for fut in self._waiters.pop(name, ()):
                        by_loop.setdefault(fut.get_loop(), []).append((fut, None, None))
        # One thread-safe callback per event loop, not per future: each one writes the self-pipe.
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is waiting
                loop.call_soon_threadsafe(_settle, items)


class SqliteQueue(Queue):
    def __init__(self, broker: SqliteBroker, spec: QueueSpec) -> None:
        self.broker = broker
        self.spec = spec

    async def send(self, body: bytes, *, group_id: str | None = None,
                   dedup_id: str | None = None, delay: float = 0.0) -> None:
        await self.send_batch([OutgoingMessage(body, group_id, dedup_id, delay)])

    async def send_batch(self, messages: list[OutgoingMessage]) -> None:
        if not messages:
            return
        name = self.spec.name

        def insert(conn: sqlite3.Connection) -> None:
            now = time.time()
            conn.executemany(_INSERT, [(name, m.body, m.group_id, m.dedup_id, now,
                                        now + max(m.delay, 0.0)) for m in messages])

        await self.broker.call(insert, wake=name)

    async def receive(self, max_messages: int = 10, *, visibility_timeout: float | None = None,
                      wait_seconds: float = 0.0) -> list[ReceivedMessage]:
        if max_messages <= 0:
            return []
        timeout = self.spec.visibility_timeout if visibility_timeout is None else visibility_timeout
        claim = partial(self._claim, max_messages, timeout)
        deadline = time.monotonic() + wait_seconds
        while True:
            # Registered before the claim so that a send committed in between still wakes us.
            waiter = self.broker.add_waiter(self.spec.name) if wait_seconds > 0 else None
            try:
                got = (await self.broker.call(claim)
                       if self.broker.has_visible(self.spec.name) else [])
                remaining = deadline - time.monotonic()
                if got or remaining <= 0 or waiter is None or self.broker.closed:
                    return got
                await asyncio.wait({waiter}, timeout=min(POLL_INTERVAL, remaining))
            finally:
                if waiter is not None:
                    self.broker.drop_waiter(self.spec.name, waiter)

    def _claim(self, limit: int, timeout: float, conn: sqlite3.Connection) -> list[ReceivedMessage]:
        spec = self.spec
        sql = _CLAIM.format(pick=_PICK_FIFO if spec.fifo else _PICK_STANDARD)
        out: list[ReceivedMessage] = []
        while len(out) < limit:
            now = time.time()
            token = secrets.token_hex(8)
            rows = sorted(conn.execute(sql, {"tok": token, "until": now + timeout, "q": spec.name,
                                             "now": now, "n": limit - len(out)}).fetchall())
            dead = [row[0] for row in rows if row[4] > spec.max_receives]
            out.extend(_message(row, f"{row[0]}:{token}") for row in rows
                       if row[4] <= spec.max_receives)
            if not dead:
                break
            # Claimed one time too many: undo this receive's count and park it in the DLQ.
            conn.executemany(
                "UPDATE messages SET queue = ?, origin = queue, receipt = NULL, visible_at = ?,"
                " receive_count = receive_count - 1 WHERE id = ?",
                [(spec.dead_letter_name, now, row_id) for row_id in dead])
        return out

    async def ack(self, receipts: list[str]) -> None:
        keys = [key for key in map(_parse_receipt, receipts) if key is not None]
        if keys:
            def delete(conn: sqlite3.Connection) -> None:
                # Return nothing: a cursor handed back to the loop thread and freed there
                # raced the writer thread ("bad parameter or other API misuse").
                conn.executemany("DELETE FROM messages WHERE id = ? AND receipt = ?", keys)

            await self.broker.call(delete)

    async def release(self, receipt: str, delay: float = 0.0) -> None:
        key = _parse_receipt(receipt)
        if key is None:
            return

        def release(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE messages SET receipt = NULL, visible_at = ?"
                         " WHERE id = ? AND receipt = ?", (time.time() + max(delay, 0.0), *key))

        await self.broker.call(release, wake=self.spec.name if delay <= 0 else None)

    async def depth(self) -> dict[str, int]:
        def count(conn: sqlite3.Connection) -> dict[str, int]:
            visible, in_flight, delayed = conn.execute(
                "SELECT COALESCE(SUM(visible_at <= ?1), 0),"
                " COALESCE(SUM(visible_at > ?1 AND receipt IS NOT NULL), 0),"
                " COALESCE(SUM(visible_at > ?1 AND receipt IS NULL), 0)"
                " FROM messages WHERE queue = ?2", (time.time(), self.spec.name)).fetchone()
            (dead,) = conn.execute("SELECT COUNT(*) FROM messages WHERE queue = ?",
                                   (self.spec.dead_letter_name,)).fetchone()
            return {"visible": visible, "in_flight": in_flight, "delayed": delayed, "dead": dead}

        return await self.broker.call(count)

    async def dead_letters(self, limit: int = 100) -> list[ReceivedMessage]:
        def peek(conn: sqlite3.Connection) -> list[ReceivedMessage]:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM messages WHERE queue = ?"
                                " ORDER BY id LIMIT ?", (self.spec.dead_letter_name, limit))
            return [_message(row, attributes={"source_queue": row[6] or ""}) for row in rows]

        return await self.broker.call(peek)

    async def redrive(self, message_ids: list[str] | None = None) -> int:
        # The dedup id is dropped: a redrive is a deliberate re-injection and must neither be
        # swallowed by, nor swallow, a live message carrying the same id.
        sql = ("UPDATE messages SET queue = ?, origin = NULL, dedup_id = NULL, receipt = NULL,"
               " receive_count = 0, visible_at = ? WHERE queue = ?")
        ids = [int(i) for i in message_ids or [] if i.isdigit()]

        def move(conn: sqlite3.Connection) -> int:
            args = (self.spec.name, time.time(), self.spec.dead_letter_name)
            if message_ids is None:
                return conn.execute(sql, args).rowcount
            return sum(conn.execute(sql + " AND id = ?", (*args, i)).rowcount for i in ids)

        if message_ids is not None and not ids:
            return 0
        return await self.broker.call(move, wake=self.spec.name)

    async def iter_all(self, limit: int = 1000) -> list[ReceivedMessage]:
        """Every message of this queue and its DLQ in any state (for erasure); `attributes`
        carries `queue` and `state` (visible, in_flight, delayed, dead)."""

        def scan(conn: sqlite3.Connection) -> list[ReceivedMessage]:
            now = time.time()
            rows = conn.execute(f"SELECT {_COLUMNS} FROM messages WHERE queue IN (?, ?)"
                                " ORDER BY id LIMIT ?",
                                (self.spec.name, self.spec.dead_letter_name, limit))
            out = []
            for row in rows:
                state = ("dead" if row[5] != self.spec.name else "visible" if row[8] <= now
                         else "in_flight" if row[7] is not None else "delayed")
                out.append(_message(row, attributes={"queue": row[5], "state": state}))
            return out

        return await self.broker.call(scan)

    async def delete(self, message_ids: list[str]) -> int:
        ids = [(int(i), self.spec.name, self.spec.dead_letter_name)
               for i in message_ids if i.isdigit()]
        if not ids:
            return 0

        def delete(conn: sqlite3.Connection) -> int:
            return sum(conn.execute("DELETE FROM messages WHERE id = ? AND queue IN (?, ?)",
                                    row).rowcount for row in ids)

        return await self.broker.call(delete)
