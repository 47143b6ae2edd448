"""Logging: JSON or plain lines, with a filter that masks secrets and phone numbers.

Tokens, `Authorization` headers and secrets never reach a log line, whatever code logs them;
long digit runs (phone numbers) are masked to their last four digits.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable

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


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {"time": self.formatTime(record), "level": record.levelname,
                "logger": record.name, "message": record.getMessage()}
        for extra in ("tenant", "channel", "message_id", "stage"):
            if hasattr(record, extra):
                data[extra] = getattr(record, extra)
        if record.exc_text:
            data["exception"] = record.exc_text
        return json.dumps(data, ensure_ascii=False)


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
