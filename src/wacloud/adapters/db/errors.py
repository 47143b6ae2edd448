"""Sorting database errors: the database's trouble (retry for a long time) or the data's
(refused: park that one item), and a reason text fit for logs and dead letters.

A tenant database that is down, locked or failing over must not cost acknowledged webhooks:
its errors are retried for `db_retry_period_s` (hours), where a bug or a refused value is given
the usual few attempts. A value the database refuses fails the same way at every try, so it is
parked with the reason instead of failing its neighbours.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterator

import sqlalchemy.exc as sa_exc

from wacloud.observability.logs import mask

REASON_MAX = 500


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_database_unavailable(exc: BaseException) -> bool:
    """The database could not do the work now (not refused the data): connection refused or
    lost, failover, lock or statement timeouts, `database is locked`, an exhausted pool."""
    for error in _chain(exc):
        if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
            return True
        # Not InterfaceError as such: SQLite's is a value it cannot bind (the data's fault);
        # a driver's lost connection is flagged `connection_invalidated` above.
        if isinstance(error, (sa_exc.OperationalError, sa_exc.DisconnectionError,
                              sa_exc.TimeoutError, sqlite3.OperationalError)):
            return True
        if isinstance(error, (sa_exc.IntegrityError, sa_exc.DataError, sqlite3.IntegrityError,
                              sqlite3.DataError, OverflowError)):
            return False
    return False


def is_refused_value(exc: BaseException) -> bool:
    """The database refused the data itself (a constraint, a value out of range): trying the
    same rows again fails again."""
    return any(isinstance(error, (sa_exc.IntegrityError, sa_exc.DataError,
                                  sqlite3.IntegrityError, sqlite3.DataError, OverflowError))
               for error in _chain(exc))


def failure_reason(exc: BaseException) -> str:
    """`Class: message` for logs and dead letters, without the SQL statement or its parameters
    (which carry message texts and phone numbers), masked and cut to REASON_MAX."""
    shown: BaseException = exc
    if isinstance(exc, sa_exc.StatementError) and exc.orig is not None:
        shown = exc.orig  # only the driver's message: SQLAlchemy appends SQL and parameters
    text = f"{type(shown).__name__}: {shown}".strip().rstrip(":")
    return mask(text)[:REASON_MAX]


class TroubleLog:
    """One warning per `interval` seconds per database (a key such as "tenant acme" or "the
    registry") that is down, not a traceback at every poll of every loop; the first success
    after trouble is logged once."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def failed(self, key: str, what: str, exc: BaseException) -> bool:
        """Log `exc` for `key`: rate-limited when the database is unavailable (True), else a
        full error with its traceback, as a bug deserves (False)."""
        if not is_database_unavailable(exc):
            self.logger.error("%s failed for %s", what, key, exc_info=exc)
            return False
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return True
        self._last[key] = now
        repeats = self._suppressed.pop(key, 0)
        self.logger.warning(
            "%s: database unreachable (%s); %s waits and retries%s", key,
            " ".join(failure_reason(exc).split()), what,  # one line (drivers add hints)
            f" ({repeats} more failure(s) since the last warning)" if repeats else "")
        return True

    def succeeded(self, key: str) -> None:
        if self._last.pop(key, None) is not None:
            self._suppressed.pop(key, None)
            self.logger.warning("%s: database reachable again", key)
