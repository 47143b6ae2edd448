"""Queue names on SQS: the URL's prefix plus the port's name, made legal for SQS.

SQS names allow letters, digits, `-` and `_`, at most 80 characters, and FIFO queues must end in
`.fifo`. A port name's dots become `-`: with `sqs://?prefix=acme`, `inbound.raw` is
`acme-inbound-raw`, `outbound.send` (FIFO) `acme-outbound-send.fifo` and its dead-letter queue
`outbound.send.dlq` is `acme-outbound-send-dlq.fifo` (SQS wants a FIFO queue's DLQ FIFO too).
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

MAX_NAME = 80
FIFO_SUFFIX = ".fifo"
DEAD_SUFFIX = ".dlq"
_LEGAL = re.compile(r"[A-Za-z0-9_-]*")


def parse_prefix(url: str) -> str:
    """The `prefix` of `sqs://?prefix=NAME` ("" when absent), checked for SQS's characters."""
    parts = urlsplit(url)
    if parts.scheme != "sqs":
        raise ValueError(f"not an SQS queue URL: {parts.scheme!r} (expected sqs://?prefix=NAME)")
    if parts.netloc or parts.path not in ("", "/"):
        raise ValueError("WACLOUD_QUEUE_URL: sqs:// takes no host or path (region, credentials "
                         "and endpoint come from the standard AWS settings); "
                         "use sqs://?prefix=NAME")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"prefix"})
    if unknown:
        raise ValueError(f"WACLOUD_QUEUE_URL: unknown sqs:// parameter(s) {', '.join(unknown)}")
    prefix = (query.get("prefix") or [""])[-1]
    if not _LEGAL.fullmatch(prefix):
        raise ValueError(f"WACLOUD_QUEUE_URL: prefix {prefix!r} may only hold letters, digits, "
                         "'-' and '_' (SQS queue names)")
    return prefix


def sqs_name(prefix: str, name: str, *, fifo: bool) -> str:
    """The SQS queue name of port queue `name` under `prefix`."""
    base = name.replace(".", "-")
    if not _LEGAL.fullmatch(base):
        raise ValueError(f"queue name {name!r} holds characters SQS does not allow")
    joined = f"{prefix}{'-' if prefix and prefix[-1] not in '-_' else ''}{base}"
    full = joined + (FIFO_SUFFIX if fifo else "")
    if len(full) > MAX_NAME:
        raise ValueError(f"SQS queue name {full!r} is longer than {MAX_NAME} characters: "
                         "use a shorter prefix")
    return full


def source_of(name: str) -> str | None:
    """The source queue's port name when `name` is a dead-letter queue's (`X.dlq` -> `X`)."""
    return name[:-len(DEAD_SUFFIX)] if name.endswith(DEAD_SUFFIX) else None
