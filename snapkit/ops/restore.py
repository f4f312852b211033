"""`restore` and `rollback`: put code and database back as a snapshot had them.

Order: every check first (dirty tree, commit present, snapshot authentic), then
a safety snapshot of the live database, then the database (staged and checked
before the live file is touched), then the code. If the code step fails after
the database was restored, the safety snapshot is put back.
"""

from __future__ import annotations

from snapkit.errors import DirtyWorkTree, GitError, RefNotFound, SnapkitError, UsageError
from snapkit.model import RestorePlan, RestoreResult
from snapkit.ops import state
from snapkit.ops.resolve import resolve


def _layers(db_only: bool, code_only: bool) -> tuple[str, ...]:
    if db_only and code_only:
        raise UsageError("--db-only and --code-only exclude each other")
    if db_only:
        return ("database",)
    if code_only:
        return ("code",)
    return ("database", "code")


def plan(project, entry: dict, *, layers, detach: bool, to_url: str | None, force: bool,
         no_safety: bool, snapshot_state: dict | None = None) -> RestorePlan:
    repo = project.git
    notes = []
    if to_url:
        layers = tuple(x for x in layers if x == "database") or ("database",)
    dirty = tuple(repo.dirty_files()) if "code" in layers else ()
    code_action = None
    if "code" in layers:
        if not repo.has_commit(entry["commit"]):
            raise GitError(f"commit {entry['commit'][:7]} of snapshot {entry['id']} is not in this repository",
                           hint="fetch it, or restore with --db-only")
        branch = repo.current_branch()
        short = entry["commit"][:7]
        code_action = (f"check out {short} detached" if detach or branch is None
                       else f"move branch {branch} to {short}")
        if dirty and force:
            notes.append("--force: uncommitted changes will be discarded: " + ", ".join(dirty[:10]))
    database = None
    safety = False
    compat = None
    if "database" in layers:
        engine = project.engine(to_url)
        database = engine.url if to_url else str(getattr(engine, "path", engine.url))
        safety = not to_url and not no_safety
        live_exists = to_url is not None or _exists(engine)
        if safety and not live_exists:
            safety = False
            notes.append("the live database does not exist: no safety snapshot is needed")
        if "code" not in layers and not to_url and live_exists and snapshot_state is not None:
            from snapkit.ops import compat as compat_mod

            c = compat_mod.compare(project, snapshot_state, compat_mod.live_state(engine), entry["commit"])
            if c.relation not in ("same", "unknown"):
                notes.append(c.describe())
                if c.refuses:
                    notes.append("refused without --force: restore code and data together instead"
                                 if not force else "--force: restoring anyway")
                elif project.config.post_restore:
                    notes.append("then run post_restore: " + "; ".join(" ".join(a) for a in project.config.post_restore))
            compat = c.relation
    return RestorePlan(id=entry["id"], commit=entry["commit"], layers=tuple(layers), database=database,
                       to_url=to_url, code_action=code_action, safety_snapshot=safety,
                       dirty_files=dirty, notes=tuple(notes), schema=compat)


def _exists(engine) -> bool:
    """Whether the live database exists. Engines that can tell "missing" apart from
    other failures (server down, wrong password) provide `exists()`, which raises
    for those: a safety snapshot must never be skipped because of them."""
    probe = getattr(engine, "exists", None)
    if probe is not None:
        return probe()
    try:
        engine.check()
        return True
    except SnapkitError:
        return False


