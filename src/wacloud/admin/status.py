"""What an operator asks first, gathered in one place: `wacloud status` (channels, queues,
outboxes, parked items, problems) and `wacloud doctor` (settings, keys, databases, queue,
tokens, webhook URL: each problem with its fix).

Read-only: nothing here migrates, creates or changes anything (a tenant database that does not
exist yet counts as empty; a down one is a problem, reported in one line). Every URL shown has
its password masked; no token or secret is ever part of the result.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import stat
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import sqlalchemy as sa

from wacloud.adapters.db.reachability import SERVER_FIX, ping, probe_engine, short_reason
from wacloud.adapters.db.registry.store import Registry, Tenant
from wacloud.adapters.db.tenant.tables import outbound_messages
from wacloud.adapters.http.provider_client import ProviderClient
from wacloud.admin.queries import channel_rates, empty_rates
from wacloud.bootstrap import open_registry, opened_queues, queue_specs
from wacloud.credentials.channel_check import check_token
from wacloud.domain.model import Channel
from wacloud.domain.validation import masked_db_url
from wacloud.security.crypto import parse_env_keys, read_key_file
from wacloud.settings import Settings

PENDING, RESERVED, QUEUED = 0, 1, 2
FAILED = (-100, -101)  # failed, failed after the provider accepted it


@dataclass(slots=True)
class Problem:
    kind: str
    message: str
    fix: str

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "message": self.message, "fix": self.fix}


@dataclass(slots=True)
class StatusReport:
    channels: list[dict[str, Any]] = field(default_factory=list)
    queues: list[dict[str, Any]] = field(default_factory=list)
    outbox: list[dict[str, Any]] = field(default_factory=list)
    parked: int | None = None
    serve: dict[str, Any] | None = None
    problems: list[Problem] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"channels": self.channels, "queues": self.queues, "outbox": self.outbox,
                "parked": self.parked, "serve": self.serve,
                "problems": [p.to_json() for p in self.problems]}


def tenant_db_url(settings: Settings, tenant: Tenant) -> str:
    return tenant.db_url or f"sqlite:///{(settings.tenants_dir / f'{tenant.slug}.db').resolve()}"


def tenant_figures(settings: Settings, tenant: Tenant
                   ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The tenant's outbox (pending / reserved / queued rows, the oldest pending row's age,
    the last hour's totals) and its channels' rates (`admin.queries.channel_rates`, by
    channel key), without creating or migrating anything; raises when the database cannot be
    reached."""
    empty = {"tenant": tenant.slug, "reachable": True, "pending": 0, "reserved": 0,
             "queued": 0, "oldest_pending_age_s": None, "received_last_hour": 0,
             "sent_last_hour": 0, "failed_last_hour": 0}
    if tenant.db_url is None and not (settings.tenants_dir / f"{tenant.slug}.db").exists():
        return empty, {}
    engine = probe_engine(tenant_db_url(settings, tenant))
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("outbound_messages"):
                return empty, {}
            table = outbound_messages
            rows = conn.execute(
                sa.select(table.c.status, sa.func.count()).where(
                    table.c.status.in_((PENDING, RESERVED, QUEUED))).group_by(table.c.status)
            ).all()
            oldest = conn.execute(sa.select(sa.func.min(table.c.created_at)).where(
                table.c.status == PENDING)).scalar()
            rates = channel_rates(conn)
    finally:
        engine.dispose()
    counts = {int(status): int(n) for status, n in rows}
    if isinstance(oldest, str):  # SQLite without the column type's conversion
        oldest = datetime.fromisoformat(oldest)
    if isinstance(oldest, datetime) and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=UTC)
    age = (datetime.now(UTC) - oldest).total_seconds() if isinstance(oldest, datetime) else None
    last_hour = {name: sum(r[field] for r in rates.values()) for name, field in (
        ("received_last_hour", "in_last_hour"), ("sent_last_hour", "out_last_hour"),
        ("failed_last_hour", "failed_last_hour"))}
    return {**empty, **last_hour, "pending": counts.get(PENDING, 0),
            "reserved": counts.get(RESERVED, 0),
            "queued": counts.get(QUEUED, 0),
            "oldest_pending_age_s": round(age, 1) if age is not None else None}, rates


async def queue_depths(settings: Settings) -> list[dict[str, Any]]:
    async with opened_queues(settings) as broker:
        out = []
        for name, spec in queue_specs(settings).items():
            if name.endswith(".dlq"):
                continue
            depth = await broker.queue(spec).depth()
            out.append({"name": name, "depth": depth["visible"], "in_flight": depth["in_flight"],
                        "delayed": depth["delayed"], "dead_letters": depth["dead"]})
        return out


