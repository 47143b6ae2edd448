"""Fault controls of the fake provider used by the chaos harness: dropped send connections,
slow answers recorded with their delay, stalled and damaged media downloads over HTTP."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator

import httpx
import pytest

from wacloud.testing.fake_provider import FakeProvider, FakeProviderServer

TOKEN = "secret-test-token-faults"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SEND = "/v23.0/1065403522001/messages"
TEXT = {"messaging_product": "whatsapp", "to": "5511987654321", "type": "text",
        "text": {"body": "Olá"}}


@pytest.fixture(scope="module")
def server() -> Iterator[FakeProviderServer]:
    with FakeProviderServer(FakeProvider(token=TOKEN)) as srv:
        yield srv


@pytest.fixture
def client(server: FakeProviderServer) -> Iterator[httpx.Client]:
    server.provider.reset()
    with httpx.Client(base_url=server.base_url, timeout=10.0) as c:
        yield c
    server.provider.reset()


def download(client: httpx.Client, media_id: str, timeout: float = 10.0) -> bytes:
    url = client.get(f"/v23.0/{media_id}", headers=AUTH).json()["url"]
    return client.get(url, headers=AUTH, timeout=timeout).content


def test_dropped_send_is_a_network_error_and_not_taken(server: FakeProviderServer,
                                                      client: httpx.Client) -> None:
    answer = client.post("/_fake/script", json={"times": 1, "status": 200, "drop": True})
    assert answer.status_code == 201 and answer.json()["drop"] is True
    with pytest.raises(httpx.HTTPError):
        client.post(SEND, json=TEXT, headers=AUTH)
    assert client.post(SEND, json=TEXT, headers=AUTH).status_code == 200
    sent = client.get("/_fake/sent").json()["sent"]
    assert [s["status"] for s in sent] == [0, 200]
    assert client.post("/_fake/script", json={"times": 1, "status": 200,
                                              "drop": "yes"}).status_code == 400


def test_slow_answer_is_recorded_with_its_delay(client: httpx.Client) -> None:
    client.post("/_fake/script", json={"times": 1, "status": 200, "delay": 0.2})
    assert client.post(SEND, json=TEXT, headers=AUTH).status_code == 200
    assert client.post(SEND, json=TEXT, headers=AUTH).status_code == 200
    assert [s["delay"] for s in client.get("/_fake/sent").json()["sent"]] == [0.2, 0.0]


def test_stalled_download_waits_after_its_first_bytes(client: httpx.Client) -> None:
    media = client.post("/_fake/media", params={"mime_type": "image/jpeg", "size": 200_000}
                        ).json()
    assert client.post("/_fake/stall", json={"media_id": media["id"], "times": 1,
                                             "seconds": 5}).status_code == 200
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        download(client, media["id"], timeout=0.5)
    assert time.monotonic() - started < 3
    data = download(client, media["id"])  # the stall was used up
    assert hashlib.sha256(data).hexdigest() == media["sha256_hex"]
    assert client.post("/_fake/stall", json={"media_id": "nope", "times": 1,
                                             "seconds": 1}).status_code == 404
    assert client.post("/_fake/stall", json={"media_id": media["id"]}).status_code == 400


def test_damage_over_http_then_repaired(client: httpx.Client) -> None:
    media = client.post("/_fake/media", params={"mime_type": "image/jpeg", "size": 5_000}).json()
    assert client.post("/_fake/damage", json={"media_id": media["id"]}).status_code == 200
    damaged = download(client, media["id"])
    assert len(damaged) == 5_000 and hashlib.sha256(damaged).hexdigest() != media["sha256_hex"]
    client.post("/_fake/damage", json={"media_id": media["id"], "damaged": False})
    assert hashlib.sha256(download(client, media["id"])).hexdigest() == media["sha256_hex"]
    assert client.post("/_fake/damage", json={"media_id": "nope"}).status_code == 404
