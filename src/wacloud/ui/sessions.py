"""Dashboard sessions and CSRF checks.

A session is a random id (256 bits) in an HttpOnly, SameSite=Strict cookie; what it stands for
is kept here, in the serving process, never in the cookie: the hash of the key that logged in
(so a revoked key ends its sessions at the next request), its tenant (None for an admin key),
a per-session CSRF token and its times. Sessions end at logout, after `IDLE_S` without a
request or `MAX_AGE_S` after login, and when the process restarts (log in again).

Every state-changing form carries the session's CSRF token, and its request must come from
this origin (Origin, or Referer when a browser sends no Origin): either check alone would do
against most attacks; together they also cover a token leaked through a page.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

COOKIE = "wacloud_ui"
COOKIE_PATH = "/ui"
IDLE_S = 60 * 60
MAX_AGE_S = 12 * 60 * 60
MAX_SESSIONS = 10_000  # only logins with a valid key make one; the oldest go first


@dataclass
class Session:
    sid: str
    key_hash: str
    key_id: int
    tenant: str | None  # None: an admin key
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    created: float = 0.0
    seen: float = 0.0
    flash: list[tuple[str, str]] = field(default_factory=list)  # (kind, text) for the next page

    @property
    def is_admin(self) -> bool:
        return self.tenant is None


class SessionStore:
    def __init__(self, idle_s: float = IDLE_S, max_age_s: float = MAX_AGE_S,
                 max_sessions: int = MAX_SESSIONS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_s, self.max_age_s, self.max_sessions = idle_s, max_age_s, max_sessions
        self.clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def create(self, key_hash: str, key_id: int, tenant: str | None) -> Session:
        # A new id at every login: an id planted before the login is worth nothing after it.
        now = self.clock()
        session = Session(secrets.token_urlsafe(32), key_hash, key_id, tenant, created=now,
                          seen=now)
        with self._lock:
            self._sessions[session.sid] = session
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        return session

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        now = self.clock()
        with self._lock:
            session = self._sessions.get(sid)
            if session is None:
                return None
            if now - session.seen > self.idle_s or now - session.created > self.max_age_s:
                del self._sessions[sid]
                return None
            session.seen = now
            return session

    def drop(self, sid: str) -> None:
        with self._lock:
            self._sessions.pop(sid, None)

    def __len__(self) -> int:
        return len(self._sessions)


def is_https(request: Request) -> bool:
    """Served over https, here or at a proxy that says so (X-Forwarded-Proto): the cookie is
    then marked Secure. Trusting the header can only add the flag, never remove a check."""
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"


def set_cookie(response: Response, request: Request, session: Session,
               max_age_s: float) -> None:
    response.set_cookie(COOKIE, session.sid, max_age=int(max_age_s), path=COOKIE_PATH,
                        httponly=True, samesite="strict", secure=is_https(request))


def clear_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict",
                           secure=is_https(request))


def same_origin(request: Request) -> bool:
    """The request names this host as its origin: Origin, else Referer; neither is refused
    (browsers send Origin with every form POST)."""
    host = request.headers.get("x-forwarded-host") or request.headers.get("host")
    if not host:
        return False
    source = request.headers.get("origin")
    if source is None or source == "null":
        source = request.headers.get("referer")
    if not source:
        return False
    try:
        parts = urlsplit(source)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()


def csrf_ok(session: Session, token: str | None) -> bool:
    return bool(token) and hmac.compare_digest(session.csrf.encode(), str(token).encode())
