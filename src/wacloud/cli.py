"""The `wacloud` command line: thin, it parses arguments and calls bootstrap and operations."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from wacloud.adapters.db.registry import RegistryError
from wacloud.adapters.db.views import list_messages
from wacloud.adapters.queue.sqlite import SqliteBroker
from wacloud.bootstrap import init_data_dir, open_registry, queue_specs
from wacloud.credentials import CredentialsBroker
from wacloud.logging_setup import configure_logging
from wacloud.model import Channel, Provider
from wacloud.operations import refetch_media, replay_parked
from wacloud.settings import Settings, load_settings
from wacloud.stages import envelopes

app = typer.Typer(help="wacloud: multi-tenant WhatsApp messaging gateway.", no_args_is_help=True)
tenant_app = typer.Typer(help="Tenants (client businesses), each with its own database.",
                         no_args_is_help=True)
channel_app = typer.Typer(help="Channels: WhatsApp numbers at Meta, Whapi or Chakra.",
                          no_args_is_help=True)
channel_add = typer.Typer(help="Add a channel.", no_args_is_help=True)
parked_app = typer.Typer(help="Payloads that could not be routed or parsed.")
media_app = typer.Typer(help="Media files of inbound messages.", no_args_is_help=True)
app.add_typer(tenant_app, name="tenant")
app.add_typer(channel_app, name="channel")
channel_app.add_typer(channel_add, name="add")
app.add_typer(parked_app, name="parked")
app.add_typer(media_app, name="media")

DataDir = Annotated[Path | None, typer.Option("--data-dir", envvar="WACLOUD_DATA_DIR",
                                              help="Data directory (default ./.wacloud).")]
JsonOut = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
ApiBase = Annotated[str | None, typer.Option("--api-base-url",
                                             help="Replace the provider's API base URL.")]
Mps = Annotated[int, typer.Option("--mps", help="Messages per second allowed on this number.")]


def settings_for(data_dir: Path | None) -> Settings:
    return load_settings(data_dir)


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def emit(data: Any, as_json: bool, text: str) -> None:
    typer.echo(json.dumps(data, ensure_ascii=False, default=str) if as_json else text)


def channel_summary(channel: Channel) -> dict[str, Any]:
    """A channel without its secrets."""
    return {"id": channel.id, "tenant": channel.tenant, "provider": channel.provider.value,
            "key": channel.key, "phone_number_id": channel.phone_number_id,
            "waba_id": channel.waba_id, "display_number": channel.display_number,
            "api_base_url": channel.base_url, "graph_version": channel.graph_version,
            "mps": channel.mps, "paused": channel.paused, "pause_reason": channel.pause_reason}


@app.command()
def init(data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """Create the data dir, the registry DB and an encryption key if none exists."""
    settings = settings_for(data_dir)
    created = init_data_dir(settings)
    emit({"data_dir": str(settings.data_dir.resolve()), "key_created": created}, as_json,
         f"initialized {settings.data_dir.resolve()}"
         + (" (new encryption key)" if created else ""))


@tenant_app.command("add")
def tenant_add(slug: str, db_url: Annotated[str | None, typer.Option(
        "--db-url", help="SQLAlchemy URL of the tenant's DB (default: SQLite file).")] = None,
        data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """Add a tenant."""
    settings = settings_for(data_dir)
    init_data_dir(settings)
    registry = open_registry(settings)
    try:
        tenant = registry.add_tenant(slug, db_url)
    except RegistryError as exc:
        fail(str(exc))
    broker = CredentialsBroker(registry, tenants_dir=settings.tenants_dir)
    broker.tenant_store(slug)  # creates the tenant's schema now, so problems show at once
    broker.close()
    emit({"id": tenant.id, "slug": slug}, as_json, f"tenant {slug} added")


@tenant_app.command("list")
def tenant_list(data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """List tenants."""
    registry = open_registry(settings_for(data_dir))
    for tenant in registry.tenants():
        emit({"id": tenant.id, "slug": tenant.slug, "own_db": tenant.db_url is not None},
             as_json, tenant.slug)


def _add_channel(data_dir: Path | None, as_json: bool, **values: Any) -> None:
    settings = settings_for(data_dir)
    registry = open_registry(settings)
    try:
        channel = registry.add_channel(**values)
    except RegistryError as exc:
        fail(str(exc))
    emit(channel_summary(channel), as_json,
         f"{channel.provider.value} channel {channel.key} added to tenant {channel.tenant}")


@channel_add.command("meta")
def channel_add_meta(
        tenant: Annotated[str, typer.Option("--tenant")],
        phone_number_id: Annotated[str, typer.Option("--phone-number-id")],
        waba_id: Annotated[str, typer.Option("--waba-id")],
        display_number: Annotated[str, typer.Option("--display-number")],
        token: Annotated[str, typer.Option("--token")],
        app_secret: Annotated[str, typer.Option("--app-secret")],
        verify_token: Annotated[str, typer.Option("--verify-token")],
        api_base_url: ApiBase = None,
        graph_version: Annotated[str, typer.Option("--graph-version")] = "v23.0",
        mps: Mps = 80, data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """Add a Meta WhatsApp Cloud API number."""
    _add_channel(data_dir, as_json, tenant=tenant, provider=Provider.META, key=phone_number_id,
                 phone_number_id=phone_number_id, waba_id=waba_id,
                 display_number=display_number, token=token, app_secret=app_secret,
                 verify_token=verify_token, api_base_url=api_base_url,
                 graph_version=graph_version, mps=mps)


@channel_add.command("whapi")
def channel_add_whapi(
        tenant: Annotated[str, typer.Option("--tenant")],
        channel_id: Annotated[str, typer.Option("--channel-id")],
        token: Annotated[str, typer.Option("--token")],
        webhook_secret: Annotated[str, typer.Option("--webhook-secret")],
        api_base_url: ApiBase = None, mps: Mps = 80,
        data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """Add a Whapi.Cloud channel."""
    _add_channel(data_dir, as_json, tenant=tenant, provider=Provider.WHAPI, key=channel_id,
                 token=token, webhook_secret=webhook_secret, api_base_url=api_base_url, mps=mps)


@channel_add.command("chakra")
def channel_add_chakra(
        tenant: Annotated[str, typer.Option("--tenant")],
        plugin_id: Annotated[str, typer.Option("--plugin-id")],
        phone_number_id: Annotated[str, typer.Option("--phone-number-id")],
        token: Annotated[str, typer.Option("--token")],
        webhook_secret: Annotated[str, typer.Option("--webhook-secret")],
        api_base_url: ApiBase = None,
        graph_version: Annotated[str, typer.Option("--graph-version")] = "v23.0",
        mps: Mps = 80, data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """Add a Chakra plugin (Meta numbers through Chakra)."""
    _add_channel(data_dir, as_json, tenant=tenant, provider=Provider.CHAKRA, key=plugin_id,
                 phone_number_id=phone_number_id, token=token, webhook_secret=webhook_secret,
                 api_base_url=api_base_url, graph_version=graph_version, mps=mps)


@channel_app.command("list")
def channel_list(tenant: Annotated[str | None, typer.Option("--tenant")] = None,
                 data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """List channels (secrets are never shown)."""
    registry = open_registry(settings_for(data_dir))
    for channel in registry.channels(tenant):
        emit(channel_summary(channel), as_json,
             f"{channel.id}\t{channel.tenant}\t{channel.provider.value}\t{channel.key}"
             + (f"\tPAUSED: {channel.pause_reason}" if channel.paused else ""))


@app.command()
def serve(host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
          port: Annotated[int, typer.Option("--port")] = 8080,
          data_dir: DataDir = None) -> None:
    """Run the HTTP server and every stage (embedded mode)."""
    from wacloud.hosting.embedded import serve as run

    settings = settings_for(data_dir)
    configure_logging(settings)
    typer.echo(f"wacloud serving on http://{host}:{port} (data dir {settings.data_dir})")
    asyncio.run(run(settings, host, port))


@app.command()
def messages(tenant: Annotated[str, typer.Option("--tenant")],
             direction: Annotated[str | None, typer.Option(
                 "--direction", help="in or out")] = None,
             limit: Annotated[int, typer.Option("--limit")] = 1000,
             data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """Messages stored for a tenant, one JSON object per line."""
    if direction not in (None, "in", "out"):
        fail("--direction must be 'in' or 'out'")
    settings = settings_for(data_dir)
    broker = CredentialsBroker(open_registry(settings), tenants_dir=settings.tenants_dir)
    if not broker.has_tenant(tenant):
        fail(f"unknown tenant {tenant!r}")
    rows = list_messages(broker.tenant_store(tenant).engine, direction, limit)
    for row in rows:
        if as_json:
            typer.echo(json.dumps(row, ensure_ascii=False, default=str))
        else:
            media = f" [{row['media']['status']} {row['media']['key'] or ''}]" if row[
                "media"] else ""
            typer.echo(f"{row['direction']:>3} {row['type']:<12} {row['from']} -> {row['to']}: "
                       f"{row['text'] or ''}{media} ({row['status']})")
    broker.close()


@parked_app.callback(invoke_without_command=True)
def parked(ctx: typer.Context, data_dir: DataDir = None, as_json: JsonOut = False,
           all_items: Annotated[bool, typer.Option("--include-replayed")] = False) -> None:
    """List parked payloads (unknown tenant, unparseable body)."""
    if ctx.invoked_subcommand is not None:
        return
    registry = open_registry(settings_for(data_dir))
    for item in registry.parked_items(include_replayed=all_items):
        emit(item.summary(), as_json,
             f"{item.id}\t{item.created_at:%Y-%m-%d %H:%M:%S}\t{item.stage}\t{item.reason}")


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

    async def run() -> list[int]:
        broker = SqliteBroker(settings.queue_path, synchronous=settings.queue_synchronous)
        try:
            raw = broker.queue(queue_specs(settings)[envelopes.INBOUND_RAW])
            return await replay_parked(registry, raw, items)
        finally:
            await broker.close()

    replayed = asyncio.run(run())
    emit({"replayed": replayed}, as_json, f"replayed {len(replayed)} item(s): {replayed}")


@media_app.command("refetch")
def media_refetch(tenant: Annotated[str, typer.Option("--tenant")],
                  include_pending: Annotated[bool, typer.Option("--include-pending")] = False,
                  data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """Queue another copy attempt for a tenant's media that failed (or is still pending)."""
    settings = settings_for(data_dir)
    broker = CredentialsBroker(open_registry(settings), tenants_dir=settings.tenants_dir)
    if not broker.has_tenant(tenant):
        fail(f"unknown tenant {tenant!r}")
    statuses = ["failed", "pending"] if include_pending else ["failed"]

    async def run() -> int:
        queues = SqliteBroker(settings.queue_path, synchronous=settings.queue_synchronous)
        try:
            media = queues.queue(queue_specs(settings)[envelopes.INBOUND_MEDIA])
            return await refetch_media(broker, tenant, media, statuses)
        finally:
            await queues.close()

    count = asyncio.run(run())
    emit({"queued": count}, as_json, f"queued {count} media download(s)")


@app.command()
def demo(data_dir: Annotated[Path, typer.Option("--data-dir")] = Path(".wacloud-demo"),
         port: Annotated[int, typer.Option("--port")] = 8080,
         keep_serving: Annotated[bool, typer.Option("--keep-serving/--exit")] = True) -> None:
    """Run the embedded gateway with the fake provider and show a message going in."""
    from wacloud.demo import run_demo

    sys.exit(run_demo(data_dir, port, keep_serving))


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    app()


if __name__ == "__main__":
    main()
