"""Damage one stored byte of each kind of store file; verify must name it, restore must refuse it.

Layout: snapshot A of database X, then a totally different database Y (other
tables, other random content) and a code change, snapshot B. A and B then share
no chunk and no delta base, so damage to one of A's objects must leave B
restorable byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import git, sqlite_dump

# ---------------------------------------------------------------------------- set-up


def add_blob_table(path: Path, seed: int, rows: int = 400, table: str = "blobs") -> None:
    rnd = random.Random(seed)
    con = sqlite3.connect(path)
    con.execute(f"CREATE TABLE {table}(id INTEGER PRIMARY KEY, label TEXT, data BLOB)")
    con.executemany(f"INSERT INTO {table} VALUES (?, ?, ?)",
                    [(i, f"row {seed}-{i}", rnd.randbytes(rnd.randint(500, 3000))) for i in range(rows)])
    con.commit()
    con.close()


def make_other_db(path: Path, seed: int) -> None:
    """A database that shares nothing with the app's: other schema, other random rows."""
    path.unlink(missing_ok=True)
    for suffix in ("-wal", "-shm", "-journal"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE events(id INTEGER PRIMARY KEY, kind TEXT, payload BLOB)")
    rnd = random.Random(seed)
    con.executemany("INSERT INTO events VALUES (?, ?, ?)",
                    [(i, rnd.choice(["login", "logout", "buy"]), rnd.randbytes(rnd.randint(200, 2500)))
                     for i in range(500)])
    con.commit()
    con.close()


def tree_state(root: Path) -> dict[str, str]:
    """Every file under root (relative name -> sha256), for 'nothing was written' checks."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def open_store(project: Path):
    """The project's store, unlocked in-process with the key file (to locate objects precisely).

    Without the local caches: it reads the store as it is, and leaves this machine's caches alone."""
    from snapkit.store.keys import KeySource, default_key_path
    from snapkit.store.repository import Store

    store = Store(project / "snapshots", use_cache=False)
    store.unlock(KeySource(key_file=default_key_path(store.id)))
    return store


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x20
    path.write_bytes(bytes(data))


class Two:
    """Snapshots A (database X) and B (database Y), with their .dump oracles."""

    def __init__(self, project: Path, cli):
        self.root = project
        self.cli = cli
        self.db = project / "app.db"
        git(project, "add", "-A")
        git(project, "commit", "-q", "-m", "ignore the store")
        add_blob_table(self.db, seed=1)
        self.dump_a = sqlite_dump(self.db)
        self.a = cli("create", "--no-commit").stdout.strip()
        self.packs_a = set(self.packs())
        self.index_a = set(self.indexes())
        (project / "app.py").write_text("print('v2')\n")
        git(project, "commit", "-q", "-am", "v2")
        make_other_db(self.db, seed=2)
        self.dump_b = sqlite_dump(self.db)
        self.b = cli("create", "--no-commit").stdout.strip()
        self.packs_b = set(self.packs()) - self.packs_a
        self.index_b = set(self.indexes()) - self.index_a
        assert self.a != self.b and self.packs_b and len(self.index_b) == 1 and len(self.index_a) == 1
        # The live database is a third state, so a restore that changes it is always seen.
        make_other_db(self.db, seed=3)
        self.live = sqlite_dump(self.db)
        assert len({self.dump_a, self.dump_b, self.live}) == 3
        self.cli("verify")

    @property
    def store(self) -> Path:
        return self.root / "snapshots"

    def packs(self) -> list[str]:
        return sorted(str(p.relative_to(self.store)) for p in (self.store / "packs").rglob("*") if p.is_file())

    def indexes(self) -> list[str]:
        return sorted(str(p.relative_to(self.store)) for p in (self.store / "index").iterdir())

    # -- helpers -----------------------------------------------------------------

    def verify(self) -> tuple[list[dict], str]:
        """Run `verify --json` (must exit 3) and plain `verify` (must exit 3); (problems, plain stderr)."""
        proc = self.cli("verify", "--json", ok=None)
        assert proc.returncode == 3, (proc.returncode, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr
        problems = json.loads(proc.stdout)["problems"]
        assert problems
        plain = self.cli("verify", ok=None)
        assert plain.returncode == 3, plain.stderr
        assert "Traceback" not in plain.stderr
        return problems, plain.stderr

    def restore_refused(self, sid: str, *extra: str) -> str:
        head = git(self.root, "rev-parse", "HEAD")
        proc = self.cli("restore", sid, "--db-only", "--yes", "--no-safety", *extra, ok=None)
        assert proc.returncode != 0, proc.stderr
        assert "Traceback" not in proc.stderr
        errors = [line for line in proc.stderr.splitlines() if line.startswith("snapkit: error:")]
        assert len(errors) == 1, proc.stderr
        assert len(proc.stderr.strip().splitlines()) <= 2, proc.stderr  # the error and at most a hint
        assert sqlite_dump(self.db) == self.live, "a refused restore changed the live database"
        assert git(self.root, "rev-parse", "HEAD") == head
        return proc.stderr

    def restores(self, sid: str, dump: str) -> None:
        self.cli("restore", sid, "--db-only", "--yes", "--no-safety")
        assert sqlite_dump(self.db) == dump
        make_other_db(self.db, seed=3)  # back to the live state for the next step
        assert sqlite_dump(self.db) == self.live

    def chunk_only_in(self, sid: str, other: str, layer: str = "database") -> tuple[str, int, int]:
        """(pack name, offset, length) of a chunk of `sid` that `other` does not use, nearest its pack's middle."""
        store = open_store(self.root)
        mine = store.load_manifest(sid)
        theirs = store.load_manifest(other)
        shared = {c for lay in theirs.layers for c in theirs.chunk_ids(lay)}
        best = None
        for cid in mine.chunk_ids(layer):
            if cid in shared:
                continue
            loc = store.lookup(cid)
            assert loc.depth == 0  # X and Y share nothing, so nothing is stored as a delta
            pack_id, off, length = loc.pack, loc.offset, loc.length
            name = f"packs/{pack_id.hex()[:2]}/{pack_id.hex()}"
            middle = (self.store / name).stat().st_size // 2
            score = abs(off + length // 2 - middle)
            if best is None or score < best[0]:
                best = (score, name, off, length, cid.hex())
        assert best is not None
        _, name, off, length, cid = best
        self.damaged_chunk = cid
        return name, off, length


@pytest.fixture
def two(project, cli) -> Two:
    return Two(project, cli)


def where(problem: dict) -> str:
    return " ".join(str(problem.get(k) or "") for k in ("snapshot", "layer", "chunk", "object", "message"))


# ---------------------------------------------------------------------------- packs


def test_damaged_pack_is_named_by_snapshot_layer_and_chunk(two):
    name, off, length = two.chunk_only_in(two.a, two.b)
    assert name in two.packs_a and name not in two.packs_b
    flip(two.store / name, off + length // 2)  # inside the ciphertext, well past the nonce
    problems, text = two.verify()
    assert {p["snapshot"] for p in problems} == {two.a}, problems
    hit = [p for p in problems if p["chunk"] and two.damaged_chunk.startswith(p["chunk"])]
    assert hit and hit[0]["layer"] == "database", problems
    assert two.a in text and "database" in text and hit[0]["chunk"] in text
    assert two.b not in text
    err = two.restore_refused(two.a)
    assert "damaged" in err or "integrity" in err.lower()
    # A full restore (database and code) refuses too, and moves neither the branch nor the database.
    two.restore_refused(two.a, "--force")
    proc = two.cli("restore", two.a, "--yes", "--no-safety", ok=None)
    assert proc.returncode == 3 and sqlite_dump(two.db) == two.live
    assert (two.root / "app.py").read_text() == "print('v2')\n"
    two.restores(two.b, two.dump_b)
    # Only A is affected: verify of B alone is clean.
    two.cli("verify", two.b)


def test_damaged_pack_refused_with_safety_snapshot_too(two):
    name, off, length = two.chunk_only_in(two.a, two.b)
    flip(two.store / name, off + length // 2)
    proc = two.cli("restore", two.a, "--db-only", "--yes", ok=None)
    assert proc.returncode == 3, proc.stderr
    assert sqlite_dump(two.db) == two.live
    # Whatever the restore did first (a safety snapshot), the store still verifies apart from A.
    problems, _ = two.verify()
    assert {p["snapshot"] for p in problems} == {two.a}


def test_damaged_last_chunk_of_code_layer_is_named(two):
    name, off, length = two.chunk_only_in(two.a, two.b, layer="code")
    flip(two.store / name, off + length - 3)  # in the GCM tag
    problems, _ = two.verify()
    assert [(p["snapshot"], p["layer"]) for p in problems] == [(two.a, "code")], problems
    two.restores(two.a, two.dump_a)  # the database layer of A is intact
    out = two.root / "code.tar"
    proc = two.cli("cat", two.a, "--layer", "code", "-o", str(out), ok=None)
    assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr
    assert not out.exists()
    two.cli("cat", two.b, "--layer", "code", "-o", str(out))
    assert out.exists()


def test_damaged_pack_header_is_detected(two):
    [name] = sorted(two.packs_a)
    flip(two.store / name, 0)
    problems, text = two.verify()
    assert name in text or any(name in where(p) for p in problems)


def test_damaged_pack_trailer_is_detected(two):
    [name] = sorted(two.packs_a)
    size = (two.store / name).stat().st_size
    flip(two.store / name, size - 20)  # inside the sealed trailer, before its 4-byte length
    problems, text = two.verify()
    assert name in text or any(name in where(p) for p in problems)


def test_missing_pack_is_named(two):
    [name] = sorted(two.packs_a)
    (two.store / name).unlink()
    problems, _ = two.verify()
    assert {p["snapshot"] for p in problems} == {two.a}
    assert all("missing" in p["message"] for p in problems), problems
    two.restore_refused(two.a)
    two.restores(two.b, two.dump_b)


# ---------------------------------------------------------------------------- index objects


@pytest.mark.parametrize("where_", ["middle", "header"])
def test_damaged_index_object_is_named(two, where_, isolated_home):
    """On a machine that has not merged the index object yet (its local caches removed)."""
    [name] = sorted(two.index_a)
    path = two.store / name
    flip(path, path.stat().st_size // 2 if where_ == "middle" else 0)
    shutil.rmtree(isolated_home / ".cache" / "snapkit")
    problems, text = two.verify()
    index_problems = [p for p in problems if p["object"] == name]
    assert index_problems and "index" in index_problems[0]["message"], problems
    assert name in text
    # Its chunks now read as missing: A is named, B is not.
    snaps = {p["snapshot"] for p in problems if p["snapshot"]}
    assert snaps == {two.a}, problems
    two.restore_refused(two.a)
    two.restores(two.b, two.dump_b)


def test_damaged_index_object_is_named_by_verify_on_this_machine(two):
    """verify reads the index objects again from the store, never from the local merged index
    (docs/cli.md, `snapkit verify`), so the machine that merged it names the damage too."""
    [name] = sorted(two.index_a)
    path = two.store / name
    flip(path, path.stat().st_size // 2)
    problems, text = two.verify()
    assert any(p["object"] == name and "index" in p["message"] for p in problems), problems
    assert name in text
    assert two.b not in text


# ---------------------------------------------------------------------------- manifests


@pytest.mark.parametrize("where_", ["middle", "header", "missing"])
def test_damaged_manifest_is_named(two, where_):
    path = two.store / "manifests" / two.a
    if where_ == "missing":
        path.unlink()
    else:
        flip(path, path.stat().st_size // 2 if where_ == "middle" else 1)
    problems, text = two.verify()
    assert [(p["snapshot"], p["object"]) for p in problems] == [(two.a, f"manifests/{two.a}")], problems
    assert two.a in text and "manifest" in text
    two.restore_refused(two.a)
    two.restores(two.b, two.dump_b)


def test_manifest_swapped_for_another_snapshots_is_detected(two):
    # Every byte is authentic, but it is B's manifest under A's name: bound to its name, so refused.
    (two.store / "manifests" / two.a).write_bytes((two.store / "manifests" / two.b).read_bytes())
    problems, _ = two.verify()
    assert {p["snapshot"] for p in problems} == {two.a}
    two.restore_refused(two.a)


# ---------------------------------------------------------------------------- catalog entries


def test_altered_catalog_entry_is_named(two):
    # Catalog entries are sealed (docs/format.md, "Catalog entry"): without the key, altering the
    # message means altering ciphertext.
    name = f"catalog/{two.a}~0"
    path = two.store / name
    assert sorted(p.name for p in (two.store / "catalog").iterdir()) == sorted([f"{two.a}~0", f"{two.b}~0"])
    flip(path, path.stat().st_size // 2)
    # Refused at once, though this machine's catalog cache holds the entry as it was (same size).
    err = two.restore_refused(two.a)
    assert "catalog" in err and name in err
    problems, out = two.verify()
    assert [(p["snapshot"], p["object"]) for p in problems] == [(two.a, name)], problems
    assert name in out
    two.restores(two.b, two.dump_b)


@pytest.mark.parametrize("payload", ["not json", "another snapshot's"])
def test_authentic_but_malformed_catalog_entry_is_named(two, payload):
    """Only a writer holding the key can make one (a buggy snapkit): named, never a traceback."""
    from snapkit.store import objects

    store = open_store(two.root)
    name = f"catalog/{two.a}~0"
    if payload == "not json":
        body = b"[not json"
    else:  # the entry of B, sealed under A's name: bound to the name, but it names B
        body = json.dumps({"id": two.b, "rev": 0, "manifest": "00" * 32,
                           "entry": {"id": two.b, "commit": "0" * 40}}).encode()
    (two.store / name).write_bytes(objects.seal(store.keys, objects.CATALOG, name, body))
    problems, out = two.verify()
    assert [(p["snapshot"], p["object"]) for p in problems] == [(two.a, name)], problems
    assert name in out
    assert name in two.restore_refused(two.a)
    # `list` shows the intact entries and names the damaged one (exit 3).
    listing = two.cli("list", ok=None)
    assert listing.returncode == 3 and name in listing.stderr, listing.stderr
    assert two.b in listing.stdout and two.a not in listing.stdout


# ---------------------------------------------------------------------------- key slots


def damage_slot(path: Path) -> None:
    text = path.read_text()
    slot = json.loads(text)
    wrapped = slot["wrapped"]
    mid = len(wrapped) // 2
    repl = "A" if wrapped[mid] != "A" else "B"
    damaged = wrapped[:mid] + repl + wrapped[mid + 1 :]
    new = text.replace(wrapped, damaged, 1)
    assert json.loads(new)["wrapped"] == damaged  # still valid JSON
    path.write_text(new)


def test_damaged_only_key_slot_fails_every_keyed_command_with_exit_3(two):
    [slot] = list((two.store / "keys").iterdir())
    damage_slot(slot)
    name = f"keys/{slot.name}"
    commands = [("verify",), ("verify", "--json"), ("restore", two.b, "--db-only", "--yes", "--no-safety"),
                ("create", "--no-commit"), ("cat", two.a, "--layer", "database", "-o", str(two.root / "out.db"))]
    # `list` and `status` need the key too: the catalog is sealed (docs/format.md).
    commands += [("list",), ("list", "--json"), ("status",), ("show", two.a), ("tag", two.a, "x")]
    before = tree_state(two.store)
    for args in commands:
        proc = two.cli(*args, ok=None)
        assert proc.returncode == 3, (args, proc.returncode, proc.stderr)
        assert "key slot" in proc.stderr and name in proc.stderr, (args, proc.stderr)
        assert "wrong" not in proc.stderr.lower(), (args, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert len([ln for ln in proc.stderr.splitlines() if ln.startswith("snapkit: error:")]) == 1
        assert proc.stdout == "", (args, proc.stdout)  # no snapshot listed, not even from a local cache
    assert sqlite_dump(two.db) == two.live
    assert not (two.root / "out.db").exists()
    assert tree_state(two.store) == before


def test_damaged_spare_key_slot_is_named_but_the_store_still_opens(app_repo, cli, isolated_home):
    key = isolated_home / "store.key"
    cli("init", "--db", "sqlite:///app.db", "--passphrase", "--key-file", str(key),
        env={"SNAPKIT_PASSPHRASE": "correct horse battery"})
    git(app_repo, "add", "-A")
    git(app_repo, "commit", "-q", "-m", "ignore the store")
    store = app_repo / "snapshots"
    slots = {json.loads(p.read_text())["kind"]: p for p in (store / "keys").iterdir()}
    assert set(slots) == {"keyfile", "passphrase"}
    dump = sqlite_dump(app_repo / "app.db")
    sid = cli("create", "--no-commit").stdout.strip()
    damage_slot(slots["passphrase"])
    proc = cli("verify", "--json", ok=None)
    assert proc.returncode == 3, proc.stderr
    problems = json.loads(proc.stdout)["problems"]
    assert [p["object"] for p in problems] == [f"keys/{slots['passphrase'].name}"], problems
    assert "key slot" in problems[0]["message"]
    # The key file slot still opens the store; no snapshot is affected.
    make_other_db(app_repo / "app.db", seed=9)
    cli("restore", sid, "--db-only", "--yes", "--no-safety")
    assert sqlite_dump(app_repo / "app.db") == dump
    # With only the passphrase, the damaged slot is the only way in: exit 3, naming it.
    proc = cli("verify", ok=None, env={"SNAPKIT_PASSPHRASE": "correct horse battery",
                                        "SNAPKIT_KEY_FILE": str(isolated_home / "nothing.key")})
    assert proc.returncode == 3, proc.stderr
    assert slots["passphrase"].name in proc.stderr and "wrong" not in proc.stderr.lower()


# ---------------------------------------------------------------------------- wrong key


def test_wrong_key_is_exit_1_and_writes_nothing(two, isolated_home):
    from snapkit.store.keys import default_key_path

    store_id = json.loads((two.store / "config").read_text())["id"]
    key_path = default_key_path(store_id)
    assert key_path.exists() and str(key_path).startswith(str(isolated_home))
    key_path.write_text("snapkit-key-v1 " + os.urandom(32).hex() + "\n")
    (two.root / "app.py").write_text("print('v3')\n")  # dirty: `create MSG` would commit
    before_store = tree_state(two.store)
    caches = isolated_home / ".cache" / "snapkit"
    before_caches = tree_state(caches)
    head = git(two.root, "rev-parse", "HEAD")
    # `list` and `status` need the key as well (the catalog is sealed): the same one-line error.
    for args in [("create", "--no-commit"), ("create", "a message"), ("verify",), ("verify", "--json"),
                 ("restore", two.a, "--db-only", "--yes"), ("restore", two.b, "--yes", "--force"),
                 ("cat", two.a, "--layer", "database", "-o", str(two.root / "out.db")),
                 ("list",), ("list", "--json"), ("status",), ("status", "--json"), ("show", two.a),
                 ("pin", two.a)]:
        proc = two.cli(*args, ok=None)
        assert proc.returncode == 1, (args, proc.returncode, proc.stderr)
        assert "wrong key" in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) <= 2, proc.stderr  # the error and at most a hint
        assert two.a not in proc.stdout and two.b not in proc.stdout, (args, proc.stdout)
    assert tree_state(two.store) == before_store
    assert tree_state(caches) == before_caches  # nor the local caches (verify.json, catalog, index)
    assert git(two.root, "rev-parse", "HEAD") == head
    assert (two.root / "app.py").read_text() == "print('v3')\n"
    assert sqlite_dump(two.db) == two.live
    assert not (two.root / "out.db").exists()
    # A wrong passphrase is the same kind of error.
    proc = two.cli("verify", ok=None, env={"SNAPKIT_KEY_FILE": str(isolated_home / "none.key"),
                                           "SNAPKIT_PASSPHRASE": "not the passphrase"})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------- store config


def test_damaged_store_config_is_an_integrity_problem(two):
    path = two.store / "config"
    text = path.read_text()
    store_id = json.loads(text)["id"]
    damaged = store_id[:5] + ("0" if store_id[5] != "0" else "1") + store_id[6:]
    path.write_text(text.replace(store_id, damaged))
    proc = two.cli("verify", ok=None)
    assert proc.returncode == 3, proc.stderr
    assert "config" in proc.stderr