def restore(project, ref: str, *, db_only: bool = False, code_only: bool = False, detach: bool = False,
            to_url: str | None = None, dry_run: bool = False, no_safety: bool = False,
            force: bool = False, confirm=None, entry: dict | None = None, progress=None) -> RestoreResult:
    """Restore a snapshot. `confirm(plan) -> bool` is asked before anything changes.

    Raises DirtyWorkTree (names the files), IntegrityError for a damaged
    snapshot (nothing changed), DatabaseError, GitError, Aborted.
    """
    from snapkit.errors import Aborted

    from snapkit.ops.query import load_checked

    entry = entry or resolve(project, ref)
    layers = _layers(db_only, code_only)
    store = project.unlocked_store()
    # The manifest is the authority on what the snapshot holds: the entry that led
    # here must name it (digest) and the same commit, or nothing is changed.
    with store.lock(exclusive=False, command="restore"):
        manifest = load_checked(project, entry)
    snapshot_state = None
    if db_only and not to_url:
        snapshot_state = manifest.meta.get("database", {}).get("migration_state")
    the_plan = plan(project, entry, layers=layers, detach=detach, to_url=to_url, force=force,
                    no_safety=no_safety, snapshot_state=snapshot_state)
    if the_plan.schema in ("newer", "diverged") and not force and not dry_run:
        from snapkit.ops.compat import Compat

        raise SnapkitError(f"refusing a database-only restore: {Compat(the_plan.schema, {}, {}).describe()}",
                           hint="restore code and data together (drop --db-only), or pass --force")
    if the_plan.dirty_files and not force and not dry_run:
        raise DirtyWorkTree("work tree has uncommitted changes: " + _names(the_plan.dirty_files))
    if "code" in the_plan.layers and not force and not dry_run:
        project.git.check_checkout(entry["commit"])  # before the database is touched
    if dry_run:
        return RestoreResult(plan=the_plan, dry_run=True)
    if confirm is not None and not confirm(the_plan):
        raise Aborted("restore cancelled; nothing was changed")
    safety_id = None
    restored = []
    if "database" in the_plan.layers:
        if "database" not in manifest.layers:
            raise SnapkitError(f"snapshot {entry['id']} has no database layer")
        _check_engine(project, manifest, to_url)
        if the_plan.safety_snapshot:
            from snapkit.ops.create import create

            safety_id = create(project, safety=True).id
        from snapkit.ops.create import track

        engine = project.engine(to_url)
        with store.lock(exclusive=False, command="restore"):
            stream = track(store.read_layer(manifest, "database"),
                           manifest.layers["database"]["logical_bytes"], progress)
            engine.restore(stream, project.tmp_dir())
        restored.append("database")
    if "code" in the_plan.layers:
        try:
            project.git.checkout(manifest.meta["commit"], detach=detach, force=force)
        except BaseException:
            if safety_id:
                _put_back(project, store, safety_id)
            raise
        restored.append("code")
    if not to_url:
        state.record(project, entry["id"], entry["commit"], "restored")
    ran: list[str] = []
    if the_plan.schema == "older":
        from snapkit.ops.compat import run_post_restore

        ran = run_post_restore(project)
    return RestoreResult(plan=the_plan, dry_run=False, safety_id=safety_id, restored=tuple(restored),
                         post_restore=tuple(ran))


def _check_engine(project, manifest, to_url) -> None:
    snap_engine = manifest.meta.get("database", {}).get("engine")
    live = project.engine(to_url).name
    if snap_engine and snap_engine != live:
        raise SnapkitError(f"snapshot holds a {snap_engine} database but the target is {live}",
                           hint="restore it with `snapkit cat REF --layer database` and the engine's tools")


def _put_back(project, store, safety_id: str) -> None:
    manifest = store.load_manifest(safety_id, project.catalog.manifest_digest(safety_id))
    project.engine().restore(store.read_layer(manifest, "database"), project.tmp_dir())


def _names(files) -> str:
    shown = ", ".join(files[:10])
    return shown + (f" and {len(files) - 10} more" if len(files) > 10 else "")


def rollback_target(project, steps: int) -> dict:
    """The snapshot `steps` back on the env's timeline (docs/cli.md, `snapkit rollback`)."""
    if steps < 1:
        raise UsageError("rollback needs N >= 1")
    timeline = project.catalog.timeline(project.env)
    if not timeline:
        raise RefNotFound(f"environment {project.env!r} has no snapshots")
    ids = [e["id"] for e in timeline]
    last = state.read(project)
    head = project.git.head()
    anchor = len(ids)  # step 0 is the live state, after the newest snapshot
    if last.get("id") in ids and head is not None and head.id == last.get("commit"):
        anchor = ids.index(last["id"])
    target = anchor - steps
    if target < 0:
        raise RefNotFound(f"cannot roll back {steps} step(s): only {anchor} older snapshot(s) "
                          f"in environment {project.env!r}")
    from snapkit.ops.resolve import _no_damage_after

    _no_damage_after(project.catalog, timeline[target]["id"], f"rollback {steps}")
    return timeline[target]


def rollback(project, steps: int = 1, **kw) -> RestoreResult:
    target = rollback_target(project, steps)
    return restore(project, target["id"], entry=target, **kw)
