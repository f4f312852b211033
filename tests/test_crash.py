"""Crash safety with real SIGKILLs: a `create` killed at any moment leaves the store valid.

SPEC §6: "a snapshot becomes visible only when complete; a process killed at
any point leaves the store valid and every earlier snapshot restorable".

A ~27 MB SQLite database of random blobs; each run rewrites ~18 MB of it, so a
`create` writes two 16 MiB-bounded packs, an index, a manifest and a catalog
entry. Runs are killed (the whole process group, SIGKILL) after a seeded random
delay spread over a measured run time, plus runs killed the instant a pack is
being written (in the private scratch folder, docs/format.md), an index object
or a manifest appears on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import git, sqlite_dump

ROWS = 13_000
BLOB = 2000
UPDATE = 9_000  # rows rewritten before each run: ~18 MB of new pages, more than one 16 MiB pack
SEED = 20261122


def fill(db: Path, rnd: random.Random, rows: int = ROWS) -> None:
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE big(id INTEGER PRIMARY KEY, gen INTEGER, data BLOB)")
    con.executemany("INSERT INTO big VALUES (?, 0, ?)", ((i, rnd.randbytes(BLOB)) for i in range(rows)))
    con.commit()
    con.close()


def change(db: Path, rnd: random.Random, gen: int) -> None:
    # Always the same rows, so every run writes about as much as the measured one (a killed run
    # does not move the delta base forward, and a random range would grow the difference run by run).
    start = 1000
    con = sqlite3.connect(db)
    con.executemany("UPDATE big SET gen = ?, data = ? WHERE id = ?",
                    ((gen, rnd.randbytes(BLOB), i) for i in range(start, start + UPDATE)))
    con.execute("INSERT INTO users(id, name) VALUES (?, ?)", (100_000 + gen, f"run {gen}"))
    con.commit()
    con.close()


def dump_hash(db: Path) -> str:
    return hashlib.sha256(sqlite_dump(db).encode()).hexdigest()


def snapshot_ids(cli) -> list[str]:
    return [s["id"] for s in json.loads(cli("list", "--json").stdout)["snapshots"]]


def start_create(root: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "snapkit", "create", "--no-commit", "--quiet"], cwd=root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def kill(proc: subprocess.Popen) -> bool:
    """SIGKILL the process group; True if it was still running (a real crash)."""
    running = proc.poll() is None
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    proc.stderr.close()
    return running and proc.returncode == -signal.SIGKILL


def files(folder: Path) -> set[str]:
    """Files under `folder`; a folder renamed or removed meanwhile (scratch folders are
    built as `.new-…` and renamed, by a process running concurrently) is skipped."""
    out = set()
    for dirpath, _dirs, names in os.walk(folder):
        out |= {str((Path(dirpath) / n).relative_to(folder)) for n in names}
    return out


def scratch(root: Path) -> Path:
    """Where snapkit processes keep their private scratch folders: `<git dir>/snapkit/tmp/<pid>-<rand>/`."""
    return root / ".git" / "snapkit" / "tmp"


def scratch_files(root: Path, prefix: str) -> list[str]:
    return sorted(n for n in files(scratch(root)) if n.split("/")[-1].startswith(prefix))


def wait_for(proc: subprocess.Popen, event, limit: float = 20.0) -> bool:
    """Poll until `event()` is true (then return True at once) or the process ends."""
    deadline = time.monotonic() + limit
    while proc.poll() is None and time.monotonic() < deadline:
        if event():
            return True
    return False


@pytest.mark.slow
def test_sigkill_during_create_never_damages_the_store(project, cli, capsys):
    t_start = time.monotonic()
    root = project
    store = root / "snapshots"
    db = root / "app.db"
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "ignore the store")
    rnd = random.Random(SEED)
    fill(db, rnd)
    assert db.stat().st_size > 25_000_000

    # Two good snapshots; the second one's wall time is the run time to spread kills over.
    good = {}
    sid = cli("create", "--no-commit").stdout.strip()
    good[sid] = dump_hash(db)
    change(db, rnd, gen=1)
    t0 = time.monotonic()
    sid = cli("create", "--no-commit").stdout.strip()
    runtime = time.monotonic() - t0
    good[sid] = dump_hash(db)
    assert len(good) == 2
    assert len(files(store / "packs")) >= 3  # the second snapshot alone wrote more than one pack

    # Early kills in seconds; the rest as fractions of the run time, which is
    # re-estimated as runs go (a loaded CI machine runs slower or faster than the first measure).
    plans: list[tuple[str, float | str]] = [("delay", d) for d in (0.0, 0.02, 0.1)]
    plans += [("frac", rnd.uniform(0.15, 0.85)) for _ in range(10)]
    plans += [("frac", rnd.uniform(0.85, 1.3)) for _ in range(7)]
    # Kill the moment a pack is being written (its temp file exists), an index object lands, a manifest lands.
    plans.insert(5, ("event", "pack"))
    plans.insert(12, ("event", "index"))
    plans.insert(18, ("event", "manifest"))

    def event(kind: str, before: dict):
        if kind == "pack":
            # A pack being written (in the scratch folder) or uploaded; leftovers of earlier kills are in `before`.
            return lambda: (any(n not in before["scratch"] for n in scratch_files(root, "pack-"))
                            or any(n not in before["packs"] for n in files(store / "packs")))
        if kind == "index":
            return lambda: any(not n.startswith(".tmp-") and n not in before["index"]
                               for n in os.listdir(store / "index"))
        return lambda: any(not n.startswith(".tmp-") and n not in before["manifests"]
                           for n in os.listdir(store / "manifests"))

    visible: dict[str, str] = {}  # snapshot id of a killed run -> the .dump hash it must restore
    log = []
    real_kills = 0
    ids = snapshot_ids(cli)
    for gen, (how, arg) in enumerate(plans, start=2):
        change(db, rnd, gen)
        expected = dump_hash(db)
        before = {"packs": files(store / "packs"), "index": set(os.listdir(store / "index")),
                  "manifests": set(os.listdir(store / "manifests")), "scratch": scratch_files(root, "pack-")}
        proc = start_create(root)
        if how in ("delay", "frac"):
            time.sleep(arg if how == "delay" else arg * runtime)
            hit = None
        else:
            hit = wait_for(proc, event(arg, before))
        crashed = kill(proc)
        real_kills += crashed
        if how == "frac" and not crashed and arg < 0.85:
            runtime *= 0.8  # it finished before a mid-run kill: runs are faster now
        elif how == "frac" and crashed and arg >= 0.85:
            runtime *= 1.15  # killed after the estimated end: runs are slower now
        if not crashed:
            assert proc.returncode == 0, f"run {gen} ({how} {arg}) failed on its own"

        check = cli("verify", "--json", ok=None)
        assert check.returncode == 0, f"after run {gen} ({how} {arg}) verify failed:\n{check.stdout}\n{check.stderr}"
        now = snapshot_ids(cli)
        assert set(ids) <= set(now), f"run {gen}: a snapshot vanished"
        new = sorted(set(now) - set(ids))
        assert len(new) <= 1
        if new:
            visible[new[0]] = expected
        if not crashed:
            assert new, f"run {gen} finished but its snapshot is not listed"
        assert json.loads(check.stdout)["snapshots"] == len(now)
        log.append((gen, how, round(arg, 3) if how != "event" else arg, hit, crashed, bool(new)))
        ids = now

    # Every earlier good snapshot restores exactly.
    for sid, expected in good.items():
        cli("restore", sid, "--db-only", "--yes", "--no-safety")
        assert dump_hash(db) == expected, f"good snapshot {sid} did not restore exactly"
    # Killed runs that became visible are complete snapshots of what the database held.
    for sid, expected in visible.items():
        cli("restore", sid, "--db-only", "--yes", "--no-safety")
        assert dump_hash(db) == expected, f"snapshot {sid} of a killed run did not restore exactly"

    # The next create works, verifies and restores.
    change(db, rnd, gen=999)
    expected = dump_hash(db)
    t0 = time.monotonic()
    sid = cli("create", "--no-commit").stdout.strip()
    final_runtime = time.monotonic() - t0
    cli("verify")
    make_other = sqlite3.connect(db)
    make_other.execute("DELETE FROM big")
    make_other.commit()
    make_other.close()
    cli("restore", sid, "--db-only", "--yes", "--no-safety")
    assert dump_hash(db) == expected
    cli("verify")

    # Locks of the killed processes are stale: an exclusive lock (prune, unlock) is not blocked by them.
    from snapkit.backends.local import LocalBackend
    from snapkit.store.lock import StoreLock

    with StoreLock(LocalBackend(store), exclusive=True, timeout=3):
        pass
    # The killed runs' scratch folders (temp packs, half-written) were removed by the runs after them;
    # the store never held a temp pack, only the backend's own temp files of a put cut short.
    assert not files(scratch(root)), sorted(files(scratch(root)))
    assert not any(n.split("/")[-1].startswith("pack-") for n in files(store))

    killed_visible = sum(1 for row in log if row[4] and row[5])
    leftovers = sorted(n for n in files(store) if ".tmp-" in n or n.startswith("tmp/"))
    elapsed = time.monotonic() - t_start
    with capsys.disabled():
        print(f"\n[crash] create run time {runtime:.2f}s (last one {final_runtime:.2f}s); {len(log)} runs, {real_kills} killed while running, "
              f"{killed_visible} killed runs visible (all verified), {len(visible)} visible in all; "
              f"{len(leftovers)} leftover temp files ({sum((store / n).stat().st_size for n in leftovers) >> 20} MiB); "
              f"{elapsed:.0f}s")
        for row in log:
            print("[crash]   run %2d %-5s %-8s hit=%-5s killed=%-5s visible=%s" % row)
    assert real_kills >= 10, log
    assert any(row[1] == "event" and row[4] for row in log), log


def test_leftovers_of_a_killed_create_are_cleaned_up_later(project, cli):
    store = project / "snapshots"
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "ignore the store")
    fill(project / "app.db", random.Random(5), rows=12_000)
    # WAL mode: snapkit copies the database into its private scratch folder first (rollback
    # mode reads it in place) — never into the store (docs/format.md).
    con = sqlite3.connect(project / "app.db")
    con.execute("PRAGMA journal_mode=WAL")
    con.close()
    cli("create", "--no-commit")
    change(project / "app.db", random.Random(6), gen=1)
    before_store = files(store)
    proc = start_create(project)
    # Kill it mid-run, while it streams its consistent copy of the database into chunks.
    assert wait_for(proc, lambda: scratch_files(project, "sqlite-"))
    assert kill(proc)  # at once: the copy is removed as soon as it has been chunked
    found = [n for n in scratch_files(project, "sqlite-") if n.endswith(".db")]  # not its -journal
    assert len(found) == 1, found
    [copy] = found
    folder = copy.split("/")[0]
    assert folder.startswith(f"{proc.pid}-") and copy.split("/")[1].startswith(f"sqlite-{proc.pid}-")
    assert stat.S_IMODE((scratch(project) / folder).stat().st_mode) == 0o700
    # The store got none of it: no database copy, no temp pack, no temp file.
    assert {n for n in files(store) - before_store if not n.startswith("locks/")} == set()
    assert not [n for n in files(store) if n.startswith("tmp/") or "sqlite-" in n or "pack-" in n]
    cli("create", "--no-commit")
    cli("verify")
    # The next snapkit process removed the dead one's scratch folder, and its stale lease.
    assert not (scratch(project) / folder).exists()
    assert files(scratch(project)) == set()
    assert not list((store / "locks").iterdir())
    leftovers = sorted(n for n in files(store) if ".tmp-" in n or n.startswith("tmp/"))
    assert leftovers == [], leftovers
