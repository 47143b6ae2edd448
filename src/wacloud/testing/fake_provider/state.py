"""State of the fake provider: media, injected failures, tokens and recorded requests.

The state is touched both by test code (helper calls on the test's thread) and by the
uvicorn thread serving requests, so every mutation goes through one lock.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from wacloud.testing.fake_provider.content import MediaContent

DEFAULT_TOKEN = "fake-provider-token"
DEFAULT_URL_TTL = 300.0
PROVIDERS = ("meta", "whapi", "chakra")

_MEDIA_ID_RE = re.compile(r"[A-Za-z0-9._~=-]+")
_SECRET_QUERY_KEYS = frozenset({"token", "access_token"})
MASK = "***"


def token_fingerprint(token: str) -> str:
    """A short one-way tag of a token: tests can tell tokens apart without storing them."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class FakeMedia:
    """One media object the fake serves. `token=None` means "the provider's current token"."""

    id: str
    provider: str
    mime_type: str
    size: int
    sha256_hex: str
    sha256_b64: str
    filename: str | None
    content: MediaContent = field(repr=False, compare=False)
    token: str | None = field(default=None, repr=False)

    def read_bytes(self) -> bytes:
        """The whole body (generated media is rebuilt); fine for small media."""
        return self.content.read_all()

    def to_json(self) -> dict[str, Any]:
        # The token stays out on purpose: this JSON is logged by benchmarks.
        return {
            "id": self.id,
            "provider": self.provider,
            "mime_type": self.mime_type,
            "size": self.size,
            "sha256_hex": self.sha256_hex,
            "sha256_b64": self.sha256_b64,
            "filename": self.filename,
        }


@dataclass
class RecordedRequest:
    """One request seen by a provider endpoint, with secrets masked."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    time: float
    token_fingerprint: str | None = None
    status: int | None = None  # filled in when the response starts

    def to_json(self) -> dict[str, Any]:
        try:
            text: str | None = self.body.decode("utf-8") if len(self.body) <= 65536 else None
        except UnicodeDecodeError:
            text = None
        return {
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": self.headers,
            "body_size": len(self.body),
            "body_text": text,
            "time": self.time,
            "token_fingerprint": self.token_fingerprint,
            "status": self.status,
        }


def mask_headers(raw: list[tuple[bytes, bytes]]) -> tuple[dict[str, str], str | None]:
    """Lower-cased headers with Authorization masked, plus the bearer token's fingerprint."""
    headers: dict[str, str] = {}
    fingerprint: str | None = None
    for key_b, value_b in raw:
        key = key_b.decode("latin-1").lower()
        value = value_b.decode("latin-1")
        if key == "authorization":
            scheme, _, credential = value.partition(" ")
            if credential:
                fingerprint = token_fingerprint(credential.strip())
                value = f"{scheme} {MASK}"
            else:
                value = MASK
        headers[key] = value
    return headers, fingerprint


