"""Stored object framing: magic + format version + kind, checked by every reader."""

from __future__ import annotations

from snapkit.errors import IntegrityError, StoreFormatError

MAGIC = b"SNPK"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})

PACK = b"P"
INDEX = b"I"
MANIFEST = b"M"

HEADER_BYTES = len(MAGIC) + 2


def header(kind: bytes) -> bytes:
    return MAGIC + bytes((FORMAT_VERSION,)) + kind


def check_header(data: bytes | memoryview, kind: bytes, name: str) -> None:
    """Raise IntegrityError on a foreign or damaged header, StoreFormatError on a newer version."""
    head = bytes(data[:HEADER_BYTES])
    if len(head) < HEADER_BYTES or head[:4] != MAGIC or head[5:6] != kind:
        raise IntegrityError(f"{name}: not a snapkit {kind.decode()} object (damaged header)")
    if head[4] not in SUPPORTED_VERSIONS:
        raise StoreFormatError(f"{name}: format version {head[4]} is not supported by this snapkit")
