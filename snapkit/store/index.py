"""The chunk index: which pack holds each chunk, as a compact, merged, cached, authenticated index.

Store index objects (`index/<name>`, authenticated by the store code) each hold
96-byte records sorted by chunk id. Loading them all into a dict costs ~200 B a
chunk on every command; `ChunkIndex` instead keeps a local cache of sorted
*runs* (files: header, fanout table, records, HMAC; layout in index_runs.py),
verifies each run's HMAC by streaming it once per process, and then serves
lookups from a fanout table in memory plus one small pread per run (pread, not
mmap: see index_runs.Run). Opening a 2-million-chunk store costs one MAC pass
over ~184 MB and a few MB of memory (benchmarks/index_scale.py).

Contracts:
- The cache is only ever a copy of the store: anything that fails its MAC, is
  truncated or is not named by the MACed manifest is dropped and refetched, so
  a bug, crash or hand edit can cost time but never make a chunk look present.
- Duplicate chunk ids (two writers stored the same chunk, each in its own pack)
  are all kept: `iter_records` yields every record (a garbage collector must see
  every location) and `__len__` counts them all. `lookup` returns one of them;
  each is a valid location as long as the object naming it is in the store.
- Lookups are safe from several threads, also while another thread runs
  `add`/`sync`; `add`/`sync` themselves must not run concurrently within one
  process. Between processes, updates are serialised by `flock` on `lock`.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import struct
import tempfile
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NamedTuple
from pathlib import Path

from snapkit.store.index_runs import (ID_BYTES, RECORD_BYTES, Run, RunDamaged, by_size,
                                      fanout_of, merge_blocks, merge_count, plan_keep,
                                      read_manifest, records_of, sum_fanouts, write_manifest,
                                      write_run)

# chunk id, pack id, offset in pack, stored length, plaintext size, delta depth, pad, base id
RECORD = struct.Struct(">32s16sIIIBxxx32s")
assert RECORD.size == RECORD_BYTES
_NO_BASE = bytes(ID_BYTES)
_PAD = slice(61, 64)  # the 3 pad bytes of a record
LOCK = "lock"
# Fetched objects are gathered into one run up to this size; a bigger object is its own run.
BATCH_BYTES = 16 * 1024 * 1024
MERGE_FACTOR = 2
MAX_RUNS = 8


class Location(NamedTuple):
    """Where a chunk is stored. `base` is the delta base's chunk id, None for a full chunk.

    A NamedTuple, not a dataclass: every chunk read makes one, and a frozen
    dataclass costs three times as much to build.
    """

    pack: bytes
    offset: int
    length: int
    size: int
    depth: int
    base: bytes | None


def pack_record(chunk_id: bytes, pack_id: bytes, offset: int, length: int, size: int,
                depth: int, base: bytes | None) -> bytes:
    """One 96-byte record; ValueError on a wrong-sized id, an out-of-range number or a bad base."""
    if len(chunk_id) != 32 or len(pack_id) != 16:
        raise ValueError("chunk id must be 32 bytes and pack id 16 bytes")
    if depth == 0:
        if base not in (None, _NO_BASE):
            raise ValueError("a full chunk (depth 0) has no base")
        base = _NO_BASE
    elif base is None or len(base) != ID_BYTES:
        raise ValueError("a delta chunk (depth > 0) needs its 32-byte base id")
    try:
        return RECORD.pack(chunk_id, pack_id, offset, length, size, depth, base)
    except struct.error as e:
        raise ValueError(f"record field out of range: {e}") from None


def unpack_record(rec: bytes) -> tuple[bytes, Location]:
    """(chunk id, Location) of one 96-byte record."""
    if len(rec) != RECORD_BYTES:
        raise ValueError(f"a record is {RECORD_BYTES} bytes, not {len(rec)}")
    chunk_id, pack, offset, length, size, depth, base = RECORD.unpack(rec)
    return chunk_id, Location(pack, offset, length, size, depth, base if depth else None)


def sort_records(data: bytes) -> bytes:
    """A concatenation of records, sorted by chunk id (then by the rest of the record)."""
    if len(data) % RECORD_BYTES:
        raise ValueError(f"record data must be a multiple of {RECORD_BYTES} bytes")
    return b"".join(sorted(records_of(bytes(data))))


def check_records(data: bytes) -> None:
    """ValueError unless `data` is whole records, sorted by chunk id, with zero pad bytes."""
    if not isinstance(data, (bytes, bytearray)):
        data = bytes(data)
    if len(data) % RECORD_BYTES:
        raise ValueError(f"index data is {len(data)} bytes, not a multiple of {RECORD_BYTES}")
    n = len(data) // RECORD_BYTES
    for i in range(_PAD.start, _PAD.stop):  # strided copies: C speed, even for 2 M records
        if data[i::RECORD_BYTES].count(0) != n:
            raise ValueError("index record with non-zero pad bytes")
    # Sortedness in slices of 64 Ki ids (the comparisons run in C; memory stays bounded).
    step = 65536
    prev = b""
    for start in range(0, n, step):
        ids = [data[o : o + ID_BYTES] for o in range(start * RECORD_BYTES,
                                                      min(n, start + step) * RECORD_BYTES,
                                                      RECORD_BYTES)]
        if prev > ids[0] or not all(map(bytes.__le__, ids, ids[1:])):
            raise ValueError("index records are not sorted by chunk id")
        prev = ids[-1]


class _FetchFailed(Exception):
    """Wraps an exception from the caller's `fetch`, so it is never taken for a cache error."""


