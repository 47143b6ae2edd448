"""The distributed engine: inbound and outbound throughput with 1 and 2 worker processes per
stage on RabbitMQ + PostgreSQL, beside the embedded gateway (SQLite queue) and a short run on
SQS (moto's server) with moto's own ceiling, all measured in the same run.

    .venv/bin/python bench/distributed.py [--messages 2000] [--sqs-messages 300] [--keep]

Every setup goes through the public contract: `wacloud init`, `queues create`, `tenant add
--db-url` (a fresh PostgreSQL database per setup), `channel add meta`, then `wacloud serve`
(embedded) or `wacloud serve --no-workers` plus `wacloud worker` processes: `--stages
receive,write,media,save --no-collect` (inbound, and saving send results) and `--stages send`
(sending, and collecting). The fake provider runs in its own process.

- inbound: N signed single-message text webhooks POSTed by 16 keep-alive clients while the
  processes running the receive stage are stopped (SIGSTOP), then messages/s from SIGCONT to
  the last row in the tenant's database: the stages draining a backlog, not the load
  generator or the HTTP front (bench/ingest.py measures those).
- outbound: N pending rows inserted in one transaction (what a tenant's system does); messages/s
  from the commit to the last row accepted (status 3) by the fake provider.
- CPU per message (from /proc) of the HTTP front, each worker group, and the servers they
  lean on (RabbitMQ's beam.smp, every postgres process, moto's server), over each run; and how
  the sends of each outbound run split between the sender processes (their /metrics).
- After the second worker of each group starts, the run waits `JOIN_SETTLE_S` before measuring:
  on RabbitMQ the senders spread the send queue's partitions among themselves then (one look
  a second, see `adapters/queue/rabbitmq/spread.py`), so that the figure is the steady state
  of two senders, not the moment one joins.
- moto's ceiling: boto3 straight against moto, the same calls a message costs on a standard
  queue (send in batches of 10, receive 10, delete in batches of 10), messages/s;
  `sqs_ratio` = wacloud's inbound rate on SQS / that ceiling.

Last line: `RESULT distributed inbound_1w=... inbound_2w=... outbound_1w=... outbound_2w=...
embedded_inbound=... embedded_outbound=... sqs_ratio=...` (messages/s, sqs_ratio a fraction).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import sqlalchemy as sa
from _common import (
    HOST,
    WACLOUD,
    Proc,
    Processes,
    cpu_seconds,
    fmt,
    free_port,
    log,
    process_tree,
    stage,
    start_fake_provider,
)

from wacloud.testing.webhooks import dumps, meta_envelope, meta_text, sign

# The repository root, for the test suite's service helpers (fresh databases, vhosts, moto).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.services import (
    aws_environment,
    fresh_postgres_db,
    fresh_rabbitmq_vhost,
    moto_server,
)

TOKEN = "bench-token"
INBOUND = "receive,write,media,save"
OUTBOUND = "send"
ACCEPTED = 3
POST_CONCURRENCY = 16
JOIN_SETTLE_S = 3.0


@dataclass
class Setup:
    """One data dir wired to one queue engine, one PostgreSQL tenant with one Meta channel."""

    name: str
    data_dir: Path
    env: dict[str, str]
    db_url: str
    fake_url: str
    channel: str = field(default_factory=lambda: f"1065{uuid.uuid4().int % 10**11:011d}")
    waba: str = field(default_factory=lambda: f"1022{uuid.uuid4().int % 10**11:011d}")
    app_secret: str = field(default_factory=lambda: uuid.uuid4().hex)
    port: int = field(default_factory=free_port)
    front: Proc | None = None
    workers: list[Proc] = field(default_factory=list)

    def cli(self, *args: str) -> str:
        done = subprocess.run([str(WACLOUD), *args], env=self.env, capture_output=True,
                              text=True, timeout=300, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"wacloud {' '.join(args[:2])}: {done.stderr.strip()}")
        return done.stdout

    def provision(self, distributed: bool) -> None:
        self.cli("init")
        if distributed:
            self.cli("queues", "create")
        self.cli("tenant", "add", "bench", "--db-url", self.db_url)
        self.cli("channel", "add", "meta", "--tenant", "bench", "--phone-number-id",
                 self.channel, "--waba-id", self.waba, "--display-number", "5511940001234",
                 "--token", TOKEN, "--app-secret", self.app_secret, "--verify-token",
                 uuid.uuid4().hex, "--api-base-url", self.fake_url, "--mps", "10000")

    def start_front(self, procs: Processes, workers: bool) -> None:
        argv: list[str | Path] = [WACLOUD, "serve", "--host", HOST, "--port", str(self.port),
                                  "--internal-port", str(free_port())]
        if not workers:
            argv.append("--no-workers")
        self.front = procs.start(f"{self.name}-serve", argv, port=self.port, env=self.env,
                                 ready_timeout=120)

    def start_worker(self, procs: Processes, group: str) -> None:
        port = free_port()
        argv: list[str | Path] = [WACLOUD, "worker", "--stages", group, "--metrics-port",
                                  str(port)]
        if group == INBOUND:
            argv.append("--no-collect")
        self.workers.append(procs.start(f"{self.name}-{group.split(',')[0]}-"
                                        f"{len(self.workers)}", argv, port=port, env=self.env,
                                        ready_timeout=120))


def base_env(data_dir: Path, extra: dict[str, str]) -> dict[str, str]:
    return {"WACLOUD_DATA_DIR": str(data_dir), "WACLOUD_DEV_ALLOW_LOCAL_URLS": "1",
            "WACLOUD_LOG_LEVEL": "WARNING", "WACLOUD_PAIR_BURST": "1000000",
            "WACLOUD_COLLECT_POLL_S": "0.2", "WACLOUD_REGISTRY_POLL_S": "1", **extra}


# ------------------------------------------------------------------------------ CPU from /proc

def pids_named(*names: str) -> list[int]:
    """Pids of the running processes whose command name is one of `names` (read only)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() in names:
                    found.append(int(entry.name))
    return found


