"""`wacloud queues create`: provision every queue of the configured broker (and the media
bucket), idempotently; run it after `wacloud init` and before `serve` or `worker` on SQS or
RabbitMQ (the embedded SQLite queues need nothing: the command only confirms them)."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

import typer

from wacloud.adapters.queue import public_queue_url, verify_queues
from wacloud.adapters.queue.base import QueueMissing
from wacloud.bootstrap import open_media, open_queues, opened_queues, queue_specs
from wacloud.cli.common import DataDir, JsonOut, app, emit, fail, settings_for
from wacloud.settings import Settings

queues_app = typer.Typer(help="The queues of the configured broker (WACLOUD_QUEUE_URL).",
                         no_args_is_help=True)
app.add_typer(queues_app, name="queues")


async def _create(settings: Settings) -> dict[str, Any]:
    media = open_media(settings)
    try:
        bucket = await media.ensure_bucket()
        broker = open_queues(settings, media)
        try:
            names = await broker.create_queues(list(queue_specs(settings).values()))
        finally:
            await broker.close()
    finally:
        await media.close()
    return {"queue_url": public_queue_url(settings.queues), "queues": names, "bucket": bucket}


def _one_line(exc: BaseException, settings: Settings) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    password = urlsplit(settings.queue_url).password if settings.queue_url else None
    return text.replace(password, "***") if password else text


@queues_app.command("create")
def create(data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """Create every queue, its dead-letter queue and the media bucket if missing (idempotent)."""
    settings = settings_for(data_dir)
    try:
        result = asyncio.run(_create(settings))
    except Exception as exc:
        fail(f"could not create the queues on {public_queue_url(settings.queues)}: "
             f"{type(exc).__name__}: {_one_line(exc, settings)}")
        return
    bucket = f"; media bucket {result['bucket']}" if result["bucket"] else ""
    emit(result, as_json, f"{len(result['queues'])} queues ready on {result['queue_url']}"
         f"{bucket}:\n  " + "\n  ".join(result["queues"]))


async def _verify(settings: Settings) -> None:
    async with opened_queues(settings) as broker:
        await verify_queues(broker, queue_specs(settings).values())


def require_queues(settings: Settings) -> None:
    """Stop with one line naming the missing queue, before a process takes any work."""
    try:
        asyncio.run(_verify(settings))
    except QueueMissing as exc:
        fail(str(exc))
    except Exception as exc:
        fail(f"the queues on {public_queue_url(settings.queues)} cannot be reached: "
             f"{type(exc).__name__}: {_one_line(exc, settings)}")
