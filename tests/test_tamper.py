"""Someone who can write to the store but has no key: every change is detected, named, and harmless.

docs/format.md ("Objects", "Catalog entries", "Read and write ordering",
"Locks are leases", "Threat model") is the contract. Each test tampers with
the store files directly, then checks with independent oracles (`git
rev-parse`, the sqlite3 shell's `.dump`, file bytes) that a refusing command
exits with the documented code, prints exactly one `snapkit: error:` line
naming the object, and changed nothing in the work tree or the store.

The kill tests (SIGKILL at random moments) are in tests/test_kills.py; they
use the helpers defined here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Cli, git, sqlite_dump

# ---------------------------------------------------------------------------- environment


@pytest.fixture(autouse=True)
def cache_home(isolated_home, monkeypatch) -> Path:
    """The derived caches' folder ($XDG_CACHE_HOME), inside this test's tmp dir (as conftest sets it)."""
    cache = isolated_home / ".cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return cache


# ---------------------------------------------------------------------------- oracles


def work_tree_state(root: Path) -> dict:
    """HEAD, the branch, `git status`, and the bytes of every work-tree file (the store and .git aside)."""
    files = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if rel.parts[0] in (".git", "snapshots") or not p.is_file():
            continue
        files[str(rel)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return {"head": git(root, "rev-parse", "HEAD"), "branch": git(root, "symbolic-ref", "-q", "HEAD"),
            "status": git(root, "status", "--porcelain", "--untracked-files=all"), "files": files}


def store_listing(store: Path, *, lease_folders: bool = False) -> dict:
    """Every file and folder of the store: kind, size, mtime (ns) and, for files, a SHA-256.

    Without `lease_folders`, the mtimes of `locks/` and `tmp/` are left out: a
    command's own lease appears and disappears there (written via a temp file).
    """
    out = {}
    for p in [store, *sorted(store.rglob("*"))]:
        rel = str(p.relative_to(store))
        st = p.lstat()
        if stat.S_ISDIR(st.st_mode):
            keep_mtime = lease_folders or rel not in ("locks", "tmp")
            out[rel + "/"] = ("dir", st.st_mtime_ns if keep_mtime else None)
        else:
            out[rel] = ("file", st.st_size, st.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x20
    path.write_bytes(bytes(data))


def swap(a: Path, b: Path) -> None:
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("snapkit: error:")]


# ---------------------------------------------------------------------------- a project with snapshots


@dataclass
class Snap:
    id: str
    commit: str
    dump: str
    app_py: str


class Lab:
    """A project whose snapshots each have their own commit (app.py) and database content."""

    def __init__(self, project: Path, cli: Cli):
        self.root = project
        self.cli = cli
        self.db = project / "app.db"
        self.store = project / "snapshots"
        self.snaps: dict[str, Snap] = {}
        git(project, "add", "-A")
        git(project, "commit", "-q", "-m", "ignore the store")

    def change(self, label: str) -> None:
        """A new commit and a new database state, both carrying `label`."""
        (self.root / "app.py").write_text(f"print({label!r})\n")
        git(self.root, "commit", "-q", "-am", label)
        con = sqlite3.connect(self.db)
        con.execute("CREATE TABLE IF NOT EXISTS marks(id INTEGER PRIMARY KEY, label TEXT)")
        con.execute("INSERT INTO marks(label) VALUES (?)", (label,))
        con.execute("UPDATE users SET email = ? WHERE id = 1", (f"{label}@example.com",))
        con.commit()
        con.close()

    def snapshot(self, label: str) -> str:
        self.change(label)
        snap = Snap("", git(self.root, "rev-parse", "HEAD"), sqlite_dump(self.db),
                    (self.root / "app.py").read_text())
        snap.id = self.cli("create", "--no-commit", "-q").stdout.strip()
        assert snap.id and snap.id not in self.snaps
        self.snaps[snap.id] = snap
        return snap.id

    def go_live(self) -> None:
        """Move the work tree and database to a state no snapshot holds: any restore is visible."""
        self.change("live")
        assert sqlite_dump(self.db) not in {s.dump for s in self.snaps.values()}

    def entry(self, sid: str, rev: int = 0) -> Path:
        return self.store / "catalog" / f"{sid}~{rev}"

    def manifest(self, sid: str) -> Path:
        return self.store / "manifests" / sid

    def catalog_names(self) -> list[str]:
        return sorted(p.name for p in (self.store / "catalog").iterdir())

    def listed(self) -> list[str]:
        return [e["id"] for e in json.loads(self.cli("list", "--json").stdout)["snapshots"]]

    # -- expectations ----------------------------------------------------------

    def refused(self, *args: str, code: int = 3, names: tuple[str, ...] = (), env: dict | None = None,
                catalog_unchanged: bool = True) -> str:
        """`args` fails with `code`, one error line naming every one of `names`, and changes nothing.

        `catalog_unchanged=False` where a restore may take its safety snapshot before it
        meets the damage (chunks are authenticated as they stream, after that snapshot).
        """
        tree, catalog = work_tree_state(self.root), self.catalog_names()
        proc = self.cli(*args, ok=None, env=env)
        assert proc.returncode == code, (args, proc.returncode, proc.stderr)
        assert "Traceback" not in proc.stderr, proc.stderr
        errors = error_lines(proc.stderr)
        assert len(errors) == 1, (args, proc.stderr)
        for name in names:
            assert name in errors[0], (args, name, errors[0])
        assert work_tree_state(self.root) == tree, f"snapkit {' '.join(args)} changed the work tree"
        if catalog_unchanged:
            assert self.catalog_names() == catalog, f"snapkit {' '.join(args)} wrote a catalog entry"
        return errors[0]

    def list_reports(self, name: str, shown: list[str]) -> None:
        """`list` shows the intact snapshots, then exits 3 naming the damaged entry; `status` is unhealthy."""
        for args in (("list",), ("list", "--json")):
            proc = self.cli(*args, ok=None)
            assert proc.returncode == 3, (args, proc.returncode, proc.stderr)
            assert "Traceback" not in proc.stderr
            errors = error_lines(proc.stderr)
            assert len(errors) == 1 and name in errors[0], proc.stderr
        assert [e["id"] for e in json.loads(proc.stdout)["snapshots"]] == shown
        proc = self.cli("status", ok=None)
        assert proc.returncode == 4 and "damaged" in proc.stdout + proc.stderr, (proc.returncode, proc.stdout)

    def verify_fails(self, *names: str) -> list[dict]:
        """`verify` and `verify --json` exit 3 and name every one of `names`; returns the problems."""
        proc = self.cli("verify", ok=None)
        assert proc.returncode == 3, (proc.returncode, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr, proc.stderr
        for name in names:
            assert name in proc.stderr, (name, proc.stderr)
        proc = self.cli("verify", "--json", ok=None)
        assert proc.returncode == 3, proc.stderr
        problems = json.loads(proc.stdout)["problems"]
        assert problems
        return problems

    def restores(self, sid: str, *extra: str) -> None:
        """`restore sid --yes` puts back its commit, its app.py and its database."""
        snap = self.snaps[sid]
        self.cli("restore", sid, "--yes", "--no-safety", *extra)
        assert sqlite_dump(self.db) == snap.dump
        if "--db-only" not in extra:
            assert git(self.root, "rev-parse", "HEAD") == snap.commit
            assert (self.root / "app.py").read_text() == snap.app_py

    def cat_matches(self, sid: str, out: Path) -> None:
        out.unlink(missing_ok=True)
        self.cli("cat", sid, "--layer", "database", "-o", str(out))
        assert sqlite_dump(out) == self.snaps[sid].dump


@pytest.fixture
def lab(project, cli) -> Lab:
    return Lab(project, cli)


def open_store(project: Path):
    """The project's store, unlocked in-process with the key file, to locate objects precisely."""
    from snapkit.store.keys import KeySource, default_key_path
    from snapkit.store.repository import Store

    store = Store(project / "snapshots", use_cache=False)
    store.unlock(KeySource(key_file=default_key_path(store.id)))
    return store


