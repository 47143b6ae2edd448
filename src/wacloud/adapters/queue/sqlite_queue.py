"""One queue of the embedded SQLite broker: SQS semantics over the shared `messages` table.

Every operation is a function run by the broker's writer thread inside its next transaction
(see `sqlite.py`); receives long-poll with the broker's wake-ups (in-process and doorbells).
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import time
from functools import partial
from typing import TYPE_CHECKING, Any

from wacloud.adapters.batching import power_of_two_chunks
from wacloud.adapters.queue.base import (
    OutgoingMessage,
    Queue,
    QueueSpec,
    ReceivedMessage,
)

if TYPE_CHECKING:
    from wacloud.adapters.queue.sqlite import SqliteBroker

# A long poll re-checks this often even without a wake-up: delayed messages become visible, and
# a doorbell ring from another process sharing the file can be lost.
POLL_INTERVAL = 0.05

# A receive is two statements under the write lock, each one step: dead-letter the messages at
# the head that were received `max_receives` times already, then claim the rest. The claimed
# rows are read after the commit, outside the lock (see `_read_claimed`): every row fetched
# inside the transaction was one more hand-over of the GIL with the lock held.
_SWEEP = ("UPDATE messages SET queue = :dlq, origin = queue, receipt = NULL, visible_at = :now"
          " WHERE id IN ({pick}) AND receive_count >= :max")
_CLAIM = ("UPDATE messages SET receipt = :tok, visible_at = :until,"
          " receive_count = receive_count + 1 WHERE id IN ({pick})")
_CLAIMED = ("SELECT id, body, group_id, sent_at, receive_count FROM messages"
            " WHERE queue = ? AND visible_at = ? AND receipt = ? ORDER BY id")
_PICK_STANDARD = ("SELECT id FROM messages WHERE queue = :q AND visible_at <= :now{live}"
                  " ORDER BY visible_at, id LIMIT :n")
# FIFO: a message is eligible when no message of its group is in flight and no earlier one of
# its group is still hidden (delayed or backing off); ordering by id keeps each group in order.
# Walking messages_seq (queue, id) stops at LIMIT instead of sorting the whole visible backlog;
# the cost that remains is one probe per message queued behind an in-flight group.
_PICK_FIFO = ("SELECT m.id FROM messages m INDEXED BY messages_seq"
              " WHERE m.queue = :q AND m.visible_at <= :now{live}"
              " AND (m.group_id IS NULL OR NOT EXISTS (SELECT 1 FROM messages p"
              " WHERE p.queue = m.queue AND p.group_id = m.group_id AND p.visible_at > :now"
              " AND p.id != m.id AND (p.receipt IS NOT NULL OR p.id < m.id)))"
              " ORDER BY m.id LIMIT :n")
_LIVE = " AND receive_count < :max"
_DELETE = "DELETE FROM messages WHERE receipt = ? AND id IN ({ids})"
_COLUMNS = ("id, body, group_id, sent_at, receive_count, queue, origin, receipt, visible_at,"
            " reason")
# Messages are dead-lettered with this much of the reason (an exception's text can be long).
REASON_MAX = 500


def _parse_receipt(receipt: str) -> tuple[int, str] | None:
    row_id, _, token = receipt.partition(":")
    return (int(row_id), token) if row_id.isdigit() and token else None


def _message(row: sqlite3.Row | tuple[Any, ...], receipt: str = "",
             attributes: dict[str, str] | None = None) -> ReceivedMessage:
    return ReceivedMessage(body=bytes(row[1]), receipt=receipt, receive_count=int(row[4]),
                           message_id=str(row[0]), group_id=row[2], sent_at=float(row[3]),
                           attributes=attributes or {})


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
        now = time.time()
        await self.broker.insert([(name, m.body, m.group_id, m.dedup_id, now,
                                   now + max(m.delay, 0.0)) for m in messages], wake=name)

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
                got = (await self.broker.call(claim, durable=False, after=self._read_claimed)
                       if self.broker.has_visible(self.spec.name) else [])
                remaining = deadline - time.monotonic()
                if got or remaining <= 0 or waiter is None or self.broker.closed:
                    return got
                await asyncio.wait({waiter}, timeout=min(POLL_INTERVAL, remaining))
            finally:
                if waiter is not None:
                    self.broker.drop_waiter(self.spec.name, waiter)

    def _claim(self, limit: int, timeout: float,
               conn: sqlite3.Connection) -> tuple[float, str] | None:
        """Claim up to `limit` messages; (visible_at, token) to find them by, None if none."""
        spec = self.spec
        pick = _PICK_FIFO if spec.fifo else _PICK_STANDARD
        now = time.time()
        args = {"q": spec.name, "now": now, "n": limit, "max": spec.max_receives}
        conn.execute(_SWEEP.format(pick=pick.format(live="")),
                     {**args, "dlq": spec.dead_letter_name})
        until, token = now + timeout, secrets.token_hex(8)
        claimed = conn.execute(_CLAIM.format(pick=pick.format(live=_LIVE)),
                               {**args, "tok": token, "until": until}).rowcount
        return (until, token) if claimed else None

    def _read_claimed(self, conn: sqlite3.Connection,
                      claim: tuple[float, str] | None) -> list[ReceivedMessage]:
        if claim is None:
            return []
        until, token = claim
        rows = conn.execute(_CLAIMED, (self.spec.name, until, token)).fetchall()
        return [_message(row, f"{row[0]}:{token}") for row in rows]

    async def ack(self, receipts: list[str]) -> None:
        by_token: dict[str, list[int]] = {}
        for key in map(_parse_receipt, receipts):
            if key is not None:
                by_token.setdefault(key[1], []).append(key[0])
        if by_token:
            def delete(conn: sqlite3.Connection) -> None:
                # One statement per claim (its messages share a token), not one per message.
                # Return nothing: a cursor handed back to the loop thread and freed there
                # raced the writer thread ("bad parameter or other API misuse").
                for token, ids in by_token.items():
                    for chunk in power_of_two_chunks(ids):
                        conn.execute(_DELETE.format(ids=",".join("?" * len(chunk))),
                                     (token, *chunk))

            await self.broker.call(delete, durable=False)

    async def release(self, receipt: str, delay: float = 0.0, *, reason: str | None = None,
                      count: bool = True) -> None:
        key = _parse_receipt(receipt)
        if key is None:
            return
        # count=False hands the receive back: a failure that is not the message's (its
        # database is down) must not bring it nearer the dead-letter queue.
        counted = "receive_count" if count else "MAX(receive_count - 1, 0)"
        kept = None if reason is None else reason[:REASON_MAX]

        def release(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE messages SET receipt = NULL, visible_at = ?,"
                         f" receive_count = {counted}, reason = COALESCE(?, reason)"
                         " WHERE id = ? AND receipt = ?",
                         (time.time() + max(delay, 0.0), kept, *key))

        await self.broker.call(release, wake=self.spec.name if delay <= 0 else None,
                               durable=False)

    async def dead_letter(self, receipt: str, reason: str) -> None:
        key = _parse_receipt(receipt)
        if key is None:
            return

        def move(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE messages SET queue = ?, origin = queue, receipt = NULL,"
                         " visible_at = ?, reason = ? WHERE id = ? AND receipt = ? AND queue = ?",
                         (self.spec.dead_letter_name, time.time(), reason[:REASON_MAX], *key,
                          self.spec.name))

        await self.broker.call(move)

    async def has_waiting(self, longer_than: float = 0.0) -> bool:
        return self.broker.has_visible(self.spec.name, longer_than)

    async def dead_count(self) -> int:
        return self.count_dead()

    def count_dead(self) -> int:
        """`dead_count` without the writer: one indexed count on a read connection, cheap
        enough for every /readyz and /metrics request."""
        (count,) = self.broker.read_one("SELECT COUNT(*) FROM messages WHERE queue = ?",
                                        (self.spec.dead_letter_name,))
        return int(count)

    async def oldest_age(self) -> float | None:
        # A read connection, like `count_dead`: a dashboard polling it must not queue behind
        # the writer. A redriven message counts from its redrive (its sent_at starts over).
        (oldest,) = self.broker.read_one("SELECT MIN(sent_at) FROM messages WHERE queue = ?",
                                         (self.spec.name,))
        return None if oldest is None else max(time.time() - float(oldest), 0.0)

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

        return await self.broker.call(count, durable=False)

    async def dead_letters(self, limit: int = 100) -> list[ReceivedMessage]:
        def peek(conn: sqlite3.Connection) -> list[ReceivedMessage]:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM messages WHERE queue = ?"
                                " ORDER BY id LIMIT ?", (self.spec.dead_letter_name, limit))
            return [_message(row, attributes={"source_queue": row[6] or "",
                                              "reason": row[9] or "", "size": str(len(row[1]))})
                    for row in rows]

        return await self.broker.call(peek, durable=False)

    async def redrive(self, message_ids: list[str] | None = None) -> int:
        # The dedup id is dropped: a redrive is a deliberate re-injection and must neither be
        # swallowed by, nor swallow, a live message carrying the same id.
        # sent_at starts over too: time-based retry budgets (a tenant database that is down) are
        # measured from it, and a replayed message deserves a whole one.
        sql = ("UPDATE messages SET queue = ?1, origin = NULL, dedup_id = NULL, receipt = NULL,"
               " receive_count = 0, visible_at = ?2, sent_at = ?2 WHERE queue = ?3")
        ids = [int(i) for i in message_ids or [] if i.isdigit()]

        def move(conn: sqlite3.Connection) -> int:
            args = (self.spec.name, time.time(), self.spec.dead_letter_name)
            if message_ids is None:
                return conn.execute(sql, args).rowcount
            return sum(conn.execute(sql + " AND id = ?4", (*args, i)).rowcount for i in ids)

        if message_ids is not None and not ids:
            return 0
        return await self.broker.call(move, wake=self.spec.name)

    async def discard(self, message_ids: list[str] | None = None) -> int:
        ids = [int(i) for i in message_ids or [] if i.isdigit()]
        if message_ids is not None and not ids:
            return 0

        def discard(conn: sqlite3.Connection) -> int:
            # Bodies may hold phone numbers and texts: overwritten in the file, not just unlinked.
            conn.execute("PRAGMA secure_delete = ON")
            try:
                sql = "DELETE FROM messages WHERE queue = ?"
                if message_ids is None:
                    return conn.execute(sql, (self.spec.dead_letter_name,)).rowcount
                return sum(conn.execute(sql + " AND id = ?", (self.spec.dead_letter_name, i)
                                        ).rowcount for i in ids)
            finally:
                conn.execute("PRAGMA secure_delete = FAST")

        return await self.broker.call(discard)

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

        return await self.broker.call(scan, durable=False)

    async def delete(self, message_ids: list[str]) -> int:
        ids = [(int(i), self.spec.name, self.spec.dead_letter_name)
               for i in message_ids if i.isdigit()]
        if not ids:
            return 0

        def delete(conn: sqlite3.Connection) -> int:
            # An erasure: deleted content is overwritten in the file, not just unlinked.
            conn.execute("PRAGMA secure_delete = ON")
            try:
                return sum(conn.execute("DELETE FROM messages WHERE id = ? AND queue IN (?, ?)",
                                        row).rowcount for row in ids)
            finally:
                conn.execute("PRAGMA secure_delete = FAST")

        return await self.broker.call(delete)
