"""The CLI contract (SPEC §2, §3, §5): errors, exit codes, JSON output, files written.

Every check uses an independent oracle: exit codes, the shape of stderr, the git
CLI, the sqlite3 shell, hashes of the files on disk. Read-only invocations are
run side by side (`run_many`) to keep the suite fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import sqlite3
import stat
import subprocess
import sys
import tarfile
import threading
import time
from importlib import metadata
from pathlib import Path

import pytest

from snapkit.cli import render
from tests.conftest import Cli, git, make_app_db, sqlite_dump

# ---------------------------------------------------------------- helpers (also used by the other CLI test files)


def assert_error(proc: subprocess.CompletedProcess, code: int = 1, *needles: str, hint: str | None = None) -> str:
    """Exit `code`; stderr is `snapkit: error: …` plus an optional `hint: …` line; no traceback.

    Returns the message (first line without the prefix)."""
    err = proc.stderr
    assert proc.returncode == code, f"{proc.args}: exit {proc.returncode}, expected {code}\nstderr:\n{err}"
    assert "Traceback" not in err, err
    lines = err.rstrip("\n").split("\n")
    assert lines[0].startswith("snapkit: error: "), err
    assert len(lines) <= 2, f"more than an error and a hint line:\n{err}"
    if len(lines) == 2:
        assert lines[1].startswith("hint: "), err
    message = lines[0][len("snapkit: error: "):]
    for n in needles:
        assert n.lower() in message.lower(), f"{n!r} not in error message {message!r}"
    if hint is not None:
        assert len(lines) == 2 and hint in lines[1], f"hint {hint!r} missing:\n{err}"
    return message


def run_many(cwd: Path, calls: list[tuple[str, ...]], env: dict | None = None,
             timeout: float = 120) -> list[subprocess.CompletedProcess]:
    """Run several snapkit invocations at once (read-only ones); results in call order."""
    full_env = {**os.environ, **(env or {})}
    procs = [subprocess.Popen([sys.executable, "-m", "snapkit", *args], cwd=cwd, env=full_env, text=True,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for args in calls]
    out = []
    for p, args in zip(procs, calls):
        so, se = p.communicate(timeout=timeout)
        out.append(subprocess.CompletedProcess(args, p.returncode, so, se))
    return out


def tree_state(root: Path) -> dict[str, str]:
    """Every file (sha256), symlink (target) and directory under root, hidden ones included."""
    out = {}
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def snapshots(cli, *args: str, env: dict | None = None) -> list[dict]:
    return json.loads(cli("list", "--json", *args, env=env).stdout)["snapshots"]


def head(repo: Path) -> str:
    return git(repo, "rev-parse", "HEAD")


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def key_files(home: Path) -> list[Path]:
    keys = home / ".config" / "snapkit" / "keys"
    return sorted(keys.iterdir()) if keys.exists() else []


def new_repo(path: Path) -> Path:
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "Other User")
    git(path, "config", "user.email", "other@example.com")
    (path / "readme.txt").write_text("other\n")
    (path / ".gitignore").write_text("app.db\n")
    make_app_db(path / "app.db", rows=20)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "other initial")
    return path


# ---------------------------------------------------------------- not a project


def test_not_a_git_repo(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    calls = [("create", "msg"), ("list",), ("status",), ("restore", "@0", "--yes"),
             ("init", "--db", "sqlite:///app.db")]
    for proc in run_many(plain, calls):
        assert_error(proc, 1, "git work tree")
    assert list(plain.iterdir()) == []  # init wrote neither snapkit.toml nor a store


def test_create_before_init(app_repo, cli):
    (app_repo / "app.py").write_text("print('v2')\n")
    before_head = head(app_repo)
    before = tree_state(app_repo)
    assert_error(cli("create", "msg", ok=None), 1, hint="snapkit init")
    assert head(app_repo) == before_head
    assert tree_state(app_repo) == before


# ---------------------------------------------------------------- keys


def test_wrong_key_file(project, cli, tmp_path):
    sid = cli("create", "--no-commit").stdout.strip()
    other = new_repo(tmp_path / "other")
    info = json.loads(Cli(other)("init", "--db", "sqlite:///app.db", "--json").stdout)
    other_key = Path(info["key_file"])
    assert other_key.exists()
    (project / "app.py").write_text("print('dirty')\n")
    before_store = tree_state(project / "snapshots")
    before_head = head(project)
    before_db = sqlite_dump(project / "app.db")
    env = {"SNAPKIT_KEY_FILE": str(other_key)}
    # `list` and `status` need the key too (the catalog is sealed): the same one-line error.
    calls = [("create", "--no-commit"), ("create", "commit me"), ("show", sid, "--json"),
             ("restore", sid, "--yes", "--force"), ("cat", sid, "-o", str(tmp_path / "x.db")),
             ("list",), ("list", "--json"), ("status", "--json")]
    for proc in run_many(project, calls, env=env):
        assert_error(proc, 1, "wrong key file")
        assert sid not in proc.stdout, (proc.args, proc.stdout)
    assert tree_state(project / "snapshots") == before_store
    assert head(project) == before_head
    assert sqlite_dump(project / "app.db") == before_db
    assert (project / "app.py").read_text() == "print('dirty')\n"
    assert not (tmp_path / "x.db").exists()
    assert json.loads(cli("show", sid, "--json").stdout)["id"] == sid  # the right key still works


def test_passphrase_only_store(app_repo, cli, isolated_home):
    before = sqlite_dump(app_repo / "app.db")
    # without a passphrase (stdin is not a TTY, no SNAPKIT_PASSPHRASE): clear error, nothing written
    files_before = tree_state(app_repo)
    assert_error(cli("init", "--db", "sqlite:///app.db", "--passphrase", ok=None, input=""), 1, "passphrase")
    assert tree_state(app_repo) == files_before
    assert key_files(isolated_home) == []

    good = {"SNAPKIT_PASSPHRASE": "correct horse ✓"}
    info = json.loads(cli("init", "--db", "sqlite:///app.db", "--passphrase", "--json", env=good,
                          input="").stdout)
    assert info["passphrase"] is True and info["key_file"] is None
    assert key_files(isolated_home) == []  # only a passphrase slot: no key file anywhere
    assert "correct horse" not in (app_repo / "snapkit.toml").read_text()

    sid = cli("create", "--no-commit", env=good).stdout.strip()
    assert [e["id"] for e in snapshots(cli, env=good)] == [sid]
    store_before = tree_state(app_repo / "snapshots")
    # No passphrase (stdin is not a TTY): every command that reads the store, `list` and `status`
    # included, is a one-line exit-1 error, and writes nothing.
    nones = run_many(app_repo, [("create", "--no-commit"), ("show", sid), ("list",), ("list", "--json"),
                                ("status",)])
    wrong = run_many(app_repo, [("create", "--no-commit"), ("list",)], env={"SNAPKIT_PASSPHRASE": "wrong"})
    for proc in wrong:
        assert_error(proc, 1, "wrong passphrase")
    for proc in nones:
        assert_error(proc, 1, "passphrase")
    for proc in nones + wrong:
        assert sid not in proc.stdout, (proc.args, proc.stdout)
    assert tree_state(app_repo / "snapshots") == store_before
    (app_repo / "app.db").unlink()
    cli("restore", sid, "--db-only", "--yes", env=good)
    assert sqlite_dump(app_repo / "app.db") == before


# ---------------------------------------------------------------- the database


def test_missing_database_no_commit(project, cli):
    (project / "app.db").unlink()
    store_before = tree_state(project / "snapshots")
    assert_error(cli("create", "--no-commit", ok=None), 1, "app.db")
    assert tree_state(project / "snapshots") == store_before  # no manifest, pack or catalog entry


def test_missing_database_with_message_makes_no_commit(project, cli):
    (project / "app.db").unlink()
    (project / "app.py").write_text("print('v2')\n")
    before_head = head(project)
    store_before = tree_state(project / "snapshots")
    assert_error(cli("create", "should not commit", ok=None), 1, "app.db")
    assert tree_state(project / "snapshots") == store_before
    assert head(project) == before_head
    assert git(project, "status", "--porcelain", "app.py") == "M app.py"


def test_locked_database(project, cli):
    con = sqlite3.connect(project / "app.db", isolation_level=None, check_same_thread=False)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    con.execute("BEGIN EXCLUSIVE")
    # Release the lock after 12 s whatever happens, so a hanging create ends too.
    timer = threading.Timer(12, lambda: con.execute("ROLLBACK"))
    timer.start()
    try:
        store_before = tree_state(project / "snapshots")
        t0 = time.monotonic()
        proc = cli("create", "--no-commit", ok=None, timeout=60)
        elapsed = time.monotonic() - t0
    finally:
        timer.cancel()
        timer.join()
        if con.in_transaction:
            con.execute("ROLLBACK")
        con.close()
    assert elapsed < 12, f"create took {elapsed:.1f}s with the database locked"
    assert_error(proc, 1, "locked")
    after = tree_state(project / "snapshots")
    for folder in ("manifests/", "catalog/", "packs/", "index/"):
        assert {k for k in after if k.startswith(folder)} == {k for k in store_before if k.startswith(folder)}


# ---------------------------------------------------------------- REF grammar


def test_ref_grammar(project, cli):
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "configure snapkit")
    c1 = head(project)
    ids = [cli("create", "--no-commit").stdout.strip() for _ in range(3)]
    assert len(set(ids)) == 3
    assert sorted(ids) == ids
    # newest first, in creation order even within one second
    assert [e["id"] for e in snapshots(cli)] == list(reversed(ids))
    for sid in ids:
        assert re.fullmatch(r"\d{8}T\d{6}Z(\d\d)?-" + c1[:7], sid), sid
    git(project, "commit", "-q", "--allow-empty", "-m", "second")
    git(project, "commit", "-q", "--allow-empty", "-m", "third")
    c3 = head(project)
    prefix = os.path.commonprefix(ids)
    assert len(prefix) >= 8  # same day at least

    calls = {
        "id": ("show", ids[0], "--json"),
        "unique-prefix": ("show", ids[0][:-2], "--json"),
        "@0": ("show", "@0", "--json"),
        "@2": ("show", "@2", "--json"),
        "rev": ("show", "HEAD~2", "--json"),
        "full-hash": ("show", c1, "--json"),
        "short-hash": ("show", c1[:8], "--json"),
        "branch-none": ("show", "main", "--json"),
        "nothing": ("show", "zzzz-no-such-thing"),
        "nothing-restore": ("restore", "zzzz-no-such-thing", "--yes"),
        "ambiguous": ("show", prefix),
        "@5": ("show", "@5"),
        "@3-restore": ("restore", "@3", "--yes"),
        "head": ("show", "HEAD"),
        "head~1": ("show", "HEAD~1"),
        "short-head": ("show", c3[:7]),
    }
    res = dict(zip(calls, run_many(project, list(calls.values()))))
    for name in ("id", "unique-prefix", "@0", "@2", "rev", "full-hash", "short-hash"):
        assert res[name].returncode == 0, (name, res[name].stderr)
    for name in ("id", "unique-prefix", "@2"):
        assert json.loads(res[name].stdout)["id"] == ids[0], name
    assert json.loads(res["@0"].stdout)["id"] == ids[2]
    # a git revision resolves to the NEWEST snapshot of that commit
    for name in ("rev", "full-hash", "short-hash"):
        assert json.loads(res[name].stdout)["id"] == ids[2], name
    assert_error(res["nothing"], 1, "zzzz-no-such-thing")
    assert_error(res["nothing-restore"], 1)
    msg = assert_error(res["ambiguous"], 1)
    for sid in ids:
        assert sid in msg, msg
    assert_error(res["@5"], 1, "@5")
    assert_error(res["@3-restore"], 1)
    for name in ("branch-none", "head", "head~1", "short-head"):
        msg = assert_error(res[name], 1)
        assert ids[2] in msg, (name, msg)  # names the nearest older snapshot
    assert head(project) == c3


# ---------------------------------------------------------------- help, version


def _commands(help_text: str) -> list[str]:
    out, inside = [], False
    for line in help_text.splitlines():
        if "Commands" in line and line.lstrip().startswith("╭"):
            inside = True
            continue
        if inside and line.lstrip().startswith("╰"):
            break
        m = re.match(r"^\s*│ ([a-z][a-z-]*)\s", line)
        if inside and m:
            out.append(m.group(1))
    return out


def test_help_for_every_command_and_version(tmp_path):
    where = tmp_path / "anywhere"  # --help and --version need no project
    where.mkdir()
    (top, hook, short) = run_many(where, [("--help",), ("hook", "--help"), ("-h",)])
    assert top.returncode == 0 and short.stdout == top.stdout
    commands = _commands(top.stdout)
    spec_commands = {"init", "create", "list", "show", "restore", "rollback", "verify", "status", "pin",
                     "unpin", "tag", "untag", "hook", "cat"}
    assert spec_commands <= set(commands), commands
    hook_cmds = _commands(hook.stdout)
    assert {"install", "uninstall", "status"} <= set(hook_cmds)
    calls = [(c, "--help") for c in commands] + [("hook", c, "--help") for c in hook_cmds]
    calls += [("--version",), ("--env", "x", "--version")]
    results = run_many(where, calls)
    for args, proc in zip(calls[:-2], results):
        assert proc.returncode == 0 and proc.stderr == "", (args, proc.stderr)
        assert "Usage: snapkit " + " ".join(args[:-1]) in proc.stdout, (args, proc.stdout)
    version = metadata.version("snapkit")
    for proc in results[-2:]:
        assert proc.returncode == 0 and proc.stdout == f"snapkit {version}\n"
    assert list(where.iterdir()) == []


def test_usage_errors_exit_2(project, cli):
    for proc in run_many(project, [("list", "--no-such-option"), ("no-such-command",), ("show",)]):
        assert proc.returncode == 2, (proc.args, proc.stderr)
        assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------- init


def test_init_is_idempotent(app_repo, cli, isolated_home):
    info = json.loads(cli("init", "--db", "sqlite:///app.db", "--json").stdout)
    key = Path(info["key_file"])
    assert info["created_store"] is True and info["created_key"] is True
    sid = cli("create", "--no-commit").stdout.strip()
    store = app_repo / "snapshots"
    key_hash = sha256_file(key)
    store_before = tree_state(store)
    assert any(k.startswith("keys/") for k in store_before)
    toml = (app_repo / "snapkit.toml").read_bytes()
    ignore = (app_repo / ".gitignore").read_bytes()
    for args in (("init",), ("init", "--db", "sqlite:///other.db")):
        again = json.loads(cli(*args, "--json").stdout)
        assert again["created_store"] is False and again["created_key"] is False
        assert again["store_id"] == info["store_id"]
        assert sha256_file(key) == key_hash
        assert key_files(isolated_home) == [key]
        assert tree_state(store) == store_before
        assert (app_repo / "snapkit.toml").read_bytes() == toml
        assert (app_repo / ".gitignore").read_bytes() == ignore
    assert [e["id"] for e in snapshots(cli)] == [sid]


def test_key_and_store_files_are_private(app_repo, cli, isolated_home):
    old = os.umask(0o022)
    try:
        info = json.loads(cli("init", "--db", "sqlite:///app.db", "--json").stdout)
        cli("create", "--no-commit", "--tag", "t")
        cli("pin", "@0")
        cli("list")
        cli("verify")
    finally:
        os.umask(old)
    key = Path(info["key_file"])
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    store = app_repo / "snapshots"
    assert stat.S_IMODE(store.stat().st_mode) == 0o700
    n = 0
    for dirpath, dirnames, filenames in os.walk(store):
        for d in dirnames:
            mode = stat.S_IMODE((Path(dirpath) / d).stat().st_mode)
            assert mode == 0o700, (Path(dirpath) / d, oct(mode))
        for f in filenames:
            mode = stat.S_IMODE((Path(dirpath) / f).stat().st_mode)
            assert mode == 0o600, (Path(dirpath) / f, oct(mode))
            n += 1
    assert n >= 5
    # Nothing but what docs/format.md lists is in the store: the caches and verify's result are
    # on this machine (XDG_CACHE_HOME), private as well.
    assert {p.name for p in store.iterdir()} <= {"config", "keys", "packs", "index", "manifests", "catalog",
                                                 "locks", "tmp"}
    assert not list((store / "tmp").iterdir()) and not list((store / "locks").iterdir())
    caches = isolated_home / ".cache" / "snapkit" / info["store_id"]
    assert (caches / "catalog").is_file() and (caches / "verify.json").is_file()
    for p in [caches, *caches.rglob("*")]:
        assert stat.S_IMODE(p.stat().st_mode) == (0o700 if p.is_dir() else 0o600), p


# ---------------------------------------------------------------- create and git


def test_store_ignored_and_create_commits_dirty_tree(project, cli):
    assert subprocess.run(["git", "check-ignore", "-q", "snapshots/config"], cwd=project,
                          check=False).returncode == 0
    parent = head(project)
    (project / "app.py").write_text("print('v2')\n")
    (project / "feature.py").write_text("x = 1\n")
    result = json.loads(cli("create", "add feature ✓", "--json").stdout)
    new_head = head(project)
    assert new_head != parent
    assert git(project, "rev-parse", "HEAD~1") == parent
    assert git(project, "log", "-1", "--format=%s") == "add feature ✓"
    assert git(project, "rev-parse", "--abbrev-ref", "HEAD") == "main"
    tree = set(git(project, "ls-tree", "-r", "--name-only", "HEAD").splitlines())
    assert {"app.py", "feature.py", ".gitignore", "snapkit.toml"} <= tree
    assert "app.db" not in tree
    assert not any(p.startswith("snapshots") for p in tree)
    assert git(project, "show", "HEAD:app.py") == "print('v2')"
    assert git(project, "status", "--porcelain") == ""
    assert result["commit"] == new_head and result["committed"] is True
    [entry] = snapshots(cli)
    assert entry["id"] == result["id"] and entry["commit"] == new_head
    assert entry["message"] == "add feature ✓" and entry["dirty"] is False

    # clean tree: MESSAGE is the snapshot's message, no commit is made
    sid = cli("create", "golden before migration").stdout.strip()
    assert head(project) == new_head
    # dirty tree with --no-commit: HEAD is snapshotted, recorded dirty, warned about
    (project / "app.py").write_text("print('dirty')\n")
    proc = cli("create", "not committed", "--no-commit")
    assert "warning" in proc.stderr.lower()
    assert head(project) == new_head
    assert git(project, "status", "--porcelain", "app.py") == "M app.py"
    newest, golden, _ = snapshots(cli)
    assert golden["id"] == sid and golden["commit"] == new_head
    assert golden["message"] == "golden before migration" and golden["dirty"] is False
    assert newest["commit"] == new_head and newest["dirty"] is True


# ---------------------------------------------------------------- list / show / cat / migration state

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)")


def _row_counts(db: Path) -> dict[str, int]:
    con = sqlite3.connect(db)
    try:
        names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {n: con.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in names}
    finally:
        con.close()


def test_list_show_cat_json(project, cli, tmp_path):
    con = sqlite3.connect(project / "app.db")
    con.executescript(
        """
        CREATE TABLE alembic_version(version_num VARCHAR(32) NOT NULL PRIMARY KEY);
        INSERT INTO alembic_version VALUES ('ae1027a6acf');
        CREATE TABLE django_migrations(id INTEGER PRIMARY KEY AUTOINCREMENT, app TEXT, name TEXT, applied TEXT);
        INSERT INTO django_migrations(app, name, applied) VALUES
            ('auth', '0001_initial', '2024-01-01'), ('auth', '0002_alter', '2024-01-02'),
            ('shop', '0001_initial', '2024-01-03');
        """
    )
    con.commit()
    con.close()
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "configure snapkit")
    (project / "src").mkdir()
    (project / "src" / "mod.py").write_text("y = 2\n")
    sid = cli("create", "add module").stdout.strip()
    commit = head(project)
    db_out, code_out = tmp_path / "cat.db", tmp_path / "code.tar"
    listing, show, cat_db, cat_code, bad = run_many(project, [
        ("list", "--json"), ("show", sid, "--json"), ("cat", sid, "--layer", "database", "-o", str(db_out)),
        ("cat", "@0", "--layer", "code", "-o", str(code_out)),
        ("cat", sid, "--layer", "nope", "-o", str(tmp_path / "n"))])

    [e] = json.loads(listing.stdout)["snapshots"]
    assert e["id"] == sid and e["commit"] == commit and e["message"] == "add module"
    assert ISO.fullmatch(e["created_at"]) and e["env"] == "default"
    assert e["tags"] == [] and e["pinned"] is False
    assert isinstance(e["logical_bytes"], int) and isinstance(e["stored_bytes"], int)
    assert e["logical_bytes"] > 0 and e["stored_bytes"] > 0

    meta = json.loads(show.stdout)
    for key in ("id", "commit", "parents", "branch", "message", "author", "created_at", "env", "host",
                "dirty", "tags", "pinned", "snapkit_version", "duration_s", "database", "layers"):
        assert key in meta, key
    assert meta["id"] == sid
    assert meta["commit"] == commit
    assert meta["parents"] == [git(project, "rev-parse", "HEAD~1")]
    assert meta["branch"] == "main"
    assert meta["message"] == "add module"
    assert meta["author"] == "Test User <test@example.com>"
    assert ISO.fullmatch(meta["created_at"])
    assert meta["env"] == "default"
    assert meta["host"] == socket.gethostname()
    assert meta["dirty"] is False
    assert meta["tags"] == [] and meta["pinned"] is False
    assert meta["snapkit_version"] == metadata.version("snapkit")
    assert isinstance(meta["duration_s"], (int, float)) and 0 <= meta["duration_s"] < 60
    db = meta["database"]
    assert db["engine"] == "sqlite"
    assert db["server_version"] == sqlite3.sqlite_version
    assert db["url"] == "sqlite:///app.db"
    assert db["tables"] == _row_counts(project / "app.db")
    assert db["tables"]["users"] == 200 and db["tables"]["orders"] == 400
    assert isinstance(db["schema_fingerprint"], str) and len(db["schema_fingerprint"]) >= 16
    state = db["migration_state"]
    assert state["alembic"] == ["ae1027a6acf"]
    assert state["django"]["applied"] == 3
    assert state["django"]["latest"] == {"auth": "0002_alter", "shop": "0001_initial"}
    assert set(meta["layers"]) >= {"database", "code"}
    for name in ("database", "code"):
        layer = meta["layers"][name]
        for key in ("logical_bytes", "stored_bytes", "chunks", "sha256"):
            assert key in layer, (name, key)
        assert e["layers"][name]["logical_bytes"] == layer["logical_bytes"]

    # cat --layer database: the SQLite file; its sha256 is the one `show` reports
    assert cat_db.returncode == 0, cat_db.stderr
    assert meta["layers"]["database"]["sha256"].removeprefix("sha256:") == sha256_file(db_out)
    assert meta["layers"]["database"]["logical_bytes"] == db_out.stat().st_size
    assert sqlite_dump(db_out) == sqlite_dump(project / "app.db")
    raw = subprocess.run([sys.executable, "-m", "snapkit", "cat", sid], cwd=project, capture_output=True,
                         check=True).stdout
    assert raw == db_out.read_bytes()  # stdout too

    # cat --layer code: a tar of the commit's tree
    assert cat_code.returncode == 0, cat_code.stderr
    assert meta["layers"]["code"]["sha256"].removeprefix("sha256:") == sha256_file(code_out)
    with tarfile.open(code_out) as tar:
        members = {m.name.removeprefix("./") for m in tar.getmembers() if not m.isdir()}
        assert tar.extractfile("src/mod.py").read() == b"y = 2\n"
    assert members == set(git(project, "ls-tree", "-r", "--name-only", commit).splitlines())

    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert not (tmp_path / "n").exists()


SNAPSHOT_ID = re.compile(r"^\d{8}T\d{6}Z(\d\d)?-[0-9a-f]{7}(?= )")


def _cells(s: str) -> int:
    """Display width, computed independently of rich: East Asian wide characters take two cells."""
    import unicodedata

    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in s)


def _catalog_entry(i: int, **over) -> dict:
    entry = {"id": f"20260101T{i // 3600 % 24:02d}{i // 60 % 60:02d}{i % 60:02d}Z{i // 86400:02d}-abcdef0",
             "commit": "abcdef0" * 5 + "abcde", "branch": "main", "message": f"snapshot {i}",
             "created_at": f"2026-01-01T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z", "env": "default",
             "tags": [], "pinned": False, "safety": False, "dirty": False, "engine": "sqlite",
             "logical_bytes": 1000 * i, "stored_bytes": i, "layers": {}}
    return {**entry, **over}


SPECIAL_MESSAGES = {
    3: "fix [wip] and [bold]markup[/bold] :smile: stay literal",
    5: "東京 データ移行",
    7: "\x1b[31mred\x1b[0m\tand a tab",
    11: " ".join(f"word{j}" for j in range(60)),  # wider than the 200 columns of piped output: wraps
}


def test_list_table_every_snapshot_newest_first(project, cli):
    """`list` on a catalog of many snapshots (written as create writes them): one row per snapshot,
    newest first, `-n` keeps the newest, columns line up, messages are printed literally."""
    from snapkit.project import Project

    p = Project.open(project)
    written = []
    for i in range(300):
        entry = _catalog_entry(i, message=SPECIAL_MESSAGES.get(i, f"snapshot {i}"),
                               pinned=i == 5, tags=["release", "東京"] if i == 5 else [])
        p.catalog.add(entry, "00" * 32)  # `list` reads catalog entries only, never a manifest
        written.append(entry["id"])
    newest_first = sorted(written, reverse=True)

    table, top20, as_json = run_many(project, [("list",), ("list", "-n", "20"), ("list", "--json")])
    for proc in (table, top20, as_json):
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert [e["id"] for e in json.loads(as_json.stdout)["snapshots"]] == newest_first

    lines = table.stdout.splitlines()
    header = lines[0]
    assert header.split() == ["id", "commit", "created", "env", "marks", "size", "added", "message"]
    assert [m.group(0) for m in map(SNAPSHOT_ID.match, lines) if m] == newest_first
    assert len({_cells(line) for line in lines}) == 1  # every line padded to the table's width
    assert _cells(header) <= 200
    assert "\x1b" not in table.stdout and "\t" not in table.stdout

    rows = {}  # id → its lines (a wrapped message continues on lines that start blank)
    for line in lines[1:]:
        m = SNAPSHOT_ID.match(line)
        if m:
            sid = m.group(0)
            rows[sid] = [line]
        else:
            assert line.startswith(" " * 30), line
            rows[sid].append(line)
    msg_col = header.index("message")
    size_end, added_end = header.index("size") + len("size"), header.index("added") + len("added")
    for i, sid in enumerate(written):
        first = rows[sid][0]
        if i != 5:  # ASCII rows: character columns are cells
            assert first[:size_end].endswith(f" {render.human_bytes(1000 * i)}")  # right-aligned
            assert first[:added_end].endswith(f" {render.human_bytes(i)}")
            message = " ".join(" ".join(line[msg_col:] for line in rows[sid]).split())
            want = " ".join(SPECIAL_MESSAGES.get(i, f"snapshot {i}").replace("\x1b", "").split())
            assert message == want, (sid, message)
    wide = rows[written[5]]
    assert len(wide) == 1 and "pinned,release,東京" in wide[0] and wide[0].rstrip().endswith("東京 データ移行")
    assert len(rows[written[11]]) > 1  # wrapped, not cropped: the whole message is there (checked above)

    assert top20.stdout.splitlines()[0].split() == header.split()
    top = [m.group(0) for m in map(SNAPSHOT_ID.match, top20.stdout.splitlines()) if m]
    assert top == newest_first[:20]


def _rich_table(rows: list[tuple[str, ...]], width: int, terminal: bool) -> str:
    """The table as rich.Table draws it: the layout `list` had before it drew tables itself."""
    import io

    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    buf = io.StringIO()
    table = Table(box=None, pad_edge=False)
    for name, right in render.LIST_COLUMNS:
        table.add_column(name, no_wrap=name != "message", justify="right" if right else "left")
    for row in rows:
        table.add_row(*map(Text, row))
    Console(file=buf, width=width, force_terminal=terminal, highlight=False, soft_wrap=True).print(table)
    return buf.getvalue()


@pytest.mark.parametrize("width", [200, 120, 100])
def test_list_layout_is_rich_tables(width, monkeypatch):
    """The hand-made table is byte for byte rich's: widths, right-aligned sizes, wide characters,
    messages wrapped at word boundaries (and cut with … when one word is too wide)."""
    import io

    from rich.console import Console

    messages = ["first version", "", "東京 データ移行 🎉", "v2: new greeting " * 12,
                "x" * 150 + " tail", "ünïcode and Ωmega", "a " * 120]
    entries = [_catalog_entry(i, message=m, env="staging" if i == 2 else "default",
                              pinned=i % 3 == 0, tags=["golden", "東京"][: i % 3])
               for i, m in enumerate(messages)]
    entries[1]["logical_bytes"] = 3 * 2**30
    rows = render.snapshot_rows(list(reversed(entries)))
    for terminal in (False, True):
        buf = io.StringIO()
        c = Console(file=buf, width=width, force_terminal=terminal, highlight=False, soft_wrap=True)
        monkeypatch.setattr(render, "console", lambda stderr=False: c)
        render.snapshot_table(list(reversed(entries)))
        want = _rich_table(rows, width, terminal)
        if terminal:  # rich styles the header cell by cell, we style the line: same on screen
            plain = re.compile(r"\x1b\[[0-9;]*m")
            assert plain.sub("", buf.getvalue()) == plain.sub("", want)
            assert buf.getvalue().startswith("\x1b[1mid ")
        else:
            assert buf.getvalue() == want


def test_list_narrow_terminal_falls_back_to_rich(monkeypatch):
    """Too narrow for the fixed columns: rich crops them, so rich draws the table."""
    import io

    from rich.console import Console

    entries = [_catalog_entry(i) for i in range(3)]
    buf = io.StringIO()
    c = Console(file=buf, width=60, highlight=False, soft_wrap=True)
    monkeypatch.setattr(render, "console", lambda stderr=False: c)
    render.snapshot_table(entries)
    assert buf.getvalue() == _rich_table(render.snapshot_rows(entries), 60, False)


def test_list_table_of_10000_snapshots_is_fast(monkeypatch):
    """rich.Table needs ~5 s for 10,000 rows; `list` must stay interactive (docs: catalog_speed)."""
    import io

    from rich.console import Console

    entries = [_catalog_entry(i) for i in range(10_000)]
    buf = io.StringIO()
    c = Console(file=buf, width=200, highlight=False, soft_wrap=True)
    monkeypatch.setattr(render, "console", lambda stderr=False: c)
    t0 = time.perf_counter()
    render.snapshot_table(list(reversed(entries)))
    elapsed = time.perf_counter() - t0
    lines = buf.getvalue().splitlines()
    assert len(lines) == 10_001
    assert [line.split()[0] for line in lines[1:]] == [e["id"] for e in reversed(entries)]
    assert elapsed < 1.5, f"{elapsed:.2f}s to lay out 10,000 rows"


# ---------------------------------------------------------------- marks


def test_pin_tag_reflected_in_list(project, cli):
    a = cli("create", "--no-commit").stdout.strip()
    b = cli("create", "--no-commit", "--tag", "x", "--tag", "golden", "--pin").stdout.strip()

    def entries():
        return {e["id"]: e for e in snapshots(cli)}

    got = entries()
    assert got[b]["pinned"] is True and got[b]["tags"] == ["golden", "x"]
    assert got[a]["pinned"] is False and got[a]["tags"] == []

    # marks on different snapshots may run at the same time
    for proc in run_many(project, [("tag", a, "release"), ("untag", b, "x")]):
        assert proc.returncode == 0, proc.stderr
    for proc in run_many(project, [("pin", a), ("unpin", "@0")]):
        assert proc.returncode == 0, proc.stderr
    got = entries()
    assert got[a]["tags"] == ["release"] and got[a]["pinned"] is True
    assert got[b]["tags"] == ["golden"] and got[b]["pinned"] is False
    assert [e["id"] for e in snapshots(cli, "--tag", "release")] == [a]
    cli("untag", a, "release")
    cli("unpin", a)
    listing, shown, verify = run_many(project, [("list", "--json"), ("show", b, "--json"), ("verify",)])
    got = {e["id"]: e for e in json.loads(listing.stdout)["snapshots"]}
    assert got[a]["tags"] == [] and got[a]["pinned"] is False
    meta = json.loads(shown.stdout)
    assert meta["pinned"] is False and meta["tags"] == ["golden"]
    assert verify.returncode == 0, verify.stdout + verify.stderr  # marks keep the catalog authentic


# ---------------------------------------------------------------- status


def test_status(project, cli):
    as_json, plain = run_many(project, [("status", "--json"), ("status",)])
    assert as_json.returncode == 4 and plain.returncode == 4, as_json.stderr
    st = json.loads(as_json.stdout)
    assert st["healthy"] is False and st["snapshots"] == 0 and st["newest"] is None

    sid = cli("create", "--no-commit").stdout.strip()
    t_created = time.monotonic()
    as_json, plain = run_many(project, [("status", "--json"), ("status",)])
    assert as_json.returncode == 0 and plain.returncode == 0, as_json.stdout + plain.stdout
    st = json.loads(as_json.stdout)
    for key in ("store", "snapshots", "newest", "newest_age_s", "head_commit", "head_snapshot",
                "logical_bytes", "stored_bytes", "hook_installed", "healthy", "last_verify"):
        assert key in st, key
    assert st["healthy"] is True
    assert st["snapshots"] == 1 and st["newest"] == sid and st["head_snapshot"] == sid
    assert st["head_commit"] == head(project)
    assert Path(st["store"]).resolve() == (project / "snapshots").resolve()
    assert st["hook_installed"] is False
    assert 0 <= st["newest_age_s"] < 60
    assert st["logical_bytes"] >= st["stored_bytes"] > 0
    # verify's result is kept on this machine (the cache folder), never in the store; status reports it.
    assert st["last_verify"] is None
    store_before = tree_state(project / "snapshots")
    cli("verify")
    st = json.loads(cli("status", "--json").stdout)
    assert st["healthy"] is True and st["last_verify"]["ok"] is True and st["last_verify"]["snapshots"] == 1
    assert tree_state(project / "snapshots") == store_before

    git(project, "commit", "-q", "--allow-empty", "-m", "no snapshot for this one")
    # status.max_age exceeded → unhealthy
    toml = project / "snapkit.toml"
    text = toml.read_text()
    assert 'max_age = "26h"' in text
    toml.write_text(text.replace('max_age = "26h"', 'max_age = "1s"'))
    time.sleep(max(0.0, 2.2 - (time.monotonic() - t_created)))
    proc = cli("status", "--json", ok=None)
    assert proc.returncode == 4, proc.stdout
    st = json.loads(proc.stdout)
    assert st["healthy"] is False and st["reasons"]
    assert st["head_snapshot"] is None and st["head_commit"] == head(project)


# ---------------------------------------------------------------- verify --restore-test


def test_verify_restore_test_rebuilds_in_private_scratch_and_writes_nothing(project, cli):
    """The rebuilt database goes to `<git dir>/snapkit/tmp/<pid>-<rand>/` (docs/format.md), which is
    removed at exit: not into the store, not into the work tree."""
    sid = cli("create", "--no-commit").stdout.strip()
    dump = sqlite_dump(project / "app.db")
    work_before = {k: v for k, v in tree_state(project).items() if not k.startswith(".git")}
    result = json.loads(cli("verify", "--restore-test", "--json").stdout)
    assert result["restore_tested"] == 1 and result["problems"] == [] and result["snapshots"] == 1
    work_after = {k: v for k, v in tree_state(project).items() if not k.startswith(".git")}
    assert work_after == work_before  # no scratch.db, no copy beside app.db, the store unchanged
    assert sqlite_dump(project / "app.db") == dump
    scratch = project / ".git" / "snapkit" / "tmp"
    assert not scratch.exists() or list(scratch.iterdir()) == []
    assert sid in cli("list").stdout


# ---------------------------------------------------------------- --check


def test_create_check(project, cli):
    (project / "app.py").write_text("print('v2')\n")
    before_head = head(project)
    store_before = tree_state(project / "snapshots")
    marker = project.parent / "pwned"
    calls = [("create", "--check", "false"), ("create", "msg", "--check", "false"),
             ("create", "--no-commit", "--check", "sh -c 'echo nope >&2; exit 3'"),
             ("create", "msg", "--check", "definitely-not-a-command-xyz"),
             ("create", "msg", "--check", f"true; touch {marker}")]  # never run by a shell
    for proc in run_many(project, calls):
        assert_error(proc, 1)
    assert not marker.exists()
    assert head(project) == before_head
    assert tree_state(project / "snapshots") == store_before
    assert git(project, "status", "--porcelain", "app.py") == "M app.py"
    sid = cli("create", "checked", "--check", "true").stdout.strip()
    assert snapshots(cli)[0]["id"] == sid
    assert git(project, "log", "-1", "--format=%s") == "checked"
