"""Message queues with SQS semantics, one adapter per folder, chosen by `WACLOUD_QUEUE_URL`.

Each adapter module has `open_broker(url, settings, media_store)`; the scheme of the URL picks
the module (imported only when used, so the embedded gateway never loads boto3 or aio-pika).
Adding a backend: its folder beside `sqlite/`, and one line in `ADAPTERS`.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from wacloud.adapters.media.base import MediaStore
    from wacloud.adapters.queue.base import QueueBroker, QueueSpec
    from wacloud.settings import Settings

ADAPTERS: dict[str, str] = {
    "sqlite": "wacloud.adapters.queue.sqlite.broker",
    "sqs": "wacloud.adapters.queue.sqs",
    "amqp": "wacloud.adapters.queue.rabbitmq",
    "amqps": "wacloud.adapters.queue.rabbitmq",
}


def open_queue_broker(url: str, settings: Settings,
                      media_store: MediaStore | None = None) -> QueueBroker:
    """The broker of `url` (`sqlite:///PATH`, ...). `media_store` holds bodies too large for
    a backend's messages (SQS: 256 KB)."""
    scheme = urlsplit(url).scheme
    module_name = ADAPTERS.get(scheme)
    if module_name is None:
        raise ValueError(f"WACLOUD_QUEUE_URL: unknown scheme {scheme!r} "
                         f"(known: {', '.join(sorted(ADAPTERS))})")
    module = importlib.import_module(module_name)
    broker: QueueBroker = module.open_broker(url, settings, media_store)
    return broker


async def verify_queues(broker: QueueBroker, specs: Iterable[QueueSpec]) -> None:
    """Raise `QueueMissing` (naming the queue and how to create it) unless every queue of
    `specs` exists: a process checks this before it takes any work."""
    for spec in specs:
        await broker.queue(spec).depth()


def public_queue_url(url: str) -> str:
    """`url` without its password, fit for output and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()
