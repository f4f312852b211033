"""Real sample databases round-trip through snapkit unchanged (datasets/README.md).

Oracles: the sqlite3 shell's .dump, and `HASH=1 counts.sh sqlite DB` compared with
the dataset's expected/ file (row counts, object counts, md5 of every table's rows).
"""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import DATASETS, git, sqlite_dump

pytestmark = pytest.mark.skipif(not (DATASETS / "load.sh").exists(),
                                reason=f"sample datasets not found at {DATASETS} (load.sh missing)")


def counts(db) -> str:
    return subprocess.run(["bash", str(DATASETS / "counts.sh"), "sqlite", str(db)], capture_output=True,
                          text=True, check=True, env={**os.environ, "HASH": "1"}).stdout


@pytest.mark.parametrize("dataset", ["chinook", "northwind"])
def test_dataset_round_trip(app_repo, cli, dataset):
    db = app_repo / "app.db"
    db.unlink()
    subprocess.run(["bash", str(DATASETS / "load.sh"), dataset, "sqlite", str(db)], check=True,
                   capture_output=True, timeout=120)
    expected = (DATASETS / "expected" / f"{dataset}.sqlite.txt").read_text()
    assert counts(db) == expected  # the load itself is faithful
    dump = sqlite_dump(db)

    cli("init", "--db", "sqlite:///app.db")
    sid = cli("create", f"{dataset} loaded").stdout.strip()
    commit = git(app_repo, "rev-parse", "HEAD")
    db.unlink()
    for leftover in app_repo.glob("app.db-*"):
        leftover.unlink()

    cli("restore", sid, "--yes")
    assert sqlite_dump(db) == dump
    assert counts(db) == expected
    assert git(app_repo, "rev-parse", "HEAD") == commit
