"""A format-1 store made by the previous release is converted by `snapkit migrate`, crash-safely.

The previous release is taken from this repository's own history (the last
commit that wrote format 1), unpacked into a temp folder and run as a
subprocess: the store under test is really written by that code.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, git, sqlite_dump

FORMAT1_RELEASE = "2a5ad3e"  # the last commit of snapkit 0.1 (store format 1)


@pytest.fixture(scope="session")
def old_snapkit(tmp_path_factory) -> Path:
    """The format-1 release's `snapkit` package, unpacked from git history."""
    where = tmp_path_factory.mktemp("snapkit-format1")
    probe = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{FORMAT1_RELEASE}^{{commit}}"],
                           capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"commit {FORMAT1_RELEASE} (the format-1 release) is not in this clone's history")
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", FORMAT1_RELEASE, "snapkit"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    return where


def run(repo: Path, *args: str, old: Path | None = None, ok: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if old is not None:
        env["PYTHONPATH"] = str(old)
    proc = subprocess.run([sys.executable, "-m", "snapkit", *args], cwd=repo, capture_output=True,
                          text=True, env=env, timeout=120)
    if ok and proc.returncode != 0:
        raise AssertionError(f"snapkit {' '.join(args)} ({'format 1' if old else 'current'}) "
                             f"exited {proc.returncode}:\n{proc.stderr}")
    return proc


def change_db(path: Path, seed: int) -> None:
    rnd = random.Random(seed)
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE IF NOT EXISTS bulk(id INTEGER PRIMARY KEY, data BLOB)")
    con.executemany("INSERT INTO bulk(data) VALUES (?)", [(rnd.randbytes(300),) for _ in range(400)])
    con.execute("UPDATE users SET name = name || ? WHERE id % 17 = 0", (f" v{seed}",))
    con.commit()
    con.close()


@pytest.fixture
def v1_store(app_repo, old_snapkit):
    """A project whose store was written by the format-1 release: 3 snapshots (deltas among them)."""
    run(app_repo, "init", "--db", "sqlite:///app.db", old=old_snapkit)
    dumps = {}
    for n in range(3):
        if n:
            change_db(app_repo / "app.db", n)
            (app_repo / "app.py").write_text(f"print('v{n + 1}')\n")
        sid = run(app_repo, "create", f"version {n + 1}", old=old_snapkit).stdout.strip()
        dumps[sid] = sqlite_dump(app_repo / "app.db")
    run(app_repo, "tag", sid, "release", old=old_snapkit)
    return app_repo, dumps


def restored_dump(repo: Path, sid: str, tmp: Path) -> str:
    out = tmp / f"{sid}.db"
    run(repo, "cat", sid, "--layer", "database", "-o", str(out))
    return sqlite_dump(out)


def test_current_release_refuses_a_format1_store_until_migrated(v1_store, tmp_path):
    repo, dumps = v1_store
    before = run(repo, "list", ok=False)
    assert before.returncode == 1
    assert "format 1" in before.stderr and "snapkit migrate" in before.stderr
    assert "Traceback" not in before.stderr

    run(repo, "migrate")
    store = repo / "snapshots"
    assert not (store / "catalog.cache").exists()
    assert sorted(p.name.rsplit("~", 1)[0] for p in (store / "catalog").iterdir()) == sorted(dumps)
    for p in (store / "index").iterdir():
        assert p.read_bytes()[4] == 2  # only format-2 index objects remain

    listed = run(repo, "list", "--json").stdout
    for sid in dumps:
        assert sid in listed
    assert "release" in listed
    assert run(repo, "verify").returncode == 0
    for sid, dump in dumps.items():
        assert restored_dump(repo, sid, tmp_path) == dump
    # A restore through the migrated catalog puts code and data back together.
    first = sorted(dumps)[0]
    run(repo, "restore", first, "--yes")
    assert sqlite_dump(repo / "app.db") == dumps[first]
    assert (repo / "app.py").read_text() == "print('v1')\n"


def test_migrated_store_keeps_deduplicating_and_its_index_can_be_rebuilt(v1_store, tmp_path):
    repo, dumps = v1_store
    run(repo, "migrate")
    assert "already format 2" in run(repo, "migrate").stderr  # idempotent
    created = run(repo, "create", "--no-commit", "--json").stdout
    import json

    result = json.loads(created)
    assert result["new_chunks"] == 0  # same database and commit as the last format-1 snapshot
    run(repo, "repair", "index")
    assert run(repo, "verify").returncode == 0
    for sid, dump in dumps.items():
        assert restored_dump(repo, sid, tmp_path) == dump


@pytest.mark.slow
def test_migrate_killed_at_random_moments_leaves_a_store_that_a_second_migrate_finishes(
        v1_store, tmp_path):
    repo, dumps = v1_store
    pristine = tmp_path / "pristine"
    subprocess.run(["cp", "-a", str(repo / "snapshots"), str(pristine)], check=True)
    rnd = random.Random(7)
    started = time.monotonic()
    run(repo, "migrate")
    full = time.monotonic() - started
    for attempt in range(10):
        subprocess.run(["rm", "-rf", str(repo / "snapshots")], check=True)
        subprocess.run(["cp", "-a", str(pristine), str(repo / "snapshots")], check=True)
        proc = subprocess.Popen([sys.executable, "-m", "snapkit", "migrate"], cwd=repo,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rnd.uniform(0, full))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        run(repo, "migrate")
        assert run(repo, "verify").returncode == 0, f"attempt {attempt}"
        for sid, dump in dumps.items():
            assert restored_dump(repo, sid, tmp_path) == dump, f"attempt {attempt}: {sid}"
    assert git(repo, "rev-parse", "HEAD")
