"""The post-commit hook and concurrent creates (SPEC §3 hook, §6 concurrency).

Commits are made with the git CLI, so git's own hook machinery runs the hook.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import git
from tests.test_cli import head, run_many, snapshots


def commit(repo: Path, message: str, *extra: str) -> subprocess.CompletedProcess:
    """`git commit` through the git CLI (so hooks run); every change staged first."""
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    return subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", message, *extra], cwd=repo, check=False,
                          capture_output=True, text=True, timeout=60)


def hook_log(repo: Path) -> list[str]:
    path = repo / ".git" / "snapkit" / "hook.log"
    return path.read_text().splitlines() if path.exists() else []


def hook_json(cli, *args: str) -> dict:
    return json.loads(cli("hook", *args, "--json").stdout)


def test_hook_install_commit_status_uninstall(project, cli):
    hook_path = project / ".git" / "hooks" / "post-commit"
    st = hook_json(cli, "status")
    assert st["installed"] is False and st["chained"] is False
    st = hook_json(cli, "install")
    assert st["installed"] is True and st["chained"] is False
    assert Path(st["path"]).resolve() == hook_path.resolve()
    assert hook_path.stat().st_mode & stat.S_IXUSR
    assert st.get("interpreter") in (None, sys.executable)  # the interpreter that installed it

    (project / "app.py").write_text("print('v2')\n")
    proc = commit(project, "change via git")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    [entry] = snapshots(cli)
    assert entry["commit"] == head(project)
    assert any(f" ok {entry['id']}" in line for line in hook_log(project))
    assert f"snapshot {entry['id']}" in proc.stderr
    status, again = run_many(project, [("status", "--json"), ("hook", "status", "--json")])
    assert json.loads(status.stdout)["hook_installed"] is True
    assert json.loads(status.stdout)["head_snapshot"] == entry["id"]
    assert json.loads(again.stdout)["installed"] is True

    st = hook_json(cli, "uninstall")
    assert st["installed"] is False
    assert not hook_path.exists()
    proc = commit(project, "no hook any more")
    assert proc.returncode == 0, proc.stderr
    assert len(snapshots(cli)) == 1


def test_foreign_hook_is_chained_and_put_back(project, cli, tmp_path):
    marker = tmp_path / "marker"
    hook_path = project / ".git" / "hooks" / "post-commit"
    original = f'#!/bin/sh\n# my own hook\necho "ran $(git rev-parse HEAD)" >> "{marker}"\n'.encode()
    hook_path.write_bytes(original)
    os.chmod(hook_path, 0o750)
    mode = stat.S_IMODE(hook_path.stat().st_mode)

    assert hook_json(cli, "install")["chained"] is True
    st = hook_json(cli, "install")  # idempotent: must not chain itself
    assert st["installed"] is True and st["chained"] is True
    proc = commit(project, "first with both hooks")
    assert proc.returncode == 0, proc.stderr
    assert marker.read_text().splitlines() == [f"ran {head(project)}"]  # the user's hook ran, once
    assert [e["commit"] for e in snapshots(cli)] == [head(project)]

    st = hook_json(cli, "uninstall")
    assert st["installed"] is False and st["chained"] is False
    assert hook_path.read_bytes() == original
    assert stat.S_IMODE(hook_path.stat().st_mode) == mode
    assert sorted(p.name for p in hook_path.parent.iterdir() if not p.name.endswith(".sample")) == ["post-commit"]
    proc = commit(project, "user hook only")
    assert proc.returncode == 0
    assert len(marker.read_text().splitlines()) == 2
    assert len(snapshots(cli)) == 1


def test_core_hooks_path_honoured(project, cli):
    git(project, "config", "core.hooksPath", ".githooks")
    st = hook_json(cli, "install")
    expected = project / ".githooks" / "post-commit"
    assert Path(st["path"]).resolve() == expected.resolve() and expected.exists()
    assert not (project / ".git" / "hooks" / "post-commit").exists()
    proc = commit(project, "hooks from core.hooksPath")
    assert proc.returncode == 0, proc.stderr
    assert [e["commit"] for e in snapshots(cli)] == [head(project)]


def test_hook_with_missing_database(project, cli):
    cli("hook", "install")
    (project / "app.db").unlink()
    before = head(project)
    proc = commit(project, "commit without a database")
    assert proc.returncode == 0, proc.stderr
    assert head(project) != before  # the commit happened
    assert "snapkit: warning" in proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in hook_log(project) if " error " in f" {line} "]
    assert errors and "app.db" in errors[-1]
    assert snapshots(cli) == []


HOLD_LOCK = r"""
import sys, time
from pathlib import Path
from snapkit.backends.local import LocalBackend
from snapkit.store.lock import StoreLock
with StoreLock(LocalBackend(Path(sys.argv[1])), exclusive=True, timeout=5):
    print("ready", flush=True)
    time.sleep(60)
"""


def test_hook_with_store_locked_does_not_block_the_commit(project, cli):
    cli("hook", "install")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(project / "snapshots")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        before = head(project)
        t0 = time.monotonic()
        proc = commit(project, "commit while the store is locked")
        elapsed = time.monotonic() - t0
        assert proc.returncode == 0, proc.stderr
        assert elapsed < 5, f"git commit took {elapsed:.1f}s"
        assert head(project) != before
        assert "snapkit: warning" in proc.stderr and "Traceback" not in proc.stderr
        errors = [line for line in hook_log(project) if " error " in f" {line} "]
        assert errors and "lock" in errors[-1].lower()
        assert snapshots(cli) == []
    finally:
        holder.kill()
        holder.wait()
    # the holder is dead: its lock is stale and is broken automatically
    sid = cli("create", "--no-commit").stdout.strip()
    assert [e["id"] for e in snapshots(cli)] == [sid]


def test_concurrent_creates_on_one_store(project, cli):
    results = run_many(project, [("create", "--no-commit", "--json")] * 3)
    for proc in results:
        assert proc.returncode == 0, proc.stderr
    ids = [json.loads(p.stdout)["id"] for p in results]
    assert len(set(ids)) == 3
    assert sorted(e["id"] for e in snapshots(cli)) == sorted(ids)
    verify = cli("verify", "--json", ok=None)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert json.loads(verify.stdout)["snapshots"] == 3


def test_hook_with_database_locked_does_not_block_the_commit(project, cli):
    cli("hook", "install")
    con = sqlite3.connect(project / "app.db", isolation_level=None, check_same_thread=False)
    con.execute("BEGIN EXCLUSIVE")
    timer = threading.Timer(6, lambda: con.execute("ROLLBACK"))  # so a blocked commit ends anyway
    timer.start()
    try:
        before = head(project)
        t0 = time.monotonic()
        proc = commit(project, "commit while the app holds a write lock")
        elapsed = time.monotonic() - t0
    finally:
        timer.cancel()
        timer.join()
        if con.in_transaction:
            con.execute("ROLLBACK")
        con.close()
    assert proc.returncode == 0, proc.stderr
    assert head(project) != before
    assert elapsed < 5, f"git commit took {elapsed:.1f}s"
    assert "snapkit: warning" in proc.stderr and "Traceback" not in proc.stderr
    errors = [line for line in hook_log(project) if " error " in f" {line} "]
    assert errors and "locked" in errors[-1]
    assert snapshots(cli) == []
