"""Embedded hosting: the HTTP server, the collector, the registry watcher and the network-bound
stages on one event loop, and the other stages in worker processes beside it (or all on the same
loop, with `WACLOUD_STAGE_WORKERS=0`). A second HTTP server on the same loop is the internal
listener (`/metrics`, `/internal/credentials`), apart from the public webhook port."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import time
from collections.abc import Collection, Iterator
from pathlib import Path

import uvicorn

from wacloud.adapters.db.errors import TroubleLog
from wacloud.bootstrap import Gateway, build_gateway
from wacloud.hosting import shutdown
from wacloud.hosting.http import create_apps
from wacloud.hosting.http_protocol import HttpProtocol
from wacloud.hosting.process import tune_garbage_collector
from wacloud.hosting.runners import stage_runners
from wacloud.hosting.shutdown import wait_stopping
from wacloud.hosting.worker import (
    SERVER_SEND_SHARE,
    WORKER_SEND_SHARE,
    WorkerSupervisor,
    server_stage_names,
    split_send_stage,
    use_stage_threads,
    worker_groups,
)
from wacloud.observability.metrics import enable_multiprocess
from wacloud.privacy.lgpd import retention_loop
from wacloud.settings import Settings
from wacloud.stages.collect import collect
from wacloud.stages.envelopes import OUTBOUND_SEND

log = logging.getLogger(__name__)

# A worker's own stop takes its grace and margin; this much more for its flush and exit.
WORKER_EXIT_S = 5.0
METRICS_DIR = "metrics"  # the processes' metric files, emptied at start
# RAM-backed: prometheus_client grows its memory-mapped files by extending them (sparse) and
# writing through the mapping; on a full disk that write is a SIGBUS, which killed `serve`
# when the data dir's disk filled up (bench/chaos.py, disk_full). /dev/shm has no blocks to run
# out of (its pages are memory, and the files are a few kB).
SHM_DIR = Path("/dev/shm")


def metrics_directory(settings: Settings, shm: Path = SHM_DIR) -> Path:
    """Where the processes of this gateway write their metric files: under /dev/shm (one
    directory per data dir) when it exists, else under the data dir."""
    if settings.metrics_dir is not None:
        return settings.metrics_dir
    if shm.is_dir() and os.access(shm, os.W_OK):
        tag = hashlib.sha256(str(settings.data_dir.resolve()).encode()).hexdigest()[:16]
        return shm / f"wacloud-metrics-{tag}"
    return settings.data_dir / METRICS_DIR


async def run_stages(gateway: Gateway, *, stages: bool = True, collect: bool = True,
                     names: Collection[str] | None = None) -> None:
    """Run the stages (all, or those `names`) and/or the collector, and the registry watcher,
    until `gateway.stop` is set."""
    runners = stage_runners(gateway, names)
    tasks = [asyncio.create_task(r.run(gateway.stop)) for r in runners] if stages else []
    tasks.append(asyncio.create_task(
        gateway.broker.watch(gateway.settings.registry_poll_s, gateway.stop)))
    if collect:
        tasks.append(asyncio.create_task(collect_loop(gateway)))
        tasks.append(asyncio.create_task(retention_loop(gateway)))
    # Runners finish or release their work within the grace themselves; this only bounds
    # whatever else hangs (a retention pass, a collect pass on a locked database).
    await wait_stopping(tasks, gateway.stop, gateway.settings.shutdown_grace_s)


async def collect_loop(gateway: Gateway) -> None:
    """Collect pending outbox rows every `collect_poll_s`, or at once when the API wakes it."""
    ctx = gateway.collect_context()
    settings = gateway.settings
    reclaim_every = max(min(settings.reservation_lease_s, settings.queued_stale_s) / 10, 1.0)
    last_reclaim = 0.0
    trouble = TroubleLog(log)
    while not gateway.stop.is_set():
        gateway.collect_wake.clear()
        now = time.monotonic()
        reclaim = now - last_reclaim >= reclaim_every
        if reclaim:
            last_reclaim = now
        try:
            queued = await collect(ctx, reclaim=reclaim)
        except Exception as exc:  # the registry (tenant list): a warning a minute if it is down
            trouble.failed("the registry", "collect pass", exc)
            queued = 0
        else:
            trouble.succeeded("the registry")
        if queued >= ctx.batch:
            continue  # more are waiting
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_first(gateway.collect_wake, gateway.stop),
                                   timeout=settings.collect_poll_s)


async def _first(*events: asyncio.Event) -> None:
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


class InternalServer(uvicorn.Server):
    """The internal listener: stops with the public server, which owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class PublicServer(InternalServer):
    """The public listener. `serve` handles SIGTERM/SIGINT itself (`hosting.shutdown`):
    uvicorn's own handling raises the signal again once the server is down, which killed the
    process before the stages had stopped and the queue had been flushed."""


