"""Every statement the tenant store, outbox, claim, submissions, views (message search),
privacy and registry issue compiles for SQL Server: their suites run again on SQLite with the
`tests.mssql_compile` plugin, which compiles each executed statement for mssql+pymssql and
fails a test whose statements do not compile (no SQL Server can run here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]
SUITES = [
    "tests/contract/test_tenant_store_contract.py",
    "tests/contract/test_outbox_contract.py",
    "tests/contract/test_claim_contract.py",
    "tests/contract/test_submissions_contract.py",
    "tests/contract/test_message_search_contract.py",
    "tests/contract/test_credentials_registry_contract.py",
    "tests/unit/adapters/db/tenant/test_privacy.py",
    "tests/unit/privacy",
]


def test_the_database_suites_statements_compile_for_sql_server() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.mssql_compile",
         "-p", "no:cacheprovider", "-k", "sqlite or not (postgresql or mariadb)", *SUITES],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    tail = result.stdout[-4000:]
    assert result.returncode == 0, tail
    compiled = [line for line in result.stdout.splitlines() if line.startswith("mssql: ")]
    assert compiled and int(compiled[0].split()[1]) > 300, tail  # the plugin did run
