"""Fault harness: steady inbound and outbound load for several tenants while faults are injected
on a seeded schedule; then nothing may be lost, duplicated or stuck.

    .venv/bin/python bench/chaos.py [--seed 1] [--short] [--duration 240] [--kills 24]
        [--engine embedded|rabbitmq|sqs] [--real-broker-restart]

Engines: `embedded` (default: the SQLite queue inside `wacloud serve`, its HTTP process and one
stage worker); `rabbitmq` and `sqs` (the distributed engine: `wacloud queues create`, then
`wacloud serve --no-workers` and two `wacloud worker` processes, one for the inbound stages and
saving send results, one sending and collecting; on a fresh RabbitMQ virtual host, or on moto's
server with media on S3; see `chaos_broker.py`). Separate processes on 127.0.0.1: the fake
provider and the gateway's, 3 SQLite tenants plus one PostgreSQL tenant when 127.0.0.1:5432
answers, each with one Meta channel whose Graph base URL is the fake. The data dir sits on a
small tmpfs when the harness may mount one (root), so that "disk full" can be injected.

Load: signed webhooks of 1-3 messages (15% images/documents registered at the fake), a tenth
of them posted again after their 200 (a provider retry of the same webhook), every unanswered
one retried until it is; outbound texts through `POST /v1/messages` (keys as `wacloud apikey
create --tenant` makes them, an Idempotency-Key per message so that a retry after a kill never
makes a second row); out-of-order receipts (read, delivered, sent) for accepted sends.

Faults (seeded schedule, printed first): SIGKILL of `serve` (restarted by the harness) and of
its stage worker (restarted by `serve`); the fake answering 500, 429, 400/130429, answers
slower than the send timeout (ending in 503: a slow *success* is the documented duplicate
window of a send, as Graph has no idempotency key), dropped connections; media downloads that
fail, stall or arrive damaged; a tenant SQLite file locked (BEGIN EXCLUSIVE held); the
PostgreSQL tenant refusing connections; the data dir's disk full. Distributed engines add
the broker outage: a TCP proxy between wacloud and the broker closes every connection and
refuses new ones for a while, then lets them through again (what a broker restart looks like to
its clients; `--real-broker-restart` really stops and starts RabbitMQ's app, for someone running
the bench alone). There the kills are of the HTTP front and of either worker, each restarted by
the harness as a supervisor would (also when a start fails because the broker is away).

Checks per fault kind (each message is attributed to the faults active when it was posted):
webhooks acknowledged vs stored (no loss, no duplicate row by provider message id); outbox
rows created vs final (none stuck); accepted sends the fake saw per row (exactly one, except
rows whose send was in flight at a SIGKILL of the process that sends, counted and listed);
queue and DLQ contents (every DLQ item has its reason); time to drain after the last fault.
Exit status 1 on any loss, duplicate row, unexplained duplicate send or stuck row.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from _common import (
    HOST,
    WACLOUD,
    ChannelSpec,
    Proc,
    Processes,
    contact_entry,
    create_tenant_api_keys,
    customer,
    free_port,
    gateway_argv,
    gateway_env,
    meta_message,
    parse_db_time,
    process_tree,
    queue_backlog,
    setup_gateway,
    signed,
    sqlite_ro,
    start_fake_provider,
    wamid,
)
from chaos_broker import ENGINES, LOAD, BrokerSide

from wacloud.bootstrap import init_data_dir, open_registry
from wacloud.settings import load_settings
from wacloud.testing.webhooks import meta_envelope, meta_media, meta_status

SEND_TIMEOUT_S = 2.0
# A send the fake records this soon after a kill still counts as in flight at it: the worker of
# a killed `serve` lives until Linux delivers its death signal (milliseconds, more on a loaded
# machine), and the fake stamps a request when its own loop gets to it.
KILL_SETTLE_S = 0.25
FINAL_STATUSES = {3, 4, 5, 6, 7, -99, -100, -101}
OPEN_STATUSES = {0, 1, 2}
INSTANT_WINDOW_S = 3.0  # messages posted this long after a kill count as "under" that kill
PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"

KILL_KINDS = ("kill_serve", "kill_worker")
FAULT_KINDS = ("send_500", "send_429", "send_130429", "send_slow", "send_drop", "media_fail",
               "media_stall", "media_damaged", "sqlite_lock", "pg_refuse", "disk_full")
BROKER_KINDS = ("broker_outage",)  # distributed engines only
# The distributed engine's worker groups (as in `bench/distributed.py`): the inbound stages
# and saving send results; sending and collecting.
INBOUND_GROUP, OUTBOUND_GROUP = "receive,write,media,save", "send"
WORKER_ROLES = ("inbound", "outbound")
# `serve` and `worker` check their queues before taking work and stop when the broker cannot be
# reached; the harness, like a supervisor, starts them again until this deadline.
START_DEADLINE_S = 120.0

# Gateway settings that make retries and redeliveries happen within a run (production keeps
# its defaults; these shorten waits, they do not change what is retried).
GATEWAY_ENV = {
    "WACLOUD_SEND_TIMEOUT_S": str(SEND_TIMEOUT_S),
    "WACLOUD_SEND_BACKOFF_BASE_S": "0.2",
    "WACLOUD_SEND_BACKOFF_MAX_S": "2",
    "WACLOUD_MEDIA_FIRST_TRY_TIMEOUT_S": "1.5",
    "WACLOUD_MEDIA_TIMEOUT_S": "3",
    "WACLOUD_MEDIA_BACKOFF_BASE_S": "0.2",
    "WACLOUD_MEDIA_BACKOFF_MAX_S": "2",
    "WACLOUD_QUEUE_VISIBILITY_TIMEOUT_S": "5",
    "WACLOUD_DB_RETRY_MAX_DELAY_S": "1",
    "WACLOUD_COLLECT_POLL_S": "0.5",
    # A row the collector reserved when `serve` was killed goes back to pending after this
    # (default 300 s, longer than a run's drain).
    "WACLOUD_RESERVATION_LEASE_S": "10",
    # A row whose send was at the provider at a kill is sent again after its send lease: 3 x
    # the send timeout + 2 s + this margin (default 30 s, more than a short run's drain).
    "WACLOUD_SEND_LEASE_MARGIN_S": "2",
    "WACLOUD_REGISTRY_POLL_S": "0.5",
    "WACLOUD_PAIR_BURST": "1000000",
    # The data dir is a tmpfs twice the run's needs (`Config.tmpfs_size_mb`): keep ingest's
    # free-space floor (503 below it) under what the run leaves free, so only the disk-full
    # fault reaches it.
    "WACLOUD_MIN_FREE_DISK_MB": "32",
    "WACLOUD_LOG_LEVEL": "WARNING",
}


def say(message: str) -> None:
    print(message, flush=True)


# ------------------------------------------------------------------------------ schedule

@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the load starts
    kind: str
    duration: float = 0.0

    @property
    def end(self) -> float:
        return self.at + (self.duration or INSTANT_WINDOW_S)


def make_schedule(rng: random.Random, duration: float, kills: int,
                  kinds: list[str], *, distributed: bool = False) -> list[Fault]:
    """`kills` SIGKILLs (about a third of them of the worker; two thirds when distributed,
    where the workers do the work and the HTTP front only queues) at random moments at least
    2 s apart, and each fault kind at least once (more on long runs), none in the last tenth
    of the run, so the end of the load is quiet and the drain measures recovery."""
    end = duration * 0.9
    faults: list[Fault] = []
    moments: list[float] = []
    while len(moments) < kills:
        moment = rng.uniform(1.0, end)
        if all(abs(moment - m) >= 2.0 for m in moments) or len(moments) * 2.0 > end:
            moments.append(moment)
    for i, moment in enumerate(sorted(moments)):
        worker = i % 3 != 2 if distributed else i % 3 == 2
        faults.append(Fault(moment, "kill_worker" if worker else "kill_serve"))
    repeats = max(1, round(duration / 120))
    for kind in kinds:
        for _ in range(repeats):
            length = rng.uniform(3.0, min(8.0, max(3.0, duration / 10)))
            faults.append(Fault(rng.uniform(1.0, max(1.5, end - length)), kind, length))
    return sorted(faults, key=lambda f: f.at)


# ------------------------------------------------------------------------------ bookkeeping

@dataclass
class Inbound:
    tenant: str
    body: bytes
    signature: str
    ids: list[str]
    faults: frozenset[str]
    media: list[str] = field(default_factory=list)
    posted_at: float = field(default_factory=time.time)
    acked: bool = False
    posts: int = 0


@dataclass
class Outbound:
    tag: str
    tenant: str
    payload: dict[str, Any]
    faults: frozenset[str]
    row_id: int | None = None
    posted_at: float = field(default_factory=time.time)


@dataclass
class Book:
    inbound: list[Inbound] = field(default_factory=list)
    outbound: list[Outbound] = field(default_factory=list)
    kills: list[tuple[str, float]] = field(default_factory=list)  # (kind, wall time)
    # Distributed: kills of the outbound worker, the process that sends (wall times): a send
    # it had at the provider may be made again, and is counted as in flight at a kill.
    sender_kills: list[float] = field(default_factory=list)
    # Starts that failed because the broker was away, tried again (distributed engines).
    start_retries: int = 0
    injected: Counter[str] = field(default_factory=Counter)
    skipped: dict[str, str] = field(default_factory=dict)
    statuses_posted: dict[str, str] = field(default_factory=dict)  # provider id -> tenant
    load_start: float = 0.0
    last_fault_end: float = 0.0
    errors: list[str] = field(default_factory=list)
    # A process found dead without a kill of ours: (wall time, exit status, role); restarted
    # like a supervisor would, and reported (a crash is a finding, whatever was lost or not).
    crashes: list[tuple[float, int | None, str]] = field(default_factory=list)

    def active(self, schedule: list[Fault]) -> frozenset[str]:
        now = time.time() - self.load_start
        return frozenset(f.kind for f in schedule if f.at <= now < f.end) or frozenset({"none"})


# ------------------------------------------------------------------------------ the harness

MEDIA_BYTES = (20_000, 200_000)  # a media file's size, uniform in this range
MEDIA_MEAN_BYTES = sum(MEDIA_BYTES) / 2
MESSAGES_PER_WEBHOOK = 2  # 1-3


@dataclass
class Config:
    seed: int = 1
    duration: float = 240.0
    kills: int = 24
    inbound_rate: float = 25.0  # webhooks/s
    outbound_rate: float = 10.0  # API submissions/s
    media_share: float = 0.15
    drain_timeout: float = 180.0
    kinds: list[str] = field(default_factory=lambda: list(FAULT_KINDS))
    use_postgres: bool = True
    use_tmpfs: bool = True
    tmpfs_mb: int = 192  # at least; more when the run's media need it (`tmpfs_size_mb`)
    media_stall_s: float = 20.0  # how long a stalled download goes silent
    keep: bool = False
    engine: str = "embedded"  # or "rabbitmq", "sqs"
    real_broker_restart: bool = False  # RabbitMQ: rabbitmqctl stop_app/start_app, no proxy

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"engine {self.engine!r}: one of {', '.join(ENGINES)}")
        if self.engine != "embedded" and "broker_outage" not in self.kinds:
            self.kinds = [*self.kinds, *BROKER_KINDS]

    def tmpfs_size_mb(self) -> int:
        """Room for everything the run stores, twice, so that only the disk-full fault fills
        the disk: a 4-minute run stores ~200 MB of media (files of 20-200 kB), which filled
        the 192 MB it once had and left ingest answering 503 to the end."""
        media_mb = (self.inbound_rate * self.duration * MESSAGES_PER_WEBHOOK * self.media_share
                    * MEDIA_MEAN_BYTES / 1e6)
        return max(self.tmpfs_mb, int(64 + 2 * media_mb))


@dataclass
class Result:
    kills: int
    faults: int
    inbound_acked: int
    inbound_stored: int
    lost: int
    duplicate_rows: int
    duplicate_sends: int
    in_flight_at_kill: int
    unexplained_duplicate_sends: int
    crashes: int
    stuck: int
    dlq_without_reason: int
    drain_s: float

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicate_rows or self.stuck or self.dlq_without_reason
                    or self.unexplained_duplicate_sends or self.crashes) \
            and self.drain_s == self.drain_s

    def line(self) -> str:
        return (f"RESULT chaos kills={self.kills} faults={self.faults} "
                f"inbound_acked={self.inbound_acked} inbound_stored={self.inbound_stored} "
                f"lost={self.lost} duplicate_rows={self.duplicate_rows} "
                f"duplicate_sends={self.duplicate_sends} "
                f"in_flight_at_kill={self.in_flight_at_kill} stuck={self.stuck} "
                f"drain_s={self.drain_s:.1f}")


class Harness:
    def __init__(self, cfg: Config, tmp: Path, procs: Processes) -> None:
        self.cfg = cfg
        self.tmp = tmp
        self.procs = procs
        self.rng = random.Random(cfg.seed)
        self.book = Book()
        self.schedule: list[Fault] = []
        self.data_dir = tmp / "data"
        self.mounted = False
        self.pg_db: str | None = None
        self.tenants: list[ChannelSpec] = []
        self.db_urls: dict[str, str] = {}
        self.roles: dict[str, Proc] = {}  # "serve" (the HTTP process), "inbound", "outbound"
        self.stack = contextlib.ExitStack()  # the broker, its proxy
        self.broker: BrokerSide | None = None
        self.env = gateway_env(GATEWAY_ENV)  # of the gateway's processes
        self.own_env = {**os.environ, **self.env}  # of the harness's own commands
        self.worker_kills = 0
        self.port = free_port()
        self.token = "chaos-" + uuid.uuid4().hex
        self.app_secret = uuid.uuid4().hex
        self.fake_url = ""
        self.keys: dict[str, str] = {}
        self.media_faults: dict[str, str] = {}  # media id -> fault kind applied to it
        self.damaged: list[str] = []
        self.restarting = asyncio.Event()

    # -- setup -----------------------------------------------------------------------------

    @property
    def gateway(self) -> Proc | None:
        return self.roles.get("serve")

    @property
    def distributed(self) -> bool:
        return self.cfg.engine != "embedded"

    def setup(self) -> None:
        self.data_dir.mkdir()
        if self.distributed:
            self.broker = BrokerSide(self.cfg.engine, self.stack,
                                     real_restart=self.cfg.real_broker_restart)
            self.env = gateway_env({**GATEWAY_ENV, **self.broker.child_env})
            self.own_env = {**os.environ, **gateway_env({**GATEWAY_ENV, **self.broker.own_env})}
        if self.cfg.use_tmpfs and "disk_full" in self.cfg.kinds:
            why = self._mount_tmpfs()
            if why:
                self.book.skipped["disk_full"] = why
        elif "disk_full" in self.cfg.kinds:
            self.book.skipped["disk_full"] = "tmpfs not requested"
        _, self.fake_url = start_fake_provider(self.procs, self.token)
        self.tenants = [ChannelSpec(f"chaos{i}", f"1065403529{i:02d}", f"1022901299{i:02d}",
                                    f"55119400099{i:02d}") for i in range(1, 4)]
        if self.cfg.use_postgres:
            why = self._create_pg_db()
            if why:
                self.book.skipped["pg_refuse"] = why
            else:
                self.tenants.append(ChannelSpec("chaospg", "106540352999", "102290129999",
                                                "5511940009999"))
        else:
            self.book.skipped["pg_refuse"] = "PostgreSQL not requested"
        settings = load_settings(self.data_dir, dev_allow_local_urls=True)
        init_data_dir(settings)
        if self.pg_db is not None:
            registry = open_registry(settings)
            url = f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{self.pg_db}"
            registry.add_tenant("chaospg", url)
            registry.engine.dispose()
            self.db_urls["chaospg"] = url
        setup_gateway(self.data_dir, self.tenants, app_secret=self.app_secret, token=self.token,
                      api_base_url=self.fake_url, mps=80)
        for spec in self.tenants:
            self.db_urls.setdefault(
                spec.tenant, f"sqlite:///{self.data_dir / 'tenants' / f'{spec.tenant}.db'}")
        self.keys = create_tenant_api_keys(self.data_dir, [t.tenant for t in self.tenants])
        if self.distributed:
            self.cli("queues", "create")
        self.schedule = make_schedule(self.rng, self.cfg.duration, self.cfg.kills,
                                      [k for k in self.cfg.kinds if k not in self.book.skipped],
                                      distributed=self.distributed)

    def _mount_tmpfs(self) -> str | None:
        if os.geteuid() != 0:
            return "not root: cannot mount a tmpfs"
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.cfg.tmpfs_size_mb()}m",
                               "tmpfs", str(self.data_dir)], capture_output=True, text=True)
        if done.returncode:
            return f"mount -t tmpfs failed: {done.stderr.strip()[:200]}"
        self.mounted = True
        return None

    def _create_pg_db(self) -> str | None:
        try:

            with pg_admin() as admin:
                self.pg_db = f"wacloud_chaos_{uuid.uuid4().hex[:12]}"
                admin.execute(f'CREATE DATABASE "{self.pg_db}"')
        except Exception as exc:
            self.pg_db = None
            return f"PostgreSQL not reachable at 127.0.0.1:5432 ({type(exc).__name__})"
        return None

    def cli(self, *args: str) -> str:
        """A `wacloud` command on this data dir, reaching the broker directly."""
        done = subprocess.run([str(WACLOUD), *args, "--data-dir", str(self.data_dir)],
                              capture_output=True, text=True, timeout=120, env=self.own_env)
        if done.returncode:
            raise RuntimeError(f"wacloud {' '.join(args)} failed: {done.stderr.strip()[-300:]}")
        return done.stdout

    def backlog(self) -> tuple[int, int]:
        """(live messages in the queues, dead letters)."""
        if self.broker is not None:
            return self.broker.backlog()
        return queue_backlog(self.data_dir / "queues.db")

    def cleanup(self) -> None:
        self.stack.close()
        if self.pg_db is not None:
            with contextlib.suppress(Exception), pg_admin() as admin:
                admin.execute(f'ALTER DATABASE "{self.pg_db}" ALLOW_CONNECTIONS true')
                admin.execute(f'DROP DATABASE IF EXISTS "{self.pg_db}" WITH (FORCE)')
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.data_dir)], check=False)

    # -- the gateway -----------------------------------------------------------------------

    def start_gateway(self) -> None:
        for role in ("serve", *(WORKER_ROLES if self.distributed else ())):
            self.start_role(role)

    def start_role(self, role: str) -> None:
        """Start `serve` (with `--no-workers` when distributed) or a worker of `role`; while
        the broker is away a start fails (the queues are checked first): start it again."""
        name = f"{role}-{len(self.book.kills)}-{self.book.start_retries}"
        argv: list[str | Path]
        if role == "serve":
            argv = gateway_argv(self.data_dir, self.port)
            port = self.port
            if self.distributed:
                argv.append("--no-workers")
        else:
            port = free_port()
            argv = [WACLOUD, "worker", "--data-dir", self.data_dir, "--metrics-port", str(port),
                    "--stages", INBOUND_GROUP if role == "inbound" else OUTBOUND_GROUP]
            if role == "inbound":
                argv.append("--no-collect")
        deadline = time.monotonic() + START_DEADLINE_S
        while True:
            try:
                proc = self.procs.start(name, argv, port=port, env=self.env, ready_timeout=60)
                if role == "serve" and self.distributed:
                    # `serve` binds its port before it checks the queues: up means answering.
                    wait_healthy(proc, self.port)
                self.roles[role] = proc
                return
            except RuntimeError:
                # It exited (or never opened its port): make sure it is gone.
                for proc in [p for p in self.procs.procs if p.name == name]:
                    self.procs.stop(proc)
                if not self.distributed or time.monotonic() > deadline:
                    raise
            self.book.start_retries += 1
            name = f"{role}-{len(self.book.kills)}-{self.book.start_retries}"
            time.sleep(1.0)  # a supervisor's restart delay

    def restart_if_dead(self) -> None:
        """A supervisor's job: start a process again if it exited by itself."""
        for role, proc in list(self.roles.items()):
            code = proc.popen.poll()
            if code is None:
                continue
            self.book.crashes.append((time.time(), code, role))
            say(f"  t={time.time() - self.book.load_start:6.1f}s  {role} EXITED BY ITSELF "
                f"with status {code}; restarting it\n{proc.log_tail(15)}")
            self.procs.stop(proc)
            self.start_role(role)

    def stop_all(self) -> None:
        for proc in self.roles.values():
            self.procs.stop(proc)

    async def watchdog(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(0.5)
            if not self.restarting.is_set():
                self.restarting.set()
                try:
                    await asyncio.to_thread(self.restart_if_dead)
                finally:
                    self.restarting.clear()

    def kill_serve(self) -> None:
        assert self.gateway is not None
        if self.gateway.popen.poll() is not None:
            self.restart_if_dead()
        gateway = self.gateway
        self.book.kills.append(("kill_serve", time.time()))
        with contextlib.suppress(ProcessLookupError):
            os.kill(gateway.pid, signal.SIGKILL)
        gateway.popen.wait(10)
        # The worker dies with its parent (PR_SET_PDEATHSIG); wait until the group is gone,
        # so the new serve never shares the queue with a survivor of the old one.
        deadline = time.monotonic() + 10
        while group_alive(gateway.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(gateway.pid, signal.SIGKILL)
        self.procs.stop(gateway)
        self.start_role("serve")

    def kill_worker(self) -> bool:
        assert self.gateway is not None
        if self.distributed:
            return self.kill_distributed_worker()
        # Right after a restart of `serve` its worker may not be started yet.
        deadline = time.monotonic() + 10
        while not (children := process_tree(self.gateway.pid)[1:]):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        self.book.kills.append(("kill_worker", time.time()))
        with contextlib.suppress(ProcessLookupError):
            os.kill(children[0], signal.SIGKILL)
        return True

    def kill_distributed_worker(self) -> bool:
        """SIGKILL the inbound and the outbound worker in turn, and start it again."""
        role = WORKER_ROLES[self.worker_kills % len(WORKER_ROLES)]
        self.worker_kills += 1
        proc = self.roles[role]
        if proc.popen.poll() is not None:
            self.restart_if_dead()
            proc = self.roles[role]
        self.book.kills.append(("kill_worker", time.time()))
        if role == "outbound":
            self.book.sender_kills.append(time.time())
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.popen.wait(10)
        self.procs.stop(proc)
        self.start_role(role)
        return True

    # -- faults ----------------------------------------------------------------------------

    async def run_schedule(self, fake: httpx.AsyncClient) -> None:
        running: list[asyncio.Task[None]] = []
        for fault in self.schedule:
            wait = self.book.load_start + fault.at - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
            say(f"  t={time.time() - self.book.load_start:6.1f}s  {fault.kind}"
                + (f" for {fault.duration:.1f}s" if fault.duration else ""))
            if fault.kind in KILL_KINDS:
                await self.inject_noting(fault, fake)  # a restart ends before the next kill
            else:
                running.append(asyncio.create_task(self.inject_noting(fault, fake)))
        await asyncio.gather(*running)

    async def inject_noting(self, fault: Fault, fake: httpx.AsyncClient) -> None:
        try:
            await self.inject(fault, fake)
        except Exception as exc:
            self.book.errors.append(f"{fault.kind} at {fault.at:.1f}s: {exc!r}")

    async def inject(self, fault: Fault, fake: httpx.AsyncClient) -> None:
        kind = fault.kind
        self.book.injected[kind] += 1
        end = self.book.load_start + fault.at + fault.duration
        self.book.last_fault_end = max(self.book.last_fault_end, end)
        scripts: dict[str, dict[str, Any]] = {
            "send_500": {"status": 500, "error_code": 1, "error_message": "Unknown error"},
            "send_429": {"status": 429, "retry_after": 1},
            "send_130429": {"status": 400, "error_code": 130429,
                            "error_message": "Rate limit hit"},
            "send_slow": {"status": 503, "delay": SEND_TIMEOUT_S + 1.5},
            "send_drop": {"status": 200, "drop": True},
        }
        if kind == "kill_serve":
            while self.restarting.is_set():  # the watchdog is restarting a crashed serve
                await asyncio.sleep(0.1)
            self.restarting.set()
            try:
                await asyncio.to_thread(self.kill_serve)
            finally:
                self.restarting.clear()
            self.book.last_fault_end = max(self.book.last_fault_end, time.time())
        elif kind == "kill_worker":
            while self.restarting.is_set():  # the watchdog is restarting a crashed process
                await asyncio.sleep(0.1)
            self.restarting.set()
            try:
                if not await asyncio.to_thread(self.kill_worker):
                    self.book.errors.append("kill_worker: no worker process found")
            finally:
                self.restarting.clear()
        elif kind == "broker_outage":
            assert self.broker is not None
            await asyncio.to_thread(self.broker.outage, fault.duration)
        elif kind in scripts:
            # About the sends of the fault's duration at the offered rate.
            times = max(3, round(self.cfg.outbound_rate * fault.duration))
            answer = await fake.post("/_fake/script", json={"times": times, **scripts[kind]})
            answer.raise_for_status()
        elif kind in ("media_fail", "media_stall", "media_damaged"):
            # Applied to each media registered during the window (see `register_media`).
            await asyncio.sleep(fault.duration)
            if kind == "media_damaged":
                for media_id in self.damaged:
                    await fake.post("/_fake/damage", json={"media_id": media_id,
                                                          "damaged": False})
                self.damaged.clear()
        elif kind == "sqlite_lock":
            tenant = self.tenants[0].tenant
            await asyncio.to_thread(hold_exclusive, self.data_dir / "tenants" / f"{tenant}.db",
                                    fault.duration)
        elif kind == "pg_refuse":
            await asyncio.to_thread(self.pg_refuse, fault.duration)
        elif kind == "disk_full":
            await asyncio.to_thread(fill_disk, self.data_dir, fault.duration)

    def pg_refuse(self, seconds: float) -> None:

        assert self.pg_db is not None
        with pg_admin() as admin:
            admin.execute(f'ALTER DATABASE "{self.pg_db}" ALLOW_CONNECTIONS false')
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                          " WHERE datname = %s AND pid <> pg_backend_pid()", (self.pg_db,))
            try:
                time.sleep(seconds)
            finally:
                admin.execute(f'ALTER DATABASE "{self.pg_db}" ALLOW_CONNECTIONS true')

    # -- load ------------------------------------------------------------------------------

    async def register_media(self, fake: httpx.AsyncClient, active: frozenset[str]
                             ) -> tuple[str, str, str, str | None]:
        """(media id, kind, mime type, filename) of a new media at the fake, with the media
        faults active now applied to it."""
        if self.rng.random() < 0.6:
            kind, mime, name = "image", "image/jpeg", None
        else:
            kind, mime, name = "document", "application/pdf", f"nota-{uuid.uuid4().hex[:6]}.pdf"
        params: dict[str, Any] = {"mime_type": mime, "size": self.rng.randrange(*MEDIA_BYTES),
                                  "provider": "meta"}
        if name:
            params["filename"] = name
        answer = await fake_post(fake, "/_fake/media", params=params)
        answer.raise_for_status()
        info = answer.json()
        media_id = info["id"]
        if "media_fail" in active:
            await fake_post(fake, "/_fake/fail", json={"media_id": media_id, "times": 2,
                                                       "status": 500})
        if "media_stall" in active:
            await fake_post(fake, "/_fake/stall", json={"media_id": media_id, "times": 1,
                                                        "seconds": self.cfg.media_stall_s})
        if "media_damaged" in active:
            await fake_post(fake, "/_fake/damage", json={"media_id": media_id})
            self.damaged.append(media_id)
        return media_id, kind, info["sha256_hex"], name

    async def inbound_loop(self, fake: httpx.AsyncClient, stop: asyncio.Event) -> None:
        counter = 0
        period = 1.0 / self.cfg.inbound_rate
        next_at = time.monotonic()
        async with httpx.AsyncClient(base_url=f"http://{HOST}:{self.port}", timeout=10) as gw:
            pending: set[asyncio.Task[None]] = set()
            while not stop.is_set():
                next_at += period
                counter += 1
                active = self.book.active(self.schedule)
                channel = self.rng.choice(self.tenants)
                sender, user_id, name = customer(self.rng)
                messages, ids, media = [], [], []
                for i in range(self.rng.randint(1, 3)):
                    message_id = wamid(f"{channel.tenant}C{counter:06d}M{i}")
                    if self.rng.random() < self.cfg.media_share:
                        media_id, kind, sha, fname = await self.register_media(fake, active)
                        message = meta_media(sender, kind, media_id,
                                             "image/jpeg" if kind == "image"
                                             else "application/pdf", sha, message_id,
                                             filename=fname)
                        media.append(message_id)
                    else:
                        message = meta_message(self.rng, sender, user_id, message_id,
                                               self.rng.choice(["text", "text", "reply",
                                                                "location"]))
                    messages.append(message)
                    ids.append(message_id)
                payload = meta_envelope(channel.phone_number_id, channel.waba_id,
                                        channel.display_number, messages, None,
                                        [contact_entry(sender, user_id, name)])
                body, signature = signed(payload, self.app_secret)
                hook = Inbound(channel.tenant, body, signature, ids, active, media)
                self.book.inbound.append(hook)
                task = asyncio.create_task(self.deliver(gw, hook, stop))
                pending.add(task)
                task.add_done_callback(pending.discard)
                if (wait := next_at - time.monotonic()) > 0:
                    await asyncio.sleep(wait)
            await asyncio.gather(*pending)

    async def deliver(self, gw: httpx.AsyncClient, hook: Inbound, stop: asyncio.Event) -> None:
        """POST until a 200 (Meta retries an unanswered webhook for days); sometimes POST the
        same body once more after the 200, as Meta does when our answer got lost."""
        give_up = self.book.load_start + self.cfg.duration + self.cfg.drain_timeout
        while time.time() < give_up:
            hook.posts += 1
            if await self.post_hook(gw, hook):
                hook.acked = True
                break
            await asyncio.sleep(0.5)
        if self.rng.random() < 0.1:
            await asyncio.sleep(self.rng.uniform(0.2, 3.0))
            hook.posts += 1
            await self.post_hook(gw, hook)

    async def post_hook(self, gw: httpx.AsyncClient, hook: Inbound) -> bool:
        try:
            answer = await gw.post("/webhooks/meta", content=hook.body, headers={
                "Content-Type": "application/json", "X-Hub-Signature-256": hook.signature})
        except httpx.HTTPError:
            return False
        return answer.status_code == 200

    async def outbound_loop(self, stop: asyncio.Event) -> None:
        period = 1.0 / self.cfg.outbound_rate
        next_at = time.monotonic()
        counter = 0
        async with httpx.AsyncClient(base_url=f"http://{HOST}:{self.port}", timeout=10) as gw:
            pending: set[asyncio.Task[None]] = set()
            while not stop.is_set():
                next_at += period
                counter += 1
                channel = self.tenants[counter % len(self.tenants)]
                tag = f"chaos-{counter:06d}"
                to = f"55119{self.rng.randrange(10**7, 10**8)}"
                item = Outbound(tag, channel.tenant, {
                    "channel": channel.phone_number_id, "to": to, "type": "text",
                    "text": {"body": f"[{tag}] Seu pedido saiu para entrega."}},
                    self.book.active(self.schedule))
                self.book.outbound.append(item)
                task = asyncio.create_task(self.submit(gw, item))
                pending.add(task)
                task.add_done_callback(pending.discard)
                if (wait := next_at - time.monotonic()) > 0:
                    await asyncio.sleep(wait)
            await asyncio.gather(*pending)

    async def submit(self, gw: httpx.AsyncClient, item: Outbound) -> None:
        """POST with an Idempotency-Key until the row exists (201, or 200 on a replay)."""
        headers = {"Authorization": f"Bearer {self.keys[item.tenant]}",
                   "Idempotency-Key": item.tag}
        give_up = self.book.load_start + self.cfg.duration + self.cfg.drain_timeout
        while time.time() < give_up:
            try:
                answer = await gw.post("/v1/messages", json=item.payload, headers=headers)
                if answer.status_code in (200, 201):
                    item.row_id = int(answer.json()["id"])
                    return
                if answer.status_code < 500 and answer.status_code not in (408, 429):
                    self.book.errors.append(f"POST /v1/messages {item.tag}: "
                                            f"{answer.status_code} {answer.text[:200]}")
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5)

    async def receipts_loop(self, fake: httpx.AsyncClient, stop: asyncio.Event) -> None:
        """Receipts in the wrong order (read, delivered, sent) for some accepted sends."""
        seen = 0
        by_number = {t.phone_number_id: t for t in self.tenants}
        async with httpx.AsyncClient(base_url=f"http://{HOST}:{self.port}", timeout=10) as gw:
            while not stop.is_set():
                await asyncio.sleep(1.0)
                try:
                    sent = (await fake.get("/_fake/sent")).json()["sent"]
                except (httpx.HTTPError, ValueError):
                    continue
                fresh, seen = sent[seen:], len(sent)
                for record in fresh:
                    channel = by_number.get(record["sender"])
                    if (channel is None or not record["message_id"]
                            or not 200 <= record["status"] < 300 or self.rng.random() > 0.3):
                        continue
                    statuses = [meta_status(record["message_id"], s, record["recipient"])
                                for s in ("read", "delivered", "sent")]
                    acked = 0
                    if stop.is_set():
                        break
                    for status in statuses:
                        payload = meta_envelope(channel.phone_number_id, channel.waba_id,
                                                channel.display_number, None, [status], None)
                        body, signature = signed(payload, self.app_secret)
                        hook = Inbound(channel.tenant, body, signature, [], frozenset())
                        for _ in range(20):
                            if await self.post_hook(gw, hook):
                                acked += 1
                                break
                            if stop.is_set():  # the load is over: no more receipts
                                break
                            await asyncio.sleep(0.5)
                    if acked == len(statuses):  # only acknowledged receipts can be checked
                        self.book.statuses_posted[record["message_id"]] = channel.tenant

    async def run_load(self) -> None:
        stop = asyncio.Event()
        async with httpx.AsyncClient(base_url=self.fake_url, timeout=30) as fake:
            self.book.load_start = time.time()
            loads = [asyncio.create_task(self.inbound_loop(fake, stop)),
                     asyncio.create_task(self.outbound_loop(stop)),
                     asyncio.create_task(self.receipts_loop(fake, stop))]
            faults = asyncio.create_task(self.run_schedule(fake))
            watchdog = asyncio.create_task(self.watchdog(stop))
            await asyncio.sleep(self.cfg.duration)
            await faults  # the schedule ends before the load does (last tenth is quiet)
            stop.set()
            await asyncio.gather(*loads, watchdog)


