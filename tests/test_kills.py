"""SIGKILL at random moments, and plaintext never reaching the store.

docs/format.md ("Read and write ordering", "Locks are leases", "Threat
model"): a process killed anywhere leaves nothing that is damage, every
visible snapshot's objects were durable before its catalog entry existed, a
killed local process's lease is stale at once, and no plaintext (no database
copy, no half-written pack) is ever written into the store.

Oracles: the sqlite3 shell (`.dump`, counts), the catalog entry names in the
store folder (ids are visible without the key), file bytes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import git, sqlite_dump
from tests.test_tamper import Lab, cache_home, lab  # noqa: F401  (fixtures: cache_home is autouse)

MARKER = b"PLAINTEXT-MARKER"
KILLS = 20  # SIGKILLs per command
MAX_RUNS = 45  # runs that end before their kill time also count here
SQLITE_HEADER = b"SQLite format 3"


# ---------------------------------------------------------------------------- helpers


def snapkit_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "snapkit", *args]


def timed_run(cwd: Path, *args: str) -> float:
    """Run a command to completion (it must succeed); its wall time."""
    t0 = time.monotonic()
    proc = subprocess.run(snapkit_argv(*args), cwd=cwd, capture_output=True, text=True, env=dict(os.environ),
                          timeout=120)
    assert proc.returncode == 0, (args, proc.stderr)
    return time.monotonic() - t0


def run_and_kill(cwd: Path, args: tuple[str, ...], delay: float) -> int | None:
    """Start `snapkit args`, SIGKILL it (and anything it started) after `delay` seconds.

    Returns its exit code when it finished before the kill, None when it was killed.
    """
    proc = subprocess.Popen(snapkit_argv(*args), cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=dict(os.environ), start_new_session=True)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stderr.close()
        return None
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.returncode == 0, (args, proc.returncode, err)
    return proc.returncode


def catalog_ids(store: Path) -> set[str]:
    """Snapshot ids with a catalog entry in the store (names are visible without the key)."""
    folder = store / "catalog"  # made by the first create
    return {p.name.rsplit("~", 1)[0] for p in folder.iterdir()} if folder.exists() else set()


def listed(lab: Lab) -> list[str]:
    return [e["id"] for e in json.loads(lab.cli("list", "--json").stdout)["snapshots"]]


def store_files(store: Path) -> list[Path]:
    return [p for p in store.rglob("*") if p.is_file()]


def lease_pids(store: Path) -> list[int]:
    return [json.loads(p.read_bytes())["pid"] for p in (store / "locks").iterdir()]


def pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def leftover_scratch(root: Path) -> list[Path]:
    base = root / ".git" / "snapkit" / "tmp"
    return sorted(base.iterdir()) if base.exists() else []


def no_lease_blocks_a_create(lab: Lab) -> None:
    """Leases left by killed processes are stale at once: a create neither waits nor fails."""
    assert not [pid for pid in lease_pids(lab.store) if pid_running(pid)]
    t0 = time.monotonic()
    lab.cli("create", "--no-commit", "-q")
    assert time.monotonic() - t0 < 10, "create waited for a dead process's lease"
    assert not list((lab.store / "locks").iterdir())


# ---------------------------------------------------------------------------- 10: no plaintext in the store

WRITER = textwrap.dedent("""
    import sqlite3, sys
    con = sqlite3.connect(sys.argv[1], isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA wal_autocheckpoint=0")   # committed frames stay in the -wal file
    con.execute("PRAGMA cache_size=8")           # a big transaction spills uncommitted frames into it
    con.execute("BEGIN")
    con.executemany("INSERT INTO notes(body) VALUES (?)",
                    [(f"PLAINTEXT-MARKER-C-{n} committed while snapkit runs",) for n in range(2000)])
    con.execute("COMMIT")
    con.execute("BEGIN")
    con.executemany("INSERT INTO notes(body) VALUES (?)",
                    [(f"PLAINTEXT-MARKER-U-{n} never committed " + "u" * 200,) for n in range(3000)])
    print("ready", flush=True)
    sys.stdin.read()                              # hold the transaction open until told to stop
    con.execute("ROLLBACK")
    con.close()
""")


def marker_counts(db: Path) -> tuple[int, int]:
    """(committed marker rows, uncommitted marker rows) as the sqlite3 shell sees them."""
    out = subprocess.run(["sqlite3", str(db),
                          "SELECT count(*) FILTER (WHERE body NOT LIKE 'PLAINTEXT-MARKER-U-%'), "
                          "count(*) FILTER (WHERE body LIKE 'PLAINTEXT-MARKER-U-%') FROM notes"],
                         capture_output=True, text=True, check=True).stdout.strip()
    a, b = out.split("|")
    return int(a), int(b)


@pytest.mark.slow
def test_plaintext_never_reaches_the_store_even_when_create_is_killed(lab, tmp_path):
    db = lab.db
    con = sqlite3.connect(db)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)")
    con.executemany("INSERT INTO notes(body) VALUES (?)",
                    [(f"PLAINTEXT-MARKER-{n} " + "row text " * 40,) for n in range(20000)])
    con.commit()
    con.close()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready"
        wal = Path(str(db) + "-wal")
        frames = wal.read_bytes()
        assert b"PLAINTEXT-MARKER-C-" in frames and b"PLAINTEXT-MARKER-U-" in frames  # both kinds of frame
        assert marker_counts(db) == (22000, 0)
        duration = timed_run(lab.root, "create", "--no-commit", "-q")
        rng = random.Random(20261122)
        runs = killed = 0
        while killed < KILLS:  # a run that ends before its kill time counts as a run, not a kill
            assert runs < MAX_RUNS, f"only {killed} of {runs} creates were killed"
            runs += 1
            if run_and_kill(lab.root, ("create", "--no-commit", "-q"), rng.uniform(0, duration)) is None:
                killed += 1
        for _ in range(3):
            timed_run(lab.root, "create", "--no-commit", "-q")
        print(f"create takes {duration:.2f}s; {killed} of {runs} killed; {len(catalog_ids(lab.store))} visible; "
              f"{len(store_files(lab.store))} store files")
        for path in store_files(lab.store):
            data = path.read_bytes()
            assert MARKER not in data, f"plaintext rows in {path}"
            assert SQLITE_HEADER not in data, f"a SQLite database image in {path}"
    finally:
        writer.stdin.close()
        writer.wait(timeout=30)
    lab.cli("verify")
    ids = listed(lab)
    assert set(ids) == catalog_ids(lab.store) and len(ids) >= 4
    for sid in ids:
        out = tmp_path / f"{sid}.db"
        lab.cli("cat", sid, "--layer", "database", "-o", str(out))
        assert marker_counts(out) == (22000, 0), sid
    lab.cli("restore", ids[-1], "--db-only", "--yes", "--no-safety")
    assert marker_counts(db) == (22000, 0)
    assert leftover_scratch(lab.root) == [], "a killed create's scratch folder (a WAL copy) was never removed"
    no_lease_blocks_a_create(lab)


# ---------------------------------------------------------------------------- 11: kills


def grow(db: Path, label: str, rng: random.Random) -> None:
    """A new database state: a row more, and a scattered update (so many blocks change)."""
    con = sqlite3.connect(db)
    con.execute("INSERT INTO marks(label) VALUES (?)", (label,))
    con.execute("UPDATE bulk SET data = ? WHERE id % 37 = ?", (rng.randbytes(300), rng.randrange(37)))
    con.commit()
    con.close()


@pytest.mark.slow
def test_killed_create_restore_and_verify_leave_a_sound_store(lab, tmp_path):
    db = lab.db
    rng = random.Random(7)
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE marks(id INTEGER PRIMARY KEY, label TEXT)")
    con.execute("CREATE TABLE bulk(id INTEGER PRIMARY KEY, data BLOB)")
    con.executemany("INSERT INTO bulk VALUES (?, ?)", [(i, rng.randbytes(600)) for i in range(6000)])
    con.commit()
    con.close()
    expected: dict[str, str] = {}  # snapshot id -> the sqlite_dump of what it holds

    def snapshots_since(before: set[str], dump: str) -> None:
        new = catalog_ids(lab.store) - before
        assert len(new) <= 1, new
        for sid in new:
            expected[sid] = dump

    # Reference runs: how long each command takes when it is not killed.
    grow(db, "first", rng)
    dump = sqlite_dump(db)
    before = catalog_ids(lab.store)
    t_create = timed_run(lab.root, "create", "--no-commit", "-q")
    snapshots_since(before, dump)
    [oldest] = expected
    grow(db, "second", rng)
    dump = sqlite_dump(db)
    before = catalog_ids(lab.store)
    t_restore = timed_run(lab.root, "restore", oldest, "--db-only", "--yes")
    snapshots_since(before, dump)  # the safety snapshot holds the live state
    assert sqlite_dump(db) == expected[oldest]
    t_verify = timed_run(lab.root, "verify", "-q")

    killed = {"create": 0, "restore": 0, "verify": 0}
    runs = {"create": 0, "restore": 0, "verify": 0}

    def more(command: str) -> bool:
        """Another run of `command`? Until KILLS of them were killed (a run may end before its kill)."""
        if killed[command] >= KILLS:
            return False
        assert runs[command] < MAX_RUNS, (command, killed, runs)
        runs[command] += 1
        return True

    i = 0
    while more("create"):
        i += 1
        grow(db, f"create {i}", rng)
        dump = sqlite_dump(db)
        before = catalog_ids(lab.store)
        if run_and_kill(lab.root, ("create", "--no-commit", "-q"), rng.uniform(0, t_create)) is None:
            killed["create"] += 1
        snapshots_since(before, dump)
        assert sqlite_dump(db) == dump, "a killed create changed the live database"

    stray = set()
    while more("restore"):
        i += 1
        grow(db, f"restore {i}", rng)
        live = sqlite_dump(db)
        before = catalog_ids(lab.store)
        restore = ("restore", oldest, "--db-only", "--yes")
        if run_and_kill(lab.root, restore, rng.uniform(0, t_restore)) is None:
            killed["restore"] += 1
        snapshots_since(before, live)  # only a safety snapshot can appear: it holds the live state
        assert sqlite_dump(db) in (live, expected[oldest]), "a killed restore left a mix of two databases"
        stray |= {p.name for p in db.parent.glob(".app.db.snapkit-*")}

    while more("verify"):
        if run_and_kill(lab.root, ("verify", "-q"), rng.uniform(0, t_verify)) is None:
            killed["verify"] += 1

    print(f"create {t_create:.2f}s, restore {t_restore:.2f}s, verify {t_verify:.2f}s; killed {killed} "
          f"in {runs} runs; {len(expected)} snapshots")
    # Afterwards: nothing blocks a writer, the store verifies, every visible snapshot is what it held.
    grow(db, "final", rng)
    dump = sqlite_dump(db)
    before = catalog_ids(lab.store)
    no_lease_blocks_a_create(lab)
    snapshots_since(before, dump)
    proc = lab.cli("verify", ok=None)
    assert proc.returncode == 0, proc.stderr
    ids = listed(lab)
    assert set(ids) == catalog_ids(lab.store) == set(expected), (set(ids) ^ set(expected))
    for sid in ids:
        out = tmp_path / f"{sid}.db"
        lab.cli("cat", sid, "--layer", "database", "-o", str(out))
        assert sqlite_dump(out) == expected[sid], sid
    lab.cli("status")
    assert leftover_scratch(lab.root) == []
    if stray:  # staged restore files beside the database, left by killed restores (see the report)
        print(f"{len(stray)} staged restore file(s) left beside app.db: {sorted(stray)[:3]}")


def test_killed_restore_leaves_no_database_copy_for_git_to_commit(lab):
    s1 = lab.snapshot("one")
    lab.go_live()
    # Hold the live database's write lock: the restore stages its copy, then waits for the lock.
    holder = sqlite3.connect(lab.db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    proc = subprocess.Popen(snapkit_argv("restore", s1, "--db-only", "--yes", "--no-safety"), cwd=lab.root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ),
                            start_new_session=True)
    staged_glob = ".git/snapkit/tmp/*/restore-*.db"  # the private scratch folder (docs/format.md)
    try:
        deadline = time.monotonic() + 20
        while not list(lab.root.glob(staged_glob)) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert list(lab.root.glob(staged_glob)), "the restore never staged its copy"
        time.sleep(0.2)  # its rebuild is fsynced; it is waiting for our lock now
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        holder.execute("ROLLBACK")
        holder.close()
    assert sqlite_dump(lab.db) != lab.snaps[s1].dump  # killed before it touched the live database
    lab.cli("create", "after a killed restore", "-q")
    committed = git(lab.root, "ls-files")
    assert ".app.db.snapkit-" not in committed and "restore-" not in committed, committed
    assert not [p for p in lab.root.iterdir() if p.name.startswith(".app.db.snapkit-")]
    # The dead restore's scratch folder went with the next snapkit command.
    assert not list(lab.root.glob(staged_glob))
