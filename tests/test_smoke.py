from tests.conftest import sqlite_dump


def test_create_then_restore_round_trip(project, cli):
    before = sqlite_dump(project / "app.db")
    sid = cli("create", "--no-commit").stdout.strip()
    (project / "app.db").unlink()
    cli("restore", sid, "--db-only", "--yes")
    assert sqlite_dump(project / "app.db") == before