# ---------------------------------------------------------------------------- faults' tools

async def fake_post(fake: httpx.AsyncClient, path: str, **kwargs: Any) -> httpx.Response:
    """A POST to the fake's control API, tried again when the connection fails (a kept-alive
    one the busy fake closed just then): the load must not stop for the harness's own calls."""
    for attempt in range(5):
        try:
            return await fake.post(path, **kwargs)
        except httpx.TransportError:
            if attempt == 4:
                raise
            await asyncio.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")

def pg_admin() -> Any:
    """An autocommit connection to the PostgreSQL server's `postgres` database."""
    import psycopg

    return psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres",
                           autocommit=True, connect_timeout=3)


def wait_healthy(proc: Proc, port: int, timeout: float = 60.0) -> None:
    """Until `/healthz` answers 200; RuntimeError if the process exits first."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode} at its start")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://{HOST}:{port}/healthz", timeout=2).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proc.name} did not answer /healthz in {timeout:.0f} s")
        time.sleep(0.1)  # a poll period


def group_alive(pgid: int) -> bool:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def hold_exclusive(path: Path, seconds: float) -> None:
    """Hold BEGIN EXCLUSIVE on a tenant's SQLite file: its writers wait or fail meanwhile."""
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        time.sleep(seconds)
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def fill_disk(directory: Path, seconds: float) -> None:
    """Fill the filesystem of `directory` to the last byte, hold it full, then free it."""
    filler = directory / "chaos-filler.bin"
    fd = os.open(filler, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    try:
        stats = os.statvfs(directory)
        with contextlib.suppress(OSError):
            os.posix_fallocate(fd, 0, stats.f_bavail * stats.f_frsize)
        os.lseek(fd, 0, os.SEEK_END)
        for size in (65536, 4096, 1):  # what fallocate left, down to the last byte
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
        time.sleep(seconds)
    finally:
        os.close(fd)
        filler.unlink()


# ------------------------------------------------------------------------------ the checks

def read_rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    if url.startswith("sqlite:///"):
        with contextlib.closing(sqlite_ro(Path(url.removeprefix("sqlite:///")))) as conn:
            return list(conn.execute(sql))
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(sql))]
    finally:
        engine.dispose()


