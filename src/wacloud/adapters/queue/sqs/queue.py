"""One queue on SQS, with the port's semantics as far as SQS gives them.

What SQS decides, and how each port operation maps to it:
- `send`/`send_batch`: SendMessageBatch, 10 entries and 256 KiB per call, entries SQS failed on
  its side sent again. FIFO queues: MessageGroupId = group id, MessageDeduplicationId = dedup
  id (a fresh uuid without one), no per-message delay (SQS refuses it: ValueError). SQS drops
  a repeated de-duplication id for 5 minutes after the first send, queued or not, and (queues
  are high-throughput FIFO) per message group: a row's id always comes with the same group, and
  the collector re-queues a stale row only after WACLOUD_QUEUED_STALE_S (900 s). Standard
  queues: no de-duplication (a dedup id is ignored); delays above 900 s (SQS's longest) are cut
  to 900 s.
- `receive`: long polling, WaitTimeSeconds up to 20 (longer waits poll again); visibility
  timeouts and delays are whole seconds on SQS, rounded up (0.2 s -> 1 s).
- `ack`: DeleteMessageBatch; a large body's object in the media store is deleted with it.
- `release(delay)`: ChangeMessageVisibility(delay). SQS counts "not visible" for such a message,
  so `depth` shows it `in_flight`, not `delayed`. SQS cannot change a message's attributes, so
  `reason` cannot be written on it: when the release is the message's last allowed receive
  (`receive_count >= max_receives`), the message is dead-lettered at once with the reason (its
  next receive would have moved it anyway); earlier reasons are not kept.
- `release(count=False)`: SQS counts every receive itself and moves a message to the DLQ after
  max_receives (the redrive policy). On a standard queue the receive is given back by sending a
  copy (same body, group, first send time, receives counted so far, reason) and deleting the
  original: the copy has a new message id, and a count=False delay over 900 s is cut to 900 s.
  On a FIFO queue a copy would go behind the rest of its group, so there the receive is NOT
  given back: it counts towards max_receives (the send queue's is large for that reason).
- `extend_visibility`: ChangeMessageVisibility; False when SQS says the receipt no longer holds
  the message, or when this process knows it does not (see `receipts.py`).
- `dead_letter`: sends the message to the DLQ with `wacloud.reason`, `wacloud.source` and
  `wacloud.receives`, then deletes it.
- `depth`: GetQueueAttributes of the queue and its DLQ (SQS's approximate counts).
- `dead_letters`, `redrive`, `discard`, `delete`: scans (see `letters.py`). A redrive re-sends
  each letter (a new message id, a whole new receive budget); in a FIFO queue it joins the back
  of its group, behind messages queued since. `delete(ids)` reaches only visible messages, and
  each live message it scans counts one receive.
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from botocore.exceptions import ClientError

from wacloud.adapters.queue.base import OutgoingMessage, Queue, QueueSpec, ReceivedMessage
from wacloud.adapters.queue.sqs import calls
from wacloud.adapters.queue.sqs.bodies import (
    CARRIED,
    KEY,
    REASON,
    RECEIVES,
    SENT_AT,
    SOURCE,
    BodyTooLarge,
    attributes_of,
    body_key,
    clip_reason,
    decode,
    encode,
)
from wacloud.adapters.queue.sqs.calls import whole_seconds
from wacloud.adapters.queue.sqs.entries import (
    MAX_DELAY_S,
    carried,
    group_of,
    new_entry,
    rebuilt,
)
from wacloud.adapters.queue.sqs.letters import scan
from wacloud.adapters.queue.sqs.names import source_of
from wacloud.adapters.queue.sqs.receipts import Held

if TYPE_CHECKING:
    from collections.abc import Callable

    from wacloud.adapters.queue.sqs.broker import SqsBroker

T = TypeVar("T")
log = logging.getLogger(__name__)

MAX_WAIT_S = 20  # SQS's longest long poll
MAX_VISIBILITY_S = 12 * 3600


class SqsQueue(Queue):
    def __init__(self, broker: SqsBroker, spec: QueueSpec) -> None:
        self.broker = broker
        self.spec = spec
        self._target: tuple[str, bool] | None = None  # URL, FIFO
        self._dead: str | None = None
        # A queue declared as another's DLQ (`outbound.send.dlq`) has no DLQ of its own.
        self.is_dead_letter_queue = source_of(spec.name) is not None

    # -- plumbing ---------------------------------------------------------------------------

    async def target(self) -> tuple[str, bool]:
        """This queue's URL and whether it is FIFO (QueueMissing when it does not exist)."""
        if self._target is None:
            names = self.broker.names_of(self.spec)
            url = await self.broker.run(lambda: self.broker.url_of(names))
            self._target = (url, url.endswith(".fifo"))
        return self._target

    async def dead_url(self) -> str:
        if self._dead is None:
            name = self.broker.dead_letter_name(self.spec)
            self._dead = await self.broker.run(lambda: self.broker.url_of([name]))
        return self._dead

    async def _call(self, url: str, fn: Callable[[], T]) -> T:
        try:
            return await self.broker.run(fn)
        except ClientError as exc:
            missing = self.broker.missing(exc, url)
            if missing is None:
                raise
            self._target = self._dead = None
            raise missing from None

    @property
    def _client(self) -> Any:
        return self.broker.client

    # -- sending ----------------------------------------------------------------------------

    async def send_batch(self, messages: list[OutgoingMessage]) -> None:
        if not messages:
            return
        url, fifo = await self.target()
        if fifo and any(m.delay > 0 for m in messages):
            raise ValueError("SQS FIFO queues take no per-message delay")
        stored: list[str] = []
        try:
            entries = []
            for message in messages:
                text, attrs = await encode(message.body, url.rsplit("/", 1)[-1],
                                           self.broker.media_store, self.broker.tmp_dir)
                if attrs.get(KEY):
                    stored.append(attrs[KEY])
                if self.is_dead_letter_queue:  # a letter sent here directly: never received
                    attrs[RECEIVES] = "0"
                entries.append(new_entry(text, attrs, fifo=fifo, group_id=message.group_id,
                                         dedup_id=message.dedup_id,
                                         delay=whole_seconds(message.delay, MAX_DELAY_S)))
            await self._call(url, partial(calls.send_entries, self._client, url, entries))
        except BaseException:
            await self._forget_bodies(stored)
            raise

    async def _forget_bodies(self, keys: list[str]) -> None:
        store = self.broker.media_store
        for key in keys:
            if store is not None:
                try:
                    await store.delete(key)
                except Exception:  # an orphan object costs storage only
                    log.warning("queue %s: could not delete body %s", self.spec.name, key)

    # -- receiving --------------------------------------------------------------------------

    async def receive(self, max_messages: int = 10, *, visibility_timeout: float | None = None,
                      wait_seconds: float = 0.0) -> list[ReceivedMessage]:
        if max_messages <= 0:
            return []
        url, _ = await self.target()
        timeout = self.spec.visibility_timeout if visibility_timeout is None else visibility_timeout
        visibility = whole_seconds(timeout, MAX_VISIBILITY_S)
        deadline = time.monotonic() + max(wait_seconds, 0.0)
        got: list[ReceivedMessage] = []
        while True:
            wait = whole_seconds(min(deadline - time.monotonic(), MAX_WAIT_S), MAX_WAIT_S)
            want = max_messages - len(got)
            page = await self._call(url, partial(calls.receive, self._client, url, want,
                                                 visibility, 0 if got else wait))
            got.extend(await self._accept(url, page, visibility))
            # A full page may mean more are waiting; an empty one ends the wait at its deadline.
            if len(got) >= max_messages or (got and len(page) < calls.BATCH):
                return got
            if not page and (got or time.monotonic() >= deadline):
                return got

    async def adopt_received(self, page: list[dict[str, Any]]) -> list[ReceivedMessage]:
        """Messages SQS handed to someone else (Lambda's event source mapping), in the shape
        of a ReceiveMessage answer, taken as if this queue had received them: bodies decoded,
        receipts known (to release or dead-letter them), carried receive counts applied."""
        url, _ = await self.target()
        return await self._accept(url, page, whole_seconds(self.spec.visibility_timeout,
                                                           MAX_VISIBILITY_S))

    async def _accept(self, url: str, page: list[dict[str, Any]],
                      visibility: int) -> list[ReceivedMessage]:
        out: list[ReceivedMessage] = []
        for message in page:
            system = message.get("Attributes") or {}
            attrs = attributes_of(message)
            receipt = str(message["ReceiptHandle"])
            count = int(system.get("ApproximateReceiveCount", 1)) + carried(message)
            sent = attrs.get(SENT_AT) or str(int(system.get("SentTimestamp", 0)) / 1000)
            held = Held(url, message, count, float(sent), group_of(message),
                        time.monotonic() + visibility)
            self.broker.receipts.add(receipt, held)
            if count > self.spec.max_receives and carried(message) and \
                    not self.is_dead_letter_queue:
                # A copy (release(count=False)) is past its budget of counted receives: SQS's
                # redrive policy counts only the copy's own, so this adapter moves it.
                await self.dead_letter(receipt, attrs.get(REASON, ""), receives=count - 1)
                continue
            try:
                body = await decode(message, self.broker.media_store)
            except BodyTooLarge:  # no media store here: a configuration error, not the message's
                raise
            except Exception as exc:
                await self._unreadable(receipt, message, exc)
                continue
            out.append(ReceivedMessage(body=body, receipt=receipt, receive_count=count,
                                       message_id=str(message["MessageId"]),
                                       group_id=held.group_id, sent_at=held.sent_at))
        return out

    async def _unreadable(self, receipt: str, message: dict[str, Any], exc: Exception) -> None:
        """A body in the media store could not be read. Gone (its message was acked already,
        and SQS delivered this one twice, or it was deleted): dead-lettered with the reason.
        Otherwise (the store is unreachable) the message comes back when its visibility runs
        out, like any failure."""
        key = body_key(message) or ""
        store = self.broker.media_store
        try:
            gone = store is not None and not await store.exists(key)
        except Exception:
            gone = False
        log.warning("queue %s: the body of message %s is %s (%s)", self.spec.name,
                    message["MessageId"], "missing" if gone else "unreadable for now",
                    type(exc).__name__)
        if gone:
            await self.dead_letter(receipt, f"its body {key} is missing from the media store")

    # -- receipts ---------------------------------------------------------------------------

    async def ack(self, receipts: list[str]) -> None:
        live = [r for r in receipts if not self.broker.receipts.is_stale(r)]
        if not live:
            return
        url, _ = await self.target()
        deleted = await self._call(url, partial(calls.delete_receipts, self._client, url, live))
        keys = []
        for receipt in live:
            held = self.broker.receipts.lookup(receipt)
            self.broker.receipts.done(receipt)
            if receipt in deleted and held is not None and (key := body_key(held.message)):
                keys.append(key)
        await self._forget_bodies(keys)

    async def release(self, receipt: str, delay: float = 0.0, *, reason: str | None = None,
                      count: bool = True) -> None:
        receipts = self.broker.receipts
        if receipts.is_stale(receipt):
            return
        held = receipts.lookup(receipt)
        url, fifo = await self.target()
        if held is not None and not self.is_dead_letter_queue:
            if count and reason is not None and held.receive_count >= self.spec.max_receives:
                # Its next receive would move it to the DLQ without the reason: move it now.
                await self.dead_letter(receipt, reason)
                return
            if not count and not fifo:
                await self._copy_back(url, receipt, held, delay, reason)
                return
        await self._call(url, partial(calls.change_visibility, self._client, url, receipt,
                                      whole_seconds(delay, MAX_VISIBILITY_S)))
        receipts.done(receipt)

    async def _copy_back(self, url: str, receipt: str, held: Held, delay: float,
                         reason: str | None) -> None:
        """Give the receive back (standard queues): a copy with the receives counted before
        this one, then the original deleted. A crash in between leaves both: a duplicate, as
        SQS itself may deliver (every stage is idempotent)."""
        previous = attributes_of(held.message)
        extra = {SENT_AT: repr(held.sent_at), CARRIED: str(max(held.receive_count - 1, 0)),
                 REASON: clip_reason(reason) if reason is not None else previous.get(REASON, "")}
        entry = rebuilt(held.message, extra, fifo=False, delay=whole_seconds(delay, MAX_DELAY_S))
        await self._call(url, partial(calls.send_entries, self._client, url, [entry]))
        await self._call(url, partial(calls.delete_receipts, self._client, url, [receipt]))
        self.broker.receipts.done(receipt)

    async def extend_visibility(self, receipt: str, seconds: float) -> bool:
        receipts = self.broker.receipts
        if receipts.is_stale(receipt):
            return False
        url, _ = await self.target()
        kept = await self._call(url, partial(
            calls.change_visibility, self._client, url, receipt,
            whole_seconds(seconds, MAX_VISIBILITY_S)))
        if kept:
            receipts.extend(receipt, seconds)
        else:
            receipts.done(receipt)
        return kept

    async def dead_letter(self, receipt: str, reason: str, *, receives: int | None = None
                          ) -> None:
        receipts = self.broker.receipts
        held = receipts.lookup(receipt)
        if held is None:
            # Stale, or unknown here (long expired): without the message it cannot be moved.
            return
        url, fifo = await self.target()
        dead = await self.dead_url()
        extra = {REASON: clip_reason(reason), SOURCE: self.spec.name,
                 RECEIVES: str(held.receive_count if receives is None else receives),
                 SENT_AT: repr(held.sent_at)}
        entry = rebuilt(held.message, extra, fifo=fifo, keep_group=False)
        await self._call(dead, partial(calls.send_entries, self._client, dead, [entry]))
        await self._call(url, partial(calls.delete_receipts, self._client, url, [receipt]))
        receipts.done(receipt)

    # -- counts -----------------------------------------------------------------------------

    async def depth(self) -> dict[str, int]:
        url, _ = await self.target()
        if self.is_dead_letter_queue:
            return {**await self._call(url, partial(calls.counts, self._client, url)), "dead": 0}
        dead_url = await self.dead_url()
        mine, dead = await asyncio.gather(
            self._call(url, partial(calls.counts, self._client, url)),
            self._call(dead_url, partial(calls.counts, self._client, dead_url)))
        return {**mine, "dead": sum(dead.values())}

    async def has_waiting(self, longer_than: float = 0.0) -> bool:
        url, _ = await self.target()
        return (await self._call(url, partial(calls.counts, self._client, url)))["visible"] > 0

    async def dead_count(self) -> int:
        if self.is_dead_letter_queue:
            return 0
        url = await self.dead_url()
        return sum((await self._call(url, partial(calls.counts, self._client, url))).values())

    # -- dead letters -----------------------------------------------------------------------

    async def dead_letters(self, limit: int = 100) -> list[ReceivedMessage]:
        if self.is_dead_letter_queue:
            return []
        url = await self.dead_url()
        page = await self._call(url, partial(scan, self._client, url, limit=limit))
        letters = []
        for message in page:
            attrs = attributes_of(message)
            system = message.get("Attributes") or {}
            body = await decode(message, self.broker.media_store)
            # Letters SQS moved itself were received max_receives times (its redrive policy),
            # plus those counted before a copy; each peek is a receive too, not counted here.
            counted = attrs.get(RECEIVES)
            receives = (int(counted) if counted and counted.isdigit()
                        else self.spec.max_receives + carried(message))
            sent = attrs.get(SENT_AT) or str(int(system.get("SentTimestamp", 0)) / 1000)
            letters.append(ReceivedMessage(
                body=body, receipt="", receive_count=receives,
                message_id=str(message["MessageId"]), group_id=group_of(message),
                sent_at=float(sent), attributes={
                    "source_queue": attrs.get(SOURCE, self.spec.name),
                    "reason": attrs.get(REASON, ""), "size": str(len(body))}))
        return letters

    async def redrive(self, message_ids: list[str] | None = None) -> int:
        if self.is_dead_letter_queue or message_ids == []:
            return 0
        url, fifo = await self.target()
        dead = await self.dead_url()
        client = self._client

        def move(page: list[dict[str, Any]]) -> None:
            # A fresh message: new id, no dedup id (a deliberate re-injection must neither be
            # swallowed by, nor swallow, a live message with the same one), a whole new budget.
            calls.send_entries(client, url, [rebuilt(m, {}, fifo=fifo) for m in page])
            calls.delete_receipts(client, dead, [m["ReceiptHandle"] for m in page])

        wanted = None if message_ids is None else set(message_ids)
        return len(await self._call(dead, partial(scan, client, dead, wanted=wanted, take=move)))

    async def discard(self, message_ids: list[str] | None = None) -> int:
        if self.is_dead_letter_queue or message_ids == []:
            return 0
        return await self._delete_from(await self.dead_url(), message_ids)

    async def delete(self, message_ids: list[str]) -> int:
        """Delete messages of this queue or its DLQ by id, as far as SQS allows: only messages
        visible now are reached (not those in flight or delayed), and every live message the
        search receives counts one receive."""
        if not message_ids:
            return 0
        url, _ = await self.target()
        wanted = set(message_ids)
        deleted = 0
        if not self.is_dead_letter_queue:
            deleted += await self._delete_from(await self.dead_url(), list(wanted))
        return deleted + await self._delete_from(url, list(wanted))

    async def _delete_from(self, url: str, message_ids: list[str] | None) -> int:
        client = self._client
        keys: list[str] = []

        def remove(page: list[dict[str, Any]]) -> None:
            calls.delete_receipts(client, url, [m["ReceiptHandle"] for m in page])
            keys.extend(key for m in page if (key := body_key(m)))

        wanted = None if message_ids is None else set(message_ids)
        removed = await self._call(url, partial(scan, client, url, wanted=wanted, take=remove))
        await self._forget_bodies(keys)
        return len(removed)

