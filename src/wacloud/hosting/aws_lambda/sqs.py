"""SQS-triggered functions: Lambda's batch of records through a stage's `StageRunner`, and the
records that failed back to Lambda (`batchItemFailures`).

Lambda's event source mapping receives from SQS and deletes what the function does not report
failed. The batch is handed to the stage's runner as the runner's own receive would be: the
batch handler (writer), or each FIFO group in order with groups side by side (sender). The
runner's input queue is, for this batch, an `EventSourceQueue`: what the runner acks is left
for Lambda to delete; what it releases (a retry later, with backoff) goes through the real
queue's `release` (on SQS: ChangeMessageVisibility on the record's receipt handle, so the
delay holds) and is reported failed; what it dead-letters is moved by the real queue and not
reported. In a FIFO group, what follows a failed record is released too, so it is reported
failed as well and the group's order holds.

Records are read by the queue adapter when it can adopt messages it did not receive itself
(an `adopt_received(messages)` coroutine taking them in the shape of SQS's ReceiveMessage
answer): it knows its own wire format (encoded bodies, bodies kept in the media store, carried
receive counts) and learns the receipts, which it needs to dead-letter a message. Without it a
record's body is read as it stands, and a dead-letter is left to the queue's redrive policy: the
record is reported failed, never deleted unmoved. aws-lambda-powertools' `BatchProcessor` turns the
outcomes into Lambda's partial batch response; a batch that failed entirely is answered the
same way (not raised), so that the delays set above stand and the invocation does not count as
an error.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from wacloud.adapters.db.errors import failure_reason
from wacloud.adapters.queue.base import OutgoingMessage, Queue, ReceivedMessage
from wacloud.hosting.aws_lambda.records import queue_of, received_message, sqs_message
from wacloud.hosting.aws_lambda.runtime import Container, container

log = logging.getLogger(__name__)

class RecordFailed(Exception):
    """A record the stage did not finish: Lambda leaves it in its queue."""


class EventSourceQueue(Queue):
    """One Lambda batch of `source`, through the queue port (see the module docstring)."""

    def __init__(self, source: Queue, *, adopted: bool) -> None:
        self.source = source
        self.spec = source.spec
        self.adopted = adopted  # whether `source` knows the batch's receipts
        self.settled: set[str] = set()  # receipts Lambda may delete
        self.reasons: dict[str, str] = {}  # receipt -> why it was released

    async def ack(self, receipts: list[str]) -> None:
        self.settled.update(receipts)

    async def release(self, receipt: str, delay: float = 0.0, *, reason: str | None = None,
                      count: bool = True) -> None:
        self.settled.discard(receipt)
        self.reasons[receipt] = reason or "released by its stage"
        await self.source.release(receipt, delay, reason=reason, count=count)

    async def dead_letter(self, receipt: str, reason: str) -> None:
        if not self.adopted:  # it could not move it: the redrive policy will
            log.error("a message to dead-letter (%s) goes back to its queue instead: the "
                      "queue adapter cannot adopt Lambda's records", reason)
            self.settled.discard(receipt)
            self.reasons[receipt] = reason
            return
        await self.source.dead_letter(receipt, reason)
        self.settled.add(receipt)

    async def extend_visibility(self, receipt: str, seconds: float) -> bool:
        return await self.source.extend_visibility(receipt, seconds)

    async def receive(self, max_messages: int = 10, *, visibility_timeout: float | None = None,
                      wait_seconds: float = 0.0) -> list[ReceivedMessage]:
        raise NotImplementedError("in Lambda the event source mapping receives")

    async def send(self, body: bytes, *, group_id: str | None = None,
                   dedup_id: str | None = None, delay: float = 0.0) -> None:
        await self.source.send(body, group_id=group_id, dedup_id=dedup_id, delay=delay)

    async def send_batch(self, messages: list[OutgoingMessage]) -> None:
        await self.source.send_batch(messages)

    async def depth(self) -> dict[str, int]:
        return await self.source.depth()

    async def dead_letters(self, limit: int = 100) -> list[ReceivedMessage]:
        return await self.source.dead_letters(limit)

    async def redrive(self, message_ids: list[str] | None = None) -> int:
        return await self.source.redrive(message_ids)

    async def discard(self, message_ids: list[str] | None = None) -> int:
        return await self.source.discard(message_ids)


class SqsStageHandler:
    """A Lambda handler for the SQS queues `stages` names (port queue name -> stage name of
    `Gateway.runners`)."""

    def __init__(self, stages: Mapping[str, str]) -> None:
        self.stages = dict(stages)

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        app = container()
        failed = app.run(self.handle(app, list(event.get("Records") or [])))
        processor = BatchProcessor(event_type=EventType.SQS,
                                   raise_on_entire_batch_failure=False)

        def report(record: SQSRecord) -> None:
            reason = failed.get(record.message_id)
            if reason is not None:
                raise RecordFailed(reason)

        response: dict[str, Any] = dict(process_partial_response(
            event=event, record_handler=report, processor=processor, context=context))
        return response

    async def handle(self, app: Container, records: list[dict[str, Any]]) -> dict[str, str]:
        """Run the batch; returns {message id: why it failed} for the records to report."""
        await app.fresh()
        failed: dict[str, str] = {}
        by_queue: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for record in records:
            message_id = str(record.get("messageId"))
            name = queue_of(record.get("eventSourceARN"), self.stages)
            if name is None:
                log.error("record %s comes from %s, which this function does not consume",
                          message_id, record.get("eventSourceARN"))
                failed[message_id] = "from a queue this function does not consume"
                continue
            by_queue[name].append(record)
        for name, batch_records in by_queue.items():
            source = app.gateway.queues[name]
            try:
                messages, adopted = await received(source, batch_records)
            except Exception as exc:  # the adapter could not read them: all back, all failed
                log.exception("queue %s: could not read %d records", name, len(batch_records))
                failed.update((str(r.get("messageId")), failure_reason(exc))
                              for r in batch_records)
                continue
            runner = app.runner(self.stages[name])
            batch = EventSourceQueue(source, adopted=adopted)
            runner.queue = batch
            try:
                await runner.handle_received(messages)
            finally:
                runner.queue = source
            for message in messages:
                if message.receipt not in batch.settled:
                    failed[message.message_id] = batch.reasons.get(message.receipt,
                                                                   "not finished")
        return failed


async def received(source: Queue, records: list[dict[str, Any]]
                   ) -> tuple[list[ReceivedMessage], bool]:
    """The records as the port's messages, and whether `source` adopted them (see the module
    docstring). A record the adapter took care of itself (it dead-lettered an unreadable one)
    is not among them: Lambda may delete it."""
    adopt = getattr(source, "adopt_received", None)
    if adopt is None:
        return [received_message(record) for record in records], False
    messages: list[ReceivedMessage] = await adopt([sqs_message(r) for r in records])
    return messages, True
