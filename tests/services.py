"""Real servers for tests: a fresh, empty database per test on PostgreSQL and MariaDB, a fresh
RabbitMQ virtual host, and moto's server for SQS and S3.

Each helper creates a uniquely named database, yields its SQLAlchemy URL and drops it
afterwards. When a server cannot be reached the test is skipped, unless the environment sets
`WACLOUD_REQUIRE_SERVICES=1` (CI), where an unreachable server fails the test instead.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
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
    if what == "RabbitMQ":
        return "127.0.0.1:5672"
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


RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto's server (SQS and S3 over HTTP) on a free 127.0.0.1 port; yields its endpoint URL.
    One process serves a whole test session: tests keep apart by their own queue prefixes and
    bucket names."""
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{endpoint}/moto-api/", timeout=1.0)
                break
            except httpx.HTTPError as exc:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start on {endpoint}") from exc
                time.sleep(0.1)
        yield endpoint
    finally:
        process.terminate()
        process.wait(10)


def aws_environment(endpoint: str) -> dict[str, str]:
    """The standard boto3 variables that point every client at moto's server."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


AHEAD = 2  # vhosts made in advance, two at a time


class _VhostMaker:
    """Makes RabbitMQ virtual hosts with rabbitmqctl ahead of need: each rabbitmqctl run starts
    an Erlang VM (about a second), so the next tests' vhosts are made while the current test
    runs, and vhosts are deleted in the background. What is left at exit is deleted then."""

    def __init__(self, ctl: str) -> None:
        self.ctl = ctl
        self.pool = ThreadPoolExecutor(max_workers=AHEAD, thread_name_prefix="rabbitmq-vhost")
        self.ahead: list[Future[str]] = []
        self.deleting: list[subprocess.Popen[bytes]] = []
        atexit.register(self.finish)

    def _make(self) -> str:
        name = fresh_name("wacloud")
        # One VM start for both steps (add_vhost, then set_permissions, would be two).
        subprocess.run([self.ctl, "eval",
                        f'ok = rabbit_vhost:add(<<"{name}">>, <<"wacloud-tests">>), '
                        f'rabbit_auth_backend_internal:set_permissions(<<"guest">>, '
                        f'<<"{name}">>, <<".*">>, <<".*">>, <<".*">>, <<"wacloud-tests">>).'],
                       check=True, capture_output=True)
        return name

    def take(self) -> str:
        while len(self.ahead) <= AHEAD:
            self.ahead.append(self.pool.submit(self._make))
        return self.ahead.pop(0).result()

    def delete(self, name: str) -> None:
        self.deleting = [p for p in self.deleting if p.poll() is None]
        self.deleting.append(subprocess.Popen([self.ctl, "-q", "delete_vhost", name],
                                              stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL))

    def finish(self) -> None:
        for ahead in self.ahead:
            with contextlib.suppress(Exception):
                self.delete(ahead.result())
        for process in self.deleting:
            process.wait()
        self.pool.shutdown()


_vhost_maker: _VhostMaker | None = None


@contextlib.contextmanager
def fresh_rabbitmq_vhost() -> Iterator[str]:
    """A new RabbitMQ virtual host (created and deleted with rabbitmqctl); yields its amqp URL.
    Skips (or fails in CI) when RabbitMQ is not reachable."""
    global _vhost_maker
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        unreachable("RabbitMQ", exc)
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        unreachable("RabbitMQ", FileNotFoundError("rabbitmqctl is not installed"))
    if _vhost_maker is None:
        _vhost_maker = _VhostMaker(ctl)
    name = _vhost_maker.take()
    try:
        yield f"{RABBITMQ_URL}{name}"
    finally:
        _vhost_maker.delete(name)
