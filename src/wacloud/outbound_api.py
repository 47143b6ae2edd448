"""Validation of messages submitted through the API or the CLI, into outbox rows.

The accepted shape is Meta's send format: `{"channel", "to", "type", <type>: {...}}` plus
optional `reply_to` (or Meta's `context.message_id`) and `client_reference`. Like Meta's send
API, `recipient` (a business-scoped user id) may stand in for `to` (`to` wins when both are
given), and `"recipient_type": "group"` makes `to` a group id (Meta's Groups API).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wacloud.providers.meta_send import is_bsuid

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
    elif kind == "location":
        _require(all(isinstance(content.get(k), int | float) for k in ("latitude", "longitude")),
                 "`location.latitude` and `location.longitude` must be numbers")
    elif kind == "template":
        _require(isinstance(content.get("name"), str), "`template.name` is required")
    elif kind == "reaction":
        _require(isinstance(content.get("message_id"), str), "`reaction.message_id` is required")
    reply_to = data.get("reply_to") or (data.get("context") or {}).get("message_id")
    _require(reply_to is None or isinstance(reply_to, str), "`reply_to` must be a message id")
    reference = data.get("client_reference")
    _require(reference is None or (isinstance(reference, str) and len(reference) <= 191),
             "`client_reference` must be a string of at most 191 characters")
    return Submission(channel, str(to), kind, content, reply_to, reference,
                      "group" if recipient_type == "group" and kind != "read" else None)
