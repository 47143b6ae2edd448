"""Media bodies for the fake provider: literal bytes, or deterministic bytes made on demand.

Generated bodies exist so a benchmark can ask for a 100 MB document without the fake holding
100 MB in memory: every chunk is rebuilt from (seed, chunk index) whenever it is streamed.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import random
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

CHUNK_SIZE = 64 * 1024


# A few recent chunks remembered (at most 4 MiB): a load test downloads the same few small
# files thousands of times (seeding a PRNG per answer was 6% of the fake's CPU samples).
@functools.lru_cache(maxsize=64)
def _generated_chunk(seed: str, index: int, length: int) -> bytes:
    # One independent PRNG per chunk makes any chunk reproducible on its own, and
    # Random.randbytes is C-speed (far faster than hashing in counter mode).
    return random.Random(f"{seed}:{index}").randbytes(length)


@dataclass(frozen=True)
class MediaContent:
    """A media body: `data` when given literally, else `size` bytes generated from `seed`."""

    size: int
    seed: str
    data: bytes | None = None

    @classmethod
    def literal(cls, data: bytes) -> MediaContent:
        return cls(size=len(data), seed="", data=data)

    @classmethod
    def generated(cls, size: int, seed: str) -> MediaContent:
        if size < 0:
            raise ValueError("size must be >= 0")
        return cls(size=size, seed=seed)

    def _generated_chunk(self, index: int) -> bytes:
        return _generated_chunk(self.seed, index, min(CHUNK_SIZE, self.size - index * CHUNK_SIZE))

    def iter_chunks(self) -> Iterator[bytes]:
        if self.data is not None:
            view = memoryview(self.data)
            for start in range(0, len(view), CHUNK_SIZE):
                yield bytes(view[start : start + CHUNK_SIZE])
            return
        for index in range((self.size + CHUNK_SIZE - 1) // CHUNK_SIZE):
            yield self._generated_chunk(index)

    async def aiter_chunks(self) -> AsyncIterator[bytes]:
        # Producing a 64 KiB chunk takes tens of microseconds, cheaper than a thread hop.
        for chunk in self.iter_chunks():
            yield chunk

    def read_all(self) -> bytes:
        """The whole body in memory; meant for small media in tests."""
        if self.data is not None:
            return self.data
        return b"".join(self.iter_chunks())

    def sha256(self) -> tuple[str, str]:
        """(hex, base64) SHA-256 of the body, computed by streaming it once."""
        digest = hashlib.sha256()
        for chunk in self.iter_chunks():
            digest.update(chunk)
        raw = digest.digest()
        return raw.hex(), base64.b64encode(raw).decode("ascii")
