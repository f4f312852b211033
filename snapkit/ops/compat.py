"""Schema compatibility of a database-only restore (issue: migrations).

When only the database goes back, the app's code stays where it is. If the
snapshot's migration state differs from the live database's:
- snapshot older → restore, then say that migrations must run, and run the
  configured `post_restore` commands (without a shell);
- snapshot newer, or on another line of history → refuse unless --force: the
  current code would run against a schema it does not know.

Which side is older: the migration tool's own order where it has one (Rails
and golang-migrate versions, Flyway versions, Django's applied count), else
git history (the snapshot's commit an ancestor of HEAD means older).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from snapkit.errors import SnapkitError


@dataclass(frozen=True)
class Compat:
    relation: str          # "same", "older", "newer", "diverged", "unknown"
    snapshot: dict
    live: dict

    @property
    def refuses(self) -> bool:
        return self.relation in ("newer", "diverged")

    def describe(self) -> str:
        return {"same": "same migration state as the live database",
                "older": "the snapshot's schema is older than the live database's: migrations must run after it",
                "newer": "the snapshot's schema is newer than the live database's code expects",
                "diverged": "the snapshot's schema is on another line of history than the live database's",
                "unknown": "the live database's migration state could not be read"}[self.relation]


def _version(v) -> tuple:
    parts = []
    for p in str(v).replace("_", ".").split("."):
        parts.append((0, int(p)) if p.isdigit() else (1, p))
    return tuple(parts)


def _framework_order(snap: dict, live: dict) -> str | None:
    """-1/1 decisions from migration tools that order their versions."""
    def cmp(a, b) -> str | None:
        if a is None or b is None or a == b:
            return None
        return "older" if a < b else "newer"

    for tool, key in (("rails", "latest"), ("flyway", "version")):
        if tool in snap and tool in live and snap[tool] and live[tool]:
            r = cmp(_version(snap[tool].get(key)) if snap[tool].get(key) else None,
                    _version(live[tool].get(key)) if live[tool].get(key) else None)
            if r:
                return r
    if snap.get("golang_migrate") and live.get("golang_migrate"):
        r = cmp(snap["golang_migrate"].get("version"), live["golang_migrate"].get("version"))
        if r:
            return r
    if "django" in snap and "django" in live:
        s_apps, l_apps = snap["django"].get("latest", {}), live["django"].get("latest", {})
        s_n, l_n = snap["django"].get("applied", 0), live["django"].get("applied", 0)
        if s_n != l_n:
            return "older" if s_n < l_n and set(s_apps) <= set(l_apps) else (
                "newer" if s_n > l_n and set(l_apps) <= set(s_apps) else "diverged")
    for tool in ("alembic", "django", "rails", "golang_migrate", "flyway"):
        if (tool in snap) != (tool in live):
            return "older" if tool in live else "newer"
    return None


def compare(project, snapshot_state: dict, live_state: dict | None, snapshot_commit: str) -> Compat:
    if live_state is None:
        return Compat("unknown", snapshot_state, {})
    if snapshot_state == live_state:
        return Compat("same", snapshot_state, live_state)
    relation = _framework_order(snapshot_state, live_state)
    if relation is None:
        relation = _git_order(project, snapshot_commit)
    return Compat(relation, snapshot_state, live_state)


def _git_order(project, commit: str) -> str:
    head = project.git.head()
    if head is None or head.id == commit:
        return "diverged"
    if commit in set(project.git.ancestors(head.id)):
        return "older"
    if head.id in set(project.git.ancestors(commit)):
        return "newer"
    return "diverged"


def live_state(engine) -> dict | None:
    """The live database's migration state; None when the engine cannot tell."""
    probe = getattr(engine, "migration_state", None)
    if probe is None:
        return None
    try:
        return probe()
    except SnapkitError:
        return None


def run_post_restore(project) -> list[str]:
    """Run `[database] post_restore` commands in the project root, no shell. Returns what ran."""
    ran = []
    for argv in project.config.post_restore:
        try:
            proc = subprocess.run(list(argv), cwd=project.root, capture_output=True, text=True, check=False)
        except OSError as exc:
            raise SnapkitError(f"post_restore command {argv[0]!r} could not run: {exc.strerror}",
                               hint="the database was restored; run your migrations by hand") from None
        if proc.returncode != 0:
            last = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
            raise SnapkitError(f"post_restore command {' '.join(argv)!r} failed with exit code "
                               f"{proc.returncode}" + (f": {last[0]}" if last else ""),
                               hint="the database was restored; fix and run your migrations by hand")
        ran.append(" ".join(argv))
    return ran
