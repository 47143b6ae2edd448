"""Tests of the fake provider over real HTTP (uvicorn in a thread, httpx as the client)."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from wacloud.testing.fake_provider import (
    CHUNK_SIZE,
    DEFAULT_TOKEN,
    FakeProvider,
    FakeProviderServer,
)

TOKEN = "secret-test-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


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


def resolve(client: httpx.Client, media_id: str, headers: dict[str, str] = AUTH) -> httpx.Response:
    return client.get(f"/v23.0/{media_id}", headers=headers)


def test_meta_resolve_then_download(fake: FakeProvider, client: httpx.Client) -> None:
    data = b"\xff\xd8fake jpeg bytes" * 100
    media = fake.add_media(data, mime_type="image/jpeg")

    meta = resolve(client, media.id)
    assert meta.status_code == 200
    body = meta.json()
    assert body["messaging_product"] == "whatsapp"
    assert body["id"] == media.id
    assert body["mime_type"] == "image/jpeg"
    assert body["file_size"] == len(data)
    assert body["sha256"] == hashlib.sha256(data).hexdigest() == media.sha256_hex
    assert body["url"].startswith(f"{client.base_url}/meta-cdn/{media.id}?ext=")
    assert "&hash=" in body["url"]

    download = client.get(body["url"], headers=AUTH)
    assert download.status_code == 200
    assert download.content == data
    assert download.headers["content-type"] == "image/jpeg"
    assert download.headers["content-length"] == str(len(data))


def test_missing_or_wrong_token_is_401(fake: FakeProvider, client: httpx.Client) -> None:
    media = fake.add_media(b"abc", mime_type="audio/ogg")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        response = resolve(client, media.id, headers)
        assert response.status_code == 401
        error = response.json()["error"]
        assert error["type"] == "OAuthException"
        assert error["code"] == 190
        assert error["message"]

    url = resolve(client, media.id).json()["url"]
    assert client.get(url).status_code == 401
    assert client.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_per_media_token_and_set_token(fake: FakeProvider, client: httpx.Client) -> None:
    own = fake.add_media(b"a", mime_type="image/png", token="tenant-a-token")
    shared = fake.add_media(b"b", mime_type="image/png")
    assert resolve(client, own.id).status_code == 401
    assert resolve(client, own.id, {"Authorization": "Bearer tenant-a-token"}).status_code == 200

    fake.set_token("rotated-token")
    assert resolve(client, shared.id).status_code == 401
    assert resolve(client, shared.id, {"Authorization": "Bearer rotated-token"}).status_code == 200


def test_unknown_media(fake: FakeProvider, client: httpx.Client) -> None:
    missing = resolve(client, "999999")
    assert missing.status_code == 400
    assert missing.json()["error"]["code"] == 100
    assert resolve(client, "999999", {"Authorization": "Bearer nope"}).status_code == 401
    # Media belongs to one provider: a Meta id is unknown to Whapi and Chakra.
    media = fake.add_media(b"x", mime_type="image/png")
    assert client.get(f"/media/{media.id}", headers=AUTH).status_code == 404
    assert client.get(f"/v1/whatsapp/v23.0/media/{media.id}/show", headers=AUTH).status_code == 404


def test_expired_url_is_refused(fake: FakeProvider, client: httpx.Client) -> None:
    media = fake.add_media(b"short-lived", mime_type="application/pdf")
    fake.url_ttl = 0.5
    url = resolve(client, media.id).json()["url"]

    deadline = time.monotonic() + 5.0
    while client.get(url, headers=AUTH).status_code != 404:
        assert time.monotonic() < deadline, "URL never expired"
        time.sleep(0.05)

    # Resolving again gives a fresh URL that works.
    fake.url_ttl = 300
    fresh = resolve(client, media.id).json()["url"]
    assert client.get(fresh, headers=AUTH).content == b"short-lived"

    tampered = fresh.replace("hash=", "hash=0")
    assert client.get(tampered, headers=AUTH).status_code == 404
    assert client.get(f"/meta-cdn/{media.id}", headers=AUTH).status_code == 404


def test_fail_media_then_recovery(fake: FakeProvider, client: httpx.Client) -> None:
    media = fake.add_media(b"flaky", mime_type="image/jpeg")
    fake.fail_media(media.id, times=2, status=503)
    for _ in range(2):
        failed = resolve(client, media.id)
        assert failed.status_code == 503
        assert failed.json()["error"]["code"] == 2
        assert failed.headers["retry-after"] == "1"
    url = resolve(client, media.id).json()["url"]

    # Downloads count too.
    fake.fail_media(media.id, times=1)
    assert client.get(url, headers=AUTH).status_code == 500
    assert client.get(url, headers=AUTH).content == b"flaky"


def test_whapi_and_chakra_downloads(fake: FakeProvider, client: httpx.Client) -> None:
    data = b"whapi voice note"
    whapi = fake.add_media(data, mime_type="audio/ogg; codecs=opus", provider="whapi")
    assert whapi.id.startswith("ogg-")
    assert whapi.sha256_b64 == base64.b64encode(hashlib.sha256(data).digest()).decode()

    auto = client.get(f"/whapi-files/{whapi.id}")  # the Auto Download link needs no token
    assert auto.status_code == 200
    assert auto.content == data
    assert auto.headers["content-type"] == "audio/ogg; codecs=opus"
    assert client.get(f"/media/{whapi.id}").status_code == 401
    assert client.get(f"/media/{whapi.id}", headers=AUTH).content == data
    assert client.get(f"/media/{whapi.id}", params={"token": TOKEN}).content == data

    chakra = fake.add_media(
        b"%PDF", mime_type="application/pdf", provider="chakra", filename="nf.pdf"
    )
    show = f"/v1/whatsapp/v19.0/media/{chakra.id}/show"
    assert client.get(show, headers=AUTH).content == b"%PDF"
    assert "nf.pdf" in client.get(show, headers=AUTH).headers["content-disposition"]
    denied = client.get(show)
    assert denied.status_code == 401
    assert denied.json()["_errors"][0]["code"] == 401


def test_large_generated_media_streams_in_chunks(fake: FakeProvider, client: httpx.Client) -> None:
    size = 20 * 1024 * 1024 + 123  # a partial last chunk too
    media = fake.add_media(mime_type="video/mp4", size=size, provider="chakra")
    assert media.content.data is None  # generated lazily, not held in memory
    assert media.size == size

    def download() -> tuple[str, int, int]:
        digest, total, chunks = hashlib.sha256(), 0, 0
        url = f"/v1/whatsapp/v23.0/media/{media.id}/show"
        with client.stream("GET", url, headers=AUTH) as response:
            assert response.status_code == 200
            assert response.headers["content-length"] == str(size)
            for chunk in response.iter_raw():
                digest.update(chunk)
                total += len(chunk)
                chunks += 1
        return digest.hexdigest(), total, chunks

    sha, total, chunks = download()
    assert total == size
    assert chunks > 1
    assert sha == media.sha256_hex
    assert download()[0] == sha  # deterministic across downloads
    assert size > CHUNK_SIZE


def test_http_control_endpoints(
    fake: FakeProvider, client: httpx.Client, server: FakeProviderServer
) -> None:
    assert client.get("/_fake/health").status_code == 200

    created = client.post("/_fake/media", params={"mime_type": "image/png"}, content=b"png!")
    assert created.status_code == 201
    info = created.json()
    assert info["sha256_hex"] == hashlib.sha256(b"png!").hexdigest()
    assert info["size"] == 4
    assert "token" not in info

    generated = client.post(
        "/_fake/media",
        params={
            "mime_type": "video/mp4",
            "size": "100000",
            "provider": "whapi",
            "token": "tenant-b",
            "filename": "v.mp4",
        },
    ).json()
    assert generated["provider"] == "whapi"
    assert generated["link"] == server.url(f"/whapi-files/{generated['id']}")
    body = client.get(generated["link"]).content
    assert hashlib.sha256(body).hexdigest() == generated["sha256_hex"]
    assert client.get(f"/media/{generated['id']}", headers=AUTH).status_code == 401
    assert (
        client.get(
            f"/media/{generated['id']}", headers={"Authorization": "Bearer tenant-b"}
        ).status_code
        == 200
    )

    assert client.post("/_fake/media").status_code == 400  # mime_type missing
    fail = client.post("/_fake/fail", json={"media_id": info["id"], "times": 1, "status": 429})
    assert fail.status_code == 200
    assert resolve(client, info["id"]).status_code == 429
    assert resolve(client, info["id"]).status_code == 200
    assert client.post("/_fake/fail", json={"media_id": "nope", "times": 1}).status_code == 404

    config = client.post("/_fake/config", json={"token": "new-token", "url_ttl": 60})
    assert config.status_code == 200
    assert "new-token" not in config.text
    assert fake.url_ttl == 60
    assert resolve(client, info["id"], {"Authorization": "Bearer new-token"}).status_code == 200

    summary = client.get("/_fake/requests").json()
    assert summary["count"] == len(fake.requests) > 0
    assert all(not r["path"].startswith("/_fake/") for r in summary["requests"])
    assert len(client.get("/_fake/requests", params={"limit": "2"}).json()["requests"]) == 2

    assert client.post("/_fake/reset").status_code == 200
    assert fake.requests == []
    assert fake.media() == []
    assert fake.token == TOKEN


def test_requests_recorded_with_authorization_masked(
    fake: FakeProvider, client: httpx.Client
) -> None:
    media = fake.add_media(b"x", mime_type="image/png", provider="whapi")
    client.get(f"/media/{media.id}", headers=AUTH)
    client.get(f"/media/{media.id}", params={"token": TOKEN})
    client.post("/v23.0/123/messages", json={"to": "5511987654321"}, headers=AUTH)
    client.get("/_fake/health")

    records = fake.requests
    assert [(r.method, r.path) for r in records] == [
        ("GET", f"/media/{media.id}"),
        ("GET", f"/media/{media.id}"),
        ("POST", "/v23.0/123/messages"),
    ]
    first, second, third = records
    assert first.headers["authorization"] == "Bearer ***"
    assert first.token_fingerprint == FakeProvider.fingerprint(TOKEN)
    assert first.status == 200
    assert second.query == {"token": "***"}
    assert third.body == b'{"to":"5511987654321"}'
    assert third.time >= first.time
    assert TOKEN not in repr(records)
    assert TOKEN not in client.get("/_fake/requests").text


async def test_async_context_manager() -> None:
    async with FakeProviderServer() as srv:
        media = srv.provider.add_media(b"async", mime_type="text/plain", provider="whapi")
        async with httpx.AsyncClient(base_url=srv.base_url) as c:
            response = await c.get(
                f"/media/{media.id}", headers={"Authorization": f"Bearer {DEFAULT_TOKEN}"}
            )
        assert response.content == b"async"
        assert response.headers["content-type"] == "text/plain"
        base = srv.base_url
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{base}/_fake/health", timeout=1.0)


def test_standalone_cli_prints_url() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "wacloud.testing.fake_provider", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("fake provider listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[-1]
        deadline = time.monotonic() + 10.0
        while True:
            try:
                if httpx.get(f"{url}/_fake/health", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "standalone fake never became healthy"
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
