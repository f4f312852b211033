"""MySQL and MariaDB: `mariadb-dump`/`mysqldump` out, the `mariadb`/`mysql` client back in.

Snapshot: `mariadb-dump --single-transaction --routines --triggers --events
--hex-blob` of the one configured schema (no CREATE DATABASE, no USE: the layer
loads into a schema of any name), streamed to the chunker while the tool runs.
InnoDB tables are read in one consistent snapshot. The layer is the tool's SQL
script behind one comment line naming the schema's default character set and
collation. The row counts in the metadata are read from that script as it
streams (base tables' rows per INSERT), so they describe exactly what the
snapshot holds even while the app keeps writing; the schema fingerprint and the
migration state are read through SQLAlchemy (engines/sql_inspect.py). Views the
server cannot use (their table or definer is gone) are left out, their
definitions appended as comments: no server would load them back, and the dump
tool stops at them (a safety snapshot of a damaged database must still work).

Restore, and what it guarantees (docs/engines-mysql.md):
1. The layer is loaded into a new scratch schema `<db>_snapkit_<hex>` through
   the client (`--binary-mode`, stops at the first error). The target is not
   touched: a failed or killed load, a damaged snapshot or a missing privilege
   leaves it exactly as it was; the scratch schema is dropped (or, after a
   kill, by the next restore: its owner's named lock is gone).
2. Swap: every target table is write-locked once and released (an app holding
   one in an open transaction makes the restore fail here, after `timeout`,
   unchanged); the triggers of both schemas are dropped (a table with triggers
   cannot change schema), then ONE `RENAME TABLE` moves every target table to
   a second scratch schema and every restored table into the target. That
   statement is atomic: the app sees all old tables or all new ones.
3. The target's views, routines and events are replaced by the restored ones
   and the restored triggers are created (a script made by the dump tool from
   the scratch schema, replayed by the client). This takes milliseconds; if it
   fails, the tables are renamed back and the target's own objects are put
   back from a script taken before step 2. The old tables are then dropped.
A process killed during steps 2-3 (a window of milliseconds after the whole
load) can leave the target with the new tables but without some of their
views, routines or triggers; the old tables are then in `<db>_snapkit_<hex>_old`
and the pre-restore safety snapshot holds everything.

Passwords reach the tools in an option file given as `--defaults-file`, the
first argument, that never touches the disk: a pipe read through /dev/fd/N
(mode 0600, gone when the tool exits); where /dev/fd is missing, a 0600 file
in snapkit's private tmp folder, removed right after. `--defaults-file`, not
`--defaults-extra-file`: the user's ~/.my.cnf is read after an extra file and
its password would win over the URL's. URLs in metadata have no password.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from snapkit.engines.base import DatabaseInfo, Dump
from snapkit.errors import DatabaseError

READ_BLOCK = 1024 * 1024
STRATEGY = "cdc:32768"
# Rows per INSERT statement are grouped up to this many bytes (the tool's default, pinned so
# that a longer line always holds a single row: see DumpScanner).
NET_BUFFER = 1046528
BIN_ENV = "SNAPKIT_MYSQL_BIN"
DUMP_TOOLS = ("mariadb-dump", "mysqldump")
CLIENTS = ("mariadb", "mysql")
SCRATCH = "_snapkit_"
TOOL_HINT = ("install the MariaDB or MySQL client tools (Debian/Ubuntu: apt install mariadb-client), "
             f"or set {BIN_ENV} to the folder holding them")
DUMP_OPTIONS = ("--single-transaction", "--routines", "--triggers", "--events", "--hex-blob",
                "--default-character-set=utf8mb4", "--no-tablespaces", "--skip-dump-date",
                f"--net-buffer-length={NET_BUFFER}", "--max-allowed-packet=1G")
CLIENT_OPTIONS = ("--binary-mode", "--batch", "--default-character-set=utf8mb4", "--max-allowed-packet=1G")
HEADER = re.compile(rb"-- snapkit: schema defaults CHARACTER SET (\w+) COLLATE (\w+)")
# Environment the tools must not see: secrets, and variables that would change where they connect.
PRIVATE_ENV = ("MYSQL_PWD", "MYSQL_HOST", "MYSQL_TCP_PORT", "MYSQL_UNIX_PORT")
TABLE_TYPES = ("BASE TABLE", "SYSTEM VERSIONED", "SEQUENCE")  # what RENAME TABLE moves


def quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _option_value(value: str) -> str:
    """A value for a MySQL option file: double-quoted, with the escapes my_default.c undoes."""
    escaped = (value.replace("\\", "\\\\").replace('"', '\\"').replace("'", "\\'")
               .replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t").replace("\b", "\\b"))
    return f'"{escaped}"'


# ------------------------------------------------------------------ connection

@dataclass(frozen=True)
class Server:
    """Where and as whom to connect; the password never leaves this object but for the tools' option file."""

    host: str
    port: int
    unix_socket: str | None
    user: str
    database: str
    password: str | None = field(default=None, repr=False)
    ssl: tuple[tuple[str, str], ...] = ()  # (ca|cert|key, path)

    @property
    def where(self) -> str:
        return self.unix_socket if self.unix_socket else f"{self.host}:{self.port}"

    def pymysql_args(self) -> dict:
        args = {"user": self.user, "password": self.password or ""}
        if self.unix_socket:
            args["unix_socket"] = self.unix_socket
        else:
            args.update(host=self.host, port=self.port)
        if self.ssl:
            args["ssl"] = dict(self.ssl)
        return args

    def option_file(self, timeout: float) -> bytes:
        lines = ["[client]", f"user={_option_value(self.user)}"]
        if self.password:
            lines.append(f"password={_option_value(self.password)}")
        if self.unix_socket:
            lines += [f"socket={_option_value(self.unix_socket)}", "protocol=SOCKET"]
        else:  # "localhost" would mean the default socket to the tools but TCP to pymysql
            lines += [f"host={_option_value(self.host)}", f"port={self.port}", "protocol=TCP"]
        lines += [f"ssl-{key}={_option_value(path)}" for key, path in self.ssl]
        lines += ["[mysql]", f"connect-timeout={max(1, int(timeout))}"]  # the client's; the dump tool has none
        return ("\n".join(lines) + "\n").encode()


