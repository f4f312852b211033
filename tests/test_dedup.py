"""A snapshot after a 1% change stores about the changed bytes, not a new copy."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from benchmarks import workload
from tests.conftest import git


def sha3(path) -> str:
    """Independent oracle: the sqlite3 shell's content hash of every table."""
    return subprocess.run(["sqlite3", str(path), ".sha3sum"], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.slow
def test_one_percent_change_of_200_mb_adds_a_small_fraction(tmp_path, app_repo, cli):
    db = app_repo / "app.db"
    db.unlink()
    workload.create(db, 200)
    cli("init", "--db", "sqlite:///app.db")
    git(app_repo, "add", "-A")
    git(app_repo, "commit", "-q", "-m", "init snapkit")
    first = json.loads(cli("create", "--json").stdout)
    v1 = tmp_path / "v1.db"
    shutil.copy(db, v1)
    workload.change(db, percent=1.0)
    second = json.loads(cli("create", "--json", "--no-commit").stdout)
    print(json.dumps({"first_stored": first["stored_bytes"], "second_stored": second["stored_bytes"],
                      "logical": second["logical_bytes"]}))
    assert first["logical_bytes"] > 150 * 1024 * 1024
    assert second["stored_bytes"] < 0.05 * first["stored_bytes"]
    # Both ends of the delta chain restore exactly.
    cli("restore", first["id"], "--to-url", f"sqlite:///{tmp_path}/r1.db", "--yes")
    cli("restore", second["id"], "--to-url", f"sqlite:///{tmp_path}/r2.db", "--yes")
    assert sha3(tmp_path / "r1.db") == sha3(v1)
    assert sha3(tmp_path / "r2.db") == sha3(db)


def _db_layer(cli, ref="@0"):
    return json.loads(cli("show", ref, "--json").stdout)["layers"]["database"]


def test_unchanged_database_is_not_read_again_but_a_change_is_seen(project, cli):
    import sqlite3

    from tests.conftest import sqlite_dump

    cli("create", "--no-commit")
    cli("create", "--no-commit")
    second = _db_layer(cli)
    assert second["stored_bytes"] == 0 and second["source_state"]["journal"] == "rollback"
    # A one-row change in the same second must never be mistaken for "unchanged".
    con = sqlite3.connect(project / "app.db")
    con.execute("UPDATE users SET name = 'changed' WHERE id = 3")
    con.commit()
    con.close()
    expected = sqlite_dump(project / "app.db")
    sid = cli("create", "--no-commit").stdout.strip()
    assert _db_layer(cli)["sha256"] != second["sha256"]
    (project / "app.db").unlink()
    cli("restore", sid, "--db-only", "--yes")
    assert sqlite_dump(project / "app.db") == expected


def test_wal_database_is_always_read(project, cli):
    import sqlite3

    con = sqlite3.connect(project / "app.db")
    con.execute("PRAGMA journal_mode=WAL")
    con.close()
    cli("create", "--no-commit")
    cli("create", "--no-commit")
    assert "source_state" not in _db_layer(cli)


def _code_layer(cli, ref="@0"):
    return json.loads(cli("show", ref, "--json").stdout)["layers"]["code"]


def _fresh_tar_sha256(repo, commit="HEAD") -> str:
    """What write_tree_tar gives for `commit` right now (the layer must equal it)."""
    import hashlib

    from snapkit.gitrepo import GitRepo

    class Sink:
        def __init__(self):
            self.digest = hashlib.sha256()

        def write(self, data):
            self.digest.update(data)
            return len(data)

    sink, git_repo = Sink(), GitRepo.discover(repo)
    git_repo.write_tree_tar(git_repo.resolve(commit), sink)
    return sink.digest.hexdigest()


def test_same_commit_reuses_the_code_layer_without_tarring(project, cli, tmp_path, monkeypatch):
    import sys
    import tarfile

    import snapkit
    from snapkit.gitrepo import GitRepo

    first_id = cli("create", "--no-commit").stdout.strip()
    first = _code_layer(cli)
    assert first["source_state"] == {"tree": git(project, "rev-parse", "HEAD^{tree}"), "format": 1,
                                     "mtime": int(git(project, "log", "-1", "--format=%ct"))}

    def no_tar(*args, **kwargs):
        raise AssertionError("the code layer was tarred again")

    switch = sys.getswitchinterval()  # the store writer shortens it for its threads
    with monkeypatch.context() as patch:
        patch.setattr(GitRepo, "write_tree_tar", no_tar)
        result = snapkit.Project.open(project).create(no_commit=True)
    sys.setswitchinterval(switch)
    second = _code_layer(cli, result.id)
    assert second["stored_bytes"] == 0 and second["new_chunks"] == 0
    assert {k: second[k] for k in ("logical_bytes", "chunks", "sha256", "source_state")} == \
        {k: first[k] for k in ("logical_bytes", "chunks", "sha256", "source_state")}
    store = snapkit.Project.open(project).unlocked_store()
    chunk_list = store.load_manifest(first_id).chunk_lists["code"]
    assert store.load_manifest(result.id).chunk_lists["code"] == chunk_list
    # The reused layer is exactly the tar a fresh write of this commit gives, and git's files.
    assert second["sha256"] == _fresh_tar_sha256(project)
    out = tmp_path / "code.tar"
    cli("cat", result.id, "--layer", "code", "-o", str(out))
    with tarfile.open(out) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    assert sorted(files) == sorted(git(project, "ls-tree", "-r", "--name-only", "HEAD").splitlines())
    for name, data in files.items():
        assert data == subprocess.run(["git", "show", f"HEAD:{name}"], cwd=project,
                                      capture_output=True, check=True).stdout


def test_changed_tree_or_commit_time_writes_a_new_code_layer(project, cli):
    import os

    cli("create", "--no-commit")
    first = _code_layer(cli)
    (project / "app.py").write_text("print('v2')\n")
    cli("create", "v2")  # commits the change
    changed = _code_layer(cli)
    assert changed["source_state"]["tree"] != first["source_state"]["tree"]
    assert changed["sha256"] != first["sha256"] and changed["new_chunks"] > 0
    assert changed["sha256"] == _fresh_tar_sha256(project)
    # Same tree, another commit time: every entry's mtime differs, so does the tar.
    subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "same tree"], cwd=project,
                   check=True, env={**os.environ, "GIT_COMMITTER_DATE": "2001-01-01T00:00:00Z"})
    cli("create", "--no-commit")
    retimed = _code_layer(cli)
    assert retimed["source_state"] == {**changed["source_state"], "mtime": 978307200}
    assert retimed["sha256"] != changed["sha256"]
    assert retimed["sha256"] == _fresh_tar_sha256(project)
