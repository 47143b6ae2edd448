"""tests/services.py itself: fresh databases are created and dropped; an unreachable server
skips the test, or fails it when WACLOUD_REQUIRE_SERVICES=1."""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from contextlib import AbstractContextManager

import pytest
import sqlalchemy as sa

from tests import services

Opener = Callable[[], AbstractContextManager[str]]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens once the socket is closed


@pytest.mark.parametrize(("attr", "opener", "name"), [
    ("PG_PORT", services.fresh_postgres_db, "PostgreSQL"),
    ("MARIADB_PORT", services.fresh_mariadb_db, "MariaDB"),
])
def test_unreachable_server_skips(monkeypatch: pytest.MonkeyPatch, attr: str, opener: Opener,
                                  name: str) -> None:
    port = closed_port()
    monkeypatch.setattr(services, attr, port)
    monkeypatch.delenv(services.REQUIRE_ENV, raising=False)

    expected = re.escape(f"{name} not reachable at 127.0.0.1:{port}")
    with pytest.raises(pytest.skip.Exception, match=expected), opener():
        pass


@pytest.mark.parametrize(("attr", "opener", "name"), [
    ("PG_PORT", services.fresh_postgres_db, "PostgreSQL"),
    ("MARIADB_PORT", services.fresh_mariadb_db, "MariaDB"),
])
def test_unreachable_server_fails_when_services_are_required(
        monkeypatch: pytest.MonkeyPatch, attr: str, opener: Opener, name: str) -> None:
    port = closed_port()
    monkeypatch.setattr(services, attr, port)
    monkeypatch.setenv(services.REQUIRE_ENV, "1")

    expected = re.escape(f"{name} not reachable at 127.0.0.1:{port}")
    with pytest.raises(pytest.fail.Exception, match=expected), opener():
        pass


def test_postgres_database_is_fresh_and_dropped_afterwards(postgres_url: str) -> None:
    name = postgres_url.rsplit("/", 1)[1]
    engine = sa.create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            assert sa.inspect(conn).get_table_names() == []
    finally:
        engine.dispose()
    admin_url = postgres_url.rsplit("/", 1)[0] + "/postgres"
    admin = sa.create_engine(admin_url)
    try:
        with admin.connect() as conn:
            assert conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"),
                                {"n": name}).scalar() == 1
    finally:
        admin.dispose()


def test_fresh_databases_are_dropped_on_exit() -> None:
    with services.fresh_postgres_db() as pg_url:
        pg_name = pg_url.rsplit("/", 1)[1]
        leftover = sa.create_engine(pg_url)
        leftover.connect()  # an open session must not stop the drop
    with services.fresh_mariadb_db() as my_url:
        my_name = my_url.rsplit("/", 1)[1].split("?")[0]

    pg_admin = sa.create_engine(pg_url.rsplit("/", 1)[0] + "/postgres")
    my_admin = sa.create_engine(my_url.rsplit("/", 1)[0] + "/?charset=utf8mb4")
    try:
        with pg_admin.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM pg_database WHERE datname = :n"),
                                {"n": pg_name}).scalar() == 0
        with my_admin.connect() as conn:
            assert conn.execute(sa.text(
                "SELECT count(*) FROM information_schema.schemata WHERE schema_name = :n"),
                {"n": my_name}).scalar() == 0
    finally:
        leftover.dispose()
        pg_admin.dispose()
        my_admin.dispose()
