"""Driving the Lambda handlers as AWS would: real event shapes (`tests/fixtures/aws_lambda/`),
the queues played by the SQLite adapter, real SQLite tenant databases and the fake provider
over real HTTP.

`LambdaWorld.deliver` is Lambda's SQS poller: it receives a batch from the queue the function
consumes, hands it over as an SQS event and, like the event source mapping, deletes the
records the function did not report failed.
"""

from __future__ import annotations

import base64
import copy
import json
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from wacloud.adapters.db.registry.store import Registry
from wacloud.adapters.db.tenant import tables as t
from wacloud.adapters.queue.base import OutgoingMessage, Queue, ReceivedMessage
from wacloud.bootstrap import queue_specs
from wacloud.credentials.broker import CredentialsBroker
from wacloud.domain.model import Channel
from wacloud.hosting.aws_lambda import runtime
from wacloud.settings import load_settings
from wacloud.testing.fake_provider import FakeProvider
from wacloud.testing.webhooks import dumps, sign

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures" / "aws_lambda"
Handler = Callable[[dict[str, Any], Any], dict[str, Any]]


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text("utf-8"))
    return data


def sqs_name(queue: str, fifo: bool) -> str:
    """An SQS spelling of a port queue name, as a queue adapter with prefix `wacloud` might
    give it (the handlers must not depend on the spelling)."""
    return "wacloud-" + queue.replace(".", "-") + (".fifo" if fifo else "")


@dataclass
class LambdaContext:
    """The few fields of Lambda's context object the handlers and powertools read."""

    function_name: str = "wacloud-test"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    remaining_ms: int = 60_000

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def sqs_event(queue: Queue, messages: list[ReceivedMessage]) -> dict[str, Any]:
    """The SQS event Lambda would hand over for `messages` of `queue`."""
    fifo = queue.spec.fifo
    template = fixture("sqs_fifo_event" if fifo else "sqs_event")["Records"][0]
    records = []
    for message in messages:
        record = copy.deepcopy(template)
        record["messageId"] = message.message_id
        record["receiptHandle"] = message.receipt
        record["body"] = message.body.decode("utf-8")
        record["messageAttributes"] = {}
        attributes = record["attributes"]
        attributes["ApproximateReceiveCount"] = str(message.receive_count)
        attributes["SentTimestamp"] = str(int(message.sent_at * 1000))
        if fifo:
            attributes["MessageGroupId"] = message.group_id
            attributes["MessageDeduplicationId"] = message.message_id
        arn = record["eventSourceARN"].rsplit(":", 1)[0]
        record["eventSourceARN"] = f"{arn}:{sqs_name(queue.spec.name, fifo)}"
        records.append(record)
    return {"Records": records}


def http_event(path: str, body: bytes, headers: dict[str, str], *, function_url: bool = False,
               method: str = "POST", query: str = "") -> dict[str, Any]:
    """An HTTP API (or function URL) payload 2.0 event for one request."""
    event = fixture("function_url_event" if function_url else "http_api_event")
    event["rawPath"] = path
    event["requestContext"]["http"]["path"] = path
    event["requestContext"]["http"]["method"] = method
    event["rawQueryString"] = query
    event["headers"] = {**{k: v for k, v in event["headers"].items()
                           if k not in ("content-length", "content-type")},
                        "content-type": "application/json",
                        **{k.lower(): v for k, v in headers.items()}}
    if function_url:  # function URLs hand bodies over base64-encoded unless they are text
        event["body"] = base64.b64encode(body).decode()
        event["isBase64Encoded"] = True
    else:
        event["body"] = body.decode("utf-8")
        event["isBase64Encoded"] = False
    return event


def meta_event(payload: dict[str, Any], app_secret: str | None) -> dict[str, Any]:
    body = dumps(payload)
    headers = {} if app_secret is None else {"X-Hub-Signature-256": sign(body, app_secret)}
    return http_event("/webhooks/meta", body, headers)


