"""`list`, `show`, `cat`, and the marks: `pin`, `unpin`, `tag`, `untag`."""

from __future__ import annotations

from snapkit.errors import SnapkitError, UsageError
from snapkit.ops.resolve import resolve

LAYERS = ("database", "files", "code")


def list_snapshots(project, n: int | None = None, commit: str | None = None, tag: str | None = None,
                   env: str | None = None, all_envs: bool = False) -> list[dict]:
    """Catalog entries, newest first. Needs no key: the catalog is readable without one."""
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
    """The whole metadata (SPEC §5), with the catalog's current tags and pin."""
    entry = resolve(project, ref)
    store = project.unlocked_store()
    entry = project.catalog.authenticated(entry["id"], store.keys)
    manifest = store.load_manifest(entry["id"])
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
    project.catalog.authenticated(entry["id"], store.keys)
    manifest = store.load_manifest(entry["id"])
    if layer not in manifest.layers:
        raise SnapkitError(f"snapshot {entry['id']} has no {layer} layer")
    n = 0
    for data in store.read_layer(manifest, layer):
        out.write(data)
        n += len(data)
    return n


def mark(project, ref: str, *, pin: bool | None = None, add_tag: str | None = None,
         remove_tag: str | None = None) -> dict:
    """Change a snapshot's pin or tags (catalog entry rewritten, re-authenticated). Idempotent."""
    entry = resolve(project, ref)
    store = project.unlocked_store()
    with store.lock(exclusive=False):
        entry = dict(project.catalog.authenticated(entry["id"], store.keys))
        tags = set(entry.get("tags", []))
        if add_tag:
            if not add_tag.strip() or any(c.isspace() for c in add_tag):
                raise UsageError(f"invalid tag {add_tag!r}", hint="tags are single words")
            tags.add(add_tag)
        if remove_tag:
            tags.discard(remove_tag)
        entry["tags"] = sorted(tags)
        if pin is not None:
            entry["pinned"] = pin
        project.catalog.write(entry, store.keys)
    return entry
