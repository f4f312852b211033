"""Packs: sealed chunks back to back, then a sealed trailer (docs/format.md, "Packs").

    header (75 B, kind P: carries the writer's data key, wrapped)
    chunk blobs: nonce || AES-256-GCM(data key, payload, aad = chunk id)
    trailer:     nonce || AES-256-GCM(data key, records, aad = b"trailer" + header + name)
    u32 BE:      the sealed trailer's length

A trailer record names each chunk, where it lies, its plaintext size, and for
a delta chunk its depth and base id, so an index can be rebuilt from packs
alone (`snapkit repair index`) and a garbage collector never needs to decrypt
a chunk to find the bases it must keep. A pack is written into the process's
private scratch folder as its chunks arrive and uploaded (put-if-absent) only
when the snapshot commits: nothing partial is ever in the store.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from snapkit.errors import IntegrityError
from snapkit.store import crypto, objects

PACK_TARGET = 16 * 1024 * 1024
PACK_ID_BYTES = 16
ID_BYTES = 32
NO_BASE = bytes(ID_BYTES)
# trailer record: chunk id, offset, stored length, plaintext size, delta depth, base id
_PREC = struct.Struct(f">{ID_BYTES}sIIIB{ID_BYTES}s")
# format 1 trailer record: chunk id, offset, stored length, plaintext size
_LEGACY_PREC = struct.Struct(f">{ID_BYTES}sIII")
_TRAILER_AAD = b"trailer"
# Grouped reads: chunks at most _GAP apart in one pack are fetched together, up to _SPAN bytes.
_GAP = 64 * 1024
_SPAN = 4 * 1024 * 1024


def pack_name(pack_id: bytes) -> str:
    h = pack_id.hex()
    return f"packs/{h[:2]}/{h}"


def pack_id_of(name: str) -> bytes:
    return bytes.fromhex(name.rsplit("/", 1)[1])


@dataclass(frozen=True, slots=True)
class PackEntry:
    chunk_id: bytes
    offset: int
    length: int
    size: int
    depth: int
    base: bytes | None  # None for a full chunk, or when a format-1 trailer does not say


class PackWriter:
    """Appends sealed chunks to one pack's scratch file, up to PACK_TARGET bytes.

    The bytes go straight to the file (no pack-sized buffer in memory).
    """

    def __init__(self, keys: crypto.Keys, data_key: crypto.ObjectKey, scratch: Path):
        self.keys = keys
        self.data_key = data_key
        self.pack_id = os.urandom(PACK_ID_BYTES)
        self.name = pack_name(self.pack_id)
        self.header = objects.new_header(keys, objects.PACK, self.name, data_key)
        self.tmp = Path(scratch) / f"pack-{self.pack_id.hex()}"
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self.file = os.fdopen(fd, "wb")
        self.file.write(self.header)
        self.size = len(self.header)
        self.entries: list[bytes] = []

    def add(self, chunks: list[tuple[bytes, bytes, int, int, bytes | None]]) -> list[PackEntry]:
        """Append sealed chunks (id, blob, plaintext size, depth, base id); returns where they went.

        One write per batch: each write releases the GIL and waits to get it
        back from the busy workers, so 30 small writes cost 30 waits.
        """
        out = []
        for chunk_id, blob, size, depth, base in chunks:
            entry = PackEntry(chunk_id, self.size, len(blob), size, depth, base if depth else None)
            self.entries.append(_PREC.pack(chunk_id, entry.offset, entry.length, size, depth,
                                           entry.base or NO_BASE))
            out.append(entry)
            self.size += len(blob)
        self.file.write(b"".join(c[1] for c in chunks))
        return out

    def full(self) -> bool:
        return self.size >= PACK_TARGET

    def finish(self) -> None:
        """Append the sealed trailer and close; `tmp` is then ready to upload."""
        sealed = self.data_key.seal(_TRAILER_AAD + self.header + self.name.encode(), b"".join(self.entries))
        self.file.write(sealed + struct.pack(">I", len(sealed)))
        # No fsync here: the backend's put_file makes it durable at commit, after the
        # kernel has had the whole snapshot's time to write it back (format 1 measured it).
        self.file.close()

    def discard(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


class PackReader:
    """Reads chunk blobs out of packs through the backend (ranged reads), thread-safe.

    Each pack's key is unwrapped from its header once and kept (bounded).
    """

    MAX_KEYS = 4096

    def __init__(self, backend, keys: crypto.Keys):
        self.backend = backend
        self.keys = keys
        self._keys: dict[bytes, tuple[str, crypto.ObjectKey | None]] = {}
        self._lock = threading.Lock()

    def _pack(self, pack_id: bytes) -> tuple[str, crypto.ObjectKey | None]:
        """(name, key) of a pack: its header is read and its key unwrapped once."""
        known = self._keys.get(pack_id)  # dict.get is atomic under the GIL
        if known is not None:
            return known
        name = pack_name(pack_id)
        head = self.backend.get_range(name, 0, objects.HEADER_BYTES)
        header = objects.parse_header(head, objects.PACK, name)
        known = (name, objects.object_key(self.keys, header, name))
        with self._lock:
            if len(self._keys) >= self.MAX_KEYS:
                self._keys.clear()
            self._keys[pack_id] = known
        return known

    def payload(self, chunk_id: bytes, pack_id: bytes, offset: int, length: int) -> bytes:
        """The chunk's opened (authenticated, still compressed) payload.

        IntegrityError naming the chunk and pack when the pack is missing,
        short, or the blob fails authentication.
        """
        from snapkit.backends.base import NotFound

        try:
            name, key = self._pack(pack_id)
            blob = self.backend.get_range(name, offset, length)
        except NotFound:
            what = f"chunk {chunk_id.hex()[:16]}: pack {pack_name(pack_id)}"
            raise IntegrityError(f"{what} is missing") from None
        if len(blob) != length:
            raise IntegrityError(f"chunk {chunk_id.hex()[:16]}: pack {name} is truncated")
        try:
            return self.keys.legacy_open(chunk_id, blob) if key is None else key.open(chunk_id, blob)
        except crypto.AuthenticationFailed:
            raise IntegrityError(f"chunk {chunk_id.hex()[:16]} in {name} is damaged") from None


    def payloads(self, chunk_ids: list[bytes], locs: list) -> list[bytes]:
        """`payload` for many chunks: neighbours in one pack are fetched in one ranged read.

        A layer's chunks were packed in order, so a restore's batch mostly lies
        in one or two stretches of a pack: one read instead of one per chunk
        (and, on object storage, one GET instead of dozens).
        """
        from snapkit.backends.base import NotFound

        out: list = [None] * len(chunk_ids)
        order = sorted(range(len(chunk_ids)), key=lambda i: (locs[i].pack, locs[i].offset))
        i = 0
        while i < len(order):
            first = locs[order[i]]
            start, end, j = first.offset, first.offset + first.length, i
            while j + 1 < len(order):
                nxt = locs[order[j + 1]]
                if (nxt.pack != first.pack or nxt.offset > end + _GAP
                        or nxt.offset + nxt.length - start > _SPAN):
                    break
                end, j = max(end, nxt.offset + nxt.length), j + 1
            try:
                name, key = self._pack(first.pack)
                data = memoryview(self.backend.get_range(name, start, end - start))
            except NotFound:
                cid = chunk_ids[order[i]]
                raise IntegrityError(f"chunk {cid.hex()[:16]}: pack {pack_name(first.pack)} is missing") \
                    from None
            for k in range(i, j + 1):
                cid, loc = chunk_ids[order[k]], locs[order[k]]
                blob = data[loc.offset - start : loc.offset - start + loc.length]
                if len(blob) != loc.length:
                    raise IntegrityError(f"chunk {cid.hex()[:16]}: pack {name} is truncated")
                try:
                    out[order[k]] = self.keys.legacy_open(cid, blob) if key is None else key.open(cid, blob)
                except crypto.AuthenticationFailed:
                    raise IntegrityError(f"chunk {cid.hex()[:16]} in {name} is damaged") from None
            i = j + 1
        return out


def read_trailer(backend, keys: crypto.Keys, name: str) -> list[PackEntry]:
    """Authenticate a pack's header and trailer and return its entries (ranged reads only).

    IntegrityError naming the pack when anything does not check out.
    """
    from snapkit.backends.base import NotFound

    try:
        size = backend.stat(name).size
        header = objects.parse_header(backend.get_range(name, 0, objects.HEADER_BYTES), objects.PACK, name)
        if size < header.size + 4:
            raise IntegrityError(f"{name}: pack is truncated")
        (n,) = struct.unpack(">I", backend.get_range(name, size - 4, 4))
        start = size - 4 - n
        if n <= 0 or start < header.size:
            raise IntegrityError(f"{name}: pack trailer is damaged")
        sealed = backend.get_range(name, start, n)
    except NotFound:
        raise IntegrityError(f"{name}: pack is missing") from None
    key = objects.object_key(keys, header, name)
    try:
        if key is None:
            trailer = keys.legacy_open(b"pack trailer " + pack_id_of(name), sealed)
        else:
            trailer = key.open(_TRAILER_AAD + header.raw + name.encode(), sealed)
    except crypto.AuthenticationFailed:
        raise IntegrityError(f"{name}: pack trailer is damaged (authentication failed)") from None
    rec = _LEGACY_PREC if key is None else _PREC
    if len(trailer) % rec.size:
        raise IntegrityError(f"{name}: pack trailer is damaged (bad length)")
    entries = list(_entries(trailer, rec))
    for e in entries:
        if e.offset < header.size or e.offset + e.length > start:
            raise IntegrityError(f"{name}: pack trailer does not match the pack")
    return entries


def _entries(trailer: bytes, rec: struct.Struct) -> Iterator[PackEntry]:
    for off in range(0, len(trailer), rec.size):
        fields = rec.unpack_from(trailer, off)
        if rec is _LEGACY_PREC:
            yield PackEntry(fields[0], fields[1], fields[2], fields[3], 0, None)
        else:
            cid, o, ln, size, depth, base = fields
            yield PackEntry(cid, o, ln, size, depth, base if depth else None)
