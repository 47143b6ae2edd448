"""Throughput of the embedded queue: 64 concurrent tasks awaiting durable sends.

Usage: python bench/queue_sqlite.py [total_sends] [synchronous]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from wacloud.adapters.queue.base import QueueSpec
from wacloud.adapters.queue.sqlite.broker import SqliteBroker

# On disk next to the repo, not in /tmp: /tmp is often tmpfs, where fsync costs nothing.
BENCH_DIR = Path(__file__).resolve().parent / ".results"
CONCURRENCY = 64
BODY = b'{"object":"whatsapp_business_account","entry":[]}' * 20  # ~1 KB, like a webhook


async def main(total: int, synchronous: str) -> None:
    BENCH_DIR.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=BENCH_DIR) as tmp:
        broker = SqliteBroker(Path(tmp) / "bench.db", synchronous=synchronous)
        queue = broker.queue(QueueSpec("inbound"))
        per_task = total // CONCURRENCY

        async def sender() -> None:
            for _ in range(per_task):
                await queue.send(BODY)

        started = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - started
        await broker.close()
    sends = per_task * CONCURRENCY
    print(f"{sends} sends, {CONCURRENCY} tasks, synchronous={synchronous}: {elapsed:.2f}s, "
          f"{broker.commits} commits ({sends / max(broker.commits, 1):.0f} sends/commit)")
    print(f"RESULT queue_sqlite sends_per_s={sends / elapsed:.0f}")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 64_000,
                     sys.argv[2] if len(sys.argv) > 2 else "FULL"))
