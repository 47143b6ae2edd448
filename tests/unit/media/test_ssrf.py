"""MediaCopier under the SSRF policy, against real local HTTP servers.

The servers run on 127.0.0.1, so the policy treats only the origins a test names as local
(`UrlPolicy.local_origins`) and every other loopback address as forbidden, exactly as
production treats them all. Host names resolve through an injected table (DNS is not what is
tested here); the connection then really goes to the address the policy checked.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.http_stub import BODY, MAX_BYTES, LocalServer, serve
from wacloud.adapters.db.registry.store import Registry
from wacloud.adapters.http.download_client import DownloadClient
from wacloud.adapters.http.provider_client import ProviderClient
from wacloud.adapters.media.local.store import LocalMediaStore
from wacloud.credentials.broker import CredentialsBroker
from wacloud.domain.model import Channel, InboundMessage, MediaRef, MediaStatus, Provider
from wacloud.media.copier import MediaCopier, MediaCopyError
from wacloud.security.crypto import SecretBox, new_key
from wacloud.security.urlpolicy import MAX_REDIRECTS, UrlPolicy
from wacloud.stages.envelopes import RawWebhook
from wacloud.stages.receive import ReceiveContext, receive

TOKEN = "whapi-token-SECRET-51"


@pytest.fixture(scope="module")
def provider_server() -> Iterator[LocalServer]:
    """Plays the provider: its origin is the channel's API origin and counts as local."""
    yield from serve()


@pytest.fixture(scope="module")
def other_server() -> Iterator[LocalServer]:
    """Another local origin: a redirect target that production would never reach."""
    yield from serve()


@pytest.fixture(autouse=True)
def clear_seen(provider_server: LocalServer, other_server: LocalServer) -> None:
    provider_server.seen.clear()
    other_server.seen.clear()


class FakeDns:
    def __init__(self, table: dict[str, Sequence[str]]) -> None:
        self.table = table

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        return self.table[host]


@dataclass
class Env:
    copier: MediaCopier
    tmp_dir: Path
    media_root: Path


@pytest.fixture
async def make_env(tmp_path: Path, provider_server: LocalServer
                   ) -> AsyncIterator[Any]:
    async with DownloadClient() as client, ProviderClient() as api:
        def build(dns: dict[str, Sequence[str]] | None = None,
                  local: Sequence[str] = ()) -> Env:
            policy = UrlPolicy(allow_local=False,
                               local_origins=frozenset({provider_server.origin, *local}),
                               resolver=FakeDns(dns or {}))
            copier = MediaCopier(LocalMediaStore(tmp_path / "media"), client,
                                 tmp_dir=tmp_path / "tmp", max_bytes=MAX_BYTES,
                                 allow_local=False, policy=policy, api=api)
            return Env(copier, tmp_path / "tmp", tmp_path / "media")
        yield build


def whapi(server: LocalServer, *media_hosts: str) -> Channel:
    return Channel(id=1, tenant="acme", provider=Provider.WHAPI, key="MANTIS-M72HC",
                   api_base_url=server.origin, token=TOKEN, media_hosts=media_hosts)


def link(url: str) -> MediaRef:
    return MediaRef(link=url, mime_type="image/jpeg")


async def refused(env: Env, channel: Channel, media: MediaRef) -> MediaCopyError:
    with pytest.raises(MediaCopyError) as caught:
        await env.copier.copy(channel, media, timeout=5)
    assert list(env.tmp_dir.iterdir()) == []
    assert not env.media_root.exists() or not any(env.media_root.rglob("*.*"))
    assert TOKEN not in str(caught.value)
    return caught.value


# -- redirects ----------------------------------------------------------------------------------


async def test_redirects_within_the_allowed_origin_are_followed(
        make_env: Any, provider_server: LocalServer) -> None:
    env = make_env()

    stored = await env.copier.copy(whapi(provider_server),
                                   link(f"{provider_server.origin}/chain/{MAX_REDIRECTS}"),
                                   timeout=5)

    assert stored.status is MediaStatus.STORED
    assert stored.sha256 == hashlib.sha256(BODY).hexdigest()
    assert len(provider_server.seen) == MAX_REDIRECTS + 1


async def test_more_than_the_redirect_limit_is_refused(
        make_env: Any, provider_server: LocalServer) -> None:
    error = await refused(make_env(), whapi(provider_server),
                          link(f"{provider_server.origin}/chain/{MAX_REDIRECTS + 1}"))

    assert error.temporary is False
    assert f"more than {MAX_REDIRECTS}" in error.reason


