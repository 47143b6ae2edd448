"""Run one stage against its input queue: receive, handle, forward outputs, then ack.

At-least-once: an input is acknowledged only after its outputs are durably queued. A failure
releases the input with backoff and its reason; the queue dead-letters it after too many
receives. A failure that is the database's (down, locked, failing over) is not counted: the
input backs off (capped exponential) and is tried again until `db_retry_period` has passed
since it was queued, and only then dead-lettered, so a long outage loses nothing. Messages
of one FIFO group are handled one after another, in order; different groups run in parallel.
While messages are held (being handled, or waiting behind an earlier one of their group), a
heartbeat extends their visibility every third of the queue's visibility timeout: however long
a handler takes, its message is not handed out a second time, nor overtaken in its group.

Stopping (the `stop` event): no further receive starts, and what a receive returns after the
stop goes back at once. Handlers in flight get `shutdown_grace` seconds to finish; those still
running then are cancelled and every message still held is released with no delay and its
receive given back, so that another process takes it at once instead of after its visibility
timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping

from wacloud.adapters.db.errors import failure_reason, is_database_unavailable
from wacloud.adapters.queue.base import OutgoingMessage, Queue, ReceivedMessage
from wacloud.observability.metrics import STAGE_MESSAGES, STAGE_SECONDS
from wacloud.observability.tracing import set_stage
from wacloud.stages.envelopes import Output, RetryLater

log = logging.getLogger(__name__)

DEFER_CHECK_S = 0.1

Handler = Callable[[ReceivedMessage], Awaitable[list[Output]]]
BatchHandler = Callable[[list[ReceivedMessage]], Awaitable[list[Output]]]


class StageRunner:
    def __init__(self, name: str, queue: Queue, handler: Handler, outputs: Mapping[str, Queue],
                 *, concurrency: int = 8, batch: int = 10, wait_seconds: float = 1.0,
                 error_backoff: float = 1.0, batch_handler: BatchHandler | None = None,
                 defer_to: Queue | None = None, deferred_concurrency: int = 1,
                 defer_after: float = 0.1, db_retry_period: float = 24 * 3600.0,
                 db_retry_max_delay: float = 60.0, shutdown_grace: float = 20.0) -> None:
        self.name = name
        self.queue = queue
        self.handler = handler
        self.outputs = outputs
        self.concurrency = concurrency
        self.batch = batch
        self.wait_seconds = wait_seconds
        self.error_backoff = error_backoff
        # For unordered queues: a whole receive is handled in one call (e.g. one transaction
        # per tenant); if that fails, each message is handled on its own by `handler`.
        self.batch_handler = batch_handler
        # While messages have waited on `defer_to` for more than `defer_after` seconds (its
        # stage is behind), run at most `deferred_concurrency` at a time: media copies give
        # way to storing a burst of rows (they share the CPU). A stage that keeps up does not
        # hold them back, so under steady load they do not fall behind. 0.1 s: at 2,000
        # webhooks/s with 10% media (bench/soak.py) rows waited p99 190 ms with it and 380 ms
        # with 0.5 s, and the media copies kept up with both.
        self.defer_to = defer_to
        self.deferred_concurrency = deferred_concurrency
        self.defer_after = defer_after
        self._deferring_until = 0.0
        self._deferring = False
        self._held: dict[str, ReceivedMessage] = {}  # receipt -> message, until ack or release
        self.db_retry_period = db_retry_period
        self.db_retry_max_delay = db_retry_max_delay
        self.shutdown_grace = shutdown_grace

    async def _limit(self) -> int:
        if self.defer_to is None:
            return self.concurrency
        now = time.monotonic()
        if now >= self._deferring_until:  # checked at most every DEFER_CHECK_S
            try:
                self._deferring = await self.defer_to.has_waiting(self.defer_after)
            except Exception as exc:  # a hint only: never let it stop the stage
                log.debug("stage %s: could not look at %s (%s)", self.name,
                          type(self.defer_to).__name__, exc)
                self._deferring = False
            self._deferring_until = now + DEFER_CHECK_S
        return self.deferred_concurrency if self._deferring else self.concurrency

    async def heartbeat(self) -> None:
        """Keep every held message hidden while this runner works on it (until cancelled:
        after a stop, the handlers still running are waited for)."""
        timeout = self.queue.spec.visibility_timeout
        while True:
            await asyncio.sleep(timeout / 3)  # a period, not synchronization
            await self.extend_held(timeout)

    async def extend_held(self, seconds: float) -> None:
        receipts = list(self._held)
        if not receipts:
            return
        try:
            kept = await asyncio.gather(*(self.queue.extend_visibility(r, seconds)
                                          for r in receipts))
        except Exception as exc:  # a broken queue: the handlers will hear of it themselves
            log.warning("stage %s: could not extend the visibility of %d messages (%s)",
                        self.name, len(receipts), type(exc).__name__)
            return
        for receipt, ok in zip(receipts, kept, strict=True):
            if not ok and receipt in self._held:
                log.warning("stage %s: message %s was no longer held (received again?)",
                            self.name, self._held[receipt].message_id)

    def _let_go(self, messages: list[ReceivedMessage]) -> None:
        for message in messages:
            self._held.pop(message.receipt, None)

    async def run(self, stop: asyncio.Event) -> None:
        set_stage(self.name)  # this task's log lines, and its handlers' (tasks copy it)
        in_flight: set[asyncio.Task[None]] = set()
        slots = asyncio.Semaphore(self.concurrency)
        heartbeat = asyncio.create_task(self.heartbeat())
        grace = self.shutdown_grace
        try:
            await self._run(stop, in_flight, slots)
        except asyncio.CancelledError:
            grace = 0.0  # cancelled from outside: the deadline has passed already
            raise
        finally:
            try:
                # The heartbeat keeps the messages of the handlers still running hidden
                # meanwhile.
                await self._finish(in_flight, grace)
            finally:  # also when cancelled while waiting: nothing may stay held
                for task in in_flight:
                    task.cancel()
                heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeat
                await self.release_held()

    async def _finish(self, in_flight: set[asyncio.Task[None]], grace: float) -> None:
        """Let the handlers in flight finish within `grace` seconds; cancel the others."""
        if not in_flight:
            return
        _, late = await asyncio.wait(set(in_flight), timeout=max(grace, 0.0))
        if late:
            log.warning("stage %s: %d handlers still running %.0f s after the stop; their "
                        "messages go back to the queue", self.name, len(late), grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    async def release_held(self) -> None:
        """Give every message still held back to the queue now, its receive not counted:
        the stop is not the message's failure."""
        held = list(self._held.values())
        self._let_go(held)
        # Together, so that the queue writes them in one transaction.
        results = await asyncio.gather(
            *(self.queue.release(m.receipt, 0.0, count=False) for m in held),
            return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:  # the queue's visibility timeout brings those back instead
            log.warning("stage %s: could not release %d messages at the stop (%s)",
                        self.name, len(failed), type(failed[0]).__name__)

    async def _run(self, stop: asyncio.Event, in_flight: set[asyncio.Task[None]],
                   slots: asyncio.Semaphore) -> None:
        while not stop.is_set():
            limit = await self._limit()
            free = (limit - len(in_flight)) * (1 if self.batch_handler is None else self.batch)
            if free <= 0:
                if in_flight:
                    await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED,
                                       timeout=DEFER_CHECK_S if self.defer_to else None)
                else:  # deferring with nothing allowed meanwhile
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), DEFER_CHECK_S)
                continue
            try:
                wait = min(self.wait_seconds, DEFER_CHECK_S) if self.defer_to else self.wait_seconds
                messages = await self.queue.receive(min(self.batch, free), wait_seconds=wait)
            except Exception:
                log.exception("stage %s: receive failed", self.name)
                await asyncio.sleep(self.error_backoff)  # back off a broken queue, not a sync
                continue
            self._held.update((m.receipt, m) for m in messages)
            if stop.is_set():  # stopped during the long poll: `run` gives these back
                return
            if self.batch_handler is not None and messages:
                task = asyncio.create_task(self._run_batch(messages, slots))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                continue
            for group in groups_of(messages):
                task = asyncio.create_task(self._run_group(group, slots))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)

    async def handle_received(self, messages: list[ReceivedMessage]) -> None:
        """Handle messages a host received itself (AWS Lambda's event source mapping hands
        over a batch) as `run` handles one receive: in one batch-handler call, or each FIFO
        group in order, groups side by side. Returns when every message is acked, released
        or dead-lettered; a failure to do that is logged, and the message stays as it was
        received (its visibility timeout brings it back)."""
        self._held.update((m.receipt, m) for m in messages)
        slots = asyncio.Semaphore(self.concurrency)
        try:
            if self.batch_handler is not None:
                work = [self._run_batch(messages, slots)]
            else:
                work = [self._run_group(group, slots) for group in groups_of(messages)]
            for result in await asyncio.gather(*work, return_exceptions=True):
                if isinstance(result, Exception):
                    log.error("stage %s: could not ack or release a message (%s)", self.name,
                              failure_reason(result))
        finally:
            self._let_go(messages)

    async def _run_group(self, group: list[ReceivedMessage], slots: asyncio.Semaphore) -> None:
        async with slots:
            try:
                for index, message in enumerate(group):
                    if not await self.handle(message):
                        # Keep the group's order: what follows a failed message waits for it.
                        for later in group[index + 1:]:
                            self._let_go([later])
                            await self.queue.release(later.receipt, 0.0)
                        return
            except Exception as exc:
                self._abandon(group, exc)

    def _abandon(self, messages: list[ReceivedMessage], exc: Exception) -> None:
        """The queue failed under a unit of work (its broker unreachable: an output, an ack or
        a release did not go through). Its messages still held are let go, so the heartbeat
        stops hiding them: their visibility timeout brings them back to be handled again
        (handlers are idempotent), instead of staying hidden for as long as this process
        lives."""
        held = [m for m in messages if m.receipt in self._held]
        self._let_go(held)
        log.warning("stage %s: the queue failed (%s); %d messages come back after their "
                    "visibility timeout", self.name, failure_reason(exc), len(held))

    async def _run_batch(self, messages: list[ReceivedMessage], slots: asyncio.Semaphore) -> None:
        try:
            await self._run_batch_held(messages, slots)
        except Exception as exc:
            self._abandon(messages, exc)

    async def _run_batch_held(self, messages: list[ReceivedMessage],
                              slots: asyncio.Semaphore) -> None:
        assert self.batch_handler is not None
        async with slots:
            started = time.perf_counter()
            try:
                outputs = await self.batch_handler(messages)
                await self.forward(outputs)
                self._let_go(messages)
                await self.queue.ack([m.receipt for m in messages])
            except Exception as exc:
                if is_database_unavailable(exc):
                    # Their database is down: one by one would only wait for it again each.
                    for message in messages:
                        await self._database_unavailable(message, exc)
                    return
                # One bad message must not hold back or dead-letter its neighbours.
                log.warning("stage %s: a batch of %d failed (%s); handling them one by one",
                            self.name, len(messages), type(exc).__name__)
                for message in messages:
                    await self.handle(message)
                return
            STAGE_MESSAGES.labels(self.name, "ok").inc(len(messages))
            STAGE_SECONDS.labels(self.name).observe(time.perf_counter() - started)

    async def handle(self, message: ReceivedMessage) -> bool:
        started = time.perf_counter()
        try:
            outputs = await self.handler(message)
            await self.forward(outputs)
            self._let_go([message])
            await self.queue.ack([message.receipt])
        except RetryLater as retry:
            STAGE_MESSAGES.labels(self.name, "retry").inc()
            try:
                await self.forward(retry.outputs)
            finally:
                self._let_go([message])
                await self.queue.release(message.receipt, retry.delay,
                                         reason=failure_reason(retry))
            return False
        except Exception as exc:
            if is_database_unavailable(exc):
                await self._database_unavailable(message, exc)
                return False
            STAGE_MESSAGES.labels(self.name, "error").inc()
            log.exception("stage %s failed on message %s (receive %d)", self.name,
                          message.message_id, message.receive_count)
            delay = random.uniform(0.5, 1.0) * self.error_backoff * 2 ** min(
                message.receive_count, 6)
            self._let_go([message])
            await self.queue.release(message.receipt, delay, reason=failure_reason(exc))
            return False
        STAGE_MESSAGES.labels(self.name, "ok").inc()
        STAGE_SECONDS.labels(self.name).observe(time.perf_counter() - started)
        return True

    async def _database_unavailable(self, message: ReceivedMessage, exc: Exception) -> None:
        """Back off without counting the receive, until `db_retry_period` has passed since the
        message was queued; then dead-letter it with the reason."""
        reason = failure_reason(exc)
        waited = max(time.time() - message.sent_at, 0.0)
        self._let_go([message])
        if waited >= self.db_retry_period:
            STAGE_MESSAGES.labels(self.name, "error").inc()
            log.error("stage %s: database unavailable for %.0f s, message %s dead-lettered: %s",
                      self.name, waited, message.message_id, reason)
            await self.queue.dead_letter(
                message.receipt, f"database unavailable for {waited:.0f} s: {reason}")
            return
        STAGE_MESSAGES.labels(self.name, "db_retry").inc()
        log.warning("stage %s: database unavailable (%s); message %s waits (queued %.0f s ago)",
                    self.name, reason, message.message_id, waited)
        # Exponential in effect: each wait is about as long as the time waited so far.
        delay = random.uniform(0.5, 1.0) * min(self.db_retry_max_delay,
                                               max(self.error_backoff, waited))
        await self.queue.release(message.receipt, delay, reason=reason, count=False)

    async def forward(self, outputs: list[Output]) -> None:
        by_queue: dict[str, list[OutgoingMessage]] = defaultdict(list)
        for output in outputs:
            by_queue[output.queue].append(output.message)
        for name, messages in by_queue.items():
            await self.outputs[name].send_batch(messages)


def groups_of(messages: list[ReceivedMessage]) -> list[list[ReceivedMessage]]:
    """The messages by FIFO group, each group in the order received; a message without a
    group is a group of its own."""
    groups: dict[str, list[ReceivedMessage]] = defaultdict(list)
    for message in messages:
        groups[message.group_id or message.message_id].append(message)
    return list(groups.values())
