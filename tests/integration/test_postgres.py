"""PostgreSQL end to end (SPEC §3, §5, §6) against a throwaway server the suite starts itself.

Oracles: `pg_dump --schema-only` text, the datasets' `counts.sh` (row counts,
sequence values, md5 of every table's rows), psql queries, /proc/*/cmdline,
the files under snapshots/. snapkit runs as a subprocess (`python -m snapkit`).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import DATASETS, Cli, git
from tests.integration.pg_server import pg_server, wait_for  # noqa: F401 (pg_server is a fixture)
from tests.test_cli import assert_error

# ---------------------------------------------------------------- helpers


@pytest.fixture
def repo(tmp_path) -> Path:
    """A git work tree with one commit; the database lives on the server."""
    path = tmp_path / "app"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "Test User")
    git(path, "config", "user.email", "test@example.com")
    (path / "app.py").write_text("print('v1')\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    return path


def fresh_db(server, prefix: str, owner: str = "postgres") -> str:
    name = f"{prefix}_{os.urandom(3).hex()}"
    server.createdb(name, owner)
    return name


def need_dataset(*parts: str) -> None:
    if not (DATASETS / "load.sh").exists() or not DATASETS.joinpath(*parts).exists():
        pytest.skip(f"dataset {'/'.join(parts)} not found under {DATASETS}")


def load(server, dataset: str, dbname: str) -> None:
    subprocess.run([str(DATASETS / "load.sh"), dataset, "postgres", server.conninfo(dbname)],
                   check=True, capture_output=True, text=True)


def counts(server, dbname: str) -> str:
    """HASH=1 counts.sh: object counts, rows, sequence values and md5 of every table."""
    proc = subprocess.run([str(DATASETS / "counts.sh"), "pg", server.conninfo(dbname)], check=True,
                          capture_output=True, text=True, env={**os.environ, "HASH": "1"})
    return proc.stdout


def schema(server, dbname: str) -> str:
    """pg_dump --schema-only, without comments and the random \\restrict keys of newer pg_dumps."""
    out = subprocess.run([server.tool("pg_dump"), "--schema-only", "-d", server.conninfo(dbname)],
                         check=True, capture_output=True, text=True).stdout
    keep = [ln for ln in out.splitlines()
            if not ln.startswith("--") and not ln.startswith("\\restrict") and not ln.startswith("\\unrestrict")]
    return "\n".join(keep)


def store_files(repo: Path) -> set[str]:
    root = repo / "snapshots"
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def show(cli, ref: str = "@0") -> dict:
    return json.loads(cli("show", ref, "--json").stdout)


def leftovers(server) -> set[str]:
    return {d for d in server.databases() if "_snapkit_" in d}


def cmdlines() -> list[tuple[int, str]]:
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    out.append((int(entry.name), f.read().replace(b"\0", b" ").decode(errors="replace")))
            except OSError:
                pass
    return out


def find_proc(tool: str, port: int) -> int | None:
    for pid, line in cmdlines():
        if os.path.basename(line.split(" ", 1)[0]) == tool and f"port={port}" in line:
            return pid
    return None


def table_digest(server, dbname: str, table: str) -> str:
    return server.sql(f"SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '') "
                      f"FROM {table} t", dbname=dbname)


def fill(server, dbname: str, rows: int) -> None:
    """A table big enough that dumping and restoring it takes a moment."""
    server.sql(f"CREATE TABLE filler(id int PRIMARY KEY, pad text); "
               f"INSERT INTO filler SELECT g, repeat(md5(g::text), 6) FROM generate_series(1, {rows}) g", dbname)


# ---------------------------------------------------------------- fidelity


def test_pagila_round_trip(pg_server, repo):
    need_dataset("pagila", "pagila-data.sql")
    s = pg_server
    db = fresh_db(s, "pagila")
    load(s, "pagila", db)
    before_schema, before_counts = schema(s, db), counts(s, db)
    expected = (DATASETS / "expected" / "pagila.postgres.txt").read_text()
    rows = [ln for ln in before_counts.splitlines() if ln.startswith("rows ")]
    assert rows == [ln for ln in expected.splitlines() if ln.startswith("rows ")]
    cli = Cli(repo)
    cli("init", "--db", s.url(db))
    cli("create", "-q")
    meta = show(cli)["database"]
    assert meta["engine"] == "postgresql"
    assert meta["server_version"].split()[0] == s.version.split()[0]
    assert meta["tables"]["payment"] == 16049 and meta["tables"]["rental"] == 16044
    assert meta["schema_fingerprint"].startswith("sha256:")

    s.sql("REFRESH MATERIALIZED VIEW rental_by_category; DROP TABLE film CASCADE; DELETE FROM payment; "
          "SELECT setval('actor_actor_id_seq', 1); CREATE TABLE added_later(id int REFERENCES staff(staff_id))", db)
    assert counts(s, db) != before_counts
    cli("restore", "@0", "--db-only", "--yes")

    assert schema(s, db) == before_schema      # enums, domains, partitions, functions, triggers, views
    assert counts(s, db) == before_counts      # rows, md5 of every table (non-ASCII), sequence values
    assert s.sql("SELECT md5(picture) FROM staff WHERE staff_id = 1", db) == "633ca8e521307444eb54a499fbe42832"
    assert s.sql("SELECT ispopulated FROM pg_matviews WHERE matviewname = 'rental_by_category'", db) == "f"
    assert s.sql("SELECT last_value FROM actor_actor_id_seq", db) == "200"
    assert s.sql("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()", db) \
        == "postgres"
    assert not leftovers(s)
    tags = [e["tags"] for e in json.loads(cli("list", "--json").stdout)["snapshots"]]
    assert ["safety"] in tags  # the damaged state was kept before the restore


def test_chinook_round_trip_to_url_and_restore_test(pg_server, repo):
    need_dataset("chinook", "Chinook_PostgreSql.sql")
    s = pg_server
    db = fresh_db(s, "chinook")
    load(s, "chinook", db)
    q = f'"{db}"'
    s.sql(f"ALTER DATABASE {q} SET work_mem = '7MB'; ALTER DATABASE {q} SET search_path = \"$user\", public; "
          f"COMMENT ON DATABASE {q} IS 'chinook ✓'; REVOKE ALL ON DATABASE {q} FROM PUBLIC; "
          f"GRANT CONNECT ON DATABASE {q} TO pg_monitor")
    acl_sql = f"SELECT datacl FROM pg_database WHERE datname = '{db}'"
    acl = s.sql(acl_sql)
    assert "pg_monitor=c/postgres" in acl
    before_schema, before_counts = schema(s, db), counts(s, db)
    settings_sql = (f"SELECT setconfig FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase "
                    f"WHERE d.datname = '{db}'")
    settings = s.sql(settings_sql)
    assert "work_mem=7MB" in settings and "search_path" in settings
    databases = s.databases()
    cli = Cli(repo)
    cli("init", "--db", s.url(db, scheme="postgres"))
    cli("create", "-q")
    meta = show(cli)["database"]
    assert meta["tables"]["track"] == 3503 and meta["url"] == s.url(db, scheme="postgres")

    proc = cli("verify", "--restore-test", "--json", ok=None)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["restore_tested"] == 1
    assert s.databases() == databases  # the scratch database is gone

    copy = f"{db}_copy"  # missing: --to-url creates it
    cli("restore", "@0", "--to-url", s.url(copy, scheme="postgresql+psycopg"), "--yes")
    assert counts(s, copy) == before_counts and schema(s, copy) == before_schema

    # the layer is a plain pg_dump archive: the stock tools take over (docs/engines.md)
    archive = repo.parent / "app.dump"
    cli("cat", "@0", "--layer", "database", "-o", str(archive))
    by_hand = fresh_db(s, "byhand")
    subprocess.run([s.tool("pg_restore"), "--exit-on-error", "-d", s.conninfo(by_hand), str(archive)],
                   check=True, capture_output=True)
    assert counts(s, by_hand) == before_counts
    s.dropdb(by_hand)

    s.sql('DELETE FROM invoice_line; DROP TABLE playlist_track', db)
    cli("restore", "@0", "--db-only", "--yes")
    assert counts(s, db) == before_counts and schema(s, db) == before_schema
    # database-level settings and comment are the live database's, kept across the swap
    assert s.sql(settings_sql) == settings
    assert s.sql(acl_sql) == acl
    assert s.sql("SHOW search_path", db) == '"$user", public'
    assert s.sql(f"SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = '{db}'") \
        == "chinook ✓"
    assert s.databases() == databases | {copy}


def test_metadata_schemas_and_migration_state(pg_server, repo):
    s = pg_server
    db = fresh_db(s, "meta")
    s.psql(dbname=db, input="""
        CREATE TABLE alembic_version(version_num varchar(32) PRIMARY KEY);
        INSERT INTO alembic_version VALUES ('ae1027a6acf');
        CREATE TABLE django_migrations(id serial PRIMARY KEY, app text, name text, applied timestamptz);
        INSERT INTO django_migrations(app, name) VALUES ('auth', '0001_initial'), ('auth', '0002_x'),
               ('shop', '0001_initial');
        CREATE TABLE schema_migrations(version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL);
        INSERT INTO schema_migrations VALUES (20240101120000, false);
        CREATE TABLE flyway_schema_history(installed_rank int PRIMARY KEY, version varchar(50), success boolean);
        INSERT INTO flyway_schema_history VALUES (1, '1', true), (2, '1.1', true), (3, '2', false);
        CREATE SCHEMA billing;
        CREATE TABLE billing.invoice(id int PRIMARY KEY, amount numeric(10,2) CHECK (amount >= 0));
        INSERT INTO billing.invoice SELECT g, g FROM generate_series(1, 5) g;
        CREATE VIEW billing.big AS SELECT * FROM billing.invoice WHERE amount > 3;
        CREATE TABLE billing.period(id int PRIMARY KEY, starts timestamptz DEFAULT '2024-01-01 00:00+00');
    """)
    # database-level settings must not change names or fingerprints (a scratch copy lacks them)
    s.sql(f"ALTER DATABASE \"{db}\" SET search_path = billing, public; "
          f"ALTER DATABASE \"{db}\" SET timezone = 'Asia/Tokyo'")
    cli = Cli(repo)
    cli("init", "--db", s.url(db))
    cli("create", "-q")
    meta = show(cli)["database"]
    assert meta["tables"]["billing.invoice"] == 5 and meta["tables"]["django_migrations"] == 3
    assert meta["migration_state"] == {
        "alembic": ["ae1027a6acf"],
        "django": {"applied": 3, "latest": {"auth": "0002_x", "shop": "0001_initial"}},
        "golang_migrate": {"version": 20240101120000, "dirty": False},
        "flyway": {"version": "1.1"},
    }
    first = meta["schema_fingerprint"]
    proc = cli("verify", "--restore-test", ok=None)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    s.sql("INSERT INTO billing.invoice VALUES (6, 6)", db)
    cli("create", "-q")
    assert show(cli)["database"]["schema_fingerprint"] == first  # data is not schema
    s.sql("CREATE INDEX invoice_amount ON billing.invoice(amount)", db)
    cli("create", "-q")
    assert show(cli)["database"]["schema_fingerprint"] != first


# ---------------------------------------------------------------- consistency


def test_snapshot_is_consistent_under_concurrent_writes(pg_server, repo):
    import psycopg

    s = pg_server
    db = fresh_db(s, "bank")
    accounts, total = 200, 200 * 1000
    s.sql(f"CREATE TABLE account(id int PRIMARY KEY, balance bigint NOT NULL); "
          f"INSERT INTO account SELECT g, 1000 FROM generate_series(1, {accounts}) g; "
          f"CREATE TABLE transfer(id bigserial PRIMARY KEY, src int, dst int, amount int)", db)
    fill(s, db, 150_000)  # so the dump takes long enough to overlap many transfers
    stop = threading.Event()
    done = [0]
    errors = []

    def writer():
        try:
            with psycopg.connect(host="127.0.0.1", port=s.port, user="postgres", dbname=db) as con:
                rnd = random.Random(7)
                while not stop.is_set():
                    a, b = rnd.sample(range(1, accounts + 1), 2)
                    amount = rnd.randint(1, 50)
                    with con.transaction():
                        con.execute("UPDATE account SET balance = balance - %s WHERE id = %s", [amount, a])
                        con.execute("INSERT INTO transfer(src, dst, amount) VALUES (%s, %s, %s)", [a, b, amount])
                        con.execute("UPDATE account SET balance = balance + %s WHERE id = %s", [amount, b])
                    done[0] += 1
        except Exception as exc:  # surfaced below
            errors.append(exc)

    cli = Cli(repo)
    cli("init", "--db", s.url(db))
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert wait_for(lambda: done[0] > 50)
        start = done[0]
        cli("create", "-q")
        during = done[0] - start
    finally:
        stop.set()
        thread.join()
    assert not errors, errors
    assert during > 20, f"only {during} transfers ran during the snapshot"
    meta = show(cli)["database"]
    cli("restore", "@0", "--db-only", "--yes", "--no-safety")
    assert s.sql("SELECT sum(balance) FROM account", db) == str(total)
    # inspection and dump read the same snapshot: the recorded count is the restored count
    assert int(s.sql("SELECT count(*) FROM transfer", db)) == meta["tables"]["transfer"]
    assert 0 < meta["tables"]["transfer"] < done[0]


# ---------------------------------------------------------------- errors


def test_errors_are_one_line_and_write_nothing(pg_server, repo, tmp_path):
    s = pg_server
    db = fresh_db(s, "errs")
    s.create_role("err_user", "right-password")
    s.sql(f'GRANT CONNECT ON DATABASE "{db}" TO err_user')
    cli = Cli(repo)
    cli("init", "--db", s.url(db))
    cli("create", "-q")
    cli("list")
    files = store_files(repo)
    assert "catalog.cache" not in files  # caches live outside the store (docs/format.md)
    empty = tmp_path / "no-tools"
    empty.mkdir()
    old = tmp_path / "old-tools"
    old.mkdir()
    (old / "pg_dump").write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 9.6.24'\n")
    (old / "pg_dump").chmod(0o755)
    failing = tmp_path / "failing-tools"
    failing.mkdir()
    (failing / "pg_dump").write_text(
        "#!/bin/sh\n[ \"$1\" = --version ] && { echo 'pg_dump (PostgreSQL) 99.1'; exit 0; }\n"
        "head -c 300000 /dev/zero\necho 'pg_dump: error: query failed: boom' >&2\nexit 1\n")
    (failing / "pg_dump").chmod(0o755)
    major = s.version.split()[0].split(".")[0]
    cases = [
        ({"SNAPKIT_DATABASE_URL": s.url(db, port=1)}, ["cannot connect to PostgreSQL at 127.0.0.1:1"]),
        ({"SNAPKIT_DATABASE_URL": s.url(db, user="err_user", password="wrong")},
         ["authentication failed for user err_user"]),
        ({"SNAPKIT_DATABASE_URL": s.url("no_such_db")}, ["database no_such_db does not exist"]),
        ({"SNAPKIT_PG_BIN": str(empty)}, ["pg_dump not found"]),
        ({"SNAPKIT_PG_BIN": str(old)}, ["pg_dump 9.6 is older than the server", f"({major})"]),
        ({"SNAPKIT_PG_BIN": str(failing)}, ["pg_dump failed: query failed: boom"]),  # after 300 kB
    ]
    for env, needles in cases:
        proc = cli("create", "-q", ok=None, env=env)
        message = assert_error(proc, 1, *needles)
        assert "wrong" not in message
        assert store_files(repo) == files, env
    proc = cli("create", "-q", ok=None, env={"SNAPKIT_PG_BIN": str(old)})
    assert f"postgresql-client-{major}" in proc.stderr
    assert len(json.loads(cli("list", "--json").stdout)["snapshots"]) == 1


def test_locked_table_times_out_instead_of_blocking(pg_server, tmp_path):
    """The hook's short db timeout must bound the wait for an app's exclusive lock."""
    import psycopg

    from snapkit.engines import open_engine
    from snapkit.errors import DatabaseError

    s = pg_server
    db = fresh_db(s, "locked")
    s.sql("CREATE TABLE busy(id int)", db)
    engine = open_engine(s.url(db), tmp_path)
    engine.timeout = 1.0
    with psycopg.connect(host="127.0.0.1", port=s.port, user="postgres", dbname=db) as holder:
        holder.execute("LOCK TABLE busy IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        # Whichever gives up first: the parallel inspection (lock_timeout) or pg_dump
        # (--lock-wait-timeout, reported as a statement timeout, with a hint).
        with pytest.raises(DatabaseError, match="lock timeout|statement timeout") as caught:
            with engine.dump(tmp_path) as dump:
                b"".join(dump.stream)
        assert "lock timeout" in caught.value.message or "exclusive lock" in (caught.value.hint or "")
        assert time.monotonic() - started < 8
    assert not list(tmp_path.glob("pgpass*"))


def test_sqlite_snapshot_refused_on_postgresql(pg_server, repo):
    import sqlite3

    s = pg_server
    con = sqlite3.connect(repo / "app.db")
    con.execute("CREATE TABLE t(x)")
    con.commit()
    con.close()
    cli = Cli(repo)
    cli("init", "--db", "sqlite:///app.db")
    cli("create", "-q", "--no-commit")
    target = fresh_db(s, "fromsqlite")
    before = schema(s, target)
    proc = cli("restore", "@0", "--to-url", s.url(target), "--yes", ok=None)
    assert_error(proc, 1, "sqlite", "postgresql")
    assert schema(s, target) == before


# ---------------------------------------------------------------- secrets


def test_password_never_in_argv_metadata_or_store(pg_server, repo):
    s = pg_server
    password = f"Pw-{os.urandom(6).hex()}:sec\\ret"
    s.create_role("pw_user", password, "CREATEDB")
    db = fresh_db(s, "secret", owner="pw_user")
    s.psql(dbname=db, input="SET ROLE pw_user; CREATE TABLE filler(id int PRIMARY KEY, pad text); "
                            "INSERT INTO filler SELECT g, repeat(md5(g::text), 6) FROM generate_series(1, 150000) g;")
    url = s.url(db, user="pw_user", password=password)
    env = {"APP_DATABASE_URL": url}
    cli = Cli(repo)
    cli("init", "--db", "${APP_DATABASE_URL}", env=env)

    def watch(args: tuple[str, ...], tool: str) -> tuple[int, list[str]]:
        seen_tool = 0
        leaks = []
        import sys

        proc = subprocess.Popen([sys.executable, "-m", "snapkit", *args], cwd=repo, env={**os.environ, **env},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        while proc.poll() is None:
            for pid, line in cmdlines():
                if password in line:
                    leaks.append(line)
                if os.path.basename(line.split(" ", 1)[0]) == tool and f"port={s.port}" in line:
                    seen_tool += 1
                    try:
                        environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
                        if password in environ:
                            leaks.append(f"environment of {tool}")
                    except OSError:
                        pass
            time.sleep(0.01)
        _out, err = proc.communicate()
        assert proc.returncode == 0, err
        return seen_tool, leaks

    seen, leaks = watch(("create", "-q"), "pg_dump")
    assert seen and not leaks
    s.sql("DELETE FROM filler WHERE id > 10", db)
    seen, leaks = watch(("restore", "@0", "--db-only", "--yes"), "pg_restore")
    assert seen and not leaks
    assert s.sql("SELECT count(*) FROM filler", db) == "150000"
    assert s.sql(f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{db}'") == "pw_user"

    shown = cli("show", "@0", "--json", env=env).stdout
    assert password not in shown and json.loads(shown)["database"]["url"] == s.url(db, user="pw_user")
    assert password not in cli("list", "--json", env=env).stdout
    secret = password.encode()
    for path in [*repo.rglob("*"), *Path(os.environ["HOME"]).rglob("*")]:
        if path.is_file():
            assert secret not in path.read_bytes(), path
    assert not [p for p in (repo / "snapshots").rglob("pgpass*")]


def test_role_without_createdb_restores_in_one_transaction(pg_server, repo):
    s = pg_server
    s.create_role("plain_user", "plain-pw")
    db = fresh_db(s, "plain", owner="plain_user")
    s.psql(dbname=db, input="SET ROLE plain_user; CREATE TABLE item(id int PRIMARY KEY, name text); "
                            "INSERT INTO item SELECT g, 'item ' || g FROM generate_series(1, 100) g;")
    env = {"SNAPKIT_DATABASE_URL": s.url(db, user="plain_user", password="plain-pw")}
    cli = Cli(repo)
    cli("init", "--db", "postgresql://plain_user@127.0.0.1/unused", env=env)
    cli("create", "-q", env=env)
    before = table_digest(s, db, "item")
    s.sql("UPDATE item SET name = 'changed'; DELETE FROM item WHERE id > 50", db)
    cli("restore", "@0", "--db-only", "--yes", env=env)
    assert table_digest(s, db, "item") == before
    proc = cli("verify", "--restore-test", ok=None, env=env)
    assert proc.returncode == 3
    assert "may not create databases" in proc.stdout + proc.stderr
    assert not leftovers(s)


# ---------------------------------------------------------------- interrupted restore


def test_killed_restore_leaves_the_database_as_it_was(pg_server, repo):
    s = pg_server
    db = fresh_db(s, "killme")
    fill(s, db, 400_000)
    cli = Cli(repo)
    cli("init", "--db", s.url(db))
    cli("create", "-q")
    s.sql("DELETE FROM filler WHERE id % 3 = 0; UPDATE filler SET pad = 'now' WHERE id % 5 = 0", db)
    before = table_digest(s, db, "filler")
    import sys

    for victim in ("pg_restore", "snapkit"):
        proc = subprocess.Popen([sys.executable, "-m", "snapkit", "restore", "@0", "--db-only", "--yes",
                                 "--no-safety"], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert wait_for(lambda: find_proc("pg_restore", s.port) is not None, timeout=30), proc.stderr
            time.sleep(0.3)  # well into the data
            pid = find_proc("pg_restore", s.port) if victim == "pg_restore" else proc.pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode != 0
        if victim == "pg_restore":
            assert_error(subprocess.CompletedProcess(proc.args, proc.returncode, out, err), 1, "pg_restore failed")
            assert not leftovers(s)  # snapkit dropped its scratch database
        assert wait_for(lambda: find_proc("pg_restore", s.port) is None, timeout=30)
        assert table_digest(s, db, "filler") == before
    # SIGKILLed snapkit cannot clean up: its scratch database is left, named for what it is
    assert all("_snapkit_restore_" in d for d in leftovers(s))
    for name in leftovers(s):
        s.dropdb(name)


# ---------------------------------------------------------------- dedup


CLUSTERED_CHANGE = ("UPDATE event SET amount = amount + 1 WHERE id BETWEEN 100001 AND 103000; "
                    "INSERT INTO event SELECT g, 'new', g, now() FROM generate_series(300001, 302000) g; "
                    "DELETE FROM event WHERE id BETWEEN 5001 AND 6000")
# One row in every 100: each updated row moves to the end of the heap, so nearly every
# chunk of the next dump is new; delta chunks against similar old chunks keep it small.
SCATTERED_CHANGE = "UPDATE event SET amount = amount + 1 WHERE id % 100 = 0"


@pytest.mark.parametrize("change", [CLUSTERED_CHANGE, SCATTERED_CHANGE], ids=["clustered", "scattered"])
def test_second_snapshot_after_small_change_stores_little(pg_server, repo, change):
    """A few thousand changed rows cost a small fraction of the first snapshot (docs/engines.md).

    pg_dump writes rows in heap order: clustered changes cost about their own chunks; scattered
    updates rewrite nearly every chunk, and delta chunks (similarity sketches) keep those small.
    """
    s = pg_server
    db = fresh_db(s, "dedup")
    s.sql("CREATE TABLE event(id int PRIMARY KEY, ref text, amount bigint, at timestamptz); "
          "INSERT INTO event SELECT g, md5(g::text) || md5((g * 7)::text), (g::bigint * 7919) % 1000003, "
          "timestamptz '2024-01-01' + g * interval '1 minute' FROM generate_series(1, 300000) g", db)
    cli = Cli(repo)
    cli("init", "--db", s.url(db))
    first = json.loads(cli("create", "-q", "--json").stdout)
    s.sql(change, db)
    second = json.loads(cli("create", "-q", "--json").stdout)
    a = first["layers"]["database"]
    b = second["layers"]["database"]
    ratio = b["stored_bytes"] / a["stored_bytes"]
    print(f"\n300k rows: dump {a['logical_bytes']} B, first stored {a['stored_bytes']} B, "
          f"second stored {b['stored_bytes']} B ({ratio:.1%})")
    assert a["stored_bytes"] > 5_000_000  # not trivially compressible
    assert ratio < 0.1
