"""Bring a registry or tenant database to the latest schema with Alembic.

The two schemas have separate migration histories and version tables, so one physical
database may hold both (a small deployment's PostgreSQL, say).
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

Schema = Literal["registry", "tenant"]
HERE = Path(__file__).parent / "migrations"


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


def upgrade(engine: Engine, schema: Schema, attempts: int = 5) -> None:
    """Upgrade to head. On a server database another process may migrate at the same moment;
    the loser's "already exists" is retried, by which time the winner has finished."""
    config = alembic_config(schema)
    for attempt in range(attempts):
        # A database that cannot be reached fails at once: waiting here would only hold up
        # the caller (a collector pass over every tenant), and the caller retries anyway.
        connection = engine.connect()
        try:
            with migration_lock(engine), connection, connection.begin():
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
            return
        except DBAPIError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * 2**attempt)  # backoff while the other process finishes


def new_revision(engine: Engine, schema: Schema, message: str) -> None:
    """Developer helper: autogenerate a migration against a database at head."""
    config = alembic_config(schema)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.revision(config, message=message, autogenerate=True)
