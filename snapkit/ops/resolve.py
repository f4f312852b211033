"""REF grammar (README, "REF: naming a snapshot"): snapshot id or unique prefix, @N, git revision."""

from __future__ import annotations

import re

from snapkit.errors import AmbiguousRef, IntegrityError, RefNotFound

_AT = re.compile(r"@(\d+)")


def resolve(project, ref: str) -> dict:
    """The catalog entry `ref` names. RefNotFound / AmbiguousRef (exit 1) otherwise.

    A damaged catalog entry that the reference could mean is an IntegrityError
    (exit 3) naming it, never a silent fallback to another snapshot: a prefix
    that matches it, an `@N` with a damaged entry newer than the answer, a
    commit whose short hash a damaged entry's id carries.
    """
    catalog = project.catalog
    ref = ref.strip()
    if not ref:
        raise RefNotFound("empty snapshot reference")
    matches = catalog.by_prefix(ref)
    bad = [d for d in catalog.damaged if d.snapshot_id and d.snapshot_id.startswith(ref)]
    exact = [e for e in matches if e["id"] == ref]
    if exact:
        return exact[0]
    if bad and len(matches) <= 1:
        raise IntegrityError(bad[0].describe())
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise AmbiguousRef(f"{ref!r} matches {len(matches)} snapshots: "
                           + ", ".join(e["id"] for e in matches[:10]))
    m = _AT.fullmatch(ref)
    if m:
        timeline = catalog.timeline(project.env)
        n = int(m.group(1))
        if n >= len(timeline):
            _no_damage_after(catalog, "", ref)
            raise RefNotFound(f"{ref}: environment {project.env!r} has only {len(timeline)} snapshots")
        target = timeline[-1 - n]
        _no_damage_after(catalog, target["id"], ref)
        return target
    commit = project.git.resolve(ref)
    if commit is None:
        raise RefNotFound(f"{ref!r} is neither a snapshot id, @N, nor a git revision")
    for d in catalog.damaged:
        if d.snapshot_id and d.snapshot_id.endswith("-" + commit[:7]):
            raise IntegrityError(f"{d.describe()} (it may be the snapshot of {ref})")
    found = catalog.by_commit(commit, project.env) or catalog.by_commit(commit)
    if found:
        plain = [e for e in found if not e.get("safety")] or found
        return plain[-1]
    raise RefNotFound(f"commit {commit[:7]} ({ref}) has no snapshot" + _nearest_older(project, commit),
                      hint="run `snapkit list`, or `snapkit create` to snapshot it")


def _no_damage_after(catalog, snapshot_id: str, ref: str) -> None:
    """@N and rollback count snapshots: a damaged newer entry might be one of them."""
    d = catalog.damaged_after(snapshot_id)
    if d is not None:
        raise IntegrityError(f"{d.describe()}; cannot tell what {ref} means",
                             hint="run `snapkit verify`; restore the entry from a backup of the store")


def _nearest_older(project, commit: str) -> str:
    by_commit = {}
    for e in project.catalog.entries():
        if not e.get("safety"):
            by_commit[e["commit"]] = e["id"]
    for i, anc in enumerate(project.git.ancestors(commit)):
        if i and anc in by_commit:
            return f"; nearest older snapshot: {by_commit[anc]}"
    return ""

