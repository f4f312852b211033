"""Seeded, realistic SQLite workloads: users, orders, order_items, events (JSON text).

    python benchmarks/workload.py create DB SIZE_MB [--seed N]
    python benchmarks/workload.py change DB [--percent 1] [--seed N]

`change` updates ~percent% of rows (skewed to recent rows), inserts a few and
deletes a few, like an app's day. Used by the benchmarks and the size tests.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
from pathlib import Path

SCHEMA = """
CREATE TABLE users(id INTEGER PRIMARY KEY, email TEXT UNIQUE, name TEXT, created_at TEXT, plan TEXT);
CREATE TABLE orders(id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users(id), status TEXT,
                    total_cents INTEGER, created_at TEXT);
CREATE TABLE order_items(id INTEGER PRIMARY KEY, order_id INTEGER REFERENCES orders(id), sku TEXT,
                         qty INTEGER, price_cents INTEGER);
CREATE TABLE events(id INTEGER PRIMARY KEY, user_id INTEGER, kind TEXT, payload TEXT, at TEXT);
CREATE INDEX orders_user ON orders(user_id);
CREATE INDEX items_order ON order_items(order_id);
CREATE INDEX events_user_at ON events(user_id, at);
"""
WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike".split()


def _event(rng: random.Random, uid: int, i: int) -> tuple:
    payload = {"page": f"/p/{rng.randrange(500)}", "ref": rng.choice(WORDS),
               "ms": rng.randrange(2000), "tags": rng.sample(WORDS, 3), "n": i}
    return (uid, rng.choice(["view", "click", "buy", "login"]), json.dumps(payload),
            f"2026-{1 + i % 12:02d}-{1 + i % 28:02d}T{i % 24:02d}:00:00Z")


def create(path: Path, size_mb: float, seed: int = 1) -> None:
    rng = random.Random(seed)
    con = sqlite3.connect(path)
    con.executescript(SCHEMA)
    # ~1 KiB of rows per "unit": 1 user-ish, 2 orders, 5 items, 6 events
    units = int(size_mb * 1024 * 0.72)
    users = max(10, units // 4)
    con.executemany("INSERT INTO users VALUES (?,?,?,?,?)",
                    ((i, f"user{i}@example.com", f"{rng.choice(WORDS)} {rng.choice(WORDS)} {i}",
                      f"2025-{1 + i % 12:02d}-01", rng.choice(["free", "pro", "team"])) for i in range(1, users + 1)))
    con.executemany("INSERT INTO orders VALUES (?,?,?,?,?)",
                    ((i, rng.randrange(1, users + 1), rng.choice(["new", "paid", "shipped"]),
                      rng.randrange(100, 100000), f"2026-01-{1 + i % 28:02d}") for i in range(1, units * 2 + 1)))
    con.executemany("INSERT INTO order_items VALUES (?,?,?,?,?)",
                    ((i, 1 + i // 3, f"SKU-{rng.randrange(10000):05d}", rng.randrange(1, 5), rng.randrange(100, 9000))
                     for i in range(1, units * 5 + 1)))
    con.executemany("INSERT INTO events(user_id, kind, payload, at) VALUES (?,?,?,?)",
                    (_event(rng, rng.randrange(1, users + 1), i) for i in range(units * 6)))
    con.commit()
    con.close()


def change(path: Path, percent: float = 1.0, seed: int = 2) -> None:
    con = sqlite3.connect(path)
    apply_change(con, "?", percent, seed)
    con.close()


def apply_change(con, mark: str, percent: float = 1.0, seed: int = 2) -> None:
    """The day's change on any DB-API connection (`mark`: its placeholder, "?" or "%s")."""
    rng = random.Random(seed)
    cur = con.cursor()
    for table, col, value in (("orders", "status", "'refunded'"), ("events", "kind", "'edited'"),
                              ("users", "plan", "'team'")):
        cur.execute(f"SELECT max(id) FROM {table}")
        (n,) = cur.fetchone()
        k = max(1, int(n * percent / 100))
        # skewed to recent rows: 80% from the newest 10%
        ids = [n - int(rng.random() * n * 0.1) if rng.random() < 0.8 else rng.randrange(1, n + 1) for _ in range(k)]
        cur.executemany(f"UPDATE {table} SET {col} = {value} WHERE id = {mark}", [(i,) for i in ids])
    cur.execute("SELECT max(id) FROM events")
    (n,) = cur.fetchone()
    cur.executemany(f"INSERT INTO events(user_id, kind, payload, at) VALUES ({mark},{mark},{mark},{mark})",
                    [_event(rng, rng.randrange(1, 100), i) for i in range(max(1, n // 1000))])
    cur.executemany(f"DELETE FROM events WHERE id = {mark}", [(rng.randrange(1, n),) for _ in range(20)])
    con.commit()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("action", choices=["create", "change"])
    ap.add_argument("db", type=Path)
    ap.add_argument("size_mb", type=float, nargs="?", default=20)
    ap.add_argument("--percent", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=None)
    a = ap.parse_args()
    if a.action == "create":
        create(a.db, a.size_mb, a.seed or 1)
    else:
        change(a.db, a.percent, a.seed or 2)


if __name__ == "__main__":
    main()
