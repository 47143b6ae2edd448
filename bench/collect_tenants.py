"""The collector with many tenant databases: one full sweep, and how long a row waits pending.

    .venv/bin/python bench/collect_tenants.py [--tenants 1000] [--engine sqlite|postgresql]

Creates `--tenants` tenant databases (SQLite files, copies of one migrated file; or PostgreSQL
databases on 127.0.0.1:5432, copies of one migrated template database), registers them in a
SQLite registry, and runs the collector in this process against the real SQLite queue, twice:

- **wacloud**: what `serve` runs: `--concurrency` tenants at a time, a tenant without pending
  rows costs one read, idle tenants back off (`WACLOUD_COLLECT_IDLE_MAX_S`), and a row
  inserted through the API path wakes its tenant;
- **baseline** (`--sequential` runs only this one): the behaviour before, one tenant after the
  other, every tenant at every pass.

Each run measures one full sweep (every tenant looked at, a few with pending rows) and then,
with the collect loop running, inserts rows into random tenants for `--seconds` (a row and a
wake, as `POST /v1/messages` does) and reports pending -> queued (`queued_at - created_at` of
each row) p50/p99. Open engines are capped at `--engines-max` (`WACLOUD_TENANT_ENGINES_MAX`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmt, log, percentile

from wacloud.adapters.db.engines import create_engine
from wacloud.adapters.db.migrate import upgrade
from wacloud.adapters.db.registry.store import Registry
from wacloud.adapters.db.tenant import tables as t
from wacloud.adapters.db.tenant.submissions import submit_outbound
from wacloud.adapters.queue.base import QueueSpec
from wacloud.adapters.queue.sqlite.broker import SqliteBroker
from wacloud.credentials.broker import CredentialsBroker
from wacloud.domain.model import Provider
from wacloud.security.crypto import SecretBox, new_key
from wacloud.stages import envelopes
from wacloud.stages.collect import CollectContext, CollectSchedule, collect

PN = "106540352242922"
PG = "postgresql+psycopg://postgres@127.0.0.1:5432"


@dataclass
class Figures:
    sweep_ms: float
    p50_ms: float
    p99_ms: float
    rows: int


def slug(i: int) -> str:
    return f"t{i:05d}"


@contextlib.contextmanager
def tenant_urls(engine: str, count: int, root: Path) -> Iterator[list[str | None]]:
    """`count` migrated tenant databases; None stands for the tenant's default SQLite file."""
    if engine == "sqlite":
        template = root / "template.db"
        tpl = create_engine(f"sqlite:///{template}")
        upgrade(tpl, "tenant")
        tpl.dispose()
        tenants = root / "tenants"
        tenants.mkdir()
        for i in range(count):
            shutil.copyfile(template, tenants / f"{slug(i)}.db")
        yield [None] * count
        return
    import psycopg

    prefix = f"wacloud_bench_collect_{random.randrange(16**8):08x}"
    names = [f"{prefix}_{i}" for i in range(count)]

    def admin() -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres",
                               autocommit=True)

    def create(name: str) -> None:
        with admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{prefix}_template"')

    def drop(name: str) -> None:
        with admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    try:
        with admin() as conn:
            conn.execute(f'CREATE DATABASE "{prefix}_template" TEMPLATE template0')
        tpl = create_engine(f"{PG}/{prefix}_template")
        upgrade(tpl, "tenant")
        tpl.dispose()
        for name in names:  # one at a time: PostgreSQL copies from the template serially
            create(name)
        yield [f"{PG}/{name}" for name in names]
    finally:
        with ThreadPoolExecutor(8) as pool:  # concurrent drops share their checkpoints
            list(pool.map(drop, [*names, f"{prefix}_template"]))


def seed(broker: CredentialsBroker, tenants: list[str], rows: int) -> None:
    for tenant in tenants:
        engine = broker.tenant_store(tenant).engine
        for n in range(rows):
            submit_outbound(engine, channel=PN, recipient=f"55119{n:08d}", type="text",
                            content={"text": {"body": "seed"}})


def latencies(broker: CredentialsBroker, tenants: set[str]) -> list[float]:
    """pending -> queued of every queued row of these tenants, in ms (then the rows go)."""
    out: list[float] = []
    om = t.outbound_messages
    for tenant in tenants:
        engine = broker.tenant_store(tenant).engine
        with engine.begin() as conn:
            for created, queued in conn.execute(
                    sa.select(om.c.created_at, om.c.queued_at).where(om.c.queued_at.is_not(None))):
                out.append((queued - created).total_seconds() * 1000)
            conn.execute(om.delete())
    return out


