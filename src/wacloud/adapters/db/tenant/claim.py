"""Claim outbox rows atomically: several collectors (threads or processes) never get one row twice.

A claim moves up to `limit` pending rows (status 0), oldest id first, to reserved (status 1)
with `reserved_at` set, and returns them. One construct per database:

- SQLite: one `UPDATE ... WHERE id IN (SELECT id ... ORDER BY id LIMIT n) RETURNING *`. The
  statement takes SQLite's single write lock before it reads (it is the transaction's first
  statement, so there is no read-to-write lock upgrade to fail with SQLITE_BUSY); other
  writers wait on the engine's busy_timeout.
- PostgreSQL: `WITH picked AS MATERIALIZED (SELECT id ... ORDER BY id LIMIT n FOR UPDATE SKIP
  LOCKED) UPDATE ... FROM picked WHERE id = picked.id RETURNING *`: concurrent claimers skip
  each other's rows instead of waiting, and a row committed as claimed meanwhile fails the
  `status = 0` that FOR UPDATE re-checks on its newest version.
- MySQL/MariaDB (no `UPDATE ... RETURNING`): one READ COMMITTED transaction of
  `SELECT id ... FOR UPDATE SKIP LOCKED`, `UPDATE ... WHERE id IN (...)`, and a re-read of
  those rows (so returned values are exactly what was stored, e.g. DATETIME precision).
  READ COMMITTED avoids InnoDB gap locks, which otherwise deadlock claimers at the queue's tail;
  a deadlock that still happens is retried.
- SQL Server: `WITH c AS (SELECT TOP (n) * FROM outbound_messages WITH (ROWLOCK, READPAST,
  UPDLOCK) WHERE status = 0 ... ORDER BY id) UPDATE c SET ... OUTPUT inserted.*`. SQLAlchemy
  silently drops `with_for_update(skip_locked=True)` on mssql, so the hints are spelled out.

Status transitions after a claim (`mark_queued`, `mark_not_queued`, `release`) only touch rows
still in the expected state, so a row reclaimed by `reclaim_stale` (its lease expired) and
claimed again is not moved by a late collector.

Queued rows nobody touched for a long time (`stale_queued`: no attempt, no result) may have
lost their queue message or their result; the collector queues their envelope again with the
same de-duplication id and `mark_requeued` notes it (see `wacloud.stages.collect`). Not a row
whose send lease is still set, expired or not: an attempt took it and may have reached the
provider, and its outcome was not written yet. Either that attempt's queue message is still
there (it is redelivered, and waits for the lease), or the outcome waits in `outbound.results`
for the tenant database (down or locked for longer than the lease and this period): a copy
would send the message a second time.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError

from wacloud.adapters.db.tenant import tables as t
from wacloud.adapters.db.types import utcnow
from wacloud.domain.model import OutboundStatus

PENDING = OutboundStatus.PENDING.value
RESERVED = OutboundStatus.RESERVED.value
QUEUED = OutboundStatus.QUEUED.value
NOT_QUEUED = OutboundStatus.NOT_QUEUED.value
FAILED = OutboundStatus.FAILED.value
EXPIRED_CODE = "expired"

# Ids per UPDATE ... WHERE id IN (...): well under SQL Server's 2,100 parameters.
ID_CHUNK = 500
# MySQL/MariaDB error codes worth retrying a claim for: deadlock, lock wait timeout.
MYSQL_RETRY_CODES = {1213, 1205}
MYSQL_ATTEMPTS = 5

_om = t.outbound_messages
_c = _om.c

MSSQL_CLAIM_SQL = (
    "WITH c AS ("
    "SELECT TOP ({limit}) * FROM outbound_messages WITH (ROWLOCK, READPAST, UPDLOCK) "
    "WHERE status = :pending{exclude} ORDER BY id) "
    "UPDATE c SET status = :reserved, reserved_at = :now, updated_at = :now "
    "OUTPUT inserted.*"
)


def claim_pending(engine: Engine, limit: int, *,
                  exclude_channels: Collection[str] = ()) -> list[dict[str, Any]]:
    """Move up to `limit` pending rows, oldest first, to reserved and return them (every
    column, ordered by id). Rows of `exclude_channels` (paused channels) are left alone.
    Concurrent callers never receive the same row."""
    if limit <= 0:
        return []
    excluded = sorted(set(exclude_channels))
    now = utcnow()
    name = engine.dialect.name
    if name in ("mysql", "mariadb"):
        rows = _claim_mysql(engine, limit, excluded, now)
    else:
        with engine.begin() as conn:
            stmt = claim_statement(name, limit, excluded, now)
            rows = [dict(row) for row in conn.execute(stmt).mappings()]
    rows.sort(key=lambda row: int(row["id"]))
    return rows


def _pending_ids(limit: int, excluded: Sequence[str]) -> sa.Select[int]:
    query = sa.select(_c.id).where(_c.status == PENDING)
    if excluded:
        query = query.where(_c.channel.not_in(excluded))
    return query.order_by(_c.id).limit(limit)


def claim_statement(dialect_name: str, limit: int, excluded: Sequence[str],
                    now: datetime) -> sa.Update | sa.TextualSelect:
    """The single claim statement for SQLite, PostgreSQL or SQL Server (MySQL/MariaDB need
    several statements: see `_claim_mysql`)."""
    if dialect_name == "mssql":
        return mssql_claim_statement(limit, excluded, now)
    ids = _pending_ids(limit, excluded)
    update = _om.update().values(status=RESERVED, reserved_at=now, updated_at=now)
    if dialect_name == "postgresql":
        # A MATERIALIZED CTE runs the locking SELECT exactly once. As an `IN (subquery)` the
        # planner may pick a nested-loop semi join that re-runs the subquery per outer row,
        # and each re-run SKIP-LOCKs the rows this very statement just locked: it then
        # reserved every pending row whatever the limit (seen on PostgreSQL 15).
        picked = ids.with_for_update(skip_locked=True).cte("picked").prefix_with(
            "MATERIALIZED", dialect="postgresql")
        return update.where(_c.id == picked.c.id).returning(*_c)
    if dialect_name != "sqlite":
        raise NotImplementedError(f"claim_pending does not support {dialect_name!r}")
    return update.where(_c.id.in_(ids.scalar_subquery()), _c.status == PENDING).returning(*_c)


def mssql_claim_statement(limit: int, excluded: Sequence[str],
                          now: datetime) -> sa.TextualSelect:
    """SQL Server: update a TOP (n) CTE read with READPAST/UPDLOCK/ROWLOCK, OUTPUT the rows."""
    exclude = " AND channel NOT IN :excluded" if excluded else ""
    stmt = sa.text(MSSQL_CLAIM_SQL.format(limit=int(limit), exclude=exclude))
    params: dict[str, Any] = {"pending": PENDING, "reserved": RESERVED}
    binds = [sa.bindparam("now", now, type_=_c.reserved_at.type)]
    if excluded:
        binds.append(sa.bindparam("excluded", list(excluded), expanding=True))
    return stmt.bindparams(*binds, **params).columns(*_c)


def _claim_mysql(engine: Engine, limit: int, excluded: Sequence[str],
                 now: datetime) -> list[dict[str, Any]]:
    for attempt in range(MYSQL_ATTEMPTS):
        try:
            with engine.connect() as raw_conn:
                conn = raw_conn.execution_options(isolation_level="READ COMMITTED")
                with conn.begin():
                    ids = [int(i) for i in conn.execute(
                        _pending_ids(limit, excluded).with_for_update(skip_locked=True)
                    ).scalars()]
                    if not ids:
                        return []
                    conn.execute(_om.update().where(_c.id.in_(ids)).values(
                        status=RESERVED, reserved_at=now, updated_at=now))
                    return [dict(row) for row in conn.execute(
                        sa.select(_om).where(_c.id.in_(ids)).order_by(_c.id)).mappings()]
        except OperationalError as exc:
            code = exc.orig.args[0] if exc.orig is not None and exc.orig.args else None
            if code not in MYSQL_RETRY_CODES or attempt == MYSQL_ATTEMPTS - 1:
                raise
            time.sleep(0.01 * (attempt + 1))
    raise AssertionError("unreachable")  # pragma: no cover


def reclaim_stale(engine: Engine, lease_seconds: float) -> int:
    """Return reserved rows whose lease expired (reserved_at older than now - lease) to
    pending, so that a crashed collector's rows are sent by another. Rows reserved by the
    original system without a reserved_at count from their updated_at. Returns the count."""
    now = utcnow()
    cutoff = now - timedelta(seconds=lease_seconds)
    with engine.begin() as conn:
        result = conn.execute(_om.update().where(
            _c.status == RESERVED,
            sa.or_(_c.reserved_at < cutoff,
                   sa.and_(_c.reserved_at.is_(None), _c.updated_at < cutoff)),
        ).values(status=PENDING, reserved_at=None, updated_at=now))
        return max(result.rowcount, 0)


def _chunks(ids: Sequence[int]) -> Iterator[list[int]]:
    unique = sorted({int(i) for i in ids})
    for start in range(0, len(unique), ID_CHUNK):
        yield unique[start:start + ID_CHUNK]


def _transition(engine: Engine, ids: Sequence[int], from_status: Sequence[int],
                values: dict[str, Any]) -> None:
    if not ids:
        return
    with engine.begin() as conn:
        for chunk in _chunks(ids):
            _update(conn, chunk, from_status, values)


def _update(conn: Connection, ids: list[int], from_status: Sequence[int],
            values: dict[str, Any]) -> None:
    conn.execute(_om.update().where(_c.id.in_(ids), _c.status.in_(list(from_status)))
                 .values(**values))


def mark_queued(engine: Engine, ids: Sequence[int]) -> None:
    """Reserved rows handed to the queue: status 2 with queued_at. Other rows are untouched.
    `queued_attempts` keeps the attempts so far: until the send stage counts one more, the
    row's message is still ahead in the queue and later messages to its recipient wait."""
    now = utcnow()
    _transition(engine, ids, [RESERVED],
                {"status": QUEUED, "queued_at": now, "updated_at": now,
                 "queued_attempts": _c.attempts})


