"""Workload (b): the benchmark tables in a throwaway PostgreSQL server, against pg_dump itself.

The same seeded tables as the SQLite workload (users, orders, order_items,
events with JSON text; the same indexes, plus foreign keys) are copied into a
private cluster (tests/integration/pg_server.py: initdb on a free port in a
temp dir, never the machine's own server), then, interleaved:

- `pg_dump -Fc -Z0 > /dev/null` — the floor: what dumping alone costs;
- `snapkit create` — pg_dump -Fc -Z0 streamed through chunking, compression
  and encryption into the store;
- after each of `changes` rounds of the 1% change: snapkit create, and
  `pg_dump -Fc` to a file (the shell script's nightly dump, gzip level 6),
  whose total size is what the history costs without snapkit.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import workload

DDL = """
CREATE TABLE users(id bigint PRIMARY KEY, email text UNIQUE, name text, created_at text, plan text);
CREATE TABLE orders(id bigint PRIMARY KEY, user_id bigint, status text, total_cents integer, created_at text);
CREATE TABLE order_items(id bigint PRIMARY KEY, order_id bigint, sku text, qty integer, price_cents integer);
CREATE TABLE events(id bigserial PRIMARY KEY, user_id bigint, kind text, payload text, at text);
"""
AFTER_LOAD = """
ALTER TABLE orders ADD FOREIGN KEY (user_id) REFERENCES users(id);
ALTER TABLE order_items ADD FOREIGN KEY (order_id) REFERENCES orders(id);
CREATE INDEX orders_user ON orders(user_id);
CREATE INDEX items_order ON order_items(order_id);
CREATE INDEX events_user_at ON events(user_id, at);
SELECT setval('events_id_seq', (SELECT max(id) FROM events));
"""
TABLES = ["users", "orders", "order_items", "events"]


def start_server():
    """A private cluster, or None (with the reason printed) when PostgreSQL's server binaries are missing."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.integration import pg_server

    bindir = pg_server.find_bindir()
    if bindir is None:
        print("[bench] PostgreSQL workload skipped: no initdb/pg_ctl/postgres found", file=sys.stderr)
        return None
    import os

    run_as = "postgres" if os.geteuid() == 0 else None  # initdb refuses root
    base = Path(tempfile.mkdtemp(prefix="snapkit-bench-pg-"))
    os.chmod(base, 0o755)
    server = pg_server.PgServer(bindir, base, run_as)
    server.start()
    return server


