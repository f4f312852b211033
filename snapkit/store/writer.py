"""Writing a snapshot: chunk, dedup, compress, seal, pack; then publish in order.

Write order (docs/format.md, "Read and write ordering"): packs (uploaded
put-if-absent from the private scratch folder), then the index object naming
their chunks, then the manifest under a fresh id (put-if-absent); the caller
then writes the catalog entry, the visibility point. A writer that fails or is
killed leaves nothing partial in the store.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass

from snapkit.errors import IntegrityError
from snapkit.store import compress
from snapkit.store import manifest as manifest_mod
from snapkit.store.chunker import FEATURE_BYTES, features, make_chunker
from snapkit.store.index import pack_record
from snapkit.store.manifest import ID_BYTES, Manifest
from snapkit.store.packs import PackWriter, pack_name

# A delta chunk's base may itself be a delta; reading one costs depth+1 chunk reads.
MAX_DELTA_DEPTH = 5
BATCH_BYTES = 2 * 1024 * 1024
WORKERS = 2


@dataclass
class LayerResult:
    name: str
    strategy: str
    logical_bytes: int = 0
    stored_bytes: int = 0
    chunks: int = 0
    new_chunks: int = 0
    sha256: str = ""

    source_state: dict | None = None
    features: bool = False

    def as_meta(self) -> dict:
        meta = {"strategy": self.strategy, "logical_bytes": self.logical_bytes,
                "stored_bytes": self.stored_bytes, "chunks": self.chunks,
                "new_chunks": self.new_chunks, "sha256": self.sha256}
        if self.features:
            meta["features"] = FEATURE_BYTES
        if self.source_state:
            meta["source_state"] = self.source_state
        return meta



class SnapshotWriter:
    """Writes one snapshot's layers; `commit()` makes it durable and visible.

    Chunks already in the store (or written earlier by this writer) are
    referenced, not stored again. Batches of chunks go to WORKERS threads,
    which compute their keyed ids, skip the ones the store has, and compress
    (or delta-compress) and seal the rest (HMAC, zstd and AES-GCM release the
    GIL); the calling thread appends the results to packs in order. Not
    thread-safe itself. As a context manager, a failure drops the temp packs.
    """

    def __init__(self, store):
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        from snapkit.store.memory import pin_mmap_threshold

        pin_mmap_threshold()
        # The calling thread reads, chunks and writes packs, each step releasing the
        # GIL and then waiting for a busy worker to yield it: at the default 5 ms
        # switch interval that wait dominated (measured: 3.2 s -> 2.9 s for 1 GB).
        self._switch = sys.getswitchinterval()
        sys.setswitchinterval(0.001)  # put back by commit() / abort()
        self.store = store
        self.index = store.index()
        self.data_key = store.keys.new_object_key()  # seals every chunk and trailer this writer packs
        # Chunks this writer added: not in the store's shared index until the
        # index object naming them is durable (commit), so a failed or abandoned
        # writer never leaves phantom chunks for the next one to "dedupe" against.
        self.written: set[bytes] = set()
        self.records: list[bytes] = []  # index records of the chunks written, sorted at commit
        self.pack: PackWriter | None = None
        self.finished: list[PackWriter] = []  # packs written to scratch, not yet uploaded
        self.layers: dict[str, LayerResult] = {}
        self.reused_packs: set[bytes] = set()  # packs holding chunks this snapshot reuses
        self.chunk_lists: dict[str, bytearray] = {}
        self.features: dict[str, bytearray] = {}
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="snapkit-seal")
        self._futures: deque = deque()

    def __enter__(self) -> SnapshotWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()

    def write_layer(self, name: str, strategy: str, source: Iterable[bytes],
                    base: Manifest | None = None) -> LayerResult:
        """Chunk, dedup, compress and seal everything `source` yields, in bounded memory.

        With `base` (the layer's previous snapshot, same strategy), a new chunk
        that replaces one of the base's is stored as a delta against it when
        that is clearly smaller (see LayerSink for how the base chunk is chosen).
        """
        sink = self.layer(name, strategy, base)
        for data in source:
            sink.write(data)
        return sink.close()

    def reuse_layer(self, name: str, base: Manifest) -> LayerResult | None:
        """Record `base`'s layer unchanged, reading nothing; None if a chunk is gone."""
        layer = base.layers.get(name)
        if layer is None:
            return None
        ids = base.chunk_lists[name]
        packs = set()
        pack_of = self.index.pack_of
        for off in range(0, len(ids), ID_BYTES):
            pack = pack_of(bytes(ids[off : off + ID_BYTES]))
            if pack is None:
                return None
            packs.add(pack)
        self.reused_packs |= packs
        result = LayerResult(name, layer["strategy"], layer["logical_bytes"], 0, layer["chunks"], 0,
                             layer["sha256"])
        self.layers[name] = result
        self.chunk_lists[name] = bytearray(ids)
        if name in base.features:
            result.features = True
            self.features[name] = bytearray(base.features[name])
        return result

    def layer(self, name: str, strategy: str, base: Manifest | None = None) -> LayerSink:
        """A file-like sink for producers that push (a tar writer): write(), then close()."""
        base_ids = base_features = None
        if base is not None and base.layers.get(name, {}).get("strategy") == strategy:
            base_ids = base.chunk_lists.get(name)
            base_features = base.features.get(name)
        return LayerSink(self, name, strategy, base_ids, base_features)

    def _submit(self, sink: LayerSink, batch: list) -> None:
        self._futures.append((self._pool.submit(self._encode, batch, sink.level, sink._by_feature,
                                                self.reused_packs), sink))
        while len(self._futures) > WORKERS:
            self._drain_one()

    def _drain_one(self) -> None:
        future, sink = self._futures.popleft()
        result = sink.result
        new = []
        for item, feature in future.result():
            chunk_id, blob = item[0], item[1]
            sink.ids += chunk_id
            if sink.features is not None:
                sink.features += feature
            result.chunks += 1
            if blob is None or chunk_id in self.written or chunk_id in self.index:
                continue  # already stored (a batch in flight may have raced us to it)
            self.written.add(chunk_id)  # a repeat later in this batch is a duplicate
            new.append(item)
            result.new_chunks += 1
            result.stored_bytes += len(blob)
        if not new:
            return
        if self.pack is None:
            self.pack = PackWriter(self.store.keys, self.data_key, self.store.scratch())
        for e in self.pack.add(new):
            self.records.append(pack_record(e.chunk_id, self.pack.pack_id, e.offset, e.length, e.size,
                                            e.depth, e.base))
        if self.pack.full():
            self._flush_pack()

    def _drain(self) -> None:
        while self._futures:
            self._drain_one()

    def _encode(self, batch: list, level: int, similar: tuple | None, reused_packs: set) -> list:
        """Worker: id each chunk of a batch; compress (or delta-compress) and seal the new ones.

        Batch items are (chunk, chunk id or None, base id or None, features or
        None or False); features are computed here when None (False: not kept).
        With `similar` (the base layer's feature maps and chunk ids), a chunk's
        delta base is the base chunk sharing a feature, else the one after the
        previous chunk's. Returns ((chunk id, sealed blob or None when known,
        size, depth, base id), features) per item.
        """
        keys = self.store.keys
        out: list = []
        todo: list = []  # new chunks: (place in out, chunk, id, base id, base location, features)
        seen: set[bytes] = set()
        cursor = None
        for chunk, chunk_id, base_id, feature in batch:
            if chunk_id is None:
                chunk_id = keys.chunk_id(chunk)
            if feature is None:
                feature = features(chunk)
            if similar is not None:
                first, second, base_ids = similar
                at = first.get(feature[:4])
                if at is None:
                    at = second.get(feature[4:])
                if at is None:
                    at = cursor
                cursor = None if at is None else at + 1
                base_id = None if at is None else bytes(base_ids[at * ID_BYTES : (at + 1) * ID_BYTES]) or None
            if chunk_id in seen or chunk_id in self.written:
                out.append(((chunk_id, None, len(chunk), 0, None), feature))
                continue
            known = self.index.pack_of(chunk_id)
            if known is not None:
                reused_packs.add(known)  # set.add is atomic under the GIL
                out.append(((chunk_id, None, len(chunk), 0, None), feature))
                continue
            seen.add(chunk_id)
            loc = self.store.lookup(base_id) if base_id is not None else None
            if loc is not None and loc.depth >= MAX_DELTA_DEPTH:
                # A chain at its cap: start a new one from the chain's full chunk.
                # The delta spans a few snapshots' changes, still far below a full chunk.
                base_id = self.store.chain_root(base_id)
                loc = self.store.lookup(base_id) if base_id is not None else None
            if loc is None or loc.depth >= MAX_DELTA_DEPTH:
                base_id = loc = None
            out.append(None)  # filled below, once the bases are read
            todo.append((len(out) - 1, chunk, chunk_id, base_id, loc, feature))
        for (at, chunk, chunk_id, base_id, loc, feature), base in zip(todo, self._bases(todo)):
            depth = loc.depth + 1 if base is not None else 0
            payload, is_delta = compress.pack_payload(chunk, base, base_id, level)
            out[at] = ((chunk_id, self.data_key.seal(chunk_id, payload), len(chunk),
                        depth if is_delta else 0, base_id if is_delta else None), feature)
        return out

    def _bases(self, todo: list) -> list:
        """The plaintext of each new chunk's delta base (None: none, or unreadable).

        Read together: a batch's bases are neighbours in the previous snapshot's
        packs, so their blobs come in a few ranged reads (store.read_chunks). A
        damaged base only costs its chunk a full copy: on any error the bases
        are read one by one.
        """
        want = [t[3] for t in todo if t[3] is not None]
        try:
            got = iter(self.store.read_chunks(want, check_id=False))  # AEAD-authenticated
            return [next(got) if t[3] is not None else None for t in todo]
        except IntegrityError:
            out = []
            for t in todo:
                try:
                    out.append(self.store.read_chunk(t[3], check_id=False) if t[3] is not None else None)
                except IntegrityError:
                    out.append(None)
            return out

    def _flush_pack(self) -> None:
        if self.pack is not None:
            self.pack.finish()
            self.finished.append(self.pack)
            self.pack = None

    def abort(self) -> None:
        """Drop everything written so far (scratch packs); the store is as before. Idempotent."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self.pack is not None:
            self.pack.discard()
            self.pack = None
        for pack in self.finished:
            pack.tmp.unlink(missing_ok=True)
        self.finished = []
        sys.setswitchinterval(self._switch)

    def _check_reused(self) -> None:
        """Every pack that a reused chunk lives in must exist in the store now.

        The index (the local cache, the store's index objects) is authenticated
        but may be older than the store: a replayed index object, or packs
        deleted since. Dedup against a chunk whose pack is gone would make a
        snapshot that cannot be restored, so check with one listing.
        """
        needed = self.reused_packs  # noted as each reused chunk was looked up
        if needed:
            present = {info.name for info in self.store.backend.list("packs")}
            missing = sorted(pack_name(p) for p in needed if pack_name(p) not in present)
            if missing:
                raise IntegrityError(f"the index names chunks in missing pack {missing[0]}"
                                     + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""),
                                     hint="run `snapkit repair index`, then create the snapshot again")

    def commit(self, make_id, meta: dict) -> tuple[str, str]:
        """Upload packs, write the index object, then the manifest under a fresh id.

        `make_id(attempt)` proposes a snapshot id; the manifest is created with
        put_new, so two writers can never take the same id. Returns the id and
        the manifest's digest, which the caller's catalog entry names (the
        catalog entry, written after this, is the visibility point).
        """
        from snapkit.backends.base import AlreadyExists

        self._drain()
        self._pool.shutdown(wait=True)
        self._flush_pack()
        self._check_reused()
        backend = self.store.backend
        for pack in self.finished:  # packs durable before the index names them
            backend.put_file(pack.name, pack.tmp)
            pack.tmp.unlink(missing_ok=True)
        self.finished = []
        if self.records:
            name = f"index/{os.urandom(16).hex()}"
            self.records.sort()  # by chunk id: records start with it
            records = b"".join(self.records)
            backend.put_new(name, self.store.seal_index(name, records))
            self.index.add(name, records)
            self.records = []
            self.written = set()
        layers = {n: r.as_meta() for n, r in self.layers.items()}
        sys.setswitchinterval(self._switch)
        for attempt in range(1000):
            snapshot_id = make_id(attempt)
            data = manifest_mod.encode(self.store.keys, snapshot_id, meta, layers, self.chunk_lists,
                                       self.features)
            try:
                backend.put_new(manifest_mod.manifest_name(snapshot_id), data)
            except AlreadyExists:
                continue
            return snapshot_id, hashlib.sha256(data).hexdigest()
        raise RuntimeError("could not find a free snapshot id")


class LayerSink:
    """Receives one layer's bytes; `close()` records the layer in its writer.

    Choosing a delta base for a new chunk: in a `fixed:` layer, the base's
    chunk at the same position (a changed block of a database file). In a
    `cdc:` layer (a dump), chunk boundaries move with the data, so the sink
    sketches each chunk (chunker.features; kept per chunk in the manifest) and
    takes the base chunk that shares one of its features, or else the one
    after the last base chunk it matched (rows rewritten in place). A chunk
    the store already has needs no base; the workers find that out.
    """

    def __init__(self, writer: SnapshotWriter, name: str, strategy: str, base_ids: bytes | None,
                 base_features: bytes | None = None):
        self.writer = writer
        self.result = LayerResult(name, strategy)
        self.ids = bytearray()
        self.digest = _BackgroundDigest()
        self.chunker = make_chunker(strategy)
        self.fixed = strategy.startswith("fixed:")
        # Fixed-size database blocks compress about as well at level 1 as at 3, 30% faster.
        self.level = 1 if self.fixed else compress.LEVEL
        self.base_ids = base_ids
        self.position = 0
        self._batch: list = []
        self._batch_bytes = 0
        self._by_feature: tuple[dict[bytes, int], dict[bytes, int], bytes] | None = None
        self.features: bytearray | None = None if self.fixed else bytearray()
        self.result.features = not self.fixed
        if base_ids is not None and base_features is not None and not self.fixed:
            first: dict[bytes, int] = {}
            second: dict[bytes, int] = {}
            for o in range(len(base_features) - FEATURE_BYTES, -1, -FEATURE_BYTES):  # the first one wins
                first[bytes(base_features[o : o + 4])] = o // FEATURE_BYTES
                second[bytes(base_features[o + 4 : o + 8])] = o // FEATURE_BYTES
            self._by_feature = (first, second, base_ids)

    def _base_at(self, position: int) -> bytes | None:
        if self.base_ids is None:
            return None
        base = self.base_ids[position * ID_BYTES : (position + 1) * ID_BYTES]
        return bytes(base) if len(base) == ID_BYTES else None

    def _add(self, chunk: bytes | memoryview) -> None:
        if self.fixed:
            item = (chunk, None, self._base_at(self.position), False)
        elif self._by_feature is None:
            # No base with sketches (the first snapshot): the workers sketch. Without
            # sketches a base chunk at the same position is a guess worth trying.
            item = (chunk, None, self._base_at(self.position), None)
        else:
            item = (chunk, None, None, None)  # the workers sketch and look up the base
        self.position += 1
        self._batch.append(item)
        self._batch_bytes += len(chunk)
        if self._batch_bytes >= BATCH_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self._batch:
            self.writer._submit(self, self._batch)
            self._batch, self._batch_bytes = [], 0

    def write(self, data: bytes | memoryview) -> int:
        self.digest.update(data)
        self.result.logical_bytes += len(data)
        for chunk in self.chunker.feed(data):
            self._add(chunk)
        return len(data)

    def close(self) -> LayerResult:
        for chunk in self.chunker.finish():
            self._add(chunk)
        self._flush()
        self.writer._drain()
        self.result.sha256 = self.digest.hexdigest()  # waits for the hashing thread
        self.writer.layers[self.result.name] = self.result
        self.writer.chunk_lists[self.result.name] = self.ids
        if self.features is not None:
            self.writer.features[self.result.name] = self.features
        return self.result


class _BackgroundDigest:
    """SHA-256 of a layer computed in its own thread (hashlib releases the GIL on
    large buffers), so it overlaps chunking and id hashing instead of adding to them."""

    def __init__(self):
        import queue
        import threading

        self._queue: queue.Queue = queue.Queue(maxsize=8)  # bounded: ≤ 8 blocks in flight
        self._digest = hashlib.sha256()
        self._thread = threading.Thread(target=self._run, name="snapkit-sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (data := self._queue.get()) is not None:
            self._digest.update(data)

    def update(self, data: bytes | memoryview) -> None:
        self._queue.put(bytes(data) if isinstance(data, memoryview) else data)

    def hexdigest(self) -> str:
        self._queue.put(None)
        self._thread.join()
        return self._digest.hexdigest()
