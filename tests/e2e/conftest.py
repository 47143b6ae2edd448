"""End-to-end fixtures: a real `wacloud serve` process, the fake provider over real HTTP, and
tenants with their own SQLite databases."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from wacloud.adapters.db.registry.api_keys import create_api_key
from wacloud.adapters.db.registry.store import Registry
from wacloud.adapters.db.tenant.tables import outbound_messages
from wacloud.adapters.db.tenant.views import list_messages
from wacloud.bootstrap import init_data_dir, open_registry
from wacloud.credentials.broker import CredentialsBroker
from wacloud.domain.model import Channel, Provider
from wacloud.settings import load_settings
from wacloud.testing.fake_provider import FakeProvider, FakeProviderServer
from wacloud.testing.webhooks import dumps, sign

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TOKEN = "fake-provider-token"
_ids = itertools.count(1)


def fixture(provider: str, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / provider / f"{name}.json").read_text("utf-8"))
    return data


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05,
             message: str = "condition") -> Any:
    """Poll until `predicate` returns something truthy; fail with `message` at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {message}; last value: {last!r}")


@dataclass
class GatewayProcess:
    data_dir: Path
    port: int
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    # /metrics and /internal/credentials listen here, not on `port`.
    internal_port: int = field(default_factory=free_port)
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.data_dir / "serve.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def internal_url(self) -> str:
        return f"http://127.0.0.1:{self.internal_port}"

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "wacloud.cli", "serve", "--port", str(self.port),
                 "--internal-port", str(self.internal_port), "--data-dir", str(self.data_dir)],
                env=self.env, stdout=log, stderr=log, start_new_session=True)
        try:
            wait_for(self._healthy, 30, message="gateway /healthz")
        except BaseException:
            # One that never answered must not outlive its test: left running, each such
            # gateway loads the machine further and the next ones miss their deadline too.
            self.kill()
            raise

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError("gateway exited:\n" + self.log_path.read_text())
        try:
            return httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL to `serve` and its stage worker at once, as a crash of the host: a worker
        that outlives its parent by even a few milliseconds (until Linux delivers its death
        signal) may still send, after a test has taken the moment of the kill."""
        if self.process and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Harness:
    """One gateway + fake provider, and helpers to add tenants and send webhooks."""

    gateway: GatewayProcess
    fake: FakeProvider
    fake_url: str
    registry: Registry
    broker: CredentialsBroker
    client: httpx.Client
    internal: httpx.Client  # the internal listener: /metrics, /internal/credentials

    def metric(self, name: str, **labels: str) -> float:
        """A counter's value (0 when absent) from the internal listener's /metrics."""
        wanted = [f'{k}="{v}"' for k, v in labels.items()]
        total = 0.0
        for line in self.internal.get("/metrics").text.splitlines():
            series, _, value = line.rpartition(" ")
            if series.split("{")[0] == name and all(w in series for w in wanted):
                total += float(value)
        return total

    def tenant(self, slug: str | None = None) -> str:
        slug = slug or f"t{next(_ids)}-{uuid.uuid4().hex[:6]}"
        self.registry.add_tenant(slug)
        return slug

    def meta_channel(self, tenant: str, phone_number_id: str | None = None,
                     waba_id: str | None = None, app_secret: str | None = None,
                     wait: bool = True, mps: int = 80) -> Channel:
        channel = self.registry.add_channel(
            tenant=tenant, provider=Provider.META,
            key=phone_number_id or f"1065{next(_ids):011d}",
            phone_number_id=phone_number_id, waba_id=waba_id or f"1022{next(_ids):011d}",
            display_number="5511940001234", token=TOKEN,
            app_secret=app_secret or uuid.uuid4().hex, verify_token=uuid.uuid4().hex,
            api_base_url=self.fake_url, mps=mps)
        if channel.phone_number_id is None:
            channel.phone_number_id = channel.key
        if wait:
            self.wait_channel_visible(channel)
        return channel

    def secret_channel(self, tenant: str, provider: Provider, key: str | None = None,
                       wait: bool = True, mps: int = 80) -> Channel:
        key = key or f"CH-{uuid.uuid4().hex[:8]}"
        token = TOKEN
        if provider is Provider.WHAPI:
            # Whapi knows a channel by its token: give each its own, as in real life.
            token = f"whapi-{uuid.uuid4().hex}"
            self.fake.set_whapi_channel(token, key)
        channel = self.registry.add_channel(
            tenant=tenant, provider=provider, key=key,
            phone_number_id=f"1065{next(_ids):011d}" if provider is Provider.CHAKRA else None,
            token=token, webhook_secret=uuid.uuid4().hex, api_base_url=self.fake_url, mps=mps)
        if wait:
            self.wait_channel_visible(channel)
        return channel

    def wait_channel_visible(self, channel: Channel) -> None:
        """The running gateway reloads the registry within its poll interval; wait for it."""
        if channel.provider is Provider.META:
            def visible() -> bool:
                answer = self.client.get("/webhooks/meta", params={
                    "hub.mode": "subscribe", "hub.verify_token": channel.verify_token,
                    "hub.challenge": "ping"})
                return answer.status_code == 200
        else:
            def visible() -> bool:
                # The secret is checked before the size: a too-big body with the right secret
                # answers 413 only once the gateway knows the channel (401 before that).
                answer = self.client.post(
                    f"/webhooks/{channel.provider.value}/{channel.key}",
                    content=b" " * (300 * 1024),
                    headers={"Authorization": f"Bearer {channel.webhook_secret}"})
                return answer.status_code == 413
        wait_for(visible, 10, message=f"channel {channel.key} visible to the gateway")

    def post_meta(self, payload: dict[str, Any] | bytes, app_secret: str | None,
                  ) -> httpx.Response:
        body = payload if isinstance(payload, bytes) else dumps(payload)
        headers = {"Content-Type": "application/json"}
        if app_secret is not None:
            headers["X-Hub-Signature-256"] = sign(body, app_secret)
        return self.client.post("/webhooks/meta", content=body, headers=headers)

    def post_secret(self, channel: Channel, payload: dict[str, Any], secret: str | None = None,
                    in_query: bool = False) -> httpx.Response:
        secret = channel.webhook_secret if secret is None else secret
        path = f"/webhooks/{channel.provider.value}/{channel.key}"
        if in_query:
            return self.client.post(path, params={"token": secret}, content=dumps(payload))
        return self.client.post(path, content=dumps(payload),
                                headers={"Authorization": f"Bearer {secret}"})

    def rows(self, tenant: str, direction: str | None = None) -> list[dict[str, Any]]:
        return list_messages(self.broker.tenant_store(tenant).engine, direction)

    def wait_rows(self, tenant: str, count: int, direction: str | None = "in",
                  predicate: Callable[[list[dict[str, Any]]], bool] | None = None,
                  timeout: float = 15.0) -> list[dict[str, Any]]:
        def ready() -> list[dict[str, Any]] | None:
            rows = self.rows(tenant, direction)
            if len(rows) >= count and (predicate is None or predicate(rows)):
                return rows
            return None
        try:
            rows: list[dict[str, Any]] = wait_for(ready, timeout,
                                                  message=f"{count} rows in {tenant}")
        except AssertionError as exc:
            ids = [r["provider_message_id"] for r in self.rows(tenant, direction)]
            raise AssertionError(f"{exc}\nrows there: {ids}\nparked: {len(self.parked())}\n"
                                 f"gateway log tail:\n{self.gateway.log_tail()}") from None
        return rows

    def api_key(self, tenant: str) -> str:
        key = create_api_key(self.registry, tenant=tenant)[1]
        # Registry changes reach the gateway within its poll interval.
        wait_for(lambda: self.client.get("/v1/messages/0", headers={
            "Authorization": f"Bearer {key}"}).status_code == 404, message="API key visible")
        return key

    def submit(self, key: str, message: dict[str, Any]) -> httpx.Response:
        return self.client.post("/v1/messages", json=message,
                                headers={"Authorization": f"Bearer {key}"})

    def insert_outbox(self, tenant: str, channel: str, recipient: str | None, type: str,
                      content: dict[str, Any], **extra: Any) -> int:
        """What a tenant's own system does: insert a row with just its message."""
        values = {"channel": channel, "recipient": recipient, "type": type,
                  "content": content, **extra}
        with self.broker.tenant_store(tenant).engine.begin() as conn:
            result = conn.execute(outbound_messages.insert().values(**values))
            return int(result.inserted_primary_key[0])

    def outbox(self, tenant: str) -> dict[int, dict[str, Any]]:
        with self.broker.tenant_store(tenant).engine.connect() as conn:
            rows = conn.execute(sa.select(outbound_messages)).mappings().all()
        return {int(r["id"]): dict(r) for r in rows}

    def wait_outbox(self, tenant: str, predicate: Callable[[dict[int, dict[str, Any]]], bool],
                    timeout: float = 20.0, message: str = "outbox state") -> dict[int, Any]:
        def ready() -> dict[int, dict[str, Any]] | None:
            rows = self.outbox(tenant)
            return rows if rows and predicate(rows) else None
        try:
            rows: dict[int, Any] = wait_for(ready, timeout, message=message)
        except AssertionError as exc:
            # What the rows and the gateway said, so that a rare failure can be understood.
            state = {i: (r["status"], r["error_code"], r["attempts"])
                     for i, r in self.outbox(tenant).items()}
            raise AssertionError(f"{exc}\nrows (status, error, attempts): {state}\n"
                                 f"gateway log tail:\n{self.gateway.log_tail()}") from None
        return rows

    def parked(self) -> list[Any]:
        return self.registry.parked_items()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "wacloud.cli", *args, "--data-dir",
             str(self.gateway.data_dir)], env=self.gateway.env, capture_output=True,
            text=True, timeout=60, check=False)


