"""The AWS requests the Lambda functions make per message, counted on SQS and S3 (moto's server,
the real adapters: every boto3 call their clients make), plus Lambda's poller receiving and
deleting each batch, invocations and HTTP API requests; checked against the table
`deploy/aws/README.md` computes its costs from, so that the costs stated follow the code.
Batches of 10, as the template configures them; a warm container (the once-per-container calls,
queue URLs and the bucket check, are not a message's)."""

from __future__ import annotations

import re
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from tests.unit.hosting.aws_lambda.conftest import APP_SECRET, PNID, WABA
from tests.unit.hosting.aws_lambda.harness import (
    EventSourceMapping,
    LambdaWorld,
    fixture,
    meta_event,
)
from tests.unit.hosting.aws_lambda.test_pipeline import insert_rows, text_webhook
from wacloud.domain.model import MediaStatus, OutboundStatus
from wacloud.hosting.aws_lambda import collector, media, receiver, saver, sender, writer
from wacloud.stages.envelopes import INBOUND_MEDIA, INBOUND_RAW, OUTBOUND_RESULTS, OUTBOUND_SEND
from wacloud.testing.webhooks import meta_envelope

README = Path(__file__).resolve().parents[4] / "deploy" / "aws" / "README.md"
BATCH = 10  # the template's BatchSize, and the messages per measured run
COLUMNS = ("inbound text", "inbound media", "outbound")
ROWS = ("SQS standard", "SQS FIFO", "S3 PUT", "S3 HEAD", "Lambda invocations",
        "HTTP API requests")


class Calls:
    """Every request the functions' boto3 clients make, by kind."""

    def __init__(self, world: LambdaWorld, sqs: EventSourceMapping) -> None:
        self.world = world
        self.sqs = sqs
        self.counted: Counter[str] = Counter()
        gateway = world.app.gateway
        for client in (gateway.queue_broker.client,  # type: ignore[attr-defined]
                       gateway.media_store.client):  # type: ignore[attr-defined]
            # Once per API call, with the call's own parameters (the queue URL).
            client.meta.events.register("before-parameter-build", self.count)

    def count(self, event_name: str, params: dict[str, Any], **_: Any) -> None:
        _, service, operation = event_name.split(".", 2)
        if service == "sqs":
            fifo = str(params.get("QueueUrl", "")).endswith(".fifo")
            self.counted["SQS FIFO" if fifo else "SQS standard"] += 1
        elif operation == "PutObject":
            self.counted["S3 PUT"] += 1
        elif operation == "HeadObject":
            self.counted["S3 HEAD"] += 1
        else:
            self.counted[f"{service} {operation}"] += 1

    def per_message(self) -> dict[str, float]:
        """The requests since the last call, per message, by row; then starts over."""
        totals = Counter(self.counted)
        for key, count in self.sqs.calls.items():
            if key != "invocation":
                totals["SQS FIFO" if key.startswith("fifo") else "SQS standard"] += count
        totals["Lambda invocations"] = (sum(self.world.invocations.values())
                                        + self.sqs.calls["invocation"])
        totals["HTTP API requests"] = self.world.invocations["receiver"]
        unexpected = set(totals) - set(ROWS)
        assert not unexpected, f"requests the README does not price: {unexpected}"
        self.counted.clear()
        self.sqs.calls.clear()
        self.world.invocations.clear()
        return {row: round(totals[row] / BATCH, 3) for row in ROWS}


def readme_table() -> dict[str, dict[str, float]]:
    """{column: {row: requests per message}} from the README's table of measured calls."""
    text = README.read_text("utf-8")
    table: dict[str, dict[str, float]] = {column: {} for column in COLUMNS}
    for row in ROWS:
        match = re.search(rf"^\| {re.escape(row)} \|(.*)\|$", text, re.MULTILINE)
        assert match, f"{README} has no table row {row!r}"
        cells = [float(cell.strip()) for cell in match.group(1).split("|")]
        assert len(cells) == len(COLUMNS), f"row {row!r}: {cells}"
        for column, value in zip(COLUMNS, cells, strict=True):
            table[column][row] = value
    return table


def image_webhook(world: LambdaWorld) -> dict[str, object]:
    image = world.fake.add_media(b"\xff\xd8\xff\xe0" + uuid.uuid4().bytes * 128,
                                 mime_type="image/jpeg")
    message = {"from": "5511987650000", "id": f"wamid.image-{uuid.uuid4().hex}",
               "timestamp": str(int(time.time())), "type": "image",
               "image": {"id": image.id, "mime_type": "image/jpeg",
                         "sha256": image.sha256_b64}}
    return meta_envelope(PNID, WABA, "5511940001234", [message])


def one_round(world: LambdaWorld, sqs: EventSourceMapping, calls: Calls, round_: int
              ) -> dict[str, dict[str, float]]:
    measured: dict[str, dict[str, float]] = {}
    for i in range(BATCH):
        answer = world.invoke("receiver", receiver.handler,
                              meta_event(text_webhook(f"text {round_} {i}"), APP_SECRET))
        assert answer["statusCode"] == 200
    assert sqs.deliver(INBOUND_RAW, writer.handler)[1] == []
    assert len(world.inbound_rows("acme")) == BATCH * (2 * round_ + 1)
    measured["inbound text"] = calls.per_message()

    for _ in range(BATCH):
        answer = world.invoke("receiver", receiver.handler,
                              meta_event(image_webhook(world), APP_SECRET))
        assert answer["statusCode"] == 200
    assert sqs.deliver(INBOUND_RAW, writer.handler)[1] == []
    assert sqs.deliver(INBOUND_MEDIA, media.handler)[1] == []
    images = [r for r in world.inbound_rows("acme") if r["type"] == "image"]
    assert len(images) == BATCH * (round_ + 1)
    assert {r["media_status"] for r in images} == {MediaStatus.STORED.value}
    measured["inbound media"] = calls.per_message()

    ids = insert_rows(world, [f"5511933{round_}{i:05d}" for i in range(BATCH)])
    assert world.invoke("collector", collector.handler,
                        fixture("schedule_event"))["queued"] == BATCH
    assert sqs.deliver(OUTBOUND_SEND, sender.handler)[1] == []
    assert sqs.deliver(OUTBOUND_RESULTS, saver.handler)[1] == []
    assert {world.outbox("acme")[i]["status"] for i in ids} == {OutboundStatus.ACCEPTED}
    # The collector runs on its schedule whatever the traffic: a fixed cost (README), not
    # one of the message's.
    world.invocations["collector"] -= 1
    measured["outbound"] = calls.per_message()
    return measured


def test_requests_per_message_match_the_deploy_readme(world: LambdaWorld,
                                                      sqs: EventSourceMapping) -> None:
    calls = Calls(world, sqs)
    one_round(world, sqs, calls, 0)  # a cold container: queue URLs, the bucket check
    measured = one_round(world, sqs, calls, 1)
    assert measured == readme_table(), (
        f"measured requests per message: {measured}; update deploy/aws/README.md")
