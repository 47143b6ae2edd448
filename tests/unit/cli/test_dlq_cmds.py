"""`wacloud dlq` in-process over a real queue file: every stage's dead letters are listed
(without their bodies), replayed to their queue, or discarded with a recorded reason."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from typer.testing import CliRunner

from wacloud.adapters.queue.sqlite.broker import SqliteBroker
from wacloud.bootstrap import init_data_dir, queue_specs
from wacloud.cli import app
from wacloud.settings import load_settings
from wacloud.stages import envelopes
from wacloud.stages.envelopes import RawWebhook, dumps

PHONE = "5511987654321"


def run(data_dir: Path, *args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    return result.output


def lines(output: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


async def dead_letter(data_dir: Path, queue: str, body: bytes, reason: str) -> None:
    settings = load_settings(data_dir)
    broker = SqliteBroker(settings.queue_path)
    try:
        q = broker.queue(queue_specs(settings)[queue])
        await q.send(body)
        [msg] = await q.receive(1)
        await q.dead_letter(msg.receipt, reason)
    finally:
        await broker.close()


def test_list_replay_and_discard_every_queue(tmp_path: Path) -> None:
    init_data_dir(load_settings(tmp_path))
    webhook = RawWebhook("meta", None, 1.0, dumps({"from": PHONE, "text": "olá"})).encode()
    media_job = dumps({"tenant": "acme", "message": {"from": PHONE}})
    asyncio.run(dead_letter(tmp_path, envelopes.INBOUND_RAW, webhook,
                            "database unavailable for 86400 s: OperationalError: locked"))
    asyncio.run(dead_letter(tmp_path, envelopes.INBOUND_MEDIA, media_job, "KeyError: 'x'"))
    asyncio.run(dead_letter(tmp_path, envelopes.OUTBOUND_RESULTS, dumps({"tenant": "acme",
                                                                         "row_id": 7}), "boom"))

    listed = run(tmp_path, "dlq", "list", "--json")
    assert PHONE not in listed and "olá" not in listed  # sizes and reasons, never bodies
    items = {item["queue"]: item for item in lines(listed)}
    assert set(items) == {envelopes.INBOUND_RAW, envelopes.INBOUND_MEDIA,
                          envelopes.OUTBOUND_RESULTS}
    raw = items[envelopes.INBOUND_RAW]
    assert raw["reason"] == "database unavailable for 86400 s: OperationalError: locked"
    assert raw["size"] == len(webhook) and raw["provider"] == "meta"
    assert items[envelopes.INBOUND_MEDIA]["tenant"] == "acme"
    assert items[envelopes.OUTBOUND_RESULTS]["row_id"] == 7
    text = run(tmp_path, "dlq", "list")
    assert "OperationalError: locked" in text and PHONE not in text
    only = lines(run(tmp_path, "dlq", "list", "--queue", "inbound.media.dlq", "--json"))
    assert [item["queue"] for item in only] == [envelopes.INBOUND_MEDIA]

    replayed = json.loads(run(tmp_path, "dlq", "replay", "--queue", "inbound.raw",
                              str(raw["id"]), "--json"))
    assert replayed == {"queue": envelopes.INBOUND_RAW, "replayed": [raw["id"]]}

    async def raw_is_live() -> bool:
        settings = load_settings(tmp_path)
        broker = SqliteBroker(settings.queue_path)
        try:
            q = broker.queue(queue_specs(settings)[envelopes.INBOUND_RAW])
            [msg] = await q.receive(1)
            return msg.body == webhook and (await q.depth())["dead"] == 0
        finally:
            await broker.close()

    assert asyncio.run(raw_is_live())

    discarded = json.loads(run(tmp_path, "dlq", "discard", "--queue", "inbound.media", "--all",
                               "--reason", "media of a deleted tenant", "--json"))
    assert discarded["discarded"] == [items[envelopes.INBOUND_MEDIA]["id"]]
    record = json.loads((tmp_path / "dlq-discards.jsonl").read_text().splitlines()[-1])
    assert record["reason"] == "media of a deleted tenant"
    assert record["queue"] == envelopes.INBOUND_MEDIA and PHONE not in json.dumps(record)
    assert [item["queue"] for item in lines(run(tmp_path, "dlq", "list", "--json"))] == [
        envelopes.OUTBOUND_RESULTS]


def test_choices_are_checked(tmp_path: Path) -> None:
    init_data_dir(load_settings(tmp_path))
    for args in (["dlq", "replay", "--queue", "inbound.raw"],
                 ["dlq", "replay", "--queue", "nope", "--all"],
                 ["dlq", "discard", "--queue", "inbound.raw", "--all", "--reason", " "],
                 ["dlq", "discard", "--queue", "inbound.raw", "1", "--all", "--reason", "x"]):
        result = CliRunner().invoke(app, [*args, "--data-dir", str(tmp_path)])
        assert result.exit_code != 0, args


def test_a_letter_moved_for_its_receives_alone_says_so() -> None:
    # The broker moved it (SQS's redrive policy, RabbitMQ's delivery limit): no failure was
    # recorded, and an empty reason would tell the operator nothing.
    from wacloud.adapters.queue.base import ReceivedMessage
    from wacloud.admin.operations import dead_letter_summary

    moved = ReceivedMessage(b"{}", "", 6, "m1", attributes={"reason": ""})
    assert dead_letter_summary("outbound.results", moved)["reason"] == (
        "no failure recorded: received 6 times without being acknowledged (the processes "
        "handling it died or ran out of time)")
    failed = ReceivedMessage(b"{}", "", 2, "m2", attributes={"reason": "ValueError: bad"})
    assert dead_letter_summary("outbound.results", failed)["reason"] == "ValueError: bad"