def text_of(content: Any) -> str:
    """The text body of an outbox row's content (a JSON string on SQLite, already decoded
    by psycopg on PostgreSQL)."""
    if isinstance(content, str | bytes):
        content = json.loads(content)
    body = content.get("body", "") if isinstance(content, dict) else ""
    return body if isinstance(body, str) else ""


@dataclass
class Tables:
    inbound: dict[str, Counter[str]]  # tenant -> provider message id -> rows
    media_pending: int
    media_status: Counter[str]
    outbound: dict[str, list[tuple[int, int, str, str | None, str | None]]]
    notes: dict[tuple[str, int], str]  # (tenant, row id) -> attempts and last error


def read_tables(h: Harness) -> Tables:
    inbound: dict[str, Counter[str]] = {}
    outbound: dict[str, list[tuple[int, int, str, str | None, str | None]]] = {}
    media: Counter[str] = Counter()
    notes: dict[tuple[str, int], str] = {}
    for spec in h.tenants:
        url = h.db_urls[spec.tenant]
        rows = read_rows(url, "SELECT provider_message_id, media_status FROM messages")
        inbound[spec.tenant] = Counter(r[0] for r in rows)
        media.update(str(r[1]) for r in rows if r[1] is not None)
        outbound[spec.tenant] = [
            (int(r[0]), int(r[1]), text_of(r[2]), r[3], None if r[4] is None else str(r[4]))
            for r in read_rows(url, "SELECT id, status, content, provider_message_id,"
                                    " accepted_at FROM outbound_messages")]
        notes.update({(spec.tenant, int(r[0])): f"attempts {r[1]}, last error {r[2]}: {r[3]}"
                      for r in read_rows(url, "SELECT id, attempts, error_code, error_reason"
                                              " FROM outbound_messages")})
    return Tables(inbound, media["pending"], media, outbound, notes)


