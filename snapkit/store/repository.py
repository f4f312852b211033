"""The store: config, keys, the chunk index, reading chunks and layers, manifests.

Everything goes through the store's backend (snapkit/backends/base.py): no
code here assumes a local disk. Writing a snapshot is `store/writer.py`; its
write order (packs, index object, manifest, then the catalog entry) keeps
the store valid whenever a process is killed. Readers never act on a byte
they have not authenticated (docs/format.md, "Threat model").
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from snapkit.backends.base import NotFound
from snapkit.errors import IntegrityError, StoreFormatError, StoreMissing
from snapkit.store import cache, compress, crypto, keys, objects
from snapkit.store import manifest as manifest_mod
from snapkit.store.index import ChunkIndex, Location, check_records
from snapkit.store.manifest import Manifest
from snapkit.store.packs import PackReader, read_trailer
from snapkit.store.writer import MAX_DELTA_DEPTH, WORKERS, SnapshotWriter

CONFIG = "config"
FORMAT = 2
FOLDERS = ("keys", "packs", "index", "manifests", "catalog", "locks")
MAX_INDEX_PAYLOAD = 1 << 31


def config_checksum(config: dict) -> str:
    # The config is read before any key is open (its id names the key file), so
    # it carries a plain checksum: damage is exit 3, not a misleading "no key".
    body = {k: v for k, v in config.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def open_backend(location: str | Path):
    """The backend for a store location (a local path today; URLs later)."""
    from snapkit.backends.local import LocalBackend

    return LocalBackend(Path(location))


def read_config(backend) -> dict:
    """The store's config; StoreMissing, IntegrityError (damaged) or StoreFormatError."""
    where = backend.describe()
    try:
        config = json.loads(backend.get(CONFIG))
    except NotFound:
        raise StoreMissing(f"no snapkit store at {where}") from None
    except ValueError:
        raise IntegrityError(f"{where}/{CONFIG}: store config is damaged") from None
    if not isinstance(config, dict) or config.get("magic") != "snapkit-store":
        raise IntegrityError(f"{where}/{CONFIG}: not a snapkit store config")
    if config.get("checksum") != config_checksum(config):
        raise IntegrityError(f"{where}/{CONFIG}: store config is damaged (checksum mismatch)",
                             hint="restore the store's config from a backup of the store")
    return config


