"""MySQL/MariaDB engine against a real, throwaway MariaDB (tests/integration/mariadb_server.py).

The CLI runs as a subprocess in a real git repo. Oracles are independent of
snapkit: the stock `mariadb-dump --no-data` schema dump, the datasets'
`counts.sh` (row counts, AUTO_INCREMENT values, md5 of every table's rows),
`CHECKSUM TABLE`, /proc/*/cmdline, and the server's own information_schema.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import DATASETS, git
from tests.integration import mariadb_server
from tests.test_cli import assert_error, snapshots, tree_state

needs_datasets = pytest.mark.skipif(not (DATASETS / "load.sh").exists(),
                                    reason=f"sample datasets not found at {DATASETS} (load.sh missing)")
SAKILA_PNG_MD5 = "633ca8e521307444eb54a499fbe42832"  # staff 1's picture (datasets/README.md)
mariadb = mariadb_server.mariadb  # the session fixture: one private server per test process


# ---------------------------------------------------------------- helpers

def new_db(server, label: str) -> str:
    return server.create_database(f"{label}_{uuid.uuid4().hex[:6]}")


def load(server, dataset: str, db: str) -> None:
    subprocess.run(["bash", str(DATASETS / "load.sh"), dataset, "mysql", db, *server.client_args()],
                   check=True, capture_output=True, timeout=120)


def counts(server, db: str) -> str:
    return subprocess.run(["bash", str(DATASETS / "counts.sh"), "mysql", db, *server.client_args()],
                          check=True, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HASH": "1"}).stdout


def scratch_schemas(server) -> set[str]:
    return {d for d in server.databases() if re.search(r"_snapkit_[0-9a-f]{12}(_old)?$", d)}


def checksums(server, db: str) -> dict[str, int]:
    """CHECKSUM TABLE of every base table: the server's own hash of the rows."""
    with server.connect() as con, con.cursor() as cur:
        cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = %s "
                    "AND table_type = 'BASE TABLE' ORDER BY table_name", (db,))
        out = {}
        for (table,) in cur.fetchall():
            cur.execute("CHECKSUM TABLE `{}`.`{}`".format(db.replace("`", "``"), table.replace("`", "``")))
            out[table] = cur.fetchone()[1]
        return out


def init(cli, url: str) -> None:
    cli("init", "--db", url)
    git(cli.cwd, "add", "-A")
    git(cli.cwd, "commit", "-q", "-m", "configure snapkit")


def show(cli, ref: str, env: dict | None = None) -> dict:
    return json.loads(cli("show", ref, "--json", env=env).stdout)


# ---------------------------------------------------------------- fidelity

