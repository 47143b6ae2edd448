"""Helpers shared by the benchmarks: processes, ports, signed Meta webhooks, percentiles.

Nothing here talks to anything but 127.0.0.1. Every process started through `Processes` is
stopped (SIGTERM, then SIGKILL, by its own process group id) when the `with` block ends, on
an exception, on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import IO, Any

from wacloud.bootstrap import init_data_dir, open_registry
from wacloud.credentials.broker import CredentialsBroker
from wacloud.domain.model import Provider
from wacloud.settings import load_settings
from wacloud.testing.webhooks import dumps, meta_envelope, sign

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
VENV_PY = REPO / ".venv" / "bin" / "python"
WACLOUD = REPO / ".venv" / "bin" / "wacloud"
HOST = "127.0.0.1"


# --------------------------------------------------------------------------------- processes

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def on_cpus(cpus: set[int] | None) -> Callable[[], None] | None:
    """A `preexec_fn` that confines the child to `cpus` (None: no confinement)."""
    if not cpus:
        return None
    chosen = set(cpus)
    return lambda: os.sched_setaffinity(0, chosen)


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((HOST, port)) == 0


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    port: int | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Processes:
    """Child processes of one benchmark run, all stopped when the block exits."""

    log_dir: Path
    procs: list[Proc] = field(default_factory=list)

    def __enter__(self) -> Processes:
        self._old_term = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)
        signal.signal(signal.SIGTERM, self._old_term)

    def start(self, name: str, argv: Sequence[str | Path], *, port: int | None = None,
              env: dict[str, str] | None = None, ready_timeout: float = 30.0,
              cwd: Path | None = None, cpus: set[int] | None = None) -> Proc:
        """Start a process in its own session (on `cpus` only, if given); wait until `port`
        accepts connections."""
        log_path = self.log_dir / f"{name}.log"
        log: IO[bytes] = log_path.open("wb")
        popen = subprocess.Popen([str(a) for a in argv], stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})},
                                 cwd=cwd or REPO, start_new_session=True,
                                 preexec_fn=on_cpus(cpus))
        log.close()
        proc = Proc(name, popen, log_path, port)
        self.procs.append(proc)
        if port is not None:
            deadline = time.monotonic() + ready_timeout
            while not port_open(port):
                if popen.poll() is not None:
                    raise RuntimeError(f"{name} exited with {popen.returncode}:\n"
                                       f"{proc.log_tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not open port {port} in {ready_timeout}s:"
                                       f"\n{proc.log_tail()}")
                time.sleep(0.05)
        return proc

    def stop(self, proc: Proc, timeout: float = 10.0) -> None:
        if proc in self.procs:
            self.procs.remove(proc)
        if proc.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: the group id is its pid
        try:
            proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.popen.wait(5)


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def proc_status_kb(pid: int, key: str) -> int:
    """A `/proc/PID/status` value in kB (VmRSS, VmHWM), summed over the process and its live
    children (the stage worker counts: it is part of the gateway); 0 when it is gone. A sum
    of VmHWM peaks overstates the peak of the sum, never understates it."""
    total = 0
    for member in process_tree(pid):
        try:
            with open(f"/proc/{member}/status") as handle:
                for line in handle:
                    if line.startswith(key + ":"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


def process_tree(pid: int) -> list[int]:
    """`pid` and its live descendants (`wacloud serve` runs its stages in a child process)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as handle:
                    todo.extend(int(child) for child in handle.read().split())
        except OSError:
            continue
    return found


def cpu_seconds(pid: int, *, children: bool = True) -> float:
    """User + system CPU time a process (and its live children) has used so far."""
    total = 0.0
    for member in process_tree(pid) if children else [pid]:
        try:
            with open(f"/proc/{member}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def start_py_spy(procs: Processes, pid: int, out: Path, seconds: float) -> Proc | None:
    """Sample `pid` with py-spy (only threads holding the GIL) for `seconds`, if installed."""
    py_spy = REPO / ".venv" / "bin" / "py-spy"
    if not py_spy.exists():
        print("   (py-spy not installed: .venv/bin/pip install py-spy)", flush=True)
        return None
    return procs.start("py-spy", [py_spy, "record", "--pid", str(pid), "--duration",
                                  str(max(1, round(seconds))), "--rate", "250", "--gil",
                                  "--subprocesses", "--nonblocking", "--format", "raw",
                                  "--output", out])


def summarize_py_spy(proc: Proc | None, out: Path, top: int = 15) -> None:
    """Wait for py-spy, then print where the GIL time went (self and inclusive)."""
    if proc is None:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.popen.wait(120)
    if not out.exists():
        print(f"   py-spy wrote nothing:\n{proc.log_tail()}", flush=True)
        return
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";") if f]
        if frames:
            own[frames[-1]] += n
        for frame in set(frames):
            if "wacloud/" in frame or "sqlalchemy/engine/base" in frame:
                inclusive[frame] += n
    print(f"   py-spy (GIL-holding samples: {total}; raw stacks in {out}):", flush=True)
    print("   self time:", flush=True)
    for frame, n in own.most_common(top):
        print(f"     {100 * n / total:5.1f}%  {frame[:110]}", flush=True)
    print("   inclusive, wacloud frames:", flush=True)
    for frame, n in inclusive.most_common(top):
        print(f"     {100 * n / total:5.1f}%  {frame[:110]}", flush=True)


