"""Whapi.Cloud, inbound: webhook bodies to normalized events.

Whapi has its own format (top-level `messages[]`, `statuses[]`, `event`, `channel_id`); its
message ids are not wamids and it echoes our own sends back with `from_me: true`.
"""

from __future__ import annotations

from typing import Any

from wacloud.domain.model import (
    JSON,
    Contact,
    Direction,
    Event,
    InboundMessage,
    MediaRef,
    PayloadError,
    Provider,
    ProviderError,
    ProviderNotice,
    StatusUpdate,
)
from wacloud.providers.media import lenient_int
from wacloud.providers.meta.inbound import as_dict, as_id, as_list, as_str

# Group chats of WhatsApp Web ids; personal chats end in "@s.whatsapp.net".
GROUP_CHAT_SUFFIX = "@g.us"
MEDIA_TYPES = frozenset({"image", "video", "gif", "audio", "voice", "document", "sticker"})

# Top-level keys that are the envelope itself rather than an event.
_ENVELOPE_KEYS = frozenset({"messages", "statuses", "event", "channel_id"})


def _errors(items: Any) -> list[ProviderError]:
    errors: list[ProviderError] = []
    for item in as_list(items):
        if not isinstance(item, dict):
            continue
        code = item.get("code")
        reason = item.get("message") or item.get("title") or ""
        details = item.get("details")
        errors.append(ProviderError(code="" if code is None else str(code), reason=str(reason),
                                    details=None if details is None else str(details)))
    return errors


def _items(payload: JSON, key: str) -> list[JSON]:
    value = payload.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise PayloadError(f"Whapi webhook '{key}' is not a list of objects")
    return value


def parse_webhook(payload: JSON, *, channel_key: str | None = None) -> list[Event]:
    """Every message, status and other event of a Whapi webhook body.

    `channel_key` is the channel the webhook URL belongs to; the body's `channel_id` is used
    when it is not given. A body naming a different channel than its URL is refused, since
    that is either a misconfigured webhook or a forged one."""
    if not isinstance(payload, dict):
        raise PayloadError("Whapi webhook body is not a JSON object")
    body_channel = as_id(payload.get("channel_id"))
    if channel_key and body_channel and body_channel != channel_key:
        raise PayloadError(f"Whapi body names channel {body_channel!r}, "
                           f"webhook belongs to {channel_key!r}")
    channel = channel_key or body_channel
    if not channel:
        raise PayloadError("Whapi webhook names no channel_id")
    events: list[Event] = [_parse_message(m, channel) for m in _items(payload, "messages")]
    events.extend(_parse_status(s, channel) for s in _items(payload, "statuses"))
    extras = {k: v for k, v in payload.items() if k not in _ENVELOPE_KEYS}
    event = as_dict(payload.get("event"))
    event_type = as_str(event.get("type"))
    if extras or (not events and event):
        # Health, chats, groups, presences...: logged for the channel, never dropped.
        field = (event_type if event_type not in (None, "messages", "statuses") else None)
        field = field or next(iter(extras), None) or event_type or "unknown"
        raw = dict(extras)
        if event:
            raw["event"] = event
        raw["channel_id"] = channel
        events.append(ProviderNotice(provider=Provider.WHAPI, channel_key=channel, field=field,
                                     errors=_errors(payload.get("errors")), raw=raw))
    return events


def _parse_status(status: JSON, channel: str) -> StatusUpdate:
    message_id = as_id(status.get("id"))
    if message_id is None:
        raise PayloadError("Whapi status has no id")
    name = as_str(status.get("status"))
    if not name:
        raise PayloadError(f"Whapi status for {message_id} has no status name")
    return StatusUpdate(provider=Provider.WHAPI, channel_key=channel,
                        provider_message_id=message_id, status=name,
                        timestamp=lenient_int(status.get("timestamp")),
                        recipient=as_id(status.get("recipient_id")),
                        errors=_errors(status.get("errors")), raw=status)


def _chat_wa_id(chat_id: str | None) -> str | None:
    """The phone digits of a personal chat id; other chats (groups, lids) are kept whole."""
    if chat_id and chat_id.endswith("@s.whatsapp.net"):
        return chat_id.split("@", 1)[0]
    return chat_id


