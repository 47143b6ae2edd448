"""Webhook ingest: signed Meta webhooks at 64 connections against wacloud and two baselines.

    .venv/bin/python bench/ingest.py [--duration 10] [--connections 64]

In one run, one server at a time, each a separate process on 127.0.0.1 with its HTTP process
on CPU 0 (`--server-cpu N` for another, `none` for no pinning); wrk runs on any CPU:
  (a) bare   - an ASGI app that only answers 200 (uvicorn + uvloop + httptools): the ceiling;
  (b) pywa   - a pywa 4.5 FastAPI webhook server whose handler counts the updates it gets
               (installed on first run into bench/.venv-pywa, never into the project venv);
  (x) wacloud - `wacloud serve` with its own data dir, one tenant, one Meta channel whose app
               secret signs the bodies; its stages run in its worker process. It is pinned by
               its own settings, as WACLOUD_SERVER_CPUS=auto does on a dedicated host: the
               server on CPU 0, the worker on the other CPUs.
wrk (installed with apt-get if missing) replays pre-signed bodies from a file, so every request
of the measured run carries distinct wamids; after the wacloud run the benchmark waits for the
queues to drain and checks that every acknowledged body is in the tenant's database.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    BENCH_DIR,
    HOST,
    VENV_PY,
    ChannelSpec,
    Processes,
    cpu_seconds,
    fmt,
    free_port,
    gateway_argv,
    gateway_env,
    log,
    queue_backlog,
    realistic_body,
    setup_gateway,
    sqlite_ro,
    stage,
    start_py_spy,
    summarize_py_spy,
    target_line,
    wamid,
)

LUA = BENCH_DIR / "post_bodies.lua"
PYWA_VENV = BENCH_DIR / ".venv-pywa"
PHONE_NUMBER_ID = "106540352242922"
CHANNEL = ChannelSpec("bench", PHONE_NUMBER_ID, "102290129340398", "5511940001234")
TAG_RE = re.compile(r"YFD(W?)B(\d+)M(\d+)$")

TARGET_RATIO_BARE = 0.35
TARGET_RATIO_PYWA = 2.5
TARGET_P99_MS = 25.0


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    non_2xx: int
    socket_errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    issued: dict[int, int]  # wrk thread -> requests generated
    text: str

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def ok(self) -> int:
        return self.requests - self.non_2xx


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    print("wrk not found: apt-get update && apt-get install -y wrk", flush=True)
    subprocess.run(["apt-get", "update"], check=True, stdout=subprocess.DEVNULL, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "wrk"], check=True, stdout=subprocess.DEVNULL,
                   timeout=600)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is still missing after apt-get install")
    return found


def ensure_pywa_venv() -> Path:
    python = PYWA_VENV / "bin" / "python"
    probe = [str(python), "-c", "import pywa_async, fastapi, uvicorn, uvloop, httptools"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print(f"creating {PYWA_VENV} with pywa (first run only)", flush=True)
    base = shutil.which("python3") or sys.executable
    subprocess.run([base, "-m", "venv", str(PYWA_VENV)], check=True, timeout=300)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "pywa", "fastapi",
                    "uvicorn[standard]"], check=True, timeout=900)
    subprocess.run(probe, check=True)
    return python


def pip_version(python: Path, package: str) -> str:
    out = subprocess.run([str(python), "-m", "pip", "show", package], capture_output=True,
                         text=True).stdout
    return next((line.split(":", 1)[1].strip() for line in out.splitlines()
                 if line.startswith("Version:")), "?")


def write_bodies(path: Path, count: int, prefix: str, app_secret: str,
                 seed: int) -> list[int]:
    """`count` signed bodies, one line each; returns the number of messages in each."""
    rng = random.Random(seed)
    sizes: list[int] = []
    with path.open("wb") as handle:
        for i in range(count):
            n = rng.choice((1, 2, 2, 3, 3))
            body, signature = realistic_body(
                rng, CHANNEL, [wamid(f"{prefix}B{i:07d}M{j}") for j in range(n)], app_secret)
            handle.write(signature.encode() + b"\t" + body + b"\n")
            sizes.append(n)
    return sizes


def run_wrk(wrk: str, port: int, path: str, bodies: Path, *, duration: float,
            connections: int, threads: int) -> WrkResult:
    argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--timeout", "10s",
            "-s", str(LUA), f"http://{HOST}:{port}", "--", str(bodies), path, str(threads)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 120)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr}\n{done.stdout}")
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"no WRKJSON line from wrk:\n{done.stdout}\n{done.stderr}")
    data: dict[str, Any] = json.loads(line[len("WRKJSON "):])
    text = "\n".join(ln for ln in done.stdout.splitlines() if not ln.startswith("WRKJSON "))
    return WrkResult(
        requests=data["requests"], duration_s=data["duration_us"] / 1e6, non_2xx=data["status"],
        socket_errors=data["connect"] + data["read"] + data["write"] + data["timeout"],
        p50_ms=data["p50_us"] / 1000, p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000, max_ms=data["max_us"] / 1000,
        issued={int(t): int(n) for t, n in data["issued"]}, text=text)


def show(name: str, result: WrkResult) -> None:
    for line in result.text.splitlines():
        log(f"wrk| {line}")
    log(f"{name}: {result.rps:,.0f} req/s, p50 {result.p50_ms:.2f} ms, p90 "
        f"{result.p90_ms:.2f} ms, p99 {result.p99_ms:.2f} ms, max {result.max_ms:.1f} ms; "
        f"{result.requests} responses, non-2xx {result.non_2xx}, socket errors "
        f"{result.socket_errors}")


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.loads(answer.read())  # type: ignore[no-any-return]


def measure(procs: Processes, name: str, argv: list[str | Path], env: dict[str, str],
            port: int, path: str, args: argparse.Namespace, wrk: str, warm: Path,
            main: Path, keep_running: bool = False, cpus: set[int] | None = None) -> WrkResult:
    proc = procs.start(name, argv, port=port, env=env, cpus=cpus)
    failed = True
    try:
        if args.warmup > 0:
            run_wrk(wrk, port, path, warm, duration=args.warmup,
                    connections=args.connections, threads=args.threads)
        before = get_json(f"http://{HOST}:{port}/_count") if name == "pywa" else {}
        cpu_before = cpu_seconds(proc.pid)
        spy = (start_py_spy(procs, proc.pid, args.tmp / f"py-spy-{name}.raw", args.duration)
               if args.py_spy and name == "wacloud" else None)
        result = run_wrk(wrk, port, path, main, duration=args.duration,
                         connections=args.connections, threads=args.threads)
        show(name, result)
        log(f"{name} process used {cpu_seconds(proc.pid) - cpu_before:.1f} CPU-s during the "
            f"{result.duration_s:.1f} s run (with its children; wrk shares the machine)")
        summarize_py_spy(spy, args.tmp / f"py-spy-{name}.raw")
        if name == "pywa":
            handled = get_json(f"http://{HOST}:{port}/_count")["handled"] - before["handled"]
            log(f"pywa handler ran for {handled} updates (vs {result.ok} 2xx responses"
                f"{'' if handled else ' - THE HANDLER DID NOT RUN'})")
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{name} died during the run:\n{proc.log_tail()}")
        failed = False
    finally:
        if failed or not keep_running:
            procs.stop(proc)
    return result


def issued_bodies(result: WrkResult, threads: int, total: int) -> tuple[set[int], bool]:
    """Lines of the body file that wrk sent; True when some thread wrapped around."""
    sent: set[int] = set()
    wrapped = False
    for tid, count in result.issued.items():
        own = len(range(tid, total, threads))
        wrapped |= count > own
        sent.update(tid + k * threads for k in range(min(count, own)))
    return sent, wrapped


def durability(setup_db: Path, queue_db: Path, result: WrkResult, sizes: list[int],
               threads: int, timeout: float) -> tuple[bool, str]:
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    last_report = 0.0
    live, dead = queue_backlog(queue_db)
    while live and time.monotonic() < deadline:
        if time.monotonic() - last_report > 5:
            log(f"waiting for the gateway to drain its queues: {live} queued")
            last_report = time.monotonic()
        time.sleep(0.5)
        live, dead = queue_backlog(queue_db)
    log(f"queues drained in {time.monotonic() - started:.1f} s after the run"
        if not live else f"queues NOT drained after {timeout:.0f} s: {live} still queued")
    with sqlite_ro(setup_db) as conn:
        ids = [r[0] for r in conn.execute("SELECT provider_message_id FROM messages")]
    per_body: dict[int, int] = {}
    for mid in ids:
        match = TAG_RE.search(mid)
        if match and not match.group(1):
            body = int(match.group(2))
            per_body[body] = per_body.get(body, 0) + 1
    stored = set(per_body)
    partial = sum(1 for b, n in per_body.items() if n != sizes[b])
    sent, wrapped = issued_bodies(result, threads, len(sizes))
    strays = len(stored - sent)
    in_flight = sum(result.issued.values()) - result.requests
    lines = [f"2xx responses (acknowledged bodies): {result.ok}; non-2xx {result.non_2xx}; "
             f"socket errors {result.socket_errors}; requests still in flight when wrk "
             f"stopped: {in_flight}",
             f"distinct bodies in the tenant DB: {len(stored)} ({sum(per_body.values())} "
             f"message rows; {partial} bodies with missing messages; {strays} never sent); "
             f"queued {live}, dead letters {dead}"]
    if wrapped:
        # Bodies were re-sent: with no failures every body issued must be stored.
        clean = result.non_2xx == 0 and result.socket_errors == 0
        # Per thread: a slow run can leave one thread short of its share while another wraps.
        ok = clean and sent <= stored and not partial and not live
        lines.append(f"wrk re-sent bodies; every one of the {len(sent)} bodies it issued is "
                     f"stored: {sent <= stored}")
    else:
        # Each body went out once: at least one stored body per 2xx (in-flight requests at
        # the stop may add a few more, hence >=), none partial, nothing stuck or dead.
        ok = len(stored) >= result.ok and not partial and not strays and not live and not dead
        lines.append(f"stored bodies ({len(stored)}) >= acknowledged bodies ({result.ok}): "
                     f"{len(stored) >= result.ok}")
    lines.append("DURABILITY OK: every acknowledged webhook is stored" if ok
                 else "DURABILITY FAILED")
    return ok, "\n".join(lines)


def split_cpus(spec: str) -> tuple[set[int] | None, set[int] | None]:
    """(server CPUs, wacloud worker CPUs) for `--server-cpu`; (None, None): no pinning."""
    allowed = sorted(os.sched_getaffinity(0))
    if spec.strip().lower() == "none":
        return None, None
    if len(allowed) < 2:
        log(f"only {len(allowed)} CPU: no pinning")
        return None, None
    if not spec.strip().isdigit():
        raise SystemExit(f"--server-cpu {spec!r}: give one CPU id (e.g. 0) or 'none'")
    server = {int(spec)}
    if not server <= set(allowed):
        raise SystemExit(f"--server-cpu {spec}: not one of the CPUs allowed here {allowed}")
    return server, set(allowed) - server


def fmt_cpus(cpus: set[int] | None) -> str:
    return ",".join(map(str, sorted(cpus or ())))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per server")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--bodies", type=int, default=0,
                        help="distinct signed bodies (default: 12,000 per second of duration)")
    parser.add_argument("--drain-timeout", type=float, default=600.0)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--only-wacloud", action="store_true",
                        help="development: skip the two baselines (no ratios, no RESULT line)")
    parser.add_argument("--server-cpu", default="0",
                        help="CPU of each server's HTTP process (wacloud's worker: the "
                             "others); 'none': no pinning")
    parser.add_argument("--py-spy", action="store_true",
                        help="profile wacloud during its run (slows it down; pip install py-spy)")
    args = parser.parse_args()

    server_cpus, worker_cpus = split_cpus(args.server_cpu)
    wrk = ensure_wrk()
    pywa_python = None if args.only_wacloud else ensure_pywa_venv()
    app_secret = uuid.uuid4().hex
    count = args.bodies or max(20_000, int(12_000 * args.duration))
    tmp = args.tmp = Path(tempfile.mkdtemp(prefix="wacloud-bench-ingest-", dir="/tmp"))
    ok = False
    try:
        with stage(f"preparing {count:,} distinct signed bodies (+ 2,000 for warm-up) in {tmp}"):
            main_file, warm_file = tmp / "bodies.txt", tmp / "warm.txt"
            sizes = write_bodies(main_file, count, "", app_secret, seed=1)
            write_bodies(warm_file, 2_000, "W", app_secret, seed=2)
            with main_file.open("rb") as handle:
                lengths = [len(line) - line.index(b"\t") - 2 for line in handle]
            log(f"body sizes: {min(lengths)}-{max(lengths)} bytes, mean "
                f"{sum(lengths) / len(lengths):.0f}; 1-3 messages each, "
                f"{sum(sizes):,} messages in all")
            setup = setup_gateway(tmp / "data", [CHANNEL], app_secret=app_secret,
                                  token="bench-" + uuid.uuid4().hex)
        log(f"wrk {wrk}: {args.threads} threads, {args.connections} connections, "
            f"{args.duration:g} s per run after {args.warmup:g} s warm-up; "
            + (f"servers on CPU {fmt_cpus(server_cpus)} (wacloud's worker on "
               f"{fmt_cpus(worker_cpus)}), wrk on any" if server_cpus else "no CPU pinning")
            + (f"; pywa {pip_version(pywa_python, 'pywa')}" if pywa_python else ""))

        with Processes(tmp) as procs:
            uvicorn_flags = ["--host", HOST, "--loop", "uvloop", "--http", "httptools",
                             "--log-level", "warning", "--no-access-log", "--app-dir",
                             str(BENCH_DIR)]
            bare = pywa = None
            if pywa_python is not None:
                with stage("(a) bare ASGI app, uvicorn + uvloop + httptools"):
                    port = free_port()
                    bare = measure(procs, "bare", [VENV_PY, "-m", "uvicorn", "bare_app:app",
                                                   "--port", str(port), *uvicorn_flags], {},
                                   port, "/", args, wrk, warm_file, main_file,
                                   cpus=server_cpus)
                with stage("(b) pywa 4.5 webhook server (FastAPI, pywa_async, uvloop + "
                           "httptools)"):
                    port = free_port()
                    env = {"BENCH_PYWA_PHONE_ID": PHONE_NUMBER_ID, "BENCH_PYWA_TOKEN": "x",
                           "BENCH_PYWA_APP_SECRET": app_secret,
                           "BENCH_PYWA_VERIFY_TOKEN": uuid.uuid4().hex}
                    pywa = measure(procs, "pywa", [pywa_python, "-m", "uvicorn",
                                                   "pywa_app:app", "--port", str(port),
                                                   *uvicorn_flags], env,
                                   port, "/", args, wrk, warm_file, main_file,
                                   cpus=server_cpus)
            with stage("(x) wacloud serve: POST /webhooks/meta (stages in a worker process)"):
                port = free_port()
                pinning = ({"WACLOUD_SERVER_CPUS": fmt_cpus(server_cpus),
                            "WACLOUD_WORKER_CPUS": fmt_cpus(worker_cpus)}
                           if server_cpus else {"WACLOUD_SERVER_CPUS": ""})
                ours = measure(procs, "wacloud", gateway_argv(setup.data_dir, port),
                               gateway_env(pinning), port, "/webhooks/meta", args, wrk,
                               warm_file, main_file, keep_running=True)
            with stage("durability check (the same gateway process drains its queues)"):
                durable, report = durability(setup.tenant_db("bench"), setup.queue_db, ours,
                                             sizes, args.threads, args.drain_timeout)
                for line in report.splitlines():
                    log(line)

        if bare is None or pywa is None:
            print(f"\nwacloud alone: {ours.rps:,.0f} req/s, p50 {ours.p50_ms:.2f} ms, p99 "
                  f"{ours.p99_ms:.2f} ms; durability {'OK' if durable else 'FAILED'}")
            ok = True
            return 0
        ratio_bare = ours.rps / bare.rps if bare.rps else 0.0
        ratio_pywa = ours.rps / pywa.rps if pywa.rps else 0.0
        print("\n== summary (same run, same machine, same bodies)")
        print(f"  {'server':<10} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
        for name, res in (("bare", bare), ("pywa", pywa), ("wacloud", ours)):
            print(f"  {name:<10} {res.rps:>10,.0f} {res.p50_ms:>8.2f} {res.p99_ms:>8.2f} "
                  f"{res.non_2xx:>8}")
        print(target_line("wacloud / bare", ratio_bare, ">=", TARGET_RATIO_BARE))
        print(target_line("wacloud / pywa", ratio_pywa, ">=", TARGET_RATIO_PYWA))
        print(target_line("wacloud p99", ours.p99_ms, "<=", TARGET_P99_MS, " ms"))
        print(f"  durability: {'OK' if durable else 'FAILED'}")
        ok = True
        print(f"RESULT ingest rps={ours.rps:.0f} bare_rps={bare.rps:.0f} "
              f"pywa_rps={pywa.rps:.0f} ratio_bare={fmt(ratio_bare, 3)} "
              f"ratio_pywa={fmt(ratio_pywa, 2)} p99_ms={ours.p99_ms:.2f}")
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
