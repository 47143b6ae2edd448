"""`wacloud media url KEY` in-process, on the local media folder and on S3 (moto's server over
HTTP): the URL fetches the object's bytes; a missing key, bucket or bad expiry is one error."""

from __future__ import annotations

import json
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path

import boto3
import httpx
import pytest
from typer.testing import CliRunner

from wacloud.bootstrap import init_data_dir
from wacloud.cli import app
from wacloud.settings import load_settings

KEY = "acme/1065/2026/12/05/" + "ef" * 32 + ".pdf"


def invoke(data_dir: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["media", "url", *args, "--data-dir", str(data_dir)])
    return result.exit_code, result.output


def test_a_local_key_gives_its_file_url(tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WACLOUD_MEDIA_URL", raising=False)
    settings = load_settings(tmp_path)
    init_data_dir(settings)
    (settings.media_dir / KEY).parent.mkdir(parents=True)
    (settings.media_dir / KEY).write_bytes(b"%PDF-1.7")
    code, output = invoke(tmp_path, KEY)
    assert code == 0, output
    with urllib.request.urlopen(output.strip()) as answer:
        assert answer.read() == b"%PDF-1.7"
    code, output = invoke(tmp_path, KEY, "--json")
    assert code == 0 and json.loads(output) == {
        "key": KEY, "url": (settings.media_dir / KEY).resolve().as_uri(),
        "expires_s": None, "expires_at": None}


def test_a_missing_key_and_a_key_that_escapes_are_errors(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WACLOUD_MEDIA_URL", raising=False)
    init_data_dir(load_settings(tmp_path))
    code, output = invoke(tmp_path, "acme/none.pdf")
    assert code == 1 and "error: no media object under 'acme/none.pdf'" in output
    code, output = invoke(tmp_path, "../../etc/passwd")
    assert code == 1 and "error: media key" in output
    code, output = invoke(tmp_path, KEY, "--expires", "0")
    assert code != 0


def test_an_s3_key_gives_a_presigned_url_that_expires(
        tmp_path: Path, aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = f"wacloud-cli-{uuid.uuid4().hex[:16]}"
    monkeypatch.setenv("WACLOUD_MEDIA_URL", f"s3://{bucket}/media")
    client = boto3.client("s3")
    code, output = invoke(tmp_path, KEY)
    assert code == 1
    assert f"error: S3 bucket {bucket!r} (WACLOUD_MEDIA_URL) does not exist" in output
    assert f"aws s3 mb s3://{bucket}" in output

    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key=f"media/{KEY}", Body=b"%PDF-1.7",
                      ContentType="application/pdf")
    before = datetime.now(UTC).replace(microsecond=0)
    code, output = invoke(tmp_path, KEY, "--expires", "600", "--json")
    assert code == 0, output
    answer = json.loads(output)
    assert answer["key"] == KEY and answer["expires_s"] == 600
    assert 595 <= (datetime.fromisoformat(answer["expires_at"]) - before).total_seconds() <= 660
    assert "X-Amz-Expires=600" in answer["url"]
    assert httpx.get(answer["url"]).content == b"%PDF-1.7"

    code, output = invoke(tmp_path, "acme/none.pdf")
    assert code == 1 and f"in s3://{bucket}/media" in output