def _media(body: JSON) -> MediaRef:
    return MediaRef(provider_media_id=as_id(body.get("id")), link=as_str(body.get("link")),
                    mime_type=as_str(body.get("mime_type")), sha256=as_str(body.get("sha256")),
                    size=lenient_int(body.get("file_size")),
                    filename=as_str(body.get("filename")))


def _type_content(kind: str, message: JSON) -> tuple[str, JSON, str | None, MediaRef | None]:
    """(type, content, readable text, media) for one message."""
    body = as_dict(message.get(kind))
    if kind == "text":
        return kind, dict(body), as_str(body.get("body")), None
    if kind in MEDIA_TYPES:
        content = dict(body)
        content.pop("preview", None)  # an inline base64 thumbnail: bulky, and the file follows
        if kind in ("audio", "voice"):
            content["voice"] = kind == "voice"
        if kind == "sticker":
            content["animated"] = bool(body.get("animated", False))
        return kind, content, as_str(body.get("caption")), _media(body)
    if kind == "link_preview":
        return kind, dict(body), as_str(body.get("body")), None
    if kind == "reply":
        rtype = as_str(body.get("type"))
        reply = as_dict(body.get(rtype)) if rtype else {}
        title = as_str(reply.get("title"))
        return kind, {"reply_type": rtype, "reply_id": as_id(reply.get("id")), "title": title,
                      "description": as_str(reply.get("description"))}, title, None
    if kind == "contact":
        return kind, {"contacts": [body] if body else []}, None, None
    if kind in ("contacts", "contact_list"):
        listed = message.get(kind)
        items = as_list(listed.get("list")) if isinstance(listed, dict) else as_list(listed)
        return kind, {"contacts": items}, None, None
    if kind == "reaction" or (kind == "action" and as_dict(message.get("action")).get("type")
                              == "reaction"):
        # Whapi reports reactions either as their own type or as an `action` of type reaction.
        emoji = as_str(body.get("emoji")) or ""
        target = as_id(body.get("target")) or as_id(body.get("message_id")) or as_id(
            body.get("id"))
        return "reaction", {"message_id": target, "emoji": emoji, "removed": not emoji}, None, None
    if kind == "poll":
        return kind, dict(body), as_str(body.get("title")), None
    if kind == "order":
        return kind, dict(body), as_str(body.get("text")) or as_str(body.get("title")), None
    if kind in message and not isinstance(message[kind], dict):
        return kind, {kind: message[kind]}, None, None
    return kind, dict(body), None, None


def _parse_message(message: JSON, channel: str) -> InboundMessage:
    message_id = as_id(message.get("id"))
    if message_id is None:
        raise PayloadError("Whapi message has no id")
    kind, content, text, media = _type_content(as_str(message.get("type")) or "unknown", message)
    chat_id = as_id(message.get("chat_id"))
    sender = as_id(message.get("from"))
    outgoing = message.get("from_me") is True
    content["chat_id"] = chat_id
    for key in ("source", "from_me"):
        if key in message:
            content[key] = message[key]
    context = message.get("context")
    reply_to = None
    if isinstance(context, dict):
        content["context"] = context
        reply_to = as_id(context.get("quoted_id"))
    if outgoing:
        # An echo of our own send: the contact is whoever the chat is with.
        contact = Contact(wa_id=_chat_wa_id(chat_id))
    else:
        contact = Contact(wa_id=sender, name=as_str(message.get("from_name")))
    return InboundMessage(
        provider=Provider.WHAPI, channel_key=channel, provider_message_id=message_id, type=kind,
        direction=Direction.OUT if outgoing else Direction.IN, sender=sender,
        recipient=chat_id if outgoing else None, contact=contact, text=text, reply_to=reply_to,
        timestamp=lenient_int(message.get("timestamp")), content=content, media=media,
        errors=_errors(message.get("errors")), raw=message,
        group_id=chat_id if chat_id and chat_id.endswith(GROUP_CHAT_SUFFIX) else None)
