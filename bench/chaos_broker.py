"""The distributed engine's side of the fault harness (`chaos.py --engine rabbitmq|sqs`): the
broker, the TCP proxy between wacloud and it, the broker outage, and what is left in its queues.

- RabbitMQ: a fresh virtual host on the machine's RabbitMQ (as the test suite makes them);
  wacloud's processes reach it through a `TcpProxy`, the harness's own commands directly.
- SQS: moto's server (SQS and S3 over HTTP); the queues through the proxy
  (`AWS_ENDPOINT_URL_SQS`), media on S3 directly (`AWS_ENDPOINT_URL`): the outage is the
  queue's alone.

A broker outage cuts the proxy (every connection closed, new ones refused) for its duration,
then restores it: what a broker restart or a network cut looks like to its clients, without
stopping the machine's shared RabbitMQ (other people's tests use it) or moto (whose queues
live in its memory). `--real-broker-restart` (RabbitMQ only, for someone running the bench
alone) runs `rabbitmqctl stop_app` / `start_app` instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

# The repository root, for the test suite's service helpers (fresh vhosts, moto's server).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.services import (
    RABBITMQ_URL,
    aws_environment,
    fresh_rabbitmq_vhost,
    moto_server,
)
from wacloud.testing.tcp_proxy import TcpProxy

ENGINES = ("embedded", "rabbitmq", "sqs")
RABBITMQ_PORT = 5672
# moto's server answers a receive in time that grows with the queue (it looks at every message;
# 3 to 9 s with 1,500 queued on this 2-core machine under load, where SQS takes milliseconds):
# a backlog left by a kill or an outage at the embedded load's rates never drains there, and
# receives slower than the harness's 5 s visibility timeout bring messages back again and
# again until SQS's redrive policy dead-letters them. So on SQS the load is lighter by
# default (see `LOAD`) and the visibility timeout longer. That is moto's ceiling, not SQS's.
SQS_VISIBILITY_S = "15"
LOAD = {"sqs": (8.0, 3.0)}  # engine -> (webhooks/s, API messages/s) when not given


class BrokerSide:
    """One broker for one run: `child_env` for wacloud's processes (through the proxy),
    `own_env` for the harness's commands (direct), `outage(seconds)`, `backlog()`."""

    def __init__(self, engine: str, stack: contextlib.ExitStack, *,
                 real_restart: bool = False) -> None:
        if engine not in ENGINES[1:]:
            raise ValueError(f"not a distributed engine: {engine}")
        self.engine = engine
        self.real_restart = real_restart and engine == "rabbitmq"
        self.prefix = f"chaos{uuid.uuid4().hex[:8]}"
        self.vhost = ""
        self.sqs: Any = None
        if engine == "rabbitmq":
            url = stack.enter_context(fresh_rabbitmq_vhost())  # skips without RabbitMQ
            self.vhost = url.rsplit("/", 1)[1]
            self.proxy = stack.enter_context(TcpProxy("127.0.0.1", RABBITMQ_PORT))
            base = RABBITMQ_URL.replace(f":{RABBITMQ_PORT}/", f":{self.proxy.port}/")
            self.child_env = {"WACLOUD_QUEUE_URL": f"{base}{self.vhost}?prefix=chaos"}
            self.own_env = {"WACLOUD_QUEUE_URL": f"{url}?prefix=chaos"}
        else:
            endpoint = stack.enter_context(moto_server())
            port = int(endpoint.rsplit(":", 1)[1])
            self.proxy = stack.enter_context(TcpProxy("127.0.0.1", port))
            aws = aws_environment(endpoint)
            queue = {"WACLOUD_QUEUE_URL": f"sqs://?prefix={self.prefix}",
                     "WACLOUD_MEDIA_URL": f"s3://{self.prefix}/media"}
            self.child_env = {**aws, **queue,
                              "AWS_ENDPOINT_URL_SQS": f"http://127.0.0.1:{self.proxy.port}",
                              "WACLOUD_QUEUE_VISIBILITY_TIMEOUT_S": SQS_VISIBILITY_S}
            self.own_env = {**aws, **queue}
            import boto3

            self.sqs = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1",
                                    aws_access_key_id="testing",
                                    aws_secret_access_key="testing")

    def describe(self) -> str:
        if self.engine == "rabbitmq":
            how = ("rabbitmqctl stop_app / start_app" if self.real_restart
                   else f"proxy 127.0.0.1:{self.proxy.port}")
            return f"RabbitMQ vhost {self.vhost} (outages: {how})"
        return (f"SQS on moto's server, prefix {self.prefix}, media on S3 (queue outages: "
                f"proxy 127.0.0.1:{self.proxy.port})")

    # -- the fault ---------------------------------------------------------------------------

    def outage(self, seconds: float) -> None:
        """The broker unreachable for `seconds`, then back (blocking)."""
        if self.real_restart:
            ctl = shutil.which("rabbitmqctl") or "rabbitmqctl"
            subprocess.run([ctl, "-q", "stop_app"], check=True, capture_output=True)
            try:
                time.sleep(seconds)
            finally:
                subprocess.run([ctl, "-q", "start_app"], check=True, capture_output=True)
            return
        self.proxy.cut()
        try:
            time.sleep(seconds)
        finally:
            self.proxy.restore()

    # -- what the queues hold ----------------------------------------------------------------

    def backlog(self) -> tuple[int, int]:
        """(messages in the work queues in any state: ready, unacked, delayed; dead letters),
        read from the broker directly."""
        live = dead = 0
        for name, count in self._counts():
            if name.removesuffix(".fifo").endswith((".dlq", "-dlq")):  # RabbitMQ, SQS names
                dead += count
            else:
                live += count
        return live, dead

    def _counts(self) -> list[tuple[str, int]]:
        if self.engine == "rabbitmq":
            ctl = shutil.which("rabbitmqctl") or "rabbitmqctl"
            done = subprocess.run([ctl, "-q", "list_queues", "-p", self.vhost, "--no-table-headers",
                                   "name", "messages"], capture_output=True, text=True,
                                  timeout=60, check=True)
            out = []
            for line in done.stdout.splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[1].isdigit():
                    out.append((parts[0], int(parts[1])))
            return out
        urls = self.sqs.list_queues(QueueNamePrefix=self.prefix).get("QueueUrls") or []
        out = []
        for url in urls:
            attrs = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
                "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                "ApproximateNumberOfMessagesDelayed"])["Attributes"]
            out.append((url.rsplit("/", 1)[1], sum(int(v) for v in attrs.values())))
        return out


def environ_with(extra: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **extra}
