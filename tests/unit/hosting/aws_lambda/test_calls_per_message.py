"""The AWS requests the Lambda handlers make per message, counted, and checked against the
table `deploy/aws/README.md` computes its costs from (so that the costs stated follow the
code): SQS requests (the handlers' own, and Lambda's poller receiving and deleting each batch),
S3 writes, Lambda invocations and HTTP API requests, with batches of 10 as the template
configures them."""

from __future__ import annotations

import re
import time
import uuid
from collections import Counter
from pathlib import Path

from tests.unit.hosting.aws_lambda.conftest import APP_SECRET, PNID, WABA
from tests.unit.hosting.aws_lambda.harness import LambdaWorld, fixture, meta_event
from tests.unit.hosting.aws_lambda.test_pipeline import insert_rows, text_webhook
from wacloud.bootstrap import queue_specs
from wacloud.domain.model import MediaStatus, OutboundStatus
from wacloud.hosting.aws_lambda import collector, media, receiver, saver, sender, writer
from wacloud.settings import load_settings
from wacloud.stages.envelopes import INBOUND_MEDIA, INBOUND_RAW, OUTBOUND_RESULTS, OUTBOUND_SEND
from wacloud.testing.webhooks import meta_envelope

README = Path(__file__).resolve().parents[4] / "deploy" / "aws" / "README.md"
BATCH = 10  # the template's BatchSize, and the messages per test run
COLUMNS = ("inbound text", "inbound media", "outbound")
ROWS = ("SQS standard", "SQS FIFO", "S3 PUT", "Lambda invocations", "HTTP API requests")


def per_message(world: LambdaWorld) -> dict[str, float]:
    """The requests counted since the last call, per message, by kind; then starts over."""
    fifo = {name: spec.fifo for name, spec in queue_specs(load_settings()).items()}
    totals: Counter[str] = Counter()
    for key, count in world.requests.items():
        subject = key.split(" ", 1)[0]
        if subject == "s3":
            totals["S3 PUT"] += count if "PutObject" in key else 0
        else:
            totals["SQS FIFO" if fifo[subject] else "SQS standard"] += count
    totals["Lambda invocations"] = sum(world.invocations.values())
    totals["HTTP API requests"] = world.invocations["receiver"]
    world.requests.clear()
    world.invocations.clear()
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


def image_webhook(world: LambdaWorld, i: int) -> dict[str, object]:
    image = world.fake.add_media(b"\xff\xd8\xff\xe0" + bytes(2044), mime_type="image/jpeg")
    message = {"from": "5511987650000", "id": f"wamid.image-{i}-{uuid.uuid4().hex[:6]}",
               "timestamp": str(int(time.time())), "type": "image",
               "image": {"id": image.id, "mime_type": "image/jpeg",
                         "sha256": image.sha256_b64}}
    return meta_envelope(PNID, WABA, "5511940001234", [message])


def test_requests_per_message_match_the_deploy_readme(world: LambdaWorld) -> None:
    world.count_calls()
    measured: dict[str, dict[str, float]] = {}

    for i in range(BATCH):
        answer = world.invoke("receiver", receiver.handler,
                              meta_event(text_webhook(f"text {i}"), APP_SECRET))
        assert answer["statusCode"] == 200
    assert world.deliver(INBOUND_RAW, "writer", writer.handler)[1] == []
    assert len(world.inbound_rows("acme")) == BATCH
    measured["inbound text"] = per_message(world)

    for i in range(BATCH):
        answer = world.invoke("receiver", receiver.handler,
                              meta_event(image_webhook(world, i), APP_SECRET))
        assert answer["statusCode"] == 200
    assert world.deliver(INBOUND_RAW, "writer", writer.handler)[1] == []
    assert world.deliver(INBOUND_MEDIA, "media", media.handler)[1] == []
    images = [r for r in world.inbound_rows("acme") if r["type"] == "image"]
    assert len(images) == BATCH
    assert {r["media_status"] for r in images} == {MediaStatus.STORED.value}
    measured["inbound media"] = per_message(world)

    ids = insert_rows(world, [f"55119333{i:05d}" for i in range(BATCH)])
    assert world.invoke("collector", collector.handler,
                        fixture("schedule_event"))["queued"] == BATCH
    assert world.deliver(OUTBOUND_SEND, "sender", sender.handler)[1] == []
    assert world.deliver(OUTBOUND_RESULTS, "saver", saver.handler)[1] == []
    assert {world.outbox("acme")[i]["status"] for i in ids} == {OutboundStatus.ACCEPTED}
    # The collector runs on its schedule whatever the traffic: its invocation is a fixed
    # cost (README), not one of the message's.
    world.invocations["collector"] -= 1
    measured["outbound"] = per_message(world)

    assert measured == readme_table(), (
        f"measured requests per message: {measured}; update deploy/aws/README.md")
