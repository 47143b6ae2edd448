"""Real database servers for tests: a fresh, empty database per test on PostgreSQL and MariaDB.

Each helper creates a uniquely named database, yields its SQLAlchemy URL and drops it
afterwards. When a server cannot be reached the test is skipped, unless the environment sets
`WACLOUD_REQUIRE_SERVICES=1` (CI), where an unreachable server fails the test instead.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from typing import NoReturn

import pytest

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_USER = "postgres"
MARIADB_HOST = "127.0.0.1"
MARIADB_PORT = 3306
MARIADB_USER = "root"
CONNECT_TIMEOUT_S = 5
REQUIRE_ENV = "WACLOUD_REQUIRE_SERVICES"


def services_required() -> bool:
    return os.environ.get(REQUIRE_ENV) == "1"


def unreachable(what: str, exc: BaseException) -> NoReturn:
    """Skip (or, with WACLOUD_REQUIRE_SERVICES=1, fail) because a server is not reachable."""
    message = f"{what} not reachable at {_address(what)}: {type(exc).__name__}: {exc}"
    if services_required():
        pytest.fail(f"{message} ({REQUIRE_ENV}=1)", pytrace=False)
    pytest.skip(message)


def _address(what: str) -> str:
    if what == "PostgreSQL":
        return f"{PG_HOST}:{PG_PORT}"
    return f"{MARIADB_HOST}:{MARIADB_PORT}"


def fresh_name(prefix: str = "wacloud_test") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


@contextlib.contextmanager
def fresh_postgres_db() -> Iterator[str]:
    """A new empty PostgreSQL database; yields its `postgresql+psycopg://` URL."""
    try:
        import psycopg
    except ImportError as exc:  # the dev extra is not installed
        unreachable("PostgreSQL", exc)
    name = fresh_name()
    try:
        admin = psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres",
                                autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg.OperationalError as exc:
        unreachable("PostgreSQL", exc)
    try:
        admin.execute(f'CREATE DATABASE "{name}" ENCODING \'UTF8\' TEMPLATE template0')
        try:
            yield f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
        finally:
            # FORCE ends sessions a test left open (PostgreSQL 13+).
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.close()


@contextlib.contextmanager
def fresh_mariadb_db() -> Iterator[str]:
    """A new empty MariaDB database (utf8mb4); yields its `mysql+pymysql://` URL."""
    try:
        import pymysql
    except ImportError as exc:
        unreachable("MariaDB", exc)
    name = fresh_name()
    try:
        admin = pymysql.connect(host=MARIADB_HOST, port=MARIADB_PORT, user=MARIADB_USER,
                                password="", autocommit=True,
                                connect_timeout=CONNECT_TIMEOUT_S)
    except pymysql.err.OperationalError as exc:
        unreachable("MariaDB", exc)
    try:
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        try:
            yield (f"mysql+pymysql://{MARIADB_USER}@{MARIADB_HOST}:{MARIADB_PORT}/{name}"
                   "?charset=utf8mb4")
        finally:
            with admin.cursor() as cursor:
                cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        admin.close()
