"""Outbound end to end: 20,000 outbox rows for 5 tenants and 20 numbers, row inserted to provider.

    .venv/bin/python bench/outbound.py [--messages 20000] [--concurrency 64]

Separate processes on 127.0.0.1: the fake provider (`python -m wacloud.testing.fake_provider`)
and `wacloud serve` (`WACLOUD_DEV_ALLOW_LOCAL_URLS=1`) with 5 tenants, each with 4 Meta
channels (20 sending numbers, `--mps 10000`) whose Graph base URL is the fake.

1. Bulk: with the gateway already running, 20,000 pending text rows (status 0) are inserted
   straight into the 5 tenant SQLite files, the way a tenant's own system does (plain sqlite3,
   one `executemany` per tenant in one transaction, only channel/recipient/type/content: the
   server defaults fill in the rest), to 2,000 distinct recipients. The collector finds them by
   polling. Every body is unique, so each send the fake records (`GET /_fake/sent`, with its
   wall-clock arrival `time`) maps back to its row; a row's insert time is its tenant's commit.
2. Light load: 10 messages/s for 10 s through `POST /v1/messages` with tenant API keys; latency
   from the POST being sent to the fake receiving the message.
3. Baseline (before the gateway starts): the fake's own throughput for direct sends through
   the gateway's HTTP client (`wacloud.adapters.http.provider_client`, aiohttp) at its send
   concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from _common import (
    HOST,
    TEXTS,
    ChannelSpec,
    Processes,
    cpu_seconds,
    create_tenant_api_keys,
    fmt,
    free_port,
    gateway_argv,
    gateway_env,
    log,
    parse_db_time,
    percentile,
    proc_status_kb,
    setup_gateway,
    sqlite_ro,
    stage,
    start_fake_provider,
    start_py_spy,
    summarize_py_spy,
    target_line,
)

from wacloud.adapters.http.provider_client import ProviderCallError, ProviderClient
from wacloud.domain.model import ProviderRequest

TENANT_SLUGS = [f"tenant{i}" for i in range(1, 6)]
NUMBERS_PER_TENANT = 4
CHANNELS = [ChannelSpec(slug, f"1065403522{t}{n:02d}", f"10229012934{t}",
                        f"551194000{t}{n:02d}")
            for t, slug in enumerate(TENANT_SLUGS, start=1) for n in range(NUMBERS_PER_TENANT)]
GRAPH = "v23.0"
MPS = 10_000
PAIR_BURST = 1_000_000
ACCEPTED = 3

TARGET_MSGS_PER_S = 1000.0
TARGET_LIGHT_P50_MS = 50.0
TARGET_RSS_MB = 300.0


def channel_for(i: int) -> ChannelSpec:
    """Message i goes to tenant i % 5, which spreads its messages over its numbers."""
    tenants = len(TENANT_SLUGS)
    return CHANNELS[(i % tenants) * NUMBERS_PER_TENANT + (i // tenants) % NUMBERS_PER_TENANT]


def text_body(tag: str, rng: random.Random) -> str:
    return f"[{tag}] {rng.choice(TEXTS)}"


def recipients(count: int, rng: random.Random) -> list[str]:
    return [f"55119{n}" for n in rng.sample(range(10**7, 10**8), count)]


# ---------------------------------------------------------------------------- the fake side

def fake_sent(fake_url: str, window: float = 1.0) -> dict[str, Any]:
    answer = httpx.get(f"{fake_url}/_fake/sent", params={"window": window}, timeout=120)
    answer.raise_for_status()
    data: dict[str, Any] = answer.json()
    return data


def fake_count(fake_url: str) -> int:
    answer = httpx.get(f"{fake_url}/_fake/sent", params={"limit": 0}, timeout=30)
    answer.raise_for_status()
    return int(answer.json()["count"])


def arrivals(sent: list[dict[str, Any]], prefix: str) -> dict[str, list[float]]:
    """body text -> arrival times of accepted sends whose text starts with `prefix`."""
    found: dict[str, list[float]] = {}
    for record in sent:
        text = ((record.get("body") or {}).get("text") or {}).get("body")
        if isinstance(text, str) and text.startswith(prefix) and 200 <= record["status"] < 300:
            found.setdefault(text, []).append(float(record["time"]))
    return found


async def baseline(fake_url: str, token: str, messages: int, concurrency: int,
                   rng: random.Random) -> tuple[float, int, list[str]]:
    """Direct sends to the fake through the gateway's own HTTP client
    (`wacloud.adapters.http.provider_client`), `concurrency` at a time: (elapsed s, accepted,
    failures)."""
    people = recipients(200, rng)
    bodies = [{"messaging_product": "whatsapp", "recipient_type": "individual",
               "to": people[i % len(people)], "type": "text",
               "text": {"body": text_body(f"baseline-{i:06d}", rng)}} for i in range(messages)]
    pending = list(reversed(bodies))
    accepted, failures = 0, []
    headers = {"Authorization": f"Bearer {token}"}

    client = ProviderClient(connections_per_host=concurrency)

    async def worker(number: int) -> None:
        nonlocal accepted
        url = f"{fake_url}/{GRAPH}/99000000000{number:03d}/messages"
        while pending:
            request = ProviderRequest("POST", url, headers=headers, json=pending.pop())
            try:
                answer = await client.perform(request, 30)
                if answer.status_code == 200:
                    accepted += 1
                else:
                    failures.append(f"HTTP {answer.status_code}: {answer.content[:200]!r}")
            except ProviderCallError as exc:
                failures.append(repr(exc))

    started = time.monotonic()
    try:
        await asyncio.gather(*(worker(i % 20) for i in range(concurrency)))
    finally:
        await client.aclose()
    return time.monotonic() - started, accepted, failures


# ----------------------------------------------------------------------------- the bulk run

@dataclass
class Bulk:
    inserted_at: dict[str, float] = field(default_factory=dict)  # body -> commit (epoch s)
    tenant_of: dict[str, str] = field(default_factory=dict)
    first: float = 0.0  # when the first insert began
    insert_s: float = 0.0


def insert_bulk(dbs: dict[str, Path], messages: int, people: list[str],
                rng: random.Random) -> Bulk:
    """Pending rows straight into the tenant DBs, one transaction per tenant."""
    per_tenant: dict[str, list[tuple[str, str, str, str]]] = {t: [] for t in dbs}
    for i in range(messages):
        channel = channel_for(i)
        body = text_body(f"bulk-{i:06d}", rng)
        per_tenant[channel.tenant].append(
            (channel.phone_number_id, rng.choice(people), "text",
             json.dumps({"body": body}, ensure_ascii=False)))
    bulk = Bulk()
    bulk.first = time.time()
    started = time.monotonic()
    for tenant, rows in per_tenant.items():
        with contextlib.closing(sqlite3.connect(dbs[tenant], timeout=30,
                                                isolation_level=None)) as conn:
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO outbound_messages (channel, recipient, type, content)"
                             " VALUES (?, ?, ?, ?)", rows)
            conn.execute("COMMIT")
        committed = time.time()
        for row in rows:
            body = json.loads(row[3])["body"]
            bulk.inserted_at[body] = committed
            bulk.tenant_of[body] = tenant
    bulk.insert_s = time.monotonic() - started
    return bulk


def status_counts(dbs: dict[str, Path], since_id: dict[str, int]) -> Counter[int]:
    total: Counter[int] = Counter()
    for tenant, path in dbs.items():
        with contextlib.closing(sqlite_ro(path)) as conn:
            total.update({int(s): int(n) for s, n in conn.execute(
                "SELECT status, COUNT(*) FROM outbound_messages WHERE id > ? GROUP BY status",
                (since_id.get(tenant, 0),))})
    return total


def max_ids(dbs: dict[str, Path]) -> dict[str, int]:
    ids = {}
    for tenant, path in dbs.items():
        with contextlib.closing(sqlite_ro(path)) as conn:
            ids[tenant] = int(conn.execute(
                "SELECT COALESCE(MAX(id), 0) FROM outbound_messages").fetchone()[0])
    return ids


def wait_done(dbs: dict[str, Path], since_id: dict[str, int], wanted: int, timeout: float,
              label: str, poll: float = 0.1) -> Counter[int]:
    """Poll until `wanted` rows past `since_id` are accepted or failed (or the deadline).

    The figures come from the rows' own `accepted_at`, so `poll` only sets how soon we notice;
    the bulk run polls every 0.5 s to leave the 2 cores to the gateway."""
    deadline = time.monotonic() + timeout
    last_report = time.monotonic()
    state = status_counts(dbs, since_id)
    while time.monotonic() < deadline:
        finished = state[ACCEPTED] + sum(n for s, n in state.items() if s < 0 or s > ACCEPTED)
        if finished >= wanted:
            break
        time.sleep(poll)
        state = status_counts(dbs, since_id)
        if time.monotonic() - last_report > 5:
            log(f"{label}: statuses {dict(sorted(state.items()))}")
            last_report = time.monotonic()
    return state


def read_rows(dbs: dict[str, Path], since_id: dict[str, int]
              ) -> list[tuple[str, str, int, str | None]]:
    """(tenant, body text, status, accepted_at) of the rows past `since_id`."""
    rows = []
    for tenant, path in dbs.items():
        with contextlib.closing(sqlite_ro(path)) as conn:
            for content, status, accepted_at in conn.execute(
                    "SELECT content, status, accepted_at FROM outbound_messages WHERE id > ?",
                    (since_id.get(tenant, 0),)):
                rows.append((tenant, json.loads(content).get("body", ""), int(status),
                             accepted_at))
    return rows


# ----------------------------------------------------------------------------- light load

async def light_load(api_url: str, keys: dict[str, str], rate: float, seconds: float,
                     people: list[str], rng: random.Random
                     ) -> tuple[dict[str, float], list[str], list[float]]:
    """Open loop: message i is POSTed at start + i / rate. Returns (body -> POST time,
    failures, HTTP answer times in ms)."""
    total = max(1, round(rate * seconds))
    posted: dict[str, float] = {}
    failures: list[str] = []
    http_ms: list[float] = []
    async with httpx.AsyncClient(base_url=api_url, timeout=30,
                                 limits=httpx.Limits(max_connections=16)) as client:
        async def one(i: int, due: float) -> None:
            channel = channel_for(i)
            body = text_body(f"light-{i:04d}", rng)
            payload = {"channel": channel.phone_number_id, "to": rng.choice(people),
                       "type": "text", "text": {"body": body}}
            if (wait := due - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            headers = {"Authorization": f"Bearer {keys[channel.tenant]}"}
            posted[body] = time.time()
            started = time.monotonic()
            try:
                answer = await client.post("/v1/messages", json=payload, headers=headers)
                if answer.status_code != 201:
                    failures.append(f"HTTP {answer.status_code}: {answer.text[:200]}")
            except httpx.HTTPError as exc:
                failures.append(repr(exc))
            http_ms.append((time.monotonic() - started) * 1000)

        start = time.monotonic() + 0.05
        await asyncio.gather(*(one(i, start + i / rate) for i in range(total)))
    return posted, failures, http_ms


def wait_fake(fake_url: str, count: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    seen = fake_count(fake_url)
    while seen < count and time.monotonic() < deadline:
        time.sleep(0.2)
        seen = fake_count(fake_url)
    return seen


# ---------------------------------------------------------------------------------- main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--recipients", type=int, default=2_000)
    parser.add_argument("--concurrency", type=int, default=256,
                        help="WACLOUD_SEND_CONCURRENCY, and the baseline's connections")
    parser.add_argument("--poll", type=float, default=None,
                        help="WACLOUD_COLLECT_POLL_S (default: the gateway's own, 1 s)")
    parser.add_argument("--light-rate", type=float, default=10.0)
    parser.add_argument("--light-seconds", type=float, default=10.0)
    parser.add_argument("--baseline-messages", type=int, default=10_000)
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds to wait for every row to be accepted")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--py-spy", type=float, nargs="?", const=8.0, default=None,
                        metavar="SECONDS",
                        help="profile the gateway for the first SECONDS (8) of the bulk run")
    args = parser.parse_args()

    rng = random.Random(11)
    token = "bench-" + uuid.uuid4().hex
    tmp = Path(tempfile.mkdtemp(prefix="wacloud-bench-outbound-", dir="/tmp"))
    ok = False
    try:
        with Processes(tmp) as procs:
            fake, fake_url = start_fake_provider(procs, token)

            with stage(f"baseline: {args.baseline_messages:,} direct sends to the fake through "
                       f"the gateway's HTTP client, {args.concurrency} at a time"):
                # Warm-up, so the fake's first-request costs are not in the figure.
                asyncio.run(baseline(fake_url, token, 200, args.concurrency, rng))
                cpu_before = {"fake": cpu_seconds(fake.pid),
                              "client": cpu_seconds(os.getpid(), children=False)}
                base_s, base_ok, base_failures = asyncio.run(baseline(
                    fake_url, token, args.baseline_messages, args.concurrency, rng))
                base_rate = base_ok / base_s if base_s > 0 else 0.0
                fake_cpu = cpu_seconds(fake.pid) - cpu_before["fake"]
                client_cpu = cpu_seconds(os.getpid(), children=False) - cpu_before["client"]
                log(f"{base_ok:,} accepted in {base_s:.2f} s = {base_rate:,.0f} sends/s; "
                    f"failures {len(base_failures)}; CPU: fake {fake_cpu:.1f} s, client "
                    f"{client_cpu:.1f} s")
                if base_ok:
                    log(f"per send: fake {fake_cpu / base_ok * 1000:.2f} ms CPU (alone it would "
                        f"take ~{base_ok / fake_cpu:,.0f}/s on one core), httpx client "
                        f"{client_cpu / base_ok * 1000:.2f} ms CPU: the client is the limit"
                        if client_cpu > fake_cpu else
                        f"per send: fake {fake_cpu / base_ok * 1000:.2f} ms CPU, client "
                        f"{client_cpu / base_ok * 1000:.2f} ms CPU")
                for failure in base_failures[:5]:
                    log(f"  {failure}")
                httpx.post(f"{fake_url}/_fake/reset", timeout=30).raise_for_status()

            with stage(f"setup: 5 tenants x {NUMBERS_PER_TENANT} Meta numbers (--mps {MPS}), "
                       f"fake provider on {fake_url}, data dir {tmp}"):
                setup = setup_gateway(tmp / "data", CHANNELS, app_secret=uuid.uuid4().hex,
                                      token=token, api_base_url=fake_url, mps=MPS)
                keys = create_tenant_api_keys(setup.data_dir, TENANT_SLUGS)
                log(f"{len(CHANNELS)} channels, {len(keys)} tenant API keys")
            dbs = {slug: setup.tenant_db(slug) for slug in TENANT_SLUGS}
            people = recipients(args.recipients, rng)

            port = free_port()
            extra = {"WACLOUD_PAIR_BURST": str(PAIR_BURST),
                     "WACLOUD_SEND_CONCURRENCY": str(args.concurrency)}
            if args.poll is not None:
                extra["WACLOUD_COLLECT_POLL_S"] = str(args.poll)
            gateway = procs.start("wacloud", gateway_argv(setup.data_dir, port), port=port,
                                  env=gateway_env(extra))
            api_url = f"http://{HOST}:{port}"
            log(f"gateway on {api_url}, env {extra}")

            with stage("warm-up: one message per tenant through the API"):
                since = max_ids(dbs)
                posted, failures, _ = asyncio.run(light_load(
                    api_url, keys, 50, len(TENANT_SLUGS) / 50, people, rng))
                state = wait_done(dbs, since, len(posted), 60, "warm-up")
                log(f"statuses {dict(state)}; failures {failures[:3]}")
                if state[ACCEPTED] < len(posted):
                    log("WARNING: warm-up messages were not all accepted:\n"
                        + gateway.log_tail())

            with stage(f"bulk: {args.messages:,} rows inserted into the 5 tenant DBs "
                       f"({args.recipients:,} recipients), collected by polling"):
                since = max_ids(dbs)
                sent_before = fake_count(fake_url)
                cpu_pids = {"gateway": gateway.pid, "fake provider": fake.pid}
                cpu_before = {name: cpu_seconds(pid) for name, pid in cpu_pids.items()}
                wall_before = time.monotonic()
                bulk = insert_bulk(dbs, args.messages, people, rng)
                log(f"inserted in {bulk.insert_s * 1000:.0f} ms")
                spy = (start_py_spy(procs, gateway.pid, tmp / "py-spy-gateway.raw", args.py_spy)
                       if args.py_spy else None)
                state = wait_done(dbs, since, args.messages, args.timeout, "bulk", 0.5)
                wall = time.monotonic() - wall_before
                log(f"statuses {dict(sorted(state.items()))} after {wall:.1f} s")
                log(f"CPU used during the {wall:.1f} s (2 cores = {2 * wall:.1f} CPU-s): "
                    + ", ".join(f"{name} {cpu_seconds(pid) - cpu_before[name]:.1f} s"
                                for name, pid in cpu_pids.items()))
                summarize_py_spy(spy, tmp / "py-spy-gateway.raw")
                wait_fake(fake_url, sent_before + args.messages, 10)
                sent = fake_sent(fake_url)
                got = arrivals(sent["sent"], "[bulk-")
                rows = read_rows(dbs, since)
                latencies, accepted_ends, arrived_ends = [], [], []
                wrong, duplicates = 0, 0
                for tenant, body, status, accepted_at in rows:
                    if status == ACCEPTED and accepted_at:
                        accepted_ends.append(parse_db_time(accepted_at))
                    wrong += bulk.tenant_of.get(body) != tenant
                    times = got.get(body)
                    if times:
                        duplicates += len(times) - 1
                        if len(times) > 1 and duplicates <= 3:
                            log(f"sent {len(times)} times: {body[:16]} (status {status}), "
                                f"arrivals at +" + ", +".join(
                                    f"{t - bulk.first:.2f}" for t in sorted(times)) + " s")
                        arrived_ends.append(min(times))
                        latencies.append((min(times) - bulk.inserted_at[body]) * 1000)
                n_accepted = len(accepted_ends)
                end = max(accepted_ends, default=bulk.first)
                msgs_per_s = n_accepted / (end - bulk.first) if end > bulk.first else 0.0
                p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
                rates = sent["max_rate_per_sender"]
                log(f"{n_accepted:,} rows accepted (status 3) in {end - bulk.first:.2f} s from "
                    f"the first insert to the last accepted_at = {msgs_per_s:,.0f} messages/s")
                if arrived_ends:
                    log(f"the fake received {len(latencies):,} of them; last arrival "
                        f"{max(arrived_ends) - bulk.first:.2f} s after the first insert "
                        f"({len(latencies) / (max(arrived_ends) - bulk.first):,.0f}/s)")
                log(f"insert (commit) -> fake received: p50 {fmt(p50)} ms, p90 "
                    f"{fmt(percentile(latencies, 90))} ms, p99 {fmt(p99)} ms, max "
                    f"{fmt(max(latencies, default=float('nan')))} ms")
                log(f"rows in the wrong tenant {wrong}, duplicate sends {duplicates} (fake "
                    f"counts {sent['duplicates']} duplicate groups), busiest number "
                    f"{max(rates.values(), default=0)} msgs in 1 s")
                bulk_rss = proc_status_kb(gateway.pid, "VmHWM") / 1024
                log(f"gateway VmHWM after bulk {bulk_rss:.1f} MB")

            with stage(f"light load: {args.light_rate:g} messages/s for {args.light_seconds:g} s "
                       "through POST /v1/messages"):
                since = max_ids(dbs)
                sent_before = fake_count(fake_url)
                posted, failures, http_ms = asyncio.run(light_load(
                    api_url, keys, args.light_rate, args.light_seconds, people, rng))
                wait_fake(fake_url, sent_before + len(posted), 30)
                state = wait_done(dbs, since, len(posted), 30, "light")
                got = arrivals(fake_sent(fake_url)["sent"], "[light-")
                light_ms = [(min(got[b]) - t) * 1000 for b, t in posted.items() if b in got]
                light_p50 = percentile(light_ms, 50)
                log(f"{len(posted)} POSTed, {len(light_ms)} received by the fake, failures "
                    f"{len(failures)}; statuses {dict(state)}")
                for failure in failures[:5]:
                    log(f"  {failure}")
                log(f"HTTP answer (201): p50 {fmt(percentile(http_ms, 50))} ms, p99 "
                    f"{fmt(percentile(http_ms, 99))} ms")
                log(f"POST sent -> fake received: p50 {fmt(light_p50)} ms, p90 "
                    f"{fmt(percentile(light_ms, 90))} ms, p99 {fmt(percentile(light_ms, 99))} ms,"
                    f" max {fmt(max(light_ms, default=float('nan')))} ms")

            rss_mb = proc_status_kb(gateway.pid, "VmHWM") / 1024
            log(f"gateway VmHWM {rss_mb:.1f} MB")
            procs.stop(gateway)

        complete = n_accepted == args.messages and not wrong and not duplicates
        print("\n== summary")
        print(f"  {'fake provider ceiling (direct)':<34} {base_rate:>10.2f} sends/s   "
              f"({args.concurrency} at a time, the gateway's HTTP client)")
        print(target_line("messages/s end to end", msgs_per_s, ">=", TARGET_MSGS_PER_S))
        print(f"  {'p50 insert -> provider':<34} {fmt(p50, 2):>10} ms")
        print(f"  {'p99 insert -> provider':<34} {fmt(p99, 2):>10} ms")
        print(target_line("light-load p50 POST -> provider", light_p50, "<",
                          TARGET_LIGHT_P50_MS, " ms"))
        print(target_line("gateway peak RSS (VmHWM)", rss_mb, "<", TARGET_RSS_MB, " MB"))
        print(f"  all {args.messages:,} rows accepted once, none in the wrong tenant: {complete}")
        ok = True
        print(f"RESULT outbound msgs_per_s={msgs_per_s:.0f} p50_ms={p50:.1f} p99_ms={p99:.1f} "
              f"light_p50_ms={light_p50:.1f} rss_mb={rss_mb:.1f}")
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        if args.keep or args.py_spy is not None or not ok:
            print(f"(kept {tmp} for inspection)")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
