"""Database-only restores across migrations: older snapshot → restore + post_restore; newer → refuse."""

from __future__ import annotations

import sqlite3

from tests.conftest import git, sqlite_dump


def _migrate(db, version: str) -> None:
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE IF NOT EXISTS schema_migrations(version TEXT PRIMARY KEY)")
    con.execute("INSERT INTO schema_migrations VALUES (?)", (version,))
    con.commit()
    con.close()


def _setup(project, cli):
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "store ignored")
    db = project / "app.db"
    _migrate(db, "20260101000000")
    old = cli("create", "--no-commit").stdout.strip()
    old_dump = sqlite_dump(db)
    _migrate(db, "20260201000000")
    (project / "app.py").write_text("print('v2')\n")
    new = cli("create", "v2 with migration").stdout.strip()
    return db, old, old_dump, new


def test_older_snapshot_restores_and_runs_post_restore(project, cli):
    db, old, old_dump, _new = _setup(project, cli)
    marker = project / "migrated.txt"
    text = (project / "snapkit.toml").read_text().replace(
        "post_restore = []", f'post_restore = ["touch", "{marker.name}"]')
    (project / "snapkit.toml").write_text(text)
    plan = cli("restore", old, "--db-only", "--dry-run")
    assert "older" in plan.stdout + plan.stderr
    assert not marker.exists()
    proc = cli("restore", old, "--db-only", "--yes")
    assert "migrations" in proc.stderr
    assert marker.exists()
    assert sqlite_dump(db) == old_dump


def test_newer_snapshot_is_refused_without_force(project, cli):
    db, old, _old_dump, new = _setup(project, cli)
    cli("restore", old, "--yes")  # code and data back to the old state
    before = sqlite_dump(db)
    proc = cli("restore", new, "--db-only", "--yes", ok=None)
    assert proc.returncode == 1
    assert proc.stderr.startswith("snapkit: error: refusing a database-only restore")
    assert sqlite_dump(db) == before
    cli("restore", new, "--db-only", "--yes", "--force")
    assert "20260201000000" in sqlite_dump(db)