def readyz(settings: Settings, timeout: float = 2.0) -> dict[str, Any] | None:
    """A running `serve`'s /readyz on the internal listener, or None when none answers."""
    host = settings.internal_host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    url = f"http://{f'[{host}]' if ':' in host else host}:{settings.internal_port}/readyz"
    try:
        response = httpx.get(url, timeout=timeout)
        data = response.json()
    except (httpx.HTTPError, ValueError):
        return None
    return {"url": url, **data} if isinstance(data, dict) else None


def channel_row(channel: Channel, rates: dict[str, Any] | None) -> dict[str, Any]:
    """A channel with its rates (`admin.queries.channel_rates`; empty: no traffic); `rates`
    None: its tenant database could not be read (every figure null, `reachable` false)."""
    figures = ({**empty_rates(), **rates} if rates is not None
               else dict.fromkeys(empty_rates()))
    return {"id": channel.id, "tenant": channel.tenant, "provider": channel.provider.value,
            "key": channel.key, "paused": channel.paused, "pause_reason": channel.pause_reason,
            "reachable": rates is not None, **figures}


def paused_problem(channel: Channel) -> Problem:
    return Problem("channel_paused",
                   f"channel {channel.id} ({channel.provider.value} {channel.key}, tenant "
                   f"{channel.tenant}) is paused: {channel.pause_reason or 'no reason given'}",
                   f"fix the cause, then `wacloud channel resume {channel.id}` (a refused "
                   f"token: `wacloud channel set-token {channel.id} --token -`)")


def tenant_db_problem(settings: Settings, tenant: Tenant, reason: str) -> Problem:
    return Problem("tenant_db_unreachable",
                   f"tenant {tenant.slug}: cannot reach its database at "
                   f"{masked_db_url(tenant_db_url(settings, tenant))}: {reason}",
                   SERVER_FIX + "; its messages wait (webhooks stay queued, the outbox is "
                   "collected when it is back)")


def registry_problem(settings: Settings, reason: str) -> Problem:
    return Problem("registry_unreachable",
                   f"cannot reach the registry database at {masked_db_url(settings.registry)}: "
                   f"{reason}", SERVER_FIX + " (WACLOUD_REGISTRY_URL)")


def gather_status(settings: Settings) -> StatusReport:
    report = StatusReport()
    reason = ping(settings.registry)
    if reason is not None:
        report.problems.append(registry_problem(settings, reason))
        return report
    registry = open_registry(settings)
    try:
        channels = registry.channels()
        tenants = registry.tenants()
        report.parked = len(registry.parked_items(limit=100_000))
    finally:
        registry.engine.dispose()
    rates: dict[str, dict[str, dict[str, Any]] | None] = {}
    for tenant in tenants:
        try:
            outbox, rates[tenant.slug] = tenant_figures(settings, tenant)
            report.outbox.append(outbox)
        except Exception as exc:  # a down database is the answer, shown as a problem
            rates[tenant.slug] = None
            report.outbox.append({"tenant": tenant.slug, "reachable": False,
                                  "error": short_reason(exc)})
            report.problems.append(tenant_db_problem(settings, tenant, short_reason(exc)))
    for channel in channels:
        mine = rates.get(channel.tenant, {})
        report.channels.append(channel_row(channel, None if mine is None
                                           else mine.get(channel.key, {})))
        if channel.paused:
            report.problems.append(paused_problem(channel))
    report.queues = asyncio.run(queue_depths(settings))
    for queue in report.queues:
        if queue["dead_letters"]:
            report.problems.append(Problem(
                "dead_letters", f"queue {queue['name']} has {queue['dead_letters']} dead "
                "letter(s)", f"see them with `wacloud dlq list --queue {queue['name']}`, then "
                "`wacloud dlq replay` or `wacloud dlq discard --reason ...`"))
    report.serve = readyz(settings)
    for worker in (report.serve or {}).get("workers", []):
        if isinstance(worker, dict) and not worker.get("alive"):
            report.problems.append(Problem(
                "stage_worker_down", f"the stage worker for {worker.get('stages')} is not "
                f"running (restarted {worker.get('restarts', 0)} time(s))",
                "see the serve log for why it exits; `serve` restarts it with a backoff"))
    return report


# -- doctor ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "fix": self.fix}


