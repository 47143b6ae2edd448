"""JSON from the outside world, refused unless every later step can handle it.

Python's `json` accepts more than any database or queue downstream can carry: `NaN` and
`Infinity` (not JSON at all), lone surrogate escapes like `"\\ud800"` (a str no UTF-8 encoder,
hence no database, takes) and nesting a thousand levels deep (which `dataclasses.asdict` and
`json.dumps` then fail on with RecursionError, far from the parser). `load_json` refuses all
of these with a PayloadError that says which, so the body is parked with that reason.
"""

from __future__ import annotations

import json
from typing import Any

from wacloud.domain.model import PayloadError

# Real webhooks nest about ten levels; the rest of the pipeline copes with a few hundred.
MAX_DEPTH = 64


def _no_constant(name: str) -> Any:
    raise PayloadError(f"body is not JSON ({name} is not a JSON value)")


def load_json(data: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """`data` parsed; PayloadError when it is not UTF-8 JSON, holds NaN or Infinity, a lone
    surrogate, or is nested deeper than `max_depth`."""
    try:
        # Decoded here, strictly: `json.loads(bytes)` would let UTF-8-encoded surrogates
        # through ("surrogatepass"). A UTF-8 byte order mark is allowed, as before.
        text = data if isinstance(data, str) else data.decode("utf-8-sig")
        value = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise PayloadError(f"body is not JSON ({exc.msg} at byte {exc.pos})") from None
    except UnicodeDecodeError:
        raise PayloadError("body is not UTF-8 text") from None
    except RecursionError:
        raise PayloadError(f"body is nested deeper than {max_depth} levels") from None
    except PayloadError:
        raise
    except ValueError as exc:  # an integer longer than Python converts (4300 digits)
        raise PayloadError(f"body is not usable JSON ({exc})") from None
    if isinstance(data, str):  # small texts inside a body: always looked at
        _check(value, max_depth, texts=True)
        return value
    # Cheap tests first (a webhook is hot): only a body with that many brackets can nest that
    # deep, and only one with a \\uD... escape can hold a surrogate.
    texts = b"\\ud" in data or b"\\uD" in data
    if texts or data.count(b"[") + data.count(b"{") > max_depth:
        _check(value, max_depth, texts=texts)
    return value


def _check(value: Any, max_depth: int, *, texts: bool) -> None:
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if texts:
                _check_text(item)
        elif isinstance(item, dict | list):
            if depth >= max_depth:
                raise PayloadError(f"body is nested deeper than {max_depth} levels")
            if isinstance(item, dict):
                for key, child in item.items():
                    if texts:
                        _check_text(key)
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise PayloadError("body holds a lone surrogate escape (like \\ud800): "
                           "not valid Unicode text") from None