# ------------------------------------------------------------------------------ the gateway

@dataclass
class ChannelSpec:
    tenant: str
    phone_number_id: str
    waba_id: str
    display_number: str


@dataclass
class GatewaySetup:
    data_dir: Path
    app_secret: str
    token: str
    channels: list[ChannelSpec]

    def tenant_db(self, tenant: str) -> Path:
        return self.data_dir / "tenants" / f"{tenant}.db"

    @property
    def queue_db(self) -> Path:
        return self.data_dir / "queues.db"


def setup_gateway(data_dir: Path, channels: list[ChannelSpec], *, app_secret: str,
                  token: str, api_base_url: str | None = None, mps: int = 80) -> GatewaySetup:
    """What `wacloud init`, `tenant add` and `channel add meta` do, without three CLI starts.

    `mps` is every channel's messages-per-second limit (the CLI's `--mps`, default 80).
    """
    settings = load_settings(data_dir, dev_allow_local_urls=True)
    init_data_dir(settings)
    registry = open_registry(settings)
    broker = CredentialsBroker(registry, tenants_dir=settings.tenants_dir)
    for spec in channels:
        if not broker.has_tenant(spec.tenant):
            registry.add_tenant(spec.tenant)
            broker = CredentialsBroker(registry, tenants_dir=settings.tenants_dir)
        broker.tenant_store(spec.tenant)  # creates the tenant's schema now
        registry.add_channel(tenant=spec.tenant, provider=Provider.META,
                             key=spec.phone_number_id, phone_number_id=spec.phone_number_id,
                             waba_id=spec.waba_id, display_number=spec.display_number,
                             token=token, app_secret=app_secret,
                             verify_token=uuid.uuid4().hex, api_base_url=api_base_url,
                             mps=mps)
    broker.close()
    registry.engine.dispose()
    return GatewaySetup(data_dir, app_secret, token, channels)


def create_tenant_api_keys(data_dir: Path, tenants: Sequence[str]) -> dict[str, str]:
    """tenant -> a new API key for it (what `wacloud apikey create --tenant SLUG` does)."""
    from wacloud.adapters.db.registry.api_keys import create_api_key

    registry = open_registry(load_settings(data_dir, dev_allow_local_urls=True))
    try:
        return {tenant: create_api_key(registry, tenant=tenant, label="bench")[1]
                for tenant in dict.fromkeys(tenants)}
    finally:
        registry.engine.dispose()


def start_fake_provider(procs: Processes, token: str) -> tuple[Proc, str]:
    """The project's fake provider in its own process; returns it and its base URL."""
    port = free_port()
    proc = procs.start("fake-provider", [VENV_PY, "-m", "wacloud.testing.fake_provider",
                                         "--host", HOST, "--port", str(port)],
                       port=port, env={"WACLOUD_FAKE_TOKEN": token})
    return proc, f"http://{HOST}:{port}"


def gateway_argv(data_dir: Path, port: int) -> list[str | Path]:
    # The internal listener (/metrics, /internal/credentials) on a port of its own, free.
    return [WACLOUD, "serve", "--host", HOST, "--port", str(port), "--internal-port",
            str(free_port()), "--data-dir", data_dir]


def gateway_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {"WACLOUD_DEV_ALLOW_LOCAL_URLS": "1", "WACLOUD_LOG_LEVEL": "WARNING"}
    env.update(extra or {})
    # The benchmarks insert outbox rows directly into tenant databases (no API wake): every
    # tenant is looked at every poll, as before the idle back-off, so figures stay comparable.
    env.setdefault("WACLOUD_COLLECT_IDLE_MAX_S", env.get("WACLOUD_COLLECT_POLL_S", "1"))
    return env


