"""Stored object framing: the header every sealed object starts with (docs/format.md, "Objects").

Format 2 header, 75 bytes:

    magic "SNPK" | version (u8, 2) | kind (1 byte) | key id (8) | wrap (u8) | wrapped key (60)

`wrap` 0 means the object's random key is sealed under a subkey of the
store's master key (`meta` for index, manifest and catalog objects, `data`
for packs); other values are reserved for public-key recipients. The wrapped
key's associated data is the header's first 15 bytes plus the object's name,
and the payload's is the whole header plus the name: an object moved to
another name, or given another object's header, fails authentication.

Format 1 objects (a 6-byte header: magic, version 1, kind; sealed directly
under the old `enc` subkey) are still read, so a migrated store keeps its
packs and manifests as they are.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from snapkit.errors import IntegrityError, StoreFormatError
from snapkit.store import crypto

MAGIC = b"SNPK"
FORMAT_VERSION = 2
LEGACY_VERSION = 1
SUPPORTED_VERSIONS = frozenset({1, 2})

PACK = b"P"
INDEX = b"I"
MANIFEST = b"M"
CATALOG = b"C"
PURPOSE = {PACK: "data", INDEX: "meta", MANIFEST: "meta", CATALOG: "meta"}

WRAP_SYMMETRIC = 0
_HEAD = struct.Struct(f">4sBc{crypto.KEY_ID_BYTES}sB")
HEADER_BYTES = _HEAD.size + crypto.WRAPPED_BYTES  # 75
LEGACY_HEADER_BYTES = len(MAGIC) + 2


@dataclass(frozen=True)
class Header:
    version: int
    kind: bytes
    raw: bytes  # the header's bytes as stored: associated data for the payload

    @property
    def size(self) -> int:
        return len(self.raw)


def parse_header(data: bytes | memoryview, kind: bytes, name: str) -> Header:
    """The header of `data` (at least its first HEADER_BYTES bytes).

    IntegrityError on a foreign or damaged header, StoreFormatError on a
    version this snapkit does not know.
    """
    head = bytes(data[:HEADER_BYTES])
    if len(head) < LEGACY_HEADER_BYTES or head[:4] != MAGIC or head[5:6] != kind:
        raise IntegrityError(f"{name}: not a snapkit {kind.decode()} object (damaged header)")
    version = head[4]
    if version not in SUPPORTED_VERSIONS:
        raise StoreFormatError(f"{name}: format version {version} is not supported by this snapkit")
    if version == LEGACY_VERSION:
        return Header(version, kind, head[:LEGACY_HEADER_BYTES])
    if len(head) < HEADER_BYTES:
        raise IntegrityError(f"{name}: {kind.decode()} object is truncated")
    return Header(version, kind, head)


def new_header(keys: crypto.Keys, kind: bytes, name: str, key: crypto.ObjectKey) -> bytes:
    """A format-2 header carrying `key` wrapped for this object's name."""
    head = _HEAD.pack(MAGIC, FORMAT_VERSION, kind, keys.key_id, WRAP_SYMMETRIC)
    return head + keys.wrap_object_key(PURPOSE[kind], key, head + name.encode())


def object_key(keys: crypto.Keys, header: Header, name: str) -> crypto.ObjectKey | None:
    """The key that opens the object's payload; None for a format-1 object (legacy key).

    IntegrityError when the wrapped key does not open: a damaged header, an
    object copied from another name, or a store written under another master key.
    """
    if header.version == LEGACY_VERSION:
        return None
    _magic, _v, kind, key_id, wrap = _HEAD.unpack(header.raw[: _HEAD.size])
    if wrap != WRAP_SYMMETRIC:
        raise StoreFormatError(f"{name}: written for a key recipient (wrap {wrap}); not supported yet")
    if key_id != keys.key_id:
        raise IntegrityError(f"{name}: sealed under another master key (key id {key_id.hex()})")
    try:
        return keys.open_object_key(PURPOSE[kind], header.raw[_HEAD.size :],
                                    header.raw[: _HEAD.size] + name.encode())
    except crypto.AuthenticationFailed:
        raise IntegrityError(f"{name}: authentication failed (damaged or altered header)") from None


def seal(keys: crypto.Keys, kind: bytes, name: str, payload: bytes | memoryview) -> bytes:
    """A whole sealed object: header + payload sealed under a fresh object key."""
    key = keys.new_object_key()
    head = new_header(keys, kind, name, key)
    return head + key.seal(head + name.encode(), payload)


def open_sealed(keys: crypto.Keys, kind: bytes, name: str, data: bytes | memoryview) -> bytes:
    """The authenticated payload of a sealed object (format 1 or 2); IntegrityError naming it."""
    header = parse_header(data, kind, name)
    key = object_key(keys, header, name)
    aad = header.raw + name.encode()
    body = memoryview(data)[header.size :]
    try:
        return keys.legacy_open(aad, body) if key is None else key.open(aad, body)
    except crypto.AuthenticationFailed:
        raise IntegrityError(f"{name}: authentication failed (damaged or altered)") from None
