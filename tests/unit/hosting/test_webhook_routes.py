"""All of `/webhooks/*` is answered by the webhook receiver (`hosting/webhooks.py`): the POSTs
and the GET verification handshake, with a real SQLite registry and queue; anything else goes
to the app behind it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from wacloud.adapters.db.engines import create_engine
from wacloud.adapters.db.registry.store import Registry
from wacloud.adapters.queue.base import QueueSpec
from wacloud.adapters.queue.sqlite.broker import SqliteBroker
from wacloud.credentials.broker import CredentialsBroker
from wacloud.domain.model import Provider
from wacloud.hosting.webhooks import WebhookReceiver
from wacloud.security.crypto import SecretBox, new_key

VERIFY_TOKEN = "verify-token-abc"


async def fallback_page(_: object) -> PlainTextResponse:
    return PlainTextResponse("the app behind")


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    engine = create_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    registry = Registry(engine, SecretBox([new_key()]))
    registry.create_schema()
    registry.add_tenant("a")
    registry.add_channel(tenant="a", provider=Provider.META, key="111", token="tok",
                         app_secret="secret", verify_token=VERIFY_TOKEN)
    broker = CredentialsBroker(registry, tenants_dir=tmp_path / "tenants", cache_seconds=0)
    queues = SqliteBroker(tmp_path / "queues.db")
    app = Starlette(routes=[Route("/elsewhere", fallback_page)])
    receiver = WebhookReceiver(app, broker, queues.queue(QueueSpec("inbound.raw")), 1 << 20)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=receiver),
                                     base_url="http://gw") as found:
            yield found
    finally:
        await queues.close()
        broker.close()
        engine.dispose()


async def test_the_handshake_echoes_the_challenge_for_a_known_verify_token(
        client: httpx.AsyncClient) -> None:
    answer = await client.get("/webhooks/meta", params={
        "hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1158201444"})
    assert (answer.status_code, answer.text) == (200, "1158201444")
    assert answer.headers["content-type"] == "text/plain; charset=utf-8"


@pytest.mark.parametrize("params", [
    {"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "1"},
    {"hub.mode": "unsubscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1"},
    {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN},
    {},
])
async def test_the_handshake_refuses_anything_else(client: httpx.AsyncClient,
                                                   params: dict[str, str]) -> None:
    answer = await client.get("/webhooks/meta", params=params)
    assert (answer.status_code, answer.text) == (403, "forbidden")


async def test_other_methods_on_the_webhook_path_are_not_allowed(
        client: httpx.AsyncClient) -> None:
    answer = await client.put("/webhooks/meta", content=b"{}")
    assert answer.status_code == 405
    assert "GET" in answer.headers["allow"] and "POST" in answer.headers["allow"]


async def test_other_paths_go_to_the_app_behind(client: httpx.AsyncClient) -> None:
    assert (await client.get("/elsewhere")).text == "the app behind"
    assert (await client.get("/webhooks/whapi/CH1")).status_code == 404  # POST only
