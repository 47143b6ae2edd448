"""The distributed engine end to end, through exactly its public contract: `wacloud init`,
`wacloud queues create`, `wacloud tenant add --db-url` (one tenant on PostgreSQL, another on
MariaDB, at the same time), `wacloud channel add`, `wacloud serve --no-workers` (the HTTP front)
and `wacloud worker` processes of its own, two per stage: on SQS with media on S3 (moto's server
over HTTP), and again on RabbitMQ with the local media folder.

Inbound: signed webhooks with media become rows in each tenant's database and files in the media
store. Outbound: rows a tenant inserts are collected, sent to the fake provider, their results
written back, and receipts move them on. Two workers of a stage share its messages; SIGTERM lets
a worker finish what it holds; a worker killed with SIGKILL loses nothing (its messages come back
to the other one), rows are stored exactly once and only sends in flight at the kill repeat."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
import sqlalchemy as sa

from tests.e2e.conftest import TOKEN, free_port, gateway_env, stage_count, wait_for
from tests.e2e.payloads import media_bytes
from tests.services import aws_environment, fresh_mariadb_db, fresh_postgres_db
from wacloud.adapters.db.tenant.tables import messages, outbound_messages
from wacloud.adapters.queue import ADAPTERS
from wacloud.testing.fake_provider import FakeProvider, FakeProviderServer
from wacloud.testing.webhooks import dumps, meta_envelope, meta_media, meta_text, sign

pytestmark = pytest.mark.slow

ENGINES = [
    "sqs",
    pytest.param("rabbitmq", marks=pytest.mark.skipif(
        "amqp" not in ADAPTERS, reason="RabbitMQ adapter not on this branch")),
]
INBOUND = "receive,write,media,save"  # the inbound stages, and saving send results
OUTBOUND = "send"  # these workers also collect pending rows (two collectors at once)
ACCEPTED, READ = 3, 6


@dataclass
class Tenant:
    slug: str
    db_url: str
    channel: str = field(default_factory=lambda: f"1065{uuid.uuid4().int % 10**11:011d}")
    waba: str = field(default_factory=lambda: f"1022{uuid.uuid4().int % 10**11:011d}")
    app_secret: str = field(default_factory=lambda: uuid.uuid4().hex)
    engine: sa.Engine = field(init=False)

    def __post_init__(self) -> None:
        self.engine = sa.create_engine(self.db_url, pool_size=2)

    def rows_in(self) -> dict[str, dict[str, Any]]:
        """provider_message_id -> row, failing on a message stored twice."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(messages).where(
                messages.c.direction == "in")).mappings().all()
        ids = Counter(r["provider_message_id"] for r in rows)
        assert all(n == 1 for n in ids.values()), f"stored twice: {ids.most_common(3)}"
        return {r["provider_message_id"]: dict(r) for r in rows}

    def insert_outbox(self, recipient: str, body: str) -> int:
        with self.engine.begin() as conn:
            result = conn.execute(outbound_messages.insert().values(
                channel=self.channel, recipient=recipient, type="text",
                content={"body": body}))
            return int(result.inserted_primary_key[0])

    def outbox(self) -> dict[int, dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(outbound_messages)).mappings().all()
        return {int(r["id"]): dict(r) for r in rows}


