"""Inbound media lands in S3: a real `wacloud serve` with `WACLOUD_MEDIA_URL=s3://...` against
moto's server over HTTP copies a Meta image and voice note into the bucket under the prefix,
`wacloud media url` gives a presigned URL that serves the bytes, and the dashboard streams them
from the bucket."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import boto3
import httpx
import pytest

from tests.e2e.conftest import fixture, make_harness, wait_for
from tests.e2e.payloads import attach_meta_media, retarget_meta
from wacloud.adapters.db.registry.api_keys import create_api_key
from wacloud.testing.fake_provider import FakeProviderServer

pytestmark = pytest.mark.slow


def test_inbound_media_is_stored_in_the_s3_bucket(
        tmp_path: Path, fake_server: FakeProviderServer, aws_env: dict[str, str]) -> None:
    bucket = f"wacloud-e2e-{uuid.uuid4().hex[:16]}"
    client = boto3.client("s3")
    client.create_bucket(Bucket=bucket)
    env = {**aws_env, "WACLOUD_MEDIA_URL": f"s3://{bucket}/inbound"}
    harness_iter = make_harness(tmp_path, fake_server, env)
    harness = next(harness_iter)
    try:
        tenant = harness.tenant()
        channel = harness.meta_channel(tenant)
        sent = {}
        for name in ("image", "voice"):
            payload = retarget_meta(fixture("meta", name), channel.key, channel.waba_id or "",
                                    uuid.uuid4().hex[:6])
            sent.update(attach_meta_media(payload, harness.fake))
            assert harness.post_meta(payload, channel.app_secret).status_code == 200

        rows = harness.wait_rows(tenant, 2, timeout=30, predicate=lambda rows: all(
            r["media"] is not None and r["media"]["status"] == "stored" for r in rows))
        for row in rows:
            media = sent[row["provider_message_id"]]
            key = row["media"]["key"]
            assert key.startswith(f"{tenant}/{channel.key}/") and media.sha256_hex in key
            stored = client.get_object(Bucket=bucket, Key=f"inbound/{key}")
            assert stored["Body"].read() == media.read_bytes()
            assert stored["ContentType"] == media.mime_type.split(";")[0].strip()
        listed = client.list_objects_v2(Bucket=bucket)["Contents"]
        assert sorted(item["Key"] for item in listed) == sorted(
            f"inbound/{r['media']['key']}" for r in rows)
        # Nothing went to the local folder, and no temporary download was left behind.
        media_dir = harness.gateway.data_dir / "media"
        assert not media_dir.exists() or not any(p.is_file() for p in media_dir.rglob("*"))
        assert not list((harness.gateway.data_dir / "tmp").glob("*.part"))

        done = harness.cli("media", "url", rows[0]["media"]["key"], "--json")
        assert done.returncode == 0, done.stderr
        url = json.loads(done.stdout)["url"]
        assert httpx.get(url).content == sent[rows[0]["provider_message_id"]].read_bytes()

        # The dashboard streams the object from S3 through its session-checked route.
        key = create_api_key(harness.registry, tenant=None, admin=True)[1]
        with httpx.Client(base_url=harness.gateway.base_url, timeout=10,
                          headers={"Origin": harness.gateway.base_url}) as browser:
            wait_for(lambda: browser.post("/ui/login", data={"key": key}).status_code == 303,
                     message="admin key visible to the dashboard")
            for row in rows:
                page = browser.get(f"/ui/media/{tenant}/{row['id']}")
                assert page.status_code == 200
                assert page.content == sent[row["provider_message_id"]].read_bytes()
    finally:
        harness_iter.close()