def mark_expired(engine: Engine, ids: Sequence[int], reason: str) -> None:
    """Reserved or queued rows whose validity passed before they were sent: status -100 with
    error code `expired` and the reason. Other rows are untouched."""
    _transition(engine, ids, [RESERVED, QUEUED],
                {"status": FAILED, "error_code": EXPIRED_CODE, "error_reason": reason,
                 "updated_at": utcnow()})


def stale_queued(engine: Engine, stale_seconds: float, limit: int) -> list[dict[str, Any]]:
    """Up to `limit` queued rows, oldest id first, that nothing touched (no attempt, no result,
    no re-queue) for `stale_seconds` and that hold no send lease: their queue message or their
    result may be lost."""
    cutoff = utcnow() - timedelta(seconds=stale_seconds)
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(
            sa.select(_om).where(_c.status == QUEUED, _c.updated_at < cutoff,
                                 _c.send_lease_until.is_(None))
            .order_by(_c.id).limit(limit)).mappings()]


def mark_requeued(engine: Engine, ids: Sequence[int]) -> None:
    """Queued rows whose envelope was queued again: queued_at and updated_at are now (the row
    is stale again only after another full period) and, as in `mark_queued`, later messages to
    the recipient wait until the send stage counts an attempt of it."""
    now = utcnow()
    _transition(engine, ids, [QUEUED],
                {"queued_at": now, "updated_at": now, "queued_attempts": _c.attempts})


