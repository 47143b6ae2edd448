"""Process memory settings for the long-running commands (`serve`, `worker`)."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import sys

M_ARENA_MAX = -8  # glibc mallopt() parameter
GC_THRESHOLD = 20_000


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas. By default every thread that allocates may get an arena of
    its own (up to 8 per core), and the stage thread pool then holds tens of MB of freed but
    unreturned memory; two arenas cost no measurable speed here. Call before starting threads;
    a no-op outside glibc."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, arenas)


def tune_garbage_collector(threshold: int = GC_THRESHOLD) -> None:
    """Collect the young generation every `threshold` allocations instead of 700: a batch of
    rows allocates tens of thousands of short-lived dicts (acyclic, freed by reference
    counting), and the collector's scans of them were a few percent of a worker's CPU.
    Objects alive at this point (modules, settings) are frozen out of every scan."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(threshold, middle, old)
