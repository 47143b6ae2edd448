"""Send-side helpers shared by the provider modules: what a Graph error code means for the
outbox row, `Retry-After` parsing, and a token-free excerpt of a provider response.

Meta and Chakra (which passes Meta's errors through) share one code table here, so the two can
never disagree on whether a code is retried, failed or pauses the channel.
"""

from __future__ import annotations

import email.utils
import json
import math
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from wacloud.domain.model import ProviderError, SendOutcome, SendResult


class UnsupportedMessage(ValueError):
    """An outbound message this provider cannot send (a template on Whapi, a legacy row aimed at
    another host, ...). The caller fails the row permanently with `reason`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# Graph error codes (spec providers.md §4.2). Codes not listed here fall back to HTTP status.
RETRY_CODES = frozenset({
    1,  # API Unknown
    2,  # API Service: downtime or overload
    4,  # app-level "too many calls"
    80007,  # WABA / business-use-case rate limit
    130429,  # the number's throughput (mps) was reached
    131000,  # generic "something went wrong"
    131016,  # service temporarily unavailable
    131056,  # pair rate limit: this recipient only
    131057,  # account in maintenance (throughput upgrade, about a minute)
    133004,  # server temporarily unavailable
})
FAILED_CODES = frozenset({
    3,  # API method (capability)
    100,  # invalid parameter of this message, also "not a WhatsApp number" (but see below)
    130472,  # recipient is part of an experiment
    131005,  # access denied
    131008,  # required parameter missing
    131009,  # parameter value invalid
    131021,  # recipient cannot be the sender
    131026,  # undeliverable
    131047,  # re-engagement: more than 24 h since the user's last message
    131048,  # spam rate limit (the row fails; slowing campaigns is the tenant's call)
    131049,  # Meta chose not to deliver (per-user marketing limit)
    131050,  # user stopped marketing messages
    131051,  # unsupported message type
    131052,  # media download error
    131053,  # media upload error (our link or file)
})
# Token, account or number problems: no message can go out until a human fixes the channel,
# so the channel is paused and its rows wait instead of failing one by one.
PAUSE_CODES = frozenset({
    0,  # AuthException
    10,  # permission denied: the app lost (or never had) permission for this number
    190,  # access token expired or invalid
    368,  # temporarily blocked for policy violations
    131031,  # business account locked
    131042,  # business eligibility / payment issue
    131045,  # phone number registration / certificate error
    133010,  # phone number not registered on the Cloud API
})

# 200-299: API permissions (the token may not use this number or WABA): the channel pauses too.
PERMISSION_CODES = range(200, 300)
# Code 100 also answers a send to a phone number id that does not exist or that this token
# cannot see (subcode 33, "Unsupported post request. Object with ID '...' does not exist,
# cannot be loaded due to missing permissions, or does not support this operation"): the
# channel is wrong, not the message, so it pauses instead of failing every row one by one.
UNKNOWN_OBJECT_SUBCODE = 33
_UNKNOWN_OBJECT = re.compile(r"(?i)object with id\b.*\bdoes not exist")

# When Meta sends no Retry-After: the documented wait for a throughput upgrade.
DEFAULT_RETRY_AFTER = {131057: 60.0}

EXCERPT_CHARS = 500
_REDACTED = "[redacted]"
_SECRET_PATTERNS = (
    re.compile(r"(?i)(bearer\s+)[^\s\"',;]+"),
    # \b: start only at a word's beginning; from every position it backtracked through words
    re.compile(r"(?i)([\"']?\b[\w-]*(?:token|secret|password|api[_-]?key|apikey|authorization)"
               r"[\w-]*[\"']?\s*[:=]\s*[\"']?)[^\s\"',;&}]+"),
    re.compile(r"\bEAA[A-Za-z0-9]{16,}"),  # Meta access tokens
    re.compile(r"(?<![A-Za-z0-9])[A-Za-z0-9]{32,}(?![A-Za-z0-9])"),  # any long opaque key
)
# What each pattern cannot match without (lower case); empty: always run.
_NEEDLES: tuple[tuple[str, ...], ...] = (
    ("bearer",),
    ("token", "secret", "password", "key", "authorization"),
    ("eaa",),
    (),
)


class GraphError(NamedTuple):
    """A Graph error as found in a response: its code (None if it has none), what to show,
    and Meta's `error_subcode` when given."""

    code: int | None
    error: ProviderError
    subcode: int | None = None


