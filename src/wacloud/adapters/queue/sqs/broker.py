"""The SQS broker: one boto3 client and its thread pool, queue URLs, and provisioning.

boto3 is synchronous; its calls run on this broker's own thread pool (not asyncio's default
executor, which long polls of up to 20 s would starve). One client serves every thread: boto3
clients are thread-safe, sessions are not, so the session is used only here, once. Region,
credentials and endpoint (`AWS_ENDPOINT_URL`) come from the standard AWS settings.

Queues are provisioned beforehand (`create_queues`, run by `wacloud queues create`): a queue
that does not exist raises `QueueMissing` at its first use, naming it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, NoRegionError

from wacloud.adapters.queue.base import QueueBroker, QueueMissing, QueueSpec
from wacloud.adapters.queue.sqs.calls import error_code, whole_seconds
from wacloud.adapters.queue.sqs.names import parse_prefix, source_of, sqs_name
from wacloud.adapters.queue.sqs.queue import SqsQueue
from wacloud.adapters.queue.sqs.receipts import Receipts

if TYPE_CHECKING:
    from wacloud.adapters.media.base import MediaStore
    from wacloud.settings import Settings

T = TypeVar("T")

THREADS = 32  # boto3 calls in flight per broker (long polls included)
RETENTION_S = 14 * 24 * 3600  # SQS's longest: a message in a long backoff must not expire
MAX_VISIBILITY_S = 12 * 3600
MAX_RECEIVE_COUNT = 1000  # SQS's bound for a redrive policy's maxReceiveCount
_MISSING = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})
_EXISTS = frozenset({"QueueAlreadyExists", "QueueNameExists"})


class SqsBroker(QueueBroker):
    def __init__(self, prefix: str, media_store: MediaStore | None = None, *,
                 tmp_dir: Path, threads: int = THREADS) -> None:
        self.prefix = prefix
        self.media_store = media_store
        self.tmp_dir = tmp_dir
        session = boto3.session.Session()
        try:
            self.client: Any = session.client("sqs", config=Config(
                max_pool_connections=threads, retries={"mode": "standard"}))
        except NoRegionError:
            raise ValueError("WACLOUD_QUEUE_URL is sqs://, but no AWS region is set (set "
                             "AWS_REGION or AWS_DEFAULT_REGION, or a profile's region)") from None
        self.where = f"SQS at {self.client.meta.endpoint_url}"
        self.receipts = Receipts()
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="sqs")
        self._urls: dict[str, str] = {}  # SQS name -> queue URL
        self._fifo: dict[str, bool] = {}  # port name -> FIFO, for every spec seen
        self._running = 0  # calls on the pool now (event loop thread only)

    async def run(self, fn: Callable[[], T]) -> T:
        """`fn()` (boto3 calls) on this broker's threads."""
        self._running += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn)
        finally:
            self._running -= 1

    def queue(self, spec: QueueSpec) -> SqsQueue:
        self._fifo.setdefault(spec.name, spec.fifo)
        return SqsQueue(self, spec)

    async def close(self) -> None:
        # A long poll still running would hold a wait=True shutdown for up to 20 s; whatever it
        # receives comes back to its queue when its visibility runs out.
        self._pool.shutdown(wait=False, cancel_futures=True)
        if not self._running:  # else the client goes when the last call's thread is done
            self.client.close()

    # -- names and URLs (on the pool's threads) ----------------------------------------------

    def names_of(self, spec: QueueSpec) -> list[str]:
        """Candidate SQS names of `spec`, in the order to try. A dead-letter queue named on its
        own (`outbound.send.dlq`, declared standard) is FIFO when its source queue is: SQS
        wants a FIFO queue's DLQ FIFO. When the source's kind is unknown here, both."""
        source = source_of(spec.name)
        if spec.fifo or source is None:
            return [sqs_name(self.prefix, spec.name, fifo=spec.fifo)]
        known = self._fifo.get(source)
        kinds = [False, True] if known is None else [known]
        return [sqs_name(self.prefix, spec.name, fifo=fifo) for fifo in kinds]

    def dead_letter_name(self, spec: QueueSpec) -> str:
        return sqs_name(self.prefix, spec.dead_letter_name, fifo=spec.fifo)

    def url_of(self, names: list[str]) -> str:
        """The URL of the first of `names` that exists; `QueueMissing` (naming the first)
        when none does."""
        for name in names:
            url = self._urls.get(name)
            if url is not None:
                return url
            try:
                url = str(self.client.get_queue_url(QueueName=name)["QueueUrl"])
            except ClientError as exc:
                if error_code(exc) in _MISSING:
                    continue
                raise
            self._urls[name] = url
            return url
        raise QueueMissing(names[0], self.where)

    def forget(self, url: str) -> None:
        """A queue that existed is gone (deleted since): look it up again next time."""
        for name, known in list(self._urls.items()):
            if known == url:
                del self._urls[name]

    def missing(self, exc: BaseException, url: str) -> QueueMissing | None:
        """`QueueMissing` for an SQS error saying the queue of `url` no longer exists."""
        if error_code(exc) not in _MISSING:
            return None
        self.forget(url)
        return QueueMissing(url.rsplit("/", 1)[-1], self.where)

    # -- provisioning -----------------------------------------------------------------------

    async def create_queues(self, specs: list[QueueSpec]) -> list[str]:
        for spec in specs:
            self._fifo.setdefault(spec.name, spec.fifo)
        return await self.run(lambda: self.provision(specs))

    def provision(self, specs: list[QueueSpec]) -> list[str]:
        """Create every queue of `specs` with its dead-letter queue (DLQs first, so that the
        redrive policy can name them), or bring an existing one to the spec's attributes;
        returns the SQS names. A spec named like another's dead-letter queue
        (`outbound.send.dlq`) is that queue: it is created with its source."""
        dead_names = {spec.dead_letter_name for spec in specs}
        created: list[str] = []
        for spec in specs:
            if spec.name in dead_names:
                continue
            fifo_attrs = ({"FifoQueue": "true", "DeduplicationScope": "messageGroup",
                           "FifoThroughputLimit": "perMessageGroupId"} if spec.fifo else {})
            attrs = {"MessageRetentionPeriod": str(RETENTION_S), **fifo_attrs}
            if source_of(spec.name) is None:  # a DLQ declared alone gets no DLQ of its own
                dead = self.dead_letter_name(spec)
                dead_url = self._create(dead, attrs)
                arn = self.client.get_queue_attributes(
                    QueueUrl=dead_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
                created.append(dead)
                attrs["RedrivePolicy"] = json.dumps({
                    "deadLetterTargetArn": arn,
                    "maxReceiveCount": min(max(spec.max_receives, 1), MAX_RECEIVE_COUNT)})
            attrs["VisibilityTimeout"] = str(whole_seconds(spec.visibility_timeout,
                                                           MAX_VISIBILITY_S))
            name = sqs_name(self.prefix, spec.name, fifo=spec.fifo)
            self._create(name, attrs)
            created.append(name)
        return created

    def _create(self, name: str, attrs: dict[str, str]) -> str:
        try:
            url = str(self.client.create_queue(QueueName=name, Attributes=attrs)["QueueUrl"])
        except ClientError as exc:
            if error_code(exc) not in _EXISTS:
                raise
            # It exists with other attributes: bring them to the spec (a queue's kind, FIFO or
            # standard, is in its name and cannot change).
            url = str(self.client.get_queue_url(QueueName=name)["QueueUrl"])
            self.client.set_queue_attributes(QueueUrl=url, Attributes={
                key: value for key, value in attrs.items() if key != "FifoQueue"})
        self._urls[name] = url
        return url


def open_broker(url: str, settings: Settings, media_store: MediaStore | None = None
                ) -> SqsBroker:
    """`sqs://?prefix=NAME`: queues named NAME-<queue> in the region and account of the
    standard AWS settings; bodies over 256 KB go to `media_store`."""
    return SqsBroker(parse_prefix(url), media_store, tmp_dir=settings.data_dir / "tmp")
