"""LGPD commands: `privacy erase`, `privacy export`, `privacy purge`, `privacy retention` and
`tenant set-retention`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from wacloud.adapters.db.registry.store import RegistryError
from wacloud.adapters.db.tenant.privacy import set_retention
from wacloud.adapters.queue.base import QueueSpec
from wacloud.bootstrap import (
    open_credentials,
    open_media,
    open_queues,
    open_registry,
    queue_specs,
)
from wacloud.cli.common import (
    DataDir,
    JsonOut,
    app,
    emit,
    emit_rows,
    fail,
    progress,
    settings_for,
    tenant_app,
)
from wacloud.privacy.lgpd import (
    PrivacyContext,
    PrivacyError,
    erase_contact,
    export_contact,
    run_retention,
)
from wacloud.settings import Settings

privacy_app = typer.Typer(help="LGPD: erase or export a contact's data; retention periods.",
                          no_args_is_help=True)
app.add_typer(privacy_app, name="privacy")

Tenant = Annotated[str, typer.Option("--tenant", help="Tenant slug.")]
ContactOpt = Annotated[str, typer.Option(
    "--contact", help="Phone number (any format) or Meta business-scoped user id.")]
T = TypeVar("T")


@contextlib.asynccontextmanager
async def _context(settings: Settings) -> AsyncIterator[PrivacyContext]:
    """The same stores a running gateway uses: registry, tenant DBs, queue file, media store."""
    registry = open_registry(settings)
    broker = open_credentials(settings, registry)
    media = open_media(settings)
    queues = open_queues(settings, media)
    try:
        yield PrivacyContext(
            broker, registry,
            {name: queues.queue(spec) for name, spec in queue_specs(settings).items()},
            media, lambda name: queues.queue(QueueSpec(name)))
    finally:
        await media.close()
        await queues.close()
        broker.close()
        registry.engine.dispose()


def _run(data_dir: Path | None, action: Callable[[PrivacyContext], Awaitable[T]]) -> T:
    settings = settings_for(data_dir)

    async def run() -> T:
        async with _context(settings) as ctx:
            return await action(ctx)

    try:
        return asyncio.run(run())
    except PrivacyError as exc:
        fail(str(exc))
        raise  # unreachable: fail() exits


@privacy_app.command("erase")
def erase(tenant: Tenant, contact: ContactOpt,
          anonymize: Annotated[bool, typer.Option(
              "--anonymize", help="Keep the rows for statistics, blank everything personal.")
          ] = False,
          dry_run: Annotated[bool, typer.Option(
              "--dry-run", help="Only count what would be removed.")] = False,
          data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """Delete (or anonymize) all data of a contact in a tenant, queued and parked included."""
    with progress(f"{'counting' if dry_run else 'erasing'} the contact's data in every "
                  "store", None, as_json):
        report = _run(data_dir, lambda ctx: erase_contact(ctx, tenant, contact,
                                                          anonymize=anonymize, dry_run=dry_run))
    if as_json:
        emit(report.to_dict(), True, "")
    else:
        verb = "would be " if dry_run else ""
        action = "anonymized" if anonymize else "removed"
        typer.echo(f"tenant {tenant}: {verb}{action}:")
        for kind, count in report.removed().items():
            typer.echo(f"  {kind:<26} {count}")
        if report.queues_not_scanned:
            typer.echo(f"  queues not scanned: {', '.join(report.queues_not_scanned)}")
    if report.in_flight and not dry_run:
        typer.echo(f"warning: {report.in_flight} queued message(s) of this contact were being "
                   "processed; run the command again in a minute to remove what they store",
                   err=True)


@privacy_app.command("export")
def export(tenant: Tenant, contact: ContactOpt,
           output: Annotated[Path | None, typer.Option(
               "--output", "-o", help="Write to this file (mode 0600) instead of stdout.")
           ] = None,
           data_dir: DataDir = None,
           as_json: Annotated[bool, typer.Option(
               "--json", help="The document on one line; with --output, "
               "{\"exported\": FILE} on stdout.")] = False) -> None:
    """Everything stored about a contact in a tenant, as one JSON document (right of access)."""
    data = _run(data_dir, lambda ctx: export_contact(ctx, tenant, contact))
    text = json.dumps(data, ensure_ascii=False, indent=None if as_json else 2, default=str)
    if output is None:
        typer.echo(text)
        return
    # Personal data: readable by the operator only, from the moment the file exists.
    try:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        fail(f"cannot write {output}: {exc.strerror}")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text + "\n")
    if as_json:
        emit({"exported": str(output)}, True, "")
    else:
        typer.echo(f"exported to {output}", err=True)


@privacy_app.command("purge")
def purge(tenant: Annotated[str | None, typer.Option(
              "--tenant", help="Only this tenant (default: every tenant with retention).")
          ] = None,
          data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """Apply the retention periods now (a running gateway does it on its own)."""
    results = _run(data_dir, lambda ctx: run_retention(ctx.registry, ctx.broker,
                                                       ctx.media_store, only=tenant))
    if as_json:
        emit(results, True, "")
        return
    if not results:
        typer.echo("no tenant has a retention period" if tenant is None
                   else f"tenant {tenant} has no retention period")
        return
    emit_rows([{"tenant": slug, **counts} for slug, counts in results.items()], False,
              ["tenant", "purged"],
              [f"{slug}: " + ", ".join(f"{k} {v}" for k, v in counts.items())
               for slug, counts in results.items()],
              cells=[[slug, ", ".join(f"{k} {v}" for k, v in counts.items())]
                     for slug, counts in results.items()])


@privacy_app.command("retention")
def retention(data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """Each tenant's retention period."""
    registry = open_registry(settings_for(data_dir))
    found = registry.tenants()
    registry.engine.dispose()
    emit_rows([{"slug": t.slug, "retention_days": t.retention_days} for t in found], as_json,
              ["tenant", "retention"],
              [f"{t.slug}\t{f'{t.retention_days} days' if t.retention_days else 'kept forever'}"
               for t in found])


@tenant_app.command("set-retention")
def tenant_set_retention(
        slug: str,
        days: Annotated[int | None, typer.Option(
            "--days", min=0, help="Purge messages and media older than this (0: never).")
        ] = None,
        none: Annotated[bool, typer.Option("--none", help="Keep everything forever.")] = False,
        data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """Set how long a tenant's messages, receipts, notices and media are kept."""
    if (days is None) == (not none):
        fail("give --days N or --none")
    registry = open_registry(settings_for(data_dir))
    try:
        tenant = set_retention(registry, slug, None if none else days)
    except RegistryError as exc:
        fail(str(exc))
    finally:
        registry.engine.dispose()
    result: dict[str, Any] = {"slug": slug, "retention_days": tenant.retention_days}
    emit(result, as_json, f"tenant {slug}: " + (
        f"data older than {tenant.retention_days} days is purged"
        if tenant.retention_days else "data is kept forever"))
