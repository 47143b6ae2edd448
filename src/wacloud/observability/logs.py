"""Logging: JSON or plain lines, with a filter that masks secrets and phone numbers.

Tokens, `Authorization` headers and secrets never reach a log line, whatever code logs them;
long digit runs (phone numbers) are masked to their last four digits. A JSON line
(`WACLOUD_LOG_JSON=1`) is one object per event: time, level, logger, message, and the
`trace_id`, `tenant`, `channel`, `stage` and `message_id` of the message being handled (from
the log context of `wacloud.observability.tracing`, or given as `extra=`), each masked like the
message.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable

from wacloud.observability.tracing import FIELDS, LOG_CONTEXT
from wacloud.settings import Settings

PATTERNS: list[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]] = [
    # Any scheme (Bearer, Basic, ...): the credential after it is what must go.
    (re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?)([a-z]+\s+)?[^\s\"',}]+"),
     r"\1\2***"),
    (re.compile(r"(?i)((?:token|secret|password|app_secret|verify_token|access_token)"
                r"[\"']?\s*[:=]\s*[\"']?)(bearer\s+)?[^\s\"'&,}]+"), r"\1\2***"),
    (re.compile(r"(?i)bearer\s+[A-Za-z0-9._\-]{8,}"), "Bearer ***"),
    (re.compile(r"(?i)(://[^:/\s]+:)[^@\s]+@"), r"\1***@"),
    (re.compile(r"\b(\d{6,})(\d{4})\b"), lambda m: "*" * len(m.group(1)) + m.group(2)),
]


def mask(text: str) -> str:
    for pattern, replacement in PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class SecretMaskingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg = mask(message)
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = mask(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


TRACE_FIELDS = ("trace_id", "outbound_trace_id")
# Further `extra=` fields a JSON line carries when a log call gives them.
EXTRA_FIELDS = ("provider", "direction", "status", "provider_message_id", "error_code",
                "outbound_trace_id")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {"time": self.formatTime(record), "level": record.levelname,
                                   "logger": record.name, "message": record.getMessage()}
        context = LOG_CONTEXT.get() or {}
        for name in (*FIELDS, *EXTRA_FIELDS):
            value = getattr(record, name, None)
            if value is None:
                value = context.get(name)
            if value is None:
                continue
            if name in FIELDS:
                value = str(value)  # the same type whether from the context or `extra=`
            # Extras escape the masking filter (it sees the message only): mask them here;
            # trace ids are ours (random hex), and masked they would no longer match.
            data[name] = (mask(value) if isinstance(value, str) and name not in TRACE_FIELDS
                          else value)
        if record.exc_text:
            data["exception"] = record.exc_text
        return json.dumps(data, ensure_ascii=False)


QUIET_LIBRARIES = ("botocore", "boto3", "s3transfer", "aiormq", "aio_pika", "urllib3")


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(SecretMaskingFilter())
    if settings.log_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # Libraries' own INFO lines (boto3 telling where it found credentials, each AMQP connection
    # opened) say nothing an operator acts on; their warnings and errors still come through.
    for chatty in QUIET_LIBRARIES:
        logging.getLogger(chatty).setLevel(max(root.level, logging.WARNING))
