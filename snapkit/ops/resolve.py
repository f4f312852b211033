"""REF grammar (SPEC §2): snapshot id or unique prefix, then @N, then a git revision."""

from __future__ import annotations

import re

from snapkit.catalog import unique
from snapkit.errors import AmbiguousRef, RefNotFound

_AT = re.compile(r"@(\d+)")


def resolve(project, ref: str) -> dict:
    """The catalog entry `ref` names. RefNotFound / AmbiguousRef (exit 1) otherwise."""
    catalog = project.catalog
    ref = ref.strip()
    if not ref:
        raise RefNotFound("empty snapshot reference")
    matches = catalog.by_prefix(ref)
    exact = [e for e in matches if e["id"] == ref]
    if exact:
        return exact[0]
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
            raise RefNotFound(f"{ref}: environment {project.env!r} has only {len(timeline)} snapshots")
        return timeline[-1 - n]
    commit = project.git.resolve(ref)
    if commit is None:
        raise RefNotFound(f"{ref!r} is neither a snapshot id, @N, nor a git revision")
    found = catalog.by_commit(commit, project.env) or catalog.by_commit(commit)
    if found:
        plain = [e for e in found if not e.get("safety")] or found
        return plain[-1]
    raise RefNotFound(f"commit {commit[:7]} ({ref}) has no snapshot" + _nearest_older(project, commit),
                      hint="run `snapkit list`, or `snapkit create` to snapshot it")


def _nearest_older(project, commit: str) -> str:
    by_commit = {}
    for e in project.catalog.entries():
        if not e.get("safety"):
            by_commit[e["commit"]] = e["id"]
    for i, anc in enumerate(project.git.ancestors(commit)):
        if i and anc in by_commit:
            return f"; nearest older snapshot: {by_commit[anc]}"
    return ""


__all__ = ["resolve", "unique"]
