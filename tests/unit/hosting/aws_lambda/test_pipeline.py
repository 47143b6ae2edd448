"""The Lambda handlers end to end: real API Gateway / function URL / SQS / EventBridge event
shapes, the SQLite queues, real SQLite tenant databases, the fake provider over real HTTP."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from tests.e2e.conftest import wait_for
from tests.unit.hosting.aws_lambda.conftest import APP_SECRET, PNID, WABA
from tests.unit.hosting.aws_lambda.harness import (
    LambdaContext,
    LambdaWorld,
    fixture,
    http_event,
    meta_event,
)
from wacloud.adapters.db.tenant import outbox
from wacloud.bootstrap import Gateway, build_gateway
from wacloud.domain.model import OutboundStatus, Provider
from wacloud.hosting.aws_lambda import collector, receiver, runtime, saver, sender, writer
from wacloud.settings import Settings
from wacloud.stages.envelopes import (
    INBOUND_RAW,
    OUTBOUND_RESULTS,
    OUTBOUND_SEND,
)
from wacloud.testing.webhooks import dumps, meta_envelope, meta_text

SENDER = "5511987650000"


def text_webhook(body: str, wamid: str | None = None) -> dict[str, object]:
    message, contact = meta_text(SENDER, body, wamid or f"wamid.{uuid.uuid4().hex}")
    return meta_envelope(PNID, WABA, "5511940001234", [message], contacts=[contact])


def test_a_signed_meta_webhook_goes_from_the_receiver_through_the_writer_into_the_tenant_db(
        world: LambdaWorld) -> None:
    answer = world.invoke("receiver", receiver.handler,
                          meta_event(text_webhook("olá", "wamid.lambda-1"), APP_SECRET))
    assert answer["statusCode"] == 200, answer
    assert world.depth(INBOUND_RAW)["visible"] == 1

    messages, failed = world.deliver(INBOUND_RAW, "writer", writer.handler)
    assert len(messages) == 1 and failed == []
    [row] = world.inbound_rows("acme")
    assert row["provider_message_id"] == "wamid.lambda-1" and row["text"] == "olá"
    depth = world.depth(INBOUND_RAW)
    assert depth["visible"] == depth["in_flight"] == 0


def test_the_gateway_is_built_once_per_container(world: LambdaWorld,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[Gateway] = []

    def build(settings: Settings) -> Gateway:
        built.append(build_gateway(settings))
        return built[-1]

    monkeypatch.setattr(runtime, "build_gateway", build)
    for i in range(3):
        assert world.invoke("receiver", receiver.handler, meta_event(
            text_webhook(f"warm {i}"), APP_SECRET))["statusCode"] == 200
    world.deliver(INBOUND_RAW, "writer", writer.handler)
    world.invoke("collector", collector.handler, fixture("schedule_event"))
    assert len(built) == 1 and world.app.gateway is built[0]


def test_a_whapi_webhook_through_a_function_url_with_a_base64_body(world: LambdaWorld) -> None:
    channel = world.registry.add_channel(tenant="acme", provider=Provider.WHAPI,
                                         key="LAMBDA-7QX2", token="whapi-token",
                                         webhook_secret="whapi-hook-secret",
                                         api_base_url=world.fake_url)
    payload = {"messages": [{"id": "whapi-lambda-1", "from_me": False, "type": "text",
                             "chat_id": f"{SENDER}@s.whatsapp.net", "timestamp": int(time.time()),
                             "from": SENDER, "text": {"body": "oi pela url"}}],
               "event": {"type": "messages", "event": "post"}, "channel_id": channel.key}
    path = f"/webhooks/whapi/{channel.key}"
    wrong = world.invoke("receiver", receiver.handler, http_event(
        path, dumps(payload), {"Authorization": "Bearer wrong"}, function_url=True))
    assert wrong["statusCode"] == 401
    answer = world.invoke("receiver", receiver.handler, http_event(
        path, dumps(payload), {"Authorization": "Bearer whapi-hook-secret"},
        function_url=True))
    assert answer["statusCode"] == 200, answer
    _, failed = world.deliver(INBOUND_RAW, "writer", writer.handler)
    assert failed == []
    [row] = world.inbound_rows("acme")
    assert row["provider_message_id"] == "whapi-lambda-1" and row["text"] == "oi pela url"


def test_the_receiver_refuses_what_serve_refuses_and_answers_the_handshake(
        world: LambdaWorld) -> None:
    unsigned = world.invoke("receiver", receiver.handler, meta_event(text_webhook("x"), None))
    forged = world.invoke("receiver", receiver.handler,
                          meta_event(text_webhook("x"), "not-the-app-secret"))
    assert unsigned["statusCode"] == forged["statusCode"] == 401
    assert json.loads(forged["body"])["error"].startswith("missing or invalid")
    assert world.depth(INBOUND_RAW)["visible"] == 0

    handshake = world.invoke("receiver", receiver.handler, http_event(
        "/webhooks/meta", b"", {}, method="GET",
        query="hub.mode=subscribe&hub.verify_token=lambda-verify-token&hub.challenge=4242"))
    assert handshake["statusCode"] == 200 and handshake["body"] == "4242"
    wrong_token = world.invoke("receiver", receiver.handler, http_event(
        "/webhooks/meta", b"", {}, method="GET",
        query="hub.mode=subscribe&hub.verify_token=nope&hub.challenge=4242"))
    assert wrong_token["statusCode"] == 403
    elsewhere = world.invoke("receiver", receiver.handler, http_event("/v1/admin", b"{}", {}))
    assert elsewhere["statusCode"] == 404


def test_a_named_http_api_stage_is_not_part_of_the_route(world: LambdaWorld) -> None:
    event = meta_event(text_webhook("via prod"), APP_SECRET)
    event["requestContext"]["stage"] = "prod"
    event["rawPath"] = "/prod/webhooks/meta"
    assert world.invoke("receiver", receiver.handler, event)["statusCode"] == 200
    assert world.depth(INBOUND_RAW)["visible"] == 1


def test_webhooks_of_no_channel_are_parked_by_the_writer_not_dropped(world: LambdaWorld) -> None:
    stranger = meta_envelope("106540399999999", "102290199999999", "5511900000000",
                             [meta_text(SENDER, "quem?", "wamid.stranger")[0]])
    # No channel names it: signed with the global secret the deployment was given.
    world.registry.add_channel(tenant="acme", provider=Provider.META, key="106540352240002",
                               phone_number_id="106540352240002", token="t",
                               app_secret=APP_SECRET, api_base_url=world.fake_url)
    assert world.invoke("receiver", receiver.handler,
                        meta_event(stranger, APP_SECRET))["statusCode"] == 200
    _, failed = world.deliver(INBOUND_RAW, "writer", writer.handler)
    assert failed == []
    assert world.inbound_rows("acme") == []
    [parked] = world.registry.parked_items()
    assert "no tenant" in parked.reason


def test_one_poisoned_record_is_the_only_one_reported_failed(world: LambdaWorld) -> None:
    for i in range(2):
        assert world.invoke("receiver", receiver.handler, meta_event(
            text_webhook(f"good {i}", f"wamid.good-{i}"), APP_SECRET))["statusCode"] == 200
    # Not an envelope at all: the stage raises on it.
    world.app.run(world.queue(INBOUND_RAW).send(b"{not an envelope"))
    assert world.invoke("receiver", receiver.handler, meta_event(
        text_webhook("good 2", "wamid.good-2"), APP_SECRET))["statusCode"] == 200

    messages, failed = world.deliver(INBOUND_RAW, "writer", writer.handler)
    assert len(messages) == 4
    [poisoned] = [m.message_id for m in messages if m.body == b"{not an envelope"]
    assert failed == [poisoned]
    stored = sorted(r["provider_message_id"] for r in world.inbound_rows("acme"))
    assert stored == ["wamid.good-0", "wamid.good-1", "wamid.good-2"]
    # Released with backoff (ChangeMessageVisibility), not deleted and not visible at once.
    depth = world.depth(INBOUND_RAW)
    assert depth["visible"] == 0 and depth["delayed"] + depth["in_flight"] == 1


def insert_rows(world: LambdaWorld, recipients: list[str]) -> list[int]:
    engine = world.broker.tenant_store("acme").engine
    return [outbox.insert_outbound(engine, channel=PNID, recipient=to, type="text",
                                   content={"body": f"msg {i} to {to}"})
            for i, to in enumerate(recipients)]


def test_collector_sender_saver_take_a_row_to_accepted(world: LambdaWorld) -> None:
    ids = insert_rows(world, ["5511911110001", "5511911110002"])
    result = world.invoke("collector", collector.handler, fixture("schedule_event"))
    assert result == {"queued": 2, "passes": 1}
    assert {r["status"] for r in world.outbox("acme").values()} == {OutboundStatus.QUEUED}

    messages, failed = world.deliver(OUTBOUND_SEND, "sender", sender.handler)
    assert len(messages) == 2 and failed == []
    assert sorted(s.recipient for s in world.fake.sent_snapshot() if s.accepted) == [
        "5511911110001", "5511911110002"]
    _, failed = world.deliver(OUTBOUND_RESULTS, "saver", saver.handler)
    assert failed == []
    rows = world.outbox("acme")
    for row_id in ids:
        assert rows[row_id]["status"] == OutboundStatus.ACCEPTED
        assert rows[row_id]["provider_message_id"]
    assert world.depth(OUTBOUND_SEND)["visible"] == world.depth(OUTBOUND_RESULTS)["visible"] == 0


def test_the_collector_keeps_collecting_for_its_window_within_the_deadline(
        world: LambdaWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WACLOUD_LAMBDA_COLLECT_WINDOW_S", "30")
    monkeypatch.setenv("WACLOUD_COLLECT_POLL_S", "0.05")
    # The function's own deadline is nearer than the window: it wins.
    context = LambdaContext(remaining_ms=int((collector.DEADLINE_MARGIN_S + 0.3) * 1000))
    result = world.invoke("collector", collector.handler, fixture("schedule_event"), context)
    assert result["passes"] > 1 and result["queued"] == 0


def test_fifo_order_holds_after_a_failed_send(world: LambdaWorld) -> None:
    a, b = "5511922220001", "5511922220002"
    ids = insert_rows(world, [a, a, a, b])
    assert world.invoke("collector", collector.handler, fixture("schedule_event"))["queued"] == 4
    fake = world.fake
    fake.script(a, times=1, status=503, error_code=131016)  # Meta: service unavailable

    messages, failed = world.deliver(OUTBOUND_SEND, "sender", sender.handler)
    assert len(messages) == 4
    group_a = [m.message_id for m in messages if m.group_id and m.group_id.endswith(a)]
    # The failed one and everything after it in its group; the other group went out.
    assert sorted(failed) == sorted(group_a) and len(group_a) == 3
    assert [s.recipient for s in fake.sent_snapshot() if s.accepted] == [b]
    # The failed head waits out its backoff; its group is blocked behind it meanwhile.
    assert world.receive(OUTBOUND_SEND) == []

    def retried() -> bool:
        handed, again = world.deliver(OUTBOUND_SEND, "sender", sender.handler)
        # In its order: the head first, then the rest of its group.
        assert [m.message_id for m in handed] in ([], group_a)
        return bool(handed) and not again

    wait_for(retried, 10, message="the group sent after its backoff")
    sent_to_a = [s.body["text"]["body"] for s in fake.sent_snapshot()
                 if s.accepted and s.recipient == a]
    assert sent_to_a == [f"msg {i} to {a}" for i in range(3)]
    _, failed = world.deliver(OUTBOUND_RESULTS, "saver", saver.handler)
    assert failed == []
    assert {world.outbox("acme")[i]["status"] for i in ids} == {OutboundStatus.ACCEPTED}