async def measure(broker: CredentialsBroker, queues: SqliteBroker, slugs: list[str], *,
                  sequential: bool, args: argparse.Namespace) -> Figures:
    rng = random.Random(7)
    queue = queues.queue(QueueSpec(envelopes.OUTBOUND_SEND, fifo=True))
    schedule = None if sequential else CollectSchedule(args.poll_s, args.idle_max_s)
    ctx = CollectContext(broker, queue, batch=500,
                         concurrency=1 if sequential else args.concurrency, schedule=schedule)
    pending = rng.sample(slugs, max(1, len(slugs) // 20))
    seed(broker, pending, 3)
    started = time.perf_counter()
    await collect(ctx)  # one full sweep: every tenant, the scheduled run's first too
    sweep_ms = (time.perf_counter() - started) * 1000
    latencies(broker, set(pending))

    stop, wake = asyncio.Event(), asyncio.Event()

    async def loop() -> None:  # hosting.embedded.collect_loop, without its reclaim passes
        while not stop.is_set():
            wake.clear()
            await collect(ctx)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=args.poll_s)

    collector = asyncio.create_task(loop())
    touched: set[str] = set()
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        tenant = rng.choice(slugs)
        touched.add(tenant)
        store = await broker.tenant_store_async(tenant)
        await asyncio.to_thread(submit_outbound, store.engine, channel=PN,
                                recipient="5511987654321", type="text",
                                content={"text": {"body": "hi"}})
        if schedule is not None:
            schedule.wake(tenant)  # as the API does after its insert
        wake.set()
        await asyncio.sleep(rng.expovariate(args.rate))  # open-loop arrivals
    inserted = len(touched)
    await asyncio.sleep(max(args.idle_max_s, args.poll_s) + 1)  # the last rows get queued
    stop.set()
    wake.set()
    await collector
    values = await asyncio.to_thread(latencies, broker, touched)
    if len(values) < inserted:
        log(f"warning: only {len(values)} rows queued for {inserted} tenants")
    return Figures(sweep_ms, percentile(values, 50), percentile(values, 99), len(values))


async def run(args: argparse.Namespace, root: Path, urls: list[str | None]) -> None:
    registry = Registry(create_engine(f"sqlite:///{root / 'registry.db'}"),
                        SecretBox([new_key()]))
    registry.create_schema()
    slugs = [slug(i) for i in range(args.tenants)]
    for name, url in zip(slugs, urls, strict=True):
        registry.add_tenant(name, url)
        registry.add_channel(tenant=name, provider=Provider.META, key=f"{PN}{name}",
                             phone_number_id=f"{PN}{name}", token="tok")
    broker = CredentialsBroker(registry, tenants_dir=root / "tenants", cache_seconds=3600,
                               tenant_engines_max=args.engines_max,
                               tenant_pool_size=args.pool_size)
    queues = SqliteBroker(root / "queues.db")
    # Every tenant opened once first (its schema checked): the runs time collecting, not a
    # process's first look at each database.
    for name in slugs:
        broker.tenant_store(name)
    try:
        results: dict[str, Figures] = {}
        for name, sequential in (("baseline", True), ("wacloud", False)):
            if name == "wacloud" and args.sequential:
                continue
            log(f"{name}: {args.tenants} tenants on {args.engine}")
            results[name] = await measure(broker, queues, slugs, sequential=sequential,
                                          args=args)
            got = results[name]
            print(f"{name:9s} sweep {fmt(got.sweep_ms)} ms  pending->queued p50 "
                  f"{fmt(got.p50_ms)} ms p99 {fmt(got.p99_ms)} ms ({got.rows} rows)",
                  flush=True)
    finally:
        await queues.close()
        broker.close()
        registry.engine.dispose()
    base = results["baseline"]
    ours = results.get("wacloud", base)
    print(f"RESULT collect_tenants tenants={args.tenants} sweep_ms={ours.sweep_ms:.1f} "
          f"pending_to_queued_p50_ms={ours.p50_ms:.1f} p99_ms={ours.p99_ms:.1f} "
          f"baseline_sweep_ms={base.sweep_ms:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--engine", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--engines-max", type=int, default=64)
    parser.add_argument("--pool-size", type=int, default=4)
    parser.add_argument("--poll-s", type=float, default=1.0)
    parser.add_argument("--idle-max-s", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=15.0, help="of inserts per run")
    parser.add_argument("--rate", type=float, default=20.0, help="rows inserted per second")
    parser.add_argument("--sequential", action="store_true",
                        help="only the baseline (one tenant after the other, every pass)")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="wacloud-bench-collect-"))
    try:
        with tenant_urls(args.engine, args.tenants, root) as urls:
            asyncio.run(run(args, root, urls))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
