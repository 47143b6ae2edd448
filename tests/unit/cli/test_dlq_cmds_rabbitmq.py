"""`wacloud dlq` on RabbitMQ (WACLOUD_QUEUE_URL=amqp://...): the same commands through the
queue port, on a fresh virtual host whose queues `wacloud queues create` provisions."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from wacloud.adapters.queue import open_queue_broker
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


def items(output: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


async def dead_letter(data_dir: Path, letters: dict[str, bytes]) -> None:
    settings = load_settings(data_dir)
    broker = open_queue_broker(settings.queues, settings)
    try:
        specs = queue_specs(settings)
        for name, body in letters.items():
            queue = broker.queue(specs[name])
            await queue.send(body)
            [msg] = await queue.receive(1, wait_seconds=5)
            await queue.dead_letter(msg.receipt, f"gave up on {name}")
    finally:
        await broker.close()


async def live_bodies(data_dir: Path, name: str) -> list[bytes]:
    settings = load_settings(data_dir)
    broker = open_queue_broker(settings.queues, settings)
    try:
        got = await broker.queue(queue_specs(settings)[name]).receive(10, wait_seconds=5)
        return [m.body for m in got]
    finally:
        await broker.close()


def test_list_replay_and_discard_on_rabbitmq(tmp_path: Path, rabbitmq_url: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WACLOUD_QUEUE_URL", f"{rabbitmq_url}?prefix=cli")
    init_data_dir(load_settings(tmp_path))
    created = json.loads(run(tmp_path, "queues", "create", "--json"))
    assert "cli.inbound.raw" in created["queues"] and "cli.outbound.send.p0" in created["queues"]
    assert json.loads(run(tmp_path, "queues", "create", "--json")) == created  # idempotent
    webhook = RawWebhook("meta", None, 1.0, dumps({"from": PHONE, "text": "olá"})).encode()
    media_job = dumps({"tenant": "acme", "message": {"from": PHONE}})
    asyncio.run(dead_letter(tmp_path, {envelopes.INBOUND_RAW: webhook,
                                       envelopes.INBOUND_MEDIA: media_job}))

    listed = run(tmp_path, "dlq", "list", "--json")
    assert PHONE not in listed and "olá" not in listed  # sizes and reasons, never bodies
    by_queue = {item["queue"]: item for item in items(listed)}
    assert set(by_queue) == {envelopes.INBOUND_RAW, envelopes.INBOUND_MEDIA}
    raw = by_queue[envelopes.INBOUND_RAW]
    assert raw["reason"] == f"gave up on {envelopes.INBOUND_RAW}"
    assert raw["size"] == len(webhook) and raw["provider"] == "meta"

    replayed = json.loads(run(tmp_path, "dlq", "replay", "--queue", "inbound.raw",
                              str(raw["id"]), "--json"))
    assert replayed == {"queue": envelopes.INBOUND_RAW, "replayed": [raw["id"]]}
    assert asyncio.run(live_bodies(tmp_path, envelopes.INBOUND_RAW)) == [webhook]

    discarded = json.loads(run(tmp_path, "dlq", "discard", "--queue", "inbound.media", "--all",
                               "--reason", "media of a deleted tenant", "--json"))
    assert discarded["discarded"] == [by_queue[envelopes.INBOUND_MEDIA]["id"]]
    assert items(run(tmp_path, "dlq", "list", "--json")) == []


def test_a_missing_queue_is_named(tmp_path: Path, rabbitmq_url: str,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WACLOUD_QUEUE_URL", rabbitmq_url)
    init_data_dir(load_settings(tmp_path))
    result = CliRunner().invoke(app, ["dlq", "list", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "queue 'inbound.raw' does not exist" in result.output
    assert "wacloud queues create" in result.output
    assert "guest:guest" not in result.output  # the address, never its password