def sqlite_ro(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def queue_backlog(queue_db: Path) -> tuple[int, int]:
    """(live messages on inbound.raw + inbound.events + inbound.media, dead letters)."""
    if not queue_db.exists():
        return 0, 0
    with contextlib.closing(sqlite_ro(queue_db)) as conn:
        live, dead = conn.execute(
            "SELECT COALESCE(SUM(origin IS NULL), 0), COALESCE(SUM(origin IS NOT NULL), 0)"
            " FROM messages").fetchone()
    return int(live), int(dead)


def parse_db_time(value: str) -> float:
    """A UtcDateTime column as SQLite stores it (naive UTC text) -> epoch seconds."""
    return datetime.fromisoformat(value).replace(tzinfo=UTC).timestamp()


# ------------------------------------------------------------------------ realistic webhooks

CUSTOMER_NAMES = ["Maria Souza", "João Pereira", "Ana Lima", "Carlos Oliveira", "Fernanda Costa",
                  "Lucas Almeida", "Juliana Rocha", "Pedro Santos"]
TEXTS = [
    "Olá! Meu pedido #48213 ainda não chegou. Vocês conseguem verificar o status da entrega? "
    "Comprei na sexta-feira e o prazo era de 3 dias úteis.",
    "Bom dia, gostaria de saber se vocês têm o modelo azul no tamanho M disponível na loja "
    "do shopping, e até que horas fica aberta hoje.",
    "Perfeito, obrigado!",
    "Pode me mandar o boleto atualizado? O anterior venceu ontem e não consegui pagar a tempo. "
    "Meu CPF é o mesmo do cadastro.",
    "Quero remarcar minha consulta de quinta para a próxima semana, de preferência na parte "
    "da manhã. Tem horário?",
    "Sim",
    "Recebi o produto com defeito: a tampa veio quebrada e falta o carregador. Como faço para "
    "trocar? Tenho a nota fiscal e as fotos da embalagem.",
]


def wamid(tag: str) -> str:
    """A Meta-looking message id that embeds `tag` (so benchmarks can map rows back)."""
    return f"wamid.HBgNNTUxMTk4NzY1NDMyMRUCABIYFD{tag}"


def customer(rng: random.Random) -> tuple[str, str, str]:
    number = f"55119{rng.randrange(10**7, 10**8)}"
    return number, f"BR.{rng.randrange(10**15, 10**16)}", rng.choice(CUSTOMER_NAMES)


def meta_message(rng: random.Random, sender: str, user_id: str, message_id: str,
                 kind: str) -> dict[str, Any]:
    base: dict[str, Any] = {"from": sender, "from_user_id": user_id, "id": message_id,
                            "timestamp": str(int(time.time()) - rng.randrange(0, 5))}
    if kind == "text":
        base.update(type="text", text={"body": rng.choice(TEXTS)})
    elif kind == "reply":
        base.update(type="text", text={"body": rng.choice(TEXTS)},
                    context={"from": "5511940001234", "id": wamid(uuid.uuid4().hex[:24])})
    elif kind == "location":
        base.update(type="location", location={
            "latitude": -23.5613 + rng.random() / 100, "longitude": -46.6565 + rng.random() / 100,
            "name": "Av. Paulista, 1578", "address": "Bela Vista, São Paulo - SP, 01310-200"})
    elif kind == "reaction":
        base.update(type="reaction", reaction={"message_id": wamid(uuid.uuid4().hex[:24]),
                                               "emoji": "👍"})
    elif kind == "button":
        base.update(type="interactive", interactive={
            "type": "button_reply", "button_reply": {"id": "confirm_delivery_yes",
                                                     "title": "Sim, confirmar"}},
            context={"from": "5511940001234", "id": wamid(uuid.uuid4().hex[:24])})
    else:
        raise ValueError(kind)
    return base


# A few realistic shapes of 1-3 messages from one customer (Meta batches per sender).
SHAPES: list[list[str]] = [
    ["text"], ["reply"], ["button"], ["text", "text"], ["text", "location"],
    ["reply", "reaction", "text"], ["text", "text", "text"],
]


def contact_entry(sender: str, user_id: str, name: str) -> dict[str, Any]:
    # pywa 4.5 needs `user_id` on the contact, or its handler silently never runs.
    return {"profile": {"name": name}, "wa_id": sender, "user_id": user_id}


def signed(payload: dict[str, Any], app_secret: str) -> tuple[bytes, str]:
    body = dumps(payload)
    return body, sign(body, app_secret)


def realistic_body(rng: random.Random, channel: ChannelSpec, ids: list[str],
                   app_secret: str, kinds: list[str] | None = None) -> tuple[bytes, str]:
    """A signed webhook from one customer carrying one message per id."""
    sender, user_id, name = customer(rng)
    kinds = kinds or rng.choice([s for s in SHAPES if len(s) == len(ids)] or [["text"]])
    messages = [meta_message(rng, sender, user_id, mid, kinds[i % len(kinds)])
                for i, mid in enumerate(ids)]
    payload = meta_envelope(channel.phone_number_id, channel.waba_id, channel.display_number,
                            messages, None, [contact_entry(sender, user_id, name)])
    return signed(payload, app_secret)


# -------------------------------------------------------------------------------- statistics

def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


def fmt(value: float, digits: int = 1) -> str:
    return "nan" if math.isnan(value) else f"{value:.{digits}f}"


def target_line(label: str, value: float, op: str, target: float, unit: str = "") -> str:
    met = {">=": value >= target, "<=": value <= target, "<": value < target}[op]
    verdict = "NOT MEASURED" if math.isnan(value) else "MET" if met else "MISSED"
    return f"  {label:<34} {fmt(value, 2):>10}{unit}   target {op} {target:g}{unit}   {verdict}"


@contextlib.contextmanager
def stage(title: str) -> Iterator[None]:
    print(f"\n== {title}", flush=True)
    started = time.monotonic()
    yield
    print(f"   ({time.monotonic() - started:.1f} s)", flush=True)


def log(message: str) -> None:
    print(f"   {message}", flush=True)


def die(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(1)
