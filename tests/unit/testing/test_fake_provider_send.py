"""Tests of the fake provider's outbound side over real HTTP (uvicorn thread + httpx)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from wacloud.testing.fake_provider import FakeProvider, FakeProviderServer
from wacloud.testing.fake_provider.send_metrics import max_in_window

TOKEN = "send-test-token-456"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PNID = "109876543210"
TO = "5511987654321"
PLUGIN = "3f1c2a7e-0000-4000-8000-000000000001"
CHAKRA_SEND = f"/v1/ext/plugin/whatsapp/{PLUGIN}/api/v23.0/{PNID}/messages"


@pytest.fixture(scope="module")
def server() -> Iterator[FakeProviderServer]:
    with FakeProviderServer(FakeProvider(token=TOKEN)) as srv:
        yield srv


@pytest.fixture
def fake(server: FakeProviderServer) -> Iterator[FakeProvider]:
    server.provider.reset()
    yield server.provider
    server.provider.reset()


@pytest.fixture
def client(server: FakeProviderServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=10.0) as c:
        yield c


def meta_text(to: str = TO, body: str = "Olá") -> dict[str, Any]:
    return {"messaging_product": "whatsapp", "to": to, "type": "text", "text": {"body": body}}


def meta_send(
    client: httpx.Client, payload: dict[str, Any] | None = None, pnid: str = PNID
) -> httpx.Response:
    return client.post(f"/v23.0/{pnid}/messages", json=payload or meta_text(), headers=AUTH)


def test_meta_send_shape_and_record(fake: FakeProvider, client: httpx.Client) -> None:
    response = meta_send(client)
    assert response.status_code == 200
    body = response.json()
    assert body["messaging_product"] == "whatsapp"
    assert body["contacts"] == [{"input": TO, "wa_id": TO}]
    [message] = body["messages"]
    assert message["id"].startswith("wamid.") and message["message_status"] == "accepted"
    assert meta_send(client).json()["messages"][0]["id"] != message["id"]

    first = fake.sent[0]
    assert (first.provider, first.sender, first.recipient, first.type) == ("meta", PNID, TO, "text")
    assert first.body == meta_text()
    assert first.status == 200 and first.accepted and first.message_id == message["id"]
    assert first.path == f"/v23.0/{PNID}/messages"
    assert abs(first.time - time.time()) < 5 and first.monotonic <= time.monotonic()
    assert fake.sent_ids() == [m.message_id for m in fake.sent]
    assert len(fake.sent_to(TO)) == 2 and fake.sent_to("other") == []


def test_meta_send_by_bsuid_and_mark_read(fake: FakeProvider, client: httpx.Client) -> None:
    bsuid = {"messaging_product": "whatsapp", "recipient": "BR.abc123", "type": "text"}
    assert meta_send(client, bsuid).json()["contacts"] == [{"input": "BR.abc123"}]
    read = {"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.X"}
    response = meta_send(client, read)
    assert response.status_code == 200 and response.json() == {"success": True}
    assert fake.sent[-1].type == "read" and fake.sent[-1].message_id is None
    assert fake.max_rate_per_sender() == {PNID: 1}  # mark-read is not a message


def test_meta_send_auth_and_validation(fake: FakeProvider, client: httpx.Client) -> None:
    url = f"/v23.0/{PNID}/messages"
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        response = client.post(url, json=meta_text(), headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == 190
    bad = [
        {"to": TO, "type": "text"},
        {"messaging_product": "whatsapp", "type": "text"},
        {"messaging_product": "whatsapp", "status": "read"},
    ]
    for payload in bad:
        response = client.post(url, json=payload, headers=AUTH)
        assert response.status_code == 400
        assert response.json()["error"]["code"] == 100
    assert client.post(url, content=b"not json", headers=AUTH).status_code == 400
    assert fake.sent == []  # rejected requests are only in fake.requests
    assert len(fake.requests) == 6


def test_sender_token(fake: FakeProvider, client: httpx.Client) -> None:
    fake.set_sender_token("555", "tenant-b-token")
    other = {"Authorization": "Bearer tenant-b-token"}
    path = "/v23.0/555/messages"
    assert client.post(path, json=meta_text(), headers=AUTH).status_code == 401
    assert client.post(path, json=meta_text(), headers=other).status_code == 200
    assert meta_send(client, pnid="556").status_code == 200  # others keep the default token


def test_meta_upload_then_download(fake: FakeProvider, client: httpx.Client) -> None:
    data = bytes(range(256)) * 40 + b"\r\n--\r\n\r\n"
    response = client.post(
        f"/v23.0/{PNID}/media",
        data={"messaging_product": "whatsapp", "type": "image/jpeg"},
        files={"file": ("photo.jpg", data, "image/jpeg")},
        headers=AUTH,
    )
    assert response.status_code == 200
    media_id = response.json()["id"]
    resolved = client.get(f"/v23.0/{media_id}", headers=AUTH).json()
    assert resolved["sha256"] == hashlib.sha256(data).hexdigest()
    assert resolved["mime_type"] == "image/jpeg"
    assert client.get(resolved["url"], headers=AUTH).content == data

    no_auth = client.post(
        f"/v23.0/{PNID}/media",
        data={"messaging_product": "whatsapp", "type": "image/jpeg"},
        files={"file": ("p.jpg", b"x", "image/jpeg")},
    )
    assert no_auth.status_code == 401
    missing = client.post(
        f"/v23.0/{PNID}/media", data={"messaging_product": "whatsapp"}, headers=AUTH
    )
    assert missing.status_code == 400


@pytest.mark.parametrize("kind", ["text", "image", "poll", "link_preview", "voice"])
def test_whapi_send_shape(fake: FakeProvider, client: httpx.Client, kind: str) -> None:
    response = client.post(f"/messages/{kind}", json={"to": TO, "body": "oi"}, headers=AUTH)
    assert response.status_code == 200
    body = response.json()
    assert body["sent"] is True
    message = body["message"]
    assert message["from_me"] is True and message["type"] == kind
    assert message["chat_id"] == f"{TO}@s.whatsapp.net"
    assert message["status"] == "pending"
    assert abs(message["timestamp"] - time.time()) < 5
    record = fake.sent[-1]
    assert record.provider == "whapi" and record.message_id == message["id"]
    assert record.sender == FakeProvider.fingerprint(TOKEN)


def test_whapi_send_variants(fake: FakeProvider, client: httpx.Client) -> None:
    group = "120363000000000000@g.us"
    by_query = client.post(
        "/messages/text", json={"to": group, "body": "x"}, params={"token": TOKEN}
    )
    assert by_query.json()["message"]["chat_id"] == group
    assert fake.sent_to("120363000000000000")[0].recipient == group

    multipart = client.post(
        "/messages/document",
        data={"to": TO, "caption": "NF"},
        files={"media": ("nf.pdf", b"%PDF-1.4", "application/pdf")},
        headers=AUTH,
    )
    assert multipart.status_code == 200
    assert fake.sent[-1].body["media"] == {
        "filename": "nf.pdf",
        "mime_type": "application/pdf",
        "size": 8,
    }

    assert client.post("/messages/text", json={"to": TO}).status_code == 401
    assert client.post("/messages/bogus", json={"to": TO}, headers=AUTH).status_code == 404
    missing_to = client.post("/messages/text", json={"body": "x"}, headers=AUTH)
    assert missing_to.status_code == 400
    assert missing_to.json() == {"error": {"code": 400, "message": "to is required"}}

    fake.set_whapi_channel("channel-token-b", "CHANNEL-B")
    other = {"Authorization": "Bearer channel-token-b"}
    assert client.post("/messages/text", json={"to": TO}, headers=other).status_code == 200
    assert fake.sent[-1].sender == "CHANNEL-B"


def test_whapi_mark_read_and_reaction(fake: FakeProvider, client: httpx.Client) -> None:
    read = client.put("/messages/PsqXn5SAD5v7HRA", headers=AUTH)
    assert read.status_code == 200 and read.json() == {"success": True}
    react = client.put("/messages/PsqXn5SAD5v7HRA/reaction", json={"emoji": "👍"}, headers=AUTH)
    assert react.status_code == 200 and react.json() == {"success": True}
    assert [(m.type, m.body["message_id"]) for m in fake.sent] == [
        ("read", "PsqXn5SAD5v7HRA"),
        ("reaction", "PsqXn5SAD5v7HRA"),
    ]
    assert client.put("/messages/x/reaction", json={}, headers=AUTH).status_code == 400
    assert client.put("/messages/x").status_code == 401


def test_chakra_send_and_public_upload(fake: FakeProvider, client: httpx.Client) -> None:
    response = client.post(CHAKRA_SEND, json=meta_text(), headers=AUTH)
    assert response.status_code == 200
    body = response.json()
    assert body["_data"]["whatsappMessageId"].startswith("wamid.")
    assert body["_meta"] == {} and body["_errors"] == []
    assert fake.sent[-1].sender == PLUGIN and fake.sent[-1].provider == "chakra"
    unauthorized = client.post(CHAKRA_SEND, json=meta_text())
    assert unauthorized.status_code == 401 and unauthorized.json()["_data"] is None

    upload = client.post(
        f"/v1/ext/plugin/whatsapp/{PLUGIN}/upload-public-media",
        data={"filename": "nota fiscal.pdf"},
        files={"file": ("x.pdf", b"%PDF-public", "application/pdf")},
        headers=AUTH,
    )
    assert upload.status_code == 200
    url = upload.json()["_data"]["publicMediaUrl"]
    assert url.startswith(f"{client.base_url}/chakra-public-media/")
    assert url.endswith("/nota_fiscal.pdf")
    public = httpx.get(url)  # no auth
    assert public.content == b"%PDF-public"
    assert public.headers["content-type"] == "application/pdf"
    assert client.get("/chakra-public-media/nope/x.pdf").status_code == 404


def test_hosted_files(fake: FakeProvider, client: httpx.Client) -> None:
    path = fake.add_file("docs/nf.pdf", b"%PDF-hosted", "application/pdf")
    assert path == "/files/docs/nf.pdf"
    response = client.get(path)
    assert response.content == b"%PDF-hosted"
    assert response.headers["content-type"] == "application/pdf"
    assert client.get("/files/missing.pdf").status_code == 404
    with pytest.raises(ValueError):
        fake.add_file("../etc/passwd", b"")


def test_scripted_meta_errors_then_success(fake: FakeProvider, client: httpx.Client) -> None:
    fake.script(TO, times=2, status=400, error_code=131056, retry_after=2)
    other = meta_send(client, meta_text(to="5521999990000"))
    assert other.status_code == 200  # the script matches TO only
    for _ in range(2):
        response = meta_send(client)
        assert response.status_code == 400
        assert response.headers["retry-after"] == "2"
        error = response.json()["error"]
        assert error["code"] == 131056 and error["type"] == "OAuthException"
        assert error["message"].startswith("(#131056) ")
        assert error["error_data"]["messaging_product"] == "whatsapp"
        assert error["error_data"]["details"] and error["fbtrace_id"]
    assert meta_send(client).status_code == 200
    assert [m.status for m in fake.sent_to(TO)] == [400, 400, 200]
    assert [m.message_id is None for m in fake.sent_to(TO)] == [True, True, False]


def test_scripted_by_sender_and_provider(fake: FakeProvider, client: httpx.Client) -> None:
    fake.script(PLUGIN, times=1, status=503, error_message="down")
    fake.script(times=1, status=429, provider="whapi", retry_after=0.5)
    fake.script(times=1, status=500, error_code=131000)
    chakra = client.post(CHAKRA_SEND, json=meta_text(), headers=AUTH)
    assert chakra.status_code == 503
    assert chakra.json() == {
        "_data": None,
        "_meta": {},
        "_errors": [{"code": 503, "message": "down"}],
    }
    whapi = client.post("/messages/text", json={"to": TO}, headers=AUTH)
    assert whapi.status_code == 429 and whapi.headers["retry-after"] == "0.5"
    assert whapi.json()["error"]["code"] == 429
    meta = meta_send(client)
    assert meta.status_code == 500 and "retry-after" not in meta.headers
    assert meta_send(client).status_code == 200
    assert fake.pending_scripts() == []


def test_scripted_delay(fake: FakeProvider, client: httpx.Client) -> None:
    fake.script(times=1, status=200, delay=0.3)
    started = time.monotonic()
    assert meta_send(client).status_code == 200  # slow success
    assert time.monotonic() - started >= 0.3
    fake.script(times=1, status=500, delay=0.2)
    started = time.monotonic()
    assert meta_send(client).status_code == 500
    assert time.monotonic() - started >= 0.2
    with pytest.raises(ValueError):
        fake.script(times=0, status=500)


def test_delay_does_not_block_other_sends(fake: FakeProvider, server: FakeProviderServer) -> None:
    fake.script("slow-recipient", times=1, status=200, delay=1.0)

    def send(to: str) -> float:
        with httpx.Client(base_url=server.base_url, timeout=10.0) as c:
            started = time.monotonic()
            meta_send(c, meta_text(to=to))
            return time.monotonic() - started

    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(send, "slow-recipient")
        time.sleep(0.05)
        fast = pool.submit(send, TO)
        assert fast.result() < 0.9
        assert slow.result() >= 1.0


def test_rate_measurement(fake: FakeProvider, client: httpx.Client) -> None:
    for i in range(30):
        assert meta_send(client, meta_text(body=f"m{i}")).status_code == 200
    fake.script(times=5, status=429)
    for _ in range(5):
        meta_send(client)  # rejected sends do not count
    client.post("/messages/text", json={"to": TO}, headers=AUTH)
    times = [m.monotonic for m in fake.sent if m.accepted and m.sender == PNID]
    span = max(times) - min(times)
    rates = fake.max_rate_per_sender(window=span + 1.0)
    assert rates == {PNID: 30, FakeProvider.fingerprint(TOKEN): 1}
    assert fake.max_rate_per_recipient(window=span + 1.0) == {TO: 31}
    assert fake.max_rate_per_sender(window=1e-9)[PNID] == 1


def test_max_in_window_is_exact() -> None:
    assert max_in_window([], 1.0) == 0
    assert max_in_window([0.0, 0.5, 0.99, 1.0, 1.5, 1.6], 1.0) == 4  # [0.99, 1.0, 1.5, 1.6]
    assert max_in_window([3.0, 0.0, 1.0, 2.0], 1.0) == 1  # half-open window
    assert max_in_window([0.0] * 7, 0.001) == 7


def test_duplicates(fake: FakeProvider, client: httpx.Client) -> None:
    meta_send(client)
    meta_send(client)
    meta_send(client, meta_text(body="different"))
    fake.script(times=1, status=500)
    meta_send(client)  # a failed attempt is not a duplicate delivery
    [group] = fake.duplicates()
    assert len(group) == 2 and group[0].body == group[1].body == meta_text()


def test_http_control_endpoints(
    fake: FakeProvider, client: httpx.Client, server: FakeProviderServer
) -> None:
    created = client.post(
        "/_fake/script",
        json={"match": TO, "times": 1, "status": 400, "error_code": 131047, "retry_after": 3},
    )
    assert created.status_code == 201 and created.json()["error_code"] == 131047
    assert client.post("/_fake/script", json={"times": 1}).status_code == 400
    assert client.post("/_fake/script", json={"times": 1, "status": "x"}).status_code == 400
    assert client.post("/_fake/script", json={"times": 0, "status": 500}).status_code == 400
    bad_provider = {"times": 1, "status": 500, "provider": "x"}
    assert client.post("/_fake/script", json=bad_provider).status_code == 400

    assert client.get("/_fake/sent").json()["pending_scripts"][0]["match"] == TO
    assert meta_send(client).json()["error"]["code"] == 131047
    meta_send(client)
    meta_send(client)

    summary = client.get("/_fake/sent", params={"limit": "2", "window": "60"}).json()
    assert summary["count"] == 3 and len(summary["sent"]) == 2
    assert summary["max_rate_per_sender"] == {PNID: 2}
    assert summary["max_rate_per_recipient"] == {TO: 2}
    assert summary["duplicates"] == 1 and summary["window"] == 60
    assert summary["sent"][-1]["status"] == 200 and summary["pending_scripts"] == []
    assert client.get("/_fake/sent", params={"window": "0"}).status_code == 400

    added = client.post(
        "/_fake/files", params={"name": "a.png", "mime_type": "image/png"}, content=b"png"
    )
    assert added.status_code == 201 and added.json()["url"] == server.url("/files/a.png")
    assert client.get("/files/a.png").content == b"png"

    channel = client.post("/_fake/whapi-channel", json={"token": "wt", "channel_id": "CH-1"})
    assert channel.status_code == 200 and "wt" not in channel.text
    client.post("/messages/text", json={"to": TO}, headers={"Authorization": "Bearer wt"})
    assert fake.sent[-1].sender == "CH-1"
    sender = client.post("/_fake/sender-token", json={"sender": "777", "token": "t7"})
    assert sender.status_code == 200
    assert meta_send(client, pnid="777").status_code == 401

    assert client.post("/_fake/reset").status_code == 200
    assert fake.sent == [] and fake.pending_scripts() == []
    assert client.get("/files/a.png").status_code == 404
    assert client.get("/_fake/sent").json()["count"] == 0
    assert meta_send(client, pnid="777").status_code == 200
