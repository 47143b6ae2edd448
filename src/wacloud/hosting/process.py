"""Process-wide settings of the long-running commands (`serve`, `worker`): malloc arenas,
the garbage collector, CPU affinity."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
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


def parse_cpus(spec: str) -> set[int]:
    """`"0"`, `"1,3"` or `"2-5"` (and mixes) -> CPU ids; `""` -> none (`auto` is resolved
    by `resolve_auto_cpus` first)."""
    cpus: set[int] = set()
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        first, dash, last = part.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError(f"not a CPU list: {spec!r} (use e.g. 0 or 1,3 or 2-5)")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def resolve_auto_cpus(server_spec: str, worker_spec: str) -> tuple[str, str]:
    """`auto` for the server: the first CPU this process may use, when it may use two or more;
    `auto` for the workers (or empty, when the server is `auto`): the others. Concrete lists
    pass through. Resolved before the server pins itself, so workers get real ids."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    server_auto = server_spec.strip().lower() == "auto"
    worker_auto = worker_spec.strip().lower() == "auto" or (server_auto and not worker_spec)
    if len(allowed) < 2:  # nothing to share out
        return ("" if server_auto else server_spec), ("" if worker_auto else worker_spec)
    server = str(allowed[0]) if server_auto else server_spec
    taken = parse_cpus(server) if server else set()
    rest = [cpu for cpu in allowed if cpu not in taken] or allowed
    workers = ",".join(map(str, rest)) if worker_auto else worker_spec
    return server, workers


def pin_to_cpus(spec: str, *, unpin_if_empty: bool = False) -> None:
    """Run this process (the threads it starts from now on) on the CPUs of `spec`. Empty
    `spec`: leave it, or with `unpin_if_empty` undo what a pinned parent passed down.

    For `WACLOUD_SERVER_CPUS` / `WACLOUD_WORKER_CPUS`: on a small machine a core of its own
    keeps webhook answers from waiting behind a worker's time slice (bench/ingest.py: p99
    21 ms instead of 39-56 ms), at the price of stages that can no longer use that core."""
    if not hasattr(os, "sched_setaffinity") or spec.strip().lower() == "auto":
        return  # `auto` means something only to `serve`, which resolves it for its workers
    cpus = parse_cpus(spec)
    if not cpus and unpin_if_empty:
        cpus = set(range(os.cpu_count() or 1))
    if cpus:
        os.sched_setaffinity(0, cpus)