def _pymysql_error(exc, server: Server, database: str | None) -> DatabaseError:
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    text = _one_line(str(exc.args[1]) if len(exc.args) > 1 else str(exc))
    if code in (2002, 2003, 2005, 2006, 2013) or "Can't connect" in text:
        reason = re.search(r"\((?:\[Errno \d+\] )?([^()]*)\)\s*$", text)
        said = f" ({reason.group(1)})" if reason else f" ({text})"
        return DatabaseError(f"cannot connect to the MySQL/MariaDB server at {server.where}{said}",
                             hint="is the server running? check host, port or unix_socket in the database URL")
    if code == 1045:
        return DatabaseError(f"access denied for user {server.user!r} at {server.where} (wrong password?)",
                             hint="check the user and password in the database URL "
                                  "(keep the password out of git: url = \"mysql://app:${DB_PASSWORD}@host/db\")")
    if code == 1049:
        return DatabaseError(f"database {database!r} does not exist on {server.where}",
                             hint="create it, or check the database name in the URL")
    if code == 1044:
        return DatabaseError(f"user {server.user!r} may not use database {database!r} on {server.where}: {text}")
    return DatabaseError(f"MySQL/MariaDB error on {server.where}: {text}")


# ------------------------------------------------------------------ row counts

_LITERAL = re.compile(rb"'[^'\\]*(?:\\.[^'\\]*)*'|`[^`]*(?:``[^`]*)*`", re.DOTALL)
_NAME = re.compile(rb"`((?:[^`]|``)+)`")


class DumpScanner:
    """Counts the rows of each base table in a dump tool's output, as it streams.

    A table's DDL line starts with CREATE TABLE and its quoted name; its rows come
    in `INSERT INTO <name> VALUES …;` statements, either on one line (`(…),(…);`,
    mysqldump and older MariaDB) or one row per line after the header (MariaDB
    10.11+). Newlines inside strings are escaped, so outside string literals
    (and quoted identifiers) each `(` after VALUES opens one row and a line
    ending in `;` ends the statement. Bodies of triggers, routines and events
    sit between `DELIMITER ;;` and `DELIMITER ;` and are skipped. Memory stays
    bounded: the tools group rows into a statement only up to NET_BUFFER bytes,
    so a line over LINE_CAP holds a single row; it is counted as one and only
    its head and tail are kept.
    """

    LINE_CAP = 4 * NET_BUFFER

    def __init__(self) -> None:
        self.tables: dict[str, int] = {}
        self._parts: list[bytes] = []
        self._size = 0
        self._long: bytes | None = None  # head of an over-long line, already counted
        self._tail = b""                 # last bytes of that line
        self._insert: str | None = None  # table of the INSERT statement being read
        self._in_body = False            # between DELIMITER ;; and DELIMITER ;

    def feed(self, block: bytes) -> None:
        start = 0
        while True:
            nl = block.find(b"\n", start)
            if nl < 0:
                self._partial(block[start:])
                return
            self._end_line(block[start:nl])
            start = nl + 1

    def close(self) -> None:
        self._end_line(b"")

    def _partial(self, piece: bytes) -> None:
        if not piece:
            return
        if self._long is not None:
            self._tail = (self._tail + piece)[-8:]
            return
        self._parts.append(piece)
        self._size += len(piece)
        if self._size > self.LINE_CAP:
            line = b"".join(self._parts)
            self._parts, self._size = [], 0
            self._long, self._tail = line[:4096], line[-8:]
            if self._insert is None and not self._in_body and line.startswith(b"INSERT INTO `"):
                self._insert = self._name(line, 12)
            if self._insert is not None:
                self.tables[self._insert] = self.tables.get(self._insert, 0) + 1

    def _end_line(self, tail: bytes) -> None:
        if self._long is not None:  # counted when it grew too long: only its end matters now
            ended = (self._tail + tail).rstrip(b"\r ").endswith(b";")
            self._long, self._tail = None, b""
            if ended:
                self._insert = None
            return
        line = b"".join(self._parts) + tail if self._parts else tail
        self._parts, self._size = [], 0
        if self._insert is not None:
            self._rows(self._insert, line)
        elif line.startswith(b"DELIMITER "):
            self._in_body = line.rstrip(b"\r ") != b"DELIMITER ;"
        elif self._in_body:
            return
        elif line.startswith(b"INSERT INTO `"):
            name = self._name(line, 12)
            at = line.find(b" VALUES", 12)
            if name is not None and at > 0:
                self.tables.setdefault(name, 0)
                self._insert = name
                self._rows(name, line[at + 7:])
        elif line.startswith(b"CREATE TABLE `"):
            name = self._name(line, 13)
            if name is not None:
                self.tables.setdefault(name, 0)

    def _rows(self, table: str, text: bytes) -> None:
        bare = _LITERAL.sub(b"", text)
        self.tables[table] = self.tables.get(table, 0) + bare.count(b"(")
        if bare.rstrip(b"\r ").endswith(b";"):
            self._insert = None

    @staticmethod
    def _name(line: bytes, at: int) -> str | None:
        m = _NAME.match(line, at)
        return m.group(1).replace(b"``", b"`").decode("utf-8", "replace") if m else None