def mark_not_queued(engine: Engine, ids: Sequence[int], reason: str) -> None:
    """Reserved rows that cannot be queued (invalid, unknown channel): status -99 with the
    reason. Other rows are untouched."""
    _transition(engine, ids, [RESERVED],
                {"status": NOT_QUEUED, "error_reason": reason, "updated_at": utcnow()})


def release(engine: Engine, ids: Sequence[int], reason: str | None) -> None:
    """Put reserved or queued rows back to pending (e.g. their channel is paused), with
    error_reason = reason. Rows in any other state are untouched."""
    _transition(engine, ids, [RESERVED, QUEUED],
                {"status": PENDING, "reserved_at": None, "queued_at": None,
                 "error_reason": reason, "updated_at": utcnow()})


_ANY_PENDING = sa.select(_c.id).where(_c.status == PENDING).limit(1)


def has_pending(engine: Engine) -> bool:
    """Whether any row is pending: one indexed read (status, id), no lock taken."""
    with engine.connect() as conn:
        return conn.execute(_ANY_PENDING).first() is not None


def pending_count(engine: Engine) -> int:
    with engine.connect() as conn:
        count = conn.execute(
            sa.select(sa.func.count()).select_from(_om).where(_c.status == PENDING)).scalar()
        return int(count or 0)
