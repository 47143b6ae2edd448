"""Engine creation: one place that knows per-database connection settings."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

# Seconds to wait for a server database to accept a connection (PyMySQL's own default).
CONNECT_TIMEOUT_S = 10


def create_engine(url: str, *, sqlite_synchronous: str = "FULL",
                  sqlite_busy_timeout_s: float = 30.0, pool_size: int = 5,
                  max_overflow: int = 10) -> Engine:
    """An engine with settings that suit many short transactions from several threads.

    `pool_size` and `max_overflow` bound a server database's connections from this engine
    (a tenant's engine gets `WACLOUD_TENANT_POOL_SIZE` and no overflow: with many tenants on
    one server, each one's pool is what adds up). SQLite keeps its one connection."""
    if url.startswith("sqlite"):
        # One connection per process and file: SQLite runs one writer at a time anyway, and
        # threads queueing on the pool wake as soon as it is free, where several connections
        # would sleep in SQLite's busy handler (1, 2, 5, 10 ... ms steps) and stall the stages.
        # A small statement cache: each batch size of a multi-row INSERT is a statement of its
        # own, and 128 of them (the default) held ~15 MB per process (bench/inbound.py RSS).
        engine = sa.create_engine(url, connect_args={"timeout": sqlite_busy_timeout_s,
                                                     "check_same_thread": False,
                                                     "cached_statements": 16},
                                  pool_size=1, max_overflow=0, pool_timeout=60)

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={sqlite_synchronous}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={int(sqlite_busy_timeout_s * 1000)}")
            cursor.close()

        return engine
    connect_args: dict[str, Any] = {}
    if url.startswith("postgresql") and "connect_timeout" not in url:
        # libpq waits for the operating system's TCP timeout (minutes) by default: a server
        # that does not answer would hold a collect pass and a worker thread that long.
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
    return sa.create_engine(url, pool_pre_ping=True, pool_size=pool_size,
                            max_overflow=max_overflow, connect_args=connect_args)


def create_throwaway_engine(url: str) -> Engine:
    """For one-off CLI commands: no pool left behind."""
    return sa.create_engine(url, poolclass=NullPool)