@dataclass
class Cluster:
    """One data dir, the HTTP front and four worker processes on one queue engine."""

    engine_name: str
    data_dir: Path
    env: dict[str, str]
    fake: FakeProvider
    fake_url: str
    tenants: list[Tenant]
    bucket: str | None
    serve: subprocess.Popen[bytes] | None = None
    port: int = field(default_factory=free_port)
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    metrics_ports: dict[str, int] = field(default_factory=dict)
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10)

    def cli(self, *args: str) -> str:
        return self.cli_together([list(args)])[0]

    def cli_together(self, commands: list[list[str]]) -> list[str]:
        """Run independent `wacloud` commands side by side (each pays Python's start-up);
        their outputs, each checked to have succeeded."""
        running = [subprocess.Popen([sys.executable, "-m", "wacloud.cli", *args], env=self.env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                   for args in commands]
        outputs = []
        for args, process in zip(commands, running, strict=True):
            out, err = process.communicate(timeout=120)
            assert process.returncode == 0, f"wacloud {' '.join(args[:2])} failed:\n{out}\n{err}"
            outputs.append(out)
        return outputs

    def _spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.data_dir / f"{name}.log").open("ab")
        return subprocess.Popen([sys.executable, "-m", "wacloud.cli", *args], env=self.env,
                                stdout=log, stderr=log)

    def start_serve(self, wait: bool = True) -> None:
        self.serve = self._spawn("serve", "serve", "--no-workers", "--port", str(self.port),
                                 "--internal-port", str(free_port()))
        if wait:
            self.wait_serve()

    def wait_serve(self) -> None:

        def healthy() -> bool:
            assert self.serve is not None
            assert self.serve.poll() is None, self.log("serve")
            try:
                return self.client.get("/healthz").status_code == 200
            except httpx.HTTPError:
                return False
        wait_for(healthy, 90, 0.1, message="serve --no-workers /healthz")

    def start_worker(self, name: str, wait: bool = True) -> None:
        """`inbound-0`, `outbound-1`, ...: a `wacloud worker` of that group."""
        group = INBOUND if name.startswith("inbound") else OUTBOUND
        port = self.metrics_ports.setdefault(name, free_port())
        args = ["worker", "--stages", group, "--metrics-port", str(port)]
        if group == INBOUND:
            args.append("--no-collect")
        self.workers[name] = self._spawn(name, *args)
        if wait:
            self.wait_worker(name)

    def wait_worker(self, name: str) -> None:
        wait_for(lambda: self._metrics_up(name), 90, 0.1, message=f"worker {name} up")

    def _metrics_up(self, name: str) -> bool:
        assert self.workers[name].poll() is None, self.log(name)
        try:
            return httpx.get(f"http://127.0.0.1:{self.metrics_ports[name]}/metrics",
                             timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def ensure_workers(self) -> None:
        """Start the workers that are not running (side by side), and wait for them."""
        missing = [name for name in ("inbound-0", "inbound-1", "outbound-0", "outbound-1")
                   if name not in self.workers or self.workers[name].poll() is not None]
        for name in missing:
            self.start_worker(name, wait=False)
        for name in missing:
            self.wait_worker(name)

    def handled(self, name: str, stage: str) -> float:
        """Messages `stage` handled ok in worker `name` since it started (its own /metrics)."""
        return stage_count(self.metrics_ports[name], stage)

    def log(self, name: str, lines: int = 30) -> str:
        path = self.data_dir / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return f"--- {name} log tail ---\n" + "\n".join(text.splitlines()[-lines:])

    def logs(self) -> str:
        return "\n".join(self.log(n) for n in ["serve", *sorted(self.workers)])

    def post(self, tenant: Tenant, payload: dict[str, Any]) -> None:
        body = dumps(payload)
        answer = self.client.post("/webhooks/meta", content=body, headers={
            "Content-Type": "application/json",
            "X-Hub-Signature-256": sign(body, tenant.app_secret)})
        assert answer.status_code == 200, answer.text

    def post_texts(self, tenant: Tenant, count: int, tag: str) -> list[str]:
        wamids = []
        for n in range(count):
            wamid = f"wamid.{tag}.{n}.{uuid.uuid4().hex[:8]}"
            message, contact = meta_text(f"55119{n:08d}", f"{tag} {n}", wamid)
            self.post(tenant, meta_envelope(tenant.channel, tenant.waba, "5511940001234",
                                            [message], None, [contact]))
            wamids.append(wamid)
        return wamids

    def post_image(self, tenant: Tenant, stall_s: float = 0.0) -> tuple[str, bytes]:
        data = media_bytes("image/jpeg", 4096)
        media = self.fake.add_media(data, mime_type="image/jpeg", provider="meta")
        if stall_s:
            # The first try (in the receive stage) gives up; the media stage then holds it.
            self.fake.stall_media(media.id, times=2, seconds=stall_s)
        wamid = f"wamid.img.{uuid.uuid4().hex}"
        self.post(tenant, meta_envelope(tenant.channel, tenant.waba, "5511940001234", [
            meta_media("5511987650000", "image", media.id, "image/jpeg", media.sha256_b64,
                       wamid)], None, [{"profile": {"name": "Ana"}, "wa_id": "5511987650000"}]))
        return wamid, data

    def stored_media(self, key: str) -> bytes:
        if self.bucket is not None:
            s3 = boto3.client("s3", endpoint_url=self.env["AWS_ENDPOINT_URL"],
                              region_name=self.env["AWS_DEFAULT_REGION"],
                              aws_access_key_id="testing", aws_secret_access_key="testing")
            body: bytes = s3.get_object(Bucket=self.bucket, Key=f"media/{key}")["Body"].read()
            return body
        return (self.data_dir / "media" / key).read_bytes()

    def wait_rows(self, tenant: Tenant, wamids: list[str], media: bool = False,
                  timeout: float = 40) -> dict[str, dict[str, Any]]:
        def ready() -> dict[str, dict[str, Any]] | None:
            rows = tenant.rows_in()
            if not set(wamids) <= set(rows):
                return None
            if media and any(rows[w]["media_status"] is not None
                             and rows[w]["media_status"] != "stored" for w in wamids):
                return None
            return rows
        try:
            found: dict[str, dict[str, Any]] = wait_for(ready, timeout, 0.1,
                                                        f"rows in {tenant.slug}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None
        return found

    def wait_outbox(self, tenant: Tenant, ids: list[int], status: int,
                    timeout: float = 40) -> dict[int, dict[str, Any]]:
        def ready() -> dict[int, dict[str, Any]] | None:
            rows = tenant.outbox()
            return rows if all(rows[i]["status"] == status for i in ids) else None
        try:
            found: dict[int, dict[str, Any]] = wait_for(ready, timeout, 0.1,
                                                        f"outbox of {tenant.slug} at {status}")
        except AssertionError as exc:
            state = {i: r["status"] for i, r in tenant.outbox().items() if i in ids}
            raise AssertionError(f"{exc}\nstatuses: {state}\n{self.logs()}") from None
        return found

    def accepted_bodies(self, tenant: Tenant) -> Counter[str]:
        return Counter(s.body["text"]["body"] for s in self.fake.sent_snapshot()
                       if s.sender == tenant.channel and s.accepted and s.is_message)

    def stop(self) -> None:
        for process in [*self.workers.values(), self.serve]:
            if process is not None and process.poll() is None:
                process.terminate()
        for process in [*self.workers.values(), self.serve]:
            if process is not None:
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.client.close()
        for tenant in self.tenants:
            tenant.engine.dispose()


def engine_settings(engine_name: str, stack: ExitStack, moto_endpoint: str,
                    data_dir: Path) -> tuple[dict[str, str], str | None]:
    """The queue and media URLs (and AWS environment) of one engine."""
    prefix = f"wd{uuid.uuid4().hex[:10]}"
    env = aws_environment(moto_endpoint)
    if engine_name == "sqs":
        bucket = f"wacloud-dist-{uuid.uuid4().hex[:12]}"
        env.update({"WACLOUD_QUEUE_URL": f"sqs://?prefix={prefix}",
                    "WACLOUD_MEDIA_URL": f"s3://{bucket}/media"})
        return env, bucket
    from tests.services import fresh_rabbitmq_vhost

    vhost_url = stack.enter_context(fresh_rabbitmq_vhost())
    env["WACLOUD_QUEUE_URL"] = f"{vhost_url}?prefix={prefix}"
    env["WACLOUD_MEDIA_URL"] = f"file://{data_dir / 'media'}"
    return env, None


@pytest.fixture(scope="module", params=ENGINES)
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
            fake_server: FakeProviderServer, moto_endpoint: str) -> Iterator[Cluster]:
    engine_name: str = request.param
    data_dir = tmp_path_factory.mktemp(f"distributed-{engine_name}") / "data"
    with ExitStack() as stack:
        pg_url = stack.enter_context(fresh_postgres_db())
        maria_url = stack.enter_context(fresh_mariadb_db())
        engine_env, bucket = engine_settings(engine_name, stack, moto_endpoint, data_dir)
        env = {**gateway_env(data_dir), **engine_env,
               # Short enough that a killed worker's messages come back within a test.
               "WACLOUD_QUEUE_VISIBILITY_TIMEOUT_S": "3", "WACLOUD_SEND_TIMEOUT_S": "2",
               # Few messages at a time per worker: the other worker of a stage gets the rest.
               "WACLOUD_SEND_CONCURRENCY": "2", "WACLOUD_MEDIA_CONCURRENCY": "1",
               "WACLOUD_MEDIA_FIRST_TRY_TIMEOUT_S": "0.5"}
        tenants = [Tenant("pg", pg_url), Tenant("maria", maria_url)]
        cluster = Cluster(engine_name, data_dir, env, fake_server.provider, fake_server.base_url,
                          tenants, bucket)
        stack.callback(cluster.stop)
        cluster.cli("init")
        created = cluster.cli_together([
            ["queues", "create", "--json"],
            *(["tenant", "add", t.slug, "--db-url", t.db_url] for t in tenants)])[0]
        assert (json.loads(created)["bucket"] is not None) == (bucket is not None)
        cluster.cli_together([
            ["channel", "add", "meta", "--tenant", t.slug, "--phone-number-id", t.channel,
             "--waba-id", t.waba, "--display-number", "5511940001234", "--token", TOKEN,
             "--app-secret", t.app_secret, "--verify-token", uuid.uuid4().hex,
             "--api-base-url", fake_server.base_url, "--mps", "1000"] for t in tenants])
        cluster.start_serve(wait=False)
        cluster.ensure_workers()
        cluster.wait_serve()
        yield cluster


def test_inbound_and_outbound_pipelines_on_postgresql_and_mariadb(cluster: Cluster) -> None:
    cluster.ensure_workers()
    pg, maria = cluster.tenants
    # Inbound: texts and images for both tenants at once; two images each wait in a stalled
    # download, so that each media worker (one at a time) must take some.
    expected: dict[str, list[str]] = {}
    images: dict[str, bytes] = {}
    for tenant in (pg, maria):
        expected[tenant.slug] = cluster.post_texts(tenant, 8, tenant.slug)
        for _ in range(2):
            wamid, data = cluster.post_image(tenant, stall_s=1.5)
            expected[tenant.slug].append(wamid)
            images[wamid] = data
    for tenant in (pg, maria):
        rows = cluster.wait_rows(tenant, expected[tenant.slug], media=True)
        assert set(rows) == set(expected[tenant.slug])
        for wamid, row in rows.items():
            assert row["channel"] == tenant.channel
            if wamid in images:
                assert row["media_key"].startswith(f"{tenant.slug}/{tenant.channel}/")
                assert cluster.stored_media(row["media_key"]) == images[wamid]
    assert all(cluster.handled(f"inbound-{n}", "media") >= 1 for n in (0, 1)), \
        "both media workers copied media"
    assert sum(cluster.handled(f"inbound-{n}", "inbound") for n in (0, 1)) >= 1

    # Outbound: rows the tenants insert, three for each of four recipients, interleaved; the
    # two sending workers both collect (two collector processes on each database at once).
    # Each send is held a moment, so that both senders work.
    ids: dict[str, list[int]] = {}
    for tenant in (pg, maria):
        cluster.fake.script(tenant.channel, times=12, status=200, delay=0.3)
        ids[tenant.slug] = [tenant.insert_outbox(f"55219{n % 4:08d}", f"{tenant.slug} out {n}")
                            for n in range(12)]
    for tenant in (pg, maria):
        rows = cluster.wait_outbox(tenant, ids[tenant.slug], ACCEPTED)
        assert cluster.accepted_bodies(tenant) == Counter(
            {f"{tenant.slug} out {n}": 1 for n in range(12)}), "each row sent once"
        for person in range(4):
            arrived = [s.body["text"]["body"] for s in cluster.fake.sent_to(f"55219{person:08d}")
                       if s.sender == tenant.channel and s.accepted]
            assert arrived == [f"{tenant.slug} out {n}" for n in range(person, 12, 4)], \
                "order per recipient"
        # Receipts (signed status webhooks) move each row on, through the same workers.
        statuses = [{"id": rows[i]["provider_message_id"], "status": "read",
                     "timestamp": str(int(time.time())), "recipient_id": rows[i]["recipient"]}
                    for i in ids[tenant.slug]]
        cluster.post(tenant, meta_envelope(tenant.channel, tenant.waba, "5511940001234",
                                           None, statuses))
        cluster.wait_outbox(tenant, ids[tenant.slug], READ)
    if cluster.engine_name == "sqs":
        # RabbitMQ gives each send partition a single active consumer (order per recipient):
        # there the second sender stands by, as the SIGTERM and SIGKILL tests show.
        assert all(cluster.handled(f"outbound-{n}", "send") >= 1 for n in (0, 1)), \
            "both senders sent"


def test_sigterm_lets_workers_finish_what_they_hold(cluster: Cluster) -> None:
    cluster.ensure_workers()
    pg = cluster.tenants[0]
    # Shorter than WACLOUD_SEND_TIMEOUT_S (2 s), within WACLOUD_SHUTDOWN_GRACE_S (5 s).
    cluster.fake.script(pg.channel, times=4, status=200, delay=1.0)
    ids = [pg.insert_outbox(f"55319{n:08d}", f"term {n}") for n in range(4)]

    def started() -> int:  # slow sends that have reached the provider
        left = [s.times for s in cluster.fake.pending_scripts() if s.match == pg.channel]
        return 4 - sum(left)
    # Two at least: on SQS each sender holds two; on RabbitMQ one sender may hold them all.
    wait_for(lambda: started() >= 2, 30, message="sends in flight")
    senders = [cluster.workers["outbound-0"], cluster.workers["outbound-1"]]
    for process in senders:
        process.send_signal(signal.SIGTERM)
    in_flight = started()
    assert [p.wait(30) for p in senders] == [0, 0], cluster.logs()
    # What they held was sent once and its result queued: the save stage (in the inbound
    # workers) writes it back with no sender running.
    def term_sends() -> Counter[str]:
        return Counter({b: n for b, n in cluster.accepted_bodies(pg).items()
                        if b.startswith("term ")})
    done = term_sends()
    assert sum(done.values()) >= in_flight and set(done.values()) == {1}
    try:
        wait_for(lambda: sum(1 for i in ids if pg.outbox()[i]["status"] == ACCEPTED)
                 == len(done), 30, message="the results of the finished sends saved")
    except AssertionError as exc:
        state = {i: pg.outbox()[i]["status"] for i in ids}
        raise AssertionError(f"{exc}\nsent {done}, rows {state}\n{cluster.logs()}") from None

    # Meanwhile an inbound worker stops too, while webhooks arrive: nothing is lost.
    wamids = cluster.post_texts(pg, 10, "during-term")
    cluster.workers["inbound-0"].send_signal(signal.SIGTERM)
    assert cluster.workers["inbound-0"].wait(30) == 0, cluster.logs()
    later = [pg.insert_outbox(f"55329{n:08d}", f"after term {n}") for n in range(3)]
    cluster.ensure_workers()
    cluster.wait_rows(pg, wamids)
    cluster.wait_outbox(pg, [*ids, *later], ACCEPTED)
    assert set(term_sends().values()) == {1}, "a send finished at the stop went out again"


def test_sigkill_loses_nothing(cluster: Cluster) -> None:
    cluster.ensure_workers()
    pg, maria = cluster.tenants
    # Inbound: a worker killed while a burst is stored; the other stores the rest, and what
    # the dead one held comes back after its visibility: every row once.
    wamids = cluster.post_texts(pg, 40, "kill")
    wait_for(lambda: len(set(pg.rows_in()) & set(wamids)) >= 5, 30,
             message="storing under way")
    cluster.workers["inbound-0"].send_signal(signal.SIGKILL)
    cluster.workers["inbound-0"].wait(10)
    rows = cluster.wait_rows(pg, wamids, timeout=60)  # rows_in fails on a duplicate
    assert len(set(rows) & set(wamids)) == 40

    # Outbound: a sender killed while sending; its messages come back to the other one.
    total = 24
    cluster.fake.script(maria.channel, times=total, status=200, delay=0.3)
    ids = [maria.insert_outbox(f"55419{n:08d}", f"kill out {n}") for n in range(total)]
    wait_for(lambda: sum(1 for b in cluster.accepted_bodies(maria) if b.startswith("kill out"))
             >= 4, 30, message="sending under way")
    cluster.workers["outbound-0"].send_signal(signal.SIGKILL)
    killed_at = time.time()
    cluster.workers["outbound-0"].wait(10)
    at_kill = maria.outbox()
    cluster.wait_outbox(maria, ids, ACCEPTED, timeout=60)
    counts = Counter({b: n for b, n in cluster.accepted_bodies(maria).items()
                      if b.startswith("kill out")})
    assert set(counts) == {f"kill out {n}" for n in range(total)}
    repeated = {body for body, n in counts.items() if n > 1}
    saved_at_kill = {r["content"]["body"] for r in at_kill.values() if r["status"] == ACCEPTED}
    first_sent = {}
    for sent in cluster.fake.sent_snapshot():
        if sent.sender == maria.channel and sent.accepted and sent.is_message:
            first_sent.setdefault(sent.body["text"]["body"], sent.time)
    # A repeat is only a send in flight at the kill (sent, its result not yet saved), at
    # most twice, and no more than one sender holds at once (WACLOUD_SEND_CONCURRENCY=2).
    for body in repeated:
        assert first_sent[body] <= killed_at and body not in saved_at_kill
    assert all(n <= 2 for n in counts.values())
    assert len(repeated) <= 2
    print(f"{cluster.engine_name}: sends in flight at the kill and sent again: {len(repeated)}")
    cluster.ensure_workers()
