"""The store: chunks in packs, an index, manifests and catalog entries.

Write order (docs/format.md, "Read and write ordering"): packs, then the index
object naming their chunks, then the manifest, then the catalog entry. A
snapshot is visible only once its catalog entry exists, and every object it
needs was durable before that, so a process killed at any point leaves the
store valid. Readers never trust a byte they have not authenticated.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from snapkit.errors import IntegrityError, StoreFormatError, StoreMissing
from snapkit.store import compress, crypto, keys, objects
from snapkit.store.backend import LocalBackend
from snapkit.store.chunker import FEATURE_BYTES, features, make_chunker
from snapkit.store.lock import StoreLock

CONFIG = "config"
PACK_TARGET = 16 * 1024 * 1024
ID_BYTES = 32
PACK_ID_BYTES = 16
# index record: chunk id, pack id, offset, stored length, plaintext size, delta depth
_REC = struct.Struct(f">{ID_BYTES}s{PACK_ID_BYTES}sIIIB")
_LOC = struct.Struct(f">{PACK_ID_BYTES}sIIIB")
# A delta chunk's base may itself be a delta; reading one costs depth+1 chunk reads.
MAX_DELTA_DEPTH = 5
BATCH_BYTES = 2 * 1024 * 1024
WORKERS = 2
# pack trailer record: chunk id, offset, stored length, plaintext size
_PREC = struct.Struct(f">{ID_BYTES}sIII")


def _config_checksum(config: dict) -> str:
    # The config is read before any key is open (its id names the key file), so
    # it carries a plain checksum: damage is exit 3, not a misleading "no key".
    body = {k: v for k, v in config.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def remove_stale_temp(backend: LocalBackend) -> list[str]:
    """Remove temp files left by dead snapkit processes on this host (a killed create).

    Names carry the writer's pid: `.tmp-<pid>-…` (atomic puts) and
    `sqlite-<pid>-…` / `restore-test-<pid>-…` (database copies in tmp/).
    """
    from snapkit.store.lock import pid_alive

    removed = []
    folders = ["tmp", "index", "manifests", "catalog", "keys", "locks", ""]
    packs = backend.path("packs")
    if packs.is_dir():
        folders += [f"packs/{d.name}" for d in os.scandir(packs) if d.is_dir()]
    for folder in folders:
        try:
            names = os.listdir(backend.path(folder) if folder else backend.root)
        except FileNotFoundError:
            continue
        for name in names:
            m = _TEMP.match(name)
            if m and not pid_alive(int(m.group(1))):
                path = backend.path(f"{folder}/{name}" if folder else name)
                path.unlink(missing_ok=True)
                removed.append(str(path))
    return removed


_TEMP = re.compile(r"^(?:\.tmp|sqlite|restore-test|mysql)-(\d+)-")


def pack_name(pack_id: bytes) -> str:
    h = pack_id.hex()
    return f"packs/{h[:2]}/{h}"


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


@dataclass
class Manifest:
    id: str
    meta: dict
    layers: dict[str, dict]
    chunk_lists: dict[str, bytes] = field(repr=False, default_factory=dict)
    # cdc layers: FEATURE_BYTES per chunk, in chunk order (similarity sketches for delta bases)
    features: dict[str, bytes] = field(repr=False, default_factory=dict)

    def chunk_ids(self, layer: str) -> Iterator[bytes]:
        data = self.chunk_lists[layer]
        for off in range(0, len(data), ID_BYTES):
            yield data[off : off + ID_BYTES]


class Store:
    """An opened store. `unlock()` before reading or writing anything encrypted."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.backend = LocalBackend(self.path)
        try:
            config = json.loads(self.backend.get(CONFIG))
        except FileNotFoundError:
            raise StoreMissing(f"no snapkit store at {self.path}") from None
        except ValueError:
            raise IntegrityError(f"{self.path / CONFIG}: store config is damaged") from None
        if config.get("magic") != "snapkit-store":
            raise IntegrityError(f"{self.path / CONFIG}: not a snapkit store config")
        if config.get("format") not in objects.SUPPORTED_VERSIONS:
            raise StoreFormatError(f"store format {config.get('format')} is not supported")
        if config.get("checksum") != _config_checksum(config):
            raise IntegrityError(f"{self.path / CONFIG}: store config is damaged (checksum mismatch)",
                                 hint="restore snapshots/config from a backup of the store")
        self.config = config
        self.id: str = config["id"]
        self._keys: crypto.Keys | None = None
        self._index: dict[bytes, bytes] | None = None
        self.damaged_indexes: list[str] = []

    # ---- creation and keys -------------------------------------------------

    @classmethod
    def init(cls, path: Path, key_file: Path | None, passphrase: str | None) -> Store:
        """Create a new store with a fresh master key and one slot per secret given."""
        backend = LocalBackend(Path(path))
        backend.mkdir()
        for folder in ("keys", "packs", "index", "manifests", "catalog", "locks", "tmp"):
            backend.mkdir(folder)
        store_id = os.urandom(8).hex()
        master = crypto.random_key()
        if key_file is not None:
            secret = keys.write_key_file(key_file) if not key_file.exists() else keys.read_key_file(key_file)
            keys.add_slot(backend, master, "keyfile", secret)
        if passphrase is not None:
            keys.add_slot(backend, master, "passphrase", passphrase)
        config = {"magic": "snapkit-store", "format": objects.FORMAT_VERSION, "id": store_id,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        config["checksum"] = _config_checksum(config)
        # The config is written last: a store without one is not a store yet.
        backend.put(CONFIG, json.dumps(config, indent=1).encode())
        store = cls(path)
        store._keys = crypto.Keys.from_master(master)
        return store

    def unlock(self, source: keys.KeySource) -> None:
        if self._keys is None:
            self._keys = crypto.Keys.from_master(keys.open_master(self.backend, source))

    @property
    def keys(self) -> crypto.Keys:
        if self._keys is None:
            raise RuntimeError("store is locked; call unlock() first")
        return self._keys

    def add_key_slot(self, kind: str, secret: bytes | str, source: keys.KeySource) -> str:
        master = keys.open_master(self.backend, source)
        return keys.add_slot(self.backend, master, kind, secret)

    def lock(self, exclusive: bool = False, timeout: float = 30.0) -> StoreLock:
        return StoreLock(self.backend, exclusive, timeout)

    # ---- sealed objects ----------------------------------------------------

    def _seal_object(self, kind: bytes, name: str, payload: bytes) -> bytes:
        head = objects.header(kind)
        return head + self.keys.seal(head + name.encode(), payload)

    def _open_object(self, kind: bytes, name: str, data: bytes) -> bytes:
        objects.check_header(data, kind, name)
        head = bytes(data[: objects.HEADER_BYTES])
        try:
            return self.keys.open(head + name.encode(), memoryview(data)[objects.HEADER_BYTES :])
        except crypto.AuthenticationFailed:
            raise IntegrityError(f"{name}: authentication failed (damaged or altered)") from None

    # ---- index ---------------------------------------------------------------

    def index(self) -> dict[bytes, bytes]:
        """chunk id -> packed (pack id, offset, length, size). Loads every index object once.

        A damaged index object is skipped and named in `damaged_indexes`; the
        chunks it described then read as missing for the snapshots that need them.
        """
        if self._index is None:
            idx: dict[bytes, bytes] = {}
            self.damaged_indexes = []
            for name in self.backend.list("index"):
                try:
                    payload = self._open_object(objects.INDEX, name, self.backend.get(name))
                except (IntegrityError, FileNotFoundError):
                    self.damaged_indexes.append(name)
                    continue
                for off in range(0, len(payload), _REC.size):
                    rec = payload[off : off + _REC.size]
                    idx[rec[:ID_BYTES]] = rec[ID_BYTES:]
            self._index = idx
        return self._index

    def lookup(self, chunk_id: bytes) -> tuple[bytes, int, int, int, int] | None:
        """(pack id, offset, stored length, plaintext size, delta depth), or None."""
        rec = self.index().get(chunk_id)
        if rec is None:
            return None
        return _LOC.unpack(rec)

    # ---- reading chunks --------------------------------------------------------

    def read_chunk(self, chunk_id: bytes, packs: dict | None = None, _depth: int = 0,
                   check_id: bool = True) -> bytes:
        """The authenticated plaintext of a chunk; IntegrityError if missing or damaged.

        AES-GCM with the chunk id as associated data already authenticates the
        blob; `check_id` also recomputes the keyed id from the plaintext
        (verify does; a restore relies on the AEAD and the layer's SHA-256).
        """
        payload, name, size = self._payload(chunk_id, packs)
        base_id = compress.delta_base(payload)
        if base_id is not None:
            if _depth > MAX_DELTA_DEPTH:  # only an altered store can hold a longer chain or a cycle
                raise IntegrityError(f"chunk {chunk_id.hex()[:16]}: delta chain too deep")
            try:
                plain = compress.unpack_payload(
                    payload, size, lambda b: self.read_chunk(b, packs, _depth + 1, check_id))
            except IntegrityError as exc:
                raise IntegrityError(f"chunk {chunk_id.hex()[:16]}: its delta base is unreadable "
                                     f"({exc.message})") from None
            except Exception:  # zstandard raises its own error type on a bad frame
                raise IntegrityError(f"chunk {chunk_id.hex()[:16]} in {name} is damaged") from None
        else:
            try:
                plain = compress.unpack_payload(payload, size)
            except Exception:  # zstandard raises its own error type on a bad frame
                raise IntegrityError(f"chunk {chunk_id.hex()[:16]} in {name} is damaged") from None
        if len(plain) != size or (check_id and self.keys.chunk_id(plain) != chunk_id):
            raise IntegrityError(f"chunk {chunk_id.hex()[:16]} in {name} does not match its id")
        return plain

    def _payload(self, chunk_id: bytes, packs: dict | None) -> tuple[bytes, str, int]:
        """A chunk's opened (authenticated, still compressed) payload, its pack's name, its size."""
        loc = self.lookup(chunk_id)
        if loc is None:
            raise IntegrityError(f"chunk {chunk_id.hex()[:16]} is missing from the index")
        pack_id, off, length, size, _depth = loc
        name = pack_name(pack_id)
        try:
            if packs is not None:
                f = packs.get(name)
                if f is None:
                    if len(packs) > 16:
                        for old in packs.values():
                            old.close()
                        packs.clear()
                    f = packs[name] = self._open_pack(name)
                f.seek(off)
                blob = f.read(length)
            else:
                with self._open_pack(name) as f:
                    f.seek(off)
                    blob = f.read(length)
        except FileNotFoundError:
            raise IntegrityError(f"chunk {chunk_id.hex()[:16]}: pack {name} is missing") from None
        try:
            return self.keys.open(chunk_id, blob), name, size
        except crypto.AuthenticationFailed:
            raise IntegrityError(f"chunk {chunk_id.hex()[:16]} in {name} is damaged") from None

    def chain_root(self, chunk_id: bytes, packs: dict | None = None) -> bytes | None:
        """The full chunk at the start of `chunk_id`'s delta chain (itself if full); None if unreadable."""
        for _ in range(MAX_DELTA_DEPTH + 2):
            try:
                payload, _name, _size = self._payload(chunk_id, packs)
            except IntegrityError:
                return None
            base_id = compress.delta_base(payload)
            if base_id is None:
                return chunk_id
            chunk_id = base_id
        return None

    def _open_pack(self, name: str):
        """Open a pack for reading after checking its header (magic, version, kind)."""
        f = open(self.backend.path(name), "rb")  # noqa: SIM115 - returned to the caller
        try:
            objects.check_header(f.read(objects.HEADER_BYTES), objects.PACK, name)
        except BaseException:
            f.close()
            raise
        return f

    def check_pack(self, name: str) -> None:
        """Authenticate a pack's header and sealed trailer; IntegrityError naming the pack."""
        try:
            data = self.backend.get(name)
        except FileNotFoundError:
            raise IntegrityError(f"{name}: pack is missing") from None
        objects.check_header(data, objects.PACK, name)
        if len(data) < objects.HEADER_BYTES + 4:
            raise IntegrityError(f"{name}: pack is truncated")
        (n,) = struct.unpack(">I", data[-4:])
        start = len(data) - 4 - n
        if n <= 0 or start < objects.HEADER_BYTES:
            raise IntegrityError(f"{name}: pack trailer is damaged")
        pack_id = bytes.fromhex(name.rsplit("/", 1)[1])
        try:
            trailer = self.keys.open(b"pack trailer " + pack_id, data[start:-4])
        except crypto.AuthenticationFailed:
            raise IntegrityError(f"{name}: pack trailer is damaged (authentication failed)") from None
        for off in range(0, len(trailer), _PREC.size):
            _cid, c_off, c_len, _size = _PREC.unpack(trailer[off : off + _PREC.size])
            if c_off < objects.HEADER_BYTES or c_off + c_len > start:
                raise IntegrityError(f"{name}: pack trailer does not match the pack")

    def read_layer(self, manifest: Manifest, layer: str) -> Iterator[bytes]:
        """Stream a layer's plaintext; checks the layer's SHA-256 at the end.

        Chunks are opened and expanded by WORKERS threads a few batches ahead
        (AES-GCM and zstd release the GIL), and yielded in order.
        """
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        from snapkit.store.memory import pin_mmap_threshold

        if layer not in manifest.layers:
            raise IntegrityError(f"snapshot {manifest.id} has no {layer} layer")
        pin_mmap_threshold()
        ids = list(manifest.chunk_ids(layer))
        digest = hashlib.sha256()
        batch = 32

        def work(start: int) -> list[bytes]:
            packs: dict = {}
            try:
                return [self.read_chunk(c, packs, check_id=False) for c in ids[start : start + batch]]
            finally:
                for f in packs.values():
                    f.close()

        with ThreadPoolExecutor(WORKERS, thread_name_prefix="snapkit-read") as pool:
            pending: deque = deque()
            starts = iter(range(0, len(ids), batch))
            try:
                for start in starts:
                    pending.append(pool.submit(work, start))
                    if len(pending) > WORKERS:
                        break
                while pending:
                    for data in pending.popleft().result():
                        digest.update(data)
                        yield data
                    nxt = next(starts, None)
                    if nxt is not None:
                        pending.append(pool.submit(work, nxt))
            finally:
                for f in pending:
                    f.cancel()
        if digest.hexdigest() != manifest.layers[layer]["sha256"]:
            raise IntegrityError(f"snapshot {manifest.id}, layer {layer}: checksum mismatch")

    # ---- manifests -------------------------------------------------------------

    @staticmethod
    def manifest_name(snapshot_id: str) -> str:
        return f"manifests/{snapshot_id}"

    def load_manifest(self, snapshot_id: str) -> Manifest:
        name = self.manifest_name(snapshot_id)
        try:
            data = self.backend.get(name)
        except FileNotFoundError:
            raise IntegrityError(f"snapshot {snapshot_id}: manifest is missing") from None
        payload = compress.unpack_payload(self._open_object(objects.MANIFEST, name, data), 1 << 30)
        (n,) = struct.unpack(">I", payload[:4])
        doc = json.loads(payload[4 : 4 + n])
        if doc.get("id") != snapshot_id:
            raise IntegrityError(f"snapshot {snapshot_id}: manifest belongs to {doc.get('id')}")
        lists, feats, pos = {}, {}, 4 + n
        for layer_name, layer in sorted(doc["layers"].items()):
            size = layer["chunks"] * ID_BYTES
            lists[layer_name] = payload[pos : pos + size]
            pos += size
        for layer_name, layer in sorted(doc["layers"].items()):
            if layer.get("features"):
                size = layer["chunks"] * FEATURE_BYTES
                feats[layer_name] = payload[pos : pos + size]
                pos += size
        return Manifest(doc["id"], doc["meta"], doc["layers"], lists, feats)

    def manifest_ids(self) -> list[str]:
        return [n.split("/", 1)[1] for n in self.backend.list("manifests")]

    # ---- writing ---------------------------------------------------------------

    def writer(self) -> SnapshotWriter:
        return SnapshotWriter(self)


class _PackWriter:
    """Appends sealed chunks to one pack's temp file, up to PACK_TARGET bytes.

    The bytes go straight to the file (no pack-sized buffer in memory); the
    writer publishes finished packs, fsynced, before the index naming them.
    """

    def __init__(self, store: Store):
        self.store = store
        self.pack_id = os.urandom(PACK_ID_BYTES)
        self.name = pack_name(self.pack_id)
        self.tmp, self.file = store.backend.open_temp(self.name)
        head = objects.header(objects.PACK)
        self.file.write(head)
        self.size = len(head)
        self.entries: list[tuple[bytes, int, int, int]] = []

    def add(self, chunks: list[tuple[bytes, bytes, int, int]]) -> list[bytes]:
        """Append sealed chunks (id, blob, plaintext size, depth); returns their index records.

        One write per batch: each write releases the GIL and waits to get it
        back from the busy workers, so 30 small writes cost 30 waits.
        """
        records = []
        for chunk_id, blob, size, depth in chunks:
            self.entries.append((chunk_id, self.size, len(blob), size))
            records.append(_REC.pack(chunk_id, self.pack_id, self.size, len(blob), size, depth))
            self.size += len(blob)
        self.file.write(b"".join(blob for _cid, blob, _size, _depth in chunks))
        return records

    def full(self) -> bool:
        return self.size >= PACK_TARGET

    def finish(self) -> None:
        """Append the sealed trailer listing the pack's chunks (to rebuild an index) and close."""
        trailer = b"".join(_PREC.pack(*e) for e in self.entries)
        sealed = self.store.keys.seal(b"pack trailer " + self.pack_id, trailer)
        self.file.write(sealed + struct.pack(">I", len(sealed)))
        self.file.close()

    def discard(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


class SnapshotWriter:
    """Writes one snapshot's layers; `commit()` makes it durable and visible.

    Chunks already in the store (or written earlier by this writer) are
    referenced, not stored again. Batches of chunks go to WORKERS threads,
    which compute their keyed ids, skip the ones the store has, and compress
    (or delta-compress) and seal the rest (HMAC, zstd and AES-GCM release the
    GIL); the calling thread appends the results to packs in order. Not
    thread-safe itself. As a context manager, a failure drops the temp packs.
    """

    def __init__(self, store: Store):
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        from snapkit.store.memory import pin_mmap_threshold

        pin_mmap_threshold()
        # The calling thread reads, chunks and writes packs, each step releasing the
        # GIL and then waiting for a busy worker to yield it: at the default 5 ms
        # switch interval that wait dominated (measured: 3.2 s -> 2.9 s for 1 GB).
        sys.setswitchinterval(0.001)
        self.store = store
        self.index = store.index()
        # Chunks this writer added: not in the store's shared index until the
        # index object naming them is durable (commit), so a failed or abandoned
        # writer never leaves phantom chunks for the next one to "dedupe" against.
        self.written: dict[bytes, bytes] = {}
        self.records = bytearray()
        self.pack: _PackWriter | None = None
        self.finished: list[tuple[Path, str]] = []  # packs written, not yet published
        self.layers: dict[str, LayerResult] = {}
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
        for off in range(0, len(ids), ID_BYTES):
            if ids[off : off + ID_BYTES] not in self.index:
                return None
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

    def known(self, chunk_id: bytes) -> bool:
        return chunk_id in self.index or chunk_id in self.written

    def _submit(self, sink: LayerSink, batch: list) -> None:
        self._futures.append((self._pool.submit(self._encode, batch, sink.level, sink._by_feature), sink))
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
            self.written[chunk_id] = b""  # placeholder: a repeat later in this batch is a duplicate
            new.append(item)
            result.new_chunks += 1
            result.stored_bytes += len(blob)
        if not new:
            return
        if self.pack is None:
            self.pack = _PackWriter(self.store)
        for rec in self.pack.add(new):
            self.records += rec
            self.written[rec[:ID_BYTES]] = rec[ID_BYTES:]
        if self.pack.full():
            self._flush_pack()

    def _drain(self) -> None:
        while self._futures:
            self._drain_one()

    def _encode(self, batch: list, level: int, similar: tuple | None = None) -> list:
        """Worker: id each chunk of a batch; compress (or delta-compress) and seal the new ones.

        Batch items are (chunk, chunk id or None, base id or None, features or
        None or False); features are computed here when None (False: not kept).
        With `similar` (the base layer's feature maps and chunk ids), a chunk's
        delta base is the base chunk sharing a feature, else the one after the
        previous chunk's. Returns ((chunk id, sealed blob or None when known,
        size, depth), features) per item.
        """
        keys = self.store.keys
        out = []
        seen: set[bytes] = set()
        packs: dict = {}
        cursor = None
        try:
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
                if chunk_id in seen or self.known(chunk_id):
                    out.append(((chunk_id, None, len(chunk), 0), feature))
                    continue
                seen.add(chunk_id)
                base, depth = None, 0
                loc = self.store.lookup(base_id) if base_id is not None else None
                if loc is not None and loc[4] >= MAX_DELTA_DEPTH:
                    # A chain at its cap: start a new one from the chain's full chunk.
                    # The delta spans a few snapshots' changes, still far below a full chunk.
                    base_id = self.store.chain_root(base_id, packs)
                    loc = self.store.lookup(base_id) if base_id is not None else None
                if loc is not None and loc[4] < MAX_DELTA_DEPTH:
                    try:
                        base = self.store.read_chunk(base_id, packs, check_id=False)  # AEAD-authenticated
                        depth = loc[4] + 1
                    except IntegrityError:
                        base = None  # a damaged base only costs a full chunk
                payload, is_delta = compress.pack_payload(chunk, base, base_id, level)
                out.append(((chunk_id, keys.seal(chunk_id, payload), len(chunk), depth if is_delta else 0),
                            feature))
        finally:
            for f in packs.values():
                f.close()
        return out

    def _flush_pack(self) -> None:
        if self.pack is not None:
            self.pack.finish()
            self.finished.append((self.pack.tmp, self.pack.name))
            self.pack = None

    def abort(self) -> None:
        """Drop everything written so far (temp packs); the store is as before."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self.pack is not None:
            self.pack.discard()
            self.pack = None
        for tmp, _name in self.finished:
            tmp.unlink(missing_ok=True)
        self.finished = []

    def commit(self, make_id, meta: dict) -> str:
        """Publish packs, write the index, then the manifest under a fresh id.

        `make_id(attempt)` proposes a snapshot id; the manifest is created with
        put_new, so two writers can never take the same id. Returns the id.
        The caller writes the catalog entry after this (the visibility point).
        """
        self._drain()
        self._pool.shutdown(wait=True)
        self._flush_pack()
        self.store.backend.publish(self.finished)  # packs durable before the index names them
        self.finished = []
        if self.records:
            name = f"index/{os.urandom(16).hex()}"
            data = self.store._seal_object(objects.INDEX, name, bytes(self.records))
            self.store.backend.put(name, data)
            self.records = bytearray()
            self.index.update(self.written)
            self.written = {}
        layers = {n: r.as_meta() for n, r in self.layers.items()}
        # Chunk lists follow the layers in sorted name order, then the feature lists of
        # the layers that have them, as load_manifest reads them.
        lists = b"".join(bytes(self.chunk_lists[n]) for n in sorted(layers))
        lists += b"".join(bytes(self.features[n]) for n in sorted(layers) if n in self.features)
        for attempt in range(1000):
            snapshot_id = make_id(attempt)
            doc = json.dumps({"id": snapshot_id, "format": objects.FORMAT_VERSION,
                              "meta": {**meta, "id": snapshot_id}, "layers": layers},
                             sort_keys=True).encode()
            payload, _ = compress.pack_payload(struct.pack(">I", len(doc)) + doc + lists)
            name = Store.manifest_name(snapshot_id)
            try:
                self.store.backend.put_new(name, self.store._seal_object(objects.MANIFEST, name, payload))
            except FileExistsError:
                continue
            return snapshot_id
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
