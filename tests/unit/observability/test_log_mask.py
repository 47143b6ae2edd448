"""wacloud.observability.logs: secrets and phone numbers never reach a log line."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator

import pytest

from wacloud.observability.logs import JsonFormatter, SecretMaskingFilter, mask


@pytest.mark.parametrize(("text", "secret"), [
    ("Authorization: Bearer EAAGm0PX4ZCpsBA-secret", "EAAGm0PX4ZCpsBA-secret"),
    ("headers={'Authorization': 'Bearer sekret-token-123'}", "sekret-token-123"),
    ('{"authorization": "Bearer abcdEFGH1234"}', "abcdEFGH1234"),
    ("GET /media?token=tok-12345&x=1", "tok-12345"),
    ("https://graph.example/v23.0/1?access_token=EAAGabc123", "EAAGabc123"),
    ('{"app_secret": "s3cr3t-app-value"}', "s3cr3t-app-value"),
    ("verify_token=hub-verify-777", "hub-verify-777"),
    ("password: hunter2hunter2", "hunter2hunter2"),
    ("postgresql://user:pw-Secret9@db.internal:5432/acme", "pw-Secret9"),
    ("mysql+pymysql://root:r00tpass@127.0.0.1/x?charset=utf8mb4", "r00tpass"),
    ("sent with Bearer abcdefgh12345678 ok", "abcdefgh12345678"),
])
def test_mask_hides_the_secret(text: str, secret: str) -> None:
    masked = mask(text)

    assert secret not in masked
    assert "***" in masked


def test_mask_keeps_url_user_host_and_database() -> None:
    assert mask("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"


def test_mask_keeps_the_key_name_of_a_json_secret() -> None:
    assert mask('{"app_secret": "abc123"}') == '{"app_secret": "***"}'


def test_mask_phone_numbers_keeps_last_four_digits() -> None:
    assert mask("from 5511987654321 to +14155550123") == (
        "from *********4321 to +*******0123")


def test_mask_leaves_short_numbers_alone() -> None:
    assert mask("retry 3 of 5, HTTP 429, code 131026") == "retry 3 of 5, HTTP 429, code 131026"


def test_mask_hides_basic_authorization_credentials() -> None:
    assert "dXNlcjpwYXNzd29yZA==" not in mask("Authorization: Basic dXNlcjpwYXNzd29yZA==")


def test_mask_hides_a_bearer_value_under_a_token_key() -> None:
    assert "abcdefgh12345" not in mask('{"token": "Bearer abcdefgh12345"}')


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO, logging.Handler]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(SecretMaskingFilter())
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger(f"wacloud.test.mask.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield logger, stream, handler
    finally:
        logger.removeHandler(handler)


def test_log_record_args_are_masked(
        capture: tuple[logging.Logger, io.StringIO, logging.Handler]) -> None:
    logger, stream, _ = capture

    logger.info("calling %s with token=%s for %s", "https://u:dbpass99@h/db", "tok-ARG-SECRET",
                "5511987654321")

    out = stream.getvalue()
    assert "tok-ARG-SECRET" not in out
    assert "dbpass99" not in out
    assert "5511987654321" not in out
    assert "token=***" in out
    assert "*********4321" in out


def test_exception_traceback_with_a_token_is_masked(
        capture: tuple[logging.Logger, io.StringIO, logging.Handler]) -> None:
    logger, stream, _ = capture

    try:
        raise RuntimeError("Graph refused access_token=EAAG-EXC-SECRET for 5511987654321")
    except RuntimeError:
        logger.exception("send failed, Authorization: Bearer BEARER-MSG-SECRET")

    out = stream.getvalue()
    assert "Traceback" in out
    assert "RuntimeError" in out
    for secret in ("EAAG-EXC-SECRET", "BEARER-MSG-SECRET", "5511987654321"):
        assert secret not in out


def test_json_formatter_output_is_masked(
        capture: tuple[logging.Logger, io.StringIO, logging.Handler]) -> None:
    logger, stream, handler = capture
    handler.setFormatter(JsonFormatter())

    try:
        raise ValueError('bad config {"app_secret": "APP-JSON-SECRET"}')
    except ValueError:
        logger.error("webhook for %s", "5511987654321", exc_info=True,
                     extra={"tenant": "acme"})

    line = stream.getvalue().strip()
    data = json.loads(line)
    assert data["tenant"] == "acme"
    assert "ValueError" in data["exception"]
    assert "APP-JSON-SECRET" not in line
    assert "5511987654321" not in line