# ---------------------------------------------------------------------------- 1, 2: catalog entries


def refuses_everything_about(lab: Lab, sid: str, tmp_path: Path, *also_named: str) -> None:
    name = f"catalog/{sid}~0"
    out = tmp_path / "code.tar"
    lab.refused("show", sid, names=(name,))
    lab.refused("restore", sid, "--yes", names=(name,))
    lab.refused("restore", sid, "--db-only", "--yes", names=(name,))
    lab.refused("cat", sid, "--layer", "code", "-o", str(out), names=(name,))
    assert not out.exists() and not list(tmp_path.glob(".code.tar*"))
    problems = lab.verify_fails(name, *also_named)
    assert name in {p["object"] for p in problems}, problems


def test_swapped_catalog_entries_are_refused(lab, tmp_path):
    s1, s2 = lab.snapshot("one"), lab.snapshot("two")
    lab.go_live()
    swap(lab.entry(s1), lab.entry(s2))
    refuses_everything_about(lab, s2, tmp_path, f"catalog/{s1}~0")
    lab.refused("restore", s1, "--yes", names=(f"catalog/{s1}~0",))


@pytest.mark.parametrize("how", ["copied", "copied-as-next-revision", "flip-middle", "flip-header",
                                 "flip-last", "truncated"])