def drained(h: Harness) -> tuple[bool, str]:
    """Every acknowledged message stored, every created row final, media settled, queue
    empty; with a one-line account of what is still missing."""
    try:
        tables = read_tables(h)
    except Exception as exc:
        return False, f"tenant DB not readable yet: {type(exc).__name__}"
    missing = sum(1 for hook in h.book.inbound if hook.acked for i in hook.ids
                  if not tables.inbound[hook.tenant][i])
    open_rows = sum(1 for rows in tables.outbound.values() for r in rows
                    if r[1] in OPEN_STATUSES)
    unsent = sum(1 for item in h.book.outbound if item.row_id is None)
    rest = missing or open_rows or unsent or tables.media_pending
    # A broker's queues are asked only once the rest is done (rabbitmqctl takes a second).
    live, dead = h.backlog() if not rest or h.broker is None else (-1, -1)
    shown = "?" if live < 0 else str(live)
    state = (f"missing inbound {missing}, open outbox rows {open_rows}, unsubmitted {unsent}, "
             f"media pending {tables.media_pending}, queue live {shown} dead "
             f"{'?' if dead < 0 else dead}")
    return not (rest or live), state


def dlq_items(h: Harness) -> list[dict[str, Any]]:
    done = subprocess.run([str(WACLOUD), "dlq", "list", "--json", "--data-dir",
                           str(h.data_dir)], capture_output=True, text=True, timeout=120,
                          env=h.own_env)
    if done.returncode:
        raise RuntimeError(f"wacloud dlq list failed: {done.stderr.strip()[-300:]}")
    # One JSON object per line (a list read whole would fail past one dead letter).
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def sends_by_tag(fake_url: str) -> dict[str, list[dict[str, Any]]]:
    """Accepted sends the fake saw, by the message's tag."""
    sent = httpx.get(f"{fake_url}/_fake/sent", timeout=120).json()["sent"]
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in sent:
        text = ((record.get("body") or {}).get("text") or {}).get("body") or ""
        if text.startswith("[chaos-") and 200 <= record["status"] < 300:
            found[text[1:text.index("]")]].append(record)
    return found