@needs_datasets
def test_sakila_restore_is_faithful(mariadb, app_repo, cli):
    db = new_db(mariadb, "sakila")
    load(mariadb, "sakila", db)
    expected = (DATASETS / "expected" / "sakila.mysql.txt").read_text()
    assert counts(mariadb, db) == expected  # the load itself is faithful
    schema = mariadb.dump_schema(db)
    init(cli, mariadb.url(db))

    sid = cli("create", "--no-commit").stdout.strip()
    meta = show(cli, sid)["database"]
    assert meta["engine"] == "mysql" and meta["server_version"].startswith("MariaDB 10.")
    rows = dict(re.findall(r"^rows (\S+) (\d+)$", expected, re.MULTILINE))
    assert meta["tables"] == {t: int(n) for t, n in rows.items()}
    assert meta["schema_fingerprint"].startswith("sha256:")

    # Damage data, schema, routines, triggers and a view; two views become invalid.
    mariadb.sql("DROP TABLE payment; DELETE FROM film_actor WHERE actor_id < 100; UPDATE staff SET picture = NULL;"
                "UPDATE customer SET first_name = 'Zoë ✓'; DROP PROCEDURE rewards_report; DROP TRIGGER ins_film;"
                "DROP VIEW staff_list; CREATE TABLE junk (id INT PRIMARY KEY); CREATE VIEW junk_v AS SELECT 1 AS x",
                db=db)
    assert counts(mariadb, db) != expected

    cli("restore", "@0", "--db-only", "--yes")
    assert mariadb.dump_schema(db) == schema  # tables, views, routines, triggers, events, AUTO_INCREMENT
    assert counts(mariadb, db) == expected     # rows, next AUTO_INCREMENTs, md5 of every table's rows
    assert mariadb.sql(f"SELECT MD5(picture) FROM `{db}`.staff WHERE staff_id = 1").strip() == SAKILA_PNG_MD5
    # The objects work, not only exist: a function, a trigger, a view over the restored tables.
    assert mariadb.sql("SELECT inventory_in_stock(1)", db=db).strip() == "1"
    mariadb.sql("INSERT INTO film (title, language_id, rating, special_features) "
                "VALUES ('Ünïcode Ωmega', 1, 'NC-17', 'Trailers,Deleted Scenes')", db=db)
    assert mariadb.sql("SELECT title FROM film_text WHERE title LIKE 'Ünïcode%'", db=db).strip() == "Ünïcode Ωmega"
    assert mariadb.sql("SELECT count(*) FROM sales_by_store", db=db).strip() == "2"
    assert scratch_schemas(mariadb) == set()

    # The safety snapshot of the damaged database: its invalid views are left out, the rest is kept.
    safety = [s for s in snapshots(cli) if "safety" in s["tags"]]
    assert len(safety) == 1
    assert show(cli, safety[0]["id"])["database"]["tables"]["junk"] == 0
    layer = cli("cat", safety[0]["id"], "--layer", "database").stdout
    left_out = layer[layer.index("-- snapkit: invalid views left out"):]
    assert "VIEW `sales_by_store`" in left_out and "VIEW `sales_by_film_category`" in left_out

    out = json.loads(cli("verify", "--restore-test", "--json", ok=None).stdout)
    assert out["problems"] == [] and out["restore_tested"] == 2
    assert scratch_schemas(mariadb) == set()


@needs_datasets
def test_chinook_round_trip_into_a_new_database(mariadb, app_repo, cli):
    db = new_db(mariadb, "chinook")
    load(mariadb, "chinook", db)
    expected = (DATASETS / "expected" / "chinook.mysql.txt").read_text()
    assert counts(mariadb, db) == expected
    init(cli, mariadb.url(db, tcp=True, scheme="mariadb"))  # TCP and the mariadb:// scheme
    cli("create", "--no-commit")

    copy = f"{db}_copy"
    cli("restore", "@0", "--to-url", mariadb.url(copy, tcp=True), "--yes")  # created: it was missing
    assert counts(mariadb, copy) == expected
    # Comment lines of the oracle name the database ("-- Host: … Database: …"): left out here only.
    comments = re.compile(r"^--.*$", re.MULTILINE)
    assert comments.sub("", mariadb.dump_schema(copy)) == comments.sub("", mariadb.dump_schema(db))

    # The layer is a plain SQL script: taken out with `cat`, it loads by hand into any database.
    raw = app_repo.parent / "dump.sql"
    cli("cat", "@0", "--layer", "database", "-o", str(raw))
    by_hand = mariadb.create_database(f"{db}_by_hand")
    with open(raw, "rb") as f:
        subprocess.run([mariadb.bins["client"], "--no-defaults", *mariadb.client_args(), "--binary-mode",
                        by_hand], stdin=f, check=True, capture_output=True, timeout=120)
    assert counts(mariadb, by_hand) == expected

    mariadb.sql(f"DROP DATABASE `{db}`")  # the configured database is gone: restore creates it
    cli("restore", "@0", "--db-only", "--yes")
    assert counts(mariadb, db) == expected
    assert scratch_schemas(mariadb) == set()


