"""The tenant API over real HTTP (uvicorn on a local port), against a real SQLite registry and
real SQLite tenant databases: idempotent POSTs, body limits, validity."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import uvicorn
from starlette.applications import Starlette

from wacloud.adapters.db.engines import create_engine
from wacloud.adapters.db.registry.api_keys import create_api_key
from wacloud.adapters.db.registry.store import Registry
from wacloud.adapters.db.tenant import tables as t
from wacloud.credentials.broker import CredentialsBroker
from wacloud.domain.model import Provider
from wacloud.hosting.api import api_routes
from wacloud.security.crypto import SecretBox, new_key

PN_A, PN_B = "106540352242922", "106540352242923"
LIMIT = 4096


@dataclass
class Api:
    client: httpx.Client
    broker: CredentialsBroker
    keys: dict[str, str]
    wakes: list[str]

    def post(self, tenant: str, body: Any = None, *, key: str | None = None,
             content: Any = None, headers: dict[str, str] | None = None) -> httpx.Response:
        sent = {"Authorization": f"Bearer {self.keys[tenant]}", **(headers or {})}
        if key is not None:
            sent["Idempotency-Key"] = key
        if content is not None:
            return self.client.post("/v1/messages", content=content, headers=sent)
        return self.client.post("/v1/messages", json=body, headers=sent)

    def get(self, tenant: str, row_id: int) -> dict[str, Any]:
        answer = self.client.get(f"/v1/messages/{row_id}",
                                 headers={"Authorization": f"Bearer {self.keys[tenant]}"})
        assert answer.status_code == 200, answer.text
        data: dict[str, Any] = answer.json()
        return data

    def row_count(self, tenant: str) -> int:
        with self.broker.tenant_store(tenant).engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(
                t.outbound_messages)).scalar() or 0)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    registry = Registry(create_engine(f"sqlite:///{tmp_path / 'registry.db'}"),
                        SecretBox([new_key()]))
    registry.create_schema()
    keys = {}
    for slug, channel in (("acme", PN_A), ("beta", PN_B)):
        registry.add_tenant(slug)
        registry.add_channel(tenant=slug, provider=Provider.META, key=channel,
                             phone_number_id=channel, waba_id=f"W-{slug}",
                             display_number="5511940001234", token=f"tok-{slug}")
        keys[slug] = create_api_key(registry, tenant=slug)[1]
    broker = CredentialsBroker(registry, tenants_dir=tmp_path / "tenants", cache_seconds=0)
    broker.refresh(force=True)
    wakes: list[str] = []
    app = Starlette(routes=api_routes(broker, wakes.append, max_body_bytes=LIMIT))
    with serve(app) as base_url, httpx.Client(base_url=base_url, timeout=10) as client:
        yield Api(client, broker, keys, wakes)
    broker.close()
    registry.engine.dispose()


@contextlib.contextmanager
def serve(app: Starlette) -> Iterator[str]:
    """Run `app` under uvicorn on a free local port in a thread; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def text(body: str = "Seu código: 123456", channel: str = PN_A, **extra: Any) -> dict[str, Any]:
    return {"channel": channel, "to": "5511987654321", "type": "text", "text": {"body": body},
            **extra}


def test_a_retried_post_gets_the_first_row_back(api: Api) -> None:
    first = api.post("acme", text(client_reference="otp-1"), key="otp-1")
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    again = api.post("acme", text(client_reference="otp-1"), key="otp-1")
    assert again.status_code == 200, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    # The same JSON spaced and ordered differently is the same request.
    same = api.post("acme", content=b'{"type":"text", "client_reference": "otp-1",'
                    b' "text":{"body":"Seu c\\u00f3digo: 123456"},"to":"5511987654321",'
                    b'"channel":"' + PN_A.encode() + b'"}', key="otp-1")
    assert same.status_code == 200 and same.json()["id"] == first.json()["id"]
    assert api.row_count("acme") == 1
    assert api.wakes == ["acme"]  # its own tenant, and retries do not wake it again


def test_the_same_key_with_another_body_is_a_conflict(api: Api) -> None:
    first = api.post("acme", text(), key="k-1")
    other = api.post("acme", text("outro texto"), key="k-1")
    assert other.status_code == 409
    assert other.headers["content-type"] == "application/json"
    assert other.json()["id"] == first.json()["id"]
    assert "Idempotency-Key" in other.json()["error"]
    assert api.row_count("acme") == 1


