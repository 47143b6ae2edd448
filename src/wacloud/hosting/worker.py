"""Stage workers: the stages in processes of their own, beside the HTTP server.

`wacloud serve` starts them (`WACLOUD_STAGE_WORKERS`, default 1) so that answering webhooks
never waits for the GIL behind parsing and storing. The network-bound stages (media downloads,
sends) run on the server's own loop by default (`WACLOUD_SERVER_STAGES`): they mostly wait, and
there they get a GIL apart from the storing stages (inbound, save) without the memory
of a third process; with 2 workers and no server stages, each group gets a worker.
Each sending number's sends stay in one process, where its rate limit is counted: with the
embedded queue the send stage is split by number between the HTTP process and the first worker
(`split_send_stage`, `WACLOUD_SEND_SPLIT`), and the HTTP process sends for every number while
that worker is down; otherwise it runs in one process.

Workers run at a lower CPU priority (`WACLOUD_WORKER_NICE`) because a webhook answer is what
Meta times, while the stages catch up from the durable queue. A worker dies with its parent
(PR_SET_PDEATHSIG, so a `kill -9` of `serve` behaves like a crash of one process), and the
parent restarts a worker that dies. SIGTERM (which `serve` passes on when it stops) drains a
worker within `WACLOUD_SHUTDOWN_GRACE_S` (`hosting.shutdown`), and it exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from wacloud.adapters.queue.base import LaneShare
from wacloud.bootstrap import Gateway, build_gateway
from wacloud.hosting.process import tune_garbage_collector
from wacloud.hosting.shutdown import install as install_stop_signals
from wacloud.observability.metrics import process_exited
from wacloud.settings import Settings
from wacloud.stages.envelopes import OUTBOUND_SEND

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
RESTART_BACKOFF_MAX_S = 30.0
STORING = ("inbound", "save")
NETWORK = ("media", "send")
STAGES = STORING + NETWORK
# `inbound` runs receive and write fused; their own names, from before it was named after
# what it runs, still select it (`--stages`, `WACLOUD_SERVER_STAGES`).
ALIASES = {"receive": "inbound", "write": "inbound"}


def known_stage(name: str) -> bool:
    return name in STAGES or name in ALIASES


def stage_names(names: Iterable[str]) -> tuple[str, ...]:
    """The stages `names` select (aliases resolved, unknown names left out), in STAGES order."""
    wanted = {ALIASES.get(name.strip(), name.strip()) for name in names}
    return tuple(name for name in STAGES if name in wanted)


def server_stage_names(settings: Settings) -> tuple[str, ...]:
    """The stages the HTTP server hosts itself (`WACLOUD_SERVER_STAGES`), in STAGES order."""
    return stage_names(settings.server_stages.split(","))


def worker_groups(count: int, on_server: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The stages of each worker process, given those the server keeps. More than two
    workers would split the send stage, whose rate limits must be counted in one process."""
    if count <= 0:
        return []
    groups = [STORING + NETWORK] if count == 1 else [STORING, NETWORK]
    kept = [tuple(name for name in group if name not in on_server) for group in groups]
    if "media" in on_server:
        # Media copies give way to rows (see StageRunner.defer_to); once a burst of rows is
        # stored, the storing worker's idle CPU copies media beside the server.
        kept = [(*group, "media") if "inbound" in group else group for group in kept]
    return [group for group in kept if group]


# The send stage split between `serve`'s HTTP process and its first worker (`split_send_stage`).
SERVER_SEND_SHARE = LaneShare(0, 2)
WORKER_SEND_SHARE = LaneShare(1, 2)


def split_send_stage(gateway: Gateway, groups: list[tuple[str, ...]],
                     on_server: tuple[str, ...] | None) -> bool:
    """When the HTTP process runs the send stage and its queue can share lanes (the embedded
    SQLite queue), give the first worker the send stage too, for half of the sending numbers
    (`WORKER_SEND_SHARE`; the HTTP process keeps `SERVER_SEND_SHARE`). Whether it split;
    `groups` is changed in place."""
    if not gateway.settings.send_split or not groups or "send" not in (on_server or ()):
        return False
    if not gateway.queues[OUTBOUND_SEND].share_lanes(SERVER_SEND_SHARE):
        return False
    groups[0] = (*groups[0], "send")
    return True


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as `WACLOUD_*` variables, so that the child sees what the parent was given
    (CLI flags and programmatic overrides included), not only the parent's environment."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        env[f"WACLOUD_{name.upper()}"] = (str(int(value)) if isinstance(value, bool)
                                          else str(value))
    return env


