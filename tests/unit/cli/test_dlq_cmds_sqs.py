"""`wacloud dlq` with `WACLOUD_QUEUE_URL=sqs://?prefix=...` against moto's server: the same
listing, replay and discard as on the embedded queue, through the queue port only (a body over
SQS's 256 KB is read back from the media store)."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from wacloud.adapters.media import open_media_store
from wacloud.adapters.queue import open_queue_broker
from wacloud.bootstrap import init_data_dir, open_registry, queue_specs
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


async def provision_and_dead_letter(data_dir: Path, letters: list[tuple[str, bytes, str]]
                                    ) -> None:
    settings = load_settings(data_dir)
    broker = open_queue_broker(settings.queues, settings,
                               open_media_store(settings.media, settings))
    try:
        specs = queue_specs(settings)
        await broker.create_queues(list(specs.values()))  # what `wacloud queues create` does
        for name, body, reason in letters:
            queue = broker.queue(specs[name])
            await queue.send(body)
            [msg] = await queue.receive(1)
            await queue.dead_letter(msg.receipt, reason)
    finally:
        await broker.close()


async def live_bodies(data_dir: Path, name: str) -> list[bytes]:
    settings = load_settings(data_dir)
    broker = open_queue_broker(settings.queues, settings,
                               open_media_store(settings.media, settings))
    try:
        queue = broker.queue(queue_specs(settings)[name])
        got = await queue.receive(10, wait_seconds=1)
        await queue.ack([m.receipt for m in got])
        return [m.body for m in got]
    finally:
        await broker.close()


def stored_bodies(data_dir: Path) -> list[Path]:
    return [p for p in (data_dir / "media" / "queue-bodies").rglob("*") if p.is_file()]


def test_dlq_commands_on_sqs(tmp_path: Path, aws_env: dict[str, str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WACLOUD_QUEUE_URL", f"sqs://?prefix=wcli{uuid.uuid4().hex[:8]}")
    init_data_dir(load_settings(tmp_path))
    # A webhook over SQS's 256 KB: its body waits in the media store, the letter points to it.
    webhook = RawWebhook("meta", None, 1.0, dumps({"from": PHONE, "text": "olá" * 100_000})
                         ).encode()
    assert len(webhook) > 256 * 1024
    media_job = dumps({"tenant": "acme", "message": {"from": PHONE}})
    asyncio.run(provision_and_dead_letter(tmp_path, [
        (envelopes.INBOUND_RAW, webhook, "database unavailable for 86400 s: locked"),
        (envelopes.INBOUND_MEDIA, media_job, "KeyError: 'x'")]))
    assert len(stored_bodies(tmp_path)) == 1

    listed = run(tmp_path, "dlq", "list", "--json")
    assert PHONE not in listed
    items = {item["queue"]: item for item in lines(listed)}
    assert set(items) == {envelopes.INBOUND_RAW, envelopes.INBOUND_MEDIA}
    raw = items[envelopes.INBOUND_RAW]
    assert raw["reason"] == "database unavailable for 86400 s: locked"
    assert raw["size"] == len(webhook) and raw["provider"] == "meta"
    assert raw["receive_count"] == 1
    assert items[envelopes.INBOUND_MEDIA]["tenant"] == "acme"

    replayed = json.loads(run(tmp_path, "dlq", "replay", "--queue", "inbound.raw.dlq",
                              str(raw["id"]), "--json"))
    assert replayed == {"queue": envelopes.INBOUND_RAW, "replayed": [raw["id"]]}
    assert asyncio.run(live_bodies(tmp_path, envelopes.INBOUND_RAW)) == [webhook]

    discarded = json.loads(run(tmp_path, "dlq", "discard", "--queue", "inbound.media", "--all",
                               "--reason", "media of a deleted tenant", "--json"))
    assert discarded["discarded"] == [items[envelopes.INBOUND_MEDIA]["id"]]
    assert lines(run(tmp_path, "dlq", "list", "--json")) == []
    assert stored_bodies(tmp_path) == []  # the large body went with the replayed one's ack


def test_status_and_parked_replay_read_and_feed_the_configured_queues(
        tmp_path: Path, aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """`status` counts the SQS queues (not an embedded file nobody uses) and `parked replay`
    queues on SQS, where the stage workers of this deployment receive."""
    monkeypatch.setenv("WACLOUD_QUEUE_URL", f"sqs://?prefix=wcli{uuid.uuid4().hex[:8]}")
    settings = load_settings(tmp_path)
    init_data_dir(settings)
    asyncio.run(provision_and_dead_letter(tmp_path, [
        (envelopes.INBOUND_MEDIA, dumps({"tenant": "acme"}), "KeyError: 'x'")]))
    report = json.loads(run(tmp_path, "status", "--json"))
    dead = {q["name"]: q["dead_letters"] for q in report["queues"]}
    assert dead[envelopes.INBOUND_MEDIA] == 1 and dead[envelopes.INBOUND_RAW] == 0
    assert not (tmp_path / "queues.db").exists()

    registry = open_registry(settings)
    try:
        registry.park(stage="receive", reason="cannot parse", payload=dumps(
            {"v": 2, "provider": "whapi", "channel_key": "CH", "received_at": 1.0,
             "kind": "webhook", "signature": None}).decode() + "\n{}", provider="whapi",
                      channel_key="CH")
    finally:
        registry.engine.dispose()
    replayed = json.loads(run(tmp_path, "parked", "replay", "--all", "--json"))
    assert len(replayed["replayed"]) == 1
    [body] = asyncio.run(live_bodies(tmp_path, envelopes.INBOUND_RAW))
    assert RawWebhook.decode(body).provider == "whapi"