# ------------------------------------------------------------------ tools

@dataclass
class _Tool:
    """A running dump tool or client; its stderr goes to an unnamed temp file."""

    proc: subprocess.Popen
    name: str
    stderr: object

    def error_text(self) -> str:
        self.stderr.seek(0)
        lines = [ln for ln in self.stderr.read().decode("utf-8", "replace").splitlines()
                 if ln.strip() and not ln.lower().startswith("warning")]
        return _one_line(lines[-1]) if lines else ""

    def failure(self, rc: int) -> str:
        said = self.error_text()
        how = f"was killed (signal {-rc})" if rc < 0 else f"failed (exit {rc})"
        return f"{self.name} {how}" + (f": {said}" if said else "")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass
        self.stderr.close()


def _find_tool(names: tuple[str, ...]) -> str | None:
    folder = os.environ.get(BIN_ENV)
    for name in names:
        found = shutil.which(name, path=folder) if folder else shutil.which(name)
        if found:
            return found
    return None


@functools.cache
def _is_mariadb_tool(path: str) -> bool:
    probe = subprocess.run([path, "--version"], capture_output=True, text=True, env=_tool_env(), check=False)
    return "mariadb" in (probe.stdout + probe.stderr).lower()


def _tool_env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith("SNAPKIT_") and k not in PRIVATE_ENV}


# ------------------------------------------------------------------ the engine