def check(h: Harness, drain_s: float) -> Result:
    book = h.book
    tables = read_tables(h)
    kinds = ["none", *KILL_KINDS, *FAULT_KINDS, *(BROKER_KINDS if h.distributed else ())]

    def per_kind(faults: frozenset[str]) -> list[str]:
        return [k for k in kinds if k in faults]

    # Instant faults (kills) have no duration in the schedule; attribute by wall time.
    def with_kills(faults: frozenset[str], posted_at: float) -> frozenset[str]:
        near = {kind for kind, at in book.kills if at <= posted_at < at + INSTANT_WINDOW_S}
        return faults | near if near else faults

    stats: dict[str, Counter[str]] = defaultdict(Counter)
    acked = stored = lost = dup_rows = 0
    lost_ids: list[str] = []
    for hook in book.inbound:
        for message_id in hook.ids:
            count = tables.inbound[hook.tenant][message_id]
            for kind in per_kind(with_kills(hook.faults, hook.posted_at)):
                stats[kind]["acked"] += hook.acked
                stats[kind]["stored"] += count > 0
                stats[kind]["lost"] += hook.acked and not count
                stats[kind]["dup_rows"] += count > 1
            acked += hook.acked
            stored += count > 0
            if hook.acked and not count:
                lost += 1
                lost_ids.append(message_id)
            dup_rows += count > 1

    sends = sends_by_tag(h.fake_url)
    # Embedded, both processes send: `serve` splits the send stage by number with its worker.
    # Distributed, the outbound worker sends (`Book.sender_kills`).
    sender_kills = (book.sender_kills if h.distributed else
                    [at for kind, at in book.kills if kind in ("kill_serve", "kill_worker")])
    rows_by_tag: dict[str, list[tuple[int, int, str | None, str | None]]] = defaultdict(list)
    for rows in tables.outbound.values():
        for row_id, status, content, provider_id, accepted_at in rows:
            body = content
            if body.startswith("[chaos-"):
                rows_by_tag[body[1:body.index("]")]].append((row_id, status, provider_id,
                                                             accepted_at))
    stuck = duplicate_sends = unexplained = 0
    in_flight: list[str] = []
    stuck_list: list[str] = []
    unexplained_list: list[str] = []
    final_statuses: Counter[int] = Counter()
    for item in book.outbound:
        found = rows_by_tag.get(item.tag, [])
        accepted = sends.get(item.tag, [])
        # In flight at a kill: the fake took a send of this row up to one send timeout before
        # a SIGKILL of a process that sends (embedded: `serve` or its worker, each sending for
        # half of the numbers; distributed: the outbound worker) and the acceptance was not
        # on the row yet when the kill came.
        committed = [parse_db_time(r[3]) for r in found if r[3]]
        flight = any(k - SEND_TIMEOUT_S <= s["time"] <= k + KILL_SETTLE_S
                     and not any(c < k for c in committed)
                     for s in accepted for k in sender_kills)
        faults = per_kind(with_kills(item.faults, item.posted_at))
        for kind in faults:
            stats[kind]["created"] += item.row_id is not None
            stats[kind]["final"] += any(r[1] in FINAL_STATUSES for r in found)
            stats[kind]["sent_once"] += len(accepted) == 1
            stats[kind]["dup_sends"] += len(accepted) > 1
        final_statuses.update(r[1] for r in found)
        if item.row_id is not None and not found:
            lost += 1
            lost_ids.append(item.tag)
        if len(found) > 1:
            dup_rows += 1
        if item.row_id is not None and not any(r[1] in FINAL_STATUSES for r in found):
            stuck += 1
            stuck_list.append(f"{item.tenant} {item.tag} {[r[:2] for r in found]}")
        if flight:
            in_flight.append(item.tag)
        if len(accepted) > 1:
            duplicate_sends += 1
            if not flight:
                unexplained += 1
                notes = "; ".join(tables.notes.get((item.tenant, r[0]), "") for r in found)
                unexplained_list.append(
                    f"{item.tenant} {item.tag} rows (id, status, provider id, accepted_at) "
                    f"{found} ({notes}): {len(accepted)} accepted sends "
                    + ", ".join(f"at {s['time']:.3f} -> {s['message_id']}" for s in accepted))

    dlq = dlq_items(h)
    no_reason = [d for d in dlq if not d.get("reason")]
    live, dead = h.backlog()
    receipts_wrong = 0
    for provider_id, tenant in book.statuses_posted.items():
        statuses = [r[1] for r in tables.outbound[tenant] if r[3] == provider_id]
        receipts_wrong += any(s != 6 for s in statuses)

    say("\n== results per fault kind (a message counts under every fault active when it was "
        "posted; kills: posted up to 3 s after one)")
    say(f"  {'fault':<14}{'injected':>9}{'acked':>8}{'stored':>8}{'lost':>6}{'dupRows':>8}"
        f"{'created':>9}{'final':>7}{'sent1x':>8}{'dupSend':>8}")
    for kind in kinds:
        s = stats.get(kind, Counter())
        injected = "-" if kind == "none" else (
            "skipped" if kind in book.skipped else str(book.injected[kind]))
        say(f"  {kind:<14}{injected:>9}{s['acked']:>8}{s['stored']:>8}{s['lost']:>6}"
            f"{s['dup_rows']:>8}{s['created']:>9}{s['final']:>7}{s['sent_once']:>8}"
            f"{s['dup_sends']:>8}")
    for kind, why in book.skipped.items():
        say(f"  skipped {kind}: {why}")
    say("\n== totals")
    say(f"  inbound messages: {len([i for h_ in book.inbound for i in h_.ids])} posted in "
        f"{len(book.inbound)} webhooks ({sum(h_.posts for h_ in book.inbound)} POSTs with "
        f"retries and repeats); acknowledged {acked}, stored {stored}, lost {lost}, "
        f"duplicate rows {dup_rows}")
    say(f"  media: {dict(tables.media_status)}")
    say(f"  outbox: {len(book.outbound)} submitted, "
        f"{sum(i.row_id is not None for i in book.outbound)} created; statuses "
        f"{dict(sorted(final_statuses.items()))}; stuck {stuck}")
    say(f"  sends: rows sent more than once {duplicate_sends}; rows in flight at a SIGKILL "
        f"{len(in_flight)}; duplicates not explained by a kill {unexplained}")
    if in_flight:
        say(f"  in flight at a kill: {', '.join(in_flight[:30])}"
            + (" ..." if len(in_flight) > 30 else ""))
    for line in unexplained_list[:10]:
        say(f"  UNEXPLAINED DUPLICATE SEND {line}")
    for line in stuck_list[:10]:
        say(f"  STUCK {line}")
    for message_id in lost_ids[:10]:
        say(f"  LOST {message_id}")
    say(f"  out-of-order receipts posted for {len(book.statuses_posted)} sends; rows not "
        f"ending as read: {receipts_wrong}")
    say(f"  queue: live {live}, dead letters {dead}; `wacloud dlq list --json`: {len(dlq)} "
        f"items, {len(no_reason)} without a reason")
    for letter in dlq[:10]:
        say(f"    {letter.get('queue')} {letter.get('tenant', '')} reason: {letter.get('reason')}")
    for error in book.errors[:10]:
        say(f"  harness note: {error}")
    for at, code, role in book.crashes:
        say(f"  CRASH: {role} exited by itself with status {code} at "
            f"t={at - book.load_start:.1f}s (restarted by the harness)")
    return Result(
        kills=len(book.kills), faults=sum(book.injected.values()), inbound_acked=acked,
        inbound_stored=stored, lost=lost, duplicate_rows=dup_rows,
        duplicate_sends=duplicate_sends, in_flight_at_kill=len(in_flight),
        unexplained_duplicate_sends=unexplained, crashes=len(book.crashes), stuck=stuck,
        dlq_without_reason=len(no_reason) + receipts_wrong, drain_s=drain_s)


