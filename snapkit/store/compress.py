"""zstd compression of chunk payloads: the only module that imports zstandard.

A payload starts with one codec byte so a reader knows how to expand it:
0 raw (compression did not help), 1 zstd, 2 zstd delta: the 32-byte id of a
base chunk follows, and the frame was compressed with the base's plaintext as
a raw-content dictionary; 3 slice patch: a base of the same length with only
the changed 4 KiB slices stored, compressed against the base's slices at the
same places (docs/format.md, "Delta chunks").
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import zstandard

RAW = 0
ZSTD = 1
ZSTD_DELTA = 2
PATCH = 3
BASE_ID_BYTES = 32
# A patch compares base and chunk in slices of 2**PATCH_SLICE_LOG bytes: SQLite's
# default page size, so a changed row costs its page, not the whole block.
PATCH_SLICE_LOG = 12
# Below this a raw-content dictionary is not worth building (and zstd wants ≥ 8 bytes).
_MIN_DICT = 64

LEVEL = 3
# Patches of changed SQLite pages: level 2 is as small as 3 here and 20% faster.
PATCH_LEVEL = 2
# A delta is kept only when it is clearly smaller than the chunk compressed alone.
DELTA_GAIN = 0.75
_local = threading.local()


def _cctx(level: int = LEVEL) -> zstandard.ZstdCompressor:
    # zstd contexts are not thread-safe; one per thread and level.
    cs = getattr(_local, "cs", None)
    if cs is None:
        cs = _local.cs = {}
    c = cs.get(level)
    if c is None:
        c = cs[level] = zstandard.ZstdCompressor(level=level)
    return c


def _dctx() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "d", None)
    if d is None:
        d = _local.d = zstandard.ZstdDecompressor()
    return d


def _raw_dict(base: bytes) -> zstandard.ZstdCompressionDict:
    return zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)


def pack_payload(data: bytes | memoryview, base: bytes | None = None, base_id: bytes | None = None,
                 level: int = LEVEL) -> tuple[bytes, bool]:
    """Compress `data`, as a delta against `base` when that is clearly smaller.

    A base of the same length gets a slice patch (codec 3), any other a
    dictionary delta (codec 2). Returns (payload, is_delta). Raw when zstd
    does not make it smaller.
    """
    if base is not None and base_id is not None:
        if len(base) == len(data):
            d = _patch(bytes(data), base)
        else:
            d = bytes((ZSTD_DELTA,)) + base_id + zstandard.ZstdCompressor(
                level=LEVEL, dict_data=_raw_dict(base)).compress(data)
        if d[0] == PATCH:
            d = d[:1] + base_id + d[1:]
        # A delta under 1/16 of the chunk beats compressing it alone by far (SQLite
        # pages compress ~2.5x): skip the second compression.
        if len(d) < len(data) // 16:
            return d, True
        z = _cctx(level).compress(data)
        if len(d) < len(z) * DELTA_GAIN:
            return d, True
    else:
        z = _cctx(level).compress(data)
    if len(z) < len(data):
        return bytes((ZSTD,)) + z, False
    return bytes((RAW,)) + bytes(data), False


def _patch(data: bytes, base: bytes) -> bytes:
    """Codec byte, slice size, bitmap of changed slices and their zstd frame (no base id yet)."""
    step = 1 << PATCH_SLICE_LOG
    changed = [i for i in range(0, len(data), step) if data[i : i + step] != base[i : i + step]]
    bitmap = bytearray((len(data) + step - 1) // step + 7 >> 3)
    for i in changed:
        bitmap[i >> PATCH_SLICE_LOG >> 3] |= 1 << (i >> PATCH_SLICE_LOG & 7)
    new = b"".join(data[i : i + step] for i in changed)
    old = b"".join(base[i : i + step] for i in changed)
    cctx = (zstandard.ZstdCompressor(level=PATCH_LEVEL, dict_data=_raw_dict(old)) if len(old) >= _MIN_DICT
            else _cctx(PATCH_LEVEL))
    return bytes((PATCH, PATCH_SLICE_LOG)) + bytes(bitmap) + cctx.compress(new)


def _unpatch(payload: memoryview, base: bytes, size: int) -> bytes:
    if len(base) != size:
        raise ValueError("patch base has the wrong length")
    log = payload[0]
    if not 9 <= log <= 16:
        raise ValueError("bad patch slice size")
    step = 1 << log
    n = (size + step - 1) // step
    nbitmap = (n + 7) >> 3
    bitmap = payload[1 : 1 + nbitmap]
    changed = [i * step for i in range(n) if bitmap[i >> 3] >> (i & 7) & 1]
    old = b"".join(base[i : i + step] for i in changed)
    dctx = zstandard.ZstdDecompressor(dict_data=_raw_dict(old)) if len(old) >= _MIN_DICT else _dctx()
    new = dctx.decompress(payload[1 + nbitmap :], max_output_size=len(old))
    if len(new) != len(old):
        raise ValueError("patch does not match its base")
    out = bytearray(base)
    pos = 0
    for i in changed:
        k = min(step, size - i)
        out[i : i + k] = new[pos : pos + k]
        pos += k
    return bytes(out)


def delta_base(payload: bytes) -> bytes | None:
    """The base chunk id a payload depends on, if it is a delta."""
    if payload[0] in (ZSTD_DELTA, PATCH):
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
    if codec == PATCH:
        if get_base is None:
            raise ValueError("patch chunk without a way to read its base")
        base = get_base(bytes(payload[1 : 1 + BASE_ID_BYTES]))
        return _unpatch(memoryview(payload)[1 + BASE_ID_BYTES :], base, size)
    raise ValueError(f"unknown chunk codec {codec}")
