"""Inbound end to end: 20,000 messages for 5 tenants, webhook POST to row stored (and media copied).

    .venv/bin/python bench/inbound.py [--messages 20000] [--concurrency 32]

Separate processes on 127.0.0.1: the fake provider (`python -m wacloud.testing.fake_provider`,
media registered through its HTTP control endpoint) and `wacloud serve` with 5 tenants, each
with its own Meta channel (phone_number_id/WABA). An asyncio keep-alive generator posts signed
webhooks of 1-10 messages (95% texts and other non-media types, 5% images and documents) and
records the send time of every wamid; the benchmark polls the 5 tenant SQLite files until every
row is in and every media file is stored, then reads each row's `received_at` (row insert time,
UTC) and, for media, `updated_at` (when the copy finished).

Then a separate measurement on a fresh gateway process: one 100,000,000-byte document in one
webhook, sampling the gateway's RSS while it is copied.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from _common import (
    HOST,
    ChannelSpec,
    Processes,
    contact_entry,
    cpu_seconds,
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
    signed,
    sqlite_ro,
    stage,
    start_fake_provider,
    start_py_spy,
    summarize_py_spy,
    target_line,
    wamid,
)
from loadgen import KeepAliveConnection

from wacloud.testing.webhooks import meta_envelope, meta_media

TENANTS = [ChannelSpec(f"tenant{i}", f"10654035224{2920 + i}", f"10229012934{300 + i}",
                       f"55119400012{30 + i}") for i in range(1, 6)]
NON_MEDIA_KINDS = ["text"] * 12 + ["reply"] * 4 + ["button", "location", "reaction"]
BIG_MEDIA_BYTES = 100_000_000

TARGET_MSGS_PER_S = 3000.0
TARGET_P99_MS = 2000.0
TARGET_RSS_MB = 300.0
TARGET_MEDIA_GROWTH_MB = 20.0


@dataclass
class Webhook:
    body: bytes
    signature: str
    ids: list[str]


@dataclass
class Sent:
    at: dict[str, float] = field(default_factory=dict)  # wamid -> epoch seconds of the POST
    http_ms: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    first: float = 0.0
    last: float = 0.0


class RssSampler:
    """Samples a process's VmRSS in a thread; `peak_kb` is the highest value seen."""

    def __init__(self, pid: int, every: float) -> None:
        self.pid, self.every = pid, every
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, proc_status_kb(self.pid, "VmRSS"))
            self._stop.wait(self.every)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def register_media(client: httpx.Client, mime_type: str, size: int,
                   filename: str | None = None) -> dict[str, Any]:
    params: dict[str, str | int] = {"mime_type": mime_type, "size": size, "provider": "meta"}
    if filename:
        params["filename"] = filename
    answer = client.post("/_fake/media", params=params, timeout=120)
    answer.raise_for_status()
    return answer.json()  # type: ignore[no-any-return]


def media_message(rng: random.Random, client: httpx.Client, sender: str, user_id: str,
                  message_id: str) -> dict[str, Any]:
    if rng.random() < 0.6:
        info = register_media(client, "image/jpeg", rng.randrange(30_000, 300_000))
        message = meta_media(sender, "image", info["id"], "image/jpeg", info["sha256_hex"],
                             message_id, caption=rng.choice([None, "Comprovante", "foto"]))
    else:
        name = f"nota-fiscal-{rng.randrange(10**5, 10**6)}.pdf"
        info = register_media(client, "application/pdf", rng.randrange(50_000, 800_000), name)
        message = meta_media(sender, "document", info["id"], "application/pdf",
                             info["sha256_hex"], message_id, filename=name)
    message["from_user_id"] = user_id
    return message


