"""The commit-keyed catalog: one small plaintext entry per visible snapshot.

An entry (`catalog/<id>.json`) is the summary `list` and `status` need, so
they work without a key and without reading any pack. Each entry carries an
HMAC under the store's catalog key; `verify` and every command that opens the
store check it. Writing the entry is the moment a snapshot becomes visible.

A derived cache (`catalog.cache`, keyed by file name, mtime and size) keeps
`list` fast at 10,000 snapshots; it is rebuilt from the entries whenever it
disagrees with them, so losing it costs only time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

from snapkit.errors import AmbiguousRef, IntegrityError, RefNotFound
from snapkit.store.backend import LocalBackend

FOLDER = "catalog"
CACHE = "catalog.cache"


def _canonical(entry: dict) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()


class Catalog:
    def __init__(self, backend: LocalBackend):
        self.backend = backend
        self._entries: list[dict] | None = None
        # False for commands that must not write to the store at all (a dry run).
        self.write_cache = True

    # ---- writing -------------------------------------------------------------

    def write(self, entry: dict, keys) -> None:
        """Write (or replace) an entry atomically, authenticated with the catalog key."""
        doc = {"entry": entry, "mac": keys.mac_of(_canonical(entry)).hex()}
        self.backend.put(f"{FOLDER}/{entry['id']}.json", json.dumps(doc, sort_keys=True).encode())
        self._entries = None

    def delete(self, snapshot_id: str) -> None:
        self.backend.delete(f"{FOLDER}/{snapshot_id}.json")
        self._entries = None

    # ---- reading -------------------------------------------------------------

    def entries(self) -> list[dict]:
        """All entries, oldest first (ids sort by creation)."""
        if self._entries is None:
            self._entries = [doc["entry"] for doc in self._load().values() if "entry" in doc]
            self._entries.sort(key=lambda e: e["id"])
        return self._entries

    def _load(self) -> dict[str, dict]:
        folder = self.backend.path(FOLDER)
        try:
            cache = json.loads(self.backend.get(CACHE))
        except (FileNotFoundError, ValueError):
            cache = {}
        out, changed = {}, False
        try:
            scan = list(os.scandir(folder))
        except FileNotFoundError:
            scan = []
        for e in scan:
            if not e.name.endswith(".json") or e.name.startswith(".tmp-"):
                continue
            st = e.stat()
            stamp = [st.st_mtime_ns, st.st_size]
            hit = cache.get(e.name)
            if hit and hit[0] == stamp:
                out[e.name] = hit[1]
                continue
            try:
                doc = json.loads(self.backend.get(f"{FOLDER}/{e.name}"))
            except FileNotFoundError:
                continue
            except ValueError:
                doc = {"damaged": True}
            out[e.name] = doc
            cache[e.name] = [stamp, doc]
            changed = True
        if len(cache) != len(out):
            cache = {k: v for k, v in cache.items() if k in out}
            changed = True
        if changed and self.write_cache:
            try:
                self.backend.put(CACHE, json.dumps(cache).encode())
            except OSError:
                pass  # the cache is an optimisation; a read-only store still lists
        self._docs = out
        return out

    def check(self, keys) -> list[str]:
        """Names of entries that are damaged or whose MAC does not verify."""
        import hmac

        self.entries()
        bad = []
        for name, doc in sorted(self._docs.items()):
            entry = doc.get("entry")
            mac = doc.get("mac", "")
            if entry is None or not hmac.compare_digest(keys.mac_of(_canonical(entry)).hex(), mac):
                bad.append(f"{FOLDER}/{name}")
        return bad

    def get(self, snapshot_id: str) -> dict:
        for e in self.entries():
            if e["id"] == snapshot_id:
                return e
        raise RefNotFound(f"no snapshot {snapshot_id}")

    def authenticated(self, snapshot_id: str, keys) -> dict:
        """The entry, after checking its MAC (commands that act on a snapshot use this)."""
        import hmac

        try:
            doc = json.loads(self.backend.get(f"{FOLDER}/{snapshot_id}.json"))
            entry = doc["entry"]
            ok = hmac.compare_digest(keys.mac_of(_canonical(entry)).hex(), doc["mac"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            raise IntegrityError(f"catalog entry of snapshot {snapshot_id} is damaged or altered")
        return entry

    # ---- queries -------------------------------------------------------------

    def by_prefix(self, prefix: str) -> list[dict]:
        return [e for e in self.entries() if e["id"].startswith(prefix)]

    def timeline(self, env: str) -> list[dict]:
        """The env's snapshots oldest first, without safety snapshots."""
        return [e for e in self.entries() if e.get("env") == env and not e.get("safety")]

    def by_commit(self, commit: str, env: str | None = None) -> list[dict]:
        return [e for e in self.entries() if e["commit"] == commit and (env is None or e.get("env") == env)]


def unique(matches: Iterable[dict], what: str) -> dict:
    matches = list(matches)
    if not matches:
        raise RefNotFound(f"no snapshot matches {what!r}")
    if len(matches) > 1:
        ids = ", ".join(e["id"] for e in matches[:10])
        raise AmbiguousRef(f"{what!r} matches {len(matches)} snapshots: {ids}")
    return matches[0]