def gateway_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WACLOUD_")}
    env.update({
        "WACLOUD_DATA_DIR": str(data_dir),
        "WACLOUD_DEV_ALLOW_LOCAL_URLS": "1",
        "WACLOUD_REGISTRY_POLL_S": "0.2",
        # The suite itself keeps both cores busy; a niced worker would be starved by it and
        # miss the tests' deadlines. Production keeps the default (webhook answers first).
        "WACLOUD_WORKER_NICE": "0",
        "WACLOUD_QUEUE_VISIBILITY_TIMEOUT_S": "3",
        "WACLOUD_MEDIA_BACKOFF_BASE_S": "0.2",
        "WACLOUD_MEDIA_BACKOFF_MAX_S": "0.5",
        "WACLOUD_MEDIA_MAX_ATTEMPTS": "4",
        "WACLOUD_MEDIA_FIRST_TRY_TIMEOUT_S": "5",
        "WACLOUD_MAX_WEBHOOK_BYTES": str(256 * 1024),
        "WACLOUD_MAX_MEDIA_BYTES": str(8 * 1024 * 1024),
        "WACLOUD_COLLECT_POLL_S": "0.2",
        # Rows are inserted directly into tenant databases here (no API wake).
        "WACLOUD_COLLECT_IDLE_MAX_S": "0.2",
        "WACLOUD_RESERVATION_LEASE_S": "5",
        "WACLOUD_SEND_BACKOFF_BASE_S": "0.2",
        "WACLOUD_SEND_BACKOFF_MAX_S": "1",
        "WACLOUD_SEND_MAX_ATTEMPTS": "4",
        "WACLOUD_SEND_TIMEOUT_S": "5",
        "WACLOUD_PAIR_BURST": "1000",
        # A test's teardown stops the gateway with SIGTERM: its drain stays short.
        "WACLOUD_SHUTDOWN_GRACE_S": "5",
    })
    return env


