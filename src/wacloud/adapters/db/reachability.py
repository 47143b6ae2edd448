"""Can we reach a database, and what to tell the operator when we cannot.

Used before something is registered (`tenant add` connects to and migrates the tenant's
database first, so a database that is down leaves nothing behind) and by `status` and
`doctor`. Every message names the database by its URL with the password masked, says why in
one line and what to check.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from wacloud.adapters.db.engines import create_engine
from wacloud.adapters.db.errors import failure_reason
from wacloud.adapters.db.migrate import Schema, upgrade
from wacloud.domain.validation import masked_db_url

# Seconds to wait for a server database to answer a connection: a firewalled host must not
# hang a command.
CONNECT_TIMEOUT_S = 10


class DatabaseUnreachable(Exception):
    """The database could not be reached (or migrated); the message is one line for the
    operator, password masked."""


def probe_engine(url: str) -> Engine:
    """An engine that holds no pool and gives up connecting after CONNECT_TIMEOUT_S."""
    if url.startswith("sqlite"):
        return create_engine(url)
    backend = sa.engine.make_url(url).get_backend_name()
    args = {"connect_timeout": CONNECT_TIMEOUT_S} if backend in (
        "postgresql", "mysql", "mariadb") else {}
    return sa.create_engine(url, poolclass=NullPool, connect_args=args)


def short_reason(exc: BaseException) -> str:
    """The driver's first line, without the class name or SQL: `connection refused`."""
    text = failure_reason(exc).partition(": ")[2] or failure_reason(exc)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return " ".join(first.split())


def unreachable_message(url: str, what: str, exc: BaseException, fix: str) -> str:
    return f"cannot reach {what} at {masked_db_url(url)}: {short_reason(exc)}; {fix}"


SERVER_FIX = ("check that the database server is running and reachable from here, and the "
              "host, port, user, password and database name in the URL")


def ping(url: str) -> str | None:
    """None when a connection opens and answers `SELECT 1`, else the reason (one line)."""
    engine = probe_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return None
    except Exception as exc:  # any failure to connect is the answer
        return short_reason(exc)
    finally:
        engine.dispose()


def check_and_migrate(url: str, schema: Schema, what: str, fix: str = SERVER_FIX) -> None:
    """Connect to the database and bring it to the latest schema, or raise
    DatabaseUnreachable saying why and what to check."""
    engine = probe_engine(url)
    try:
        try:
            with engine.connect() as conn:  # fails fast; `upgrade` would retry a refusal
                conn.execute(sa.text("SELECT 1"))
        except Exception as exc:
            raise DatabaseUnreachable(unreachable_message(url, what, exc, fix)) from exc
        try:
            upgrade(engine, schema)
        except Exception as exc:
            raise DatabaseUnreachable(
                f"cannot create the schema in {what} at {masked_db_url(url)}: "
                f"{short_reason(exc)}; check that the user may create tables there") from exc
    finally:
        engine.dispose()