def pid_with_args(*fragments: str) -> int | None:
    """The pid of a process whose command line holds every one of `fragments`."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
                if all(f in argv for f in fragments):
                    return int(entry.name)
    return None


def servers_cpu() -> dict[str, float]:
    """CPU seconds so far of the servers the engine leans on (shared with anything else that
    uses them meanwhile)."""
    return {"rabbitmq": sum(cpu_seconds(p, children=False) for p in pids_named("beam.smp")),
            "postgres": sum(cpu_seconds(p, children=False) for p in pids_named("postgres"))}


@contextlib.contextmanager
def cpu_meter(setup: Setup, moto_pid: int | None) -> Iterator[dict[str, float]]:
    """CPU seconds each role of `setup` (and each server) used inside the block."""
    def sample() -> dict[str, float]:
        roles: dict[str, float] = {"front": cpu_seconds(setup.front.pid) if setup.front else 0}
        for proc in setup.workers:
            role = "inbound workers" if "-receive-" in proc.name else "outbound workers"
            roles[role] = roles.get(role, 0.0) + cpu_seconds(proc.pid)
        roles.update(servers_cpu())
        if moto_pid is not None:
            roles["moto"] = cpu_seconds(moto_pid, children=False)
        return roles
    before = sample()
    used: dict[str, float] = {}
    yield used
    after = sample()
    used.update({k: after[k] - before.get(k, 0.0) for k in after})


# ----------------------------------------------------------------------------- the two loads

def webhooks(setup: Setup, count: int, tag: str) -> list[tuple[bytes, str]]:
    bodies = []
    for n in range(count):
        message, contact = meta_text(f"55119{n % 5000:08d}", f"bench {tag} {n}",
                                     f"wamid.{tag}.{n}.{uuid.uuid4().hex[:12]}")
        body = dumps(meta_envelope(setup.channel, setup.waba, "5511940001234", [message],
                                   None, [contact]))
        bodies.append((body, sign(body, setup.app_secret)))
    return bodies


async def post_all(url: str, bodies: list[tuple[bytes, str]]) -> int:
    """POST every body from POST_CONCURRENCY keep-alive clients; the number refused."""
    pending = list(reversed(bodies))
    refused = 0

    async def client() -> None:
        nonlocal refused
        async with httpx.AsyncClient(timeout=30) as http:
            while pending:
                body, signature = pending.pop()
                answer = await http.post(url, content=body, headers={
                    "Content-Type": "application/json", "X-Hub-Signature-256": signature})
                refused += answer.status_code != 200
    await asyncio.gather(*(client() for _ in range(POST_CONCURRENCY)))
    return refused


def wait_count(read: Callable[[], int], wanted: int, timeout: float, what: str) -> float:
    """Poll `read` until it reaches `wanted`; the time.time() it did."""
    deadline = time.monotonic() + timeout
    while (seen := read()) < wanted:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: {seen} of {wanted} after {timeout:.0f} s")
        time.sleep(0.1)  # a poll period, not synchronization
    return time.time()


def inbound_rate(setup: Setup, engine: sa.Engine, count: int, tag: str) -> float:
    """Stored messages/s while the inbound stages drain a backlog of `count` webhooks: they are
    POSTed while those stages' processes are stopped (SIGSTOP), so that neither the load
    generator nor the HTTP front limits the figure; the clock starts at SIGCONT."""
    bodies = webhooks(setup, count, tag)
    with engine.connect() as conn:
        before = conn.execute(sa.text("SELECT count(*) FROM messages")).scalar_one()

    def stored() -> int:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM messages")).scalar_one()
                       ) - before
    paused = inbound_pids(setup)
    for pid in paused:
        os.kill(pid, signal.SIGSTOP)
    try:
        refused = asyncio.run(post_all(f"http://{HOST}:{setup.port}/webhooks/meta", bodies))
    finally:
        started = time.time()
        for pid in paused:
            os.kill(pid, signal.SIGCONT)
    if refused:
        raise RuntimeError(f"{refused} webhooks refused")
    done = wait_count(stored, count, 600, f"{setup.name} inbound rows")
    return count / (done - started)


def inbound_pids(setup: Setup) -> list[int]:
    """The processes running the receive stage: the inbound workers, or `serve`'s own stage
    worker children when embedded."""
    if setup.workers:
        return [p.pid for p in setup.workers if "-receive-" in p.name]
    assert setup.front is not None
    front = setup.front.pid
    # `serve` binds its port before it starts its worker: a run that began at once found no
    # worker to stop, and measured rows stored as they came (up to 1.8 million "messages/s").
    deadline = time.monotonic() + 60
    while not (children := [pid for pid in process_tree(front) if pid != front]):
        if time.monotonic() > deadline:
            raise RuntimeError("serve started no stage worker within 60 s")
        time.sleep(0.1)  # a poll period, not synchronization
    return children


def outbound_rate(setup: Setup, engine: sa.Engine, count: int, tag: str) -> float:
    rows = [{"channel": setup.channel, "recipient": f"55219{n % 2000:08d}", "type": "text",
             "content": json.dumps({"body": f"bench {tag} {n}"})} for n in range(count)]
    with engine.begin() as conn:
        first = conn.execute(sa.text("SELECT coalesce(max(id), 0) FROM outbound_messages")
                             ).scalar_one()
        conn.execute(sa.text("INSERT INTO outbound_messages (channel, recipient, type, content)"
                             " VALUES (:channel, :recipient, :type, :content)"), rows)
    started = time.time()

    def accepted() -> int:
        with engine.connect() as conn:
            return int(conn.execute(sa.text(
                "SELECT count(*) FROM outbound_messages WHERE id > :first AND status = :s"),
                {"first": first, "s": ACCEPTED}).scalar_one())
    done = wait_count(accepted, count, 600, f"{setup.name} outbound rows")
    return count / (done - started)


def sends_by_worker(setup: Setup) -> list[float]:
    """Messages each sender process's send stage handled so far (from its /metrics)."""
    out = []
    for proc in setup.workers:
        if "-send-" not in proc.name or proc.port is None:
            continue
        sent = 0.0
        with contextlib.suppress(httpx.HTTPError):
            text = httpx.get(f"http://{HOST}:{proc.port}/metrics", timeout=5).text
            for line in text.splitlines():
                if line.startswith("wacloud_stage_messages_total{") and 'stage="send"' in line \
                        and 'result="ok"' in line:
                    sent += float(line.rsplit(" ", 1)[1])
        out.append(sent)
    return out


