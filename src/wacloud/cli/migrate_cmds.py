"""`wacloud migrate`: bring the registry and every tenant database to this version's schema."""

from __future__ import annotations

from typing import Annotated

import sqlalchemy as sa
import typer

from wacloud.adapters.db.errors import failure_reason
from wacloud.adapters.db.migrate import HEAD, UnknownRevisionError
from wacloud.adapters.db.registry.store import RegistryError
from wacloud.admin.upgrade import migrate_all
from wacloud.cli.common import DataDir, JsonOut, app, emit, fail, progress, settings_for


@app.command()
def migrate(
        tenant: Annotated[str | None, typer.Option(
            "--tenant", help="Only this tenant's database (and the registry).")] = None,
        dry_run: Annotated[bool, typer.Option(
            "--dry-run", help="Show each database's revision and the target; change nothing.")
        ] = False,
        registry_to: Annotated[str, typer.Option(
            "--registry-to", help="Registry revision to migrate to (an older one downgrades, "
            "before rolling back to an older wacloud).")] = HEAD,
        tenant_to: Annotated[str, typer.Option(
            "--tenant-to", help="Tenant database revision to migrate to (an older one "
            "downgrades).")] = HEAD,
        data_dir: DataDir = None, as_json: JsonOut = False) -> None:
    """Migrate the registry and every tenant database; one line per database (from -> to)."""
    settings = settings_for(data_dir)
    failed = False
    try:
        with progress("checking databases" if dry_run else "migrating databases", None,
                      as_json) as advance:
            for result in migrate_all(settings, tenant=tenant, dry_run=dry_run,
                                      registry_to=registry_to, tenant_to=tenant_to,
                                      on_count=advance.set_total):
                failed = failed or result.error is not None
                emit(result.summary(), as_json, result.text())
                advance(1)
    except (RegistryError, UnknownRevisionError) as exc:
        fail(str(exc))
    except sa.exc.SQLAlchemyError as exc:  # the registry itself could not be read
        fail(f"registry: {failure_reason(exc)}")
    if failed:
        raise typer.Exit(1)