class WorkerSupervisor:
    """Starts `wacloud worker` as a child, restarts it when it dies, stops it on shutdown."""

    def __init__(self, settings: Settings, stages: tuple[str, ...], index: int = 0, *,
                 send_share: LaneShare | None = None,
                 on_alive: Callable[[bool], None] | None = None) -> None:
        self.settings = settings
        self.stages = stages
        self.index = index
        self.send_share = send_share
        # Told False when the worker is found dead and True when it is started again (the
        # HTTP process then takes over, and gives back, the worker's share of the sends).
        self.on_alive = on_alive
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._terminated: subprocess.Popen[bytes] | None = None  # the process told to stop

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "wacloud.cli", "worker", "--no-collect",
                "--data-dir", str(self.settings.data_dir), "--parent-pid", str(os.getpid()),
                "--stages", ",".join(self.stages)]
        if self.settings.worker_metrics_port:
            argv += ["--metrics-port", str(self.settings.worker_metrics_port + self.index)]
        if self.send_share is not None:
            argv += ["--send-share", str(self.send_share)]
        return argv

    def start(self) -> None:
        env = {**os.environ, **settings_env(self.settings)}
        self.process = subprocess.Popen(self.argv(), env=env)
        if self.on_alive is not None:
            self.on_alive(True)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def status(self) -> dict[str, object]:
        return {"stages": ",".join(self.stages), "alive": self.alive, "restarts": self.restarts,
                "pid": self.process.pid if self.alive and self.process else None}

    async def supervise(self, stop: asyncio.Event) -> None:
        backoff = 1.0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.5)
            if stop.is_set() or self.alive:
                if self.alive:
                    backoff = 1.0
                continue
            code = self.process.returncode if self.process else None
            if self.process is not None:
                process_exited(self.process.pid)
            if self.on_alive is not None:
                self.on_alive(False)
            log.error("stage worker %s exited with code %s; restarting in %.0f s",
                      ",".join(self.stages), code, backoff)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=backoff)
            if not stop.is_set():
                self.restarts += 1
                self.start()
                backoff = min(backoff * 2, RESTART_BACKOFF_MAX_S)

    def terminate(self) -> None:
        """Ask the worker to stop (SIGTERM: it drains within its grace), once: a second
        SIGTERM would make it exit at once."""
        if self.alive and self.process is not None and self._terminated is not self.process:
            self._terminated = self.process
            self.process.terminate()

    def stop(self, timeout: float = 15.0) -> None:
        if self.process is None:
            return
        if self.alive:  # else it stopped already (told to at the signal)
            self.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.error("stage worker did not stop within %.0f s; killing it", timeout)
                self.process.kill()
                self.process.wait()
        process_exited(self.process.pid)


def die_with_parent(parent_pid: int) -> None:
    """Ask Linux to kill us when the parent dies; exit now if it already has."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(1)


def use_stage_threads(loop: asyncio.AbstractEventLoop) -> None:
    # Stages wait on databases and files through threads; the default pool (CPUs + 4) made
    # downloads and writes queue behind each other on small machines.
    loop.set_default_executor(ThreadPoolExecutor(max_workers=32, thread_name_prefix="stage"))


async def run_worker(settings: Settings, *, collect: bool,
                     stages: tuple[str, ...] | None = None,
                     send_share: LaneShare | None = None) -> None:
    from wacloud.hosting.embedded import run_stages

    gateway = build_gateway(settings)
    if send_share is not None and not gateway.queues[OUTBOUND_SEND].share_lanes(send_share):
        await gateway.close()
        raise SystemExit("--send-share needs a queue that can share lanes (the embedded "
                         "SQLite queue)")
    tune_garbage_collector()
    loop = asyncio.get_running_loop()
    use_stage_threads(loop)
    install_stop_signals(gateway.stop.set)
    started = time.monotonic()
    try:
        await run_stages(gateway, collect=collect, names=stages)
    finally:
        await gateway.close()
        log.info("stage worker stopped after %.0f s", time.monotonic() - started)
