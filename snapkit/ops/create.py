"""`snapkit create`: commit if asked, then snapshot the database and the code."""

from __future__ import annotations

import subprocess
import time

from snapkit import __version__
from snapkit.config import command_list
from snapkit.engines.base import DatabaseInfo
from snapkit.errors import CheckFailed, GitError
from snapkit.model import CreateResult, iso, snapshot_id
from snapkit.ops import state

CODE_STRATEGY = "cdc:32768"


def run_check(project, check: str) -> None:
    argv = command_list(check)
    try:
        proc = subprocess.run(argv, cwd=project.root, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise CheckFailed(f"check command {argv[0]!r} could not run: {exc.strerror}") from None
    if proc.returncode != 0:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
        said = f": {last[0]}" if last else ""
        raise CheckFailed(f"check {check!r} failed with exit code {proc.returncode}{said}"[:300])


def create(project, message: str | None = None, *, no_commit: bool = False, tags=(), pin: bool = False,
           check: str | None = None, safety: bool = False, lock_timeout: float = 30.0,
           db_timeout: float | None = None, progress=None) -> CreateResult:
    """Snapshot HEAD (after committing a dirty tree when `message` is given).

    Raises DatabaseError, KeyAccessError, LockedError, CheckFailed, GitError.
    Nothing is visible in the store unless the whole snapshot was written.
    `progress(done_bytes, total_bytes)` is called as the database streams.
    """
    started = time.time()
    repo = project.git
    warnings = []
    engine = project.engine(timeout=db_timeout)  # config errors before any git change
    store = project.unlocked_store()             # wrong key: nothing written, nothing committed
    engine.check()  # a missing database fails before anything is committed
    if check:
        run_check(project, check)
    committed = False
    if message and not no_commit and not safety and (repo.dirty_files() or repo.untracked_files()):
        repo.commit_all(message)
        committed = True
    head = repo.head()
    if head is None:
        raise GitError("the repository has no commits yet",
                       hint='run `snapkit create "first commit"` to commit and snapshot')
    dirty = bool(repo.dirty_files())
    if dirty:
        warnings.append("work tree has uncommitted changes; the snapshot records HEAD's code")
    engine.check()
    tmp = project.tmp_dir()
    with store.lock(exclusive=False, timeout=lock_timeout, command="create") as lease:
        sweep = getattr(store.backend, "sweep_temps", None)
        if sweep is not None:
            sweep()  # a local store's temp files left by a put that was killed
        with store.writer() as writer:  # a failure drops its temp packs
            previous = _previous(project, store)
            with engine.dump(tmp) as dump:
                db = _unchanged(writer, dump, previous, engine.url)
                if db is not None:
                    info = DatabaseInfo(**previous.meta["database"])
                else:
                    stream = track(dump.stream, dump.size, progress)
                    db = writer.write_layer("database", dump.strategy, stream, base=previous)
                    info = dump.database_info()
                warnings += list(getattr(dump, "warnings", ()))
                db.source_state = dump.state
            code_key = repo.tree_tar_key(head.id)
            code = _same_code(writer, previous, code_key)
            if code is None:
                sink = writer.layer("code", CODE_STRATEGY)
                repo.write_tree_tar(head.id, sink)
                code = sink.close()
            code.source_state = code_key
            tags = sorted(set(tags) | ({"safety"} if safety else set()))
            meta = {
                "commit": head.id, "parents": list(head.parents), "branch": repo.current_branch(),
                "message": message or head.message.splitlines()[0] if (message or head.message) else "",
                "author": head.author, "env": project.env, "host": _host(), "dirty": dirty,
                "tags": tags, "pinned": pin, "safety": safety, "snapkit_version": __version__,
                "database": info.as_meta(),
            }
            existing = store.manifest_ids()

            def make_id(attempt: int) -> str:
                now = time.time()
                meta["created_at"] = iso(now)
                meta["duration_s"] = round(now - started, 3)
                prefix = snapshot_id(now, "", 0)[:16]
                seq = sum(1 for i in existing if i.startswith(prefix)) + attempt
                return snapshot_id(now, head.short, seq)

            sid, digest = writer.commit(make_id, meta)
            layers = {name: r.as_meta() for name, r in writer.layers.items()}
            entry = {
                "id": sid, "commit": head.id, "branch": meta["branch"], "message": meta["message"],
                "created_at": meta["created_at"], "env": project.env, "tags": tags, "pinned": pin,
                "safety": safety, "dirty": dirty, "engine": info.engine,
                "logical_bytes": db.logical_bytes + code.logical_bytes,
                "stored_bytes": db.stored_bytes + code.stored_bytes,
                "layers": {n: {"logical_bytes": v["logical_bytes"], "stored_bytes": v["stored_bytes"]}
                           for n, v in layers.items()},
            }
            repo.keep_ref(sid, head.id)  # before visibility: a visible snapshot's commit is never GC'd
            lease.check()  # a lease broken meanwhile (unlock --force, expiry) must not publish
            project.catalog.add(entry, digest)  # the snapshot becomes visible here
    if not safety:
        state.record(project, sid, head.id, "created")
    return CreateResult(
        id=sid, commit=head.id, committed=committed, dirty=dirty,
        logical_bytes=entry["logical_bytes"], stored_bytes=entry["stored_bytes"],
        chunks=db.chunks + code.chunks, new_chunks=db.new_chunks + code.new_chunks,
        duration_s=meta["duration_s"], layers=layers, warnings=tuple(warnings),
    )


def _unchanged(writer, dump, previous, url):
    """Reuse the previous database layer when the engine can tell nothing changed.

    Only engines that can prove it set `dump.state` (SQLite in rollback-journal
    mode: change counter, size and mtime, read under our read lock).
    """
    if dump.state is None or previous is None or previous.meta.get("database", {}).get("url") != url:
        return None
    layer = previous.layers.get("database", {})
    if layer.get("source_state") != dump.state or layer.get("strategy") != dump.strategy:
        return None
    return writer.reuse_layer("database", previous)


def _same_code(writer, previous, key):
    """Reuse the previous code layer when it is the tar this commit would give.

    The tar's bytes depend only on the tree, the commit time (every entry's
    mtime) and the tar format (`GitRepo.tree_tar_key`); the layer records that
    key as `source_state`. Snapshotting the same commit again (`create
    --no-commit` twice, a timer between commits) then reads no blob. Another
    commit with the same tree but another time gets its own tar.
    """
    if previous is None:
        return None
    layer = previous.layers.get("code", {})
    if layer.get("source_state") != key or layer.get("strategy") != CODE_STRATEGY:
        return None
    return writer.reuse_layer("code", previous)


def track(stream, total, progress):
    """Pass `stream` through, reporting bytes done to `progress` (if any)."""
    if progress is None:
        yield from stream
        return
    done = 0
    for block in stream:
        done += len(block)
        progress(done, total)
        yield block


def _previous(project, store):
    """The env's newest snapshot's manifest: delta chunks are made against its layers."""
    from snapkit.errors import IntegrityError

    catalog = project.catalog
    for entry in reversed(catalog.entries()):
        if entry.get("env") == project.env:
            try:
                return store.load_manifest(entry["id"], catalog.manifest_digest(entry["id"]))
            except IntegrityError:
                continue  # only costs dedup: a fresh full layer instead of deltas
    return None


def _host() -> str:
    import socket

    return socket.gethostname()
