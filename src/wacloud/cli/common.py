"""Shared pieces of the command line: the Typer apps, common options, output helpers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from wacloud.adapters.queue.sqlite import SqliteBroker
from wacloud.admin.queries import channel_summary as channel_summary  # shared with the admin API
from wacloud.settings import Settings, load_settings

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
apikey_app = typer.Typer(help="API keys (stored hashed, shown once).", no_args_is_help=True)
dlq_app = typer.Typer(help="Dead-letter queues: messages whose handling kept failing.",
                      no_args_is_help=True)
app.add_typer(apikey_app, name="apikey")
app.add_typer(dlq_app, name="dlq")

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


def queue_broker(settings: Settings) -> SqliteBroker:
    return SqliteBroker(settings.queue_path, synchronous=settings.queue_synchronous)


