"""Commands for the dead-letter queues of every stage: list, replay, discard.

A dead letter is acknowledged work that stopped (a webhook answered 200, a send result, a media
copy): nothing may sit there unseen. Listings show ids, sizes, times and the reason of the last
failure, never the bodies (message texts, phone numbers, media links). Discards are written,
with the operator's reason, to `<data dir>/dlq-discards.jsonl` and the log.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer

from wacloud.adapters.queue.base import Queue, QueueMissing
from wacloud.admin.operations import (
    dead_letter_summary,
    discard_dead_letters,
    replay_queue_dead_letters,
)
from wacloud.bootstrap import open_credentials, opened_queues, queue_specs
from wacloud.cli.common import (
    DataDir,
    JsonOut,
    dlq_app,
    emit,
    emit_rows,
    fail,
    progress,
    settings_for,
)
from wacloud.settings import Settings
from wacloud.stages import envelopes

log = logging.getLogger("wacloud.dlq")
T = TypeVar("T")

QueueOpt = Annotated[str | None, typer.Option(
    "--queue", help="A queue (inbound.raw, inbound.events, inbound.media, outbound.send, "
    "outbound.results); NAME.dlq is accepted too.")]
Ids = Annotated[list[str] | None, typer.Argument(help="Dead letter ids (see `dlq list`).")]
All = Annotated[bool, typer.Option("--all", help="Every dead letter of the queue.")]


def _queue_names(settings: Settings) -> list[str]:
    # `outbound.send.dlq` is the send queue's own dead-letter queue, not a source of its own.
    return [name for name in queue_specs(settings) if not name.endswith(".dlq")]


def _source_name(settings: Settings, name: str) -> str:
    source = name.removesuffix(".dlq")
    known = _queue_names(settings)
    if source not in known:
        fail(f"unknown queue {name!r}; one of: {', '.join(known)}")
    return source


def _with_queues(settings: Settings,
                 work: Callable[[dict[str, Queue]], Awaitable[T]]) -> T:
    async def run() -> T:
        async with opened_queues(settings) as broker:
            specs = queue_specs(settings)
            return await work({name: broker.queue(specs[name]) for name in _queue_names(settings)})

    try:
        return asyncio.run(run())
    except QueueMissing as exc:  # a broker provisioned beforehand (RabbitMQ, SQS)
        fail(str(exc))
        raise


def _who(item: dict[str, Any]) -> list[str]:
    who = [str(item["tenant"])] if item.get("tenant") else []
    if "row_id" in item and item["queue"] == envelopes.OUTBOUND_SEND:
        who += [f"row {item['row_id']}", f"{item.get('channel')} -> {item.get('to')}",
                str(item.get("type"))]
    return who


def _text(item: dict[str, Any]) -> str:
    who = "".join(f"\t{part}" for part in _who(item))
    return (f"{item['id']}\t{item['queue']}\t{item['size']} bytes\tsent {item['sent_at']}"
            f"\treceived {item['receive_count']}x{who}\t{item['reason'] or '-'}")


def _check_choice(ids: list[str] | None, all_items: bool) -> None:
    if bool(ids) == all_items:
        fail("give dead letter IDs or --all")


@dlq_app.command("list")
def dlq_list(queue: QueueOpt = None, data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """Dead letters of every queue (or one): id, queue, size, times, reason; never bodies."""
    settings = settings_for(data_dir)
    names = _queue_names(settings) if queue is None else [_source_name(settings, queue)]

    async def work(queues: dict[str, Queue]) -> list[dict[str, Any]]:
        return [dead_letter_summary(name, letter) for name in names
                for letter in await queues[name].dead_letters(limit=10_000)]

    items = _with_queues(settings, work)
    emit_rows(items, as_json, ["id", "queue", "bytes", "sent", "receives", "tenant / row",
                               "reason"], [_text(item) for item in items],
              cells=[[item["id"], item["queue"], item["size"], item["sent_at"],
                      item["receive_count"], " ".join(_who(item)), item["reason"] or "-"]
                     for item in items])


@dlq_app.command("replay")
def dlq_replay(ids: Ids = None, all_items: All = False, queue: QueueOpt = None,
               data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """Put dead letters back on their queue (outbound rows go back to queued first).
    Without --queue: outbound.send."""
    _check_choice(ids, all_items)
    settings = settings_for(data_dir)
    name = envelopes.OUTBOUND_SEND if queue is None else _source_name(settings, queue)
    chosen = None if all_items else list(ids or [])

    async def work(queues: dict[str, Queue]) -> list[str]:
        broker = open_credentials(settings)
        try:
            count = len(chosen) if chosen is not None else (await queues[name].depth())["dead"]
            advance.set_total(count)
            return await replay_queue_dead_letters(broker, name, queues[name], chosen, advance)
        finally:
            broker.close()

    with progress(f"replaying dead letters of {name}", None, as_json) as advance:
        replayed = _with_queues(settings, work)
    emit({"queue": name, "replayed": replayed}, as_json,
         f"replayed {len(replayed)} message(s) to {name}")


@dlq_app.command("discard")
def dlq_discard(reason: Annotated[str, typer.Option("--reason", help="Why (kept in the record).")],
                queue: Annotated[str, typer.Option("--queue", help="The queue.")],
                ids: Ids = None, all_items: All = False, data_dir: DataDir = None,
                as_json: JsonOut = False) -> None:
    """Delete dead letters for good; the reason is recorded in dlq-discards.jsonl."""
    _check_choice(ids, all_items)
    if not reason.strip():
        fail("give a --reason")
    settings = settings_for(data_dir)
    name = _source_name(settings, queue)
    chosen = None if all_items else list(ids or [])

    async def work(queues: dict[str, Queue]) -> dict[str, Any]:
        return await discard_dead_letters(settings.data_dir, name, queues[name], chosen, reason)

    record = _with_queues(settings, work)
    emit({"queue": name, "discarded": record["ids"], "reason": record["reason"]}, as_json,
         f"discarded {len(record['ids'])} message(s) of {name}")
