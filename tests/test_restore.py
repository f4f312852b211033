"""restore and rollback (SPEC §3): code and data back together, nothing else touched.

Oracles: the sqlite3 shell's .dump, `git rev-parse`, `git status`, file hashes.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import git, sqlite_dump
from tests.test_cli import assert_error, head, run_many, snapshots, tree_state


def mutate(db: Path, step: int) -> None:
    """A change touching rows, schema and BLOBs, different for every step."""
    con = sqlite3.connect(db)
    con.executescript(
        f"""
        INSERT INTO users(name, email, avatar) VALUES ('step {step} ✓', NULL, x'00ff{step:02x}');
        UPDATE orders SET note = 'changed in step {step}' WHERE id % {step + 2} = 0;
        DELETE FROM orders WHERE id % {step + 11} = 0;
        CREATE TABLE step_{step}(id INTEGER PRIMARY KEY, v TEXT);
        INSERT INTO step_{step}(v) VALUES ('a'), ('b');
        """
    )
    con.commit()
    con.close()


def users(db: Path) -> int:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT count(*) FROM users").fetchone()[0]
    finally:
        con.close()


@dataclass
class Snap:
    id: str
    commit: str
    dump: str
    app_py: str
    users: int


def snap(cli, repo: Path, step: int, message: str) -> Snap:
    """Change the database and the code, `create MESSAGE` (commits), return what was snapshotted."""
    if step > 1:
        mutate(repo / "app.db", step)
        (repo / "app.py").write_text(f"print('v{step}')\n")
        (repo / f"feature{step}.py").write_text(f"FEATURE = {step}\n")
    sid = cli("create", message).stdout.strip()
    return Snap(sid, head(repo), sqlite_dump(repo / "app.db"), (repo / "app.py").read_text(),
                users(repo / "app.db"))


@pytest.fixture
def clean_project(project):
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "configure snapkit")
    return project


def assert_at(repo: Path, s: Snap, branch: str | None = "main") -> None:
    assert sqlite_dump(repo / "app.db") == s.dump
    assert head(repo) == s.commit
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD") == (branch or "HEAD")
    assert (repo / "app.py").read_text() == s.app_py
    assert git(repo, "status", "--porcelain") == ""


# ---------------------------------------------------------------- round trips


def test_round_trip_by_every_ref(clean_project, cli):
    repo = clean_project
    s1 = snap(cli, repo, 1, "v1")
    s2 = snap(cli, repo, 2, "v2")
    assert s1.dump != s2.dump and s1.commit != s2.commit

    cli("rollback", "--yes")                         # by rollback
    assert_at(repo, s1)
    assert not (repo / "feature2.py").exists()
    cli("restore", "@0", "--yes")                    # by @N
    assert_at(repo, s2)
    (repo / "app.db").unlink()                       # also into a missing database
    cli("restore", "HEAD~1", "--yes")                # by git revision
    assert_at(repo, s1)
    cli("restore", s2.id, "--yes")                   # by id
    assert_at(repo, s2)
    assert (repo / "feature2.py").read_text() == "FEATURE = 2\n"


def test_commit_survives_reset_and_gc(clean_project, cli):
    repo = clean_project
    s1 = snap(cli, repo, 1, "v1")
    s2 = snap(cli, repo, 2, "v2")
    git(repo, "reset", "-q", "--hard", "HEAD~1")
    git(repo, "reflog", "expire", "--expire=now", "--all")
    git(repo, "gc", "-q", "--prune=now")
    assert head(repo) == s1.commit
    assert subprocess.run(["git", "cat-file", "-e", s2.commit + "^{commit}"], cwd=repo, check=False).returncode == 0
    cli("restore", s2.id, "--yes")
    assert_at(repo, s2)


# ---------------------------------------------------------------- refusing to lose work


def test_dirty_tree_refuses_and_force_proceeds(clean_project, cli):
    repo = clean_project
    s1 = snap(cli, repo, 1, "v1")
    s2 = snap(cli, repo, 2, "v2")
    (repo / "app.py").write_text("print('my uncommitted work')\n")
    for proc in run_many(repo, [("restore", s1.id, "--yes"), ("rollback", "--yes")]):
        assert_error(proc, 1, "app.py")
    assert sqlite_dump(repo / "app.db") == s2.dump
    assert head(repo) == s2.commit
    assert (repo / "app.py").read_text() == "print('my uncommitted work')\n"
    assert len(snapshots(cli)) == 2  # no safety snapshot for a refused restore

    cli("restore", s1.id, "--yes", "--force")
    assert_at(repo, s1)
    assert not (repo / "feature2.py").exists()

    # an untracked file the checkout would overwrite: refused, named, nothing changed
    (repo / "feature2.py").write_text("mine, untracked\n")
    assert_error(cli("restore", s2.id, "--yes", ok=None), 1, "feature2.py")
    assert sqlite_dump(repo / "app.db") == s1.dump
    assert head(repo) == s1.commit
    assert (repo / "feature2.py").read_text() == "mine, untracked\n"


def _untracked_in_the_way(cli, repo):
    s1 = snap(cli, repo, 1, "v1")
    s2 = snap(cli, repo, 2, "v2")          # adds feature2.py
    cli("restore", s1.id, "--yes")         # removes it
    (repo / "feature2.py").write_text("mine, untracked\n")
    return s1, s2


def test_untracked_file_in_the_way_no_safety_changes_nothing(clean_project, cli):
    repo = clean_project
    s1, s2 = _untracked_in_the_way(cli, repo)
    assert_error(cli("restore", s2.id, "--yes", "--no-safety", ok=None), 1, "feature2.py")
    assert head(repo) == s1.commit
    assert (repo / "feature2.py").read_text() == "mine, untracked\n"
    assert sqlite_dump(repo / "app.db") == s1.dump


# ---------------------------------------------------------------- dry run, branch, detach


DRY_RUNS = [("rollback", "--dry-run"), ("restore", "@1", "--dry-run", "--json"),
            ("restore", "HEAD~1", "--dry-run", "--db-only"), ("restore", "@1", "--dry-run", "--force"),
            ("restore", "@1", "--dry-run", "--to-url", "sqlite:///other.db"),
            ("rollback", "--dry-run", "--detach", "--code-only")]


def _dry_runs(repo: Path, s1: Snap, calls) -> None:
    before = tree_state(repo)  # the whole work tree: .git, app.db and the store included
    for proc in run_many(repo, calls):
        assert proc.returncode == 0, (proc.args, proc.stderr)
        assert s1.id in proc.stdout, (proc.args, proc.stdout)  # the plan goes to stdout
    after = tree_state(repo)
    assert after == before, {k: (before.get(k), after.get(k)) for k in set(before) | set(after)
                             if before.get(k) != after.get(k)}
    assert not (repo / "other.db").exists()


def test_dry_run_writes_nothing_at_all(clean_project, cli):
    repo = clean_project
    s1 = snap(cli, repo, 1, "v1")
    _dry_runs(repo, s1, [("restore", s1.id, "--dry-run")])


def test_dry_run_changes_nothing_then_branch_and_detach(clean_project, cli):
    repo = clean_project
    s1 = snap(cli, repo, 1, "v1")
    s2 = snap(cli, repo, 2, "v2")
    (repo / "app.py").write_text("print('dirty')\n")  # a dry run reports, it does not refuse
    _dry_runs(repo, s1, [("restore", s1.id, "--dry-run"), *DRY_RUNS])

    git(repo, "checkout", "--", "app.py")
    cli("restore", s1.id, "--yes")                # moves the branch
    assert_at(repo, s1, branch="main")
    assert git(repo, "rev-parse", "main") == s1.commit
    cli("restore", s2.id, "--yes", "--detach")    # detaches
    assert_at(repo, s2, branch=None)
    assert git(repo, "rev-parse", "main") == s1.commit


# ---------------------------------------------------------------- safety snapshots, --to-url


def test_safety_snapshot_and_to_url(clean_project, cli):
    repo = clean_project
    s1 = snap(cli, repo, 1, "v1")
    s2 = snap(cli, repo, 2, "v2")
    mutate(repo / "app.db", 7)                    # live data newer than any snapshot
    live = sqlite_dump(repo / "app.db")

    # --to-url: writes only the other database
    cli("restore", s1.id, "--yes", "--to-url", "sqlite:///other.db")
    assert sqlite_dump(repo / "other.db") == s1.dump
    assert sqlite_dump(repo / "app.db") == live
    assert head(repo) == s2.commit
    assert len(snapshots(cli)) == 2               # no safety snapshot for --to-url
    (repo / "other.db").unlink()

    # a full restore first snapshots the live database, tagged safety
    cli("restore", s1.id, "--yes")
    assert sqlite_dump(repo / "app.db") == s1.dump and head(repo) == s1.commit
    entries = snapshots(cli)
    safety = [e for e in entries if "safety" in e["tags"]]
    assert len(entries) == 3 and len(safety) == 1
    assert safety[0]["commit"] == s2.commit
    at0, at1 = run_many(repo, [("show", "@0", "--json"), ("show", "@1", "--json")])
    assert json.loads(at0.stdout)["id"] == s2.id  # safety snapshots are not steps of @N
    assert json.loads(at1.stdout)["id"] == s1.id

    # it holds the pre-restore data; --no-safety takes none
    cli("restore", safety[0]["id"], "--db-only", "--no-safety", "--yes")
    assert sqlite_dump(repo / "app.db") == live
    assert head(repo) == s1.commit
    assert len(snapshots(cli)) == 3

    # --code-only takes none either and leaves the database alone
    cli("restore", s2.id, "--code-only", "--yes")
    assert head(repo) == s2.commit
    assert sqlite_dump(repo / "app.db") == live
    assert len(snapshots(cli)) == 3


# ---------------------------------------------------------------- rollback walking, open connection


def test_rollback_walks_back_with_an_open_connection(clean_project, cli):
    repo = clean_project
    s1 = snap(cli, repo, 1, "v1")
    s2 = snap(cli, repo, 2, "v2")
    s3 = snap(cli, repo, 3, "v3")
    counts = {s.id: s.users for s in (s1, s2, s3)}
    assert len(set(counts.values())) == 3

    reader = sqlite3.connect(repo / "app.db", isolation_level=None)  # open, not in a transaction
    try:
        assert reader.execute("SELECT count(*) FROM users").fetchone()[0] == counts[s3.id]
        assert not reader.in_transaction

        cli("rollback", "--yes")
        assert_at(repo, s2)
        assert reader.execute("SELECT count(*) FROM users").fetchone()[0] == counts[s2.id]
        cli("rollback", "--yes")
        assert_at(repo, s1)
        assert reader.execute("SELECT count(*) FROM users").fetchone()[0] == counts[s1.id]
        assert reader.execute("SELECT count(*) FROM sqlite_master WHERE name LIKE 'step_%'").fetchone()[0] == 0

        # nothing older than s1 on the timeline (safety snapshots are not steps)
        assert_error(cli("rollback", "--yes", ok=None), 1)
        assert_at(repo, s1)

        s4 = snap(cli, repo, 4, "v4")             # a new change on top of s1
        assert git(repo, "rev-parse", "HEAD~1") == s1.commit
        cli("rollback", "1", "--yes")             # the snapshot before the newest: s3
        assert_at(repo, s3)
        assert reader.execute("SELECT count(*) FROM users").fetchone()[0] == counts[s3.id]
        assert s4.commit != s3.commit
    finally:
        reader.close()


# ---------------------------------------------------------------- WAL and concurrent writers

WRITER = r"""
import sqlite3, sys, os, time
db, stop = sys.argv[1], sys.argv[2]
con = sqlite3.connect(db, isolation_level=None, timeout=30)
n = 0
while not os.path.exists(stop):
    con.execute("INSERT INTO events(payload) VALUES (?)", ("x" * 200 + str(n),))
    n += 1