def per_message(used: dict[str, float], count: int) -> str:
    return ", ".join(f"{role} {1000 * seconds / count:.2f}" for role, seconds in used.items()
                     if seconds > 0.005)


def measure(setup: Setup, engine: sa.Engine, count: int, label: str,
            moto_pid: int | None = None) -> tuple[float, float]:
    with cpu_meter(setup, moto_pid) as used_in:
        inbound = inbound_rate(setup, engine, count, f"{label}in")
    sent_before = sends_by_worker(setup)
    with cpu_meter(setup, moto_pid) as used_out:
        outbound = outbound_rate(setup, engine, count, f"{label}out")
    sent = [after - before for after, before in zip(sends_by_worker(setup), sent_before,
                                                    strict=True)]
    log(f"{label}: inbound {fmt(inbound)} msg/s, outbound {fmt(outbound)} msg/s")
    log(f"  CPU ms per inbound message: {per_message(used_in, count)}")
    log(f"  CPU ms per outbound message: {per_message(used_out, count)}")
    if sent:
        log(f"  sends per sender process: {', '.join(f'{n:.0f}' for n in sent)}")
    return inbound, outbound


# ------------------------------------------------------------------------------ moto ceiling

def moto_ceiling(messages: int) -> float:
    """messages/s of send (batches of 10) + receive 10 + delete (batches of 10) on moto."""
    import boto3

    sqs = boto3.client("sqs")
    url = sqs.create_queue(QueueName=f"bench-ceiling-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    try:
        started = time.time()
        for start in range(0, messages, 10):
            sqs.send_message_batch(QueueUrl=url, Entries=[
                {"Id": str(i), "MessageBody": "x" * 600} for i in range(start, start + 10)])
        done = 0
        while done < messages:
            got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                      WaitTimeSeconds=1).get("Messages", [])
            if got:
                sqs.delete_message_batch(QueueUrl=url, Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                    for i, m in enumerate(got)])
            done += len(got)
        return messages / (time.time() - started)
    finally:
        sqs.delete_queue(QueueUrl=url)


