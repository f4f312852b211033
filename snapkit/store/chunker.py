"""Chunking strategies, chosen per layer (docs/format.md, "Chunking").

- `fixed:N`: blocks of N bytes at offsets that are multiples of N. For a SQLite
  file N is its page size, so a changed row changes only the pages it is on;
  content-defined chunks smear a 1% row change over most of a database.
- `cdc:AVG`: content-defined chunks (FastCDC 2020, compiled `pyfastcdc`),
  average AVG bytes, for dump streams and tar archives where inserts shift
  bytes.

Both are push-based: `feed(data)` returns the chunks that are complete,
`finish()` the rest, so a producer (a tar writer, a dump tool's pipe) streams
through in bounded memory.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

# FastCDC's cut point depends only on bytes from the chunk start, so cutting a
# window and keeping its last (forced) chunk for the next window gives the same
# chunks as one pass over the whole stream.
_WINDOW = 8 * 1024 * 1024


class FixedChunker:
    def __init__(self, size: int):
        if size <= 0:
            raise ValueError("chunk size must be positive")
        self.size = size
        self._buf = bytearray()

    def feed(self, data: bytes | memoryview) -> Iterator[bytes]:
        view = memoryview(data)
        size = self.size
        if self._buf:  # complete the pending partial block first
            take = min(size - len(self._buf), len(view))
            self._buf += view[:take]
            view = view[take:]
            if len(self._buf) < size:
                return
            yield bytes(self._buf)
            self._buf = bytearray()
        n = len(view) // size * size
        # Slices of immutable bytes are views (no copy: most blocks of a database
        # are only hashed); anything else may be reused by its producer, so copy.
        zero_copy = isinstance(data, bytes)
        for off in range(0, n, size):
            yield view[off : off + size] if zero_copy else view[off : off + size].tobytes()
        if n < len(view):
            self._buf += view[n:]

    def finish(self) -> Iterator[bytes]:
        if self._buf:
            yield bytes(self._buf)
            self._buf = bytearray()


class CdcChunker:
    def __init__(self, avg: int):
        from pyfastcdc import FastCDC

        self._cdc = FastCDC(avg_size=avg, min_size=avg // 4, max_size=avg * 4)
        self.max = avg * 4
        self._pieces: list[bytes] = []
        self._size = 0

    def feed(self, data: bytes | memoryview) -> Iterator[bytes]:
        self._pieces.append(data if isinstance(data, bytes) else bytes(data))
        self._size += len(data)
        if self._size < _WINDOW + self.max:
            return
        yield from self._cut(final=False)

    def finish(self) -> Iterator[bytes]:
        yield from self._cut(final=True)

    def _cut(self, final: bool) -> Iterator[bytes]:
        buf = b"".join(self._pieces)  # the one copy of the window (none for a single piece)
        self._pieces = []
        chunks = list(self._cdc.cut_buf(buf))
        keep_from = len(buf)
        if not final and chunks:
            keep_from = chunks[-1].offset
            chunks = chunks[:-1]
        for c in chunks:
            yield buf[c.offset : c.offset + c.length]
        rest = buf[keep_from:]
        self._pieces = [rest] if rest else []
        self._size = len(rest)


FEATURE_BYTES = 8
_local = threading.local()  # a FastCDC object per thread: workers sketch concurrently


def features(chunk: bytes | memoryview) -> bytes:
    """A similarity sketch of a chunk: two 32-bit features, 8 bytes.

    The chunk is cut again into ~1 KiB content-defined pieces; the features
    are the two smallest gear hashes at those cuts (the forced cut at the end
    is left out). Two chunks that share most of their content share a feature
    with high probability, wherever their boundaries fell — which is how a
    dump chunk finds its delta base after rows moved (docs/format.md).
    """
    sketcher = getattr(_local, "sketcher", None)
    if sketcher is None:
        from pyfastcdc import FastCDC

        sketcher = _local.sketcher = FastCDC(avg_size=1024, min_size=256, max_size=4096)
    hashes = sorted(c.gear_hash for c in list(sketcher.cut_buf(chunk))[:-1])
    if not hashes:
        return bytes(FEATURE_BYTES)
    second = hashes[1] if len(hashes) > 1 else hashes[0]
    # A cut point's hash has the cut mask's bits at zero and the smallest ones have
    # leading zeros: mix before keeping 32 bits, or unrelated chunks share features.
    return b"".join(((h * 0x9E3779B97F4A7C15 & 0xFFFFFFFFFFFFFFFF) >> 32).to_bytes(4, "big")
                    for h in (hashes[0], second))


def make_chunker(strategy: str) -> FixedChunker | CdcChunker:
    """`strategy` is "fixed:N" or "cdc:AVG" as recorded in the manifest."""
    kind, _, arg = strategy.partition(":")
    if kind == "fixed":
        return FixedChunker(int(arg))
    if kind == "cdc":
        return CdcChunker(int(arg))
    raise ValueError(f"unknown chunking strategy {strategy!r}")
