"""Bring a registry or tenant database to the latest schema with Alembic (or, before rolling
back to an older wacloud, down to an older revision).

The two schemas have separate migration histories and version tables, so one physical
database may hold both (a small deployment's PostgreSQL, say).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

Schema = Literal["registry", "tenant"]
HERE = Path(__file__).parent / "migrations"
# As configured in migrations/<schema>/env.py.
VERSION_TABLES: dict[Schema, str] = {"registry": "wacloud_registry_version",
                                     "tenant": "wacloud_tenant_version"}
HEAD = "head"


class UnknownRevisionError(RuntimeError):
    """The database is at a revision this version of wacloud does not know: a newer wacloud
    migrated it (or the revision asked for does not exist)."""


def alembic_config(schema: Schema) -> Config:
    config = Config()
    config.set_main_option("script_location", str(HERE / schema))
    return config


@contextlib.contextmanager
def migration_lock(engine: Engine) -> Iterator[None]:
    """Serialize migrations of one SQLite file across processes: SQLite's DDL is not
    transactional under the stdlib driver, so two starting processes would interleave."""
    database = engine.url.database if engine.url.get_backend_name() == "sqlite" else None
    if not database or database == ":memory:":
        yield
        return
    with open(f"{database}.migrate.lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@functools.cache  # every tenant store's first open asks; the scripts are fixed per release
def revisions(schema: Schema) -> tuple[str, ...]:
    """The schema's revision ids, oldest first (the history is one line)."""
    script = ScriptDirectory.from_config(alembic_config(schema))
    return tuple(revision.revision for revision in reversed(list(script.walk_revisions())))


def head_revision(schema: Schema) -> str:
    return revisions(schema)[-1]


def revision_of(connection: Connection, schema: Schema) -> str | None:
    """The database's revision; None when it has no schema yet."""
    context = MigrationContext.configure(connection,
                                         opts={"version_table": VERSION_TABLES[schema]})
    return context.get_current_revision()


def current_revision(engine: Engine, schema: Schema) -> str | None:
    with engine.connect() as connection:
        return revision_of(connection, schema)


def check_known(schema: Schema, current: str | None, target: str = HEAD) -> str:
    """The revision id `target` names, after checking that this code knows both it and the
    database's `current` one (a database migrated by a newer wacloud is refused with what to do
    rather than Alembic's "Can't locate revision")."""
    known = revisions(schema)
    if current is not None and current not in known:
        raise UnknownRevisionError(
            f"the {schema} database is at revision {current}, which this version of wacloud "
            f"does not know (its newest is {known[-1]}): a newer wacloud migrated it; run that "
            f"version, or with it `wacloud migrate --{schema}-to {known[-1]}` before rolling back")
    resolved = known[-1] if target == HEAD else target
    if resolved not in known:
        raise UnknownRevisionError(f"no {schema} revision {target!r} (known: {', '.join(known)})")
    return resolved


def upgrade(engine: Engine, schema: Schema, attempts: int = 5) -> None:
    """Upgrade to head. On a server database another process may migrate at the same moment;
    the loser's "already exists" is retried, by which time the winner has finished."""
    migrate_to(engine, schema, HEAD, attempts)


def migrate_to(engine: Engine, schema: Schema, target: str, attempts: int = 5
               ) -> tuple[str | None, str]:
    """Upgrade or downgrade to `target` (a revision id, or "head"); (from, to) revisions.
    Downgrading drops what the later revisions added (their columns' data included)."""
    config = alembic_config(schema)
    for attempt in range(attempts):
        # A database that cannot be reached fails at once: waiting here would only hold up
        # the caller (a collector pass over every tenant), and the caller retries anyway.
        connection = engine.connect()
        try:
            with migration_lock(engine), connection, connection.begin():
                config.attributes["connection"] = connection
                current = revision_of(connection, schema)
                resolved = check_known(schema, current, target)
                order = revisions(schema)
                if current is not None and order.index(resolved) < order.index(current):
                    command.downgrade(config, resolved)
                else:
                    command.upgrade(config, resolved)
            return current, resolved
        except DBAPIError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * 2**attempt)  # backoff while the other process finishes
    raise AssertionError("unreachable: the last attempt returns or raises")


def new_revision(engine: Engine, schema: Schema, message: str) -> None:
    """Developer helper: autogenerate a migration against a database at head."""
    config = alembic_config(schema)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.revision(config, message=message, autogenerate=True)
