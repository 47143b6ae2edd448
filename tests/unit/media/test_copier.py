"""MediaCopier against the fake provider over real HTTP, storing into a LocalMediaStore."""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from wacloud.adapters.http.download_client import DownloadClient
from wacloud.adapters.http.provider_client import ProviderClient
from wacloud.adapters.media.local.store import LocalMediaStore
from wacloud.domain.model import Channel, MediaRef, MediaStatus, Provider
from wacloud.media.copier import MediaCopier, MediaCopyError, digest_matches
from wacloud.testing.fake_provider import DEFAULT_TOKEN, FakeProviderServer

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
PHONE_NUMBER_ID = "106540352242922"
MAX_BYTES = 64 * 1024


@pytest.fixture(scope="module")
def server() -> Iterator[FakeProviderServer]:
    with FakeProviderServer() as running:
        yield running


@pytest.fixture
def fake(server: FakeProviderServer) -> Iterator[FakeProviderServer]:
    server.provider.reset()
    yield server
    server.provider.reset()


@dataclass
class Env:
    copier: MediaCopier
    media_root: Path
    tmp_dir: Path


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with DownloadClient() as client, ProviderClient() as api:
        media_root, tmp_dir = tmp_path / "media", tmp_path / "tmp"
        copier = MediaCopier(LocalMediaStore(media_root), client, tmp_dir=tmp_dir,
                             max_bytes=MAX_BYTES, allow_local=True, api=api)
        yield Env(copier, media_root, tmp_dir)


def channel(fake: FakeProviderServer, provider: Provider = Provider.META,
            token: str = DEFAULT_TOKEN) -> Channel:
    return Channel(id=1, tenant="acme", provider=provider, key=PHONE_NUMBER_ID,
                   phone_number_id=PHONE_NUMBER_ID, api_base_url=fake.base_url, token=token)


def stored_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


# -- digest_matches --------------------------------------------------------------------------


def test_digest_matches_hex_and_base64() -> None:
    digest = hashlib.sha256(b"media bytes").digest()
    b64 = base64.b64encode(digest).decode()

    assert digest_matches(digest.hex(), digest)
    assert digest_matches(digest.hex().upper(), digest)
    assert digest_matches(f"  {digest.hex()}\n", digest)
    assert digest_matches(b64, digest)
    assert digest_matches(b64.rstrip("="), digest)


def test_digest_matches_rejects_other_digests_and_garbage() -> None:
    digest = hashlib.sha256(b"media bytes").digest()
    other = hashlib.sha256(b"other bytes").digest()

    assert not digest_matches(other.hex(), digest)
    assert not digest_matches(base64.b64encode(other).decode(), digest)
    assert not digest_matches("not a digest at all!", digest)
    assert not digest_matches("", digest)


# -- copy ------------------------------------------------------------------------------------


async def test_copy_meta_media_stores_under_tenant_channel_date_sha(
        fake: FakeProviderServer, env: Env) -> None:
    media = fake.provider.add_media(PNG, mime_type="image/png")
    sha = hashlib.sha256(PNG).hexdigest()
    before = time.strftime("%Y/%m/%d", time.gmtime())

    stored = await env.copier.copy(channel(fake), MediaRef(
        provider_media_id=media.id, mime_type="image/png", sha256=media.sha256_b64),
        timeout=10)

    after = time.strftime("%Y/%m/%d", time.gmtime())
    assert stored.key in {f"acme/{PHONE_NUMBER_ID}/{day}/{sha}.png" for day in (before, after)}
    assert stored.status is MediaStatus.STORED
    assert (stored.sha256, stored.size, stored.mime_type) == (sha, len(PNG), "image/png")
    assert stored.error is None
    assert (env.media_root / stored.key).read_bytes() == PNG
    assert list(env.tmp_dir.iterdir()) == []


async def test_copy_sniffs_the_extension_when_the_type_is_generic(
        fake: FakeProviderServer, env: Env) -> None:
    pdf = b"%PDF-1.4\n" + b"x" * 1000
    media = fake.provider.add_media(pdf, mime_type="application/octet-stream")

    stored = await env.copier.copy(channel(fake), MediaRef(provider_media_id=media.id),
                                   timeout=10)

    assert stored.key is not None and stored.key.endswith(".pdf")
    assert (env.media_root / stored.key).read_bytes() == pdf