TRICKY = r"""
CREATE TABLE t (
  id INT AUTO_INCREMENT PRIMARY KEY,
  s VARCHAR(200) CHARACTER SET utf8mb4,
  b LONGBLOB,
  e ENUM('a', 'b c', 'ü'),
  st SET('x', 'y', 'z'),
  bits BIT(5),
  j JSON,
  d DECIMAL(20, 6),
  ts DATETIME(6),
  f DOUBLE
) ENGINE=InnoDB;
INSERT INTO t (s, b, e, st, bits, j, d, ts, f) VALUES
  ('it''s ),( a trap', 0x00FF27225C0A0D1A, 'b c', 'x,z', b'10101', '{"k": "v),(\\"q"}', -12345.678901,
   '2024-02-29 23:59:59.123456', 1e300),
  ('back\\slash \n newline; and );', '', 'ü', '', b'0', 'null', 0, '1970-01-01 00:00:01', -0.5),
  ('🚀 emoji 東京 Ωmega', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
  (NULL, REPEAT(0x5C27, 10), 'a', 'y', b'11111', '[1, 2, [3]]', 1, NOW(6), 0);
INSERT INTO t (s, b) SELECT CONCAT('row ', seq, ' ),('), UNHEX(SHA2(seq, 256)) FROM seq_1_to_3000;
CREATE TABLE big (id INT PRIMARY KEY, payload LONGBLOB);
CREATE TABLE empty_one (id INT PRIMARY KEY);
CREATE TABLE `odd ``name`` ü` (id INT PRIMARY KEY, v TEXT);
INSERT INTO `odd ``name`` ü` VALUES (1, 'INSERT INTO `t` VALUES (1),(2);'), (2, 'DELIMITER ;;');
CREATE TRIGGER t_ai AFTER INSERT ON t FOR EACH ROW INSERT INTO empty_one VALUES (NEW.id + 1000000);
CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY);
INSERT INTO alembic_version VALUES ('4c7cec7a1b2f');
"""


def test_tricky_content_and_names_round_trip(mariadb, app_repo, cli):
    """Quotes, backslashes, `),(` and `;` inside strings, BLOBs with every byte, a 3 MiB row
    (a single dump line longer than the row counter keeps), odd names: counts and data survive."""
    db = new_db(mariadb, "odd-db")  # a name that needs quoting everywhere
    mariadb.sql(TRICKY, db=db)
    with mariadb.connect(db) as con, con.cursor() as cur:
        cur.execute("INSERT INTO big VALUES (1, %s), (2, %s)", (os.urandom(3 << 20), bytes(range(256)) * 5))
    before = checksums(mariadb, db)
    schema = mariadb.dump_schema(db)
    init(cli, mariadb.url(db))
    sid = cli("create", "--no-commit").stdout.strip()
    meta = show(cli, sid)["database"]
    assert meta["tables"] == {"t": 3004, "big": 2, "empty_one": 0, "odd `name` ü": 2, "alembic_version": 1}
    assert meta["migration_state"] == {"alembic": ["4c7cec7a1b2f"]}

    mariadb.sql("DELETE FROM t WHERE id % 2 = 0; UPDATE big SET payload = NULL; DROP TABLE `odd ``name`` ü`;"
                f"ALTER DATABASE `{db}` CHARACTER SET latin1 COLLATE latin1_swedish_ci", db=db)
    cli("restore", sid, "--db-only", "--yes", "--no-safety")
    assert checksums(mariadb, db) == before
    assert mariadb.dump_schema(db) == schema
    assert mariadb.sql(f"SELECT default_collation_name FROM information_schema.schemata "
                       f"WHERE schema_name = '{db}'").strip() == "utf8mb4_general_ci"  # the snapshot's defaults
    out = json.loads(cli("verify", "--restore-test", "--json", ok=None).stdout)
    assert out["problems"] == [] and out["restore_tested"] == 1


# ---------------------------------------------------------------- consistency

