"""Commands that change the registry: init, tenants, channels, API keys."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from wacloud.adapters.db.reachability import DatabaseUnreachable
from wacloud.adapters.db.registry.api_keys import create_api_key, list_api_keys, revoke_api_key
from wacloud.adapters.db.registry.store import RegistryError
from wacloud.admin.operations import add_tenant, channel_values
from wacloud.bootstrap import init_data_dir, open_registry
from wacloud.cli.common import (
    ApiBase,
    DataDir,
    JsonOut,
    Mps,
    apikey_app,
    app,
    channel_add,
    channel_app,
    channel_summary,
    emit,
    emit_rows,
    fail,
    settings_for,
    tenant_app,
)
from wacloud.domain import validation
from wacloud.domain.model import Provider
from wacloud.settings import Settings

MediaHosts = Annotated[list[str] | None, typer.Option(
    "--media-host", help="Another host this channel may fetch media from (host, host:port or "
    ".domain for its subdomains); repeat for more. The provider's hosts are always allowed.")]


@app.command()
def init(data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """Create the data dir, the registry DB and an encryption key if none exists."""
    settings = settings_for(data_dir, must_exist=False)
    created = init_data_dir(settings)
    emit({"data_dir": str(settings.data_dir.resolve()), "key_created": created}, as_json,
         f"initialized {settings.data_dir.resolve()}"
         + (" (new encryption key)" if created else ""))


@tenant_app.command("add")
def tenant_add(slug: str, db_url: Annotated[str | None, typer.Option(
        "--db-url", help="SQLAlchemy URL of the tenant's DB (default: SQLite file).")] = None,
        data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """Add a tenant (its database is reached and migrated first: if it cannot be, nothing is
    registered)."""
    settings = settings_for(data_dir, must_exist=False)
    init_data_dir(settings)
    registry = open_registry(settings)
    try:
        tenant = add_tenant(registry, settings.tenants_dir, slug, db_url)
    except (validation.InvalidValue, RegistryError) as exc:
        fail(str(exc))
    except DatabaseUnreachable as exc:
        fail(f"{exc}; tenant {slug} was not added")
    finally:
        registry.engine.dispose()
    emit({"id": tenant.id, "slug": slug}, as_json, f"tenant {slug} added")


@tenant_app.command("list")
def tenant_list(data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """List tenants."""
    registry = open_registry(settings_for(data_dir))
    found = registry.tenants()
    emit_rows([{"id": t.id, "slug": t.slug, "own_db": t.db_url is not None} for t in found],
              as_json, ["id", "tenant", "database"], [t.slug for t in found],
              cells=[[t.id, t.slug, "own" if t.db_url else "SQLite file in the data dir"]
                     for t in found])


def _validated(settings: Settings, values: dict[str, Any]) -> dict[str, Any]:
    """The channel's values as they are stored, or one line saying which is wrong and why."""
    try:
        values = channel_values(values, allow_http=settings.dev_allow_local_urls)
    except validation.InvalidValue as exc:
        fail(str(exc))
    return values


def _add_channel(data_dir: Path | None, as_json: bool, **values: Any) -> None:
    settings = settings_for(data_dir)
    values = _validated(settings, values)
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
        mps: Mps = 80, media_host: MediaHosts = None, data_dir: DataDir = None,
        as_json: JsonOut = False) -> None:
    """Add a Meta WhatsApp Cloud API number."""
    _add_channel(data_dir, as_json, tenant=tenant, provider=Provider.META, key=phone_number_id,
                 phone_number_id=phone_number_id, waba_id=waba_id,
                 display_number=display_number, token=token, app_secret=app_secret,
                 verify_token=verify_token, api_base_url=api_base_url,
                 graph_version=graph_version, mps=mps, media_hosts=media_host)