def test_altered_catalog_entry_is_refused(lab, tmp_path, how):
    s1, s2 = lab.snapshot("one"), lab.snapshot("two")
    lab.go_live()
    path = lab.entry(s2)
    if how == "copied":  # authentic bytes, but another snapshot's entry under S2's name
        path.write_bytes(lab.entry(s1).read_bytes())
    elif how == "copied-as-next-revision":  # S1's entry put where S2's next revision goes
        shutil.copyfile(lab.entry(s1), lab.entry(s2, 1))
        path = lab.entry(s2, 1)
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:-1])
    else:
        flip(path, {"flip-middle": path.stat().st_size // 2, "flip-header": 20,
                    "flip-last": path.stat().st_size - 1}[how])
    name = str(path.relative_to(lab.store))
    out = tmp_path / "code.tar"
    lab.refused("show", s2, names=(name,))
    lab.refused("restore", s2, "--yes", names=(name,))
    lab.refused("cat", s2, "--layer", "code", "-o", str(out), names=(name,))
    assert not out.exists()
    problems = lab.verify_fails(name)
    assert [(p["snapshot"], p["object"]) for p in problems] == [(s2, name)], problems
    lab.list_reports(name, shown=[s1])
    # The other snapshot is untouched.
    lab.restores(s1)


# ---------------------------------------------------------------------------- 3: replayed revision


def test_replayed_older_catalog_revision_is_reported(lab):
    s1, s2 = lab.snapshot("one"), lab.snapshot("two")
    rev0 = lab.entry(s2).read_bytes()
    lab.cli("tag", s2, "x")
    assert lab.catalog_names() == sorted([f"{s1}~0", f"{s2}~1"])
    assert "x" in json.loads(lab.cli("show", s2, "--json").stdout)["tags"]  # this machine saw revision 1
    lab.entry(s2, 1).unlink()
    lab.entry(s2).write_bytes(rev0)  # the attacker puts the old revision back
    name = f"catalog/{s2}~0"
    err = lab.refused("show", s2, names=(name,))
    assert "revision" in err, err
    lab.refused("restore", s2, "--db-only", "--yes", names=(name,))
    problems = lab.verify_fails(name)
    assert [(p["snapshot"], p["object"]) for p in problems] == [(s2, name)], problems
    lab.list_reports(name, shown=[s1])  # the replayed entry is not believed, and said so
    lab.restores(s1, "--db-only")


# ---------------------------------------------------------------------------- 4: manifests