class DelegatingQueue(Queue):
    """A queue that passes every call to `queue` (a base for test queues that add a hook)."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self.spec = queue.spec

    async def send(self, body: bytes, *, group_id: str | None = None,
                   dedup_id: str | None = None, delay: float = 0.0) -> None:
        await self.queue.send(body, group_id=group_id, dedup_id=dedup_id, delay=delay)

    async def send_batch(self, messages: list[OutgoingMessage]) -> None:
        await self.queue.send_batch(messages)

    async def receive(self, max_messages: int = 10, *, visibility_timeout: float | None = None,
                      wait_seconds: float = 0.0) -> list[ReceivedMessage]:
        return await self.queue.receive(max_messages, visibility_timeout=visibility_timeout,
                                        wait_seconds=wait_seconds)

    async def ack(self, receipts: list[str]) -> None:
        await self.queue.ack(receipts)

    async def release(self, receipt: str, delay: float = 0.0, *, reason: str | None = None,
                      count: bool = True) -> None:
        await self.queue.release(receipt, delay, reason=reason, count=count)

    async def dead_letter(self, receipt: str, reason: str) -> None:
        await self.queue.dead_letter(receipt, reason)

    async def extend_visibility(self, receipt: str, seconds: float) -> bool:
        return await self.queue.extend_visibility(receipt, seconds)

    async def depth(self) -> dict[str, int]:
        return await self.queue.depth()

    async def dead_letters(self, limit: int = 100) -> list[ReceivedMessage]:
        return await self.queue.dead_letters(limit)

    async def redrive(self, message_ids: list[str] | None = None) -> int:
        return await self.queue.redrive(message_ids)

    async def discard(self, message_ids: list[str] | None = None) -> int:
        return await self.queue.discard(message_ids)


@dataclass
class LambdaWorld:
    registry: Registry
    broker: CredentialsBroker
    fake: FakeProvider
    fake_url: str
    channel: Channel
    invocations: Counter[str] = field(default_factory=Counter)

    @property
    def app(self) -> runtime.Container:
        return runtime.container()

    def queue(self, name: str) -> Queue:
        return self.app.gateway.queues[name]

    def invoke(self, name: str, handler: Handler, event: dict[str, Any],
               context: LambdaContext | None = None) -> dict[str, Any]:
        self.invocations[name] += 1
        return handler(event, context or LambdaContext())

    def receive(self, name: str, max_messages: int = 10) -> list[ReceivedMessage]:
        return self.app.run(self.queue(name).receive(max_messages))

    def deliver(self, name: str, function: str, handler: Handler, max_messages: int = 10
                ) -> tuple[list[ReceivedMessage], list[str]]:
        """One batch of `name` through `handler`, as Lambda's event source mapping does it:
        (the messages handed over, the message ids reported failed); nothing if the queue
        had nothing to receive (Lambda invokes no function then)."""
        queue = self.queue(name)
        messages = self.receive(name, max_messages)
        if not messages:
            return [], []
        response = self.invoke(function, handler, sqs_event(queue, messages))
        failed = [item["itemIdentifier"] for item in response["batchItemFailures"]]
        done = [m.receipt for m in messages if m.message_id not in failed]
        if done:
            self.app.run(queue.ack(done))
        return messages, failed

    def depth(self, name: str) -> dict[str, int]:
        return self.app.run(self.queue(name).depth())

    def inbound_rows(self, tenant: str) -> list[dict[str, Any]]:
        engine = self.broker.tenant_store(tenant).engine
        with engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.select(t.messages)).mappings()]

    def outbox(self, tenant: str) -> dict[int, dict[str, Any]]:
        engine = self.broker.tenant_store(tenant).engine
        with engine.connect() as conn:
            rows = conn.execute(sa.select(t.outbound_messages)).mappings().all()
        return {int(r["id"]): dict(r) for r in rows}


class AdoptingQueue(DelegatingQueue):
    """The SQLite queue with the hook an adapter offers when it can adopt Lambda's records
    (`adopt_received`, SQS ReceiveMessage-shaped messages in): SQLite knows its own receipts,
    so it can then dead-letter them as an adopting adapter would."""

    def __init__(self, queue: Queue) -> None:
        super().__init__(queue)
        self.adopted: list[dict[str, Any]] = []

    async def adopt_received(self, messages: list[dict[str, Any]]) -> list[ReceivedMessage]:
        self.adopted.extend(messages)
        return [ReceivedMessage(
            body=str(m["Body"]).encode(), receipt=str(m["ReceiptHandle"]),
            receive_count=int(m["Attributes"]["ApproximateReceiveCount"]),
            message_id=str(m["MessageId"]), group_id=m["Attributes"].get("MessageGroupId"),
            sent_at=int(m["Attributes"]["SentTimestamp"]) / 1000) for m in messages]


def lambda_record(message: dict[str, Any], arn: str) -> dict[str, Any]:
    """An SQS message of a ReceiveMessage answer as the record Lambda hands a function."""
    attributes = {}
    for name, value in (message.get("MessageAttributes") or {}).items():
        converted = {"dataType": value["DataType"], "stringListValues": [],
                     "binaryListValues": []}
        if "StringValue" in value:
            converted["stringValue"] = value["StringValue"]
        if "BinaryValue" in value:
            converted["binaryValue"] = base64.b64encode(value["BinaryValue"]).decode()
        attributes[name] = converted
    return {"messageId": message["MessageId"], "receiptHandle": message["ReceiptHandle"],
            "body": message["Body"], "attributes": message.get("Attributes") or {},
            "messageAttributes": attributes, "md5OfBody": message.get("MD5OfBody"),
            "eventSource": "aws:sqs", "eventSourceARN": arn, "awsRegion": "us-east-1"}


class EventSourceMapping:
    """What Lambda does for an SQS trigger, with its own SQS client: receive a batch, invoke
    the function, delete what it did not report failed. `calls` counts its ReceiveMessage and
    DeleteMessageBatch requests (what Lambda's poller costs per batch) and invocations."""

    def __init__(self, prefix: str) -> None:
        import boto3

        from wacloud.adapters.queue.sqs.names import sqs_name

        self.client = boto3.client("sqs")
        self.calls: Counter[str] = Counter()
        self.urls: dict[str, str] = {}
        self.arns: dict[str, str] = {}
        for name, spec in queue_specs(load_settings()).items():
            if name.endswith(".dlq"):
                continue
            url = str(self.client.get_queue_url(
                QueueName=sqs_name(prefix, name, fifo=spec.fifo))["QueueUrl"])
            self.urls[name] = url
            self.arns[name] = self.client.get_queue_attributes(
                QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]

    def counts(self, name: str) -> dict[str, int]:
        attributes = self.client.get_queue_attributes(QueueUrl=self.urls[name], AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        return {"visible": int(attributes["ApproximateNumberOfMessages"]),
                "not_visible": int(attributes["ApproximateNumberOfMessagesNotVisible"])}

    def deliver(self, name: str, handler: Handler) -> tuple[list[dict[str, Any]], list[str]]:
        """One batch of `name` through `handler`: (the SQS messages handed over, the message
        ids reported failed); nothing if there was nothing to receive."""
        url = self.urls[name]
        fifo = url.endswith(".fifo")
        messages = self.client.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0,
            MessageSystemAttributeNames=["All"], MessageAttributeNames=["All"]
        ).get("Messages", [])
        if not messages:  # Lambda's empty long polls are a cost of time, not of messages
            return [], []
        self.calls[f"{'fifo' if fifo else 'standard'} ReceiveMessage"] += 1
        self.calls["invocation"] += 1
        answer = handler({"Records": [lambda_record(m, self.arns[name]) for m in messages]},
                         LambdaContext())
        failed = [item["itemIdentifier"] for item in answer["batchItemFailures"]]
        done = [m for m in messages if m["MessageId"] not in failed]
        if done:
            self.calls[f"{'fifo' if fifo else 'standard'} DeleteMessageBatch"] += 1
            self.client.delete_message_batch(QueueUrl=url, Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)])
        return messages, failed
