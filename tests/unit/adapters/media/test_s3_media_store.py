"""What only the S3 media store does, against moto's server over HTTP: the URL, objects under
the prefix with their content type, no second upload of a stored key, a missing bucket said
once and clearly, `ensure_bucket`, presigned URL limits. The port's behaviour is in
tests/contract/test_media_store_contract.py."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from wacloud.adapters.media import open_media_store
from wacloud.adapters.media.base import MediaStoreMissing
from wacloud.adapters.media.s3 import S3MediaStore, parse_url
from wacloud.settings import Settings

KEY = "acme/1065/2026/12/05/" + "cd" * 32 + ".ogg"


@pytest.fixture
def bucket(aws_env: dict[str, str]) -> str:
    return f"wacloud-unit-{uuid.uuid4().hex[:16]}"


@pytest.fixture
async def store(bucket: str) -> AsyncIterator[S3MediaStore]:
    opened = open_media_store(f"s3://{bucket}/media/eu", Settings())
    assert isinstance(opened, S3MediaStore)
    try:
        yield opened
    finally:
        await opened.close()


def a_file(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / f"{uuid.uuid4().hex}.part"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(("url", "expected"), [
    ("s3://my-bucket/media", ("my-bucket", "media")),
    ("s3://my-bucket/a/b/", ("my-bucket", "a/b")),
    ("s3://my-bucket", ("my-bucket", "")),
    ("s3://my.bucket/m%C3%ADdia", ("my.bucket", "mídia")),
])
def test_the_url_names_bucket_and_prefix(url: str, expected: tuple[str, str]) -> None:
    assert parse_url(url) == expected


@pytest.mark.parametrize("url", ["s3:///media", "s3://AKIA:secret@bucket/media",
                                 "s3://bucket:9000/media", "s3://bucket/media?region=x",
                                 "s3://bucket/../media", "http://bucket/media"])
def test_urls_that_are_not_a_bucket_and_prefix_are_refused(url: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_url(url)
    assert "secret" not in str(refused.value)


def test_parts_below_s3s_minimum_are_refused(aws_env: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="at least"):
        S3MediaStore("b", part_size=1024 * 1024)


async def test_a_missing_bucket_is_one_clear_error_saying_how_to_create_it(
        store: S3MediaStore, bucket: str, tmp_path: Path) -> None:
    source = a_file(tmp_path, b"x")
    for attempt in (store.put_file(KEY, source), store.exists(KEY),
                    anext(store.open(KEY)), store.delete(KEY)):
        with pytest.raises(MediaStoreMissing) as missing:
            await attempt
        message = str(missing.value)
        assert repr(bucket) in message and "does not exist" in message
        assert "wacloud queues create" in message
        assert f"aws s3 mb s3://{bucket} --region us-east-1" in message
    assert source.exists()  # not consumed: nothing was stored


async def test_ensure_bucket_creates_it_once_in_the_configured_region(
        bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    store = S3MediaStore(bucket, "media")
    try:
        assert await store.ensure_bucket() == bucket
        assert await store.ensure_bucket() == bucket  # idempotent
        client = boto3.client("s3")
        assert client.get_bucket_location(Bucket=bucket)["LocationConstraint"] == "eu-west-1"
        await store.put_file(KEY, a_file(tmp_path, b"ok"))
        assert await store.exists(KEY)
    finally:
        await store.close()


async def test_objects_go_under_the_prefix_with_their_content_type(
        store: S3MediaStore, bucket: str, tmp_path: Path) -> None:
    await store.ensure_bucket()
    await store.put_file(KEY, a_file(tmp_path, b"OggS voice"), "audio/ogg")
    client = boto3.client("s3")
    listed = [item["Key"] for item in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert listed == [f"media/eu/{KEY}"]
    head = client.head_object(Bucket=bucket, Key=f"media/eu/{KEY}")
    assert head["ContentType"] == "audio/ogg" and head["ContentLength"] == 10


async def test_a_stored_key_is_not_uploaded_again(store: S3MediaStore,
                                                  tmp_path: Path) -> None:
    await store.ensure_bucket()
    uploads: list[str] = []

    def count(**kwargs: Any) -> None:
        uploads.append(kwargs["event_name"])

    store.client.meta.events.register("before-call.s3.PutObject", count)
    store.client.meta.events.register("before-call.s3.CreateMultipartUpload", count)
    await store.put_file(KEY, a_file(tmp_path, b"voice"))
    assert len(uploads) == 1
    retry = a_file(tmp_path, b"voice")
    await store.put_file(KEY, retry)
    assert len(uploads) == 1  # one HEAD found it: no second upload
    assert not retry.exists()


async def test_presigned_urls_expire_within_sigv4_limits(store: S3MediaStore,
                                                         tmp_path: Path) -> None:
    await store.ensure_bucket()
    await store.put_file(KEY, a_file(tmp_path, b"voice"), "audio/ogg")
    url = await store.presigned_url(KEY, 900)
    assert "X-Amz-Expires=900" in url and "X-Amz-Signature=" in url
    answer = httpx.get(url)
    assert answer.status_code == 200 and answer.content == b"voice"
    assert answer.headers["content-type"] == "audio/ogg"
    for bad in (0, -1, 7 * 24 * 3600 + 1):
        with pytest.raises(ValueError, match="expiry"):
            await store.presigned_url(KEY, bad)
