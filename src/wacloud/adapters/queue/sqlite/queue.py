"""One queue of the embedded SQLite broker: SQS semantics over the shared `messages` table.

Every operation is a function run by the broker's writer thread inside its next transaction
(see `sqlite.py`); receives long-poll with the broker's wake-ups (in-process and doorbells).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
import time
from collections import deque
from functools import partial
from typing import TYPE_CHECKING, Any

from wacloud.adapters.batching import power_of_two_chunks
from wacloud.adapters.queue.base import (
    LaneShare,
    OutgoingMessage,
    Queue,
    QueueSpec,
    ReceivedMessage,
    lane_of,
)

if TYPE_CHECKING:
    from wacloud.adapters.queue.sqlite.broker import SqliteBroker

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
# FIFO: only a group's head (its oldest message, kept by triggers: see `sqlite.py`) can be
# claimed, when visible (a hidden head is in flight or backing off, and blocks its group);
# behind a claimed head, the next ones of its group come along while visible. Heads are taken
# lane by lane in turn, each lane's oldest-ready first: every step is an index seek, so neither
# a lane's backlog nor a group's queue behind its head is walked under the write lock.
_LANES = ("WITH RECURSIVE lanes(lane) AS ("
          "SELECT MIN(lane) FROM messages INDEXED BY messages_heads"
          " WHERE queue = :q AND head = 1 AND lane IS NOT NULL"
          " UNION ALL SELECT (SELECT MIN(m.lane) FROM messages m INDEXED BY messages_heads"
          " WHERE m.queue = :q AND m.head = 1 AND m.lane IS NOT NULL AND m.lane > lanes.lane)"
          " FROM lanes WHERE lanes.lane IS NOT NULL)"
          " SELECT lane FROM lanes WHERE lane IS NOT NULL")
_HEADS = ("SELECT id, group_id, receive_count, group_id IS NOT NULL AND EXISTS (SELECT 1"
          " FROM messages f INDEXED BY messages_group_seq WHERE f.queue = m.queue"
          " AND f.group_id = m.group_id AND f.id > m.id) FROM messages m INDEXED BY messages_heads"
          " WHERE m.queue = :q AND m.head = 1 AND m.lane IS NOT NULL AND m.lane = :lane"
          " AND m.visible_at <= :now ORDER BY m.visible_at, m.id LIMIT :n")
_FOLLOWERS = ("SELECT id, visible_at, receive_count FROM messages INDEXED BY messages_group_seq"
              " WHERE queue = :q AND group_id = :g AND id > :id ORDER BY id LIMIT :n")
_PICKED = "SELECT value FROM json_each(:ids)"
# Messages that reached a FIFO queue without a lane (written before lanes existed, or redriven
# from a dead-letter queue they were sent to directly) get one, and the queue's heads are worked
# out again. A scan of the queue: only at a queue's first receive in a process and at redrives.
_ADOPT = "UPDATE messages SET lane = wacloud_lane(group_id) WHERE queue = ? AND lane IS NULL"
_REHEAD = ("UPDATE messages SET head = (group_id IS NULL OR NOT EXISTS (SELECT 1 FROM messages p"
           " WHERE p.queue = messages.queue AND p.group_id = messages.group_id"
           " AND p.id < messages.id)) WHERE queue = ?")
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
        self._turn = 0  # which lane a FIFO receive serves first
        self._adopted = False
        self.lane_share: LaneShare | None = None

    def share_lanes(self, share: LaneShare | None) -> bool:
        if not self.spec.fifo:
            return False
        self.lane_share = share
        return True

    async def send_batch(self, messages: list[OutgoingMessage]) -> None:
        if not messages:
            return
        name = self.spec.name
        now = time.time()
        fifo = self.spec.fifo
        await self.broker.insert([(name, m.body, m.group_id, m.dedup_id, now,
                                   now + max(m.delay, 0.0), lane_of(m.group_id) if fifo else None)
                                  for m in messages], wake=name)

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
        now = time.time()
        args: dict[str, Any] = {"q": spec.name, "now": now, "n": limit, "max": spec.max_receives}
        until, token = now + timeout, secrets.token_hex(8)
        if not spec.fifo:
            pick = _PICK_STANDARD
            conn.execute(_SWEEP.format(pick=pick.format(live="")),
                         {**args, "dlq": spec.dead_letter_name})
            claimed = conn.execute(_CLAIM.format(pick=pick.format(live=_LIVE)),
                                   {**args, "tok": token, "until": until}).rowcount
            return (until, token) if claimed else None
        if not self._adopted:
            self._adopt(conn)
            self._adopted = True
        live, dead = self._pick_fifo(conn, now, limit)
        if dead:
            conn.execute(_SWEEP.format(pick=_PICKED),
                         {**args, "ids": json.dumps(dead), "dlq": spec.dead_letter_name})
        if not live:
            return None
        conn.execute(_CLAIM.format(pick=_PICKED),
                     {"ids": json.dumps(live), "tok": token, "until": until})
        return until, token

    def _adopt(self, conn: sqlite3.Connection) -> None:
        if conn.execute(_ADOPT, (self.spec.name,)).rowcount:
            conn.execute(_REHEAD, (self.spec.name,))

    def _pick_fifo(self, conn: sqlite3.Connection, now: float,
                   limit: int) -> tuple[list[int], list[int]]:
        """Ids to claim (heads in lane turns, each followed by the visible rest of its group)
        and heads to dead-letter (received `max_receives` times already)."""
        name, most = self.spec.name, self.spec.max_receives
        lanes = [row[0] for row in conn.execute(_LANES, {"q": name})]
        share = self.lane_share
        if share is not None:
            lanes = [lane for lane in lanes if share.owns(lane)]
        if not lanes:
            return [], []
        # Each receive starts at the lane after the last one the previous receive served, so
        # that receives smaller than the number of lanes serve every lane in turn too.
        turn = self._turn % len(lanes)
        order = lanes[turn:] + lanes[:turn]
        heads: list[deque[Any] | None] = [None] * len(order)  # a lane's heads, read when due
        live: list[int] = []
        dead: list[int] = []
        served = 0
        active = True
        while active and len(live) + len(dead) < limit:
            active = False
            for index, lane in enumerate(order):
                if len(live) + len(dead) >= limit:
                    break
                waiting = heads[index]
                if waiting is None:
                    waiting = heads[index] = deque(conn.execute(_HEADS, {
                        "q": name, "lane": lane, "now": now,
                        "n": limit - len(live) - len(dead)}).fetchall())
                if not waiting:
                    continue
                active = True
                served = max(served, index)
                row_id, group_id, count, more = waiting.popleft()
                if count >= most:
                    dead.append(row_id)
                    continue
                live.append(row_id)
                room = limit - len(live) - len(dead)
                if not more or room <= 0:
                    continue
                for follower, visible_at, received in conn.execute(_FOLLOWERS, {
                        "q": name, "g": group_id, "id": row_id, "n": room}):
                    if visible_at > now or received >= most:
                        break
                    live.append(follower)
        self._turn = turn + served + 1
        return live, dead

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

    async def extend_visibility(self, receipt: str, seconds: float) -> bool:
        key = _parse_receipt(receipt)
        if key is None:
            return False

        def extend(conn: sqlite3.Connection) -> bool:
            # The receipt's token changes at every receive: a stale one matches no row.
            return conn.execute("UPDATE messages SET visible_at = ? WHERE id = ? AND receipt = ?"
                                " AND queue = ?", (time.time() + max(seconds, 0.0), *key,
                                                   self.spec.name)).rowcount > 0

        extended: bool = await self.broker.call(
            extend, wake=self.spec.name if seconds <= 0 else None, durable=False)
        return extended

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

    async def oldest_age(self) -> float | None:
        # The lowest id is the first sent (a redriven dead letter keeps its id and sent_at);
        # one step down the (queue) index on a read connection, without the writer.
        row = self.broker.read_one(
            "SELECT sent_at FROM messages WHERE queue = ? ORDER BY id LIMIT 1", (self.spec.name,))
        return None if row is None else max(time.time() - float(row[0]), 0.0)

    async def lag_seconds(self) -> float | None:
        return self.lag()

    def lag(self) -> float | None:
        """`lag_seconds` without the writer: one step down the (queue, visible_at) index on a
        read connection. A message in flight or backing off is visible later than now, so the
        lowest visible_at is the oldest ready message's when it is not in the future. In a
        FIFO queue that includes messages waiting behind their group's head."""
        (oldest,) = self.broker.read_one(
            "SELECT MIN(visible_at) FROM messages WHERE queue = ?", (self.spec.name,))
        now = time.time()
        return None if oldest is None or oldest > now else now - float(oldest)

    def holds_at_least(self, count: int) -> bool:
        """Whether this queue holds `count` messages or more (any state, dead letters apart),
        read without the writer. When its ids span fewer than `count` (two index steps) it
        cannot; otherwise the messages are counted, stopping at `count`."""
        if count <= 0:
            return True
        first, last = self.broker.read_one(
            "SELECT (SELECT MIN(id) FROM messages WHERE queue = ?1),"
            " (SELECT MAX(id) FROM messages WHERE queue = ?1)", (self.spec.name,))
        if first is None or last - first + 1 < count:
            return False
        (held,) = self.broker.read_one(
            "SELECT COUNT(*) FROM (SELECT 1 FROM messages WHERE queue = ? LIMIT ?)",
            (self.spec.name, count))
        return int(held) >= count

    def count_dead(self) -> int:
        """`dead_count` without the writer: one indexed count on a read connection, cheap
        enough for every /readyz and /metrics request."""
        (count,) = self.broker.read_one("SELECT COUNT(*) FROM messages WHERE queue = ?",
                                        (self.spec.dead_letter_name,))
        return int(count)

    async def depth(self) -> dict[str, int]:
        # Read-only, so on a read connection in a thread: a count over a large backlog (every
        # /metrics scrape, every /readyz) must hold neither the writer, whose commits webhook
        # answers wait for, nor the event loop that answers them.
        return await asyncio.to_thread(self._count)

    def _count(self) -> dict[str, int]:
        visible, in_flight, delayed = self.broker.read_one(
            "SELECT COALESCE(SUM(visible_at <= ?1), 0),"
            " COALESCE(SUM(visible_at > ?1 AND receipt IS NOT NULL), 0),"
            " COALESCE(SUM(visible_at > ?1 AND receipt IS NULL), 0)"
            " FROM messages WHERE queue = ?2", (time.time(), self.spec.name))
        return {"visible": visible, "in_flight": in_flight, "delayed": delayed,
                "dead": self.count_dead()}

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
                moved: int = conn.execute(sql, args).rowcount
            else:
                moved = sum(conn.execute(sql + " AND id = ?4", (*args, i)).rowcount for i in ids)
            if self.spec.fifo and moved:
                self._adopt(conn)
            return moved

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
