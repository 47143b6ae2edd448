"""A broker outage, as clients see one, through a TCP proxy (`wacloud.testing.tcp_proxy`) between
the adapter and the real broker (the machine's RabbitMQ on a fresh virtual host, moto's server
for SQS): every connection closed, new ones refused for a while, then back.

While it lasts a webhook is answered 503 with Retry-After (never 200: nothing that was not
durably queued is acknowledged) and quickly, not after a client's timeout; sends raise instead
of hanging; once the broker is back, sends and receives work again without a restart, and what
a consumer held unacked at the cut comes back (nothing lost). A stage whose outputs, acks and
releases fail under it lets its messages go, so that they come back to be handled again,
rather than keeping them hidden (the heartbeat extending them) for as long as it runs."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from wacloud.adapters.db.engines import create_engine
from wacloud.adapters.db.registry.store import Registry
from wacloud.adapters.queue.base import (
    OutgoingMessage,
    Queue,
    QueueBroker,
    QueueSpec,
    ReceivedMessage,
)
from wacloud.adapters.queue.rabbitmq import RabbitBroker
from wacloud.adapters.queue.rabbitmq.url import parse_address
from wacloud.adapters.queue.sqs import SqsBroker
from wacloud.credentials.broker import CredentialsBroker
from wacloud.domain.model import Provider
from wacloud.hosting.runner import StageRunner
from wacloud.hosting.webhooks import WebhookReceiver
from wacloud.security.crypto import SecretBox, new_key
from wacloud.stages.envelopes import Output
from wacloud.testing.tcp_proxy import TcpProxy
from wacloud.testing.webhooks import dumps, meta_envelope, meta_text, sign

APP_SECRET = "outage-secret"
PHONE_NUMBER_ID = "106540352242"
# An answer within this while the broker is away: well under a provider's webhook timeout.
ANSWER_WITHIN_S = 15.0


@pytest.fixture
def proxy_to_rabbitmq(rabbitmq_url: str) -> Iterator[tuple[TcpProxy, str]]:
    """A proxy to the machine's RabbitMQ, and the fresh vhost's URL through it."""
    with TcpProxy("127.0.0.1", 5672) as proxy:
        vhost = rabbitmq_url.rsplit("/", 1)[1]
        yield proxy, f"amqp://guest:guest@127.0.0.1:{proxy.port}/{vhost}?prefix=o"


@pytest.fixture
def proxy_to_moto(moto_endpoint: str, aws_env: dict[str, str],
                  monkeypatch: pytest.MonkeyPatch) -> Iterator[TcpProxy]:
    """A proxy to moto's server, where this test's SQS clients go (`AWS_ENDPOINT_URL_SQS`)."""
    with TcpProxy("127.0.0.1", int(moto_endpoint.rsplit(":", 1)[1])) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", f"http://127.0.0.1:{proxy.port}")
        yield proxy


@pytest.fixture
def credentials(tmp_path: Path) -> Iterator[CredentialsBroker]:
    engine = create_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    registry = Registry(engine, SecretBox([new_key()]))
    registry.create_schema()
    registry.add_tenant("a")
    registry.add_channel(tenant="a", provider=Provider.META, key=PHONE_NUMBER_ID, token="tok",
                         app_secret=APP_SECRET, verify_token="v")
    broker = CredentialsBroker(registry, tenants_dir=tmp_path / "tenants", cache_seconds=0)
    yield broker
    broker.close()
    engine.dispose()


@pytest.fixture
async def rabbit(proxy_to_rabbitmq: tuple[TcpProxy, str]) -> AsyncIterator[RabbitBroker]:
    broker = RabbitBroker(parse_address(proxy_to_rabbitmq[1]), auto_create=True)
    yield broker
    await broker.close()


@pytest.fixture
async def sqs(proxy_to_moto: TcpProxy, tmp_path: Path) -> AsyncIterator[SqsBroker]:
    broker = SqsBroker(f"out{uuid.uuid4().hex[:8]}", tmp_dir=tmp_path / "tmp")
    yield broker
    await broker.close()


def webhook(tag: str) -> tuple[bytes, dict[str, str]]:
    message, contact = meta_text("5511999990000", f"hello {tag}", f"wamid.{tag}")
    body = dumps(meta_envelope(PHONE_NUMBER_ID, "102290129942", "5511940001234", [message],
                               None, [contact]))
    return body, {"Content-Type": "application/json",
                  "X-Hub-Signature-256": sign(body, APP_SECRET)}


async def post_webhooks_through_an_outage(broker: QueueBroker, proxy: TcpProxy,
                                          credentials: CredentialsBroker) -> Queue:
    """Before, during and after a cut: 200, then 503 + Retry-After (quickly), then 200."""
    raw = broker.queue(QueueSpec("inbound.raw"))
    await broker.create_queues([raw.spec])
    receiver = WebhookReceiver(Starlette(), credentials, raw, 1 << 20)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=receiver),
                                 base_url="http://gw", timeout=60) as client:
        body, headers = webhook("before")
        assert (await client.post("/webhooks/meta", content=body, headers=headers)
                ).status_code == 200
        await asyncio.to_thread(proxy.cut)
        try:
            body, headers = webhook("during")
            started = time.monotonic()
            answer = await client.post("/webhooks/meta", content=body, headers=headers)
            took = time.monotonic() - started
            assert answer.status_code == 503, answer.text
            assert int(answer.headers["retry-after"]) > 0
            assert "retry later" in answer.json()["error"]
            assert took < ANSWER_WITHIN_S, f"answered after {took:.1f} s"
        finally:
            await asyncio.to_thread(proxy.restore)
        # Back: the same webhook again (the provider's retry) is taken, without a restart.
        deadline = time.monotonic() + 60
        while (answer := await client.post("/webhooks/meta", content=body, headers=headers)
               ).status_code != 200:
            assert answer.status_code == 503, answer.text
            assert time.monotonic() < deadline, "still refused a minute after the outage"
            await asyncio.sleep(0.2)  # a provider's retry period, not synchronization
    return raw


async def receive_all(queue: Queue, wanted: int, timeout: float = 60.0
                      ) -> list[ReceivedMessage]:
    got: list[ReceivedMessage] = []
    deadline = time.monotonic() + timeout
    while len(got) < wanted:
        assert time.monotonic() < deadline, f"only {len(got)} of {wanted} came: {got}"
        try:
            got += await queue.receive(10, wait_seconds=1)
        except ConnectionError:  # still reconnecting
            await asyncio.sleep(0.2)
    return got


# -- RabbitMQ ---------------------------------------------------------------------------------

async def test_rabbitmq_webhooks_get_503_during_an_outage_and_200_after(
        rabbit: RabbitBroker, proxy_to_rabbitmq: tuple[TcpProxy, str],
        credentials: CredentialsBroker) -> None:
    raw = await post_webhooks_through_an_outage(rabbit, proxy_to_rabbitmq[0], credentials)
    got = await receive_all(raw, 2)
    assert sorted(b"wamid.before" in m.body for m in got) == [False, True]
    await raw.ack([m.receipt for m in got])


async def test_rabbitmq_consumers_resume_and_get_back_what_they_held(
        rabbit: RabbitBroker, proxy_to_rabbitmq: tuple[TcpProxy, str]) -> None:
    proxy = proxy_to_rabbitmq[0]
    plain, fifo = rabbit.queue(QueueSpec("s")), rabbit.queue(QueueSpec("f", fifo=True))
    await rabbit.create_queues([plain.spec, fifo.spec])
    await plain.send_batch([OutgoingMessage(b"s1"), OutgoingMessage(b"s2")])
    await fifo.send_batch([OutgoingMessage(b"f1", group_id="t/n/a"),
                           OutgoingMessage(b"f2", group_id="t/n/a")])
    [held] = await plain.receive(1, wait_seconds=5)
    [head] = await fifo.receive(1, wait_seconds=5)
    await asyncio.to_thread(proxy.cut)
    try:
        with pytest.raises(Exception):  # noqa: B017 - any error: what matters is not hanging
            await asyncio.wait_for(plain.send(b"during"), ANSWER_WITHIN_S)
        await plain.ack([held.receipt])  # stale after the cut: nothing happens, no error
    finally:
        await asyncio.to_thread(proxy.restore)
    await plain.send(b"after")
    back = await receive_all(plain, 3)
    assert sorted(m.body for m in back) == [b"after", b"s1", b"s2"]
    # The group's head came back first, then the rest in order.
    in_order = await receive_all(fifo, 2)
    assert [(m.body, m.receive_count) for m in in_order] == [(b"f1", 2), (b"f2", 2)]
    await fifo.ack([m.receipt for m in in_order] + [head.receipt])
    await plain.ack([m.receipt for m in back])
    for queue in (plain, fifo):
        assert await queue.depth() == {"visible": 0, "in_flight": 0, "delayed": 0, "dead": 0}


# -- SQS (moto) -------------------------------------------------------------------------------

async def test_sqs_webhooks_get_503_during_an_outage_and_200_after(
        sqs: SqsBroker, proxy_to_moto: TcpProxy, credentials: CredentialsBroker) -> None:
    raw = await post_webhooks_through_an_outage(sqs, proxy_to_moto, credentials)
    got = await receive_all(raw, 2)
    assert sorted(b"wamid.before" in m.body for m in got) == [False, True]
    await raw.ack([m.receipt for m in got])


async def test_sqs_a_stage_failing_under_an_outage_lets_its_messages_come_back(
        sqs: SqsBroker, proxy_to_moto: TcpProxy) -> None:
    source = sqs.queue(QueueSpec("in", visibility_timeout=2))
    out = sqs.queue(QueueSpec("out"))
    await sqs.create_queues([source.spec, out.spec])
    bodies = [f"m{i}".encode() for i in range(6)]
    await source.send_batch([OutgoingMessage(b) for b in bodies])
    entered, gate = asyncio.Event(), asyncio.Event()

    async def batch(messages: list[ReceivedMessage]) -> list[Output]:
        entered.set()
        await gate.wait()  # the outage starts while the batch is being handled
        return [Output("out", OutgoingMessage(m.body)) for m in messages]

    async def one(message: ReceivedMessage) -> list[Output]:
        return [Output("out", OutgoingMessage(message.body))]

    runner = StageRunner("t", source, one, {"out": out}, batch=10, wait_seconds=0.2,
                         error_backoff=0.2, batch_handler=batch)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        await asyncio.wait_for(entered.wait(), 30)
        await asyncio.to_thread(proxy_to_moto.cut)
        try:
            gate.set()
            # Outputs, acks and releases all fail now: nothing may stay held (the heartbeat
            # would keep those messages hidden for as long as the stage runs).
            deadline = time.monotonic() + 30
            while runner._held:
                assert time.monotonic() < deadline, f"still held: {list(runner._held.values())}"
                await asyncio.sleep(0.1)  # polling the runner's state, not synchronization
        finally:
            await asyncio.to_thread(proxy_to_moto.restore)
        # Back: every message is handled again and forwarded, none left in the source.
        got = await receive_all(out, len(bodies))
        assert set(bodies) <= {m.body for m in got}
        deadline = time.monotonic() + 30
        while (depth := await source.depth())["visible"] + depth["in_flight"]:
            assert time.monotonic() < deadline, f"left in the source: {depth}"
            await asyncio.sleep(0.2)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
