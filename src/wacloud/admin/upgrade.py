"""Migrate every database of a deployment at once: the registry, then each tenant's database.

The gateway migrates by itself too (the registry when a process starts, a tenant database when
a process first opens it); this is the explicit, reportable way an operator upgrades, checks
what an upgrade would do (`dry_run`), or takes the schemas down to an older revision before
rolling back to an older wacloud.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from wacloud.adapters.db.engines import create_engine
from wacloud.adapters.db.errors import failure_reason
from wacloud.adapters.db.migrate import (
    HEAD,
    Schema,
    UnknownRevisionError,
    check_known,
    current_revision,
    migrate_to,
)
from wacloud.adapters.db.registry.store import RegistryError, tenants
from wacloud.bootstrap import secret_box
from wacloud.settings import Settings


@dataclass(slots=True)
class DatabaseMigration:
    """One database's migration: from which revision to which (None: no schema)."""

    schema: Schema
    tenant: str | None
    from_revision: str | None
    to_revision: str | None
    dry_run: bool
    error: str | None = None

    @property
    def changes(self) -> bool:
        return self.error is None and self.from_revision != self.to_revision

    def summary(self) -> dict[str, Any]:
        return {"database": self.schema, "tenant": self.tenant, "from": self.from_revision,
                "to": self.to_revision, "changed": self.changes and not self.dry_run,
                "dry_run": self.dry_run, "error": self.error}

    def text(self) -> str:
        name = "registry" if self.tenant is None else f"tenant {self.tenant}"
        if self.error is not None:
            return f"{name}: error: {self.error}"
        shown = f"{self.from_revision or 'none'} -> {self.to_revision}"
        if not self.changes:
            return f"{name}: {self.to_revision} (up to date)"
        return f"{name}: {shown}" + (" (dry run: not applied)" if self.dry_run else "")


def registry_missing(settings: Settings) -> Path | None:
    """The default SQLite registry's path when it does not exist (nothing to migrate)."""
    path = settings.data_dir / "registry.db"
    return None if settings.registry_url or path.exists() else path


def tenant_url(settings: Settings, slug: str, db_url: str | None) -> str:
    # As the credentials broker opens it: its own URL, else a SQLite file in the data dir.
    return db_url or f"sqlite:///{(settings.tenants_dir / f'{slug}.db').resolve()}"


def _migrate_one(schema: Schema, tenant: str | None, url: str, target: str,
                 dry_run: bool) -> DatabaseMigration:
    result = DatabaseMigration(schema, tenant, None, None, dry_run)
    engine = None
    try:
        if dry_run:
            current = None
            # A dry run creates nothing: a SQLite file that is not there has no schema yet.
            if not url.startswith("sqlite") or _sqlite_exists(url):
                engine = create_engine(url)
                current = current_revision(engine, schema)
            result.from_revision = current
            result.to_revision = check_known(schema, current, target)
        else:
            engine = create_engine(url)
            result.from_revision, result.to_revision = migrate_to(engine, schema, target)
    except UnknownRevisionError as exc:
        result.error = str(exc)
    except Exception as exc:  # one database that is down must not stop the others
        result.error = " ".join(failure_reason(exc).split())  # one line per database
    finally:
        if engine is not None:
            engine.dispose()
    return result


def _sqlite_exists(url: str) -> bool:
    database = sa.engine.make_url(url).database
    return bool(database) and (database == ":memory:" or Path(str(database)).exists())


def migrate_all(settings: Settings, *, tenant: str | None = None, dry_run: bool = False,
                registry_to: str = HEAD, tenant_to: str = HEAD,
                on_count: Callable[[int], None] | None = None) -> Iterator[DatabaseMigration]:
    """The registry, then each tenant database (or only `tenant`'s), one result each as it is
    done; `on_count` hears how many databases there are before the first one (a progress bar's
    total). Raises RegistryError for an unknown `tenant` or a registry that does not exist, and
    UnknownRevisionError for a target revision that does not exist."""
    check_known("registry", None, registry_to)  # a typo fails before anything changes
    check_known("tenant", None, tenant_to)
    missing = registry_missing(settings)
    if missing is not None:
        raise RegistryError(f"no registry at {missing}: `wacloud init` creates one")
    registry_url = settings.registry
    slugs_and_urls = _tenant_urls(settings, registry_url)
    if tenant is not None:
        slugs_and_urls = [(slug, url) for slug, url in slugs_and_urls if slug == tenant]
        if not slugs_and_urls:
            raise RegistryError(f"unknown tenant {tenant!r}")
    if on_count is not None:
        on_count(1 + len(slugs_and_urls))
    yield _migrate_one("registry", None, registry_url, registry_to, dry_run)
    if not dry_run:
        settings.tenants_dir.mkdir(parents=True, exist_ok=True)
    for slug, db_url in slugs_and_urls:
        yield _migrate_one("tenant", slug, tenant_url(settings, slug, db_url), tenant_to,
                           dry_run)


def _tenant_urls(settings: Settings, registry_url: str) -> list[tuple[str, str | None]]:
    """Each tenant's slug and own database URL, read with the columns of the first registry
    revision only, so that a registry at any revision (an old one in a dry run) can be read."""
    engine = create_engine(registry_url)
    try:
        if current_revision(engine, "registry") is None:
            return []  # an empty database: no tenants yet
        secrets = secret_box(settings)
        with engine.connect() as conn:
            rows = conn.execute(sa.select(tenants.c.slug, tenants.c.db_url_encrypted)
                                .order_by(tenants.c.slug)).all()
        return [(row.slug, secrets.decrypt_optional(row.db_url_encrypted)) for row in rows]
    finally:
        engine.dispose()
