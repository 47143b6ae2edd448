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
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlsplit

from wacloud.adapters.batching import (
    BatchingThread,
    Outcome,
    power_of_two_chunks,
    settle_threadsafe,
)
from wacloud.adapters.queue.base import (
    QueueBroker,
    QueueSpec,
    lane_of,
)
from wacloud.adapters.queue.sqlite.doorbell import Doorbell
from wacloud.adapters.queue.sqlite.queue import SqliteQueue

if TYPE_CHECKING:
    from wacloud.adapters.media.base import MediaStore
    from wacloud.settings import Settings

T = TypeVar("T")
log = logging.getLogger(__name__)

# Waiting for another process's write lock: SQLite's own busy handler sleeps 1, 2, 5, 10, 15,
# 20, 25 ms ... between tries, which turned sub-millisecond lock holds by the stage worker into
# 100+ ms stalls of webhook answers. The writer retries at this finer step instead.
LOCK_RETRY_S = 0.0002
LOCK_RETRY_MAX_S = 0.002
CHECKPOINT_INTERVAL_S = 0.25
LINGER_S = 0.001  # see BatchingThread: at most this much added to a commit's wait
# Under steady writes a PASSIVE checkpoint never catches up with the end of the WAL, so the
# next writer never starts it over and the file grew by ~100 MB/s under bench/ingest (each
# commit then extended the file: an fsync with a metadata journal commit). Past this size a
# RESTART checkpoint, which briefly holds writers off, lets the log start over, and
# journal_size_limit cuts the file back to this size.
WAL_RESTART_BYTES = 16 * 1024 * 1024
RESTART_WAIT_S = 0.02  # the longest a RESTART waits for a writer or reader to finish
_SYNC_MODES = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})

# `reason`: why the message's last handling failed (kept into the DLQ, shown by `wacloud dlq`).
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
    origin TEXT,
    head INTEGER NOT NULL DEFAULT 1,
    lane TEXT,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS messages_ready ON messages (queue, visible_at);
CREATE INDEX IF NOT EXISTS messages_seq ON messages (queue);
CREATE UNIQUE INDEX IF NOT EXISTS messages_dedup ON messages (queue, dedup_id)
    WHERE dedup_id IS NOT NULL AND origin IS NULL;
"""

# FIFO queues keep, per group, which message is its head (the oldest of the group in that
# queue): only heads can be claimed, so a receive walks the heads that are visible now, per
# lane, and never the messages queued behind an in-flight or backing-off head. `lane` is NULL
# for messages of standard queues (they pay for none of this). Triggers keep `head` right
# whatever moves a message: an ack or erasure, a dead-lettering or a redrive; a send of FIFO
# messages marks the ones that joined a group as followers (`_MARK_FOLLOWERS`: no insert trigger,
# which standard queues' sends would run too, row by row).
_FIFO_SCHEMA = """
DROP INDEX IF EXISTS messages_group;
CREATE INDEX IF NOT EXISTS messages_group_seq ON messages (queue, group_id, id)
    WHERE group_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_heads ON messages (queue, lane, visible_at, id)
    WHERE head = 1 AND lane IS NOT NULL;
DROP TRIGGER IF EXISTS messages_fifo_insert;
CREATE TRIGGER IF NOT EXISTS messages_fifo_delete AFTER DELETE ON messages
WHEN OLD.head = 1 AND OLD.group_id IS NOT NULL AND OLD.lane IS NOT NULL BEGIN
    UPDATE messages SET head = 1 WHERE id = (SELECT MIN(id) FROM messages
        WHERE queue = OLD.queue AND group_id = OLD.group_id);
END;
CREATE TRIGGER IF NOT EXISTS messages_fifo_move AFTER UPDATE OF queue ON messages
WHEN OLD.group_id IS NOT NULL AND OLD.lane IS NOT NULL AND OLD.queue != NEW.queue BEGIN
    UPDATE messages SET head = 1 WHERE OLD.head = 1 AND id = (SELECT MIN(id) FROM messages
        WHERE queue = OLD.queue AND group_id = OLD.group_id);
    UPDATE messages SET head = 0 WHERE queue = NEW.queue AND group_id = NEW.group_id
        AND id > NEW.id AND head = 1;
    UPDATE messages SET head = NOT EXISTS (SELECT 1 FROM messages p WHERE p.queue = NEW.queue
        AND p.group_id = NEW.group_id AND p.id < NEW.id) WHERE id = NEW.id;
