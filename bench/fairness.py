"""Fairness: another tenant's single messages while one tenant's 20,000-row campaign drains.

    .venv/bin/python bench/fairness.py [--campaign-rows 20000] [--seconds 60]

Separate processes on 127.0.0.1: the fake provider and `wacloud serve` with two tenants, each
with one Meta number (`--mps 80` by default, `--campaign-mps`, `--other-mps`). The fake answers
every send after `--provider-delay` seconds (0.3, about Graph's), so sends overlap as they do
in production.

1. Baseline: with no campaign, the other tenant POSTs single text messages (a one-time password,
   say) through `POST /v1/messages` at `--other-rate` per second for `--baseline-seconds`;
   latency = from the POST being sent to the fake receiving that message.
2. Campaign: the campaign tenant's own system inserts `--campaign-rows` pending rows straight
   into its SQLite database (one transaction, distinct recipients); right after, the other
   tenant sends single messages again, the same way, for `--seconds` while the campaign drains
   (20,000 rows at 80/s take about 250 s: the measurement ends long before the campaign does).
   Also printed: how many campaign rows reached the fake meanwhile, the campaign number's
   busiest second, and duplicate sends.

Last line: `RESULT fairness campaign_rows=... other_p50_ms=... other_p99_ms=...` (the other
tenant's latency during the campaign). Goal: p99 under 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from _common import (
    HOST,
    ChannelSpec,
    Processes,
    create_tenant_api_keys,
    fmt,
    free_port,
    gateway_argv,
    gateway_env,
    log,
    percentile,
    setup_gateway,
    stage,
    start_fake_provider,
    target_line,
)

CAMPAIGN = ChannelSpec("campaign", "106540352201", "102290129341", "5511940000101")
OTHER = ChannelSpec("other", "106540352202", "102290129342", "5511940000202")
PAIR_BURST = 1_000_000
TARGET_P99_MS = 1000.0


def fake_sent(fake_url: str) -> dict[str, Any]:
    answer = httpx.get(f"{fake_url}/_fake/sent", params={"window": 1.0}, timeout=120)
    answer.raise_for_status()
    data: dict[str, Any] = answer.json()
    return data


def arrivals(sent: list[dict[str, Any]], prefix: str) -> dict[str, list[float]]:
    """body text -> arrival times (wall clock) of accepted sends whose text starts with it."""
    found: dict[str, list[float]] = {}
    for record in sent:
        text = ((record.get("body") or {}).get("text") or {}).get("body")
        if isinstance(text, str) and text.startswith(prefix) and 200 <= record["status"] < 300:
            found.setdefault(text, []).append(float(record["time"]))
    return found


def script_delay(fake_url: str, number: str, delay: float, times: int) -> None:
    httpx.post(f"{fake_url}/_fake/script", json={"match": number, "times": times,
                                                 "status": 200, "delay": delay},
               timeout=30).raise_for_status()


def insert_campaign(db: Path, rows: int, rng: random.Random) -> float:
    """Pending rows into the campaign tenant's DB, as its own system would; returns seconds."""
    people = [f"55219{n}" for n in rng.sample(range(10**7, 10**8), rows)]
    started = time.monotonic()
    with contextlib.closing(sqlite3.connect(db, timeout=60)) as conn, conn:
        conn.executemany(
            "INSERT INTO outbound_messages (channel, recipient, type, content)"
            " VALUES (?, ?, 'text', ?)",
            [(CAMPAIGN.phone_number_id, to, json.dumps({"body": f"[campaign-{i:06d}] Oferta"}))
             for i, to in enumerate(people)])
    return time.monotonic() - started


async def singles(api_url: str, key: str, rate: float, seconds: float, tag: str
                  ) -> tuple[dict[str, float], list[str]]:
    """Open loop: message i is POSTed at start + i / rate. Returns (body -> POST wall time,
    failures)."""
    total = max(1, round(rate * seconds))
    posted: dict[str, float] = {}
    failures: list[str] = []
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as client:
        async def one(i: int, due: float) -> None:
            body = f"[{tag}-{i:05d}] Seu código é {100000 + i}"
            payload = {"channel": OTHER.phone_number_id, "to": f"55319{i:08d}",
                       "type": "text", "text": {"body": body}}
            if (wait := due - time.monotonic()) > 0:
                await asyncio.sleep(wait)  # the open loop's schedule
            posted[body] = time.time()
            try:
                answer = await client.post("/v1/messages", json=payload, headers=headers)
                if answer.status_code != 201:
                    failures.append(f"HTTP {answer.status_code}: {answer.text[:200]}")
            except httpx.HTTPError as exc:
                failures.append(repr(exc))

        start = time.monotonic() + 0.05
        await asyncio.gather(*(one(i, start + i / rate) for i in range(total)))
    return posted, failures


def latencies(fake_url: str, posted: dict[str, float], tag: str, timeout: float) -> list[float]:
    """POST -> fake arrival in ms for every posted message (waits for the late ones)."""
    deadline = time.monotonic() + timeout
    while True:
        got = arrivals(fake_sent(fake_url)["sent"], f"[{tag}-")
        if len(got) >= len(posted) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    missing = len(posted) - len(got)
    if missing:
        log(f"WARNING: {missing} of {len(posted)} messages never reached the fake in time")
    return [(min(got[b]) - t) * 1000 for b, t in posted.items() if b in got]


