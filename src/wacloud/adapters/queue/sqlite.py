"""The embedded queue: every queue of a broker in one SQLite file (WAL), with SQS semantics.

This module is the broker: the file, its writer thread and the wake-ups; `sqlite_queue.py`
holds the queue operations. One writer thread owns the connection. Every operation (sends,
receives, acks, releases, peeks) is queued to it; it drains whatever is pending into ONE
`BEGIN IMMEDIATE` transaction, commits once and then resolves the waiting asyncio futures.
Under load that turns thousands of awaited sends into a few fsyncs per second (group commit),
and no two receivers, even in two processes sharing the file, can claim the same message
because claims run under SQLite's write lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from wacloud.adapters.queue.base import (
    QueueBroker,
    QueueSpec,
)
from wacloud.adapters.queue.doorbell import Doorbell
from wacloud.adapters.queue.sqlite_queue import SqliteQueue

T = TypeVar("T")

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
