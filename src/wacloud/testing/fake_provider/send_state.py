"""Outbound state of the fake provider: recorded sends, scripted answers, hosted files.

`SendState` is a mixin of `FakeProvider` (next to `ProviderState`); like the media state it
is touched from the test thread and the uvicorn thread, so every mutation takes its lock.
"""

from __future__ import annotations

import hmac
import itertools
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from wacloud.testing.fake_provider.send_metrics import (
    duplicate_groups,
    max_rate_by,
)
from wacloud.testing.fake_provider.state import PROVIDERS, token_fingerprint

READ = "read"  # `SentMessage.type` of a mark-as-read call; not counted as a message


@dataclass(frozen=True)
class SentMessage:
    """One send request that passed auth and validation, with how the fake answered it.

    `sender` is the Meta phone_number_id, the Chakra plugin id, or for Whapi the channel id
    given to `set_whapi_channel` (else the token fingerprint, see `token_fingerprint`).
    `recipient` is `to` (or `recipient`, a BSUID) as sent; None for mark-read / reactions
    by message id. `status` is the HTTP status answered; `message_id` the id returned.
    """

    provider: str
    sender: str
    recipient: str | None
    type: str
    body: dict[str, Any]
    time: float  # wall clock (time.time()) when the request arrived
    monotonic: float  # time.monotonic() when the request arrived
    status: int
    message_id: str | None = None
    path: str = ""
    # Seconds a script held the answer back: a client whose timeout is shorter never saw it.
    delay: float = 0.0

    @property
    def accepted(self) -> bool:
        return 200 <= self.status < 300

    @property
    def is_message(self) -> bool:
        """False for mark-as-read calls, which rates and duplicates ignore."""
        return self.type != READ

    def to_json(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "sender": self.sender,
            "recipient": self.recipient,
            "type": self.type,
            "body": self.body,
            "time": self.time,
            "monotonic": self.monotonic,
            "status": self.status,
            "message_id": self.message_id,
            "path": self.path,
            "delay": self.delay,
        }


@dataclass
class Script:
    """A scripted answer for the next `times` matching send requests."""

    match: str | None
    times: int
    status: int
    error_code: int | None = None
    error_message: str | None = None
    delay: float = 0.0
    retry_after: float | None = None
    provider: str | None = None
    # For a 2xx script: answer with this message id, so a test can send its receipt early.
    message_id: str | None = None
    # Close the connection after the status line instead of answering (a dropped connection;
    # recorded with status 0, the message not taken).
    drop: bool = False

    def matches(self, provider: str, sender: str, recipient: str | None) -> bool:
        if self.provider is not None and self.provider != provider:
            return False
        return self.match is None or self.match in (sender, recipient)

    def to_json(self) -> dict[str, Any]:
        return {
            "match": self.match,
            "times": self.times,
            "status": self.status,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "delay": self.delay,
            "retry_after": self.retry_after,
            "provider": self.provider,
            "message_id": self.message_id,
            "drop": self.drop,
        }


@dataclass(frozen=True)
class HostedFile:
    name: str
    data: bytes = field(repr=False)
    mime_type: str


