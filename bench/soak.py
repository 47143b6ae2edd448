"""Load held: open-loop webhooks (10% media) and API sends at stepped rates; latency and memory.

    .venv/bin/python bench/soak.py [--rates 250,500,1000,2000,3000] [--step-seconds 120] [--short]

Embedded engine only (the distributed engine does not exist yet).

Separate processes on 127.0.0.1: the fake provider and `wacloud serve` (HTTP process + stage
worker) with 5 tenants, each with one Meta channel (Graph base URL = the fake, `--mps 10000`).
For each rate, for `--step-seconds`: webhook i (one message; every tenth an image or document
registered at the fake) is due at step start + i / rate and is POSTed then over one of
`--connections` keep-alive connections (open loop: arrivals do not wait for answers; when
every connection is busy the request waits, and that wait counts, as latency is measured from
the moment it was due). Beside it, `--api-rate` messages/s go through `POST /v1/messages`
with tenant keys. After each step the harness waits until every row is stored and every send
reached the fake, then reads:
- POST -> tenant row: the row's `received_at` minus the webhook's due time (the message id
  encodes step and index, so its due time is known without bookkeeping);
- POST -> media stored: for the messages with media, the row's `updated_at` once its media
  is stored (media copies give way to rows when the stages fall behind);
- API submit -> provider call: the fake's recorded arrival minus the submission's due time
  (the text carries its tag);
p50/p99/max of both, plus HTTP failures. The gateway's RSS (VmRSS of serve + worker) is read
after a warm-up and after the last step. Stepping stops after the first step whose webhook p99
passes 1 s.

Last line: `RESULT soak max_rate=... p99_ms_at_2000=... rss_start_mb=... rss_end_mb=...`;
max_rate is the highest rate whose webhook p99 stayed under 1 s with nothing missing.
Goal on this machine: 2,000 webhooks/s held with p99 under 250 ms, no memory growth.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from _common import (
    HOST,
    Processes,
    contact_entry,
    create_tenant_api_keys,
    customer,
    fmt,
    free_port,
    gateway_argv,
    gateway_env,
    log,
    meta_message,
    parse_db_time,
    percentile,
    proc_status_kb,
    queue_backlog,
    setup_gateway,
    sqlite_ro,
    stage,
    start_fake_provider,
    target_line,
    wamid,
)
from inbound import TENANTS, register_media
from loadgen import KeepAliveConnection

from wacloud.testing.webhooks import dumps, meta_envelope, meta_media, sign

P99_LIMIT_MS = 1000.0
TARGET_RATE = 2000
TARGET_P99_MS = 250.0
ID_MARK = "@@ID@@"


@dataclass
class Step:
    rate: float
    seconds: float
    number: int
    start: float = 0.0  # wall clock of index 0's due time
    hooks: int = 0
    media: int = 0
    api: dict[str, float] = field(default_factory=dict)  # tag -> due time
    failures: list[str] = field(default_factory=list)

    def due(self, index: int) -> float:
        return self.start + index / self.rate


class Templates:
    """Signed webhook bodies from templates: one message whose id is filled in per request, so
    the generator spends microseconds per body (it shares the 2 cores with the gateway)."""

    def __init__(self, app_secret: str, media: list[dict[str, Any]], seed: int) -> None:
        rng = random.Random(seed)
        self.app_secret = app_secret
        self.text: list[tuple[int, bytes]] = []
        self.media: list[tuple[int, bytes]] = []
        for n in range(40):
            tenant = n % len(TENANTS)
            channel = TENANTS[tenant]
            sender, user_id, name = customer(rng)
            message = meta_message(rng, sender, user_id, ID_MARK,
                                   rng.choice(["text", "text", "reply", "location"]))
            self.text.append((tenant, self._body(channel, message, sender, user_id, name)))
            info = media[n % len(media)]
            kind = "image" if info["mime_type"].startswith("image/") else "document"
            item = meta_media(sender, kind, info["id"], info["mime_type"], info["sha256_hex"],
                              ID_MARK, filename=info.get("filename"))
            item["from_user_id"] = user_id
            self.media.append((tenant, self._body(channel, item, sender, user_id, name)))

    @staticmethod
    def _body(channel: Any, message: dict[str, Any], sender: str, user_id: str,
              name: str) -> bytes:
        return dumps(meta_envelope(channel.phone_number_id, channel.waba_id,
                                   channel.display_number, [message], None,
                                   [contact_entry(sender, user_id, name)]))

    def make(self, index: int, message_id: str) -> tuple[int, bytes, str]:
        pool = self.media if index % 10 == 9 else self.text
        tenant, template = pool[index % len(pool)]
        body = template.replace(ID_MARK.encode(), message_id.encode())
        return tenant, body, sign(body, self.app_secret)


def hook_id(step: int, index: int) -> str:
    return wamid(f"S{step:02d}N{index:08d}")


async def run_step(step: Step, port: int, templates: Templates, keys: dict[str, str],
                   connections: int, api_rate: float) -> list[float]:
    """Offer the step's load open loop; returns the webhook HTTP answer times (ms)."""
    total = round(step.rate * step.seconds)
    api_total = round(api_rate * step.seconds)
    queue: asyncio.Queue[tuple[str, bytes, dict[str, str]] | None] = asyncio.Queue()
    http_ms: list[float] = []
    step.start = time.time() + 0.2
    step.hooks = total

    async def producer() -> None:
        hook, api = 0, 0
        while hook < total or api < api_total:
            now = time.time()
            while hook < total and step.due(hook) <= now:
                _, body, signature = templates.make(hook, hook_id(step.number, hook))
                step.media += hook % 10 == 9
                queue.put_nowait(("/webhooks/meta", body, {
                    "Content-Type": "application/json", "X-Hub-Signature-256": signature}))
                hook += 1
            while api < api_total and step.start + api / api_rate <= now:
                channel = TENANTS[api % len(TENANTS)]
                tag = f"soak-S{step.number:02d}-{api:07d}"
                step.api[tag] = step.start + api / api_rate
                body = json.dumps({"channel": channel.phone_number_id,
                                   "to": f"5511{9_0000_0000 + api % 5000}", "type": "text",
                                   "text": {"body": f"[{tag}] Seu pedido foi enviado."}}).encode()
                queue.put_nowait(("/v1/messages", body, {
                    "Content-Type": "application/json",
                    "Authorization": f"Bearer {keys[channel.tenant]}"}))
                api += 1
            await asyncio.sleep(0.002)
        for _ in range(connections):
            queue.put_nowait(None)

    async def worker() -> None:
        async with KeepAliveConnection(HOST, port) as conn:
            while (item := await queue.get()) is not None:
                target, body, headers = item
                started = time.monotonic()
                try:
                    status, answer = await conn.post(target, body, headers)
                    if status not in (200, 201):
                        step.failures.append(f"{target} HTTP {status}: {answer[:120]!r}")
                except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
                    step.failures.append(f"{target} {exc!r}")
                if target == "/webhooks/meta":
                    http_ms.append((time.monotonic() - started) * 1000)

    await asyncio.gather(producer(), *(worker() for _ in range(connections)))
    return http_ms