class Store:
    """An opened store. `unlock()` before reading or writing anything sealed.

    `scratch_base` is where this process's private scratch folder goes (temp
    packs); `use_cache=False` keeps the local caches out of it (tests, or a
    cache folder that must not be used).
    """

    def __init__(self, backend, *, scratch_base: Path | None = None, use_cache: bool = True,
                 allow_legacy: bool = False):
        if isinstance(backend, (str, Path)):
            backend = open_backend(backend)
        self.backend = backend
        self.path = Path(backend.describe())  # for messages and local-only tools
        config = read_config(backend)
        fmt = config.get("format")
        if fmt == 1 and not allow_legacy:
            raise StoreFormatError(f"store {backend.describe()} has format 1; this snapkit writes format 2",
                                   hint="run `snapkit migrate` once to convert it in place")
        if fmt not in objects.SUPPORTED_VERSIONS:
            raise StoreFormatError(f"store format {fmt} is not supported")
        self.config = config
        self.id: str = config["id"]
        self.format: int = fmt
        self._keys: crypto.Keys | None = None
        self._index: ChunkIndex | None = None
        self._index_synced = False
        self._reader: PackReader | None = None
        self.damaged_indexes: list[str] = []
        self.scratch_base = scratch_base
        self.cache_dir = cache.store_dir(self.id) if use_cache else None

    # ---- creation and keys -------------------------------------------------

    @classmethod
    def init(cls, location, key_file: Path | None, passphrase: str | None, **kw) -> Store:
        """Create a new store with a fresh master key and one slot per secret given."""
        from snapkit.backends.local import LocalBackend

        backend = LocalBackend.create(Path(location)) if isinstance(location, (str, Path)) else location
        master = crypto.random_key()
        if key_file is not None:
            secret = keys.write_key_file(key_file) if not key_file.exists() else keys.read_key_file(key_file)
            keys.add_slot(backend, master, "keyfile", secret)
        if passphrase is not None:
            keys.add_slot(backend, master, "passphrase", passphrase)
        config = {"magic": "snapkit-store", "format": FORMAT, "id": os.urandom(8).hex(),
                  "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        config["checksum"] = config_checksum(config)
        # The config is written last and never replaced: a store without one is not a store yet.
        backend.put_new(CONFIG, json.dumps(config, indent=1).encode())
        store = cls(backend, **kw)
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

    @contextmanager
    def lock(self, exclusive: bool = False, timeout: float = 30.0, command: str = ""):
        """Hold a lease on the store; the index is re-read once the lease is held."""
        from snapkit.store.lock import StoreLock

        with StoreLock(self.backend, exclusive, timeout, command=command) as lease:
            self._index_synced = False  # another writer may have published since we last looked
            yield lease

    def scratch(self) -> Path:
        from snapkit import scratch

        return scratch.private_dir(self.scratch_base)

    # ---- index ---------------------------------------------------------------

    def seal_index(self, name: str, records: bytes) -> bytes:
        payload, _ = compress.pack_payload(records)
        return objects.seal(self.keys, objects.INDEX, name, payload)

    def open_index(self, name: str, data: bytes) -> bytes:
        """An index object's sorted records; IntegrityError naming it when it does not check out."""
        payload = objects.open_sealed(self.keys, objects.INDEX, name, data)
        try:
            records = compress.unpack_payload(payload, MAX_INDEX_PAYLOAD)
            check_records(records)
        except Exception:  # authenticated but malformed: only a buggy writer makes one
            raise IntegrityError(f"{name}: index object is malformed") from None
        return records

    def index(self) -> ChunkIndex:
        """The merged chunk index, in line with the store's index objects.

        Synced once per lock scope (and on first use); a damaged index object
        is skipped and named in `damaged_indexes`: the chunks it described then
        read as missing for the snapshots that need them.
        """
        if self._index is None:
            folder = self.cache_dir / "index" if self.cache_dir is not None else None
            self._index = ChunkIndex(folder, self.keys.cache)
        if not self._index_synced:
            names = [info.name for info in self.backend.list("index")]
            damaged: list[str] = []

            def fetch(name: str) -> bytes:
                try:
                    data = self.backend.get(name)
                    if data[4:5] == bytes((objects.LEGACY_VERSION,)):
                        return b""  # a format-1 index left by a migration that was killed
                    return self.open_index(name, data)
                except (IntegrityError, NotFound):
                    damaged.append(name)
                    raise _Skip(name) from None

            for _ in range(len(names) + 1):
                try:
                    self._index.sync([n for n in names if n not in damaged], fetch)
                    break
                except _Skip:
                    continue
            self.damaged_indexes = sorted(damaged)
            self._index_synced = True
        return self._index

    def use_fresh_index(self) -> None:
        """Build this process's index from every index object in the store, not the local cache.

        For `verify`: an index object damaged after this machine merged it
        must be found, as a new machine would.
        """
        if self._index is not None:
            self._index.close()
        self._index = ChunkIndex(None, self.keys.cache)
        self._index_synced = False

    def lookup(self, chunk_id: bytes) -> Location | None:
        return self.index().lookup(chunk_id)

    # ---- reading chunks --------------------------------------------------------

    @property
    def reader(self) -> PackReader:
        if self._reader is None:
            self._reader = PackReader(self.backend, self.keys)
        return self._reader

    def read_chunk(self, chunk_id: bytes, _depth: int = 0, check_id: bool = True) -> bytes:
        """The authenticated plaintext of a chunk; IntegrityError if missing or damaged.

        AES-GCM with the chunk id as associated data already authenticates the
        blob; `check_id` also recomputes the keyed id from the plaintext
        (verify does; a restore relies on the AEAD and the layer's SHA-256).
        """
        loc = self._locate(chunk_id)
        payload = (self._reader or self.reader).payload(chunk_id, loc.pack, loc.offset, loc.length)
        return self._expand(chunk_id, loc, payload, _depth, check_id)

    def read_chunks(self, chunk_ids: list[bytes], check_id: bool = True) -> list[bytes]:
        """`read_chunk` for a run of chunks, their blobs fetched in ranges grouped by pack."""
        locs = [self._locate(c) for c in chunk_ids]
        payloads = (self._reader or self.reader).payloads(chunk_ids, locs)
        return [self._expand(c, loc, p, 0, check_id) for c, loc, p in zip(chunk_ids, locs, payloads)]

    def _locate(self, chunk_id: bytes) -> Location:
        index = self._index if self._index_synced else self.index()
        loc = index.lookup(chunk_id)
        if loc is None:
            raise IntegrityError(f"chunk {chunk_id.hex()[:16]} is missing from the index")
        return loc

    def _expand(self, chunk_id: bytes, loc: Location, payload: bytes, depth: int, check_id: bool) -> bytes:
        """A chunk's plaintext from its opened payload, reading its delta base chain."""
        base_id = compress.delta_base(payload)
        try:
            if base_id is None:
                plain = compress.unpack_payload(payload, loc.size)
            else:
                if depth > MAX_DELTA_DEPTH:  # only an altered store can hold a longer chain or a cycle
                    raise IntegrityError(f"chunk {chunk_id.hex()[:16]}: delta chain too deep")
                if loc.base is not None and loc.base != base_id:
                    raise IntegrityError(f"chunk {chunk_id.hex()[:16]}: its index record names another "
                                         "delta base")
                try:
                    plain = compress.unpack_payload(
                        payload, loc.size, lambda b: self.read_chunk(b, depth + 1, check_id))
                except IntegrityError as exc:
                    raise IntegrityError(f"chunk {chunk_id.hex()[:16]}: its delta base is unreadable "
                                         f"({exc.message})") from None
        except IntegrityError:
            raise
        except Exception:  # zstandard raises its own error type on a bad frame
            raise IntegrityError(f"chunk {chunk_id.hex()[:16]} is damaged") from None
        if len(plain) != loc.size or (check_id and self.keys.chunk_id(plain) != chunk_id):
            raise IntegrityError(f"chunk {chunk_id.hex()[:16]} does not match its id")
        return plain

    def chain_root(self, chunk_id: bytes) -> bytes | None:
        """The full chunk at the start of `chunk_id`'s delta chain (itself if full); None if unknown.

        Walks the index's base ids: no chunk is read.
        """
        for _ in range(MAX_DELTA_DEPTH + 2):
            loc = self.lookup(chunk_id)
            if loc is None:
                return None
            if loc.depth == 0:
                return chunk_id
            if loc.base is None:
                return None
            chunk_id = loc.base
        return None

    def check_pack(self, name: str) -> None:
        """Authenticate a pack's header and sealed trailer; IntegrityError naming the pack."""
        read_trailer(self.backend, self.keys, name)

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
        self.index()

        def work(start: int) -> list[bytes]:
            return self.read_chunks(ids[start : start + batch], check_id=False)

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
        return manifest_mod.manifest_name(snapshot_id)

    def load_manifest(self, snapshot_id: str, digest: str | None = None) -> Manifest:
        """The authenticated manifest; with `digest` (from the catalog entry) it must be that one."""
        try:
            data = self.backend.get(self.manifest_name(snapshot_id))
        except NotFound:
            raise IntegrityError(f"snapshot {snapshot_id}: manifest is missing") from None
        manifest = manifest_mod.decode(self.keys, snapshot_id, data)
        if digest is not None and manifest.digest != digest:
            raise IntegrityError(f"snapshot {snapshot_id}: manifest is not the one its catalog entry names")
        return manifest

    def manifest_ids(self) -> list[str]:
        return [info.name.split("/", 1)[1] for info in self.backend.list("manifests")]

    # ---- writing ---------------------------------------------------------------

    def writer(self) -> SnapshotWriter:
        return SnapshotWriter(self)

    def close(self) -> None:
        if self._index is not None:
            self._index.close()
        self.backend.close()


class _Skip(Exception):
    """A damaged index object met while syncing: sync again without it."""