print(n)
"""


def test_wal_snapshot_while_writing(project, cli, tmp_path):
    db = project / "app.db"
    con = sqlite3.connect(db, isolation_level=None)
    assert con.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    con.execute("CREATE TABLE events(id INTEGER PRIMARY KEY, payload TEXT)")
    con.close()
    stop = tmp_path / "stop"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(db), str(stop)], stdout=subprocess.PIPE, text=True)
    try:
        reader = sqlite3.connect(db, isolation_level=None)
        deadline = time.monotonic() + 10
        while reader.execute("SELECT count(*) FROM events").fetchone()[0] < 200:
            assert time.monotonic() < deadline and writer.poll() is None
            time.sleep(0.02)
        n_before = reader.execute("SELECT count(*) FROM events").fetchone()[0]
        sid = cli("create", "--no-commit").stdout.strip()
        n_mid = reader.execute("SELECT count(*) FROM events").fetchone()[0]
        reader.close()
    finally:
        stop.touch()
        out, _ = writer.communicate(timeout=30)
    written = int(out)
    assert written > n_mid > n_before  # the writer really ran during create

    cli("restore", sid, "--db-only", "--yes")
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        n, lo, hi = con.execute("SELECT count(*), min(id), max(id) FROM events").fetchone()
        assert n_before <= n <= n_mid <= written
        assert (lo, hi) == (1, n)  # a consistent prefix: every committed row up to a point, no holes
        assert con.execute("SELECT count(*) FROM users").fetchone()[0] == 200
    finally:
        con.close()
    assert json.loads(cli("show", sid, "--json").stdout)["database"]["tables"]["events"] == n