# --------------------------------------------------------------------------------------- main

def run_embedded(procs: Processes, stack: contextlib.ExitStack, work: Path, fake_url: str,
                 count: int, results: dict[str, float]) -> None:
    db_url = stack.enter_context(fresh_postgres_db())
    setup = Setup("embedded", work / "embedded", base_env(work / "embedded", {}), db_url,
                  fake_url)
    setup.provision(distributed=False)
    setup.start_front(procs, workers=True)  # its stage workers count in its CPU
    engine = sa.create_engine(db_url)
    stack.callback(engine.dispose)
    results["embedded_inbound"], results["embedded_outbound"] = measure(
        setup, engine, count, "embedded")
    stop_all(procs, setup)


def run_rabbitmq(procs: Processes, stack: contextlib.ExitStack, work: Path, fake_url: str,
                 count: int, results: dict[str, float]) -> None:
    vhost = stack.enter_context(fresh_rabbitmq_vhost())
    db_url = stack.enter_context(fresh_postgres_db())
    data = work / "rabbitmq"
    setup = Setup("rabbitmq", data, base_env(data, {
        "WACLOUD_QUEUE_URL": f"{vhost}?prefix=bench"}), db_url, fake_url)
    setup.provision(distributed=True)
    setup.start_front(procs, workers=False)
    setup.start_worker(procs, INBOUND)
    setup.start_worker(procs, OUTBOUND)
    engine = sa.create_engine(db_url)
    stack.callback(engine.dispose)
    results["inbound_1w"], results["outbound_1w"] = measure(
        setup, engine, count, "rabbitmq, 1 worker per stage")
    setup.start_worker(procs, INBOUND)
    setup.start_worker(procs, OUTBOUND)
    time.sleep(JOIN_SETTLE_S)  # the senders spread the send partitions (see the docstring)
    results["inbound_2w"], results["outbound_2w"] = measure(
        setup, engine, count, "rabbitmq, 2 workers per stage")
    stop_all(procs, setup)


