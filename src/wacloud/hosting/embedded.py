"""Embedded hosting: the HTTP server and every stage in one process, on one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import uvicorn

from wacloud.bootstrap import Gateway, build_gateway
from wacloud.hosting.http import create_app
from wacloud.settings import Settings

log = logging.getLogger(__name__)


async def run_stages(gateway: Gateway) -> None:
    """Run every stage and the registry watcher until `gateway.stop` is set."""
    tasks = [asyncio.create_task(r.run(gateway.stop)) for r in gateway.runners()]
    tasks.append(asyncio.create_task(
        gateway.broker.watch(gateway.settings.registry_poll_s, gateway.stop)))
    await asyncio.gather(*tasks)


async def serve(settings: Settings, host: str, port: int,
                started: asyncio.Event | None = None) -> None:
    gateway = build_gateway(settings)
    app = create_app(gateway)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            lifespan="off", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    stages = asyncio.create_task(run_stages(gateway))
    if started is not None:
        async def announce() -> None:
            while not server.started:
                await asyncio.sleep(0.02)
            started.set()
        announcer = asyncio.create_task(announce())
    try:
        await server.serve()
    finally:
        if started is not None:
            announcer.cancel()
        gateway.stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await stages
        await gateway.close()
