"""Per-database SQL constructs that SQLAlchemy does not unify (insert-or-ignore)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError


@functools.lru_cache(maxsize=64)
def _insert_returning(module: Any, table: sa.Table) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING the key, built once per table: every
    inbound batch runs it, and building it per call cost its cache key each time."""
    # rowcount is -1 for executemany on psycopg 3; RETURNING counts what was inserted.
    pk = next(iter(table.primary_key.columns))
    return module.insert(table).on_conflict_do_nothing().returning(pk)


def insert_ignore(conn: Connection, table: sa.Table, rows: Sequence[dict[str, Any]]) -> int:
    """Insert rows, silently skipping those that violate a unique key. Returns rows inserted.

    The unique key, not an in-memory set, is what makes redeliveries and duplicate webhooks
    store one row."""
    if not rows:
        return 0
    name = conn.dialect.name
    if name in ("sqlite", "postgresql"):
        module: Any
        if name == "sqlite":
            from sqlalchemy.dialects import sqlite as module
        else:
            from sqlalchemy.dialects import postgresql as module
        result = conn.execute(_insert_returning(module, table), list(rows))
        return len(result.all())
    if name in ("mysql", "mariadb"):
        result = conn.execute(table.insert().prefix_with("IGNORE"), list(rows))
        return max(result.rowcount, 0)
    # SQL Server and others: one savepoint per row.
    inserted = 0
    for row in rows:
        try:
            with conn.begin_nested():
                conn.execute(table.insert(), row)
            inserted += 1
        except IntegrityError:
            continue
    return inserted