@dataclass
class StepRows:
    rows: list[tuple[str, str]]  # (provider id, received_at)
    media_stored: list[tuple[str, str]]  # (provider id, updated_at: when the copy was stored)
    pending: int
    failed: int


def step_rows(dbs: list[Path], step: int) -> StepRows:
    """The step's rows, when the media of those with media was stored, media pending/failed."""
    prefix = hook_id(step, 0)[:-8]
    found: list[tuple[str, str, str | None, str]] = []
    for path in dbs:
        with contextlib.closing(sqlite_ro(path)) as conn:
            found += conn.execute("SELECT provider_message_id, received_at, media_status,"
                                  " updated_at FROM messages WHERE provider_message_id LIKE ?",
                                  (prefix + "%",)).fetchall()
    return StepRows([(r[0], r[1]) for r in found],
                    [(r[0], r[3]) for r in found if r[2] == "stored"],
                    sum(r[2] == "pending" for r in found), sum(r[2] == "failed" for r in found))


def fake_arrivals(fake_url: str, prefix: str) -> dict[str, float]:
    sent = httpx.get(f"{fake_url}/_fake/sent", timeout=120).json()["sent"]
    found: dict[str, float] = {}
    for record in sent:
        text = ((record.get("body") or {}).get("text") or {}).get("body") or ""
        if text.startswith("[" + prefix) and 200 <= record["status"] < 300:
            found.setdefault(text[1:text.index("]")], float(record["time"]))
    return found