@pytest.fixture(scope="session")
def fake_server() -> Iterator[FakeProviderServer]:
    with FakeProviderServer(FakeProvider(token=TOKEN)) as server:
        yield server


def make_harness(tmp_path: Path, fake_server: FakeProviderServer,
                 extra_env: dict[str, str] | None = None) -> Iterator[Harness]:
    data_dir = tmp_path / "data"
    env = {**gateway_env(data_dir), **(extra_env or {})}
    settings = load_settings(data_dir)
    init_data_dir(settings)
    registry = open_registry(settings)
    broker = CredentialsBroker(registry, tenants_dir=settings.tenants_dir, cache_seconds=0)
    gateway = GatewayProcess(data_dir, free_port(), env)
    try:
        gateway.start()
    except BaseException:
        broker.close()
        registry.engine.dispose()
        raise
    client = httpx.Client(base_url=gateway.base_url, timeout=10)
    internal = httpx.Client(base_url=gateway.internal_url, timeout=10)
    try:
        yield Harness(gateway, fake_server.provider, fake_server.base_url, registry, broker,
                      client, internal)
    finally:
        internal.close()
        client.close()
        gateway.stop()
        broker.close()
        registry.engine.dispose()


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory,
            fake_server: FakeProviderServer) -> Iterator[Harness]:
    yield from make_harness(tmp_path_factory.mktemp("gateway"), fake_server)


def two_free_ports() -> int:
    """A port p such that p and p + 1 are both free (one per worker)."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two consecutive free ports")


def stage_count(port: int, stage: str) -> float:
    """`wacloud_stage_messages_total{stage=..., result="ok"}` as a worker reports it."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith("wacloud_stage_messages_total{") and f'stage="{stage}"' in line \
                and 'result="ok"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def worker_pids(harness: Harness) -> dict[str, int]:
    """`--stages` argument -> pid of each live worker child of `serve`."""
    assert harness.gateway.process is not None
    parent = harness.gateway.process.pid
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat[1]) == parent and b"worker" in argv and b"--stages" in argv:
            found[argv[argv.index(b"--stages") + 1].decode()] = int(entry.name)
    return found
