"""Database engines behind one interface (engines/base.py)."""

from __future__ import annotations

from pathlib import Path

from snapkit.errors import DatabaseError


def open_engine(url: str | None, root: Path):
    """The engine for a database URL; SQLite needs no SQLAlchemy import (hook start-up)."""
    if not url:
        raise DatabaseError("no database configured", hint="set [database] url in snapkit.toml or SNAPKIT_DATABASE_URL")
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme == "sqlite":
        from snapkit.engines.sqlite import SqliteEngine

        return SqliteEngine.from_url(url, root)
    if scheme in ("postgresql", "postgres"):
        from snapkit.engines.postgres import PostgresEngine

        return PostgresEngine.from_url(url, root)
    if scheme in ("mysql", "mariadb"):
        from snapkit.engines.mysql import MysqlEngine

        return MysqlEngine.from_url(url, root)
    raise DatabaseError(f"unsupported database URL scheme {scheme!r}",
                        hint="use sqlite:///app.db, postgresql://user@host/db or mysql://user@host/db")