def build_webhooks(total: int, media_share: float, app_secret: str, fake_url: str,
                   seed: int) -> tuple[list[Webhook], dict[str, str], set[str]]:
    """Signed webhooks of 1-10 messages; returns them, wamid -> tenant, and the media wamids."""
    rng = random.Random(seed)
    media_positions = set(rng.sample(range(total), round(total * media_share)))
    hooks: list[Webhook] = []
    tenant_of: dict[str, str] = {}
    media_ids: set[str] = set()
    position = 0
    with httpx.Client(base_url=fake_url) as client:
        while position < total:
            channel = rng.choice(TENANTS)
            count = min(rng.randint(1, 10), total - position)
            sender, user_id, name = customer(rng)
            messages, ids = [], []
            for _ in range(count):
                message_id = wamid(f"{channel.tenant}N{position:07d}")
                if position in media_positions:
                    messages.append(media_message(rng, client, sender, user_id, message_id))
                    media_ids.add(message_id)
                else:
                    messages.append(meta_message(rng, sender, user_id, message_id,
                                                 rng.choice(NON_MEDIA_KINDS)))
                ids.append(message_id)
                tenant_of[message_id] = channel.tenant
                position += 1
            payload = meta_envelope(channel.phone_number_id, channel.waba_id,
                                    channel.display_number, messages, None,
                                    [contact_entry(sender, user_id, name)])
            body, signature = signed(payload, app_secret)
            hooks.append(Webhook(body, signature, ids))
    return hooks, tenant_of, media_ids


async def post_all(url: str, hooks: list[Webhook], concurrency: int,
                   rate: float = 0.0) -> Sent:
    """POST every webhook from `concurrency` workers, each with its own keep-alive connection
    (`loadgen.KeepAliveConnection`: httpx clients made the generator take a fifth of the CPU).
    With `rate` (messages/s) > 0, webhook i is not sent before the moment at which the
    messages ahead of it fit that rate (open loop, so a slow gateway still builds a backlog).
    """
    sent = Sent()
    due: list[float] = []
    ahead = 0
    for hook in hooks:
        due.append(ahead / rate if rate > 0 else 0.0)
        ahead += len(hook.ids)
    pending = list(reversed(list(zip(hooks, due, strict=True))))
    headers = {"Content-Type": "application/json"}

    parts = urlsplit(url)
    assert parts.hostname and parts.port

    async def worker() -> None:
        async with KeepAliveConnection(parts.hostname, parts.port) as client:
            while pending:
                hook, offset = pending.pop()
                if rate > 0 and (wait := sent.first + offset - time.time()) > 0:
                    await asyncio.sleep(wait)
                started = time.time()
                for message_id in hook.ids:
                    sent.at[message_id] = started
                try:
                    status, answer = await client.post(parts.path, hook.body, {
                        **headers, "X-Hub-Signature-256": hook.signature})
                    if status != 200:
                        sent.failures.append(f"HTTP {status}: {answer[:200]!r}")
                except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
                    sent.failures.append(repr(exc))
                sent.http_ms.append((time.time() - started) * 1000)

    sent.first = time.time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    sent.last = time.time()
    return sent


def counts(dbs: dict[str, Path]) -> tuple[int, int, int]:
    """(rows, media stored, media failed) over every tenant DB."""
    rows = stored = failed = 0
    for path in dbs.values():
        with contextlib.closing(sqlite_ro(path)) as conn:
            n, s, f = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(media_status = 'stored'), 0),"
                " COALESCE(SUM(media_status = 'failed'), 0) FROM messages").fetchone()
        rows, stored, failed = rows + n, stored + s, failed + f
    return rows, stored, failed


def wait_stored(dbs: dict[str, Path], rows_wanted: int, media_wanted: int,
                timeout: float, label: str) -> tuple[int, int, int]:
    deadline = time.monotonic() + timeout
    last_report = time.monotonic()
    state = counts(dbs)
    while (state[0] < rows_wanted or state[1] + state[2] < media_wanted) \
            and time.monotonic() < deadline:
        time.sleep(0.1)
        state = counts(dbs)
        if time.monotonic() - last_report > 5:
            log(f"{label}: {state[0]}/{rows_wanted} rows, {state[1]}/{media_wanted} media "
                f"stored, {state[2]} failed")
            last_report = time.monotonic()
    return state


def read_rows(dbs: dict[str, Path]) -> list[tuple[str, str, str, str, str | None]]:
    """(tenant, wamid, received_at, updated_at, media_status) of every row."""
    rows: list[tuple[str, str, str, str, str | None]] = []
    for tenant, path in dbs.items():
        with contextlib.closing(sqlite_ro(path)) as conn:
            rows.extend((tenant, *row) for row in conn.execute(
                "SELECT provider_message_id, received_at, updated_at, media_status"
                " FROM messages"))
    return rows