class MysqlEngine:
    name = "mysql"

    def __init__(self, server: Server, url: str, timeout: float = 10.0):
        self.server = server
        self.url = url  # no password
        self.timeout = timeout

    @classmethod
    def from_url(cls, url: str, root: Path | None = None) -> MysqlEngine:
        """mysql://user:password@host:3306/db, mariadb://…, mysql+pymysql://…; `?unix_socket=/path`."""
        from sqlalchemy.engine import URL, make_url
        from sqlalchemy.exc import ArgumentError

        try:
            u = make_url(url)
        except ArgumentError:
            raise DatabaseError("the database URL cannot be parsed",
                                hint="use mysql://user:password@host:3306/dbname") from None
        if u.get_backend_name() not in ("mysql", "mariadb"):
            raise DatabaseError(f"not a MySQL/MariaDB URL: {u.get_backend_name()}://…")
        if not u.database:
            raise DatabaseError("the MySQL/MariaDB URL names no database",
                                hint="use mysql://user:password@host:3306/dbname")
        query = {k: (v[-1] if isinstance(v, tuple) else v) for k, v in u.query.items()}
        password = u.password if u.password is not None else query.get("password", query.get("passwd"))
        try:
            port = int(u.port or query.get("port") or 3306)
        except ValueError:
            raise DatabaseError("the port in the database URL is not a number") from None
        import getpass

        server = Server(host=u.host or "localhost", port=port, unix_socket=query.get("unix_socket") or None,
                        user=u.username or getpass.getuser(), database=u.database, password=password,
                        ssl=tuple((key, query[f"ssl_{key}"]) for key in ("ca", "cert", "key")
                                  if query.get(f"ssl_{key}")))
        public = URL.create(u.drivername, u.username, None, u.host, u.port, u.database,
                            {k: v for k, v in u.query.items() if k not in ("password", "passwd")})
        return cls(server, public.render_as_string(hide_password=False))

    # ---- connections -------------------------------------------------------

    def _connect(self, database: str | None, autocommit: bool = True):
        import pymysql

        try:
            # A table the app holds exclusively (LOCK TABLES, an ALTER's final step) fails our
            # statements after `timeout` s instead of the server's default of a year.
            return pymysql.connect(**self.server.pymysql_args(), database=database, charset="utf8mb4",
                                   connect_timeout=max(1.0, float(self.timeout)), autocommit=autocommit,
                                   init_command=f"SET SESSION lock_wait_timeout = {self._lock_wait()}")
        except pymysql.err.MySQLError as exc:
            error = _pymysql_error(exc, self.server, database)
            error.missing_database = bool(exc.args and exc.args[0] == 1049)
            raise error from None

    def _sql_error(self, exc, doing: str) -> DatabaseError:
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
        text = _one_line(str(exc.args[1]) if len(exc.args) > 1 else str(exc))
        if code in (1205, 3024):
            return DatabaseError(f"{doing}: the database is busy ({text})",
                                 hint="retry when the app's long transactions are over")
        return DatabaseError(f"{doing}: {text}")

    def _tools(self) -> tuple[str, str]:
        dump, client = _find_tool(DUMP_TOOLS), _find_tool(CLIENTS)
        if dump is None:
            raise DatabaseError("the MySQL/MariaDB dump tool (mariadb-dump or mysqldump) was not found",
                                hint=TOOL_HINT)
        if client is None:
            raise DatabaseError("the MySQL/MariaDB client (mariadb or mysql) was not found", hint=TOOL_HINT)
        return dump, client

    def check(self) -> None:
        """DatabaseError when the tools are missing or the database cannot be opened."""
        self._tools()
        self._connect(self.server.database).close()

    def exists(self) -> bool:
        """False when the server says the database does not exist; DatabaseError when it cannot
        tell (down, wrong password): restore must not skip its safety snapshot for those."""
        try:
            self._connect(self.server.database).close()
            return True
        except DatabaseError as exc:
            if getattr(exc, "missing_database", False):
                return False
            raise

    def migration_state(self) -> dict:
        """The live database's migration state (restore's schema check), through SQLAlchemy."""
        return self._describe(self.server.database, counts=False, with_fingerprint=False)[2]

    @contextmanager
    def _run(self, argv: list[str], tmp_dir: Path, **popen):
        """Start a tool with our option file as its first argument; stopped and cleaned up after the block."""
        name = Path(argv[0]).name
        options = self.server.option_file(self.timeout)
        errors = tempfile.TemporaryFile(dir=tmp_dir)  # noqa: SIM115 (closed by _Tool.stop)
        read_fd = path = None
        try:
            if os.path.isdir("/dev/fd"):
                read_fd, write_fd = os.pipe()
                with os.fdopen(write_fd, "wb") as w:  # a few hundred bytes: fits the pipe buffer
                    w.write(options)
                where = f"/dev/fd/{read_fd}"
                popen["pass_fds"] = (read_fd,)
            else:
                path = tmp_dir / f"mysql-{os.getpid()}-{secrets.token_hex(6)}.cnf"
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    os.fchmod(f.fileno(), 0o600)
                    f.write(options)
                where = str(path)
            try:
                proc = subprocess.Popen([argv[0], f"--defaults-file={where}", *argv[1:]], stderr=errors,
                                        env=_tool_env(), **popen)
            except OSError as exc:
                raise DatabaseError(f"cannot run {name}: {exc.strerror}", hint=TOOL_HINT) from None
        except BaseException:
            errors.close()
            if path is not None:
                path.unlink(missing_ok=True)
            raise
        finally:
            if read_fd is not None:
                os.close(read_fd)
        tool = _Tool(proc, name, errors)
        try:
            yield tool
        finally:
            tool.stop()
            if path is not None:
                path.unlink(missing_ok=True)

    def _run_script(self, client: str, database: str, script: bytes, tmp_dir: Path,
                    put_back: bool = False) -> None:
        """Run a SQL script in `database`. `put_back`: go on after errors (each statement that
        can be replayed is) and wait longer for locks: it restores what the app had."""
        if not script:
            return
        wait = self._lock_wait() * (6 if put_back else 1)
        argv = [client, *CLIENT_OPTIONS, f"--init-command=SET SESSION lock_wait_timeout = {wait}",
                *(["--force"] if put_back else []), f"--database={database}"]
        with self._run(argv, tmp_dir, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL) as tool:
            try:
                tool.proc.stdin.write(script)
                tool.proc.stdin.close()
            except BrokenPipeError:
                pass
            rc = tool.proc.wait()
            if rc != 0:
                raise DatabaseError(tool.failure(rc))

    def _capture(self, argv: list[str], tmp_dir: Path) -> bytes:
        with self._run(argv, tmp_dir, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE) as tool:
            out = tool.proc.stdout.read()
            rc = tool.proc.wait()
            if rc != 0:
                raise DatabaseError(tool.failure(rc))
            return out

    # ---- inspection --------------------------------------------------------

    @staticmethod
    def _version(conn) -> str:
        with conn.cursor() as cur:
            cur.execute("SELECT VERSION()")
            version = cur.fetchone()[0]
        return f"{'MariaDB' if 'mariadb' in version.lower() else 'MySQL'} {version}"

    @staticmethod
    def _defaults(conn, schema: str) -> tuple[str, str] | None:
        with conn.cursor() as cur:
            cur.execute("SELECT default_character_set_name, default_collation_name "
                        "FROM information_schema.schemata WHERE schema_name = %s", (schema,))
            row = cur.fetchone()
        return (row[0], row[1]) if row else None

    def _invalid_views(self, conn, schema: str) -> dict[str, str]:
        """{view: its CREATE VIEW} for views the server cannot use (a missing table, column,
        function or definer). No dump tool can restore them, and mariadb-dump stops at them."""
        import pymysql

        rows = self._execute(conn, "SELECT table_name FROM information_schema.tables WHERE table_schema = %s "
                                   "AND table_type = 'VIEW' ORDER BY table_name", (schema,))
        bad = {}
        for (view,) in rows:
            try:
                with conn.cursor() as cur:
                    cur.execute(f"SHOW FIELDS FROM {quote(schema)}.{quote(view)}")
            except pymysql.err.MySQLError as exc:
                if not exc.args or exc.args[0] not in (1356, 1449):
                    raise self._sql_error(exc, f"cannot inspect view {view!r}") from None
                shown = self._execute(conn, f"SHOW CREATE VIEW {quote(schema)}.{quote(view)}", quiet=True)
                bad[view] = shown[0][1] if shown else ""
        return bad

    def _sa_engine(self, database: str):
        import sqlalchemy
        from sqlalchemy.pool import NullPool

        return sqlalchemy.create_engine("mysql+pymysql://", poolclass=NullPool,
                                        creator=lambda: self._connect(database, autocommit=False))

    def _describe(self, database: str, counts: bool, left_out=(), with_fingerprint: bool = True
                  ) -> tuple[dict, str, dict]:
        """(row counts or {}, schema fingerprint, migration state) of `database`, through SQLAlchemy.

        Views in `left_out` are not part of the fingerprint (the dump leaves them out)."""
        import sqlalchemy
        from sqlalchemy.exc import SQLAlchemyError

        from snapkit.engines import sql_inspect

        engine = self._sa_engine(database)
        try:
            with engine.connect() as conn:
                insp = sqlalchemy.inspect(conn)
                if left_out:
                    insp = _WithoutViews(insp, left_out)
                fingerprint = sql_inspect.fingerprint(conn, insp) if with_fingerprint else ""
                migrations = sql_inspect.migration_state(conn, insp)
                tables = {}
                if counts:
                    names = conn.exec_driver_sql(
                        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s "
                        "AND table_type IN ('BASE TABLE', 'SYSTEM VERSIONED') ORDER BY table_name",
                        (database,)).scalars().all()
                    for name in names:
                        tables[name] = int(conn.exec_driver_sql(f"SELECT count(*) FROM {quote(name)}").scalar())
        except SQLAlchemyError as exc:
            orig = getattr(exc, "orig", None)
            raise DatabaseError(f"cannot inspect database {database!r} on {self.server.where}: "
                                f"{_one_line(str(orig.args[-1] if orig is not None and orig.args else exc))}") from None
        finally:
            engine.dispose()
        return tables, fingerprint, migrations

    # ---- snapshot ------------------------------------------------------------

    def _dump_argv(self, tool: str, server_version: str) -> list[str]:
        argv = [tool, *DUMP_OPTIONS]
        if not _is_mariadb_tool(tool):  # Oracle's mysqldump
            argv.append("--set-gtid-purged=OFF")  # no GTID_PURGED statement that fails on restore
            if "MariaDB" in server_version:
                argv.append("--column-statistics=0")  # mysqldump 8 asks MariaDB for a table it lacks
        return [*argv, "--", self.server.database]  # callers insert options before "--"

    @contextmanager
    def dump(self, tmp_dir: Path):
        """The dump tool's output as a stream; `Dump.database_info()` is final once it is consumed."""
        tool_path, _client = self._tools()
        db = self.server.database
        conn = self._connect(db)
        try:
            version = self._version(conn)
            defaults = self._defaults(conn, db)
            invalid = self._invalid_views(conn, db)
        finally:
            conn.close()
        _, fingerprint, migrations = self._describe(db, counts=False, left_out=invalid)
        argv = self._dump_argv(tool_path, version)
        argv[-2:-2] = [f"--ignore-table={db}.{view}" for view in invalid]  # before "--", db
        scanner = DumpScanner()
        done = []

        def stream() -> Iterator[bytes]:
            if defaults:
                yield (f"-- snapkit: schema defaults CHARACTER SET {defaults[0]} COLLATE {defaults[1]} "
                       f"(load with: mariadb --binary-mode DBNAME < this-file)\n").encode()
            with self._run(argv, tmp_dir, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE) as tool:
                while block := tool.proc.stdout.read(READ_BLOCK):
                    scanner.feed(block)
                    yield block
                rc = tool.proc.wait()
                if rc != 0:
                    raise DatabaseError(f"cannot dump database {db!r}: {tool.failure(rc)}")
            scanner.close()
            if invalid:  # kept for the record, as comments: no server accepts them as they are
                lines = ["", ("-- snapkit: invalid views left out of this snapshot (they reference a missing "
                              "table, column, function or definer):")]
                lines += ["-- " + line for sql in invalid.values() for line in (sql + ";").splitlines()]
                yield ("\n".join(lines) + "\n").encode()
            done.append(True)

        def info() -> DatabaseInfo:
            if not done:
                raise DatabaseError("the dump was not read to its end")
            return DatabaseInfo(self.name, version, self.url, dict(scanner.tables), fingerprint, migrations)

        chunks = stream()
        try:
            dump = Dump(STRATEGY, None, chunks, None, info_fn=info)
            dump.warnings = tuple(f"view {v!r} is invalid (it references a missing table, column, function "
                                  "or definer) and was left out of the snapshot" for v in invalid)
            yield dump
        finally:
            chunks.close()  # a consumer that stopped early: the tool is killed, its pipe closed

    # ---- restore ---------------------------------------------------------------

    def restore(self, source: Iterable[bytes], tmp_dir: Path) -> None:
        """Load into a scratch schema, then swap it in (see the module docstring for the guarantee)."""
        _dump, client = self._tools()
        db = self.server.database
        admin = self._connect(None)
        created = False
        try:
            self._session(admin)
            self._lock(admin, "snapkit-restore:" + db, self.timeout, f"another restore into {db!r} is running")
            defaults, source = _read_header(source)
            current = self._defaults(admin, db)
            if current is None:
                self._create_target(admin, db, defaults)
                created = True
                current = self._defaults(admin, db)
            try:
                with self._scratch(admin, defaults or current, "restore") as scratch:
                    self._load(client, source, scratch, tmp_dir)
                    self._swap(admin, client, scratch, current, tmp_dir)
            except BaseException:
                if created:
                    self._execute(admin, f"DROP DATABASE IF EXISTS {quote(db)}", quiet=True)
                raise
        finally:
            admin.close()

    def restore_test(self, source: Iterable[bytes], tmp_dir: Path) -> DatabaseInfo:
        """Restore into a scratch schema, describe it, drop it. Needs CREATE on `<db>_snapkit_%`."""
        _dump, client = self._tools()
        admin = self._connect(None)
        try:
            self._session(admin)
            version = self._version(admin)
            defaults, source = _read_header(source)
            with self._scratch(admin, defaults or self._defaults(admin, self.server.database),
                               "restore test") as scratch:
                self._load(client, source, scratch, tmp_dir, failed="the snapshot does not load")
                tables, fingerprint, migrations = self._describe(scratch, counts=True)
        finally:
            admin.close()
        return DatabaseInfo(self.name, version, self.url, tables, fingerprint, migrations)

    def _lock_wait(self) -> int:
        return max(1, int(self.timeout))

    def _session(self, conn) -> None:
        # Waits for the app's locks end after `timeout` s (the server's default is a year).
        self._execute(conn, f"SET SESSION lock_wait_timeout = {self._lock_wait()}, foreign_key_checks = 0")

    def _execute(self, conn, sql: str, args=None, doing: str | None = None, quiet: bool = False):
        import pymysql

        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                return cur.fetchall()
        except pymysql.err.MySQLError as exc:
            if quiet:
                return None
            raise self._sql_error(exc, doing or f"restore into {self.server.database!r} failed") from None

    def _lock(self, conn, name: str, timeout: float, busy: str) -> None:
        key = "snapkit:" + hashlib.sha1(name.encode()).hexdigest()[:32]
        got = self._execute(conn, "SELECT GET_LOCK(%s, %s)", (key, max(0, int(timeout))))
        if not got or got[0][0] != 1:
            raise DatabaseError(busy, hint="wait for it to finish")

    def _create_target(self, conn, db: str, defaults) -> None:
        import pymysql

        try:
            _create_schema(conn, db, defaults)
        except pymysql.err.MySQLError as exc:
            if exc.args and exc.args[0] in (1044, 1227):
                raise DatabaseError(f"database {db!r} does not exist on {self.server.where} and user "
                                    f"{self.server.user!r} may not create it",
                                    hint="create it first (CREATE DATABASE), or grant CREATE to the user") from None
            raise self._sql_error(exc, f"cannot create database {db!r}") from None

    @contextmanager
    def _scratch(self, conn, defaults, purpose: str):
        """A new, empty `<db>_snapkit_<hex>` schema owned (named lock) by this session; dropped after."""
        import pymysql

        db = self.server.database
        self._drop_stale(conn)
        for _attempt in range(5):
            name = scratch_prefix(db) + secrets.token_hex(6)
            self._lock(conn, name, 0, f"scratch schema {name} is in use")
            try:
                _create_schema(conn, name, defaults)
                break
            except pymysql.err.MySQLError as exc:
                if exc.args and exc.args[0] == 1007:  # exists: pick another name
                    continue
                if exc.args and exc.args[0] in (1044, 1227):
                    pattern = scratch_prefix(db).replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%")
                    raise DatabaseError(
                        f"user {self.server.user!r} may not create the scratch database {name!r} "
                        f"that the {purpose} needs",
                        hint=f"GRANT ALL PRIVILEGES ON `{pattern}%`.* TO '{self.server.user}'@'%' "
                             "(or run it as a user who may create databases)") from None
                raise self._sql_error(exc, f"cannot create the scratch database {name!r}") from None
        else:
            raise DatabaseError("cannot find a free name for the scratch database")
        try:
            yield name
        finally:
            self._execute(conn, f"DROP DATABASE IF EXISTS {quote(name)}", quiet=True)
            if not self._has_tables(conn, name + "_old"):  # else it holds the old tables: the user decides
                self._execute(conn, f"DROP DATABASE IF EXISTS {quote(name + '_old')}", quiet=True)
            self._execute(conn, "SELECT RELEASE_ALL_LOCKS()", quiet=True)

    def _has_tables(self, conn, schema: str) -> bool:
        rows = self._execute(conn, "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s",
                             (schema,), quiet=True)
        return bool(rows and rows[0][0])

    def _drop_stale(self, conn) -> None:
        """Scratch schemas left by killed restores: their owner's session (and named lock) is gone."""
        prefix = scratch_prefix(self.server.database)
        like = prefix.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%") + "%"
        rows = self._execute(conn, "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE %s",
                             (like,), quiet=True) or []
        for (name,) in rows:
            if not re.fullmatch(re.escape(prefix) + r"[0-9a-f]{12}", name):
                continue  # `_old` schemas may hold the only copy of old tables: left to the user
            key = "snapkit:" + hashlib.sha1(name.encode()).hexdigest()[:32]
            free = self._execute(conn, "SELECT IS_FREE_LOCK(%s)", (key,), quiet=True)
            if free and free[0][0] == 1:
                self._execute(conn, f"DROP DATABASE IF EXISTS {quote(name)}", quiet=True)

    def _load(self, client: str, source: Iterable[bytes], scratch: str, tmp_dir: Path,
              failed: str = "restore failed, the database was not changed") -> None:
        """Feed the layer to the client into `scratch`; it stops at the first error."""
        with self._run([client, *CLIENT_OPTIONS, f"--database={scratch}"], tmp_dir,
                       stdin=subprocess.PIPE, stdout=subprocess.DEVNULL) as tool:
            try:
                for block in source:
                    tool.proc.stdin.write(block)
                tool.proc.stdin.close()
            except BrokenPipeError:  # the client stopped: its exit status and stderr say why
                pass
            rc = tool.proc.wait()
            if rc != 0:
                raise DatabaseError(f"{failed}: {tool.failure(rc)}")

    # ---- the swap ----------------------------------------------------------------

    def _objects(self, conn, schema: str) -> dict[str, list]:
        q = {
            "tables": ("SELECT table_name FROM information_schema.tables WHERE table_schema = %s "
                       f"AND table_type IN ({', '.join(repr(t) for t in TABLE_TYPES)}) ORDER BY table_name"),
            "views": ("SELECT table_name FROM information_schema.tables WHERE table_schema = %s "
                      "AND table_type = 'VIEW' ORDER BY table_name"),
            "triggers": ("SELECT trigger_name FROM information_schema.triggers WHERE trigger_schema = %s "
                         "ORDER BY trigger_name"),
            "routines": ("SELECT routine_type, routine_name FROM information_schema.routines "
                         "WHERE routine_schema = %s AND routine_type IN ('PROCEDURE', 'FUNCTION') "
                         "ORDER BY routine_type, routine_name"),
            "events": ("SELECT event_name FROM information_schema.events WHERE event_schema = %s "
                       "ORDER BY event_name"),
        }
        out = {}
        for kind, sql in q.items():
            rows = self._execute(conn, sql, (schema,))
            out[kind] = [r if kind == "routines" else r[0] for r in rows]
        return out

    def _object_script(self, schema: str, objects: dict, tmp_dir: Path) -> bytes:
        """SQL that (re)creates a schema's triggers, routines, events and views, made by the dump tool."""
        dump, _client = self._tools()
        common = ["--single-transaction", "--no-data", "--skip-comments", "--skip-dump-date",
                  "--default-character-set=utf8mb4", "--max-allowed-packet=1G"]
        script = b""
        if objects["triggers"] or objects["routines"] or objects["events"]:
            script += self._capture([dump, *common, "--no-create-info", "--routines", "--events", "--triggers",
                                     "--add-drop-trigger", "--", schema], tmp_dir)
        if objects["views"]:
            script += self._capture([dump, *common, "--skip-triggers", "--", schema, *objects["views"]], tmp_dir)
        return script

    def _drop_objects(self, conn, schema: str, objects: dict, only_triggers: bool = False) -> None:
        s = quote(schema)
        for name in objects["triggers"]:
            self._execute(conn, f"DROP TRIGGER IF EXISTS {s}.{quote(name)}")
        if only_triggers:
            return
        if objects["views"]:
            self._execute(conn, "DROP VIEW IF EXISTS " + ", ".join(f"{s}.{quote(v)}" for v in objects["views"]))
        for kind, name in objects["routines"]:
            self._execute(conn, f"DROP {kind} IF EXISTS {s}.{quote(name)}")
        for name in objects["events"]:
            self._execute(conn, f"DROP EVENT IF EXISTS {s}.{quote(name)}")

    def _probe_locks(self, conn, db: str, tables: list[str]) -> None:
        """Fail before any change while the app holds a table (an open transaction used it):
        LOCK TABLES waits for all of them at once, up to the timeout, then lets go."""
        if not tables:
            return
        self._execute(conn, "LOCK TABLES " + ", ".join(f"{quote(db)}.{quote(t)} WRITE" for t in tables),
                      doing=f"restore into {db!r} failed, the database was not changed")
        self._execute(conn, "UNLOCK TABLES")

    def _rename(self, conn, moves: list[tuple[str, str, str, str]]) -> None:
        if moves:
            self._execute(conn, "RENAME TABLE " + ", ".join(
                f"{quote(a)}.{quote(t)} TO {quote(b)}.{quote(u)}" for a, t, b, u in moves),
                doing=f"restore into {self.server.database!r} failed, the database was not changed")

    def _swap(self, conn, client: str, scratch: str, current, tmp_dir: Path) -> None:
        db, old = self.server.database, scratch + "_old"
        wanted = self._defaults(conn, scratch)  # the snapshot's (when this server knows them)
        live, new = self._objects(conn, db), self._objects(conn, scratch)
        new_script = self._object_script(scratch, new, tmp_dir)
        broken = self._invalid_views(conn, db)  # cannot be put back by anyone: left out
        live_script = self._object_script(db, {**live, "views": [v for v in live["views"] if v not in broken]},
                                          tmp_dir)  # to put the target's objects back
        spec = f" CHARACTER SET {current[0]} COLLATE {current[1]}" if current else ""
        self._execute(conn, f"CREATE DATABASE {quote(old)}{spec}")
        forward = ([(db, t, old, t) for t in live["tables"]] + [(scratch, t, db, t) for t in new["tables"]])
        self._drop_objects(conn, scratch, new, only_triggers=True)  # tables with triggers cannot move
        in_the_way = {"triggers": live["triggers"], "routines": [], "events": [],
                      "views": sorted(set(live["views"]) & set(new["tables"]))}
        self._probe_locks(conn, db, live["tables"])
        try:
            self._drop_objects(conn, db, in_the_way)
            self._rename(conn, forward)  # atomic: the app sees all old tables or all new ones
        except BaseException:
            self._run_script(client, db, live_script, tmp_dir, put_back=True)  # what was dropped
            raise
        try:
            self._drop_objects(conn, db, {**live, "triggers": []})
            if wanted and wanted != current:
                self._execute(conn, f"ALTER DATABASE {quote(db)} CHARACTER SET {wanted[0]} "
                                    f"COLLATE {wanted[1]}")
            self._run_script(client, db, new_script, tmp_dir)
        except BaseException as exc:
            try:
                self._put_back(conn, client, scratch, old, live, new, live_script, current, tmp_dir)
            except Exception as again:  # noqa: BLE001 (whatever it was, the user must hear where the tables are)
                why = exc.message if isinstance(exc, DatabaseError) else repr(exc)
                raise DatabaseError(
                    f"restore failed while swapping ({why}) and putting the previous database back failed "
                    f"too ({again.message if isinstance(again, DatabaseError) else again!r}); "
                    f"its old tables are in schema {old!r}",
                    hint="restore the safety snapshot taken before (`snapkit list` shows it, tag safety)") from None
            if isinstance(exc, DatabaseError):
                raise DatabaseError(f"restore failed while swapping, the previous database was put back: "
                                    f"{exc.message}") from None
            raise
        self._execute(conn, f"DROP DATABASE {quote(old)}", quiet=True)

    def _put_back(self, conn, client, scratch, old, live, new, live_script, current, tmp_dir) -> None:
        db = self.server.database
        now = self._objects(conn, db)
        self._drop_objects(conn, db, now)
        self._rename(conn, [(db, t, scratch, t) for t in new["tables"]] + [(old, t, db, t) for t in live["tables"]])
        if current:
            self._execute(conn, f"ALTER DATABASE {quote(db)} CHARACTER SET {current[0]} COLLATE {current[1]}",
                          quiet=True)
        self._run_script(client, db, live_script, tmp_dir, put_back=True)
        self._execute(conn, f"DROP DATABASE IF EXISTS {quote(old)}", quiet=True)