def test_keys_belong_to_one_tenant_and_no_key_means_a_new_row(api: Api) -> None:
    a = api.post("acme", text(), key="shared")
    b = api.post("beta", text(channel=PN_B), key="shared")
    assert a.status_code == b.status_code == 201
    assert api.post("acme", text()).status_code == 201
    assert api.post("acme", text()).status_code == 201
    assert api.row_count("acme") == 3 and api.row_count("beta") == 1


@pytest.mark.parametrize("key", ["", "x" * 192, "não-ascii", "tab\there"])
def test_a_malformed_idempotency_key_is_refused(api: Api, key: str) -> None:
    answer = api.client.post("/v1/messages", json=text(), headers={
        "Authorization": f"Bearer {api.keys['acme']}",
        "Idempotency-Key": key.encode("utf-8")})
    assert answer.status_code == 400 and "Idempotency-Key" in answer.json()["error"]
    assert api.row_count("acme") == 0


def test_a_body_over_the_limit_is_413_with_or_without_content_length(api: Api) -> None:
    big = text("x" * 4100)
    answer = api.post("acme", big)
    assert answer.status_code == 413 and "4096" in answer.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the size is counted as it comes
        yield b'{"channel": "' + PN_A.encode() + b'", "type": "text", "text": {"body": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}}'
    answer = api.post("acme", content=chunks())
    assert answer.status_code == 413 and answer.json()["error"]
    assert api.row_count("acme") == 0
    assert api.post("acme", text("x" * 3000)).status_code == 201


@pytest.mark.parametrize("body, reason", [
    (b'{"channel": "\xff\xfe"}', "not UTF-8"),
    (b"\xff\xfe{\x00}\x00", "not UTF-8"),  # UTF-16 with a BOM: json.loads would take it
    (b"hello", "not JSON"),
    (b"", "not JSON"),
    (b'{"channel": "a"} trailing', "not JSON"),
    (b"[" * 3000, "not JSON"),  # nesting deeper than the parser's recursion limit
    (b'{"channel": "\\ud800"}', "not JSON"),  # a lone surrogate no database stores
])
def test_a_body_that_is_not_utf8_json_is_a_400_json_error(api: Api, body: bytes,
                                                          reason: str) -> None:
    answer = api.post("acme", content=body)
    assert answer.status_code == 400, answer.text
    assert reason in answer.json()["error"]


def test_a_context_that_is_not_an_object_is_422_not_500(api: Api) -> None:
    answer = api.post("acme", text(context="wamid.X"))
    assert answer.status_code == 422 and "context" in answer.json()["error"]


def test_ttl_s_sets_the_expiry_shown_by_get(api: Api) -> None:
    before = datetime.now(UTC)
    answer = api.post("acme", text(ttl_s=300))
    assert answer.status_code == 201, answer.text
    posted = datetime.fromisoformat(answer.json()["expires_at"])
    assert before + timedelta(seconds=299) <= posted <= datetime.now(UTC) + timedelta(
        seconds=301)
    view = api.get("acme", answer.json()["id"])
    assert datetime.fromisoformat(view["expires_at"]) == posted
    plain = api.post("acme", text()).json()
    assert plain["expires_at"] is None and api.get("acme", plain["id"])["expires_at"] is None


def test_expires_at_takes_iso_8601_or_unix_seconds(api: Api) -> None:
    at = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    forms: list[Any] = [at.isoformat().replace("+00:00", "Z"),
                        at.astimezone(timezone_minus_3()).isoformat(),
                        at.replace(tzinfo=None).isoformat(),  # no offset: UTC
                        int(at.timestamp()), at.timestamp()]
    for form in forms:
        answer = api.post("acme", text(expires_at=form))
        assert answer.status_code == 201, (form, answer.text)
        stored = api.get("acme", answer.json()["id"])["expires_at"]
        assert datetime.fromisoformat(stored) == at, form


def timezone_minus_3() -> timezone:
    return timezone(timedelta(hours=-3))


@pytest.mark.parametrize("extra", [
    {"ttl_s": 0}, {"ttl_s": -5}, {"ttl_s": "60"}, {"ttl_s": True}, {"ttl_s": 31 * 86400},
    {"ttl_s": 60, "expires_at": int(time.time()) + 60},
    {"expires_at": "tomorrow"}, {"expires_at": int(time.time()) - 10},
    {"expires_at": "2001-01-01T00:00:00Z"}, {"expires_at": 1e300}, {"expires_at": []},
])
def test_an_invalid_validity_is_422(api: Api, extra: dict[str, Any]) -> None:
    answer = api.post("acme", text(**extra))
    assert answer.status_code == 422, answer.text
    assert "ttl_s" in answer.json()["error"] or "expires_at" in answer.json()["error"]
    assert api.row_count("acme") == 0
