"""Sorted run files and the manifest behind `ChunkIndex` (snapkit/store/index.py).

A run file is written once (temp name, then rename) and never modified:

    header   b"SNPKRUN\\0", version (u16), 0 (u16), record count (u64), names length (u32)
    names    the store index object names the run covers, UTF-8, "\\n"-separated
    fanout   65536 x u32: fanout[p] = index of the first record whose 2-byte prefix >= p
    records  count x 96-byte records, sorted bytewise (so by chunk id)
    mac      HMAC-SHA256(mac key, everything above)

All integers are big-endian. The fanout is stored so that opening a run costs
one streaming MAC pass and no scan; a lookup then reads two fanout entries and
binary-searches the ~count/65536 records they bracket, straight from the mmap.

The manifest (`manifest`) is a small text file naming the current runs with
their MACs, MACed itself, so a run file can be neither damaged nor swapped for
another validly MACed one without being noticed. Nothing read from the cache
folder is used before its MAC has been checked.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import mmap
import operator
import os
import re
import struct
import sys
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from itertools import accumulate, islice
from pathlib import Path

RECORD_BYTES = 96
ID_BYTES = 32
MAC_BYTES = 32
PREFIXES = 65536
MAGIC = b"SNPKRUN\0"
VERSION = 1
HEAD = struct.Struct(">8sHHQI")
FANOUT = struct.Struct(f">{PREFIXES}I")
BLOCK = 1 << 20  # streaming unit for MAC checks and record iteration
MANIFEST = "manifest"
MANIFEST_MAGIC = "snapkit index cache 1"
RUN_NAME = re.compile(r"run-[0-9a-f]{32}")
# array type code with 4-byte items (fanout entries), whatever the platform's int sizes
_U32 = next(code for code in "IL" if array(code).itemsize == 4)


class RunDamaged(Exception):
    """A run file or the manifest is not what this cache wrote (damage, truncation, wrong key)."""


def fanout_of(data: bytes) -> array:
    """The fanout table (65536 entries) of sorted record bytes."""
    # The 2-byte prefixes as one u16 array (two strided copies, C speed), then
    # one C bisect per prefix: ~50 ms for 2 M records instead of a Python loop.
    n = len(data) // RECORD_BYTES
    prefixes = bytearray(2 * n)
    prefixes[0::2] = data[0::RECORD_BYTES]
    prefixes[1::2] = data[1::RECORD_BYTES]
    keys = array("H")
    keys.frombytes(prefixes)
    if sys.byteorder == "little":
        keys.byteswap()
    if n >= PREFIXES:
        return array(_U32, [bisect_left(keys, p) for p in range(PREFIXES)])
    # Few records (one `create`): count them, then prefix sums, also in C.
    counts = [0] * PREFIXES
    for p in keys:
        counts[p] += 1
    return array(_U32, accumulate(counts, initial=0))[:PREFIXES]


def sum_fanouts(fanouts: list[array]) -> array:
    """The fanout of the merge of several runs: entries add up."""
    total = fanouts[0]
    for fan in fanouts[1:]:
        total = array(_U32, map(operator.add, total, fan))
    return total


def records_of(data: bytes) -> Iterator[bytes]:
    """The records of in-memory record bytes, one by one (for heapq.merge)."""
    return (data[i : i + RECORD_BYTES] for i in range(0, len(data), RECORD_BYTES))


def merge_blocks(sources: list[Iterator[bytes]], batch: int = 8192) -> Iterator[bytes]:
    """Streaming k-way merge of sorted record iterators, yielded in blocks of records.

    Memory is one pending record per source plus one block, whatever the total.
    Records compare as whole 96-byte strings: by chunk id, then by location, so
    duplicate chunk ids all survive, in a deterministic order.
    """
    merged = heapq.merge(*sources)
    while block := b"".join(islice(merged, batch)):
        yield block


class Run:
    """One verified, memory-mapped run file (or an in-memory buffer in the same layout)."""

    __slots__ = ("file", "tag", "names", "count", "_buf", "_fan", "_rec")

    def __init__(self, file: str, buf, tag: bytes):
        magic, version, _, count, names_len = HEAD.unpack_from(buf, 0)
        fan_off = HEAD.size + names_len
        self._rec = fan_off + FANOUT.size
        if (magic != MAGIC or version != VERSION
                or len(buf) != self._rec + count * RECORD_BYTES + MAC_BYTES):
            raise RunDamaged(f"{file}: bad header or length")
        fan = array(_U32, buf[fan_off : self._rec])
        if sys.byteorder == "little":
            fan.byteswap()
        fan.append(count)  # sentinel: fanout[p + 1] exists for every prefix p
        # The fanout is MACed, so it is not checked entry by entry: even a wrong one
        # can only cause misses, since `find` returns a record only when it lies
        # inside the records and its chunk id equals the one asked for.
        try:
            names = bytes(buf[HEAD.size : fan_off]).decode().split("\n") if names_len else []
        except UnicodeDecodeError:
            raise RunDamaged(f"{file}: bad names") from None
        self.file, self.tag, self.count = file, tag, count
        self.names = frozenset(names)
        self._buf, self._fan = buf, fan

    @classmethod
    def open(cls, folder: Path, file: str, key: bytes, tag: bytes, verify: bool = True) -> Run:
        """Check the file's MAC (streamed, never read whole) against `tag`, then mmap it.

        FileNotFoundError if it is gone (a concurrent compaction), RunDamaged if
        it is not exactly the run the manifest named.
        """
        with open(folder / file, "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            if size < HEAD.size + FANOUT.size + MAC_BYTES:
                raise RunDamaged(f"{file}: truncated")
            if verify:
                mac = hmac.new(key, digestmod=hashlib.sha256)
                buf = bytearray(BLOCK)
                view = memoryview(buf)
                left = size - MAC_BYTES
                while left:
                    n = f.readinto(view[: min(BLOCK, left)])
                    if not n:
                        raise RunDamaged(f"{file}: truncated")
                    mac.update(view[:n])
                    left -= n
                stored = f.read(MAC_BYTES)
                if not (hmac.compare_digest(mac.digest(), stored)
                        and hmac.compare_digest(stored, tag)):
                    raise RunDamaged(f"{file}: MAC mismatch")
            mm = mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ)
        try:
            return cls(file, mm, tag)
        except BaseException:
            mm.close()
            raise

    def find(self, chunk_id: bytes) -> int:
        """Byte offset of the first record with this chunk id, or -1."""
        p = chunk_id[0] << 8 | chunk_id[1]
        lo, hi = self._fan[p], self._fan[p + 1]
        buf, base = self._buf, self._rec
        while lo < hi:
            mid = (lo + hi) >> 1
            off = base + mid * RECORD_BYTES
            if buf[off : off + ID_BYTES] < chunk_id:
                lo = mid + 1
            else:
                hi = mid
        off = base + lo * RECORD_BYTES
        if lo < self.count and buf[off : off + ID_BYTES] == chunk_id:
            return off
        return -1

    def record(self, off: int) -> bytes:
        return self._buf[off : off + RECORD_BYTES]

    def fanout(self) -> array:
        return self._fan[:-1]

    def records(self) -> Iterator[bytes]:
        """All records in order, read in ~1 MiB blocks (memory does not grow with the run)."""
        step = BLOCK // RECORD_BYTES * RECORD_BYTES
        end = self._rec + self.count * RECORD_BYTES
        for start in range(self._rec, end, step):
            block = self._buf[start : min(start + step, end)]
            yield from records_of(block)

    def close(self) -> None:
        if isinstance(self._buf, mmap.mmap):
            self._buf.close()


def write_run(folder: Path, key: bytes, names: list[str], count: int, fanout: array,
              blocks: Iterable[bytes]) -> tuple[str, bytes]:
    """Write a run from sorted record blocks (temp file, then rename); (file name, MAC).

    No fsync: a run lost or torn by a crash fails its MAC and is rebuilt from the
    store, which is cheaper than syncing on every `create`.
    """
    file = f"run-{os.urandom(16).hex()}"
    tmp = folder / f"tmp-{file}"
    names_blob = "\n".join(names).encode()
    fan = array(_U32, fanout)
    if sys.byteorder == "little":
        fan.byteswap()
    mac = hmac.new(key, digestmod=hashlib.sha256)
    written = 0
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            for part in (HEAD.pack(MAGIC, VERSION, 0, count, len(names_blob)), names_blob,
                         fan.tobytes()):
                mac.update(part)
                f.write(part)
            for block in blocks:
                mac.update(block)
                f.write(block)
                written += len(block)
            if written != count * RECORD_BYTES:  # a bug, never a cache to keep
                raise AssertionError(f"run holds {written} bytes, expected {count} records")
            tag = mac.digest()
            f.write(tag)
        os.replace(tmp, folder / file)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return file, tag


def read_manifest(folder: Path, key: bytes) -> list[tuple[str, bytes]] | None:
    """[(run file, MAC)] from the manifest; [] if there is none, None if it is damaged."""
    try:
        raw = (folder / MANIFEST).read_bytes()
    except FileNotFoundError:
        return []
    body, _, mac_line = raw.rstrip(b"\n").rpartition(b"\n")
    expected = b"mac " + hmac.new(key, body + b"\n", hashlib.sha256).hexdigest().encode()
    if not hmac.compare_digest(mac_line, expected):
        return None
    lines = body.decode().split("\n")
    if lines[0] != MANIFEST_MAGIC:
        return None
    entries = []
    for line in lines[1:]:
        kind, file, tag = (line.split(" ") + ["", ""])[:3]
        if kind != "run" or not RUN_NAME.fullmatch(file) or len(tag) != 2 * MAC_BYTES:
            return None
        entries.append((file, bytes.fromhex(tag)))
    return entries


def write_manifest(folder: Path, key: bytes, entries: list[tuple[str, bytes]]) -> None:
    """Replace the manifest atomically (temp file + rename)."""
    body = "\n".join([MANIFEST_MAGIC] + [f"run {file} {tag.hex()}" for file, tag in entries])
    body = body.encode() + b"\n"
    raw = body + b"mac " + hmac.new(key, body, hashlib.sha256).hexdigest().encode() + b"\n"
    tmp = folder / f"tmp-manifest-{os.urandom(8).hex()}"
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            f.write(raw)
        os.replace(tmp, folder / MANIFEST)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def merge_count(sizes: list[int], factor: int = 2, max_runs: int = 8) -> int:
    """How many of the smallest runs to merge now (0 or >= 2); `sizes` ascending.

    Geometric policy: every run must hold at least `factor` x the records of all
    smaller runs together, so there are O(log n) runs and each record is
    rewritten O(log n) times overall; the biggest run is rewritten only once
    the others add up to 1/factor of it. `max_runs` caps the count on top.
    Sizes should count an empty run as non-zero so that empty runs merge away.
    """
    k, prefix = 0, 0
    for j, size in enumerate(sizes):
        if j and size < factor * prefix:
            k = j + 1  # run j breaks the progression: merge it and everything smaller
        prefix += size
    if len(sizes) - max(k - 1, 0) > max_runs:
        k = len(sizes) - max_runs + 1
    return k if k >= 2 else 0