END;
"""


def _statements(script: str) -> list[str]:
    """`script` cut into whole statements (trigger bodies hold semicolons of their own); not
    `executescript`, which would commit the transaction the schema is written in."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return statements


def _add_fifo_columns(conn: sqlite3.Connection) -> None:
    """Files written before lanes and heads existed: add them and work them out once."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(messages)")}
    if "head" in columns:
        return
    conn.execute("ALTER TABLE messages ADD COLUMN head INTEGER NOT NULL DEFAULT 1")
    conn.execute("ALTER TABLE messages ADD COLUMN lane TEXT")
    # Which queues are FIFO is not written down: each FIFO queue adopts its messages without a
    # lane at its first receive (`SqliteQueue._adopt`).


# Rows of the `messages` table as `send` writes them: queue, body, group_id, dedup_id, sent_at,
# visible_at, lane (None outside FIFO queues).
Row = tuple[str, bytes, str | None, str | None, float, float, str | None]
_INSERT_COLUMNS = ("INSERT OR IGNORE INTO messages"
                   " (queue, body, group_id, dedup_id, sent_at, visible_at, lane)")


def _insert_sql(rows: int) -> str:
    # Sends waiting in one batch are written by as few multi-row INSERTs as possible: the writer
    # thread gives up the GIL at each statement step, and with one step per row it waited for
    # the busy event loop thread once per row, holding the write lock other processes wait for.
    return f"{_INSERT_COLUMNS} VALUES {','.join(['(?,?,?,?,?,?,?)'] * rows)}"


@dataclass(slots=True)
class _Op:
    fn: Callable[[sqlite3.Connection], Any] | None  # None: insert `rows`
    fut: asyncio.Future[Any]
    wake: str | None  # queue whose long-pollers to wake once this op is committed
    durable: bool = True  # must be on disk when its caller hears it committed (see `call`)
    rows: list[Row] | None = None
    # Run after the commit, outside the write lock, on a read connection: (conn, fn's result)
    # -> the caller's result.
    after: Callable[[sqlite3.Connection, Any], Any] | None = None


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
        self._synchronous = synchronous.upper()
        # In WAL mode only FULL and EXTRA sync at commit; NORMAL is the same minus that sync.
        self._switch_sync = self._synchronous in ("FULL", "EXTRA")
        self._syncing = True  # whether the connection is in `_synchronous` (else NORMAL)
        self._conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._waiters_lock = threading.Lock()
        self._readers = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._doorbell = Doorbell(self._wake_local)
        self._conn.execute("BEGIN IMMEDIATE")
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                self._conn.execute(statement)
        _add_missing_columns(self._conn)
        _add_fifo_columns(self._conn)
        self._conn.create_function("wacloud_lane", 1, lane_of, deterministic=True)
        for statement in _statements(_FIFO_SCHEMA):
            self._conn.execute(statement)
        self._doorbell.register(self._conn)
        self._conn.execute("COMMIT")
        # Within a write transaction nothing else waits for a lock in WAL mode; taking the
        # lock is retried by `_lock` (autocheckpoints are passive and never wait).
        self._conn.execute("PRAGMA busy_timeout = 0")
        # Checkpoints (copying the WAL back into the file, with an fsync) run on a thread of
        # their own: inside a COMMIT they stalled every waiting webhook for tens of ms.
        self._conn.execute("PRAGMA wal_autocheckpoint = 0")
        self._conn.execute(f"PRAGMA journal_size_limit = {WAL_RESTART_BYTES}")
        # Deleted bodies are zeroed only on pages written anyway: with SQLite's secure-delete
        # default of some builds (Debian's) every ack also wrote out the pages it emptied.
        # Erasures (`SqliteQueue.delete`) switch the full scrub on for themselves.
        self._conn.execute("PRAGMA secure_delete = FAST")
        self._checkpoint_stop = threading.Event()
        threading.Thread(target=self._checkpoint, name=f"sqlite-queue-checkpoint:{self.path.name}",
                         daemon=True).start()
        self._writer: BatchingThread[_Op] = BatchingThread(
            self._execute, f"sqlite-queue:{self.path.name}", on_exit=self._writer_exit,
            linger=LINGER_S)

    @property
    def closed(self) -> bool:
        return self._writer.closing

    def queue(self, spec: QueueSpec) -> SqliteQueue:
        return SqliteQueue(self, spec)

    async def close(self) -> None:
        """Stop accepting work, let the writer commit everything pending, then close."""
        await asyncio.to_thread(self._writer.close)
        self._checkpoint_stop.set()
        for conn in self._reader_conns:
            conn.close()

    async def call(self, fn: Callable[[sqlite3.Connection], Any], wake: str | None = None, *,
                   durable: bool = True,
                   after: Callable[[sqlite3.Connection, Any], T] | None = None) -> T:
        """Run `fn(connection)` inside the writer's next transaction and return its result once
        committed (or `after(read_connection, result)`'s, run after the commit).

        `durable=False` is for operations whose loss in a power cut only means a redelivery
        (claims, acks, visibility changes, reads): a transaction made only of those commits
        without an fsync. Nothing can depend on them being on disk: the WAL is replayed in
        order, so the next synced commit, ours or another process's, makes them durable too,
        and a crash that loses them loses everything written after them."""
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._writer.submit(_Op(fn, fut, wake, durable, after=after), "SqliteBroker is closed")
        return await fut

    async def insert(self, rows: list[Row], wake: str) -> None:
        """Write `rows` in the writer's next transaction (batched with other inserts) and
        return once committed."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._writer.submit(_Op(None, fut, wake, rows=rows), "SqliteBroker is closed")
        await fut

    def has_visible(self, name: str, longer_than: float = 0.0) -> bool:
        """Whether `name` has a message visible now (for more than `longer_than` seconds), read
        without the write lock: an empty poll then costs a read, not a write transaction that
        other processes wait for."""
        row = self._reader().execute(
            "SELECT 1 FROM messages WHERE queue = ? AND visible_at <= ? LIMIT 1",
            (name, time.time() - longer_than)).fetchone()
        return row is not None

    def read_one(self, sql: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
        """One row of a read-only query on this thread's read connection (no write lock)."""
        row: tuple[Any, ...] = self._reader().execute(sql, args).fetchone()
        return row

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._readers, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=self.busy_timeout)
            self._readers.conn = conn
            self._reader_conns.append(conn)
        return conn

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
        second process checkpointing at the same moment just makes one of them skip a turn.
        When the WAL has outgrown WAL_RESTART_BYTES, a RESTART after it (see there)."""
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=RESTART_WAIT_S)
        conn.execute(f"PRAGMA journal_size_limit = {WAL_RESTART_BYTES}")
        wal = self.path.with_name(self.path.name + "-wal")
        try:
            while not self._checkpoint_stop.wait(CHECKPOINT_INTERVAL_S):
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    if wal.exists() and wal.stat().st_size > WAL_RESTART_BYTES:
                        # Busy (a reader or writer outlasted RESTART_WAIT_S): next turn.
                        conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
        finally:
            conn.close()

    def _writer_exit(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._doorbell.unregister(self._conn)
        self._conn.close()
        self._doorbell.close()

    def _execute(self, batch: list[_Op]) -> None:
        """Run one batch; whatever goes wrong fails that batch's callers, never the thread:
        a dead writer would leave every later send (every webhook) waiting forever."""
        try:
            self._execute_batch(batch)
        except BaseException as exc:  # e.g. ROLLBACK failing after an op ended the transaction
            log.exception("queue writer: a batch of %d failed", len(batch))
            with contextlib.suppress(sqlite3.Error):
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
            # Futures already settled are skipped where they are applied (see `_apply`).
            settle_threadsafe([(op.fut, None, exc) for op in batch])

    def _execute_batch(self, batch: list[_Op]) -> None:
        conn = self._conn
        syncing = any(op.durable for op in batch)
        if syncing != self._syncing and self._switch_sync:
            # Outside a transaction the mode applies to the next commit.
            conn.execute(f"PRAGMA synchronous = {self._synchronous if syncing else 'NORMAL'}")
            self._syncing = syncing
        try:
            self._lock()
        except BaseException as exc:  # locked for longer than busy_timeout, I/O error, ...
            self._resolve([(op, None, exc) for op in batch])
            return
        try:
            results = self._run_ops(conn, batch)
        except BaseException as exc:
            if conn.in_transaction:  # an op may have ended it (or SQLite, on some errors)
                conn.execute("ROLLBACK")
            if len(batch) == 1:
                self._resolve([(batch[0], None, exc)])
            else:  # one bad operation must not fail its neighbours: redo each on its own
                for op in batch:
                    self._execute_batch([op])
            return
        try:
            conn.execute("COMMIT")
            self.commits += 1
            self.operations += len(batch)
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            results = [(op, None, exc) for op in batch]
        self._resolve([self._after(item) for item in results])

    def _after(self, item: tuple[_Op, Any, BaseException | None],
               ) -> tuple[_Op, Any, BaseException | None]:
        op, result, exc = item
        if op.after is None or exc is not None:
            return item
        try:
            return op, op.after(self._reader(), result), None
        except Exception as error:
            return op, None, error

    @staticmethod
    def _run_ops(conn: sqlite3.Connection,
                 batch: list[_Op]) -> list[tuple[_Op, Any, BaseException | None]]:
        """Every op in order, each run of consecutive inserts as multi-row INSERTs."""
        results: list[tuple[_Op, Any, BaseException | None]] = []
        rows: list[Row] = []
        for op in batch:
            if op.fn is None:
                rows.extend(op.rows or ())
                results.append((op, None, None))
                continue
            if rows:
                _insert_rows(conn, rows)
                rows = []
            results.append((op, op.fn(conn), None))
        if rows:
            _insert_rows(conn, rows)
        return results

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
        outcomes: list[Outcome] = [(op.fut, result, exc) for op, result, exc in results]
        woken = {op.wake for op, _, exc in results if op.wake is not None and exc is None}
        if woken:
            try:
                self._doorbell.refresh_peers(self._conn)
                self._doorbell.ring(woken, self._conn)
            except Exception:  # a lost ring only delays other processes' polls (POLL_INTERVAL)
                log.warning("queue writer: could not ring other processes", exc_info=True)
        self._wake_local(woken, outcomes)

    def _wake_local(self, names: set[str], outcomes: list[Outcome] | None = None) -> None:
        """Settle futures and wake this process's long polls on `names` (also a doorbell's
        listener thread calls this when another process rings)."""
        outcomes = [] if outcomes is None else outcomes
        if names:
            with self._waiters_lock:
                for name in names:
                    outcomes.extend((fut, None, None) for fut in self._waiters.pop(name, ()))
        settle_threadsafe(outcomes)


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """Bring a queue file written by an older version up to the current table (under the
    write lock, so two processes opening it at once do not both add a column)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(messages)")}
    if "reason" not in columns:
        conn.execute("ALTER TABLE messages ADD COLUMN reason TEXT")


_MARK_FOLLOWERS = ("UPDATE messages SET head = 0 WHERE id > ? AND lane IS NOT NULL"
                   " AND group_id IS NOT NULL AND EXISTS (SELECT 1 FROM messages p"
                   " WHERE p.queue = messages.queue AND p.group_id = messages.group_id"
                   " AND p.id < messages.id)")


def _insert_rows(conn: sqlite3.Connection, rows: list[Row]) -> None:
    fifo = any(row[6] is not None for row in rows)
    if fifo:  # the writer holds the lock: every id above this one is a row inserted here
        (before,) = conn.execute("SELECT COALESCE(MAX(id), 0) FROM messages").fetchone()
    for chunk in power_of_two_chunks(rows):
        conn.execute(_insert_sql(len(chunk)), [value for row in chunk for value in row])
    if fifo:
        conn.execute(_MARK_FOLLOWERS, (before,))


def open_broker(url: str, settings: Settings, media_store: MediaStore | None = None
                ) -> SqliteBroker:
    """`sqlite:///PATH` (absolute) or `sqlite:PATH`; every body fits, so no media store."""
    parts = urlsplit(url)
    return SqliteBroker(Path(unquote(parts.netloc + parts.path)),
                        synchronous=settings.queue_synchronous)