def warm_up(url: str, fake_url: str, app_secret: str, dbs: dict[str, Path]) -> None:
    """One text and one image per tenant, all the way to stored, before anything is measured:
    the stage worker starts after the HTTP port opens, and pools and lazy imports fill on
    first use; none of that is what the benchmark is about."""
    rng = random.Random(3)
    rows, media, _ = counts(dbs)
    with httpx.Client(base_url=fake_url) as fake, httpx.Client(timeout=30) as client:
        for channel in TENANTS:
            sender, user_id, name = customer(rng)
            messages = [meta_message(rng, sender, user_id, wamid(f"warm{channel.tenant}"), "text"),
                        media_message(rng, fake, sender, user_id,
                                      wamid(f"warmmedia{channel.tenant}"))]
            payload = meta_envelope(channel.phone_number_id, channel.waba_id,
                                    channel.display_number, messages, None,
                                    [contact_entry(sender, user_id, name)])
            body, signature = signed(payload, app_secret)
            client.post(url, content=body, headers={
                "Content-Type": "application/json",
                "X-Hub-Signature-256": signature}).raise_for_status()
    state = wait_stored(dbs, rows + 2 * len(TENANTS), media + len(TENANTS), 60, "warm-up")
    log(f"warm-up: {state[0] - rows} rows and {state[1] - media} media stored")