@channel_add.command("whapi")
def channel_add_whapi(
        tenant: Annotated[str, typer.Option("--tenant")],
        channel_id: Annotated[str, typer.Option("--channel-id")],
        token: Annotated[str, typer.Option("--token")],
        webhook_secret: Annotated[str, typer.Option("--webhook-secret")],
        api_base_url: ApiBase = None, mps: Mps = 80, media_host: MediaHosts = None,
        data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """Add a Whapi.Cloud channel."""
    _add_channel(data_dir, as_json, tenant=tenant, provider=Provider.WHAPI, key=channel_id,
                 token=token, webhook_secret=webhook_secret, api_base_url=api_base_url, mps=mps,
                 media_hosts=media_host)


@channel_add.command("chakra")
def channel_add_chakra(
        tenant: Annotated[str, typer.Option("--tenant")],
        plugin_id: Annotated[str, typer.Option("--plugin-id")],
        phone_number_id: Annotated[str, typer.Option("--phone-number-id")],
        token: Annotated[str, typer.Option("--token")],
        webhook_secret: Annotated[str, typer.Option("--webhook-secret")],
        api_base_url: ApiBase = None,
        graph_version: Annotated[str, typer.Option("--graph-version")] = "v23.0",
        mps: Mps = 80, media_host: MediaHosts = None, data_dir: DataDir = None,
        as_json: JsonOut = False) -> None:
    """Add a Chakra plugin (Meta numbers through Chakra)."""
    _add_channel(data_dir, as_json, tenant=tenant, provider=Provider.CHAKRA, key=plugin_id,
                 phone_number_id=phone_number_id, token=token, webhook_secret=webhook_secret,
                 api_base_url=api_base_url, graph_version=graph_version, mps=mps,
                 media_hosts=media_host)


@channel_app.command("list")
def channel_list(tenant: Annotated[str | None, typer.Option("--tenant")] = None,
                 data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """List channels (secrets are never shown)."""
    registry = open_registry(settings_for(data_dir))
    found = registry.channels(tenant)
    emit_rows([channel_summary(c) for c in found], as_json,
              ["id", "tenant", "provider", "channel", "state"],
              [f"{c.id}\t{c.tenant}\t{c.provider.value}\t{c.key}"
               + (f"\tPAUSED: {c.pause_reason}" if c.paused else "") for c in found])


@channel_app.command("pause")
def channel_pause(channel_id: int, reason: Annotated[str, typer.Option("--reason")] = "paused "
                  "by an operator", data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """Pause a channel: its messages wait in the outbox."""
    registry = open_registry(settings_for(data_dir))
    try:
        registry.channel_by_id(channel_id)
    except RegistryError as exc:
        fail(str(exc))
    registry.set_channel_pause(channel_id, True, reason)
    emit({"id": channel_id, "paused": True}, as_json, f"channel {channel_id} paused")


@channel_app.command("resume")
def channel_resume(channel_id: int, data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """Resume a paused channel: its waiting messages are sent."""
    registry = open_registry(settings_for(data_dir))
    try:
        registry.channel_by_id(channel_id)
    except RegistryError as exc:
        fail(str(exc))
    registry.set_channel_pause(channel_id, False, None)
    emit({"id": channel_id, "paused": False}, as_json, f"channel {channel_id} resumed")


@channel_app.command("set-token")
def channel_set_token(
        channel: Annotated[str, typer.Argument(
            help="The channel's id as `channel list` shows it, or with --provider its "
                 "provider id (phone_number_id, Whapi channel id, Chakra plugin id).")],
        token: Annotated[str, typer.Option(
            "--token", help="The new token; '-' reads it from standard input.")],
        provider: Annotated[Provider | None, typer.Option(
            "--provider", help="Look the channel up by its provider id.")] = None,
        data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """Replace a channel's token (e.g. after Meta error 190) and resume it."""
    if token == "-":
        token = sys.stdin.readline().strip()
    if not token:
        fail("the token must not be empty")
    try:
        token = validation.token(token)
    except validation.InvalidValue as exc:
        fail(str(exc))
    registry = open_registry(settings_for(data_dir))
    try:
        if provider is not None:
            found = registry.channel_by_key(provider, channel)
        elif channel.isdigit():
            found = registry.channel_by_id(int(channel))
        else:
            fail("give the channel's id, or --provider with its provider id")
        was_paused = registry.set_channel_token(found.id, token)
    except RegistryError as exc:
        fail(str(exc))
    emit({"id": found.id, "tenant": found.tenant, "provider": found.provider.value,
          "key": found.key, "token_replaced": True, "paused": False, "was_paused": was_paused},
         as_json, f"token of {found.provider.value} channel {found.key} replaced"
         + (" and the channel resumed" if was_paused else ""))


@apikey_app.command("create")
def apikey_create(tenant: Annotated[str | None, typer.Option("--tenant")] = None,
                  admin: Annotated[bool, typer.Option("--admin")] = False,
                  label: Annotated[str | None, typer.Option("--label")] = None,
                  data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """Create an API key for a tenant (or an admin key); it is printed once, stored hashed."""
    registry = open_registry(settings_for(data_dir))
    try:
        record, key = create_api_key(registry, tenant=tenant, admin=admin, label=label)
    except RegistryError as exc:
        fail(str(exc))
    emit({"id": record.id, "tenant": record.tenant, "admin": record.is_admin, "key": key},
         as_json, f"{key}\n(key {record.id}; shown once, store it now)")


@apikey_app.command("list")
def apikey_list(data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """List API keys (prefixes only)."""
    registry = open_registry(settings_for(data_dir))
    records = list_api_keys(registry)
    emit_rows([{"id": r.id, "tenant": r.tenant, "admin": r.is_admin, "service": r.is_service,
                "prefix": r.prefix, "label": r.label, "revoked": r.revoked} for r in records],
              as_json, ["id", "prefix", "tenant", "state"],
              [f"{r.id}\t{r.prefix}...\t{r.tenant or r.kind.upper()}"
               + ("\trevoked" if r.revoked else "") for r in records])


@apikey_app.command("revoke")
def apikey_revoke(key_id: int, data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """Revoke an API key (a running gateway stops accepting it within seconds)."""
    registry = open_registry(settings_for(data_dir))
    try:
        revoke_api_key(registry, key_id)
    except RegistryError as exc:
        fail(str(exc))
    emit({"id": key_id, "revoked": True}, as_json, f"API key {key_id} revoked")