class SendState:
    """Thread-safe outbound state; see `FakeProvider` for the public helpers."""

    def __init__(self) -> None:
        self._send_lock = threading.Lock()
        self.sent: list[SentMessage] = []
        self._scripts: list[Script] = []
        self._whapi_channels: dict[str, str] = {}  # token -> channel id
        self._whapi_status: dict[str, str] = {}  # token -> session state other than AUTH
        self._sender_tokens: dict[str, str] = {}  # sender id -> the only token it accepts
        self._files: dict[str, HostedFile] = {}
        self._public_media: dict[str, HostedFile] = {}  # "<uuid>/<filename>" -> file
        self._send_ids = itertools.count(1)

    # -- identities and tokens -----------------------------------------------------------

    def set_whapi_channel(self, token: str, channel_id: str) -> None:
        """Accept `token` on the Whapi endpoints and record its sends as `channel_id`."""
        if not token or not channel_id:
            raise ValueError("token and channel_id must not be empty")
        with self._send_lock:
            self._whapi_channels[token] = channel_id

    def whapi_sender(self, token: str) -> str:
        """Sender id of a Whapi token: its channel id, else `token_fingerprint(token)`."""
        with self._send_lock:
            channel = self._whapi_channels.get(token)
        return channel if channel is not None else token_fingerprint(token)

    def set_whapi_status(self, token: str, status: str) -> None:
        """The session state `GET /health` reports for `token` ("AUTH", "QR", "STOP", ...)."""
        with self._send_lock:
            self._whapi_status[token] = status

    def whapi_status(self, token: str) -> str:
        with self._send_lock:
            return self._whapi_status.get(token, "AUTH")

    def set_sender_token(self, sender: str, token: str) -> None:
        """Make `sender` (phone_number_id / plugin id) accept exactly `token` for sends."""
        if not sender or not token:
            raise ValueError("sender and token must not be empty")
        with self._send_lock:
            self._sender_tokens[sender] = token

    def sender_token(self, sender: str) -> str | None:
        with self._send_lock:
            return self._sender_tokens.get(sender)

    def whapi_token_known(self, token: str) -> bool:
        with self._send_lock:
            known = list(self._whapi_channels)
        return any(hmac.compare_digest(token, k) for k in known)

    # -- scripted answers ----------------------------------------------------------------

    def script(
        self,
        match: str | None = None,
        *,
        times: int,
        status: int,
        error_code: int | None = None,
        error_message: str | None = None,
        delay: float = 0.0,
        retry_after: float | None = None,
        provider: str | None = None,
        message_id: str | None = None,
        drop: bool = False,
    ) -> Script:
        """Answer the next `times` send requests matching `match` (a sender id or
        recipient; None = any) and `provider` with `status` after `delay` seconds.

        A 2xx status is a normal (possibly slow) success; any other status answers with the
        provider's error body; `drop` closes the connection mid-answer instead (status is
        then ignored). Scripts are consumed in the order they were added.
        """
        if times < 1:
            raise ValueError("times must be >= 1")
        if not 100 <= status <= 599:
            raise ValueError("status must be an HTTP status")
        if delay < 0 or (retry_after is not None and retry_after < 0):
            raise ValueError("delay and retry_after must be >= 0")
        if provider is not None and provider not in PROVIDERS:
            raise ValueError(f"provider must be one of {PROVIDERS}, not {provider!r}")
        entry = Script(
            match, times, status, error_code, error_message, delay, retry_after, provider,
            message_id, drop,
        )
        with self._send_lock:
            self._scripts.append(entry)
        return entry

    def take_script(self, provider: str, sender: str, recipient: str | None) -> Script | None:
        """Consume one use of the first script matching this request, if any."""
        with self._send_lock:
            for entry in self._scripts:
                if entry.matches(provider, sender, recipient):
                    entry.times -= 1
                    if entry.times <= 0:
                        self._scripts.remove(entry)
                    return entry
        return None

    def pending_scripts(self) -> list[Script]:
        with self._send_lock:
            return list(self._scripts)

    # -- recording and measurement -------------------------------------------------------

    def new_send_number(self) -> int:
        return next(self._send_ids)

    def record_sent(self, message: SentMessage) -> None:
        with self._send_lock:
            self.sent.append(message)

    def sent_snapshot(self) -> list[SentMessage]:
        with self._send_lock:
            return list(self.sent)

    def sent_to(self, recipient: str) -> list[SentMessage]:
        """Sends to `recipient`; a Whapi chat id `<n>@s.whatsapp.net` also matches `<n>`."""
        return [
            m
            for m in self.sent_snapshot()
            if m.recipient is not None
            and (m.recipient == recipient or m.recipient.split("@", 1)[0] == recipient)
        ]

    def sent_ids(self) -> list[str]:
        """Message ids returned by accepted sends, in answer order."""
        return [m.message_id for m in self.sent_snapshot() if m.message_id is not None]

    def max_rate_per_sender(self, window: float = 1.0) -> dict[str, int]:
        """Per sender: the most accepted messages within any `window`-second sliding window."""
        return max_rate_by(self.sent_snapshot(), lambda m: m.sender, window)

    def max_rate_per_recipient(self, window: float = 1.0) -> dict[str, int]:
        """Per recipient: the most accepted messages within any sliding window."""
        return max_rate_by(self.sent_snapshot(), lambda m: m.recipient, window)

    def duplicates(self) -> list[list[SentMessage]]:
        """Groups (>= 2) of accepted messages with the same provider, sender, recipient and
        body, in arrival order."""
        return duplicate_groups(self.sent_snapshot())

    # -- hosted files --------------------------------------------------------------------

    def add_file(self, name: str, data: bytes, mime_type: str = "application/octet-stream") -> str:
        """Serve `data` at `GET /files/{name}`; returns that path."""
        if not name or name.startswith("/") or ".." in name.split("/"):
            raise ValueError("name must be a relative path without '..'")
        with self._send_lock:
            self._files[name] = HostedFile(name, data, mime_type)
        return f"/files/{name}"

    def get_file(self, name: str) -> HostedFile | None:
        with self._send_lock:
            return self._files.get(name)

    def add_public_media(self, filename: str, data: bytes, mime_type: str) -> str:
        """Store a Chakra public upload; returns its `<uuid>/<filename>` key."""
        key = f"{uuid.uuid4()}/{filename}"
        with self._send_lock:
            self._public_media[key] = HostedFile(filename, data, mime_type)
        return key

    def get_public_media(self, key: str) -> HostedFile | None:
        with self._send_lock:
            return self._public_media.get(key)

    def reset_sends(self) -> None:
        with self._send_lock:
            self.sent.clear()
            self._scripts.clear()
            self._whapi_channels.clear()
            self._whapi_status.clear()
            self._sender_tokens.clear()
            self._files.clear()
            self._public_media.clear()
