"""AWS event shapes (the fixtures are AWS's documented examples) into the queue port and ASGI."""

from __future__ import annotations

import asyncio

import pytest

from tests.unit.hosting.aws_lambda.harness import fixture
from wacloud.hosting.aws_lambda.http_event import request_body, scope_of
from wacloud.hosting.aws_lambda.records import queue_of, received_message
from wacloud.stages.envelopes import (
    INBOUND_EVENTS,
    INBOUND_MEDIA,
    INBOUND_RAW,
    OUTBOUND_RESULTS,
    OUTBOUND_SEND,
    OUTBOUND_SEND_DEAD,
)

PORT_QUEUES = [INBOUND_RAW, INBOUND_EVENTS, INBOUND_MEDIA, OUTBOUND_SEND, OUTBOUND_SEND_DEAD,
               OUTBOUND_RESULTS]


def test_a_standard_queue_record_becomes_a_received_message() -> None:
    [record] = fixture("sqs_event")["Records"]
    message = received_message(record)
    assert message.message_id == "059f36b4-87a3-44ab-83d2-661975830a7d"
    assert message.receipt == record["receiptHandle"]
    assert message.body == b"test"
    assert message.receive_count == 1
    assert message.group_id is None
    assert message.sent_at == pytest.approx(1545082649.183)
    assert message.attributes == {"reason": "timeout"}


def test_a_fifo_record_keeps_its_group_and_receive_count() -> None:
    [record] = fixture("sqs_fifo_event")["Records"]
    message = received_message(record)
    assert message.group_id == "1"
    assert message.receive_count == 2
    assert message.body == b"Test message."


def test_a_binary_message_attribute_stays_base64() -> None:
    [record] = fixture("sqs_event")["Records"]
    record["messageAttributes"] = {"blob": {"binaryValue": "AAEC", "dataType": "Binary"}}
    assert received_message(record).attributes == {"blob": "AAEC"}


@pytest.mark.parametrize(("sqs_name", "expected"), [
    ("wacloud-inbound-raw", INBOUND_RAW),
    ("prod_inbound_events", INBOUND_EVENTS),
    ("wacloud-outbound-send.fifo", OUTBOUND_SEND),
    ("wacloud-outbound-send-dlq", OUTBOUND_SEND_DEAD),
    ("x-outbound-results", OUTBOUND_RESULTS),
    ("wacloud-something-else", None),
])
def test_the_queue_of_a_record_is_found_whatever_the_prefix_and_spelling(
        sqs_name: str, expected: str | None) -> None:
    arn = f"arn:aws:sqs:us-east-1:123456789012:{sqs_name}"
    assert queue_of(arn, PORT_QUEUES) == expected


def test_an_http_api_event_becomes_an_asgi_request() -> None:
    event = fixture("http_api_event")
    event["rawQueryString"] = "token=a%20b"
    event["cookies"] = ["a=1", "b=2"]
    scope = scope_of(event)
    assert scope["method"] == "POST" and scope["path"] == "/webhooks/meta"
    assert scope["raw_path"] == b"/webhooks/meta" and scope["query_string"] == b"token=a%20b"
    headers = dict(scope["headers"])
    assert headers[b"content-type"] == b"application/json" and headers[b"cookie"] == b"a=1; b=2"
    assert scope["client"] == ("205.255.255.176", 0)
    assert request_body(event) == b"{}"


def test_a_function_url_event_with_a_base64_body() -> None:
    event = fixture("function_url_event")
    assert scope_of(event)["path"] == "/webhooks/whapi/CHANNEL"
    assert request_body(event) == b"{}"


def test_an_asgi_answer_becomes_a_proxy_response() -> None:
    from wacloud.hosting.aws_lambda.http_event import call

    async def app(scope: object, receive: object, send: object) -> None:
        assert callable(receive) and callable(send)
        request = await receive()
        assert request["body"] == b"{}"
        await send({"type": "http.response.start", "status": 201,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2"),
                                (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    answer = asyncio.run(call(app, fixture("http_api_event")))
    assert answer == {"statusCode": 201, "isBase64Encoded": False, "body": "ok",
                      "headers": {"content-type": "text/plain", "set-cookie": "a=1,b=2"}}
