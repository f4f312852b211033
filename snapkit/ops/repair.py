"""`snapkit repair index`: rebuild the store's index objects from the packs alone.

Every pack trailer names its chunks, where they lie, and (format 2) each
delta chunk's base and depth; a format-1 trailer lacks the base, so those
packs' delta chunks have their payload header read. New index objects are
written first, then the old ones deleted, under an exclusive lease: killed
at any point, the store holds the old index, the new one, or both (duplicate
records are harmless).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from snapkit.errors import IntegrityError
from snapkit.model import Result
from snapkit.store import compress
from snapkit.store.index import pack_record, sort_records
from snapkit.store.packs import pack_id_of, read_trailer

_PER_OBJECT = 100_000  # records per index object


@dataclass(frozen=True)
class RepairResult(Result):
    packs: int
    chunks: int
    index_objects_written: int
    index_objects_removed: int
    damaged_packs: tuple[str, ...] = ()


def repair_index(project) -> RepairResult:
    store = project.unlocked_store()
    backend = store.backend
    with store.lock(exclusive=True, command="repair index"):
        old = [info.name for info in backend.list("index")]
        packs = [info.name for info in backend.list("packs")]
        damaged, out, written, chunks = [], bytearray(), 0, 0
        legacy: list[tuple[bytes, bytes, object]] = []  # format-1 entries, depth unknown yet

        def flush() -> None:
            nonlocal out, written
            if out:
                name = f"index/{os.urandom(16).hex()}"
                records = sort_records(bytes(out))
                backend.put_new(name, store.seal_index(name, records))
                out, written = bytearray(), written + 1

        for name in packs:
            try:
                entries = read_trailer(backend, store.keys, name)
                version = backend.get_range(name, 4, 1)[0]
            except IntegrityError:
                damaged.append(name)
                continue
            pack = pack_id_of(name)
            for e in entries:
                chunks += 1
                if version == 1:
                    legacy.append((pack, e.chunk_id, e))
                    continue
                out += pack_record(e.chunk_id, pack, e.offset, e.length, e.size, e.depth, e.base)
                if len(out) >= _PER_OBJECT * 96:
                    flush()
        out += _legacy_records(store, legacy)
        flush()
        for name in old:
            backend.delete(name)
    return RepairResult(len(packs), chunks, written, len(old), tuple(damaged))


def _legacy_records(store, legacy) -> bytes:
    """Records for format-1 packs: read each chunk's payload header for its delta base."""
    bases: dict[bytes, bytes | None] = {}
    for pack, cid, e in legacy:
        try:
            bases[cid] = compress.delta_base(store.reader.payload(cid, pack, e.offset, e.length))
        except IntegrityError:
            bases[cid] = None

    def depth(cid: bytes) -> int:
        d, seen = 0, set()
        while bases.get(cid) is not None and cid not in seen and d <= 6:
            seen.add(cid)
            cid, d = bases[cid], d + 1
        return d

    out = bytearray()
    for pack, cid, e in legacy:
        base = bases[cid]
        out += pack_record(cid, pack, e.offset, e.length, e.size, depth(cid) if base else 0, base)
    return bytes(out)