def describe(label: str, ms: list[float]) -> None:
    log(f"{label}: {len(ms)} messages, POST -> provider p50 {fmt(percentile(ms, 50))} ms, "
        f"p90 {fmt(percentile(ms, 90))} ms, p99 {fmt(percentile(ms, 99))} ms, "
        f"max {fmt(max(ms, default=float('nan')))} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--campaign-rows", type=int, default=20_000)
    parser.add_argument("--campaign-mps", type=int, default=80)
    parser.add_argument("--other-mps", type=int, default=80)
    parser.add_argument("--other-rate", type=float, default=2.0,
                        help="the other tenant's single messages per second")
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="how long the other tenant sends while the campaign drains")
    parser.add_argument("--baseline-seconds", type=float, default=15.0)
    parser.add_argument("--provider-delay", type=float, default=0.3,
                        help="seconds the fake takes to answer each send")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()

    rng = random.Random(17)
    token = "bench-" + uuid.uuid4().hex
    tmp = Path(tempfile.mkdtemp(prefix="wacloud-bench-fairness-", dir="/tmp"))
    ok = False
    try:
        with Processes(tmp) as procs:
            _, fake_url = start_fake_provider(procs, token)
            with stage(f"setup: tenant {CAMPAIGN.tenant} (--mps {args.campaign_mps}) and "
                       f"tenant {OTHER.tenant} (--mps {args.other_mps}), one Meta number each"):
                setup = setup_gateway(tmp / "data", [CAMPAIGN], app_secret=uuid.uuid4().hex,
                                      token=token, api_base_url=fake_url, mps=args.campaign_mps)
                setup_gateway(tmp / "data", [OTHER], app_secret=setup.app_secret, token=token,
                              api_base_url=fake_url, mps=args.other_mps)
                key = create_tenant_api_keys(setup.data_dir, [OTHER.tenant])[OTHER.tenant]
                for number in (CAMPAIGN.phone_number_id, OTHER.phone_number_id):
                    script_delay(fake_url, number, args.provider_delay,
                                 args.campaign_rows * 2 + 10_000)
                log(f"the fake answers each send after {args.provider_delay:g} s")
            port = free_port()
            extra = {"WACLOUD_PAIR_BURST": str(PAIR_BURST)}
            gateway = procs.start("wacloud", gateway_argv(setup.data_dir, port), port=port,
                                  env=gateway_env(extra))
            api_url = f"http://{HOST}:{port}"

            with stage("warm-up: a few messages of the other tenant"):
                posted, failures = asyncio.run(singles(api_url, key, 5, 1, "warm"))
                latencies(fake_url, posted, "warm", 30)
                if failures:
                    log(f"failures: {failures[:3]}\n{gateway.log_tail()}")

            with stage(f"baseline: the other tenant alone, {args.other_rate:g}/s for "
                       f"{args.baseline_seconds:g} s"):
                posted, failures = asyncio.run(singles(api_url, key, args.other_rate,
                                                       args.baseline_seconds, "base"))
                base_ms = latencies(fake_url, posted, "base", 60)
                describe("baseline", base_ms)
                for failure in failures[:5]:
                    log(f"  {failure}")

            with stage(f"campaign: {args.campaign_rows:,} rows queued by tenant "
                       f"{CAMPAIGN.tenant}; the other tenant sends {args.other_rate:g}/s for "
                       f"{args.seconds:g} s meanwhile"):
                insert_s = insert_campaign(setup.tenant_db(CAMPAIGN.tenant), args.campaign_rows,
                                           rng)
                campaign_start = time.time()
                log(f"campaign inserted in {insert_s * 1000:.0f} ms")
                posted, failures = asyncio.run(singles(api_url, key, args.other_rate,
                                                       args.seconds, "otp"))
                other_ms = latencies(fake_url, posted, "otp", 60)
                sent = fake_sent(fake_url)
                campaign = arrivals(sent["sent"], "[campaign-")
                drained = len(campaign)
                span = (max((min(t) for t in campaign.values()), default=campaign_start)
                        - campaign_start)
                describe("other tenant during the campaign", other_ms)
                for failure in failures[:5]:
                    log(f"  {failure}")
                busiest = sent["max_rate_per_sender"].get(CAMPAIGN.phone_number_id, 0)
                log(f"campaign rows at the fake so far: {drained:,} in {span:.1f} s "
                    f"({drained / span if span > 0 else 0:,.1f}/s); busiest second of the "
                    f"campaign number: {busiest} (limit {args.campaign_mps}); duplicate sends: "
                    f"{sent['duplicates']}")
            procs.stop(gateway)

        p50, p99 = percentile(other_ms, 50), percentile(other_ms, 99)
        print("\n== summary")
        print(f"  {'baseline p50 / p99 (no campaign)':<34} {fmt(percentile(base_ms, 50), 1):>10}"
              f" / {fmt(percentile(base_ms, 99), 1)} ms")
        print(f"  {'p50 during the campaign':<34} {fmt(p50, 1):>10} ms")
        print(target_line("p99 during the campaign", p99, "<", TARGET_P99_MS, " ms"))
        ok = True
        print(f"RESULT fairness campaign_rows={args.campaign_rows} other_p50_ms={p50:.1f} "
              f"other_p99_ms={p99:.1f}")
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        if args.keep or not ok:
            print(f"(kept {tmp} for inspection)")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
