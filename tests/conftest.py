"""Shared fixtures: an isolated home, a real git repo with a real SQLite app, the CLI as a subprocess."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATASETS = ROOT.parent / "shared" / "datasets"


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """No test reads or writes the developer's ~/.config, ~/.cache, ~/.gitconfig or SNAPKIT_* settings."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))  # local caches, scratch: never the real ~/.cache
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in list(os.environ):
        if var.startswith("SNAPKIT_") or var.startswith("GIT_") and var != "GIT_CONFIG_NOSYSTEM":
            monkeypatch.delenv(var, raising=False)
    from snapkit.store import crypto

    crypto.set_kdf_cost(2**10)  # cheap scrypt in-process (restic's low-security test KDF)
    return home


def make_app_db(path: Path, rows: int = 200) -> None:
    """A small but rich SQLite database: index, view, trigger, BLOBs, NULLs, non-ASCII text."""
    con = sqlite3.connect(path)
    con.executescript(
        """
        CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT, avatar BLOB);
        CREATE TABLE orders(id INTEGER PRIMARY KEY AUTOINCREMENT, user_id INTEGER REFERENCES users(id),
                            total NUMERIC(10,2), note TEXT);
        CREATE INDEX orders_user ON orders(user_id);
        CREATE VIEW big_orders AS SELECT * FROM orders WHERE total > 50;
        CREATE TABLE audit(id INTEGER PRIMARY KEY, what TEXT);
        CREATE TRIGGER orders_audit AFTER INSERT ON orders BEGIN
            INSERT INTO audit(what) VALUES ('order ' || NEW.id);
        END;
        """
    )
    names = ["Antônio Carlos Jobim", "Nação Zumbi", "Berglunds snabbköp", "東京", "Ωmega"]
    con.executemany(
        "INSERT INTO users(id, name, email, avatar) VALUES (?, ?, ?, ?)",
        [(i, names[i % len(names)] + f" {i}", None if i % 7 == 0 else f"u{i}@example.com",
          bytes((i * j) % 256 for j in range(64)) if i % 3 else None) for i in range(1, rows + 1)],
    )
    con.executemany("INSERT INTO orders(user_id, total, note) VALUES (?, ?, ?)",
                    [(1 + i % rows, (i * 7.3) % 100, None if i % 5 else "rush ✓") for i in range(rows * 2)])
    con.commit()
    con.close()


def sqlite_dump(path: Path) -> str:
    """Independent oracle: the sqlite3 shell's .dump of a database."""
    return subprocess.run(["sqlite3", str(path), ".dump"], capture_output=True, text=True, check=True).stdout


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def app_repo(tmp_path) -> Path:
    """A git work tree with app.py, an ignored app.db, and one commit."""
    repo = tmp_path / "app"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.name", "Test User")
    git(repo, "config", "user.email", "test@example.com")
    (repo / "app.py").write_text("print('v1')\n")
    (repo / ".gitignore").write_text("app.db\napp.db-*\n")
    make_app_db(repo / "app.db")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "initial")
    return repo


class Cli:
    """Runs the real `snapkit` console entry point in a subprocess."""

    def __init__(self, cwd: Path):
        self.cwd = cwd

    def __call__(self, *args: str, ok: bool | None = True, env: dict | None = None, input: str | None = None,
                 timeout: float = 120) -> subprocess.CompletedProcess:
        full_env = {**os.environ, **(env or {})}
        proc = subprocess.run([sys.executable, "-m", "snapkit", *args], cwd=self.cwd, capture_output=True,
                              text=True, env=full_env, input=input, timeout=timeout)
        if ok is True and proc.returncode != 0:
            raise AssertionError(f"snapkit {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
        return proc


@pytest.fixture
def cli(app_repo) -> Cli:
    return Cli(app_repo)


@pytest.fixture
def project(app_repo, cli) -> Path:
    """app_repo after `snapkit init --db sqlite:///app.db` (key file in the isolated home)."""
    cli("init", "--db", "sqlite:///app.db")
    return app_repo
