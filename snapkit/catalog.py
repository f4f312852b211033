"""The commit-keyed catalog: one small sealed entry per visible snapshot.

`catalog/<snapshot-id>~<rev>` (docs/format.md, "Catalog entries") is a sealed
object of kind C whose payload is JSON `{"id", "rev", "manifest", "entry"}`:
the summary `list`, `status`, `@N` and `rollback` need, and the SHA-256 of the
snapshot's manifest object, which binds the entry to exactly that manifest.
The object's name is its associated data, so an entry copied or renamed to
another snapshot fails authentication. Writing revision 0 is the moment a
snapshot becomes visible; a change of tags or pin writes revision n+1
(put-if-absent, so two concurrent changes cannot both win) and then removes
the older revisions. The highest revision present is the entry.

A damaged entry is never skipped silently: it is listed in `damaged`, and
resolving a reference that could mean it fails with exit 3 (ops/resolve.py).

A derived cache (`$XDG_CACHE_HOME/snapkit/<store-id>/catalog`, sealed under
the store's cache key) holds the entries already authenticated, by name and
size and version (a local file's inode and ctime, an object's ETag), so `list`
at 10,000 snapshots reads one local file instead of 10,000
objects. It also remembers the highest revision seen of each snapshot, so an
older revision put back into the store (a replay) is reported, not believed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from snapkit.errors import IntegrityError, RefNotFound, SnapkitError
from snapkit.store import cache, objects

FOLDER = "catalog"
CACHE_FILE = "catalog"
_NAME = re.compile(r"^catalog/([0-9A-Za-z][0-9A-Za-z._-]*)~(0|[1-9][0-9]{0,8})$")
_RETRIES = 8


def entry_name(snapshot_id: str, rev: int) -> str:
    return f"{FOLDER}/{snapshot_id}~{rev}"


@dataclass(frozen=True)
class Damaged:
    name: str
    snapshot_id: str | None
    reason: str

    def describe(self) -> str:
        return f"catalog entry {self.name}: {self.reason}"


class Catalog:
    """The catalog of an unlocked store. Entries are read once per instance."""

    def __init__(self, store, *, trust_cache: bool = True):
        self.store = store
        self.trust_cache = trust_cache  # verify reads every entry from the store again
        self._docs: dict[str, dict] | None = None  # snapshot id -> authenticated doc
        self._revs: dict[str, list[str]] = {}  # snapshot id -> its entry names, highest rev last
        self.damaged: list[Damaged] = []

    # ---- reading -------------------------------------------------------------

    def _load(self) -> dict[str, dict]:
        if self._docs is not None:
            return self._docs
        store, keys = self.store, self.store.keys
        path = store.cache_dir / CACHE_FILE if store.cache_dir is not None else None
        cached = _read_cache(keys, path)
        old_docs, high = cached.get("docs", {}), cached.get("high", {})
        by_id: dict[str, list[tuple[int, str, int]]] = {}
        damaged = []
        for info in store.backend.list(FOLDER):
            m = _NAME.match(info.name)
            if m is None:
                damaged.append(Damaged(info.name, None, "not a catalog entry name"))
                continue
            by_id.setdefault(m.group(1), []).append((int(m.group(2)), info.name, [info.size, info.version]))
        docs, new_cache, changed = {}, {}, False
        for sid, revs in by_id.items():
            revs.sort()
            self._revs[sid] = [name for _rev, name, _stamp in revs]
            rev, name, stamp = revs[-1]
            hit = old_docs.get(name)
            # An entry is taken from the cache only if the store's copy is the very
            # file version the cache authenticated (size and version, e.g. inode+ctime).
            if hit is not None and hit[0] == stamp and stamp[1] and self.trust_cache:
                doc = hit[1]
            else:
                changed = True
                try:
                    doc = _open_entry(keys, store.backend, name, sid, rev)
                except IntegrityError as exc:
                    damaged.append(Damaged(name, sid, exc.message.split(": ", 1)[-1]))
                    continue
            if high.get(sid, -1) > rev:
                damaged.append(Damaged(name, sid, f"revision {rev} is older than revision {high[sid]} "
                                                  "seen before (an old entry was put back)"))
                continue
            high[sid] = rev
            docs[sid] = doc
            new_cache[name] = [stamp, doc]
        if changed or len(new_cache) != len(old_docs):
            cache.write_sealed(keys, path, CACHE_FILE, json.dumps({"docs": new_cache, "high": high}).encode())
        self._docs = dict(sorted(docs.items()))
        self.damaged = sorted(damaged, key=lambda d: d.name)
        return self._docs

    def entries(self) -> list[dict]:
        """All authenticated entries, oldest first (ids sort by creation)."""
        return [doc["entry"] for doc in self._load().values()]

    def get(self, snapshot_id: str) -> dict:
        """The entry; IntegrityError when it is damaged, RefNotFound when there is none."""
        doc = self._load().get(snapshot_id)
        if doc is None:
            self.check_not_damaged(snapshot_id)
            raise RefNotFound(f"no snapshot {snapshot_id}")
        return doc["entry"]

    def manifest_digest(self, snapshot_id: str) -> str:
        self.get(snapshot_id)
        return self._docs[snapshot_id]["manifest"]

    def check_not_damaged(self, snapshot_id: str) -> None:
        self._load()
        for d in self.damaged:
            if d.snapshot_id == snapshot_id:
                raise IntegrityError(d.describe())

    def damaged_after(self, snapshot_id: str) -> Damaged | None:
        """A damaged entry of a snapshot newer than `snapshot_id` (it could be any env's)."""
        self._load()
        return next((d for d in self.damaged if d.snapshot_id and d.snapshot_id > snapshot_id), None)

    # ---- writing -------------------------------------------------------------

    def add(self, entry: dict, manifest_digest: str) -> None:
        """Write revision 0 of a new snapshot's entry: the snapshot becomes visible."""
        self._put(entry["id"], 0, entry, manifest_digest)
        self._docs = None

    def update(self, snapshot_id: str, change) -> dict:
        """Apply `change(entry) -> entry` as a new revision; returns the new entry.

        Put-if-absent on the next revision: a concurrent change makes ours
        retry on top of it, so no change is lost. Older revisions are removed.
        """
        from snapkit.backends.base import AlreadyExists

        for _ in range(_RETRIES):
            self._docs = None
            entry = dict(self.get(snapshot_id))
            names = self._revs[snapshot_id]
            rev = int(names[-1].rsplit("~", 1)[1]) + 1
            new = change(dict(entry))
            if new == entry:
                return entry  # nothing to change: write nothing
            try:
                self._put(snapshot_id, rev, new, self._docs[snapshot_id]["manifest"])
            except AlreadyExists:
                continue
            for name in names:
                self.store.backend.delete(name)
            self._docs = None
            return new
        raise SnapkitError(f"snapshot {snapshot_id} is being changed by other processes; try again")

    def delete(self, snapshot_id: str) -> None:
        """Remove every revision of a snapshot's entry (it is no longer visible)."""
        self._load()
        for name in self._revs.get(snapshot_id, []):
            self.store.backend.delete(name)
        self._docs = None

    def _put(self, snapshot_id: str, rev: int, entry: dict, manifest_digest: str) -> None:
        name = entry_name(snapshot_id, rev)
        doc = {"id": snapshot_id, "rev": rev, "manifest": manifest_digest, "entry": entry}
        payload = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        self.store.backend.put_new(name, objects.seal(self.store.keys, objects.CATALOG, name, payload))

    # ---- queries -------------------------------------------------------------

    def by_prefix(self, prefix: str) -> list[dict]:
        return [e for e in self.entries() if e["id"].startswith(prefix)]

    def timeline(self, env: str) -> list[dict]:
        """The env's snapshots oldest first, without safety snapshots."""
        return [e for e in self.entries() if e.get("env") == env and not e.get("safety")]

    def by_commit(self, commit: str, env: str | None = None) -> list[dict]:
        return [e for e in self.entries() if e["commit"] == commit and (env is None or e.get("env") == env)]


def _open_entry(keys, backend, name: str, snapshot_id: str, rev: int) -> dict:
    from snapkit.backends.base import NotFound

    try:
        data = backend.get(name)
    except NotFound:
        raise IntegrityError(f"{name}: vanished while being read") from None
    payload = objects.open_sealed(keys, objects.CATALOG, name, data)
    try:
        doc = json.loads(payload)
        ok = (doc["id"] == snapshot_id and doc["rev"] == rev and isinstance(doc["entry"], dict)
              and doc["entry"].get("id") == snapshot_id and isinstance(doc["manifest"], str))
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise IntegrityError(f"{name}: entry does not match its name")
    return doc


def _read_cache(keys, path) -> dict:
    data = cache.read_sealed(keys, path, CACHE_FILE)
    if data is None:
        return {}
    try:
        doc = json.loads(data)
        return doc if isinstance(doc, dict) else {}
    except ValueError:
        return {}
