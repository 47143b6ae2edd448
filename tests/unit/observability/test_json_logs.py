"""JSON log lines: one object per line with the log context's trace id, tenant, channel,
stage and message id; the masking filter still applies, to those fields too."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from wacloud.adapters.db.engines import create_engine
from wacloud.adapters.db.registry.store import Registry
from wacloud.adapters.http.download_client import DownloadClient
from wacloud.adapters.http.provider_client import ProviderClient
from wacloud.adapters.media.local.store import LocalMediaStore
from wacloud.credentials.broker import CredentialsBroker
from wacloud.domain.model import Provider
from wacloud.media.copier import MediaCopier
from wacloud.observability.logs import JsonFormatter, SecretMaskingFilter
from wacloud.observability.tracing import log_context, new_trace_id, outbound_trace_id, set_stage
from wacloud.security.crypto import SecretBox, new_key
from wacloud.stages.envelopes import RawWebhook
from wacloud.stages.ingest import raw_output
from wacloud.stages.receive import ReceiveContext, receive

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(SecretMaskingFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("wacloud.test.json")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.handlers.clear()


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_context_fields_are_on_every_line_and_extra_wins(
        captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    with log_context(trace_id="00112233445566778899", tenant="acme", channel="CH-1",
                     message_id=42):
        logger.info("first")
        with log_context(stage="send"):
            logger.warning("second", extra={"channel": "CH-2", "error_code": "131026"})
    logger.info("outside")

    first, second, outside = lines(stream)
    # A trace id is never masked, though it may look like a long number.
    assert first == {**first, "trace_id": "00112233445566778899", "tenant": "acme",
                     "channel": "CH-1", "message_id": "42", "message": "first"}
    assert "stage" not in first
    assert second["stage"] == "send" and second["channel"] == "CH-2"
    assert second["error_code"] == "131026" and second["level"] == "WARNING"
    assert set(outside) == {"time", "level", "logger", "message"}


def test_fields_and_exceptions_are_masked_and_stay_one_line(
        captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    try:
        raise RuntimeError("call failed: Authorization: Bearer EAAGsecret123456 to "
                           "5511987654321")
    except RuntimeError:
        with log_context(trace_id=new_trace_id(), channel="5511987654321"):
            logger.exception("send to %s failed with token=%s", "5511987654321", "tok-777")

    text = stream.getvalue()
    assert text.count("\n") == 1  # the traceback is inside the one JSON line
    for secret in ("5511987654321", "EAAGsecret123456", "tok-777"):
        assert secret not in text
    (line,) = lines(stream)
    assert line["channel"] == "*********4321"
    assert "RuntimeError" in str(line["exception"])


def test_ingest_puts_a_trace_id_in_the_envelope_and_old_headers_still_decode() -> None:
    body = raw_output(Provider.WHAPI, b'{"messages":[]}', "CH-1").message.body
    decoded = RawWebhook.decode(body)
    assert decoded.trace is not None and len(decoded.trace) == 16
    assert decoded.body == b'{"messages":[]}' and decoded.channel_key == "CH-1"
    assert RawWebhook.decode(decoded.encode()).trace == decoded.trace
    # A header of the previous version (no trace) decodes as before.
    old = b'{"v":2,"provider":"whapi","channel_key":"CH-1","received_at":1.0,' \
          b'"kind":"webhook","signature":null}\n{}'
    assert RawWebhook.decode(old).trace is None and RawWebhook.decode(old).body == b"{}"


def test_outbound_trace_ids_are_the_same_wherever_computed() -> None:
    assert outbound_trace_id("acme", 7) == outbound_trace_id("acme", 7)
    assert outbound_trace_id("acme", 7) != outbound_trace_id("acme", 8)
    assert outbound_trace_id("acme", 7) != outbound_trace_id("other", 7)


async def test_a_stage_name_set_in_a_task_reaches_the_tasks_it_starts(
        captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured

    async def runner() -> None:
        set_stage("save")
        await asyncio.create_task(asyncio.to_thread(logger.info, "in a thread of a child"))

    await asyncio.create_task(runner())
    logger.info("the test's own task")

    child, own = lines(stream)
    assert child["stage"] == "save" and "stage" not in own


async def test_the_receive_stage_hands_the_trace_id_on_to_write(tmp_path: Path) -> None:
    """Hosts that run receive and write apart (Lambda, distributed workers): the trace id
    travels on `inbound.events` beside the events."""
    engine = create_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    registry = Registry(engine, SecretBox([new_key()]))
    registry.create_schema()
    broker = CredentialsBroker(registry, tenants_dir=tmp_path / "tenants")

    async def park(**kwargs: Any) -> int:
        return await asyncio.to_thread(registry.park, **kwargs)

    body = (FIXTURES / "whapi" / "text.json").read_bytes()
    data = RawWebhook("whapi", "MANTIS-M72HC", 4.0, body, trace="0123456789abcdef").encode()
    try:
        async with DownloadClient() as client, ProviderClient() as api:
            copier = MediaCopier(LocalMediaStore(tmp_path / "media"), client,
                                 tmp_dir=tmp_path / "tmp", max_bytes=1024, allow_local=True,
                                 api=api)
            [output] = await receive(data, ReceiveContext(broker, copier, park))
    finally:
        broker.close()
        engine.dispose()

    handed = json.loads(output.message.body)
    assert handed["trace"] == "0123456789abcdef" and handed["received_at"] == 4.0
    assert handed["events"]