def mask_query(query: dict[str, str]) -> dict[str, str]:
    return {k: (MASK if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in query.items()}


class ProviderState:
    """Thread-safe state shared by the routes and the test-facing helper methods."""

    def __init__(self, *, token: str, url_ttl: float) -> None:
        self._lock = threading.Lock()
        self._initial_token = token
        self._initial_ttl = url_ttl
        self.token = token
        self.url_ttl = url_ttl
        # Signs the short-lived CDN URLs; per instance so URLs never outlive the fake.
        self._url_secret = os.urandom(32)
        self._media: dict[str, FakeMedia] = {}
        self._failures: dict[str, tuple[int, int]] = {}
        # Media whose download serves damaged bytes (one byte changed) under the same hash.
        self._damaged: set[str] = set()
        # media id -> (downloads left to stall, seconds each stalls after its first bytes)
        self._stalls: dict[str, tuple[int, float]] = {}
        # Never reset, so an id from before reset() cannot alias a newer media object.
        self._ids = itertools.count(1)
        self.requests: list[RecordedRequest] = []

    # -- media ---------------------------------------------------------------------------

    def add_media(
        self,
        data: bytes | None = None,
        *,
        mime_type: str,
        size: int | None = None,
        filename: str | None = None,
        provider: str = "meta",
        token: str | None = None,
        media_id: str | None = None,
    ) -> FakeMedia:
        if provider not in PROVIDERS:
            raise ValueError(f"provider must be one of {PROVIDERS}, not {provider!r}")
        if data is None and size is None:
            raise ValueError("give either data or size")
        if data is not None and size is not None and size != len(data):
            raise ValueError("size does not match len(data)")
        if media_id is not None and not _MEDIA_ID_RE.fullmatch(media_id):
            raise ValueError("media_id must be URL-path safe ([A-Za-z0-9._~=-])")
        number = next(self._ids)
        if media_id is None:
            media_id = self._new_id(number, provider, mime_type)
        if data is not None:
            content = MediaContent.literal(data)
        else:
            assert size is not None
            content = MediaContent.generated(size, seed=f"{media_id}:{number}")
        # Hash outside the lock: for 100 MB this takes a noticeable fraction of a second.
        sha_hex, sha_b64 = content.sha256()
        media = FakeMedia(
            id=media_id,
            provider=provider,
            mime_type=mime_type,
            size=content.size,
            sha256_hex=sha_hex,
            sha256_b64=sha_b64,
            filename=filename,
            token=token,
            content=content,
        )
        with self._lock:
            if media_id in self._media:
                raise ValueError(f"media {media_id!r} already exists")
            self._media[media_id] = media
        return media

    @staticmethod
    def _new_id(number: int, provider: str, mime_type: str) -> str:
        if provider == "whapi":
            # Whapi ids look like "jpeg-<opaque>", never like Meta's numeric ids.
            subtype = mime_type.split(";")[0].split("/")[-1].strip().lower()
            subtype = re.sub(r"[^a-z0-9]", "", subtype) or "bin"
            return f"{subtype}-fake{number:012x}"
        return str(10**15 + number)

    def get_media(self, media_id: str, provider: str) -> FakeMedia | None:
        with self._lock:
            media = self._media.get(media_id)
        if media is None or media.provider != provider:
            return None
        return media

    def get_media_any(self, media_id: str) -> FakeMedia | None:
        with self._lock:
            return self._media.get(media_id)

    def media(self) -> list[FakeMedia]:
        with self._lock:
            return list(self._media.values())

    # -- failures ------------------------------------------------------------------------

    def fail_media(self, media_id: str, times: int, status: int = 500) -> None:
        if times < 0:
            raise ValueError("times must be >= 0")
        if not 400 <= status <= 599:
            raise ValueError("status must be an HTTP error status (4xx/5xx)")
        with self._lock:
            if media_id not in self._media:
                raise KeyError(media_id)
            if times == 0:
                self._failures.pop(media_id, None)
            else:
                self._failures[media_id] = (times, status)

    def damage_media(self, media_id: str, damaged: bool = True) -> None:
        """Serve `media_id`'s download with its first byte changed (a corrupting proxy or
        storage), while the webhook and the Graph lookup still give the original sha256."""
        with self._lock:
            if damaged:
                self._damaged.add(media_id)
            else:
                self._damaged.discard(media_id)

    def stall_media(self, media_id: str, times: int, seconds: float) -> None:
        """The next `times` downloads of `media_id` send their first bytes, then nothing for
        `seconds` (a stalled CDN): a client without a read deadline would hang."""
        if times < 0 or seconds < 0:
            raise ValueError("times and seconds must be >= 0")
        with self._lock:
            if media_id not in self._media:
                raise KeyError(media_id)
            if times == 0:
                self._stalls.pop(media_id, None)
            else:
                self._stalls[media_id] = (times, seconds)

    def take_stall(self, media_id: str) -> float | None:
        """Consume one injected stall for `media_id`; its seconds, or None."""
        with self._lock:
            pending = self._stalls.get(media_id)
            if pending is None:
                return None
            remaining, seconds = pending
            if remaining <= 1:
                del self._stalls[media_id]
            else:
                self._stalls[media_id] = (remaining - 1, seconds)
            return seconds

    def is_damaged(self, media_id: str) -> bool:
        with self._lock:
            return media_id in self._damaged

    def take_failure(self, media_id: str) -> int | None:
        """Consume one injected failure for `media_id`; its HTTP status, or None."""
        with self._lock:
            pending = self._failures.get(media_id)
            if pending is None:
                return None
            remaining, status = pending
            if remaining <= 1:
                del self._failures[media_id]
            else:
                self._failures[media_id] = (remaining - 1, status)
            return status

    # -- tokens and signed URLs ----------------------------------------------------------

    def set_token(self, token: str) -> None:
        """Change the token accepted for media added without a token of their own."""
        if not token:
            raise ValueError("token must not be empty")
        with self._lock:
            self.token = token

    def token_allowed(self, media: FakeMedia | None, presented: str | None) -> bool:
        if presented is None:
            return False
        if media is None:
            # No object to check against: accept any token the fake knows about, so a
            # missing id reads as "not found" rather than "bad token".
            with self._lock:
                known = {self.token} | {m.token for m in self._media.values() if m.token}
            return any(hmac.compare_digest(presented, k) for k in known)
        expected = media.token if media.token is not None else self.token
        return hmac.compare_digest(presented, expected)

    def sign_url(self, media_id: str, now: float | None = None) -> tuple[str, str]:
        """(ext, hash) query values for a CDN URL valid for `url_ttl` seconds."""
        expiry = (time.time() if now is None else now) + self.url_ttl
        # Whole seconds like Meta for normal TTLs; sub-second TTLs (tests) keep milliseconds.
        ext = str(int(expiry)) if self.url_ttl >= 1 else f"{expiry:.3f}"
        return ext, self._url_hash(media_id, ext)

    def check_url(self, media_id: str, ext: str | None, url_hash: str | None) -> bool:
        if not ext or not url_hash:
            return False
        if not hmac.compare_digest(url_hash, self._url_hash(media_id, ext)):
            return False
        try:
            return time.time() < float(ext)
        except ValueError:
            return False

    def _url_hash(self, media_id: str, ext: str) -> str:
        mac = hmac.new(self._url_secret, f"{media_id}|{ext}".encode(), hashlib.sha256)
        return mac.hexdigest()[:32]

    # -- requests and reset --------------------------------------------------------------

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def reset(self) -> None:
        with self._lock:
            self._media.clear()
            self._failures.clear()
            self._damaged.clear()
            self._stalls.clear()
            # clear() rather than rebinding: callers may hold a reference to the list.
            self.requests.clear()
            self.token = self._initial_token
            self.url_ttl = self._initial_ttl
