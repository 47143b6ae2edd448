"""Fixtures shared by every test folder: fresh databases on the real database servers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import fresh_mariadb_db, fresh_postgres_db

TENANT_BACKENDS = ["sqlite", "postgresql", "mariadb"]


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