def settings_checks(settings: Settings) -> list[Check]:
    checks: list[Check] = []
    data_dir = settings.data_dir.resolve()
    if not data_dir.is_dir():
        checks.append(Check("data dir", False, f"{data_dir} does not exist",
                            "run `wacloud init` (or set WACLOUD_DATA_DIR / --data-dir)"))
        return checks
    writable = os.access(data_dir, os.W_OK)
    checks.append(Check("data dir", writable, f"{data_dir}" + ("" if writable else
                        " is not writable"), None if writable else
                        f"give the gateway's user write access to {data_dir}"))
    checks.append(Check("registry URL", True, masked_db_url(settings.registry)))
    env_keys = parse_env_keys(settings.encryption_key)
    file_keys = read_key_file(settings.key_file)
    if not env_keys and not file_keys:
        checks.append(Check("encryption key", False, "no key in WACLOUD_ENCRYPTION_KEY and no "
                            f"key file at {settings.key_file}",
                            "run `wacloud init` (creates the key file) or set "
                            "WACLOUD_ENCRYPTION_KEY"))
    else:
        checks.append(Check("encryption key", True, f"{len(env_keys or file_keys)} key(s) from "
                            + ("WACLOUD_ENCRYPTION_KEY" if env_keys else "the key file")))
    if settings.key_file.is_file():
        mode = stat.S_IMODE(settings.key_file.stat().st_mode)
        private = mode & 0o077 == 0
        checks.append(Check("key file mode", private, f"{settings.key_file} mode {mode:04o}",
                            None if private else f"chmod 600 {settings.key_file}"))
    return checks


def key_checks(settings: Settings) -> list[Check]:
    from wacloud.credentials.key_rotation import status

    try:
        data = status(settings)
    except Exception as exc:  # a key file that cannot be read is what we report
        return [Check("stored secrets", False, f"cannot check: {short_reason(exc)}",
                      "fix the encryption key (`wacloud keys status`)")]
    bad = int(data.get("undecryptable", 0))
    return [Check("stored secrets", bad == 0,
                  f"{data.get('under_newest', 0)} under the newest key, "
                  f"{data.get('under_older', 0)} under an older one, {bad} undecryptable",
                  None if bad == 0 else "a key is missing: add the old key back to the key "
                  "file or WACLOUD_ENCRYPTION_KEY (newest first), then `wacloud keys "
                  "reencrypt`")]


def database_checks(settings: Settings, registry: Registry | None) -> list[Check]:
    checks: list[Check] = []
    reason = ping(settings.registry)
    checks.append(Check("registry database", reason is None,
                        masked_db_url(settings.registry) + (f": {reason}" if reason else ""),
                        None if reason is None else registry_problem(settings, reason).fix))
    if reason is not None or registry is None:
        return checks
    for tenant in registry.tenants():
        url = tenant_db_url(settings, tenant)
        if tenant.db_url is None and not (settings.tenants_dir / f"{tenant.slug}.db").exists():
            checks.append(Check(f"tenant {tenant.slug} database", True,
                                f"{masked_db_url(url)} not created yet (created on first "
                                "use)"))
            continue
        tenant_reason = ping(url)
        checks.append(Check(f"tenant {tenant.slug} database", tenant_reason is None,
                            masked_db_url(url) + (f": {tenant_reason}" if tenant_reason else ""),
                            None if tenant_reason is None else
                            tenant_db_problem(settings, tenant, tenant_reason).fix))
    return checks


def queue_check(settings: Settings) -> Check:
    try:
        asyncio.run(queue_depths(settings))
    except Exception as exc:  # the failure is the finding
        return Check("queue", False, f"{settings.queue_path}: {short_reason(exc)}",
                     f"check that {settings.queue_path.parent} is writable and the disk is "
                     "not full")
    return Check("queue", True, str(settings.queue_path))


async def token_checks(channels: list[Channel], timeout: float = 10.0) -> list[Check]:
    async with ProviderClient(connections_per_host=4) as client:
        results = await asyncio.gather(*(check_token(c, client, timeout) for c in channels))
    return [Check(f"token of channel {c.id} ({c.provider.value} {c.key}, tenant {c.tenant})",
                  r.ok, r.detail, r.fix) for c, r in zip(channels, results, strict=True)]


def webhook_check(public_url: str, timeout: float = 10.0) -> Check:
    """GET the Meta verify handshake with a wrong token: a gateway answers 403."""
    base = public_url.rstrip("/")
    params = {"hub.mode": "subscribe", "hub.verify_token": f"doctor-{secrets.token_hex(8)}",
              "hub.challenge": "doctor"}
    name = f"webhook URL {base}/webhooks/meta"
    try:
        response = httpx.get(f"{base}/webhooks/meta", params=params, timeout=timeout)
    except httpx.HTTPError as exc:
        return Check(name, False, f"no answer ({type(exc).__name__})",
                     "check DNS, the TLS proxy in front of the gateway and that `serve` runs; "
                     "Meta, Whapi and Chakra must reach this URL")
    if response.status_code == 403:
        return Check(name, True, "reachable (a wrong verify token is refused with 403)")
    return Check(name, False, f"answered HTTP {response.status_code}, expected 403",
                 "make the proxy forward /webhooks/ to the gateway's public port unchanged")
