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
    if scheme in ("postgresql", "postgres", "mysql", "mariadb"):
        raise DatabaseError(f"the {scheme} engine is not available in this version of snapkit",
                            hint="SQLite is supported now; PostgreSQL and MariaDB/MySQL are coming")
    raise DatabaseError(f"unsupported database URL scheme {scheme!r}",
                        hint="use sqlite:///path/to/app.db")
