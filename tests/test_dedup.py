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