class ChunkIndex:
    """The local, merged index of one store. See the module docstring for the contracts."""

    def __init__(self, folder: Path | None, mac_key: bytes):
        """`folder`: this store's private cache folder (made 0700, files 0600), or None.

        None, or a folder that cannot be created or written, means a private
        temporary folder for this process only, removed by `close()`.
        """
        self._key = bytes(mac_key)
        self._runs: list[Run] = []  # the current view, biggest first (most hits first)
        self._opened: dict[str, Run] = {}  # verified runs, by file name (files are immutable)
        # Objects this process added. Another process's sync, from a store listing
        # taken before they existed, drops them from the cache; our next add puts
        # them back, so what this process wrote stays visible to it.
        self._mine: dict[str, bytes] = {}
        self._temp: weakref.finalize | None = None
        if folder is not None:
            try:
                folder = Path(folder)
                folder.mkdir(mode=0o700, parents=True, exist_ok=True)
                if folder.stat().st_mode & 0o077:
                    os.chmod(folder, 0o700)
                probe = folder / f"tmp-probe-{os.getpid()}-{os.urandom(4).hex()}"
                os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                probe.unlink(missing_ok=True)
                os.close(os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o600))
            except OSError:
                folder = None
        self._folder = folder if folder is not None else self._make_temp()

    def _make_temp(self) -> Path:
        path = Path(tempfile.mkdtemp(prefix="snapkit-index-"))
        self._temp = weakref.finalize(self, shutil.rmtree, path, ignore_errors=True)
        return path

    # ---- queries -------------------------------------------------------------

    def lookup(self, chunk_id: bytes) -> Location | None:
        """One location of the chunk (any, if it is duplicated), or None."""
        if len(chunk_id) == ID_BYTES:
            for run in self._runs:
                rec = run.find(chunk_id)
                if rec is not None:
                    return unpack_record(rec)[1]
        return None

    def pack_of(self, chunk_id: bytes) -> bytes | None:
        """The id of a pack holding the chunk, or None: `lookup` without building a Location
        (a snapshot of an unchanged database checks every chunk this way)."""
        if len(chunk_id) == ID_BYTES:
            for run in self._runs:
                rec = run.find(chunk_id)
                if rec is not None:
                    return bytes(rec[ID_BYTES : ID_BYTES + 16])
        return None

    def __contains__(self, chunk_id: bytes) -> bool:
        if len(chunk_id) != ID_BYTES:
            return False
        return any(run.find(chunk_id) is not None for run in self._runs)

    def __len__(self) -> int:
        """Number of records, duplicate chunk ids included (the sum over the covered objects)."""
        return sum(run.count for run in self._runs)

    def iter_records(self) -> Iterator[bytes]:
        """Every record, sorted (by chunk id, then location), duplicates included; streamed."""
        view = list(self._runs)
        if len(view) == 1:
            return view[0].records()
        blocks = merge_blocks([r.records() for r in view])
        return (rec for block in blocks for rec in records_of(block))

    # ---- updates -------------------------------------------------------------

    def sync(self, names: list[str], fetch: Callable[[str], bytes]) -> None:
        """Make the cache match a store whose index objects are exactly `names`.

        `fetch(name)` returns one object's authenticated record bytes; they are
        checked with `check_records`. Its ValueError, like any exception from
        `fetch`, propagates; the objects fetched before it stay cached, so a
        caller retrying without the failing object fetches nothing twice. Up to
        date, this reads and verifies the cache and fetches nothing. `names` is
        authoritative, also for objects this process added: one not listed is
        dropped.
        """
        names = list(dict.fromkeys(names))
        _check_names(names)
        wanted = set(names)
        self._mine = {n: data for n, data in self._mine.items() if n in wanted}
        mine, fetch_store = self._mine, fetch
        fetch = lambda name: mine[name] if name in mine else fetch_store(name)  # noqa: E731
        found, entries = self._load(locked=False)
        keep = plan_keep(found, wanted)
        if entries is not None and len(keep) == len(found) == len(entries) \
                and set().union(*(r.names for r in keep)) == wanted:
            self._opened, self._runs = {r.file: r for r in keep}, by_size(keep)
            return
        self._update(lambda found: self._fetch_missing(plan_keep(found, wanted), names, fetch))

    def add(self, name: str, records: bytes) -> None:
        """This process just wrote store index object `name`: make it visible, and cache it.

        The view becomes the cache's current runs (runs other processes added
        since are picked up; a damaged one is dropped until the next `sync`
        refetches it, which can only cost a missed dedup) plus every object this
        process added that they lack. This process keeps the records it added
        in memory until a `sync` no longer lists them (see `_mine`).
        """
        _check_names([name])
        records = bytes(records)
        check_records(records)
        self._mine[name] = records

        def change(found: list[Run]) -> list[Run]:
            covered = set().union(*(run.names for run in found))
            lost = [n for n in self._mine if n not in covered]
            if not lost:
                return found
            return found + [self._write(lost, [self._mine[n] for n in lost])]

        self._update(change)

    def close(self) -> None:
        """Close every run file, remove a temporary folder; the index is empty afterwards.

        Not to be called while another thread may still look chunks up.
        """
        opened, self._opened, self._runs = self._opened, {}, []
        for run in opened.values():
            run.close()
        if self._temp is not None:
            self._temp()

    def __enter__(self) -> ChunkIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- internals -----------------------------------------------------------

    @contextmanager
    def _locked(self):
        fd = os.open(self._folder / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _load(self, locked: bool) -> tuple[list[Run], list | None]:
        """(verified runs the manifest names, manifest entries or None if it is damaged).

        A run that is damaged or missing is left out (the caller then sees a
        mismatch with the entries). Unlocked, a missing run may just have been
        merged away by another process: read the manifest again once first.
        """
        for _ in range(1 if locked else 2):
            entries = read_manifest(self._folder, self._key)
            found, missing = [], False
            for file, tag in entries or []:
                run = self._opened.get(file)
                if run is None or run.tag != tag:
                    try:
                        run = Run.open(self._folder, file, self._key, tag)
                    except FileNotFoundError:
                        missing = True
                        continue
                    except (RunDamaged, OSError, ValueError):
                        continue
                    self._opened[file] = run
                found.append(run)
            if not missing:
                break
        return found, entries

    def _update(self, change: Callable[[list[Run]], list[Run]]) -> None:
        """Under the lock: reload, apply `change` to the runs, merge, publish a new manifest.

        If the cache folder fails (disk full, permissions changed), carry the
        current view into a private temporary folder and apply `change` there.
        """
        try:
            with self._locked():
                found, entries = self._load(locked=True)
                try:
                    result = change(found)
                except _FetchFailed as e:
                    self._publish(self._compact(e.args[0]), entries)  # keep what was fetched
                    raise
                self._publish(self._compact(result), entries)
        except _FetchFailed as e:
            raise e.__cause__ from None
        except OSError:
            if self._temp is not None:
                raise
            carried = self._runs
            self._folder = self._make_temp()
            if carried:
                blocks = merge_blocks([r.records() for r in carried])
                carried = [self._write(sorted(set().union(*(r.names for r in carried))),
                                       runs=carried, blocks=blocks)]
            self._publish(carried, [])
            self._update(change)

    def _fetch_missing(self, keep: list[Run], names: list[str], fetch) -> list[Run]:
        """`keep` plus new runs for every name no kept run covers, fetched in batches."""
        covered = set().union(*(run.names for run in keep))
        out, batch_names, batch, batch_bytes = list(keep), [], [], 0
        for name in names:
            if name in covered:
                continue
            try:
                data = bytes(fetch(name))
                check_records(data)
            except Exception as e:
                raise _FetchFailed(out + [self._write(batch_names, batch)] if batch else out) from e
            if len(data) >= BATCH_BYTES:
                out.append(self._write([name], [data]))
                continue
            batch_names.append(name)
            batch.append(data)
            batch_bytes += len(data)
            if batch_bytes >= BATCH_BYTES:
                out.append(self._write(batch_names, batch))
                batch_names, batch, batch_bytes = [], [], 0
        if batch_names:
            out.append(self._write(batch_names, batch))
        return out

    def _write(self, names: list[str], datas: list[bytes] = (), runs: list[Run] = (),
               blocks=None) -> Run:
        """Write and open a run of sorted record bytes `datas`, or of merged `runs`."""
        if runs:
            count = sum(r.count for r in runs)
            fanout = sum_fanouts([r.fanout() for r in runs])
        else:
            count = sum(len(d) for d in datas) // RECORD_BYTES
            fanout = sum_fanouts([fanout_of(d) for d in datas])
            blocks = datas if len(datas) == 1 else merge_blocks([records_of(d) for d in datas])
        file, tag = write_run(self._folder, self._key, names, count, fanout, blocks)
        # Just written from verified inputs: no need to stream it back through the MAC.
        run = Run.open(self._folder, file, self._key, tag, verify=False)
        self._opened[file] = run
        return run

    def _compact(self, found: list[Run]) -> list[Run]:
        """Merge the smallest runs while the policy asks for it (index_runs.merge_count)."""
        found = sorted(found, key=lambda r: r.count)
        while k := merge_count([r.count + 1 for r in found], MERGE_FACTOR, MAX_RUNS):
            group = found[:k]
            names = sorted(set().union(*(r.names for r in group)))
            blocks = merge_blocks([r.records() for r in group])
            merged = self._write(names, runs=group, blocks=blocks)
            found = sorted(found[k:] + [merged], key=lambda r: r.count)
        return found

    def _publish(self, final: list[Run], entries: list | None) -> None:
        """Replace the manifest (if it changed), delete unlisted files, adopt `final`."""
        new_entries = [(r.file, r.tag) for r in final]
        if entries is None or set(new_entries) != set(entries):
            write_manifest(self._folder, self._key, new_entries)
        listed = {r.file for r in final}
        # Safe under the lock: runs not listed are merged away, damaged or orphaned by
        # a crash, and tmp- files are only written by a lock holder (or are a probe,
        # see __init__). A reader that read the old manifest and has not opened a run
        # yet retries (see _load).
        for path in self._folder.iterdir():
            if (path.name.startswith("run-") and path.name not in listed) \
                    or path.name.startswith("tmp-"):
                path.unlink(missing_ok=True)
        # Dropped runs are not closed here: a lookup or iter_records in another
        # thread may still hold them; the file closes when its last reference goes.
        self._opened = {r.file: r for r in final}
        self._runs = by_size(final)


def _check_names(names: list[str]) -> None:
    for name in names:
        if not isinstance(name, str) or not name or "\n" in name:
            raise ValueError(f"bad index object name {name!r}")


__all__ = ["RECORD", "Location", "pack_record", "unpack_record", "sort_records", "check_records",
           "ChunkIndex"]