@pytest.mark.parametrize("how", ["swapped", "flip-middle", "flip-header", "other-snapshots"])
def test_tampered_manifest_is_refused_before_anything_changes(lab, tmp_path, how):
    s1, s2 = lab.snapshot("one"), lab.snapshot("two")
    lab.go_live()
    path = lab.manifest(s2)
    if how == "swapped":
        swap(lab.manifest(s1), path)
    elif how == "other-snapshots":
        path.write_bytes(lab.manifest(s1).read_bytes())
    else:
        flip(path, path.stat().st_size // 2 if how == "flip-middle" else 20)
    err = lab.refused("restore", s2, "--yes", names=(s2,))
    assert "manifest" in err, err
    lab.refused("restore", s2, "--db-only", "--yes", names=(s2,))
    lab.refused("show", s2, names=(s2,))
    out = tmp_path / "db"
    lab.refused("cat", s2, "-o", str(out), names=(s2,))
    assert not out.exists()
    problems = lab.verify_fails(f"manifests/{s2}")
    named = {(p["snapshot"], p["object"]) for p in problems}
    assert (s2, f"manifests/{s2}") in named, problems
    if how == "swapped":
        assert named == {(s1, f"manifests/{s1}"), (s2, f"manifests/{s2}")}, problems
    else:
        assert named == {(s2, f"manifests/{s2}")}, problems
        lab.restores(s1)


# ---------------------------------------------------------------------------- 5: @N and rollback


def test_damaged_newest_entry_stops_at_refs_and_rollback(lab, tmp_path):
    s1, s2, s3 = (lab.snapshot(x) for x in ("one", "two", "three"))
    lab.go_live()
    flip(lab.entry(s3), lab.entry(s3).stat().st_size // 2)
    name = f"catalog/{s3}~0"
    # @0 must not silently become s2, nor rollback 1 step back.
    lab.refused("restore", "@0", "--yes", names=(name,))
    lab.refused("restore", "@0", "--db-only", "--yes", names=(name,))
    lab.refused("rollback", "1", "--yes", names=(name,))
    lab.refused("rollback", "2", "--db-only", "--yes", names=(name,))
    lab.refused("show", "@0", names=(name,))
    # @1 / @2: the damaged entry is newer than any answer, so what @N counts is unknown: refused too.
    lab.refused("restore", "@1", "--yes", names=(name,))
    lab.refused("restore", "@2", "--yes", names=(name,))
    lab.refused("restore", "@3", "--yes", names=(name,))
    # An explicit id is not a count: the intact snapshots still restore by id.
    lab.list_reports(name, shown=[s2, s1])
    lab.restores(s1)
    lab.restores(s2, "--db-only")


# ---------------------------------------------------------------------------- 6: packs and index objects


class Apart:
    """Snapshot A, then B of a database that shares nothing with A's (so A needs none of B's chunks)."""

    def __init__(self, lab: Lab):
        self.lab = lab
        self.packs0 = self.objects("packs")
        self.index0 = self.objects("index")
        self.a = lab.snapshot("a")
        self.packs_a = self.objects("packs") - self.packs0
        self.index_a = self.objects("index") - self.index0
        self.replace_db(seed=2)
        self.b = lab.snapshot("b")
        self.packs_b = self.objects("packs") - self.packs_a - self.packs0
        self.index_b = self.objects("index") - self.index_a - self.index0
        assert len(self.index_a) == 1 and len(self.index_b) == 1 and self.packs_a and self.packs_b
        lab.go_live()
        lab.cli("verify")

    def objects(self, folder: str) -> set[str]:
        base = self.lab.store / folder
        return {str(p.relative_to(self.lab.store)) for p in base.rglob("*") if p.is_file()}

    def replace_db(self, seed: int) -> None:
        import random

        db = self.lab.db
        db.unlink()
        con = sqlite3.connect(db)
        con.execute("CREATE TABLE users(id INTEGER PRIMARY KEY, email TEXT)")  # what change() updates
        con.execute("CREATE TABLE events(id INTEGER PRIMARY KEY, payload BLOB)")
        rnd = random.Random(seed)
        con.executemany("INSERT INTO events VALUES (?, ?)", [(i, rnd.randbytes(rnd.randint(200, 2500)))
                                                              for i in range(400)])
        con.execute("INSERT INTO users VALUES (1, 'x')")
        con.commit()
        con.close()

    def chunk_of_a(self, layer: str = "database") -> tuple[str, int, int, str]:
        """(pack, offset, length, chunk id hex) of a chunk of A's layer, in A's own packs, that B
        needs neither as a chunk nor as a delta base."""
        from snapkit.store.packs import pack_name

        store = open_store(self.lab.root)
        try:
            needed_by_b = set()
            b = store.load_manifest(self.b)
            for lay in b.layers:
                for cid in b.chunk_ids(lay):
                    while cid is not None and cid not in needed_by_b:
                        needed_by_b.add(cid)
                        loc = store.lookup(cid)
                        cid = loc.base if loc is not None else None
            for cid in store.load_manifest(self.a).chunk_ids(layer):
                loc = store.lookup(cid)
                if (loc is not None and cid not in needed_by_b and pack_name(loc.pack) in self.packs_a
                        and loc.length > 64):
                    return pack_name(loc.pack), loc.offset, loc.length, cid.hex()
        finally:
            store.close()
        raise AssertionError("every chunk of A is needed by B")


def test_damaged_chunk_is_named_by_snapshot_layer_and_chunk(lab, tmp_path):
    two = Apart(lab)
    pack, off, length, cid = two.chunk_of_a()
    flip(lab.store / pack, off + length // 2)
    problems = lab.verify_fails(two.a, "database", cid[:16])
    hit = [p for p in problems if p["chunk"] and cid.startswith(p["chunk"])]
    assert hit and hit[0]["snapshot"] == two.a and hit[0]["layer"] == "database", problems
    assert {p["snapshot"] for p in problems} == {two.a}, problems
    err = lab.refused("restore", two.a, "--yes", names=(cid[:16],), catalog_unchanged=False)
    lab.refused("cat", two.a, "-o", str(tmp_path / "a.db"), names=(cid[:16],))
    assert "damaged" in err
    lab.restores(two.b)


def test_damaged_pack_trailer_names_the_pack(lab):
    two = Apart(lab)
    [pack] = sorted(p for p in two.packs_a if (lab.store / p).stat().st_size > 100)[:1]
    flip(lab.store / pack, (lab.store / pack).stat().st_size - 20)  # in the sealed trailer
    problems = lab.verify_fails(pack)
    assert any(p["object"] == pack for p in problems), problems


def test_damaged_index_object_costs_only_its_snapshots_on_a_fresh_machine(lab, cache_home, tmp_path):
    two = Apart(lab)
    [name] = sorted(two.index_b)  # B's own index object: A needs none of its records
    flip(lab.store / name, (lab.store / name).stat().st_size // 2)
    shutil.rmtree(cache_home / "snapkit")  # a fresh machine has only the store
    problems = lab.verify_fails(name, two.b)
    assert any(p["object"] == name for p in problems), problems
    assert {p["snapshot"] for p in problems if p["snapshot"]} == {two.b}, problems
    assert two.a not in lab.cli("verify", ok=None).stderr
    lab.refused("restore", two.b, "--db-only", "--yes", catalog_unchanged=False)
    lab.refused("cat", two.b, "-o", str(tmp_path / "b.db"))
    assert not (tmp_path / "b.db").exists()
    lab.cat_matches(two.a, tmp_path / "a.db")
    lab.restores(two.a)


def test_damaged_index_object_is_named_by_verify_on_this_machine(lab):
    two = Apart(lab)
    [name] = sorted(two.index_b)
    flip(lab.store / name, (lab.store / name).stat().st_size // 2)
    # verify checks the store itself, not the caches (ops/verify.py, docs/cli.md "verify").
    problems = lab.verify_fails(name)
    assert any(p["object"] == name for p in problems), problems


# ---------------------------------------------------------------------------- 7: private files


def modes_under(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)) or ".": oct(stat.S_IMODE(p.lstat().st_mode))
            for p in [root, *root.rglob("*")]}


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o000])
def test_store_cache_and_key_file_are_private_whatever_the_umask(app_repo, cli, cache_home, umask):
    old = os.umask(umask)
    try:
        cli("init", "--db", "sqlite:///app.db")
        git(app_repo, "add", "-A")
        git(app_repo, "commit", "-q", "-m", "ignore the store")
        sid = cli("create", "--no-commit", "-q").stdout.strip()
        (app_repo / "app.py").write_text("print('v2')\n")
        git(app_repo, "commit", "-q", "-am", "v2")
        cli("create", "--no-commit", "-q")
        cli("tag", sid, "kept")
        cli("verify")
    finally:
        os.umask(old)
    store = app_repo / "snapshots"
    store_id = json.loads((store / "config").read_text())["id"]
    wrong = {}
    for root in (store, cache_home / "snapkit"):
        for rel, mode in modes_under(root).items():
            want = "0o700" if (root / rel).is_dir() else "0o600"
            if mode != want:
                wrong[f"{root.name}/{rel}"] = mode
    key = app_repo.parent / "home" / ".config" / "snapkit" / "keys" / f"{store_id}.key"
    assert key.exists()
    if oct(stat.S_IMODE(key.stat().st_mode)) != "0o600":
        wrong[str(key)] = oct(stat.S_IMODE(key.stat().st_mode))
    if oct(stat.S_IMODE(key.parent.stat().st_mode)) != "0o700":
        wrong[str(key.parent)] = oct(stat.S_IMODE(key.parent.stat().st_mode))
    assert (cache_home / "snapkit" / store_id).is_dir()
    assert not wrong, wrong


# ---------------------------------------------------------------------------- 8: read-only commands


def other_store_key(tmp_path: Path) -> Path:
    """A key file of another store, made by `snapkit init` in another repository."""
    other = tmp_path / "other"
    other.mkdir()
    git(other, "init", "-q", "-b", "main")
    sqlite3.connect(other / "o.db").execute("CREATE TABLE t(x)").connection.close()
    key = tmp_path / "other.key"
    Cli(other)("init", "--db", "sqlite:///o.db", "--key-file", str(key))
    assert key.read_text().startswith("snapkit-key-v1 ")
    return key


def test_read_only_commands_never_write_to_the_store(lab, tmp_path):
    s1 = lab.snapshot("one")
    lab.snapshot("two")
    lab.go_live()
    (lab.root / "app.py").write_text("print('uncommitted')\n")  # dirty: a rollback is refused
    wrong_key = other_store_key(tmp_path)
    lab.cli("key", "add", "--passphrase", env={"SNAPKIT_NEW_PASSPHRASE": "the right one"})
    before = store_listing(lab.store)
    ok = [("list",), ("list", "--json"), ("show", "@0"), ("show", s1, "--json"), ("verify",),
          ("verify", "--json", s1), ("status",), ("restore", "@1", "--dry-run"),
          ("rollback", "1", "--dry-run"),
          ("cat", "@0", "--layer", "database", "-o", str(tmp_path / "out.db")),
          ("cat", "@1", "--layer", "code", "-o", str(tmp_path / "out.tar")), ("key", "list")]
    for args in ok:
        proc = lab.cli(*args, ok=None)
        assert proc.returncode == 0, (args, proc.returncode, proc.stderr)
    assert sqlite_dump(tmp_path / "out.db") == lab.snaps[lab.listed()[0]].dump
    lab.refused("rollback", "1", "--yes", code=1, names=("app.py",))
    lab.refused("restore", "@1", "--yes", code=1, names=("app.py",))
    # A wrong passphrase: the store's key file is moved away (it is outside the store).
    from snapkit.store.keys import default_key_path

    key_file = default_key_path(json.loads((lab.store / "config").read_text())["id"])
    for env in ({"SNAPKIT_KEY_FILE": str(wrong_key)}, {"SNAPKIT_PASSPHRASE": "not it"}):
        if "SNAPKIT_PASSPHRASE" in env:
            key_file.rename(tmp_path / "moved.key")
        commands = [("list",), ("show", "@0"), ("verify",), ("cat", "@0", "-o", str(tmp_path / "x")),
                    ("restore", "@1", "--db-only", "--yes"), ("create", "--no-commit")]
        if "SNAPKIT_KEY_FILE" in env:  # (each passphrase try runs scrypt at full cost: keep that list short)
            commands += [("status",), ("tag", "@0", "t"), ("rollback", "--yes"), ("show", "@1")]
        for args in commands:
            proc = lab.cli(*args, ok=None, env=env)
            assert proc.returncode == 1, (env, args, proc.returncode, proc.stderr)
            assert "Traceback" not in proc.stderr and len(error_lines(proc.stderr)) == 1, proc.stderr
            assert "wrong" in error_lines(proc.stderr)[0], (env, args, proc.stderr)
    (tmp_path / "moved.key").rename(key_file)
    lab.cli("show", "@0")
    assert not (tmp_path / "x").exists()
    after = store_listing(lab.store)
    assert after == before, {k: (before.get(k), after.get(k)) for k in set(before) | set(after)
                             if before.get(k) != after.get(k)}
    assert not list((lab.store / "locks").iterdir())
    assert not list((lab.store / "tmp").iterdir())


# ---------------------------------------------------------------------------- 9: a read-only store


def _ro_runner(store: Path):
    """argv prefix that runs a command with `store` bind-mounted read-only in a private mount namespace."""
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(store)]