def run_sqs(procs: Processes, stack: contextlib.ExitStack, work: Path, fake_url: str,
            count: int, results: dict[str, float]) -> None:
    endpoint = stack.enter_context(moto_server())
    aws = aws_environment(endpoint)
    os.environ.update(aws)  # for moto_ceiling's boto3 client
    moto_pid = pid_with_args("moto.server", endpoint.rsplit(":", 1)[1])
    db_url = stack.enter_context(fresh_postgres_db())
    data = work / "sqs"
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    setup = Setup("sqs", data, base_env(data, {
        **aws, "WACLOUD_QUEUE_URL": f"sqs://?prefix={prefix}",
        "WACLOUD_MEDIA_URL": f"s3://{prefix}/media"}), db_url, fake_url)
    setup.provision(distributed=True)
    setup.start_front(procs, workers=False)
    setup.start_worker(procs, INBOUND)
    setup.start_worker(procs, OUTBOUND)
    engine = sa.create_engine(db_url)
    stack.callback(engine.dispose)
    sqs_in, sqs_out = measure(setup, engine, count, "sqs (moto), 1 worker per stage", moto_pid)
    stop_all(procs, setup)
    ceiling = moto_ceiling(count)
    log(f"moto's ceiling (send 10 + receive 10 + delete 10 per 10 messages): {fmt(ceiling)} "
        f"msg/s; wacloud on it: inbound {fmt(sqs_in)}, outbound {fmt(sqs_out)} msg/s")
    results["sqs_ratio"] = sqs_in / ceiling


def stop_all(procs: Processes, setup: Setup) -> None:
    for proc in [*setup.workers, setup.front]:
        if proc is not None:
            procs.stop(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--sqs-messages", type=int, default=300)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    from wacloud.adapters.queue import ADAPTERS

    rabbitmq = "amqp" in ADAPTERS
    if not rabbitmq:
        log("RabbitMQ adapter not on this branch: its runs are skipped, no RESULT line")
    work = Path(tempfile.mkdtemp(prefix="wacloud-bench-distributed-"))
    failed = True
    results: dict[str, float] = {}
    try:
        with Processes(work) as procs, contextlib.ExitStack() as stack:
            _, fake_url = start_fake_provider(procs, TOKEN)
            with stage("embedded: serve (SQLite queue), PostgreSQL tenant"):
                run_embedded(procs, stack, work, fake_url, args.messages, results)
            if rabbitmq:
                with stage("RabbitMQ + PostgreSQL: serve --no-workers, 1 then 2 workers "
                           "per stage"):
                    run_rabbitmq(procs, stack, work, fake_url, args.messages, results)
            with stage("SQS + S3 on moto's server: 1 worker per stage, and moto's ceiling"):
                run_sqs(procs, stack, work, fake_url, args.sqs_messages, results)
        failed = False
        if not rabbitmq:
            return 2
        scale_in = results["inbound_2w"] / results["inbound_1w"]
        scale_out = results["outbound_2w"] / results["outbound_1w"]
        log(f"2 workers / 1 worker: inbound {scale_in:.2f}x, outbound {scale_out:.2f}x "
            "(target >= 1.2x on 2 cores, shared with whatever else runs here)")
        print("RESULT distributed " + " ".join(
            f"{key}={results[key]:.{3 if key == 'sqs_ratio' else 1}f}" for key in (
                "inbound_1w", "inbound_2w", "outbound_1w", "outbound_2w", "embedded_inbound",
                "embedded_outbound", "sqs_ratio")))
        return 0
    finally:
        if failed or args.keep:
            log(f"logs and data kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