def code_outcome(code: int, subcode: int | None = None, reason: str = "") -> SendOutcome | None:
    """The outcome a Graph error code (with its subcode and message, which tell a bad phone
    number id from a bad parameter) calls for, or None if the code is not in the table."""
    if code in RETRY_CODES:
        return SendOutcome.RETRY
    if code in PAUSE_CODES or code in PERMISSION_CODES or (code == 100 and unknown_object(
            subcode, reason)):
        return SendOutcome.PAUSE
    if code in FAILED_CODES or 132000 <= code <= 132999:
        return SendOutcome.FAILED
    return None


def unknown_object(subcode: int | None, reason: str) -> bool:
    """Whether a code 100 is about the object sent to (the phone number id), not a parameter."""
    return subcode == UNKNOWN_OBJECT_SUBCODE or bool(_UNKNOWN_OBJECT.search(reason))


def status_outcome(status: int) -> SendOutcome:
    """The outcome of an error response that carries no known code: by HTTP status only."""
    if status == 401:
        return SendOutcome.PAUSE
    if status in (408, 425, 429) or status >= 500:
        return SendOutcome.RETRY
    return SendOutcome.FAILED


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header's value, looked up case-insensitively (plain dicts are not case-insensitive)."""
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, item in headers.items():
        if key.lower() == lowered:
            return item
    return None


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` value: delta-seconds or an HTTP date. A date in the
    past gives 0; anything unparsable gives None."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        return None
    current = time.time() if now is None else now
    return max(when.timestamp() - current, 0.0)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with bearer tokens, `token=`/`"secret":` values, Meta tokens, long opaque keys and
    the given `secrets` replaced."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, _REDACTED)
    lowered = text.lower()
    for pattern, needles in zip(_SECRET_PATTERNS, _NEEDLES, strict=True):
        # A pattern that cannot match is not run: most bodies (a send's acceptance) name no
        # token, and four scans of every answer were a few percent of the send path's CPU.
        if needles and not any(needle in lowered for needle in needles):
            continue
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + _REDACTED, text)
    return text


def redact_error(error: ProviderError, secrets: Iterable[str] = ()) -> ProviderError:
    """`error` with its reason and details redacted: a provider (or a wrapper in front of it)
    may echo the request's token in its error message, which ends up in the row, the channel's
    pause reason and the logs."""
    secrets = tuple(secrets)

    def clean(text: str) -> str:
        # Only the known secrets and unmistakable tokens: unlike an excerpt, a reason is read
        # by people, so "access token: Session has expired" must stay readable.
        for secret in secrets:
            if secret and len(secret) >= 4:
                text = text.replace(secret, _REDACTED)
        for pattern in _SECRET_PATTERNS[0], _SECRET_PATTERNS[2]:
            text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + _REDACTED, text)
        return text

    return ProviderError(code=error.code, reason=clean(error.reason),
                         details=clean(error.details) if error.details else None)


def excerpt(body: bytes, secrets: Iterable[str] = ()) -> str | None:
    """The first `EXCERPT_CHARS` characters of a response body, token-free (redacted before it
    is cut, so a token straddling the cut cannot leak half of itself)."""
    if not body:
        return None
    text = body[: EXCERPT_CHARS * 8].decode("utf-8", errors="replace")
    return redact(text, secrets)[:EXCERPT_CHARS]


def load_json(body: bytes) -> Any:
    """The parsed body, or None when it is empty or not JSON (an HTML error page, say)."""
    if not body:
        return None
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None


def int_code(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


_CODE_IN_MESSAGE = re.compile(r"\(#(\d+)\)")


def graph_error(error: Any) -> GraphError | None:
    """(code, ProviderError, subcode) from a Meta `error` object (or a wrapper's copy of one:
    `code` may be a string, or only present as "(#131047)" in the message). None if it is
    not one."""
    if isinstance(error, str) and error.strip():
        match = _CODE_IN_MESSAGE.search(error)
        code = int(match.group(1)) if match else None
        return GraphError(code, ProviderError(code="" if code is None else str(code),
                                              reason=error))
    if not isinstance(error, dict):
        return None
    message = error.get("message") or error.get("error_user_msg") or error.get("title")
    reason = message if isinstance(message, str) else ""
    code = int_code(error.get("code"))
    if code is None and reason:
        match = _CODE_IN_MESSAGE.search(reason)
        code = int(match.group(1)) if match else None
    if code is None and not reason:
        return None
    data = error.get("error_data")
    details = data.get("details") if isinstance(data, dict) else None
    if not isinstance(details, str):
        details = error.get("details") if isinstance(error.get("details"), str) else None
    raw = error.get("code")  # a wrapper's own code ("UNAUTHORIZED") is kept as reported
    label = str(code) if code is not None else (raw if isinstance(raw, str) else "")
    return GraphError(code, ProviderError(code=label, reason=reason, details=details),
                      int_code(error.get("error_subcode")))


def classify_graph(status: int, body: bytes, headers: Mapping[str, str], *,
                   message_id: str | None, success: bool | None,
                   error: GraphError | None,
                   secrets: Iterable[str] = ()) -> SendResult:
    """The result of a Graph-style send, given what the provider module found in the body.

    A 2xx with a message id (or a mark-as-read `success: true`) is accepted; `success: false`
    without an error fails. A 2xx with neither and no error is ALSO accepted, with
    provider_message_id None: the provider took the request, so the message may well be on its
    way; retrying could send it twice, and failing it would tell the tenant that a delivered
    message was lost. Status webhooks cannot be joined to such a row: the smaller harm.
    """
    secrets = tuple(secrets)
    text = excerpt(body, secrets)
    ok = 200 <= status < 300
    if ok and (message_id or (error is None and success is not False)):
        return SendResult(SendOutcome.ACCEPTED, provider_message_id=message_id,
                          http_status=status, response_excerpt=text)
    if ok and error is None:
        error = GraphError(None, ProviderError(code="unsuccessful",
                                               reason="provider answered success=false"))
    code, provider_error, subcode = error if error is not None else (None, None, None)
    outcome = (code_outcome(code, subcode, provider_error.reason if provider_error else "")
               if code is not None else None)
    if outcome is None:
        # 2xx carrying an unknown error: the provider said it did not send it.
        outcome = SendOutcome.FAILED if status < 300 else status_outcome(status)
    if provider_error is None:
        provider_error = ProviderError(code=f"http_{status}",
                                       reason=f"HTTP {status} without a provider error")
    elif not provider_error.code:
        provider_error = ProviderError(code=f"http_{status}", reason=provider_error.reason,
                                       details=provider_error.details)
    provider_error = redact_error(provider_error, secrets)
    retry_after = None
    if outcome in (SendOutcome.RETRY, SendOutcome.PAUSE):
        retry_after = parse_retry_after(header(headers, "Retry-After"))
        if retry_after is None and code is not None:
            retry_after = DEFAULT_RETRY_AFTER.get(code)
    return SendResult(outcome, error=provider_error, retry_after=retry_after, http_status=status,
                      response_excerpt=text, recipient_throttled=code == 131056,
                      channel_throttled=code == 130429)


def graph_error_code(body: bytes) -> int | None:
    """The numeric `error.code` of a Graph error answer, or None."""
    try:
        error = json.loads(body).get("error")
        code = error.get("code") if isinstance(error, dict) else None
    except (ValueError, AttributeError):
        return None
    return code if isinstance(code, int) and not isinstance(code, bool) else None