def test_snapshot_is_consistent_while_the_app_writes(mariadb, app_repo, cli):
    """Transfers keep the total constant and append to a ledger while `create` runs."""
    db = new_db(mariadb, "bank")
    mariadb.sql("CREATE TABLE accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB;"
                "INSERT INTO accounts SELECT seq, 1000 FROM seq_1_to_200;"
                "CREATE TABLE ledger (id INT AUTO_INCREMENT PRIMARY KEY, a INT, b INT, amount INT, "
                "note VARCHAR(100)) ENGINE=InnoDB;"
                "INSERT INTO ledger (a, b, amount, note) SELECT 0, 0, 0, REPEAT('x', 90) FROM seq_1_to_60000", db=db)
    init(cli, mariadb.url(db))
    stop = threading.Event()
    done = []

    def transfers():
        import random

        with mariadb.connect(db, autocommit=False) as con, con.cursor() as cur:
            while not stop.is_set():
                a, b = random.sample(range(1, 201), 2)
                amount = random.randint(1, 50)
                cur.execute("UPDATE accounts SET balance = balance - %s WHERE id = %s", (amount, a))
                cur.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (amount, b))
                cur.execute("INSERT INTO ledger (a, b, amount, note) VALUES (%s, %s, %s, 'transfer')", (a, b, amount))
                con.commit()
                done.append(1)

    thread = threading.Thread(target=transfers, daemon=True)
    thread.start()
    try:
        ids = [cli("create", "--no-commit").stdout.strip() for _ in range(2)]
    finally:
        stop.set()
        thread.join(timeout=30)
    assert len(done) > 50, "the writer did not overlap the snapshots"
    for n, sid in enumerate(ids):
        copy = f"{db}_r{n}"
        cli("restore", sid, "--to-url", mariadb.url(copy), "--yes")
        total, rows = mariadb.sql("SELECT SUM(balance), (SELECT count(*) FROM ledger) FROM accounts", db=copy).split()
        assert int(total) == 200 * 1000
        assert int(rows) == show(cli, sid)["database"]["tables"]["ledger"]  # counts describe the snapshot
    out = json.loads(cli("verify", "--restore-test", "--json", ok=None).stdout)
    assert out["problems"] == [] and out["restore_tested"] == 2


# ---------------------------------------------------------------- errors

def _bad_urls(server, db: str, tmp_path: Path) -> dict[str, tuple[dict, str]]:
    empty = tmp_path / "no-tools"
    empty.mkdir()
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    return {
        "server down (tcp)": ({"SNAPKIT_DATABASE_URL": f"mysql://root@127.0.0.1:{free}/{db}"}, "cannot connect"),
        "server down (socket)": ({"SNAPKIT_DATABASE_URL": f"mysql://root@localhost/{db}?unix_socket={tmp_path}/x.sock"},
                                 "cannot connect"),
        "wrong password": ({"SNAPKIT_DATABASE_URL": server.url(db, server.user, "not-the-password")},
                           "access denied"),
        "unknown database": ({"SNAPKIT_DATABASE_URL": server.url("no_such_db")}, "does not exist"),
        "dump tool missing": ({"SNAPKIT_MYSQL_BIN": str(empty)}, "not found"),
    }


def test_errors_are_one_line_and_write_nothing(mariadb, app_repo, cli, tmp_path):
    db = new_db(mariadb, "errs")
    mariadb.sql("CREATE TABLE t (id INT PRIMARY KEY)", db=db)
    init(cli, mariadb.url(db))
    cli("create", "--no-commit")
    store = app_repo / "snapshots"

    def files():  # the store's files (no cache lives there: docs/format.md)
        return tree_state(store)

    before = files()
    head = git(app_repo, "rev-parse", "HEAD")
    for case, (env, needle) in _bad_urls(mariadb, db, tmp_path).items():
        (app_repo / "new.py").write_text(f"# {case}\n")
        proc = cli("create", f"change for {case}", ok=None, env=env, timeout=60)
        message = assert_error(proc, 1, needle)
        assert "not-the-password" not in proc.stderr, case
        assert files() == before, case
        assert git(app_repo, "rev-parse", "HEAD") == head, f"{case}: committed although the snapshot failed"
        assert "\n" not in message
        if case in ("server down (tcp)", "wrong password"):  # not mistaken for "no database": no
            proc = cli("restore", "@0", "--db-only", "--yes", ok=None, env=env, timeout=60)  # silent skip
            assert_error(proc, 1, needle)                          # of the safety snapshot
            assert files() == before, case
    assert len(snapshots(cli)) == 1