def describe(values: list[float]) -> str:
    return (f"p50 {fmt(percentile(values, 50))} ms, p99 {fmt(percentile(values, 99))} ms, "
            f"max {fmt(max(values, default=math.nan))} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="250,500,1000,2000,3000",
                        help="webhooks/s of each step, comma-separated")
    parser.add_argument("--step-seconds", type=float, default=120.0)
    parser.add_argument("--short", action="store_true", help="30 s per step")
    parser.add_argument("--api-rate", type=float, default=50.0,
                        help="POST /v1/messages per second during each step")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--drain-timeout", type=float, default=180.0)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    seconds = 30.0 if args.short else args.step_seconds
    rates = [float(r) for r in args.rates.split(",") if r.strip()]

    app_secret = uuid.uuid4().hex
    token = "soak-" + uuid.uuid4().hex
    tmp = Path(tempfile.mkdtemp(prefix="wacloud-bench-soak-", dir="/tmp"))
    ok = False
    results: list[tuple[float, float, bool]] = []  # (rate, webhook p99 ms, complete)
    try:
        with Processes(tmp) as procs:
            _, fake_url = start_fake_provider(procs, token)
            with stage(f"setup: 5 tenants, fake provider on {fake_url}, data dir {tmp}"):
                setup = setup_gateway(tmp / "data", TENANTS, app_secret=app_secret,
                                      token=token, api_base_url=fake_url, mps=10_000)
                keys = create_tenant_api_keys(setup.data_dir, [t.tenant for t in TENANTS])
                rng = random.Random(5)
                with httpx.Client(base_url=fake_url) as client:
                    media = [register_media(client, *(("image/jpeg", rng.randrange(5_000, 30_000))
                                                      if n % 2 else
                                                      ("application/pdf",
                                                       rng.randrange(10_000, 40_000),
                                                       f"nota-{n}.pdf")))
                             for n in range(20)]
                templates = Templates(app_secret, media, seed=9)
            dbs = [setup.tenant_db(t.tenant) for t in TENANTS]
            port = free_port()
            gateway = procs.start("wacloud", gateway_argv(setup.data_dir, port), port=port,
                                  env=gateway_env({"WACLOUD_PAIR_BURST": "1000000"}))
            with stage("warm-up: 5 s at 100 webhooks/s and 5 API messages/s"):
                warm = Step(100, 5, 0)
                asyncio.run(run_step(warm, port, templates, keys, 8, 5))
                wait_step(warm, dbs, fake_url, setup.queue_db, 60)
            time.sleep(1.0)
            rss_start = proc_status_kb(gateway.pid, "VmRSS") / 1024
            log(f"gateway RSS (serve + worker) after warm-up: {rss_start:.1f} MB")
            p99_at_target = math.nan
            for number, rate in enumerate(rates, start=1):
                step = Step(rate, seconds, number)
                with stage(f"step {number}: {rate:g} webhooks/s (10% media) + "
                           f"{args.api_rate:g} API messages/s for {seconds:g} s, open loop"):
                    http_ms = asyncio.run(run_step(step, port, templates, keys,
                                                   args.connections, args.api_rate))
                    offered_end = step.due(step.hooks)
                    log(f"posted {step.hooks:,} webhooks and {len(step.api):,} API messages; "
                        f"generator finished {time.time() - offered_end:+.1f} s after the last "
                        f"due time; webhook HTTP answers: {describe(http_ms)}; failures "
                        f"{len(step.failures)}")
                    for failure in step.failures[:5]:
                        log(f"  {failure}")
                    complete, row_ms, media_ms, send_ms = wait_step(
                        step, dbs, fake_url, setup.queue_db, args.drain_timeout)
                    p99 = percentile(row_ms, 99)
                    log(f"POST -> tenant row: {describe(row_ms)}")
                    # Media copies give way to rows when the stages fall behind (see
                    # StageRunner.defer_to): this says how far behind they were.
                    log(f"POST -> media stored: {describe(media_ms)}")
                    log(f"API submit -> provider call: {describe(send_ms)}")
                    log(f"gateway RSS now {proc_status_kb(gateway.pid, 'VmRSS') / 1024:.1f} MB")
                    results.append((rate, p99, complete))
                    if rate == TARGET_RATE:
                        p99_at_target = p99
                if not complete or math.isnan(p99) or p99 > P99_LIMIT_MS:
                    log(f"stopping: p99 {fmt(p99)} ms (limit {P99_LIMIT_MS:g}), complete "
                        f"{complete}")
                    break
            time.sleep(1.0)
            rss_end = proc_status_kb(gateway.pid, "VmRSS") / 1024
            procs.stop(gateway)

        held = [rate for rate, p99, complete in results if complete and p99 <= P99_LIMIT_MS]
        max_rate = max(held, default=0.0)
        print("\n== summary (embedded engine)")
        for rate, p99, complete in results:
            print(f"  {rate:>6g} webhooks/s: p99 POST -> row {fmt(p99)} ms, complete {complete}")
        print(target_line(f"p99 at {TARGET_RATE} webhooks/s", p99_at_target, "<", TARGET_P99_MS,
                          " ms"))
        print(f"  gateway RSS (serve + worker): {rss_start:.1f} MB after warm-up, "
              f"{rss_end:.1f} MB after the last step ({rss_end - rss_start:+.1f} MB)")
        ok = True
        print(f"RESULT soak max_rate={max_rate:.0f} p99_ms_at_2000={fmt(p99_at_target)} "
              f"rss_start_mb={rss_start:.1f} rss_end_mb={rss_end:.1f}")
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        if args.keep or not ok:
            print(f"(kept {tmp} for inspection)")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


