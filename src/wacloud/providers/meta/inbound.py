"""Meta WhatsApp Cloud API, inbound: webhook bodies to normalized events.

Chakra forwards Meta's envelope unchanged, so `wacloud.providers.chakra` reuses `parse_webhook`
with its own provider and channel key.
"""

from __future__ import annotations

from typing import Any

from wacloud.domain.model import (
    JSON,
    Contact,
    Event,
    InboundMessage,
    MediaRef,
    PayloadError,
    Provider,
    ProviderError,
    ProviderNotice,
    StatusUpdate,
)
from wacloud.providers.jsonload import load_json
from wacloud.providers.media import lenient_int

# "voice" is the older name of a voice note (`type: "voice"` with a `voice` media object).
MEDIA_TYPES = frozenset({"image", "video", "audio", "voice", "document", "sticker"})

# Keys of a `messages` change value that this module turns into events; anything else in the
# value is surfaced as a notice so new Meta features are logged rather than silently lost.
_VALUE_KEYS = frozenset({"messaging_product", "metadata", "contacts", "messages", "statuses",
                         "errors"})


def as_id(value: Any) -> str | None:
    """An id as a string. Meta sends strings; ints are accepted because hand-built or proxied
    payloads sometimes carry them. Anything else counts as missing."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        return value or None
    if isinstance(value, int):
        return str(value)
    return None


def as_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def as_dict(value: Any) -> JSON:
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _items(container: JSON, key: str, where: str) -> list[JSON]:
    """The dicts of an array field; a missing array is empty, a malformed one is an error."""
    value = container.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise PayloadError(f"{where}.{key} is not a list")
    for item in value:
        if not isinstance(item, dict):
            raise PayloadError(f"{where}.{key} holds a non-object item")
    return value


def parse_errors(items: Any) -> list[ProviderError]:
    """Meta `errors[]` (`code`, `title`, `message`, `error_data.details`) as ProviderErrors."""
    errors: list[ProviderError] = []
    for item in as_list(items):
        if not isinstance(item, dict):
            continue
        code = item.get("code")
        reason = item.get("title") or item.get("message") or ""
        details = as_dict(item.get("error_data")).get("details")
        errors.append(ProviderError(code="" if code is None else str(code), reason=str(reason),
                                    details=None if details is None else str(details)))
    return errors


def parse_webhook(payload: JSON, *, provider: Provider = Provider.META,
                  channel_key: str | None = None) -> list[Event]:
    """Every message, status, error and other change of a Meta webhook body, in order.

    `channel_key` overrides `metadata.phone_number_id` as the routing key (Chakra passes its
    plugin id). Raises PayloadError when the body is not a Meta envelope or an item lacks its
    id; the caller parks the whole body then, so nothing is half-processed."""
    if not isinstance(payload, dict):
        raise PayloadError("Meta webhook body is not a JSON object")
    if payload.get("object") != "whatsapp_business_account":
        raise PayloadError("Meta webhook body is not a whatsapp_business_account object")
    if not isinstance(payload.get("entry"), list):
        raise PayloadError("Meta webhook body has no 'entry' list")
    events: list[Event] = []
    for entry in _items(payload, "entry", "body"):
        account_key = as_id(entry.get("id"))
        if account_key is None:
            raise PayloadError("Meta webhook entry has no id")
        for change in _items(entry, "changes", "entry"):
            events.extend(_parse_change(change, provider, channel_key, account_key))
    return events


def _parse_change(change: JSON, provider: Provider, override: str | None,
                  account_key: str) -> list[Event]:
    field = as_str(change.get("field")) or "unknown"
    value = change.get("value")
    if not isinstance(value, dict):
        raise PayloadError(f"Meta change {field!r} has no 'value' object")
    metadata = as_dict(value.get("metadata"))
    phone_number_id = as_id(metadata.get("phone_number_id")) or as_id(value.get("phone_number_id"))
    if field != "messages":
        return [ProviderNotice(provider=provider, field=field,
                               channel_key=override or phone_number_id or account_key,
                               account_key=account_key, errors=parse_errors(value.get("errors")),
                               raw=value)]
    channel_key = override or phone_number_id
    if channel_key is None:
        raise PayloadError("Meta messages change has no metadata.phone_number_id")
    display_number = as_id(metadata.get("display_phone_number"))
    contacts = [c for c in as_list(value.get("contacts")) if isinstance(c, dict)]
    events: list[Event] = []
    for message in _items(value, "messages", "value"):
        events.append(_parse_message(message, provider, channel_key, account_key,
                                     display_number, contacts))
    for status in _items(value, "statuses", "value"):
        events.append(_parse_status(status, provider, channel_key, account_key))
    if value.get("errors") or set(value) - _VALUE_KEYS:
        events.append(ProviderNotice(provider=provider, field=field, channel_key=channel_key,
                                     account_key=account_key,
                                     errors=parse_errors(value.get("errors")), raw=value))
    return events


def _parse_status(status: JSON, provider: Provider, channel_key: str,
                  account_key: str) -> StatusUpdate:
    message_id = as_id(status.get("id"))
    if message_id is None:
        raise PayloadError("Meta status has no id")
    name = as_str(status.get("status"))
    if not name:
        raise PayloadError(f"Meta status for {message_id} has no status name")
    return StatusUpdate(
        provider=provider, channel_key=channel_key, provider_message_id=message_id, status=name,
        account_key=account_key, timestamp=lenient_int(status.get("timestamp")),
        recipient=as_id(status.get("recipient_id")),
        recipient_user_id=as_id(status.get("recipient_user_id")),
        errors=parse_errors(status.get("errors")), raw=status)


def _find_contact(message: JSON, contacts: list[JSON]) -> Contact:
    wa_id = as_id(message.get("from"))
    user_id = as_id(message.get("from_user_id"))
    match: JSON = {}
    for candidate in contacts:
        if (wa_id and as_id(candidate.get("wa_id")) == wa_id) or (
                user_id and as_id(candidate.get("user_id")) == user_id):
            match = candidate
            break
    else:
        # A lone contact is the sender unless it plainly names someone else.
        if len(contacts) == 1 and (wa_id is None or as_id(contacts[0].get("wa_id")) is None):
            match = contacts[0]
    return Contact(wa_id=wa_id or as_id(match.get("wa_id")),
                   user_id=user_id or as_id(match.get("user_id")),
                   name=as_str(as_dict(match.get("profile")).get("name")))


def _maybe_json(value: Any) -> Any:
    """Flow replies carry their answers as a JSON string; decode it when it is one."""
    if isinstance(value, str):
        try:
            return load_json(value)
        except PayloadError:  # not JSON we can carry: kept as the text it came as
            return value
    return value


def _type_content(kind: str, message: JSON) -> tuple[JSON, str | None, MediaRef | None]:
    """(content, readable text, media) for one message type."""
    body = as_dict(message.get(kind))
    if kind == "text":
        return dict(body), as_str(body.get("body")), None
    if kind in MEDIA_TYPES:
        content = dict(body)
        if kind == "audio":
            content["voice"] = bool(body.get("voice", False))
        elif kind == "voice":
            content["voice"] = True
        if kind == "sticker":
            content["animated"] = bool(body.get("animated", False))
        media = MediaRef(provider_media_id=as_id(body.get("id")),
                         mime_type=as_str(body.get("mime_type")), sha256=as_str(body.get("sha256")),
                         size=lenient_int(body.get("file_size")),
                         filename=as_str(body.get("filename")))
        return content, as_str(body.get("caption")), media
    if kind == "interactive":
        itype = as_str(body.get("type"))
        reply = as_dict(body.get(itype)) if itype else {}
        flow = itype == "nfm_reply"
        content = {
            "interactive_type": itype,
            "reply_id": as_id(reply.get("id")),
            "title": as_str(reply.get("title")),
            "description": as_str(reply.get("description")),
            "response_json": _maybe_json(reply.get("response_json")) if flow else None,
            "body": as_str(reply.get("body")),
            "name": as_str(reply.get("name")),
        }
        return content, content["title"] or content["body"], None
    if kind == "button":
        text = as_str(body.get("text"))
        return {"payload": as_str(body.get("payload")), "text": text}, text, None
    if kind == "reaction":
        emoji = as_str(body.get("emoji")) or ""
        return {"message_id": as_id(body.get("message_id")), "emoji": emoji,
                "removed": not emoji}, None, None
    if kind == "order":
        text = as_str(body.get("text"))
        return {"catalog_id": as_id(body.get("catalog_id")), "text": text,
                "product_items": as_list(body.get("product_items"))}, text, None
    if kind == "system":
        text = as_str(body.get("body"))
        content = {"body": text, "system_type": as_str(body.get("type"))}
        for key in ("wa_id", "new_wa_id", "user_id", "customer"):
            if key in body:
                content[key] = body[key]
        return content, text, None
    if kind == "contacts":
        return {"contacts": as_list(message.get("contacts"))}, None, None
    if kind in ("unsupported", "unknown"):
        content = {k: v for k, v in body.items() if k != "type"}
        content["unsupported_type"] = as_str(body.get("type"))
        return content, None, None
    # location and any type this module does not know yet: keep the type's object as is.
    if kind in message and not isinstance(message[kind], dict):
        return {kind: message[kind]}, None, None
    return dict(body), None, None


def _parse_message(message: JSON, provider: Provider, channel_key: str, account_key: str,
                   display_number: str | None, contacts: list[JSON]) -> InboundMessage:
    message_id = as_id(message.get("id"))
    if message_id is None:
        raise PayloadError("Meta message has no id")
    kind = as_str(message.get("type")) or "unknown"
    content, text, media = _type_content(kind, message)
    context = message.get("context")
    reply_to = None
    if isinstance(context, dict):
        content["context"] = context
        reply_to = as_id(context.get("id"))
    if isinstance(message.get("referral"), dict):
        content["referral"] = message["referral"]
    contact = _find_contact(message, contacts)
    return InboundMessage(
        provider=provider, channel_key=channel_key, provider_message_id=message_id, type=kind,
        account_key=account_key, sender=as_id(message.get("from")) or contact.user_id,
        recipient=display_number, contact=contact, text=text, reply_to=reply_to,
        timestamp=lenient_int(message.get("timestamp")), content=content, media=media,
        errors=parse_errors(message.get("errors")), raw=message,
        group_id=as_id(message.get("group_id")))
