"""Commands for serving and for inbound messages: serve, messages, notices, parked, media,
demo."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from wacloud.adapters.db.registry.store import RegistryError
from wacloud.adapters.db.tenant.views import list_messages, list_notices
from wacloud.admin.operations import (
    refetch_media,
    replay_parked,
)
from wacloud.bootstrap import open_credentials, open_registry, opened_queues, queue_specs
from wacloud.cli.common import (
    DataDir,
    JsonOut,
    app,
    emit,
    emit_rows,
    fail,
    media_app,
    parked_app,
    progress,
    settings_for,
)
from wacloud.cli.queue_cmds import require_queues
from wacloud.hosting.loop import event_loop_factory
from wacloud.observability.logs import configure_logging
from wacloud.stages import envelopes


@app.command()
def serve(host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
          port: Annotated[int, typer.Option("--port")] = 8080,
          internal_host: Annotated[str | None, typer.Option(
              "--internal-host", help="listen address of /metrics and /internal/credentials "
              "(default WACLOUD_INTERNAL_HOST or 127.0.0.1)")] = None,
          internal_port: Annotated[int | None, typer.Option(
              "--internal-port", help="port of /metrics and /internal/credentials "
              "(default WACLOUD_INTERNAL_PORT or 8081)")] = None,
          no_workers: Annotated[bool, typer.Option(
              "--no-workers", help="only the HTTP front (webhooks, API, dashboard): the stages "
              "and the collector run in `wacloud worker` processes")] = False,
          data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """Run the HTTP server and every stage (embedded mode), or only the HTTP front."""
    from wacloud.hosting.embedded import serve as run
    from wacloud.hosting.process import limit_malloc_arenas, pin_to_cpus, resolve_auto_cpus

    limit_malloc_arenas()
    settings = settings_for(data_dir, must_exist=False)
    configure_logging(settings)
    try:
        server_cpus, worker_cpus = resolve_auto_cpus(settings.server_cpus, settings.worker_cpus)
        pin_to_cpus(server_cpus)
    except (ValueError, OSError) as exc:
        fail(f"WACLOUD_SERVER_CPUS / WACLOUD_WORKER_CPUS: {exc}")
    # The workers get the lists as resolved here (they start pinned like their parent).
    update: dict[str, object] = {"server_cpus": server_cpus, "worker_cpus": worker_cpus}
    if internal_host is not None:
        update["internal_host"] = internal_host
    if internal_port is not None:
        update["internal_port"] = internal_port
    settings = settings.model_copy(update=update)
    if (settings.internal_host, settings.internal_port) == (host, port):
        fail("the internal listener needs its own port (--internal-port)")
    # Both ports first: a busy one stops here, before a worker or the collector starts.
    from wacloud.hosting.listen import ListenError, bind_listener

    bound = []
    try:
        bound.append(bind_listener(host, port, "webhooks and API", "--port"))
        bound.append(bind_listener(settings.internal_host, settings.internal_port,
                                   "metrics and credentials", "--internal-port"))
    except ListenError as exc:
        for sock in bound:
            sock.close()
        fail(str(exc))
    # Then the queues, before anything takes work: a missing one is named with the fix.
    try:
        require_queues(settings)
    except typer.Exit:
        for sock in bound:
            sock.close()
        raise
    internal_url = f"http://{settings.internal_host}:{settings.internal_port}"
    emit({"serving": f"http://{host}:{port}", "internal": internal_url,
          "data_dir": str(settings.data_dir)}, as_json,
         f"wacloud serving on http://{host}:{port} (data dir {settings.data_dir}); "
         f"metrics and credentials on {internal_url}")
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(run(settings, host, port, sockets=(bound[0], bound[1]),
                       workers=not no_workers))


@app.command()
def worker(data_dir: DataDir = None,
           collect: Annotated[bool, typer.Option(
               "--collect/--no-collect", help="also collect pending outbox rows")] = True,
           stages: Annotated[str | None, typer.Option(
               "--stages", help="comma-separated stage names (default: all)")] = None,
           metrics_port: Annotated[int | None, typer.Option(
               "--metrics-port", help="serve this worker's /metrics on 127.0.0.1:PORT")] = None,
           parent_pid: Annotated[int | None, typer.Option("--parent-pid", hidden=True)] = None,
           send_share: Annotated[str | None, typer.Option(
               "--send-share", help="INDEX/COUNT: send only for the sending numbers of this "
               "share (`serve` gives its worker 1/2; the embedded queue only)")] = None,
           as_json: Annotated[bool, typer.Option(
               "--json", help="Print one JSON line when started (pid, stages, collect).")
           ] = False) -> None:
    """Run the stages without the HTTP server (`serve` starts these itself)."""
    from wacloud.hosting.process import limit_malloc_arenas, pin_to_cpus
    from wacloud.hosting.worker import (
        STAGES,
        die_with_parent,
        known_stage,
        run_worker,
        stage_names,
    )

    limit_malloc_arenas()
    if parent_pid is not None:
        die_with_parent(parent_pid)
    given = [n.strip() for n in stages.split(",") if n.strip()] if stages else None
    unknown = sorted(n for n in given or () if not known_stage(n))
    if unknown:
        fail(f"unknown stage(s) {unknown}; known: {sorted(STAGES)} (receive and write: "
             "inbound)")
    names = stage_names(given) if given is not None else None
    share = None
    if send_share is not None:
        from wacloud.adapters.queue.base import LaneShare
        try:
            share = LaneShare.parse(send_share)
        except ValueError as exc:
            fail(f"--send-share: {exc}")
    settings = settings_for(data_dir, must_exist=False)
    configure_logging(settings)
    try:
        pin_to_cpus(settings.worker_cpus, unpin_if_empty=bool(settings.server_cpus))
    except (ValueError, OSError) as exc:
        fail(f"WACLOUD_WORKER_CPUS: {exc}")
    require_queues(settings)
    if settings.worker_nice:
        os.nice(settings.worker_nice)
    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr="127.0.0.1")
    if as_json:
        emit({"worker": os.getpid(), "stages": list(names or STAGES), "collect": collect,
              "data_dir": str(settings.data_dir),
              "send_share": str(share) if share is not None else None}, True, "")
        sys.stdout.flush()
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(run_worker(settings, collect=collect, stages=names, send_share=share))


def _media_suffix(row: dict[str, Any]) -> str:
    # The line format scripts already read: ` [status key]`, the key possibly empty.
    return f" [{row['media']['status']} {row['media']['key'] or ''}]" if row["media"] else ""


@app.command()
def messages(tenant: Annotated[str, typer.Option("--tenant")],
             direction: Annotated[str | None, typer.Option(
                 "--direction", help="in or out")] = None,
             limit: Annotated[int, typer.Option("--limit")] = 1000,
             data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """Messages stored for a tenant (a table on a terminal; --json: one object per line)."""
    if direction not in (None, "in", "out"):
        fail("--direction must be 'in' or 'out'")
    settings = settings_for(data_dir)
    broker = open_credentials(settings)
    try:
        if not broker.has_tenant(tenant):
            fail(f"unknown tenant {tenant!r}")
        rows = list_messages(broker.tenant_store(tenant).engine, direction, limit)
    finally:
        broker.close()

    def media(row: dict[str, Any]) -> str:
        return f"{row['media']['status']} {row['media']['key'] or ''}".strip() if row[
            "media"] else ""

    emit_rows(rows, as_json, ["id", "dir", "type", "from", "to", "text", "media", "status"],
              [f"{row['direction']:>3} {row['type']:<12} {row['from']} -> {row['to']}: "
               f"{row['text'] or ''}{_media_suffix(row)} "
               f"({row['status']})" for row in rows],
              cells=[[row["id"], row["direction"], row["type"], row["from"], row["to"],
                      row["text"] or "", media(row), row["status"]] for row in rows])


@app.command()
def notices(tenant: Annotated[str, typer.Option("--tenant")],
            limit: Annotated[int, typer.Option("--limit", min=1)] = 100,
            data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """What providers reported besides messages and receipts (webhook-level errors, account
    and template updates): the latest ones, oldest first."""
    settings = settings_for(data_dir)
    broker = open_credentials(settings)
    try:
        if not broker.has_tenant(tenant):
            fail(f"unknown tenant {tenant!r}")
        rows = list_notices(broker.tenant_store(tenant).engine, limit)
    finally:
        broker.close()

    def errors(row: dict[str, Any]) -> str:
        return "; ".join(f"{e.get('code')} {e.get('reason')}" for e in row["errors"])

    emit_rows(rows, as_json, ["received at", "provider", "channel", "field", "errors"],
              [f"{row['received_at']} {row['provider']} {row['channel']} "
               f"{row['field']}: {errors(row) or '(no errors)'}" for row in rows],
              cells=[[row["received_at"], row["provider"], row["channel"], row["field"],
                      errors(row) or "(no errors)"] for row in rows])


@parked_app.callback(invoke_without_command=True)
def parked(ctx: typer.Context, data_dir: DataDir = None, as_json: JsonOut = False,
           all_items: Annotated[bool, typer.Option("--include-replayed")] = False) -> None:
    """List parked payloads (unknown tenant, unparseable body)."""
    if ctx.invoked_subcommand is not None:
        return
    registry = open_registry(settings_for(data_dir))
    items = registry.parked_items(include_replayed=all_items)
    emit_rows([item.summary() for item in items], as_json, ["id", "parked at", "stage", "reason"],
              [f"{i.id}\t{i.created_at:%Y-%m-%d %H:%M:%S}\t{i.stage}\t{i.reason}" for i in items])


@parked_app.command("replay")
def parked_replay(item_id: Annotated[int | None, typer.Argument()] = None,
                  all_items: Annotated[bool, typer.Option("--all")] = False,
                  data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """Send parked payloads back through the pipeline."""
    if (item_id is None) == (not all_items):
        fail("give a parked item ID or --all")
    settings = settings_for(data_dir)
    registry = open_registry(settings)
    try:
        items = registry.parked_items() if all_items else [registry.parked_item(item_id or 0)]
    except RegistryError as exc:
        fail(str(exc))

    async def run(advance: Callable[[int], None]) -> list[int]:
        async with opened_queues(settings) as broker:
            raw = broker.queue(queue_specs(settings)[envelopes.INBOUND_RAW])
            return await replay_parked(registry, raw, items, advance)

    with progress("replaying parked items", len(items), as_json) as advance:
        replayed = asyncio.run(run(advance))
    emit({"replayed": replayed}, as_json, f"replayed {len(replayed)} item(s): {replayed}")


@media_app.command("refetch")
def media_refetch(tenant: Annotated[str, typer.Option("--tenant")],
                  include_pending: Annotated[bool, typer.Option("--include-pending")] = False,
                  data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """Queue another copy attempt for a tenant's media that failed (or is still pending)."""
    settings = settings_for(data_dir)
    broker = open_credentials(settings)
    if not broker.has_tenant(tenant):
        fail(f"unknown tenant {tenant!r}")
    statuses = ["failed", "pending"] if include_pending else ["failed"]

    async def run() -> int:
        async with opened_queues(settings) as queues:
            media = queues.queue(queue_specs(settings)[envelopes.INBOUND_MEDIA])
            return await refetch_media(broker, tenant, media, statuses)

    with progress(f"queueing media downloads of {tenant}", None, as_json):
        count = asyncio.run(run())
    emit({"queued": count}, as_json, f"queued {count} media download(s)")


@app.command()
def demo(data_dir: Annotated[Path, typer.Option("--data-dir")] = Path(".wacloud-demo"),
         port: Annotated[int, typer.Option("--port")] = 8080,
         internal_port: Annotated[int, typer.Option(
             "--internal-port", help="port of /metrics on 127.0.0.1")] = 8081,
         keep_serving: Annotated[bool, typer.Option("--keep-serving/--exit")] = True,
         as_json: Annotated[bool, typer.Option(
             "--json", help="No narration: one JSON object with what was stored and sent, "
             "the ids and each step's seconds.")] = False) -> None:
    """Run the embedded gateway with the fake provider and show a message going in and out."""
    from wacloud.hosting.demo import run_demo

    sys.exit(run_demo(data_dir, port, keep_serving, internal_port, as_json))
