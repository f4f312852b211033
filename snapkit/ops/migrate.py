"""`snapkit migrate`: convert a format-1 store to format 2 in place, crash-safely.

The order (docs/format.md, "Format 1 and `snapkit migrate`"): write format-2
index objects and catalog entries beside the format-1 ones, switch `config`
to format 2, then delete the format-1 leftovers. Packs and manifests stay as
they are (their format-1 headers tell readers which key opens them). Killed
before the switch, the store is still format 1 and a new run starts over;
killed after it, a new run only finishes the clean-up.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from dataclasses import dataclass

from snapkit.backends.base import NotFound
from snapkit.catalog import entry_name
from snapkit.errors import IntegrityError
from snapkit.model import Result
from snapkit.store import compress, objects
from snapkit.store.index import pack_record, sort_records

# format 1 index record: chunk id, pack id, offset, stored length, plaintext size, delta depth
_V1_REC = struct.Struct(">32s16sIIIB")
_PER_OBJECT = 100_000  # records per index object written


@dataclass(frozen=True)
class MigrateResult(Result):
    store: str
    from_format: int
    to_format: int
    snapshots: int
    chunks: int
    skipped: tuple[str, ...] = ()  # damaged format-1 objects that could not be carried over
    removed: int = 0


def migrate(project) -> MigrateResult:
    from snapkit.store.repository import Store, config_checksum, open_backend, read_config

    backend = open_backend(project.config.store_path)
    config = read_config(backend)
    fmt = config.get("format")
    store = Store(backend, allow_legacy=True, use_cache=False, scratch_base=project.scratch_base())
    store.unlock(project.key_source())
    with store.lock(exclusive=True, command="migrate"):
        if fmt == 2:
            removed = _remove_leftovers(backend)
            return MigrateResult(backend.describe(), 2, 2, 0, 0, (), removed)
        v1_index = [i.name for i in backend.list("index") if _version(backend, i.name) == 1]
        for info in backend.list("index"):  # format-2 objects of an earlier, killed run
            if info.name not in v1_index:
                backend.delete(info.name)
        chunks, skipped = _convert_index(store, v1_index)
        snapshots, bad = _convert_catalog(store)
        skipped += bad
        new = {k: v for k, v in config.items() if k != "checksum"}
        new["format"] = 2
        new["checksum"] = config_checksum(new)
        backend.put("config", json.dumps(new, indent=1).encode())  # the switch-over
        removed = _remove_leftovers(backend)
    return MigrateResult(backend.describe(), 1, 2, snapshots, chunks, tuple(skipped), removed)


def _version(backend, name: str) -> int | None:
    try:
        head = backend.get_range(name, 0, objects.LEGACY_HEADER_BYTES)
    except NotFound:
        return None
    return head[4] if len(head) > 4 else None


def _convert_index(store, names: list[str]) -> tuple[int, list[str]]:
    """Write format-2 index objects for every chunk of the format-1 ones; returns (chunks, skipped)."""
    import os

    skipped, out, total = [], bytearray(), 0

    def flush() -> None:
        nonlocal out
        if out:
            name = f"index/{os.urandom(16).hex()}"
            records = sort_records(bytes(out))
            store.backend.put_new(name, store.seal_index(name, records))
            out = bytearray()

    for name in names:
        try:
            payload = objects.open_sealed(store.keys, objects.INDEX, name, store.backend.get(name))
        except (IntegrityError, NotFound):
            skipped.append(name)
            continue
        for off in range(0, len(payload) - _V1_REC.size + 1, _V1_REC.size):
            cid, pack, c_off, length, size, depth = _V1_REC.unpack_from(payload, off)
            base = None
            if depth:
                try:  # format 1 kept the base only inside the sealed payload
                    base = compress.delta_base(store.reader.payload(cid, pack, c_off, length))
                except IntegrityError:
                    base = None
                if base is None:
                    depth = 0  # unreadable: verify will report the chunk; keep the record
            out += pack_record(cid, pack, c_off, length, size, depth, base)
            total += 1
            if len(out) >= _PER_OBJECT * 96:
                flush()
    flush()
    return total, skipped


def _convert_catalog(store) -> tuple[int, list[str]]:
    """Write revision 0 of a format-2 entry for each authentic format-1 entry."""
    from snapkit.backends.base import AlreadyExists

    done, skipped = 0, []
    for info in store.backend.list("catalog"):
        if not info.name.endswith(".json"):
            continue
        sid = info.name.split("/", 1)[1][: -len(".json")]
        try:
            doc = json.loads(store.backend.get(info.name))
            entry = doc["entry"]
            canonical = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()
            if entry.get("id") != sid or not hmac.compare_digest(
                    store.keys.legacy_catalog_mac(canonical).hex(), doc["mac"]):
                raise ValueError
            manifest = store.backend.get(store.manifest_name(sid))
        except (ValueError, KeyError, TypeError, NotFound):
            skipped.append(info.name)
            continue
        digest = hashlib.sha256(manifest).hexdigest()
        name = entry_name(sid, 0)
        payload = json.dumps({"id": sid, "rev": 0, "manifest": digest, "entry": entry},
                             sort_keys=True, separators=(",", ":")).encode()
        store.backend.delete(name)  # from an earlier, killed run
        try:
            store.backend.put_new(name, objects.seal(store.keys, objects.CATALOG, name, payload))
        except AlreadyExists:
            pass
        done += 1
    return done, skipped


def _remove_leftovers(backend) -> int:
    """Delete what format 1 kept that format 2 does not: old index objects, entries, caches, copies."""
    n = 0
    for info in backend.list("index"):
        if _version(backend, info.name) == 1:
            backend.delete(info.name)
            n += 1
    for info in backend.list("catalog"):
        if info.name.endswith(".json"):
            backend.delete(info.name)
            n += 1
    for name in ("catalog.cache", "verify.json"):
        try:
            backend.stat(name)
        except NotFound:
            continue
        backend.delete(name)
        n += 1
    for info in backend.list("locks"):
        if _v1_lock(info.name):
            backend.delete(info.name)
            n += 1
    root = getattr(backend, "root", None)  # format 1 was local-only: database copies in tmp/
    if root is not None and (root / "tmp").is_dir():
        for path in (root / "tmp").iterdir():
            if path.is_file() and not path.name.startswith(".tmp-"):
                path.unlink(missing_ok=True)
                n += 1
    return n


def _v1_lock(name: str) -> bool:
    # format-1 locks were <host>-<pid>-<rand>.json; leases are <32 hex>.json
    stem = name.split("/", 1)[1].removesuffix(".json")
    return not (len(stem) == 32 and all(c in "0123456789abcdef" for c in stem))
