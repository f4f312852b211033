"""`snapkit verify`: every chunk present, authenticated and matching its id.

Each distinct chunk is read and checked once, however many snapshots share it:
a chunk whose keyed id matches its plaintext proves its bytes, and the
manifest that lists it is itself authenticated. `--restore-test` also rebuilds
each database layer into a scratch database and compares schema fingerprint
and row counts with the metadata.
"""

from __future__ import annotations

import json
import time

from snapkit.errors import IntegrityError, SnapkitError
from snapkit.store import cache
from snapkit.model import Problem, VerifyResult
from snapkit.ops.query import load_checked
from snapkit.ops.resolve import resolve
from snapkit.store.packs import pack_name

LAST_VERIFY = "verify.json"


def verify(project, refs=(), *, restore_test: bool = False, progress=None) -> VerifyResult:
    """Check every snapshot named (default: all) from the store itself, not from caches.

    Catalog entries are read again from the store (the local catalog cache is
    not trusted here), each manifest must be the one its entry names, every
    chunk is read, authenticated and its id recomputed, every pack's trailer is
    authenticated. Problems are collected, never raised; the result is kept in
    the local cache folder (the store is not written: verify works on a
    read-only store).
    """
    from snapkit.catalog import Catalog
    from snapkit.store import keys as keymod

    store = project.store
    problems: list[Problem] = []
    _, damaged_slots = keymod.read_slots(store.backend)
    problems += [Problem(None, None, None, name, "key slot damaged") for name in damaged_slots]
    store.unlock(project.key_source())
    store.use_fresh_index()
    catalog = Catalog(store, trust_cache=False)
    project.__dict__["catalog"] = catalog  # resolve through the freshly read catalog
    with store.lock(exclusive=False, command="verify"):
        entries = [resolve(project, r) for r in refs] if refs else catalog.entries()
        problems += [Problem(d.snapshot_id, None, None, d.name, d.reason) for d in catalog.damaged]
        store.index()
        problems += [Problem(None, None, None, name, "index object damaged") for name in store.damaged_indexes]
        checked: dict[bytes, str | None] = {}
        pack_users: dict[str, set[str]] = {}
        tested = 0
        for n, entry in enumerate(entries):
            sid = entry["id"]
            if progress:
                progress(n, len(entries), sid)
            try:
                manifest = load_checked(project, entry)
            except IntegrityError as exc:
                problems.append(Problem(sid, None, None, f"manifests/{sid}", exc.message))
                continue
            layer_ok = {}
            for layer in manifest.layers:
                ok = True
                for chunk_id in manifest.chunk_ids(layer):
                    loc = store.lookup(chunk_id)
                    if loc is not None:
                        pack_users.setdefault(pack_name(loc.pack), set()).add(sid)
                    if chunk_id not in checked:
                        try:
                            store.read_chunk(chunk_id)
                            checked[chunk_id] = None
                        except IntegrityError as exc:
                            checked[chunk_id] = exc.message
                    if checked[chunk_id] is not None:
                        ok = False
                        problems.append(Problem(sid, layer, chunk_id.hex()[:16], None, checked[chunk_id]))
                layer_ok[layer] = ok
            if restore_test and layer_ok.get("database"):
                tested += 1
                problems += _restore_test(project, store, manifest)
        for name, users in sorted(pack_users.items()):
            try:
                store.check_pack(name)
            except SnapkitError as exc:
                problems += [Problem(sid, None, None, name, exc.message) for sid in sorted(users)]
    result = VerifyResult(snapshots=len(entries), chunks_checked=len(checked), restore_tested=tested,
                          problems=tuple(problems))
    _record(store, result)
    return result


def _restore_test(project, store, manifest) -> list[Problem]:
    sid = manifest.id
    meta = manifest.meta.get("database", {})
    try:
        engine = project.engine(_scratch_url(meta))
        found = engine.restore_test(store.read_layer(manifest, "database"), project.tmp_dir())
    except SnapkitError as exc:
        return [Problem(sid, "database", None, None, f"restore test failed: {exc.message}")]
    out = []
    if found.schema_fingerprint != meta.get("schema_fingerprint"):
        out.append(Problem(sid, "database", None, None, "restore test: schema fingerprint differs"))
    if found.tables != meta.get("tables"):
        diff = sorted(t for t in set(found.tables) | set(meta.get("tables", {}))
                      if found.tables.get(t) != meta.get("tables", {}).get(t))
        out.append(Problem(sid, "database", None, None, "restore test: row counts differ in " + ", ".join(diff)))
    return out


def _scratch_url(meta: dict) -> str | None:
    # A SQLite restore test never touches the configured file: it rebuilds into tmp/.
    if meta.get("engine") == "sqlite":
        return "sqlite:///scratch.db"
    return None


def _record(store, result: VerifyResult) -> None:
    """Keep the result in the local cache folder (status reports it); never in the store."""
    doc = {"time": time.time(), "ok": result.ok, "snapshots": result.snapshots,
           "problems": len(result.problems)}
    if store.cache_dir is not None:
        cache.write_sealed(store.keys, store.cache_dir / LAST_VERIFY, LAST_VERIFY, json.dumps(doc).encode())


def last_verify(store) -> dict | None:
    """The last verify's result on this machine, if its cache file authenticates."""
    if store.cache_dir is None:
        return None
    data = cache.read_sealed(store.keys, store.cache_dir / LAST_VERIFY, LAST_VERIFY)
    try:
        return json.loads(data) if data is not None else None
    except ValueError:
        return None
