"""Meta WhatsApp Cloud API, send side: the HTTP request for an outbound message and what
Meta's answer means for the outbox row.

Outbound content is already in Meta's send format, so the body is the row's `type` and
`content` wrapped in Meta's envelope. Legacy rows carry a ready request that is replayed as-is,
with the channel's token and only to the channel's own API host. Chakra reuses `message_body`,
`legacy_request` and `message_id`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from wacloud.domain.model import (
    JSON,
    Channel,
    OutboundMessage,
    ProviderRequest,
    SendResult,
    is_bsuid,
)
from wacloud.providers.errors import UnsupportedMessage, classify_graph, graph_error, load_json

MEDIA_TYPES = frozenset({"image", "video", "audio", "document", "sticker"})
MESSAGE_TYPES = MEDIA_TYPES | {"text", "template", "interactive", "reaction", "location",
                               "contacts"}
READ = "read"

# A business-scoped user id: ISO country code, a dot, alphanumerics ("BR.1502576394655843"),
# possibly with more dotted parts ("US.ENT.1180..."). Phone numbers never contain letters.

# Headers a legacy row may not set: credentials come from the channel, framing from the client.
_DROPPED_LEGACY_HEADERS = frozenset({"authorization", "host", "content-length",
                                     "transfer-encoding", "connection"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def auth_headers(channel: Channel) -> dict[str, str]:
    return {"Authorization": f"Bearer {channel.token}", "Content-Type": "application/json"}


def contacts_list(content: Any) -> list[Any]:
    """Meta's `contacts` array from a row's content: the array itself, `{"contacts": [...]}`,
    or a single contact object."""
    if isinstance(content, list):
        return content
    if isinstance(content, dict):
        inner = content.get("contacts")
        if isinstance(inner, list):
            return inner
        if content:
            return [content]
    raise UnsupportedMessage("contacts message has no contacts")


def message_body(message: OutboundMessage) -> JSON:
    """Meta's JSON send body for a normalized (non-legacy) outbound message."""
    content = message.content if isinstance(message.content, dict) else {}
    if message.type == READ:
        target = content.get("message_id")
        if not isinstance(target, str) or not target:
            raise UnsupportedMessage("mark-as-read without a message_id")
        body: JSON = {"messaging_product": "whatsapp", "status": "read", "message_id": target}
        if content.get("typing_indicator"):
            body["typing_indicator"] = content["typing_indicator"]
        return body
    if not message.type:
        raise UnsupportedMessage("message has no type")
    if message.type not in MESSAGE_TYPES:
        raise UnsupportedMessage(f"message type {message.type!r} is not supported by Meta")
    if not message.recipient:
        raise UnsupportedMessage("message has no recipient")
    if not message.content:
        raise UnsupportedMessage(f"{message.type} message has no content")
    if message.recipient_type == "group":
        body = {"messaging_product": "whatsapp", "recipient_type": "group",
                "to": message.recipient}
    else:
        body = {"messaging_product": "whatsapp", "recipient_type": "individual"}
        body["recipient" if is_bsuid(message.recipient) else "to"] = message.recipient
    body["type"] = message.type
    if message.type == "contacts":
        body["contacts"] = contacts_list(message.content)
    else:
        body[message.type] = message.content
    if message.reply_to and message.type != "reaction":  # a reaction names its target itself
        body["context"] = {"message_id": message.reply_to}
    return body


def _origin(url: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme]


def parse_legacy_headers(raw: str | None) -> dict[str, str]:
    """Headers from a legacy "Name:Value;Name2:Value2" string, minus Authorization and framing
    headers. A segment without a colon continues the previous value ("Content-Type:
    application/json; charset=utf-8" survives the split on ";")."""
    headers: dict[str, str] = {}
    last: str | None = None
    for segment in (raw or "").split(";"):
        name, sep, value = segment.partition(":")
        if not sep:
            if last is not None and segment.strip():
                headers[last] = f"{headers[last]}; {segment.strip()}"
            continue
        name = name.strip()
        if not name or name.lower() in _DROPPED_LEGACY_HEADERS:
            last = None
            continue
        headers[name] = value.strip()
        last = name
    return headers


def legacy_request(channel: Channel, message: OutboundMessage) -> ProviderRequest:
    """Replay a legacy row's ready request with the channel's token. Refused (permanently)
    when its URL points anywhere but the channel's API host: the token must not travel."""
    url = message.request_url or ""
    origin = _origin(url)
    if origin is None or origin != _origin(channel.base_url):
        host = urlsplit(url).hostname if origin else "an invalid URL"
        raise UnsupportedMessage(f"legacy request URL points to {host}, not the channel's API host")
    headers = parse_legacy_headers(message.request_headers)
    if not any(name.lower() == "content-type" for name in headers):
        headers["Content-Type"] = "application/json"
    headers["Authorization"] = f"Bearer {channel.token}"
    return ProviderRequest(method="POST", url=url, headers=headers,
                           content=(message.request_body or "").encode("utf-8"))


def build_send(channel: Channel, message: OutboundMessage) -> ProviderRequest:
    """The Graph API request that sends `message` from `channel`'s number."""
    if message.is_legacy:
        return legacy_request(channel, message)
    number = channel.phone_number_id or channel.key
    return ProviderRequest(
        method="POST", url=f"{channel.base_url}/{channel.graph_version}/{number}/messages",
        headers=auth_headers(channel), json=message_body(message))


def _first_id(items: Any) -> str | None:
    if isinstance(items, list) and items and isinstance(items[0], dict):
        value = items[0].get("id")
        if isinstance(value, str) and value:
            return value
    return None


def message_id(payload: Any) -> str | None:
    """The wamid of a Graph send response (`messages[0].id`)."""
    return _first_id(payload.get("messages")) if isinstance(payload, dict) else None


def classify(status: int, body: bytes, headers: Mapping[str, str], *,
             secrets: Iterable[str] = ()) -> SendResult:
    """What a Graph send response means for the row, by Meta error code first (see
    `errors.classify_graph`). Pass the channel token in `secrets` to make sure the excerpt can
    never echo it."""
    payload = load_json(body)
    data = payload if isinstance(payload, dict) else {}
    success = data.get("success")
    return classify_graph(status, body, headers, message_id=message_id(data),
                          success=success if isinstance(success, bool) else None,
                          error=graph_error(data.get("error")), secrets=secrets)