def test_read_only_store_serves_readers_and_refuses_writers(lab, tmp_path):
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1): cannot make the store read-only for root")
    s1 = lab.snapshot("one")
    s2 = lab.snapshot("two")
    lab.go_live()
    runner = _ro_runner(lab.store)
    probe = subprocess.run([*runner, "sh", "-c", f'touch "{lab.store}/probe"'],
                           capture_output=True, text=True)
    if probe.returncode == 0 or "Read-only" not in probe.stderr:
        (lab.store / "probe").unlink(missing_ok=True)
        pytest.skip(f"cannot bind-mount the store read-only here: {probe.stderr.strip()[:200]}")
    before = store_listing(lab.store, lease_folders=True)

    def ro(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*runner, sys.executable, "-m", "snapkit", *args], cwd=lab.root,
                              capture_output=True, text=True, env=dict(os.environ), timeout=120)

    for args in [("list",), ("show", "@0"), ("verify",), ("status",),
                 ("cat", s1, "-o", str(tmp_path / "s1.db")),
                 ("cat", "@0", "--layer", "code", "-o", str(tmp_path / "c"))]:
        proc = ro(*args)
        assert proc.returncode == 0, (args, proc.returncode, proc.stderr)
        assert "Traceback" not in proc.stderr
    assert sqlite_dump(tmp_path / "s1.db") == lab.snaps[s1].dump
    proc = ro("restore", s1, "--db-only", "--yes", "--no-safety")
    assert proc.returncode == 0, proc.stderr
    assert sqlite_dump(lab.db) == lab.snaps[s1].dump
    # With a safety snapshot (the default), the safety snapshot cannot be written: the restore
    # refuses cleanly before the database is touched.
    tree = work_tree_state(lab.root)
    proc = ro("restore", s2, "--db-only", "--yes")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and len(error_lines(proc.stderr)) == 1
    assert "read-only" in error_lines(proc.stderr)[0]
    assert work_tree_state(lab.root) == tree
    for args in [("create", "--no-commit"), ("tag", s1, "x")]:
        proc = ro(*args)
        assert proc.returncode == 1, (args, proc.returncode, proc.stderr)
        assert "Traceback" not in proc.stderr, proc.stderr
        errors = error_lines(proc.stderr)
        assert len(errors) == 1 and "read-only" in errors[0], proc.stderr
    assert store_listing(lab.store, lease_folders=True) == before
