"""Fixtures shared by every test folder: fresh databases on the real database servers, a fresh
RabbitMQ virtual host, moto's server for SQS and S3."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.services import (
    aws_environment,
    fresh_mariadb_db,
    fresh_postgres_db,
    fresh_rabbitmq_vhost,
    moto_server,
)

# Statements of the database suites must compile for SQL Server too (see the plugin).
pytest_plugins = ["tests.mssql_compile"]

TENANT_BACKENDS = ["sqlite", "postgresql", "mariadb"]

# `make test` runs pytest on two processes (pytest-xdist, `-n 2 --dist loadscope`), scheduled by
# `pytest_xdist_make_scheduler` below: an end-to-end module goes to one process whole (its
# module-scoped gateway starts once), every other test on its own, and these modules, which
# load the machine or wait out timeouts, leases and rates against deadlines, form one unit:
# they run one after another on one process, never beside each other.
HEAVY_MODULES = frozenset(f"tests/e2e/{name}.py" for name in (
    "test_chaos_short", "test_chaos_distributed_short", "test_crash_recovery", "test_graceful",
    "test_nothing_stranded", "test_outbound", "test_outbound_crash", "test_outbound_rate",
    "test_stage_workers"))


def suite_scope(nodeid: str) -> str:
    """The unit of work a test belongs to: "heavy", its e2e module, or itself."""
    path = nodeid.split("::", 1)[0]
    if path in HEAVY_MODULES:
        return "heavy"
    return path if path.startswith("tests/e2e/") else nodeid


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """With `--dist loadscope`, the units of `suite_scope` (pytest-xdist's `loadgroup` marks
    cannot rename pytest 9's nodes, so units are chosen here, from the node ids)."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SuiteScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return suite_scope(nodeid)

    return SuiteScheduling(config, log)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """URL of a fresh PostgreSQL database, dropped after the test."""
    with fresh_postgres_db() as url:
        yield url


@pytest.fixture
def mariadb_url() -> Iterator[str]:
    """URL of a fresh MariaDB database, dropped after the test."""
    with fresh_mariadb_db() as url:
        yield url


@pytest.fixture(params=TENANT_BACKENDS)
def tenant_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty tenant database URL on each supported database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tenant.db'}"
    fixture = "postgres_url" if request.param == "postgresql" else "mariadb_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's server for the whole session (SQS and S3 over HTTP): its endpoint URL."""
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def aws_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The boto3 environment (endpoint, fake credentials, region) pointing at moto's server,
    set for this test and returned for child processes."""
    env = aws_environment(moto_endpoint)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def rabbitmq_url() -> Iterator[str]:
    """amqp URL of a fresh RabbitMQ virtual host, deleted after the test."""
    with fresh_rabbitmq_vhost() as url:
        yield url