def load(server, sqlite_db: Path, dbname: str) -> None:
    """Copy the SQLite workload's tables into `dbname`, streamed (sqlite3 -csv | psql COPY)."""
    server.createdb(dbname)
    server.sql(DDL, dbname=dbname)
    for table in TABLES:
        dump = subprocess.Popen(["sqlite3", "-csv", str(sqlite_db), f"SELECT * FROM {table}"],
                                stdout=subprocess.PIPE)
        subprocess.run([server.tool("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", server.conninfo(dbname),
                        "-c", f"\\copy {table} FROM STDIN WITH (FORMAT csv)"], stdin=dump.stdout, check=True)
        dump.stdout.close()
        if dump.wait() != 0:
            raise RuntimeError(f"sqlite3 export of {table} failed")
    server.sql(AFTER_LOAD, dbname=dbname)
    server.sql("VACUUM ANALYZE", dbname=dbname)  # not inside the transaction psql -c makes


def change(server, dbname: str, seed: int) -> None:
    import psycopg

    with psycopg.connect(server.url(dbname)) as con:
        workload.apply_change(con, "%s", percent=1.0, seed=seed)


def scenario_postgres(size_mb: float, changes: int, reps: int, work: Path, env: dict, measure) -> dict | None:
    """pg_dump -Z0 vs snapkit create per repetition; then `changes` rounds (first repetition)."""
    pg_dump = shutil.which("pg_dump")
    if pg_dump is None or shutil.which("sqlite3") is None:
        print("[bench] PostgreSQL workload skipped: pg_dump or sqlite3 missing", file=sys.stderr)
        return None
    server = start_server()
    if server is None:
        return None
    d = work / "pg"
    d.mkdir()
    try:
        src = d / "source.db"
        workload.create(src, size_mb, seed=1)
        load(server, src, "bench")
        src.unlink()
        url = server.url("bench")
        db_bytes = int(server.sql("SELECT pg_database_size('bench')"))
        app = d / "app"
        app.mkdir()
        subprocess.run(["git", "init", "-q"], cwd=app, check=True)
        subprocess.run(["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q", "--allow-empty",
                        "-m", "bench"], cwd=app, check=True)
        store = d / "store"
        subprocess.run([sys.executable, "-m", "snapkit", "init", "--db", url, "--store", str(store)], cwd=app,
                       env=env, check=True, capture_output=True)
        dump_z0 = [pg_dump, "--format=custom", "--compress=0", "--dbname", url]
        snap = [sys.executable, "-m", "snapkit", "create", "--no-commit", "--quiet"]
        out: dict = {"db_bytes": db_bytes, "pg_dump_z0": [], "snapkit_first": [], "snapkit_change": [],
                     "store_sizes": [], "pg_dump_fc_sizes": [], "pg_dump_fc_s": []}
        for rep in range(reps):  # the unchanged database: first-snapshot cost, interleaved
            pair = [("pg_dump_z0", dump_z0, d), ("snapkit_first", snap, app)]
            for key, argv, cwd in (pair if rep % 2 == 0 else reversed(pair)):
                out[key].append(measure(argv, cwd, env))
        out["store_sizes"].append(_tree_bytes(store))
        out["pg_dump_fc_sizes"].append(_dump_fc(pg_dump, url, d, 0, env, measure, out))
        for round_no in range(1, changes + 1):
            change(server, "bench", seed=round_no)
            pair = [("pg_dump_z0", dump_z0, d), ("snapkit_change", snap, app)]
            for key, argv, cwd in (pair if round_no % 2 == 0 else reversed(pair)):
                out[key].append(measure(argv, cwd, env))
            out["store_sizes"].append(_tree_bytes(store))
            out["pg_dump_fc_sizes"].append(_dump_fc(pg_dump, url, d, round_no, env, measure, out))
        out["dump_bytes"] = _dump_bytes(pg_dump, url, d)
        out["summary"] = _summary(out)
        return out
    finally:
        server.stop()
        shutil.rmtree(d, ignore_errors=True)


def _dump_fc(pg_dump: str, url: str, d: Path, n: int, env: dict, measure, out: dict) -> int:
    """The nightly-script dump: pg_dump -Fc (gzip) to a file; its size. The file is deleted (only sizes add up)."""
    path = d / f"dump-{n}.pgc"
    out["pg_dump_fc_s"].append(measure([pg_dump, "--format=custom", "--dbname", url, "--file", str(path)], d, env))
    size = path.stat().st_size
    path.unlink()
    return size


def _dump_bytes(pg_dump: str, url: str, d: Path) -> int:
    path = d / "raw.pgc"
    subprocess.run([pg_dump, "--format=custom", "--compress=0", "--dbname", url, "--file", str(path)], check=True)
    size = path.stat().st_size
    path.unlink()
    return size


def _tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _summary(out: dict) -> dict:
    def med(runs: list[dict], key: str = "wall_s") -> float | None:
        return round(statistics.median(r[key] for r in runs), 3) if runs else None

    z0 = med(out["pg_dump_z0"])
    sizes, dumps = out["store_sizes"], out["pg_dump_fc_sizes"]
    changes = len(sizes) - 1
    s = {
        "pg_dump_z0_s": z0,
        "snapkit_first_s": med(out["snapkit_first"]),
        "snapkit_change_s": med(out["snapkit_change"]),
        "first_over_pg_dump_z0": round(med(out["snapkit_first"]) / z0, 3) if z0 else None,
        "change_over_pg_dump_z0": round(med(out["snapkit_change"]) / z0, 3) if z0 and out["snapkit_change"] else None,
        "peak_rss_mb": max(r["rss_mb"] for r in out["snapkit_first"] + out["snapkit_change"]),
        "first_store_bytes": sizes[0],
        "first_dump_fc_bytes": dumps[0],
        "changes": changes,
    }
    if changes:
        growth = [b - a for a, b in zip(sizes, sizes[1:])]
        s["growth_per_change_median"] = int(statistics.median(growth))
        s["growth_first_change"] = growth[0]
        s["growth_first_change_over_first"] = round(growth[0] / sizes[0], 4)
        # The history of `changes` snapshots after the first, against the same number of nightly dumps.
        s["history_bytes"] = sizes[-1] - sizes[0]
        s["dumps_fc_bytes"] = sum(dumps[1:])
        s["history_over_dumps"] = round(s["history_bytes"] / s["dumps_fc_bytes"], 4)
        # And everything, the first snapshot included, against every dump.
        s["store_over_all_dumps"] = round(sizes[-1] / sum(dumps), 4)
    return s