async def test_redirect_to_loopback_is_refused_before_connecting(
        make_env: Any, provider_server: LocalServer, other_server: LocalServer) -> None:
    # Even with the other server on the channel's allow list: its address is loopback.
    channel = whapi(provider_server, other_server.hostport)
    target = f"https://{other_server.hostport}/file"

    error = await refused(make_env(), channel,
                          link(f"{provider_server.origin}/redirect?to={target}"))

    assert error.temporary is False
    assert "redirected to a refused URL" in error.reason
    assert "non-public address (127.0.0.1, loopback)" in error.reason
    assert other_server.seen == []


async def test_redirect_to_a_host_not_allowed_for_the_channel_is_refused(
        make_env: Any, provider_server: LocalServer, other_server: LocalServer) -> None:
    for target in ("https://evil.example.com/x.jpg", f"http://{other_server.hostport}/file"):
        error = await refused(make_env(), whapi(provider_server),
                              link(f"{provider_server.origin}/redirect?to={target}"))

        assert error.temporary is False
        assert "is not a whapi host allowed for this channel" in error.reason
    assert other_server.seen == []


@pytest.mark.parametrize("address", ["169.254.169.254", "10.0.0.5", "::ffff:169.254.169.254"])
async def test_redirect_to_an_allowed_name_resolving_inside_is_refused(
        make_env: Any, provider_server: LocalServer, address: str) -> None:
    env = make_env({"files.whapi.cloud": [address]})

    error = await refused(env, whapi(provider_server), link(
        f"{provider_server.origin}/redirect?to=https://files.whapi.cloud/latest/meta-data/"))

    assert "non-public address" in error.reason


async def test_redirect_downgrading_to_plain_http_is_refused(
        make_env: Any, provider_server: LocalServer) -> None:
    env = make_env({"files.whapi.cloud": ["157.240.1.1"]})

    error = await refused(env, whapi(provider_server), link(
        f"{provider_server.origin}/redirect?to=http://files.whapi.cloud/x.jpg"))

    assert "https only" in error.reason


async def test_credentials_do_not_follow_a_redirect_to_another_origin(
        make_env: Any, provider_server: LocalServer, other_server: LocalServer) -> None:
    # Both origins are trusted here; only the token's destination is under test.
    env = make_env(local=[other_server.origin])
    channel = whapi(provider_server, other_server.hostport)
    media = MediaRef(link=f"{provider_server.origin}/redirect?to={other_server.origin}/file")

    stored = await env.copier.copy(channel, media, timeout=5)

    assert stored.status is MediaStatus.STORED
    assert [s.authorization for s in provider_server.seen] == [True]  # same origin as the API
    assert [s.authorization for s in other_server.seen] == [False]


async def test_the_connection_goes_to_the_checked_address_not_a_second_lookup(
        make_env: Any, provider_server: LocalServer) -> None:
    port = provider_server.server.server_address[1]
    host = "cdn.whapi.cloud"
    # The name exists only in the injected table: a second, real DNS lookup would fail.
    env = make_env({host: ["127.0.0.1"]}, local=[f"http://{host}:{port}"])

    stored = await env.copier.copy(whapi(provider_server, f"{host}:{port}"),
                                   link(f"http://{host}:{port}/file"), timeout=5)

    assert stored.status is MediaStatus.STORED
    assert provider_server.seen[-1].host == f"{host}:{port}"


# -- the first URL, size and time -----------------------------------------------------------------


async def test_meta_lookup_answering_an_internal_url_is_refused_and_gets_no_token(
        make_env: Any, provider_server: LocalServer) -> None:
    channel = Channel(id=2, tenant="acme", provider=Provider.META, key="106540352242922",
                      phone_number_id="106540352242922", api_base_url=provider_server.origin,
                      token=TOKEN)
    for url in ("https://169.254.169.254/latest/meta-data/", "https://evil.example.com/x"):
        media = MediaRef(provider_media_id=f"to:{url}")
        error = await refused(make_env(), channel, media)

        assert error.temporary is False
    assert all(s.path.startswith("/v23.0/") for s in provider_server.seen)


async def test_oversized_media_after_a_redirect_is_refused(
        make_env: Any, provider_server: LocalServer) -> None:
    error = await refused(make_env(), whapi(provider_server),
                          link(f"{provider_server.origin}/redirect?to=/big"))

    assert error.temporary is False
    assert "limit" in error.reason