def big_media_run(procs: Processes, data_dir: Path, fake_url: str, app_secret: str,
                  timeout: float) -> tuple[float, str]:
    """RSS growth of a fresh gateway while it copies one 100,000,000-byte file (MB, report)."""
    channel = TENANTS[0]
    db = {channel.tenant: data_dir / "tenants" / f"{channel.tenant}.db"}
    rng = random.Random(7)
    with httpx.Client(base_url=fake_url) as client:
        log(f"registering a {BIG_MEDIA_BYTES:,}-byte video at the fake provider")
        big = register_media(client, "video/mp4", BIG_MEDIA_BYTES)
        sender, user_id, name = customer(rng)
        warm_id, big_id = wamid("bigwarm"), wamid("bigvideo")
        warm = media_message(rng, client, sender, user_id, warm_id)
    port = free_port()
    gateway = procs.start("wacloud-media", gateway_argv(data_dir, port), port=port,
                          env=gateway_env())
    url = f"http://{HOST}:{port}/webhooks/meta"
    before_rows = counts(db)[0]
    before_media = counts(db)[1]

    def post(message: dict[str, Any]) -> None:
        payload = meta_envelope(channel.phone_number_id, channel.waba_id,
                                channel.display_number, [message], None,
                                [contact_entry(sender, user_id, name)])
        body, signature = signed(payload, app_secret)
        answer = httpx.post(url, content=body, headers={
            "Content-Type": "application/json", "X-Hub-Signature-256": signature}, timeout=30)
        answer.raise_for_status()

    # Warm up: one small image goes all the way, so lazy imports and pools exist already.
    post(warm)
    wait_stored(db, before_rows + 1, before_media + 1, 60, "warm-up")
    time.sleep(1.0)
    samples = []
    for _ in range(10):
        samples.append(proc_status_kb(gateway.pid, "VmRSS"))
        time.sleep(0.05)
    baseline_kb = sorted(samples)[len(samples) // 2]
    hwm_before = proc_status_kb(gateway.pid, "VmHWM")
    message = meta_media(sender, "video", big["id"], "video/mp4", big["sha256_hex"], big_id)
    message["from_user_id"] = user_id
    started = time.monotonic()
    with RssSampler(gateway.pid, 0.01) as sampler:
        post(message)
        state = wait_stored(db, before_rows + 2, before_media + 2, timeout, "100 MB copy")
    elapsed = time.monotonic() - started
    hwm_after = proc_status_kb(gateway.pid, "VmHWM")
    with contextlib.closing(sqlite_ro(db[channel.tenant])) as conn:
        status, size, error = conn.execute(
            "SELECT media_status, media_size, media_error FROM messages"
            " WHERE provider_message_id = ?", (big_id,)).fetchone() or (None, None, None)
    peak_kb = max(sampler.peak_kb, hwm_after if hwm_after > hwm_before else 0)
    growth_mb = (peak_kb - baseline_kb) / 1024
    procs.stop(gateway)
    report = (f"media status {status}, size {size}, error {error}; copied in {elapsed:.1f} s "
              f"({BIG_MEDIA_BYTES / 1e6 / elapsed:.0f} MB/s incl. webhook and polling); "
              f"gateway RSS baseline {baseline_kb / 1024:.1f} MB, peak "
              f"{peak_kb / 1024:.1f} MB (sampled every 10 ms; VmHWM {hwm_before / 1024:.1f} -> "
              f"{hwm_after / 1024:.1f} MB)")
    if state[2] or status != "stored":
        report += "  - THE COPY DID NOT SUCCEED"
    return growth_mb, report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--media-share", type=float, default=0.05)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate", type=float, default=0.0,
                        help="offered messages/s (default 0: as fast as the 32 workers go)")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds to wait for every row and media file")
    parser.add_argument("--skip-big-media", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--py-spy", action="store_true",
                        help="profile the gateway for 8 s of the load (pip install py-spy)")
    args = parser.parse_args()

    app_secret = uuid.uuid4().hex
    token = "bench-" + uuid.uuid4().hex
    tmp = Path(tempfile.mkdtemp(prefix="wacloud-bench-inbound-", dir="/tmp"))
    ok = False
    try:
        with Processes(tmp) as procs:
            fake, fake_url = start_fake_provider(procs, token)
            with stage(f"setup: 5 tenants, fake provider on {fake_url}, data dir {tmp}"):
                setup = setup_gateway(tmp / "data", TENANTS, app_secret=app_secret,
                                      token=token, api_base_url=fake_url)
                hooks, tenant_of, media_ids = build_webhooks(
                    args.messages, args.media_share, app_secret, fake_url, seed=1)
                sizes = [len(h.body) for h in hooks]
                log(f"{len(hooks):,} signed webhooks ({min(sizes)}-{max(sizes)} bytes, mean "
                    f"{sum(sizes) / len(sizes):.0f}) carrying {len(tenant_of):,} messages, "
                    f"{len(media_ids)} of them images/documents registered at the fake")
            dbs = {c.tenant: setup.tenant_db(c.tenant) for c in TENANTS}

            port = free_port()
            gateway = procs.start("wacloud", gateway_argv(setup.data_dir, port), port=port,
                                  env=gateway_env())
            with stage("warm-up: one text and one image per tenant, stored"):
                warm_up(f"http://{HOST}:{port}/webhooks/meta", fake_url, app_secret, dbs)
            warm_rows, warm_media, _ = counts(dbs)
            with stage(f"load: {args.concurrency} keep-alive connections POSTing to wacloud"
                       + (f" at {args.rate:g} messages/s" if args.rate else "")
                       + ", then polling the 5 tenant DBs"), RssSampler(gateway.pid, 0.05) as rss:
                cpu_pids = {"gateway": gateway.pid, "fake provider": fake.pid,
                            "load generator (this process)": os.getpid()}
                # The gateway's worker process counts; the generator's children do not.
                own = {"gateway": True, "fake provider": False}

                def cpu(name: str) -> float:
                    return cpu_seconds(cpu_pids[name], children=own.get(name, False))

                cpu_before = {name: cpu(name) for name in cpu_pids}
                spy = (start_py_spy(procs, gateway.pid, tmp / "py-spy-gateway.raw", 8)
                       if args.py_spy else None)
                wall_before = time.monotonic()
                sent = asyncio.run(post_all(f"http://{HOST}:{port}/webhooks/meta", hooks,
                                            args.concurrency, args.rate))
                post_s = sent.last - sent.first
                log(f"posted {len(hooks):,} webhooks in {post_s:.2f} s "
                    f"({len(hooks) / post_s:,.0f}/s, {len(tenant_of) / post_s:,.0f} messages/s);"
                    f" HTTP p50 {fmt(percentile(sent.http_ms, 50))} ms, p99 "
                    f"{fmt(percentile(sent.http_ms, 99))} ms; failures {len(sent.failures)}")
                for failure in sent.failures[:5]:
                    log(f"  {failure}")
                rows, stored, failed = wait_stored(dbs, warm_rows + len(tenant_of),
                                                   warm_media + len(media_ids), args.timeout,
                                                   "waiting")
                rows, stored = rows - warm_rows, stored - warm_media
                done_at = time.time()
                wall = time.monotonic() - wall_before
                log(f"CPU used during the {wall:.1f} s of load + polling (2 cores = "
                    f"{2 * wall:.1f} CPU-s): " + ", ".join(
                        f"{name} {cpu(name) - cpu_before[name]:.1f} s" for name in cpu_pids))
                log(f"rows {rows}/{len(tenant_of)}, media stored {stored}/{len(media_ids)}, "
                    f"media failed {failed}; queues (live, dead) "
                    f"{queue_backlog(setup.queue_db)}")
            summarize_py_spy(spy, tmp / "py-spy-gateway.raw")
            rss_mb = proc_status_kb(gateway.pid, "VmHWM") / 1024
            log(f"gateway VmHWM {rss_mb:.1f} MB (sampled VmRSS peak "
                f"{rss.peak_kb / 1024:.1f} MB)")
            procs.stop(gateway)

            table = read_rows(dbs)
            row_ms, media_ms, ends, wrong_tenant = [], [], [], 0
            for tenant, message_id, received_at, updated_at, media_status in table:
                sent_at = sent.at.get(message_id)
                if sent_at is None:
                    continue
                wrong_tenant += tenant_of[message_id] != tenant
                inserted = parse_db_time(received_at)
                row_ms.append((inserted - sent_at) * 1000)
                ends.append(inserted)
                if message_id in media_ids:
                    finished = parse_db_time(updated_at)
                    ends.append(finished)
                    if media_status == "stored":
                        media_ms.append((finished - sent_at) * 1000)
            missing = len(tenant_of) - len(row_ms)
            complete = not missing and len(media_ms) == len(media_ids) and not sent.failures
            end = max(ends) if ends else done_at
            msgs_per_s = len(row_ms) / (end - sent.first) if end > sent.first else 0.0
            p50, p99 = percentile(row_ms, 50), percentile(row_ms, 99)
            log(f"end to end: {len(row_ms):,} messages in {end - sent.first:.2f} s from the "
                f"first POST to the last row/media stored = {msgs_per_s:,.0f} messages/s")
            log(f"POST -> row stored: p50 {fmt(p50)} ms, p90 {fmt(percentile(row_ms, 90))} ms, "
                f"p99 {fmt(p99)} ms, max {fmt(max(row_ms, default=float('nan')))} ms")
            log(f"POST -> media file stored ({len(media_ms)} files): p50 "
                f"{fmt(percentile(media_ms, 50))} ms, p99 {fmt(percentile(media_ms, 99))} ms")
            log(f"missing rows {missing}, rows in the wrong tenant DB {wrong_tenant}, "
                f"complete: {complete}")

            growth_mb = float("nan")
            if not args.skip_big_media:
                with stage("separate: one 100,000,000-byte video in one webhook, fresh gateway"):
                    growth_mb, report = big_media_run(procs, setup.data_dir, fake_url,
                                                      app_secret, args.timeout)
                    log(report)
                    log(f"RSS growth while copying: {growth_mb:.1f} MB")

        print("\n== summary")
        print(target_line("messages/s end to end", msgs_per_s, ">=", TARGET_MSGS_PER_S))
        print(f"  {'p50 POST -> row stored':<34} {fmt(p50, 2):>10} ms")
        print(target_line("p99 POST -> row stored", p99, "<", TARGET_P99_MS, " ms"))
        print(target_line("gateway peak RSS (VmHWM)", rss_mb, "<", TARGET_RSS_MB, " MB"))
        print(target_line("RSS growth, 100 MB media", growth_mb, "<", TARGET_MEDIA_GROWTH_MB,
                          " MB"))
        print(f"  all {len(tenant_of):,} messages stored in the right tenant, all media copied: "
              f"{complete and not wrong_tenant}")
        ok = True
        print(f"RESULT inbound msgs_per_s={msgs_per_s:.0f} p50_ms={p50:.1f} p99_ms={p99:.1f} "
              f"rss_mb={rss_mb:.1f} media_rss_growth_mb={fmt(growth_mb)}")
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        if args.keep or args.py_spy or not ok:
            print(f"(kept {tmp} for inspection)")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