async def serve(settings: Settings, host: str, port: int,
                started: asyncio.Event | None = None,
                sockets: tuple[socket.socket, socket.socket] | None = None,
                workers: bool = True) -> None:
    """Serve until stopped. `sockets`: (public, internal) already bound and listening (the
    CLI binds them before anything else); without them uvicorn binds host:port itself.
    `workers=False`: the HTTP front only (webhooks, API, dashboard); the stages and the
    collector run in `wacloud worker` processes elsewhere."""
    public_sockets, internal_sockets = ([sockets[0]], [sockets[1]]) if sockets else (None, None)
    on_server = (server_stage_names(settings) if settings.stage_workers > 0 else None
                 ) if workers else ()
    groups = worker_groups(settings.stage_workers, on_server or ()) if workers else []
    if groups:
        # Workers write their counters where this process's /metrics adds them up; they
        # inherit the directory through the environment.
        enable_multiprocess(metrics_directory(settings))
    gateway = build_gateway(settings)
    split = split_send_stage(gateway, groups, on_server)
    send_queue = gateway.queues[OUTBOUND_SEND]

    def share_sends(worker_alive: bool) -> None:
        # While the worker is down, every number's sends are ours; they were only waiting
        # for it to come back otherwise.
        send_queue.share_lanes(SERVER_SEND_SHARE if worker_alive else None)

    supervised = [WorkerSupervisor(settings, group, index,
                                   send_share=WORKER_SEND_SHARE if split and index == 0 else None,
                                   on_alive=share_sends if split and index == 0 else None)
                  for index, group in enumerate(groups)]
    app, internal_app = create_apps(gateway, lambda: [w.status() for w in supervised])
    tune_garbage_collector()
    # No proxy-header rewriting (nothing here uses the client address) and no Date/Server
    # headers: each costs a measurable share of a webhook's CPU.
    # Requests in flight at a stop (a webhook being queued, an API call) get the grace too.
    grace = settings.shutdown_grace_s
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            lifespan="off", timeout_graceful_shutdown=max(int(grace), 1),
                            proxy_headers=False,
                            server_header=False, date_header=False,
                            http=HttpProtocol.configured(settings.http_request_timeout_s))
    # uvicorn declares an int; it only ever hands the value to `call_later`.
    config.timeout_keep_alive = settings.http_keep_alive_s  # type: ignore[assignment]
    server = PublicServer(config)
    internal = InternalServer(uvicorn.Config(
        internal_app, host=settings.internal_host, port=settings.internal_port,
        log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=5,
        proxy_headers=False, server_header=False))
    # Started first, so a busy internal port stops `serve` before it takes any webhook.
    internal_task = asyncio.create_task(internal.serve(sockets=internal_sockets))
    while not internal.started and not internal_task.done():
        await asyncio.sleep(0.02)
    if internal_task.done():
        await gateway.close()
        internal_task.result()  # uvicorn's bind error (SystemExit), or a clear exception
        raise RuntimeError(f"the internal listener {settings.internal_host}:"
                           f"{settings.internal_port} did not start")

    def begin_stop() -> None:
        # All at once: the listener stops accepting, the stages stop receiving, and the
        # workers drain theirs within the same grace.
        server.should_exit = True
        gateway.stop.set()
        for worker in supervised:
            worker.terminate()

    shutdown.install(begin_stop)
    for worker in supervised:
        worker.start()
    supervisors = [asyncio.create_task(w.supervise(gateway.stop)) for w in supervised]
    runs_stages = on_server != ()  # None: every stage, here
    if runs_stages:
        use_stage_threads(asyncio.get_running_loop())
    stages = asyncio.create_task(run_stages(gateway, stages=runs_stages, collect=workers,
                                            names=on_server))
    if started is not None:
        async def announce() -> None:
            while not server.started:
                await asyncio.sleep(0.02)
            started.set()
        announcer = asyncio.create_task(announce())
    try:
        await server.serve(sockets=public_sockets)
    finally:
        if started is not None:
            announcer.cancel()
        internal.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await internal_task
        gateway.stop.set()
        await asyncio.gather(*supervisors)

        async def stages_done() -> None:
            with contextlib.suppress(asyncio.CancelledError):
                await stages

        # Our stages and the workers drain side by side; then every pending write is flushed.
        await asyncio.gather(stages_done(), *(asyncio.to_thread(
            w.stop, grace + shutdown.MARGIN_S + WORKER_EXIT_S) for w in supervised))
        await gateway.close()
        log.info("stopped")
