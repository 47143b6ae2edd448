"""A gateway killed with SIGKILL in the middle of a batch loses nothing after restart."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Harness, make_harness
from wacloud.testing.fake_provider import FakeProviderServer
from wacloud.testing.webhooks import dumps, meta_envelope, meta_text, sign


@pytest.fixture
def own_harness(tmp_path: Path, fake_server: FakeProviderServer) -> Iterator[Harness]:
    yield from make_harness(tmp_path, fake_server)


def test_sigkill_mid_batch_loses_no_acknowledged_message(own_harness: Harness) -> None:
    harness = own_harness
    tenant = harness.tenant()
    channel = harness.meta_channel(tenant)
    bodies: list[tuple[list[str], bytes]] = []
    for n in range(400):
        messages, contacts = [], []
        for i in range(5):
            message, contact = meta_text("5511987654321", f"msg {n}.{i}",
                                         f"wamid.kill-{n}-{i}-{uuid.uuid4().hex[:8]}")
            messages.append(message)
            contacts.append(contact)
        body = dumps(meta_envelope(channel.key, channel.waba_id or "", "5511940001234",
                                   messages, None, contacts[:1]))
        bodies.append(([m["id"] for m in messages], body))

    acknowledged: list[str] = []

    async def send_all() -> None:
        queue: asyncio.Queue[tuple[list[str], bytes]] = asyncio.Queue()
        for item in bodies:
            queue.put_nowait(item)
        killed = asyncio.Event()

        async def sender(client: httpx.AsyncClient) -> None:
            while not queue.empty():
                ids, body = queue.get_nowait()
                try:
                    answer = await client.post("/webhooks/meta", content=body, headers={
                        "X-Hub-Signature-256": sign(body, channel.app_secret or "")})
                except httpx.HTTPError:
                    continue
                if answer.status_code == 200:
                    acknowledged.extend(ids)
                if len(acknowledged) >= 5 * 150 and not killed.is_set():
                    killed.set()
                    harness.gateway.kill()

        async with httpx.AsyncClient(base_url=harness.gateway.base_url, timeout=5) as client:
            await asyncio.gather(*(sender(client) for _ in range(16)))

    asyncio.run(send_all())
    assert harness.gateway.process is not None
    assert harness.gateway.process.returncode == -9, "the gateway was not killed mid-batch"
    assert 5 * 150 <= len(acknowledged) < 5 * 400

    harness.gateway.start()
    expected = set(acknowledged)
    rows = harness.wait_rows(tenant, len(expected), timeout=60, predicate=lambda rows: expected
                             <= {r["provider_message_id"] for r in rows})
    stored = [r["provider_message_id"] for r in rows]
    assert len(stored) == len(set(stored)), "a message was stored twice"
    assert expected <= set(stored)
