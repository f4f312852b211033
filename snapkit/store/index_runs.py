"""Sorted run files and the manifest behind `ChunkIndex` (snapkit/store/index.py).

A run file is written once (temp name, then rename) and never modified:

    header   b"SNPKRUN\\0", version (u16), 0 (u16), record count (u64), names length (u32)
    names    the store index object names the run covers, UTF-8, "\\n"-separated
    fanout   65536 x u32: fanout[p] = index of the first record whose 2-byte prefix >= p
    records  count x 96-byte records, sorted bytewise (so by chunk id)
    mac      HMAC-SHA256(mac key, everything above)

All integers are big-endian. The fanout is stored so that opening a run costs
one streaming MAC pass and no scan; a lookup then reads two fanout entries and
binary-searches the ~count/65536 records they bracket (see Run).

The manifest (`manifest`) is a small text file naming the current runs with
their MACs, MACed itself, so a run file can be neither damaged nor swapped for
another validly MACed one without being noticed. Nothing read from the cache
folder is trusted before its MAC has been checked (a run's header lengths are
read first, but only to check the file size and to know where the MAC is).
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
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
IN_MEMORY_MAX = 8 << 20  # runs up to this many record bytes are also held in memory
MANIFEST = "manifest"
MANIFEST_MAGIC = "snapkit index cache 1"
RUN_NAME = re.compile(r"run-[0-9a-f]{32}")
# array type code with 4-byte items (fanout entries), whatever the platform's int sizes
_U32 = next(code for code in "IL" if array(code).itemsize == 4)


class RunDamaged(Exception):
    """A run file or the manifest is not what this cache wrote (damage, truncation, wrong key)."""


def _read_exactly(f, n: int, file: str) -> bytes:
    data = f.read(n)
    while len(data) < n:  # a regular file returns short reads only at its end
        more = f.read(n - len(data))
        if not more:
            raise RunDamaged(f"{file}: truncated")
        data += more
    return data


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
    """One verified run file, kept open, plus 4 bytes of each chunk id in memory.

    Lookup: the fanout (2-byte prefix) brackets ~count/65536 records; the next
    4 id bytes of each record, kept in an array (4 B a record: 8 MB for 2 M
    chunks), are binary-searched in C; only a candidate costs a pread of its
    96-byte record, compared in full. A miss costs no I/O at all. The array is
    filled during the MAC pass, which reads every byte anyway.

    Why not mmap the records: every page fault on a file mapping maps the
    surrounding 64 KiB of page cache (kernel fault-around; MADV_RANDOM does
    not stop it), so 10,000 random lookups made a 184 MB run fully resident
    (206 MB peak RSS), and the lookups were no faster (7-10 µs). pread is
    positionless, so lookups from several threads are safe.
    """

    __slots__ = ("file", "tag", "names", "count", "_f", "_fd", "_fan", "_keys", "_rec", "_mem")

    @classmethod
    def open(cls, folder: Path, file: str, key: bytes, tag: bytes, verify: bool = True) -> Run:
        """Read the file once (1 MiB blocks) checking its MAC against `tag`; keep it open.

        FileNotFoundError if it is gone (a concurrent compaction), RunDamaged if
        it is not exactly the run the manifest named. `verify=False` only for a
        run this process has just written.
        """
        f = open(folder / file, "rb", buffering=0)
        try:
            return cls(file, f, key, tag, verify)
        except BaseException:
            f.close()
            raise

    def __init__(self, file: str, f, key: bytes, tag: bytes, verify: bool):
        fd = f.fileno()
        size = os.fstat(fd).st_size
        head = os.pread(fd, HEAD.size, 0)
        if len(head) < HEAD.size:
            raise RunDamaged(f"{file}: truncated")
        magic, version, _, count, names_len = HEAD.unpack(head)
        fan_off = HEAD.size + names_len
        rec = fan_off + FANOUT.size
        if magic != MAGIC or version != VERSION or size != rec + count * RECORD_BYTES + MAC_BYTES:
            raise RunDamaged(f"{file}: bad header or truncated")
        mac = hmac.new(key, digestmod=hashlib.sha256) if verify else None
        # Names, fanout and keys come from the very bytes the MAC covers, not a re-read.
        prefix = _read_exactly(f, rec, file)
        if mac:
            mac.update(prefix)
        keys = array(_U32, bytes(4 * count))
        # A small run (every run of a store under ~1 M chunks) is also kept in memory:
        # a hit then costs no pread (restore looks up every chunk and each delta base).
        mem = bytearray(count * RECORD_BYTES) if count * RECORD_BYTES <= IN_MEMORY_MAX else None
        step = BLOCK // RECORD_BYTES * RECORD_BYTES
        buf = bytearray(step)  # reused: a fresh 1 MiB bytes per block costs page faults
        with memoryview(keys) as whole, whole.cast("B") as out, memoryview(buf) as view:
            for start in range(0, count * RECORD_BYTES, step):
                n = min(step, count * RECORD_BYTES - start)
                got = 0
                while got < n:
                    more = f.readinto(view[got:n])
                    if not more:
                        raise RunDamaged(f"{file}: truncated")
                    got += more
                if mac:
                    mac.update(view[:n])
                if mem is not None:
                    mem[start : start + n] = view[:n]
                at = start // RECORD_BYTES * 4
                for j in range(4):  # id bytes 2..5 of every record: strided copies, C speed
                    out[at + j : at + n // RECORD_BYTES * 4 : 4] = buf[2 + j : n : RECORD_BYTES]
        if sys.byteorder == "little":
            keys.byteswap()  # bytes were laid out big-endian, so the order matches the ids'
        stored = _read_exactly(f, MAC_BYTES, file)
        if mac and not (hmac.compare_digest(mac.digest(), stored)
                        and hmac.compare_digest(stored, tag)):
            raise RunDamaged(f"{file}: MAC mismatch")
        fan = array(_U32, prefix[fan_off:rec])
        if sys.byteorder == "little":
            fan.byteswap()
        fan.append(count)  # sentinel: fanout[p + 1] exists for every prefix p
        try:
            names = prefix[HEAD.size : fan_off].decode().split("\n") if names_len else []
        except UnicodeDecodeError:
            raise RunDamaged(f"{file}: bad names") from None
        self.file, self.tag, self.count, self.names = file, tag, count, frozenset(names)
        self._f, self._fd, self._fan, self._keys, self._rec = f, fd, fan, keys, rec
        self._mem = mem

    def find(self, chunk_id: bytes) -> bytes | None:
        """The first record with this chunk id, or None."""
        p = chunk_id[0] << 8 | chunk_id[1]
        lo, hi = self._fan[p], self._fan[p + 1]
        if hi > self.count:
            # The fanout is MACed, not checked entry by entry; a wrong one must
            # only ever cost misses (a hit needs the very id in a record).
            hi = self.count
        if lo >= hi:
            return None
        sub = int.from_bytes(chunk_id[2:6], "big")
        keys = self._keys
        i = bisect_left(keys, sub, lo, hi)
        mem = self._mem
        while i < hi and keys[i] == sub:  # almost always one candidate, or none
            if mem is not None:
                rec = mem[i * RECORD_BYTES : (i + 1) * RECORD_BYTES]
            else:
                rec = os.pread(self._fd, RECORD_BYTES, self._rec + i * RECORD_BYTES)
            if rec[:ID_BYTES] == chunk_id:
                return rec
            i += 1
        return None

    def fanout(self) -> array:
        return self._fan[:-1]

    def records(self) -> Iterator[bytes]:
        """All records in order, read in ~1 MiB blocks (memory does not grow with the run)."""
        step = BLOCK // RECORD_BYTES * RECORD_BYTES
        end = self._rec + self.count * RECORD_BYTES
        for start in range(self._rec, end, step):
            block = os.pread(self._fd, min(step, end - start), start)
            if len(block) != min(step, end - start):
                raise RunDamaged(f"{self.file}: truncated while being read")
            yield from records_of(block)

    def close(self) -> None:
        self._f.close()


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


def plan_keep(found: list[Run], wanted: set[str]) -> list[Run]:
    """The runs to keep: those covering only objects still in the store, each object once."""
    keep, covered = [], set()
    for run in by_size(found):
        if run.names <= wanted and covered.isdisjoint(run.names):
            keep.append(run)
            covered |= run.names
    return keep


def by_size(found: list[Run]) -> list[Run]:
    """Biggest first: most lookups hit the biggest run."""
    return sorted(found, key=lambda r: -r.count)