async def test_sha256_mismatch_is_a_temporary_error_and_stores_nothing(
        fake: FakeProviderServer, env: Env) -> None:
    media = fake.provider.add_media(PNG, mime_type="image/png")

    with pytest.raises(MediaCopyError) as caught:
        await env.copier.copy(channel(fake), MediaRef(
            provider_media_id=media.id, sha256=hashlib.sha256(b"other").hexdigest()),
            timeout=10)

    assert caught.value.temporary is True
    assert caught.value.reason == (f"sha256 mismatch: webhook said "
                                   f"{hashlib.sha256(b'other').hexdigest()}, file is "
                                   f"{hashlib.sha256(PNG).hexdigest()}")
    assert stored_files(env.media_root) == []
    assert list(env.tmp_dir.iterdir()) == []


async def test_damaged_download_names_the_webhook_hash_and_the_file_hash(
        fake: FakeProviderServer, env: Env) -> None:
    media = fake.provider.add_media(PNG, mime_type="image/png")
    fake.provider.damage_media(media.id)
    damaged = bytes([PNG[0] ^ 0xFF]) + PNG[1:]

    with pytest.raises(MediaCopyError) as caught:
        await env.copier.copy(channel(fake), MediaRef(
            provider_media_id=media.id, sha256=media.sha256_b64), timeout=10)

    assert caught.value.reason == (f"sha256 mismatch: webhook said {media.sha256_b64}, "
                                   f"file is {hashlib.sha256(damaged).hexdigest()}")
    assert stored_files(env.media_root) == []
    fake.provider.damage_media(media.id, damaged=False)
    stored = await env.copier.copy(channel(fake), MediaRef(
        provider_media_id=media.id, sha256=media.sha256_b64), timeout=10)
    assert stored.status is MediaStatus.STORED


async def test_meta_media_over_max_bytes_is_permanent_and_leaves_no_temp_file(
        fake: FakeProviderServer, env: Env) -> None:
    media = fake.provider.add_media(size=MAX_BYTES + 1, mime_type="video/mp4")

    with pytest.raises(MediaCopyError) as caught:
        await env.copier.copy(channel(fake), MediaRef(provider_media_id=media.id), timeout=10)

    assert caught.value.temporary is False
    assert "limit" in caught.value.reason
    assert list(env.tmp_dir.iterdir()) == []
    assert stored_files(env.media_root) == []


async def test_streamed_media_over_max_bytes_is_permanent_and_leaves_no_temp_file(
        fake: FakeProviderServer, env: Env) -> None:
    # No size in the webhook: the limit is only found while downloading.
    media = fake.provider.add_media(size=3 * MAX_BYTES, mime_type="video/mp4",
                                    provider="whapi")

    with pytest.raises(MediaCopyError) as caught:
        await env.copier.copy(channel(fake, Provider.WHAPI),
                              MediaRef(provider_media_id=media.id), timeout=10)

    assert caught.value.temporary is False
    assert "limit" in caught.value.reason
    assert list(env.tmp_dir.iterdir()) == []
    assert stored_files(env.media_root) == []


async def test_wrong_meta_token_is_permanent_and_reason_has_no_token(
        fake: FakeProviderServer, env: Env) -> None:
    media = fake.provider.add_media(PNG, mime_type="image/png")
    wrong = "EAAG-wrong-token-SECRET-42"

    with pytest.raises(MediaCopyError) as caught:
        await env.copier.copy(channel(fake, token=wrong),
                              MediaRef(provider_media_id=media.id), timeout=10)

    assert caught.value.temporary is False
    assert "401" in caught.value.reason
    for text in (caught.value.reason, str(caught.value), repr(caught.value)):
        assert wrong not in text
        assert DEFAULT_TOKEN not in text
    assert list(env.tmp_dir.iterdir()) == []


async def test_wrong_whapi_token_on_download_is_permanent_and_reason_has_no_token(
        fake: FakeProviderServer, env: Env) -> None:
    media = fake.provider.add_media(PNG, mime_type="image/png", provider="whapi")
    wrong = "whapi-wrong-token-SECRET-43"

    with pytest.raises(MediaCopyError) as caught:
        await env.copier.copy(channel(fake, Provider.WHAPI, token=wrong),
                              MediaRef(provider_media_id=media.id), timeout=10)

    assert caught.value.temporary is False
    assert "401" in caught.value.reason
    assert wrong not in caught.value.reason
    assert list(env.tmp_dir.iterdir()) == []


async def test_server_error_on_resolve_is_temporary(
        fake: FakeProviderServer, env: Env) -> None:
    media = fake.provider.add_media(PNG, mime_type="image/png")
    fake.provider.fail_media(media.id, times=1, status=503)

    with pytest.raises(MediaCopyError) as caught:
        await env.copier.copy(channel(fake), MediaRef(provider_media_id=media.id), timeout=10)

    assert caught.value.temporary is True
    stored = await env.copier.copy(channel(fake), MediaRef(provider_media_id=media.id),
                                   timeout=10)
    assert stored.status is MediaStatus.STORED
