"""The event loop: uvloop where it is installed (it comes with uvicorn[standard])."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:  # e.g. on Windows; the standard loop works, only slower
        return asyncio.new_event_loop
    return uvloop.new_event_loop
