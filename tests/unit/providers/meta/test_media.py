"""Meta provider, media: the Graph lookup (`wacloud.providers.meta.media`) performed the way
the media copier performs it (`wacloud.media.copier.look_up`), against a real local HTTP
server."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from wacloud.adapters.http.provider_client import ProviderClient
from wacloud.domain.model import Channel, MediaRef, Provider
from wacloud.media.copier import look_up
from wacloud.providers import PROVIDERS
from wacloud.providers.media import MediaDownload, MediaResolveError

PNID_A = "106540352242922"
TOKEN = "EAAG-test-token-never-shown-4242"
META = PROVIDERS[Provider.META]


async def resolve_media(client: ProviderClient, channel: Channel, media: MediaRef, *,
                        timeout: float = 30.0) -> MediaDownload:
    request = META.media_lookup(channel, media)
    assert request is not None
    return await look_up(client, META, channel, media, request, timeout)


def test_a_link_without_id_needs_no_lookup() -> None:
    media = MediaRef(link="https://lookaside.fbsbx.com/x", mime_type="image/jpeg")
    channel = _channel("https://graph.facebook.com")
    assert META.media_lookup(channel, media) is None
    download = META.media_download(channel, media)
    assert download.url == media.link and download.headers == {}


# --- media lookup against a real server ---------------------------------------------------------

seen: list[dict[str, Any]] = []


async def graph_media(request: Request) -> Response:
    media_id = request.path_params["media_id"]
    seen.append({"version": request.path_params["version"], "media_id": media_id,
                 "auth": request.headers.get("authorization"),
                 "query": dict(request.query_params)})
    if request.headers.get("authorization") != f"Bearer {TOKEN}":
        return JSONResponse({"error": {"code": 190, "message": "bad token"}}, status_code=401)
    if media_id == "1274583920174635":
        return JSONResponse({
            "messaging_product": "whatsapp",
            "url": "https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=1274583920174635",
            "mime_type": "audio/ogg; codecs=opus", "sha256": "7c1e0fe3a9",
            "file_size": "18342", "id": media_id})
    if media_id == "expired":
        return JSONResponse({"error": {"code": 100, "message": f"Bad media; token {TOKEN}"}},
                            status_code=400)
    if media_id == "throttled":
        return JSONResponse({"error": {"code": 80007, "message": "Rate limit"}},
                            status_code=400)
    if media_id == "busy":
        return PlainTextResponse("slow down", status_code=429)
    if media_id == "broken":
        return PlainTextResponse("oops", status_code=502)
    if media_id == "nourl":
        return JSONResponse({"id": media_id})
    if media_id == "list":
        return JSONResponse([1, 2])
    return PlainTextResponse("not json at all")


@pytest.fixture(scope="module")
def graph_server() -> Iterator[str]:
    app = Starlette(routes=[Route("/{version}/{media_id}", graph_media)])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "test server did not start"
        assert thread.is_alive(), "test server thread died"
        time.sleep(0.01)  # polling the started flag, bounded by the deadline above
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def _channel(base_url: str, **extra: Any) -> Channel:
    return Channel(id=1, tenant="acme", provider=Provider.META, key=PNID_A,
                   phone_number_id=PNID_A, api_base_url=base_url + "/", graph_version="v23.0",
                   token=TOKEN, **extra)


async def test_resolve_media_ok(graph_server: str) -> None:
    seen.clear()
    media = MediaRef(provider_media_id="1274583920174635", mime_type="audio/ogg",
                     filename="nota.ogg")
    async with ProviderClient() as client:
        download = await resolve_media(client, _channel(graph_server), media)
    assert download.url.startswith("https://lookaside.fbsbx.com/")
    assert download.headers == {"Authorization": f"Bearer {TOKEN}"}
    assert download.mime_type == "audio/ogg; codecs=opus"
    assert download.sha256 == "7c1e0fe3a9"
    assert download.size == 18342
    assert download.filename == "nota.ogg"
    assert TOKEN not in repr(download)
    assert seen == [{"version": "v23.0", "media_id": "1274583920174635",
                     "auth": f"Bearer {TOKEN}", "query": {"phone_number_id": PNID_A}}]


@pytest.mark.parametrize(("media_id", "temporary"), [
    ("expired", False), ("throttled", True), ("busy", True), ("broken", True),
    ("nourl", False), ("list", False), ("garbage", True),
])
async def test_resolve_media_errors(graph_server: str, media_id: str, temporary: bool) -> None:
    async with ProviderClient() as client:
        with pytest.raises(MediaResolveError) as info:
            await resolve_media(client, _channel(graph_server),
                                     MediaRef(provider_media_id=media_id))
    assert info.value.temporary is temporary
    assert TOKEN not in str(info.value)
    assert TOKEN not in repr(info.value)
    assert media_id in str(info.value)


async def test_resolve_media_bad_token_is_permanent(graph_server: str) -> None:
    channel = _channel(graph_server)
    channel.token = "wrong-token-xyz"
    async with ProviderClient() as client:
        with pytest.raises(MediaResolveError) as info:
            await resolve_media(client, channel, MediaRef(provider_media_id="1"))
    assert not info.value.temporary
    assert "401" in str(info.value)
    assert "wrong-token-xyz" not in str(info.value)


async def test_resolve_media_without_id() -> None:
    async with ProviderClient() as client:
        with pytest.raises(MediaResolveError) as info:
            await resolve_media(client, _channel("http://127.0.0.1:9"), MediaRef())
    assert not info.value.temporary


async def test_resolve_media_unreachable_and_timeout_are_temporary() -> None:
    # A listening socket that never accepts: the TCP handshake completes through the backlog
    # but no answer ever comes, which gives a genuine read timeout.
    silent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    closed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    try:
        async with ProviderClient() as client:
            for base in (f"http://127.0.0.1:{silent.getsockname()[1]}",
                         f"http://127.0.0.1:{closed_port}"):
                with pytest.raises(MediaResolveError) as info:
                    await resolve_media(client, _channel(base),
                                             MediaRef(provider_media_id="1274583920174635"),
                                             timeout=0.3)
                assert info.value.temporary
                assert TOKEN not in str(info.value)
    finally:
        silent.close()


