"""`list`, `show`, `cat`, and the marks: `pin`, `unpin`, `tag`, `untag`."""

from __future__ import annotations

from snapkit.errors import SnapkitError, UsageError
from snapkit.ops.resolve import resolve

LAYERS = ("database", "files", "code")


def list_snapshots(project, n: int | None = None, commit: str | None = None, tag: str | None = None,
                   env: str | None = None, all_envs: bool = False) -> list[dict]:
    """Catalog entries, newest first (the catalog is sealed: this needs the key)."""
    entries = project.catalog.entries()
    if commit:
        full = project.git.resolve(commit)
        if full is None:
            raise SnapkitError(f"{commit!r} is not a git revision")
        entries = [e for e in entries if e["commit"] == full]
    if tag:
        entries = [e for e in entries if tag in e.get("tags", ())]
    if env:
        entries = [e for e in entries if e.get("env") == env]
    out = list(reversed(entries))
    return out[:n] if n else out


def show(project, ref: str) -> dict:
    """The whole metadata (docs/cli.md, `snapkit show`), with the catalog's current tags and pin."""
    entry = resolve(project, ref)
    store = project.unlocked_store()
    with store.lock(exclusive=False, command="show"):
        manifest = load_checked(project, entry)
    meta = dict(manifest.meta)
    meta["tags"] = entry.get("tags", [])
    meta["pinned"] = entry.get("pinned", False)
    meta["layers"] = {name: dict(layer) for name, layer in manifest.layers.items()}
    return meta


def cat(project, ref: str, layer: str, out) -> int:
    """Write a layer's plaintext to the binary file `out`; returns bytes written."""
    if layer not in LAYERS:
        raise UsageError(f"unknown layer {layer!r}", hint="use database, files or code")
    entry = resolve(project, ref)
    store = project.unlocked_store()
    n = 0
    with store.lock(exclusive=False, command="cat"):
        manifest = load_checked(project, entry)
        if layer not in manifest.layers:
            raise SnapkitError(f"snapshot {entry['id']} has no {layer} layer")
        for data in store.read_layer(manifest, layer):
            out.write(data)
            n += len(data)
    return n


def load_checked(project, entry: dict):
    """The snapshot's manifest, bound to its catalog entry: the very manifest the
    entry names (by digest), of the same snapshot and commit. IntegrityError otherwise."""
    from snapkit.errors import IntegrityError

    store = project.unlocked_store()
    sid = entry["id"]
    manifest = store.load_manifest(sid, project.catalog.manifest_digest(sid))
    if manifest.meta.get("commit") != entry.get("commit"):
        raise IntegrityError(f"snapshot {sid}: catalog entry and manifest name different commits")
    return manifest


def mark(project, ref: str, *, pin: bool | None = None, add_tag: str | None = None,
         remove_tag: str | None = None) -> dict:
    """Change a snapshot's pin or tags (catalog entry rewritten, re-authenticated). Idempotent."""
    entry = resolve(project, ref)
    if add_tag is not None and (not add_tag.strip() or any(c.isspace() for c in add_tag)):
        raise UsageError(f"invalid tag {add_tag!r}", hint="tags are single words")
    store = project.unlocked_store()

    def change(e: dict) -> dict:
        tags = set(e.get("tags", []))
        if add_tag:
            tags.add(add_tag)
        if remove_tag:
            tags.discard(remove_tag)
        e["tags"] = sorted(tags)
        if pin is not None:
            e["pinned"] = pin
        return e

    with store.lock(exclusive=False, command="tag"):
        return project.catalog.update(entry["id"], change)
