"""Validation of messages submitted through the API or the CLI, into outbox rows.

The accepted shape is Meta's send format: `{"channel", "to", "type", <type>: {...}}` plus
optional `reply_to` (or Meta's `context.message_id`) and `client_reference`. Like Meta's send
API, `recipient` (a business-scoped user id) may stand in for `to` (`to` wins when both are
given), and `"recipient_type": "group"` makes `to` a group id (Meta's Groups API).
A validity: `ttl_s` (seconds from now) or `expires_at` (ISO 8601, or unix seconds), like
Twilio's ValidityPeriod (`parse_validity`). The API's `Idempotency-Key` header is checked
by `parse_idempotency_key`; `request_hash` fingerprints a body to tell a retry from a
different request under the same key.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from wacloud.domain.model import is_bsuid

# Longest validity: also what keeps a timestamp inside every database's DATETIME range.
MAX_TTL_S = 30 * 24 * 3600
MAX_IDEMPOTENCY_KEY = 191

MEDIA_TYPES = {"image", "video", "audio", "document", "sticker"}
TYPES = MEDIA_TYPES | {"text", "template", "interactive", "reaction", "location", "contacts",
                       "read"}


class InvalidMessage(ValueError):
    """The submitted message is not valid; the text says what to fix."""


@dataclass(slots=True)
class Submission:
    channel: str
    to: str
    type: str
    content: dict[str, Any]
    reply_to: str | None
    client_reference: str | None
    recipient_type: str | None = None  # "group", or None for one person


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidMessage(message)


def parse_submission(data: Any) -> Submission:
    _require(isinstance(data, dict), "the body must be a JSON object")
    channel, to, kind = data.get("channel"), data.get("to"), data.get("type")
    _require(isinstance(channel, str) and bool(channel),
             "`channel` (the channel's provider id) is required")
    _require(isinstance(kind, str) and kind in TYPES,
             f"`type` must be one of {', '.join(sorted(TYPES))}")
    content = data.get(kind)
    if kind == "contacts" and isinstance(content, list):
        content = {"contacts": content}  # Meta's format: a list of contact cards
    _require(isinstance(content, dict), f"`{kind}` must be an object with the message content")
    recipient_type = data.get("recipient_type", "individual")
    _require(recipient_type in ("individual", "group"),
             "`recipient_type` must be 'individual' or 'group'")
    bsuid = data.get("recipient")
    _require(bsuid is None or (isinstance(bsuid, str) and is_bsuid(bsuid.strip())),
             "`recipient` must be a business-scoped user id (like BR.1502576394655843)")
    _require(bsuid is None or recipient_type == "individual",
             "`recipient` names a person; a group goes in `to` with `recipient_type` 'group'")
    if kind == "read":
        _require(isinstance(content.get("message_id"), str), "`read.message_id` is required")
        _require(to is None or isinstance(to, str), "`to` must be a string")
        to = to or ""
    else:
        if not to and isinstance(bsuid, str):
            to = bsuid.strip()
        _require(isinstance(to, str) and bool(to.strip()),
                 "`to` (recipient) or `recipient` (a business-scoped user id) is required")
    if kind == "text":
        body = content.get("body")
        _require(isinstance(body, str) and 0 < len(body) <= 4096,
                 "`text.body` must be 1 to 4096 characters")
    elif kind in MEDIA_TYPES:
        _require(("link" in content) != ("id" in content),
                 f"`{kind}` needs exactly one of `link` or `id`")
        where = content.get("link", content.get("id"))
        _require(isinstance(where, str) and bool(where.strip()),
                 f"`{kind}.link` or `{kind}.id` must be a non-empty string")
    elif kind == "location":
        latitude, longitude = _number(content.get("latitude")), _number(content.get("longitude"))
        _require(latitude is not None and longitude is not None and abs(latitude) <= 90
                 and abs(longitude) <= 180,
                 "`location.latitude` (-90 to 90) and `location.longitude` (-180 to 180) "
                 "must be numbers")
    elif kind == "template":
        _require(isinstance(content.get("name"), str), "`template.name` is required")
    elif kind == "reaction":
        _require(isinstance(content.get("message_id"), str), "`reaction.message_id` is required")
    context = data.get("context")
    _require(context is None or isinstance(context, dict), "`context` must be an object")
    reply_to = data.get("reply_to") or (data.get("context") or {}).get("message_id")
    _require(reply_to is None or isinstance(reply_to, str), "`reply_to` must be a message id")
    reference = data.get("client_reference")
    _require(reference is None or (isinstance(reference, str) and len(reference) <= 191),
             "`client_reference` must be a string of at most 191 characters")
    _require(_storable(data), "the body holds a value no database stores (NaN, Infinity or "
             "a lone surrogate like \\ud800)")
    return Submission(channel, str(to), kind, content, reply_to, reference,
                      "group" if recipient_type == "group" and kind != "read" else None)


def _storable(data: Any) -> bool:
    """Whether `data` goes into a JSON column and a text column as it is: callers other than
    the API (the CLI, a script) may hand over what Python's json module let through."""
    try:
        json.dumps(data, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError):  # UnicodeEncodeError is a ValueError
        return False
    return True


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int past float's range: no time or place is that far
        return None
    return number if math.isfinite(number) else None


def parse_validity(data: Any, now: datetime) -> datetime | None:
    """The message's expiry from `ttl_s` (seconds after `now`) or `expires_at` (ISO 8601,
    UTC when it names no offset, or unix seconds); None when neither is given. A time
    already past, or more than 30 days away, is refused: the client should know now."""
    if not isinstance(data, dict):
        return None
    ttl, at = data.get("ttl_s"), data.get("expires_at")
    if ttl is None and at is None:
        return None
    _require(ttl is None or at is None, "give `ttl_s` or `expires_at`, not both")
    if ttl is not None:
        seconds = _number(ttl)
        _require(seconds is not None and 1 <= seconds <= MAX_TTL_S,
                 f"`ttl_s` must be a number of seconds from 1 to {MAX_TTL_S}")
        assert seconds is not None
        return now + timedelta(seconds=seconds)
    stamp = _number(at)
    expires: datetime | None = None
    if stamp is not None:
        if abs(stamp - now.timestamp()) <= 10 * MAX_TTL_S:
            expires = datetime.fromtimestamp(stamp, UTC)
    elif isinstance(at, str):
        try:
            parsed = datetime.fromisoformat(at.strip())
            expires = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)
        except (ValueError, OverflowError):  # OverflowError: year 9999 with an offset
            expires = None
    _require(expires is not None,
             "`expires_at` must be an ISO 8601 time (e.g. 2026-12-05T10:00:00Z) or unix seconds")
    assert expires is not None
    _require(expires > now, "`expires_at` has already passed")
    _require(expires <= now + timedelta(seconds=MAX_TTL_S),
             f"`expires_at` must be at most {MAX_TTL_S} seconds (30 days) from now")
    return expires


def parse_idempotency_key(value: str | None) -> str | None:
    """The `Idempotency-Key` header: None when absent; 1 to 191 visible ASCII characters."""
    if value is None:
        return None
    _require(0 < len(value) <= MAX_IDEMPOTENCY_KEY and value.isascii() and value.isprintable()
             and value.strip() == value,
             f"`Idempotency-Key` must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters")
    return value


def request_hash(data: Any) -> str:
    """A fingerprint of a parsed body: the same JSON, however spaced or ordered, gives the
    same hash."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()
