"""`wacloud queues create` and the check every process makes before it takes work: on the
embedded queue (nothing to create), and on SQS with S3 media through moto's server (queues and
bucket created once, idempotently; `worker` and `serve` refuse to start, in one line naming the
queue and the command, while a queue is missing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import pytest
from typer.testing import CliRunner

from wacloud.adapters.queue import public_queue_url
from wacloud.bootstrap import queue_specs
from wacloud.cli import app
from wacloud.settings import load_settings


def invoke(data_dir: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, [*args, "--data-dir", str(data_dir)])
    return result.exit_code, result.output


def test_on_the_embedded_queue_every_queue_and_its_dlq_are_confirmed(tmp_path: Path) -> None:
    assert invoke(tmp_path, "init")[0] == 0
    code, output = invoke(tmp_path, "queues", "create", "--json")
    assert code == 0, output
    result = json.loads(output)
    specs = queue_specs(load_settings(tmp_path)).values()
    assert set(result["queues"]) == ({s.name for s in specs} | {s.dead_letter_name for s in specs})
    assert result["bucket"] is None


def test_on_sqs_and_s3_create_is_idempotent_and_processes_refuse_to_start_before_it(
        tmp_path: Path, aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    bucket = f"media-{prefix}"
    monkeypatch.setenv("WACLOUD_QUEUE_URL", f"sqs://?prefix={prefix}")
    monkeypatch.setenv("WACLOUD_MEDIA_URL", f"s3://{bucket}/media")
    assert invoke(tmp_path, "init")[0] == 0

    # A worker (a real process, as an operator starts it) stops at once with one line.
    env = {**os.environ, **aws_env}
    worker = subprocess.run([sys.executable, "-m", "wacloud.cli", "worker", "--data-dir",
                             str(tmp_path)], env=env, capture_output=True, text=True,
                            timeout=60)
    assert worker.returncode == 1
    assert "does not exist" in worker.stderr and "wacloud queues create" in worker.stderr
    assert "Traceback" not in worker.stderr and len(worker.stderr.strip().splitlines()) == 1

    first = invoke(tmp_path, "queues", "create", "--json")
    assert first[0] == 0, first[1]
    again = invoke(tmp_path, "queues", "create", "--json")
    assert again[0] == 0, again[1]
    assert json.loads(first[1])["queues"] == json.loads(again[1])["queues"]
    assert json.loads(again[1])["bucket"] == bucket

    sqs = boto3.client("sqs")
    names = {url.rsplit("/", 1)[1] for url in sqs.list_queues(
        QueueNamePrefix=prefix).get("QueueUrls", [])}
    assert f"{prefix}-outbound-send.fifo" in names and f"{prefix}-inbound-raw" in names
    assert len(names) == len(json.loads(again[1])["queues"])
    assert bucket in {b["Name"] for b in boto3.client("s3").list_buckets()["Buckets"]}

    # Every queue exists now: the same check passes (the worker would start).
    from wacloud.cli.queue_cmds import require_queues
    require_queues(load_settings(tmp_path))


def test_a_queue_url_password_never_reaches_the_output() -> None:
    url = "amqp://wacloud:s3cr3t-pw@rabbit.example:5672/prod?prefix=w"
    shown = public_queue_url(url)
    assert "s3cr3t-pw" not in shown
    assert shown.startswith("amqp://wacloud:***@rabbit.example:5672/prod")
