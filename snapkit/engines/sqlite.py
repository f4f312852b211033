"""SQLite: online copies with the backup API, restores through it too.

Snapshot: `sqlite3.Connection.backup(pages=-1)` copies the whole database in
one step under one read transaction, so the copy is consistent while the app
keeps writing (in WAL mode writers are not even blocked). The layer is the
database file itself, chunked on its page size.

Restore: the layer is rebuilt into a temporary file beside the database and
checked, then copied into the live file with the backup API, which writes the
destination in one transaction through its journal: other connections see the
old database or the new one, and a crash mid-way rolls back to the old one.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from snapkit.backends.local import fsync_dir
from snapkit.engines.base import DatabaseInfo, Dump
from snapkit.errors import DatabaseError

HEADER = b"SQLite format 3\x00"
READ_BLOCK = 1024 * 1024


def page_size_of(path: Path) -> int:
    with open(path, "rb") as f:
        head = f.read(100)
    if len(head) < 100 or not head.startswith(HEADER):
        raise DatabaseError(f"{path} is not a SQLite database")
    size = int.from_bytes(head[16:18], "big")
    return 65536 if size == 1 else size


# Chunks are 64 KiB runs of whole pages (page sizes are powers of two up to
# 64 KiB, so every block starts on a page boundary). A changed page costs a
# delta against the same block of the previous snapshot, not the whole block;
# 64 KiB keeps the chunk count (and the index in memory) 16x smaller than
# 4 KiB pages would (docs/decisions.md, measured).
BLOCK = 65536


def block_size(page_size: int) -> int:
    return max(BLOCK, page_size)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _connect(path: Path, timeout: float, create: bool = False) -> sqlite3.Connection:
    mode = "rwc" if create else "rw"
    uri = f"file:{path.as_posix().replace('?', '%3f').replace('#', '%23')}?mode={mode}"
    return sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None)


def _db_error(path: Path, exc: sqlite3.Error) -> DatabaseError:
    text = str(exc)
    if "locked" in text or "busy" in text:
        return DatabaseError(f"database {path} is locked by another process",
                             hint="retry when the app's long transaction is over")
    if "not a database" in text or "malformed" in text:
        return DatabaseError(f"{path} is not a valid SQLite database ({text})")
    return DatabaseError(f"database {path}: {text}")


def inspect(path: Path, url: str) -> DatabaseInfo:
    """Tables and row counts, schema fingerprint and migration state of a SQLite file."""
    con = _connect(path, timeout=5)
    try:
        return _inspect(con, path, url)
    finally:
        con.close()


def _inspect(con: sqlite3.Connection, path: Path, url: str) -> DatabaseInfo:
    try:
        schema = con.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name").fetchall()
        tables = {}
        for kind, name, _tbl, _sql in schema:
            if kind == "table" and not name.startswith("sqlite_stat"):
                tables[name] = con.execute(f"SELECT count(*) FROM {_quote(name)}").fetchone()[0]
        fingerprint = hashlib.sha256()
        for kind, name, tbl, sql in schema:
            norm = re.sub(r"\s+", " ", sql or "").strip()
            fingerprint.update(f"{kind}\x1f{name}\x1f{tbl}\x1f{norm}\x1e".encode())
        migrations = _migration_state(con, set(tables))
    except sqlite3.Error as exc:
        raise _db_error(path, exc) from None
    return DatabaseInfo("sqlite", sqlite3.sqlite_version, url, tables,
                        "sha256:" + fingerprint.hexdigest(), migrations)


def _migration_state(con: sqlite3.Connection, tables: set[str]) -> dict:
    state: dict = {}
    if "alembic_version" in tables:
        state["alembic"] = sorted(r[0] for r in con.execute("SELECT version_num FROM alembic_version"))
    if "django_migrations" in tables:
        rows = con.execute("SELECT app, name FROM django_migrations ORDER BY app, id").fetchall()
        latest: dict = {}
        for app, name in rows:
            latest[app] = name
        state["django"] = {"applied": len(rows), "latest": latest}
    if "schema_migrations" in tables:
        cols = [r[1] for r in con.execute("PRAGMA table_info(schema_migrations)")]
        if "dirty" in cols:  # golang-migrate
            row = con.execute("SELECT version, dirty FROM schema_migrations").fetchone()
            state["golang_migrate"] = {"version": row[0], "dirty": bool(row[1])} if row else None
        else:  # Rails
            versions = [str(r[0]) for r in con.execute("SELECT version FROM schema_migrations")]
            state["rails"] = {"applied": len(versions), "latest": max(versions, default=None)}
    if "flyway_schema_history" in tables:
        row = con.execute("SELECT version FROM flyway_schema_history WHERE success "
                          "AND version IS NOT NULL ORDER BY installed_rank DESC LIMIT 1").fetchone()
        state["flyway"] = {"version": row[0] if row else None}
    return state


def _read_file(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while block := f.read(READ_BLOCK):
            yield block


class SqliteEngine:
    name = "sqlite"

    def __init__(self, path: Path, url: str, timeout: float = 10.0):
        self.path = path
        self.url = url
        self.timeout = timeout

    @classmethod
    def from_url(cls, url: str, root: Path) -> SqliteEngine:
        # sqlite:///relative/app.db (relative to the project root), sqlite:////abs/app.db.
        # Parsed by hand: importing SQLAlchemy costs the hook ~0.25 s (docs/decisions.md).
        m = re.fullmatch(r"sqlite(?:\+\w+)?:///(.*)", url)
        if not m or not m.group(1) or m.group(1).startswith("file:"):
            raise DatabaseError(f"not a SQLite URL: {url!r}", hint="use sqlite:///app.db or sqlite:////abs/path/app.db")
        raw = m.group(1).split("?", 1)[0]
        path = Path(raw)
        return cls(path if path.is_absolute() else root / path, url)

    def check(self) -> None:
        if not self.path.exists():
            raise DatabaseError(f"database {self.path} does not exist",
                                hint="check [database] url, or create the database first")
        try:
            page_size_of(self.path)
        except OSError as exc:
            raise DatabaseError(f"cannot read database {self.path}: {exc.strerror}") from None

    def migration_state(self) -> dict:
        """The live database's migration state (for restore's schema check)."""
        self.check()
        con = _connect(self.path, self.timeout)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            return _migration_state(con, tables)
        except sqlite3.Error as exc:
            raise _db_error(self.path, exc) from None
        finally:
            con.close()

    @contextmanager
    def dump(self, tmp_dir: Path):
        """A consistent image of the database file; yields a Dump.

        Rollback-journal mode: the file itself is read while we hold a read
        transaction (SQLite's SHARED lock: no writer can change the file), and
        the tables are counted on a second connection in parallel. No copy.
        WAL mode: the main file alone is not the database (recent pages live in
        the -wal file), so the backup API copies it into tmp_dir first.
        """
        self.check()
        src = _connect(self.path, self.timeout)
        try:
            try:
                # Take the read transaction ourselves: the busy timeout applies here,
                # whereas Connection.backup() retries a locked source forever.
                src.execute("BEGIN")
                src.execute("SELECT count(*) FROM sqlite_master").fetchone()
                wal = src.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
            except sqlite3.Error as exc:
                raise _db_error(self.path, exc) from None
            if wal:
                with self._copy(src, tmp_dir) as dump:
                    yield dump
            else:
                yield self._direct(src)
        finally:
            src.close()  # ends the read transaction

    def _direct(self, src: sqlite3.Connection) -> Dump:
        with open(self.path, "rb") as f:
            head = f.read(100)
        st = self.path.stat()
        state = {"journal": "rollback", "change_counter": int.from_bytes(head[24:28], "big"),
                 "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        result: dict = {}

        def count() -> None:
            # Its own connection: SQLite releases the GIL while it counts, so the
            # counting overlaps the chunking. Our SHARED lock keeps both views equal.
            try:
                result["info"] = inspect(self.path, self.url)
            except BaseException as exc:  # handed to the caller in info_fn
                result["error"] = exc

        import threading

        thread = threading.Thread(target=count, name="snapkit-inspect", daemon=True)

        started = []

        def stream() -> Iterator[bytes]:
            started.append(True)
            thread.start()
            yield from _read_file(self.path)

        def info() -> DatabaseInfo:
            if started:
                thread.join()
            else:
                count()  # the stream was never read (an unchanged database reuses its layer)
            if "error" in result:
                raise result["error"]
            return result["info"]

        return Dump(f"fixed:{block_size(page_size_of(self.path))}", None, stream(), st.st_size,
                    state=state, info_fn=info)

    @contextmanager
    def _copy(self, src: sqlite3.Connection, tmp_dir: Path):
        copy = tmp_dir / f"sqlite-{os.getpid()}-{os.urandom(4).hex()}.db"
        try:
            try:
                dst = sqlite3.connect(copy)
                try:
                    src.backup(dst, pages=-1)  # one step inside our read transaction: consistent
                finally:
                    dst.close()
            except sqlite3.Error as exc:
                raise _db_error(self.path, exc) from None
            src.execute("COMMIT")  # the copy is ours: let writers go on
            info = inspect(copy, self.url)
            yield Dump(f"fixed:{block_size(page_size_of(copy))}", info, _read_file(copy), copy.stat().st_size)
        finally:
            copy.unlink(missing_ok=True)

    def _rebuild(self, source: Iterable[bytes], dest: Path) -> None:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            for block in source:
                f.write(block)
            f.flush()
            os.fsync(f.fileno())

    def restore(self, source: Iterable[bytes], tmp_dir: Path) -> None:
        """Rebuild the file in the private scratch folder, then put it in place all or nothing.

        No database there yet: link the rebuilt file into place (atomic).
        A database there (perhaps open in the app): copy into it with the
        backup API, one transaction through its journal, same inode. The
        rebuilt copy never sits in the work tree, where a kill would leave a
        plaintext database for `git add -A` to commit.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staged = Path(tmp_dir) / f"restore-{os.urandom(6).hex()}.db"
        try:
            self._rebuild(source, staged)  # the layer's SHA-256 is checked when the stream ends
            if not self.path.exists() and self._link_into_place(staged):
                return
            src = sqlite3.connect(staged)
            try:
                dst = _connect(self.path, self.timeout, create=True)
                try:
                    # backup() retries a busy destination forever; wait for the write
                    # lock here instead, where the busy timeout applies.
                    dst.execute("BEGIN IMMEDIATE")
                    dst.execute("ROLLBACK")
                    src.backup(dst, pages=-1)
                except sqlite3.Error as exc:
                    raise _db_error(self.path, exc) from None
                finally:
                    dst.close()
            finally:
                src.close()
        finally:
            staged.unlink(missing_ok=True)

    def _link_into_place(self, staged: Path) -> bool:
        """Link the rebuilt file in as the database; False when one appeared meanwhile."""
        try:
            os.link(staged, self.path)  # never replaces a database that appeared meanwhile
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            # Scratch is on another disk: copy beside the database (briefly), then link.
            beside = self.path.parent / f".{self.path.name}.snapkit-{os.urandom(6).hex()}"
            try:
                shutil.copyfile(staged, beside)
                with open(beside, "rb") as f:
                    os.fsync(f.fileno())
                try:
                    os.link(beside, self.path)
                except FileExistsError:
                    return False
            finally:
                beside.unlink(missing_ok=True)
        fsync_dir(self.path.parent)
        return True

    def restore_to_path(self, source: Iterable[bytes], dest: Path) -> None:
        """Write the layer as a new database file at `dest` (which must not exist)."""
        self._rebuild(source, dest)

    def restore_test(self, source: Iterable[bytes], tmp_dir: Path) -> DatabaseInfo:
        scratch = tmp_dir / f"restore-test-{os.getpid()}-{os.urandom(4).hex()}.db"
        try:
            self._rebuild(source, scratch)
            return inspect(scratch, self.url)
        finally:
            scratch.unlink(missing_ok=True)
