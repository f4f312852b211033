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
