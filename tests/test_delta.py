"""Delta chunks (docs/format.md): a chain restores exactly, and damage to a base is named and refused."""

from __future__ import annotations

import json
import sqlite3

from tests.conftest import git, sqlite_dump
from tests.test_corruption import flip, open_store
from snapkit.store import compress


def _grow(db, rows: int = 3000) -> None:
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE IF NOT EXISTS notes(id INTEGER PRIMARY KEY, body TEXT)")
    con.executemany("INSERT INTO notes(body) VALUES (?)", [(f"note {i} " + "x" * 300,) for i in range(rows)])
    con.commit()
    con.close()


def _touch(db, i: int) -> None:
    con = sqlite3.connect(db)
    con.execute("UPDATE notes SET body = ? WHERE id % 50 = ?", (f"edited {i}", i))
    con.commit()
    con.close()


def _delta_chunks(store, sid: str) -> list[tuple[bytes, bytes]]:
    """(chunk id, base id) of the database layer's delta chunks."""
    from snapkit.store.repository import pack_name

    manifest = store.load_manifest(sid)
    out = []
    for cid in manifest.chunk_ids("database"):
        pack_id, off, length, _size, depth = store.lookup(cid)
        if depth:
            with open(store.backend.path(pack_name(pack_id)), "rb") as f:
                f.seek(off)
                payload = store.keys.open(cid, f.read(length))
            out.append((cid, compress.delta_base(payload)))
    return out


def test_a_chain_of_changes_restores_every_snapshot_exactly(project, cli):
    db = project / "app.db"
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "store ignored")
    _grow(db)
    dumps = {}
    for i in range(8):  # longer than the maximum delta depth (5)
        _touch(db, i)
        sid = cli("create", "--no-commit").stdout.strip()
        dumps[sid] = sqlite_dump(db)
    store = open_store(project)
    depths = [store.lookup(c)[4] for sid in dumps for c in store.load_manifest(sid).chunk_ids("database")]
    assert max(depths) >= 2 and max(depths) <= 5, depths
    for sid, expected in dumps.items():
        target = project / f"r-{sid}.db"
        cli("restore", sid, "--to-url", f"sqlite:///{target}", "--yes")
        assert sqlite_dump(target) == expected
    assert cli("verify").returncode == 0


def test_damaged_delta_base_is_named_and_the_dependent_snapshot_refuses(project, cli):
    db = project / "app.db"
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "store ignored")
    _grow(db)
    first = cli("create", "--no-commit").stdout.strip()
    _touch(db, 1)
    second = cli("create", "--no-commit").stdout.strip()
    store = open_store(project)
    deltas = _delta_chunks(store, second)
    assert deltas, "the second snapshot should hold delta chunks"
    cid, base = deltas[0]
    from snapkit.store.repository import pack_name

    pack_id, off, length, _, _ = store.lookup(base)
    flip(store.backend.path(pack_name(pack_id)), off + length // 2)
    check = cli("verify", "--json", ok=None)
    assert check.returncode == 3
    problems = json.loads(check.stdout)["problems"]
    named = {(p["snapshot"], p["layer"]) for p in problems}
    assert (first, "database") in named and (second, "database") in named
    before = sqlite_dump(db)
    proc = cli("restore", second, "--db-only", "--yes", "--no-safety", ok=None)
    assert proc.returncode == 3 and proc.stderr.startswith("snapkit: error: ")
    assert sqlite_dump(db) == before