# ---------------------------------------------------------------- secrets

SHIM = """#!/bin/sh
# Logs how snapkit calls the tool (argv, and the mode of the option file in $1), then runs it.
case "$1" in
  --defaults-file=*) f="${1#--defaults-file=}"; mode="$(stat -L -c %a "$f")" ;;
  *) f="" mode="" ;;
esac
printf '%s\\t%s\\t%s\\n' "$mode" "$f" "$*" >> "LOG"
sleep 0.3
exec "REAL" "$@"
"""


def test_password_never_on_a_command_line_nor_in_the_store(mariadb, app_repo, cli, tmp_path):
    db = new_db(mariadb, "secret")
    mariadb.sql("CREATE TABLE t (id INT PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'one');"
                "CREATE VIEW v AS SELECT * FROM t", db=db)
    shims, log = tmp_path / "shims", tmp_path / "tools.log"
    shims.mkdir()
    for name in ("mariadb-dump", "mariadb"):
        real = subprocess.run(["sh", "-c", f"command -v {name}"], capture_output=True, text=True,
                              check=True).stdout.strip()
        (shims / name).write_text(SHIM.replace("LOG", str(log)).replace("REAL", real))
        (shims / name).chmod(0o755)
    url = mariadb.url(db, mariadb.user, mariadb.password)
    env = {"SNAPKIT_DATABASE_URL": url, "SNAPKIT_MYSQL_BIN": str(shims)}
    init(cli, mariadb.url(db, mariadb.user))  # no password in snapkit.toml: it comes from the environment
    secrets = [mariadb.password, url.split(":")[2].split("@")[0]]  # as typed, and URL-encoded

    seen = []
    for args in (("create", "--no-commit"), ("restore", "@0", "--db-only", "--yes")):
        proc = subprocess.Popen([sys.executable, "-m", "snapkit", *args], cwd=app_repo, env={**os.environ, **env},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        while proc.poll() is None:
            for entry in Path("/proc").iterdir():
                try:
                    cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                if "--defaults-file=" in cmdline:
                    seen.append(cmdline)
                for secret in secrets:
                    assert secret not in cmdline, f"password on a command line: {cmdline}"
            time.sleep(0.01)
        _out, err = proc.communicate()
        assert proc.returncode == 0, err
    assert seen, "never saw a tool running: the /proc scan proves nothing"

    calls = [line.split("\t") for line in log.read_text().splitlines()]
    assert calls, "the tools were not called through the shims"
    for mode, path, argv in calls:
        if argv == "--version":
            continue
        assert argv.startswith("--defaults-file="), argv  # the first argument
        assert mode == "600", (mode, path)
        assert not Path(path).exists() or path.startswith("/dev/fd/"), f"option file left behind: {path}"
    meta = show(cli, "@0", env=env)["database"]
    assert meta["url"].startswith(f"mysql://{mariadb.user}@localhost/{db}?unix_socket=")
    shown = cli("show", "@0", "--json", env=env).stdout + cli("list", "--json", env=env).stdout
    for text in (shown, (app_repo / "snapkit.toml").read_text()):
        for secret in secrets:
            assert secret not in text
    for root in (app_repo / "snapshots", app_repo / ".git"):
        for path in root.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                for secret in secrets:
                    assert secret.encode() not in data, f"password in {path}"


# ---------------------------------------------------------------- all or nothing

def _big_database(server, db: str) -> None:
    server.sql("CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(100), body TEXT) ENGINE=InnoDB;"
               "INSERT INTO items SELECT seq, CONCAT('item ', seq), REPEAT(MD5(seq), 6) FROM seq_1_to_250000;"
               "CREATE TABLE notes (id INT PRIMARY KEY, note TEXT);"
               "CREATE TRIGGER items_ai AFTER INSERT ON items FOR EACH ROW INSERT INTO notes VALUES (NEW.id, 'new');"
               "CREATE VIEW first_items AS SELECT id, name FROM items WHERE id < 10", db=db)


def _client_pid(scratch_prefix: str) -> int | None:
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(arg.startswith(b"--database=" + scratch_prefix.encode()) for arg in cmdline):
            return int(entry.name)
    return None


@pytest.mark.parametrize("victim", ["client", "snapkit"])
def test_restore_killed_halfway_leaves_the_database_as_it_was(mariadb, app_repo, cli, victim):
    db = new_db(mariadb, f"kill{victim}")
    _big_database(mariadb, db)
    init(cli, mariadb.url(db))
    sid = cli("create", "--no-commit").stdout.strip()
    mariadb.sql("UPDATE items SET name = 'changed' WHERE id % 3 = 0; DELETE FROM items WHERE id > 200000;"
                "CREATE TABLE later (id INT); DROP VIEW first_items;", db=db)
    schema, data = mariadb.dump_schema(db), checksums(mariadb, db)

    proc = subprocess.Popen([sys.executable, "-m", "snapkit", "restore", sid, "--db-only", "--yes", "--no-safety"],
                            cwd=app_repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    prefix = f"{db}_snapkit_"
    pid = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        pid = _client_pid(prefix)
        if pid and mariadb.sql(f"SELECT count(*) FROM information_schema.tables WHERE table_schema LIKE "
                               f"'{prefix.replace('_', chr(92) + '_')}%' AND table_name = 'items'").strip() == "1":
            break  # the load is under way: the scratch schema has the big table
        time.sleep(0.02)
    assert proc.poll() is None and pid, "the restore finished before it could be killed: make the database bigger"
    os.kill(pid if victim == "client" else proc.pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    while _client_pid(prefix):  # a client orphaned by a killed snapkit loads what it had, then ends
        time.sleep(0.05)

    if victim == "client":
        assert_error(subprocess.CompletedProcess(proc.args, proc.returncode, out, err), 1,
                     "the database was not changed", "killed")
        assert scratch_schemas(mariadb) == set()
    assert mariadb.dump_schema(db) == schema
    assert checksums(mariadb, db) == data

    # The next restore works and clears what a killed one left behind.
    cli("restore", sid, "--db-only", "--yes", "--no-safety")
    assert scratch_schemas(mariadb) == set()
    assert mariadb.sql("SELECT count(*) FROM items", db=db).strip() == "250000"


def test_failed_swap_puts_the_old_database_back(mariadb, tmp_path, monkeypatch):
    """In-process: the restored views/routines/triggers fail to load after the RENAME."""
    from snapkit.engines import mysql
    from snapkit.errors import DatabaseError

    db = new_db(mariadb, "swapfail")
    mariadb.sql("CREATE TABLE a (id INT PRIMARY KEY); INSERT INTO a VALUES (1), (2);"
                "CREATE TABLE log (id INT); CREATE TRIGGER a_ai AFTER INSERT ON a FOR EACH ROW INSERT INTO log "
                "VALUES (NEW.id); CREATE VIEW v AS SELECT id FROM a;"
                "CREATE FUNCTION twice(x INT) RETURNS INT DETERMINISTIC RETURN 2 * x", db=db)
    engine = mysql.MysqlEngine.from_url(mariadb.url(db), tmp_path)
    with engine.dump(tmp_path) as dump:
        layer = b"".join(dump.stream)
    mariadb.sql("INSERT INTO a VALUES (3); CREATE TABLE b (x INT); CREATE VIEW w AS SELECT x FROM b;"
                "DROP FUNCTION twice", db=db)
    schema, data = mariadb.dump_schema(db), checksums(mariadb, db)

    real = mysql.MysqlEngine._run_script
    calls = []

    def failing(self, client, database, script, tmp_dir, **kw):
        calls.append(database)
        if len(calls) == 1:  # the restored objects: fail after the tables were swapped
            raise DatabaseError("injected failure")
        return real(self, client, database, script, tmp_dir, **kw)

    monkeypatch.setattr(mysql.MysqlEngine, "_run_script", failing)
    with pytest.raises(DatabaseError, match="previous database was put back.*injected failure"):
        engine.restore([layer], tmp_path)
    assert mariadb.dump_schema(db) == schema
    assert checksums(mariadb, db) == data
    assert scratch_schemas(mariadb) == set()
    mariadb.sql("INSERT INTO a VALUES (4)", db=db)  # the trigger is back too
    assert mariadb.sql("SELECT count(*) FROM log WHERE id = 4", db=db).strip() == "1"


def test_busy_table_times_out_and_changes_nothing(mariadb, tmp_path):
    """An open transaction holds a table: the RENAME gives up after the timeout, triggers are put back."""
    from snapkit.engines import mysql
    from snapkit.errors import DatabaseError

    db = new_db(mariadb, "busy")
    mariadb.sql("CREATE TABLE a (id INT PRIMARY KEY); INSERT INTO a VALUES (1); CREATE TABLE log (id INT);"
                "CREATE TRIGGER a_ai AFTER INSERT ON a FOR EACH ROW INSERT INTO log VALUES (NEW.id)", db=db)
    engine = mysql.MysqlEngine.from_url(mariadb.url(db), tmp_path)
    with engine.dump(tmp_path) as dump:
        layer = b"".join(dump.stream)
    mariadb.sql("INSERT INTO a VALUES (2)", db=db)
    schema, data = mariadb.dump_schema(db), checksums(mariadb, db)
    engine.timeout = 1
    with mariadb.connect(db, autocommit=False) as app, app.cursor() as cur:
        cur.execute("SELECT * FROM a")  # the open transaction keeps a metadata lock on `a`
        with pytest.raises(DatabaseError, match="busy"):
            engine.restore([layer], tmp_path)
        app.rollback()
    assert mariadb.dump_schema(db) == schema
    assert checksums(mariadb, db) == data
    assert scratch_schemas(mariadb) == set()


# ---------------------------------------------------------------- privileges

def test_restore_test_without_create_privilege_says_so(mariadb, app_repo, cli):
    db = new_db(mariadb, "limited")
    mariadb.sql("CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES (1)", db=db)
    user = f"lim_{uuid.uuid4().hex[:6]}"
    for host in ("localhost", "%"):
        mariadb.sql(f"CREATE USER '{user}'@'{host}' IDENTIFIED BY 'pw'; GRANT ALL ON `{db}`.* TO '{user}'@'{host}'")
    init(cli, mariadb.url(db, user, "pw"))
    cli("create", "--no-commit")  # an app user can snapshot its own database
    proc = cli("verify", "--restore-test", "--json", ok=None)
    assert proc.returncode == 3
    problems = json.loads(proc.stdout)["problems"]
    assert len(problems) == 1 and "may not create the scratch database" in problems[0]["message"]
    assert scratch_schemas(mariadb) == set()
    # Granting the scratch pattern the hint names is enough.
    pattern = db.replace("_", "\\_") + "\\_snapkit\\_%"
    for host in ("localhost", "%"):
        mariadb.sql(f"GRANT ALL ON `{pattern}`.* TO '{user}'@'{host}'")
    out = json.loads(cli("verify", "--restore-test", "--json", ok=None).stdout)
    assert out["problems"] == []
    cli("restore", "@0", "--db-only", "--yes")
