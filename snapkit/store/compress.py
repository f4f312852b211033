"""zstd compression of chunk payloads: the only module that imports zstandard.

A payload starts with one codec byte so a reader knows how to expand it:
0 raw (compression did not help), 1 zstd, 2 zstd delta against a base chunk's
plaintext used as a raw-content dictionary (reserved; docs/format.md).
"""

from __future__ import annotations

import threading

import zstandard

RAW = 0
ZSTD = 1
ZSTD_DELTA = 2

LEVEL = 3
_local = threading.local()


def _cctx() -> zstandard.ZstdCompressor:
    # zstd contexts are not thread-safe; one per thread.
    c = getattr(_local, "c", None)
    if c is None:
        c = _local.c = zstandard.ZstdCompressor(level=LEVEL)
    return c


def _dctx() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "d", None)
    if d is None:
        d = _local.d = zstandard.ZstdDecompressor()
    return d


def pack_payload(data: bytes | memoryview) -> bytes:
    """Compress `data`; keep it raw when zstd does not make it smaller."""
    z = _cctx().compress(data)
    if len(z) < len(data):
        return bytes((ZSTD,)) + z
    return bytes((RAW,)) + bytes(data)


def unpack_payload(payload: bytes, size: int) -> bytes:
    """Expand a payload made by `pack_payload`; `size` is the plaintext length."""
    codec = payload[0]
    if codec == RAW:
        return payload[1:]
    if codec == ZSTD:
        return _dctx().decompress(payload[1:], max_output_size=size)
    raise ValueError(f"unknown chunk codec {codec}")