def wait_step(step: Step, dbs: list[Path], fake_url: str, queue_db: Path,
              timeout: float) -> tuple[bool, list[float], list[float], list[float]]:
    """Wait until the step's rows and media are stored and its sends reached the fake;
    returns (complete, POST -> row ms, POST -> media stored ms, submit -> provider ms)."""
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    prefix = f"soak-S{step.number:02d}-"
    while True:
        found = step_rows(dbs, step.number)
        arrivals = fake_arrivals(fake_url, prefix)
        complete = (len(found.rows) >= step.hooks and not found.pending
                    and len(arrivals) >= len(step.api))
        if complete or time.monotonic() > deadline:
            break
        if time.monotonic() - last > 10:
            log(f"waiting: rows {len(found.rows)}/{step.hooks}, media pending {found.pending}, "
                f"sends {len(arrivals)}/{len(step.api)}, queue {queue_backlog(queue_db)}")
            last = time.monotonic()
        time.sleep(0.5)
    if found.failed:
        log(f"media failed: {found.failed}")

    def since_due(pairs: list[tuple[str, str]]) -> list[float]:
        return [(parse_db_time(at) - step.due(int(message_id[-8:]))) * 1000
                for message_id, at in pairs]

    send_ms = [(arrivals[tag] - due) * 1000 for tag, due in step.api.items() if tag in arrivals]
    return complete, since_due(found.rows), since_due(found.media_stored), send_ms


if __name__ == "__main__":
    sys.exit(main())
