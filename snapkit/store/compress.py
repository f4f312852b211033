"""zstd compression of chunk payloads: the only module that imports zstandard.

A payload starts with one codec byte so a reader knows how to expand it:
0 raw (compression did not help), 1 zstd, 2 zstd delta: the 32-byte id of a
base chunk follows, and the frame was compressed with the base's plaintext as
a raw-content dictionary (docs/format.md, "Delta chunks").
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import zstandard

RAW = 0
ZSTD = 1
ZSTD_DELTA = 2
BASE_ID_BYTES = 32

LEVEL = 3
# A delta is kept only when it is clearly smaller than the chunk compressed alone.
DELTA_GAIN = 0.75
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


def _raw_dict(base: bytes) -> zstandard.ZstdCompressionDict:
    return zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)


def pack_payload(data: bytes | memoryview, base: bytes | None = None, base_id: bytes | None = None) -> tuple[bytes, bool]:
    """Compress `data`, as a delta against `base` when that is clearly smaller.

    Returns (payload, is_delta). Raw when zstd does not make it smaller.
    """
    if base is not None and base_id is not None:
        d = zstandard.ZstdCompressor(level=LEVEL, dict_data=_raw_dict(base)).compress(data)
        # A delta under 1/16 of the chunk beats compressing it alone by far (SQLite
        # pages compress ~3x): skip the second compression (measured: ~45% of a
        # changed block's cost).
        if len(d) + BASE_ID_BYTES < len(data) // 16:
            return bytes((ZSTD_DELTA,)) + base_id + d, True
        z = _cctx().compress(data)
        if len(d) + BASE_ID_BYTES < len(z) * DELTA_GAIN:
            return bytes((ZSTD_DELTA,)) + base_id + d, True
    else:
        z = _cctx().compress(data)
    if len(z) < len(data):
        return bytes((ZSTD,)) + z, False
    return bytes((RAW,)) + bytes(data), False


def delta_base(payload: bytes) -> bytes | None:
    """The base chunk id a payload depends on, if it is a delta."""
    if payload[0] == ZSTD_DELTA:
        return bytes(payload[1 : 1 + BASE_ID_BYTES])
    return None


def unpack_payload(payload: bytes, size: int, get_base: Callable[[bytes], bytes] | None = None) -> bytes:
    """Expand a payload made by `pack_payload`; `size` is the plaintext length."""
    codec = payload[0]
    if codec == RAW:
        return payload[1:]
    if codec == ZSTD:
        return _dctx().decompress(payload[1:], max_output_size=size)
    if codec == ZSTD_DELTA:
        if get_base is None:
            raise ValueError("delta chunk without a way to read its base")
        base = get_base(bytes(payload[1 : 1 + BASE_ID_BYTES]))
        dctx = zstandard.ZstdDecompressor(dict_data=_raw_dict(base))
        return dctx.decompress(payload[1 + BASE_ID_BYTES :], max_output_size=size)
    raise ValueError(f"unknown chunk codec {codec}")