async def test_total_time_is_limited_even_when_every_read_is_quick(
        make_env: Any, provider_server: LocalServer) -> None:
    env = make_env()
    started = time.monotonic()

    with pytest.raises(MediaCopyError) as caught:
        await env.copier.copy(whapi(provider_server), link(f"{provider_server.origin}/slow"),
                              timeout=1.0)

    assert time.monotonic() - started < 5
    assert caught.value.temporary is True
    assert "took longer than" in caught.value.reason
    assert list(env.tmp_dir.iterdir()) == []


async def test_outbound_links_may_name_any_host_but_never_an_internal_address(
        make_env: Any, provider_server: LocalServer, other_server: LocalServer) -> None:
    env = make_env({"cdn.shop.example": ["192.168.0.9"]})
    for url in ("https://10.0.0.5/p.jpg", "https://cdn.shop.example/p.jpg",
                f"{provider_server.origin}/redirect?to=https://{other_server.hostport}/file",
                f"{provider_server.origin}/redirect?to=ftp://cdn.shop.example/p.jpg"):
        with pytest.raises(MediaCopyError) as caught:
            await env.copier.fetch_to_file(url, {}, 5)

        assert caught.value.temporary is False
    assert other_server.seen == []
    download = await env.copier.fetch_to_file(f"{provider_server.origin}/file", {}, 5)
    try:
        assert download.path.read_bytes() == BODY
    finally:
        download.path.unlink()


# -- the message is still delivered, with the reason ----------------------------------------------


async def test_receive_emits_the_message_with_media_failed_and_the_reason(
        tmp_path: Path, provider_server: LocalServer) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    registry = Registry(engine, SecretBox([new_key()]))
    registry.create_schema()
    registry.add_tenant("acme")
    registry.add_channel(tenant="acme", provider=Provider.WHAPI, key="MANTIS-M72HC",
                         token=TOKEN, webhook_secret="hook", api_base_url=provider_server.origin,
                         # Listed, so that the refusal is about their addresses.
                         media_hosts=["169.254.169.254", "127.0.0.1:1"])
    broker = CredentialsBroker(registry, tenants_dir=tmp_path / "tenants")
    links = {"meta-data": "https://169.254.169.254/latest/meta-data/",
             "redirect": f"{provider_server.origin}/redirect?to=https://127.0.0.1:1/x",
             "plain-http": "http://files.whapi.cloud/x.jpg",
             "foreign": "https://evil.example.com/x.jpg",
             "big": f"{provider_server.origin}/big"}
    body = {"channel_id": "MANTIS-M72HC", "event": {"type": "messages", "event": "post"},
            "messages": [{"id": f"m-{name}", "from_me": False, "type": "image",
                          "chat_id": "5521998765432@s.whatsapp.net", "timestamp": 1719323800,
                          "from": "5521998765432",
                          "image": {"id": f"jpeg-{name}", "mime_type": "image/jpeg",
                                    "link": url}}
                         for name, url in links.items()]}
    raw = RawWebhook("whapi", "MANTIS-M72HC", time.time(), json.dumps(body).encode())

    async def park(**kwargs: Any) -> int:
        raise AssertionError("nothing should be parked")

    try:
        async with DownloadClient() as client, ProviderClient() as api:
            policy = UrlPolicy(local_origins=frozenset({provider_server.origin}),
                               resolver=FakeDns({"files.whapi.cloud": ["157.240.1.1"]}))
            copier = MediaCopier(LocalMediaStore(tmp_path / "media"), client,
                                 tmp_dir=tmp_path / "tmp", max_bytes=MAX_BYTES,
                                 allow_local=False, policy=policy, api=api)
            [output] = await asyncio.wait_for(
                receive(raw.encode(), ReceiveContext(broker, copier, park)), 30)
    finally:
        broker.close()
        engine.dispose()

    events = json.loads(output.message.body)["events"]
    messages = {e["provider_message_id"]: InboundMessage.from_dict(e) for e in events}
    assert set(messages) == {f"m-{name}" for name in links}
    reasons = {}
    for name in links:
        media = messages[f"m-{name}"].media
        assert media is not None and media.status is MediaStatus.FAILED, name
        reasons[name] = media.error or ""
    assert "link-local" in reasons["meta-data"]
    assert "loopback" in reasons["redirect"]
    assert "https only" in reasons["plain-http"]
    assert "not a whapi host" in reasons["foreign"]
    assert "limit" in reasons["big"]