class _WithoutViews:
    """A SQLAlchemy Inspector that does not list some views."""

    def __init__(self, insp, views):
        self._insp, self._views = insp, set(views)

    def __getattr__(self, name):
        return getattr(self._insp, name)

    def get_view_names(self, schema=None, **kw):
        return [v for v in self._insp.get_view_names(schema=schema, **kw) if v not in self._views]


def _create_schema(conn, name: str, defaults) -> None:
    """CREATE DATABASE with these defaults, or the server's when it does not know them (a
    MySQL 8 collation on MariaDB: the tables' own DDL decides whether the load works)."""
    import pymysql

    with conn.cursor() as cur:
        if defaults:
            try:
                cur.execute(f"CREATE DATABASE {quote(name)} CHARACTER SET {defaults[0]} COLLATE {defaults[1]}")
                return
            except pymysql.err.MySQLError as exc:
                if not exc.args or exc.args[0] not in (1115, 1273):  # unknown character set / collation
                    raise
        cur.execute(f"CREATE DATABASE {quote(name)}")


def scratch_prefix(db: str) -> str:
    """`<db>_snapkit_`: scratch names stay within MySQL's 64-character limit (with `<hex12>_old`)."""
    return db[:38] + SCRATCH


def _read_header(source: Iterable[bytes]) -> tuple[tuple[str, str] | None, Iterator[bytes]]:
    """The schema defaults from the layer's first line (if snapkit wrote one), and the whole stream."""
    it = iter(source)
    head = b""
    for block in it:
        head += block
        if b"\n" in head or len(head) >= 4096:
            break
    m = HEADER.match(head)
    defaults = (m.group(1).decode(), m.group(2).decode()) if m else None

    def whole() -> Iterator[bytes]:
        if head:
            yield head
        yield from it

    return defaults, whole()