# ---------------------------------------------------------------------------------- run

def run(cfg: Config, report: Callable[[str], None] = say) -> Result:
    """The harness's core: set up, load with faults, drain, check. Used by the CLI and by
    tests/e2e/test_chaos_short.py."""
    tmp = Path(tempfile.mkdtemp(prefix="wacloud-chaos-", dir="/tmp"))
    ok = False
    loaded = False  # past the setup: there is evidence to keep if the run fails
    harness: Harness | None = None
    try:
        with Processes(tmp) as procs:
            harness = Harness(cfg, tmp, procs)
            harness.setup()
            engine = ("embedded engine" if harness.broker is None else
                      f"distributed engine: {harness.broker.describe()}")
            report(f"== chaos ({engine}): seed "
                   f"{cfg.seed}, {cfg.duration:.0f} s of load, {len(harness.tenants)} tenants "
                   f"({', '.join(t.tenant for t in harness.tenants)}), data dir "
                   f"{harness.data_dir}" + (" on a tmpfs" if harness.mounted else ""))
            report(f"   load: {cfg.inbound_rate:g} webhooks/s ({cfg.media_share:.0%} of "
                   f"messages with media), {cfg.outbound_rate:g} API submissions/s")
            report("== schedule (seconds after the load starts)")
            for fault in harness.schedule:
                report(f"  t={fault.at:6.1f}s  {fault.kind}"
                       + (f" for {fault.duration:.1f}s" if fault.duration else ""))
            loaded = True
            harness.start_gateway()
            report("== load and faults")
            asyncio.run(harness.run_load())
            quiet_from = max(harness.book.last_fault_end, time.time())
            report(f"== drain (after the last fault: up to {cfg.drain_timeout:.0f} s)")
            deadline = time.monotonic() + cfg.drain_timeout
            last = time.monotonic()
            done, state = drained(harness)
            while not done and time.monotonic() < deadline:
                time.sleep(0.5)
                done, state = drained(harness)
                if time.monotonic() - last > 5:
                    report(f"   {state}")
                    last = time.monotonic()
            drain_s = time.time() - quiet_from if done else float("nan")
            report(f"   {'drained' if done else 'NOT DRAINED'}: {state}")
            result = check(harness, drain_s)
            if harness.book.start_retries:
                report(f"  starts that failed while the broker was away, tried again: "
                       f"{harness.book.start_retries}")
            harness.stop_all()
            ok = result.ok
            return result
    finally:
        keep = cfg.keep or (loaded and not ok)  # not a setup that stopped (a skip)
        if harness is not None and keep:
            # The evidence outlives the tmpfs and the PostgreSQL database.
            with contextlib.suppress(OSError):
                shutil.copytree(harness.data_dir, tmp / "data-kept", dirs_exist_ok=True)
            if harness.pg_db is not None:
                report(f"(kept PostgreSQL database {harness.pg_db} for inspection)")
                harness.pg_db = None
        if harness is not None:
            harness.cleanup()
        if keep:
            report(f"(kept {tmp} for inspection)")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--short", action="store_true", help="a ~60 s run with 6 kills")
    parser.add_argument("--duration", type=float, help="seconds of load (default 240)")
    parser.add_argument("--kills", type=int, help="SIGKILLs (default 24)")
    parser.add_argument("--inbound-rate", type=float,
                        help="webhooks/s (25; 8 on SQS, moto's ceiling)")
    parser.add_argument("--outbound-rate", type=float,
                        help="API messages/s (10; 3 on SQS)")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-tmpfs", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--engine", choices=ENGINES, default="embedded",
                        help="the queue engine (rabbitmq, sqs: distributed, with broker "
                             "outages)")
    parser.add_argument("--real-broker-restart", action="store_true",
                        help="RabbitMQ: a broker outage is rabbitmqctl stop_app / start_app "
                             "(stops the machine's RabbitMQ for everyone: only on a machine "
                             "of your own), not the proxy")
    args = parser.parse_args()
    if args.real_broker_restart and args.engine != "rabbitmq":
        parser.error("--real-broker-restart is for --engine rabbitmq")
    inbound, outbound = LOAD.get(args.engine, (Config.inbound_rate, Config.outbound_rate))
    cfg = Config(seed=args.seed, inbound_rate=args.inbound_rate or inbound,
                 outbound_rate=args.outbound_rate or outbound, use_postgres=not args.no_postgres,
                 use_tmpfs=not args.no_tmpfs, keep=args.keep, engine=args.engine,
                 real_broker_restart=args.real_broker_restart)
    if args.short:
        cfg.duration, cfg.kills, cfg.drain_timeout = 35.0, 6, 60.0
    cfg.duration = args.duration or cfg.duration
    cfg.kills = args.kills if args.kills is not None else cfg.kills
    try:
        result = run(cfg)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BaseException as exc:
        # The test suite's service helpers skip (or fail) when a server is not reachable.
        if type(exc).__name__ not in ("Skipped", "Failed"):
            raise
        print(f"cannot run the {args.engine} engine: {exc}", file=sys.stderr)
        return 2
    say(result.line())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
