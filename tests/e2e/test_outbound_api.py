"""The tenant API of a real `wacloud serve`: a retried POST is one row and one send; bodies
over the size limit are refused with a JSON 413; a validity is kept and shown; a tenant
database that is down answers 503 with Retry-After."""

from __future__ import annotations

import uuid
from datetime import datetime

import httpx
import psycopg

from tests.e2e.conftest import Harness
from tests.services import PG_HOST, PG_PORT, PG_USER, fresh_postgres_db


def test_a_retried_post_is_one_row_and_one_send(harness: Harness) -> None:
    tenant = harness.tenant()
    channel = harness.meta_channel(tenant)
    key = harness.api_key(tenant)
    to = f"55719{uuid.uuid4().int % 10**8:08d}"
    body = {"channel": channel.key, "to": to, "type": "text", "text": {"body": "OTP 4821"},
            "ttl_s": 600}
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": f"otp-{to}"}
    first = harness.client.post("/v1/messages", json=body, headers=headers)
    again = harness.client.post("/v1/messages", json=body, headers=headers)
    assert (first.status_code, again.status_code) == (201, 200), (first.text, again.text)
    assert again.json()["id"] == first.json()["id"]
    rows = harness.wait_outbox(tenant, lambda rows: all(r["status"] == 3
                                                        for r in rows.values()))
    assert list(rows) == [first.json()["id"]]
    late = harness.client.post("/v1/messages", json=body, headers=headers)
    assert late.status_code == 200 and late.json()["status"] == "accepted"
    assert len(harness.fake.sent_to(to)) == 1
    view = harness.client.get(f"/v1/messages/{first.json()['id']}",
                              headers={"Authorization": f"Bearer {key}"}).json()
    assert datetime.fromisoformat(view["expires_at"]) == datetime.fromisoformat(
        first.json()["expires_at"])


def test_a_body_over_the_limit_is_a_json_413(harness: Harness) -> None:
    tenant = harness.tenant()
    channel = harness.meta_channel(tenant)
    key = harness.api_key(tenant)
    answer = harness.client.post("/v1/messages", headers={"Authorization": f"Bearer {key}"},
                                 json={"channel": channel.key, "to": "5511987654321",
                                       "type": "text", "text": {"body": "x" * 70_000}})
    assert answer.status_code == 413 and "65536" in answer.json()["error"]
    bad = harness.client.post("/v1/messages", headers={"Authorization": f"Bearer {key}"},
                              content=b"\xff\xfe not utf-8")
    assert bad.status_code == 400 and bad.json()["error"] == "the body is not UTF-8"
    assert harness.outbox(tenant) == {}


def test_a_tenant_database_down_is_a_503_to_retry(harness: Harness) -> None:
    """Found by bench/chaos.py: a POST while the tenant DB refused connections (or its disk was
    full) answered 500 with a traceback in the log; it is a JSON 503 with Retry-After, and the
    same POST succeeds once the database is back."""
    log_start = harness.gateway.log_path.stat().st_size
    with fresh_postgres_db() as url:
        name = url.rsplit("/", 1)[1]
        tenant = f"pgdown-{uuid.uuid4().hex[:6]}"
        harness.registry.add_tenant(tenant, url)
        channel = harness.meta_channel(tenant)
        headers = {"Authorization": f"Bearer {harness.api_key(tenant)}"}

        def post(n: int) -> httpx.Response:
            return harness.client.post("/v1/messages", headers=headers, json={
                "channel": channel.key, "to": "5511987650000", "type": "text",
                "text": {"body": f"pedido {n}"}})

        assert post(1).status_code == 201
        with psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres",
                             autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                          " WHERE datname = %s", (name,))
            try:
                down = post(2)
                assert down.status_code == 503, down.text
                assert down.headers["retry-after"] == "1"
                assert down.json() == {"error": "the tenant database is unavailable; retry later"}
                assert harness.client.get("/v1/messages/1", headers=headers).status_code == 503
            finally:
                admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        assert post(3).status_code == 201
        with harness.gateway.log_path.open("rb") as handle:
            handle.seek(log_start)
            assert b"Traceback" not in handle.read()
