"""PostgreSQL: `pg_dump` custom format out, `pg_restore` into a scratch database swapped in.

Snapshot. One connection opens a REPEATABLE READ transaction and exports
its snapshot (`pg_export_snapshot()`); the inspection (tables, exact row
counts, schema fingerprint, migration state; engines/sql_inspect.py) imports
it through SQLAlchemy, and `pg_dump --snapshot=<id>` imports it too, so the
dump and its metadata describe the same instant while the app keeps
writing. (pg_dump still takes its table locks a moment after the snapshot;
DDL committed in that moment makes pg_dump fail rather than dump an
inconsistent schema, as its documentation for --snapshot says. Servers that
cannot export a snapshot, e.g. some poolers, fall back to pg_dump's own
snapshot: then the counts can differ from the dump by the writes of that
moment.) The dump is `--format=custom --compress=0` (snapkit compresses,
and uncompressed chunks dedupe across snapshots), read from pg_dump's stdout
in 1 MiB blocks straight into the chunker: nothing is written to disk and
memory does not grow with the database.

Restore. The stream is piped into `pg_restore --exit-on-error` restoring a
new database `<db>_snapkit_restore_<random>` created from template0 with the
target's encoding, locale, tablespace and owner. Only when pg_restore has
succeeded: the target's database-level settings (ALTER DATABASE/ROLE … IN
DATABASE … SET), privileges, connection limit and comment are copied onto
it, new connections to the target are refused, its sessions terminated, and
two renames swap the databases (target → `<db>_snapkit_old_<random>`,
scratch → target); the old one is then dropped. Any failure before the swap
(bad archive, a role the dump names missing, pg_restore killed, snapkit
interrupted) drops the scratch database and leaves the target exactly as it
was. This was chosen over `pg_restore --single-transaction --clean` into the
live database because --clean only drops objects the dump knows: tables
created after the snapshot would survive it (or, referencing restored
tables, make it fail), so the result would not be the snapshot. The price:
the role needs CREATEDB and ownership of the target (or superuser), the
app's sessions are disconnected at the swap, and for the milliseconds
between the two renames the database name does not exist. If snapkit is
killed exactly between them, `<db>_snapkit_old_<random>` holds the old data
(`check()` says so).

When the role may not create databases, or does not own the target, the
restore falls back to `pg_restore --single-transaction --clean --if-exists
--exit-on-error` into the target: still all or nothing (one transaction),
but objects the snapshot does not have are kept.

Owners: kept when the restoring role is a superuser, otherwise
`--no-owner` (everything then belongs to the restoring role); privileges
are restored either way, so roles the dump grants to must exist.

Passwords: the URL's password goes to libpq in-process (psycopg) and to
pg_dump/pg_restore through a private passfile (0600, in the store's tmp
directory, named by PGPASSFILE, removed when the tool exits), never argv.
`url` and every message carry the URL without its password.

Tools: pg_dump/pg_restore from $SNAPKIT_PG_BIN when set (only there), else
the newest of PATH and /usr/lib/postgresql/*/bin (and the usual RHEL/Homebrew
directories). pg_dump must be at least the server's major version.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from snapkit.engines.base import Background, DatabaseInfo, Dump
from snapkit.errors import DatabaseError

READ_BLOCK = 1024 * 1024
STRATEGY = "cdc:32768"
TOOL_DIRS = ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/opt/homebrew/opt/postgresql@*/bin",
             "/usr/local/opt/postgresql@*/bin", "/Applications/Postgres.app/Contents/Versions/*/bin")
MAINTENANCE_DBS = ("postgres", "template1")
NAME_MAX = 63  # NAMEDATALEN - 1 bytes
INSPECT_OPTIONS = "-c search_path=public -c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=postgres"

_tool_cache: dict[str, tuple[tuple[int, ...], str] | None] = {}


# ---------------------------------------------------------------- helpers

def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _major_str(major: tuple[int, ...]) -> str:
    return ".".join(map(str, major))


def _server_major(version_num: int) -> tuple[int, ...]:
    return (version_num // 10000,) if version_num >= 100000 else (version_num // 10000, version_num // 100 % 100)


def _tool_version(path: str) -> tuple[int, ...] | None:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=15,
                             check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?", out)
    if not m:
        return None
    major = int(m.group(1))
    return (major,) if major >= 10 else (major, int(m.group(2) or 0))


def _tool_candidates(name: str) -> list[str]:
    override = os.environ.get("SNAPKIT_PG_BIN")
    if override:
        return [os.path.join(d, name) for d in override.split(os.pathsep) if d]
    found = []
    on_path = shutil.which(name)
    # Debian's /usr/bin/pg_dump is pg_wrapper, which picks a version itself: use the real binaries.
    if on_path and os.path.basename(os.path.realpath(on_path)) != "pg_wrapper":
        found.append(on_path)
    for pattern in TOOL_DIRS:
        found += glob.glob(os.path.join(pattern, name))
    return found


def find_tool(name: str) -> tuple[tuple[int, ...], str] | None:
    """(major version, path) of the newest `name` (pg_dump, pg_restore) found; None if none."""
    key = f"{name}\0{os.environ.get('SNAPKIT_PG_BIN', '')}\0{os.environ.get('PATH', '')}"
    if key not in _tool_cache:
        best = None
        for path in _tool_candidates(name):
            if not (os.path.isfile(path) and os.access(path, os.X_OK)):
                continue
            version = _tool_version(path)
            if version is not None and (best is None or version > best[0]):
                best = (version, path)
        _tool_cache[key] = best
    return _tool_cache[key]


def _where_tools() -> str:
    override = os.environ.get("SNAPKIT_PG_BIN")
    return f"SNAPKIT_PG_BIN={override}" if override else "PATH and /usr/lib/postgresql/*/bin"


def _truncate_name(prefix: str, suffix: str) -> str:
    room = NAME_MAX - len(suffix.encode())
    raw = prefix.encode()[:room]
    return raw.decode(errors="ignore") + suffix


# ---------------------------------------------------------------- the engine

class PostgresEngine:
    name = "postgresql"

    def __init__(self, params: dict, url: str, timeout: float = 10.0):
        self.params = params          # libpq keywords, password included: never logged
        self.url = url                # password removed
        self.timeout = timeout
        self.dbname = params["dbname"]
        self.user = params.get("user") or os.environ.get("PGUSER") or _login_name()
        self._server_version_num: int | None = None

    @classmethod
    def from_url(cls, url: str, root: Path) -> PostgresEngine:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            u = make_url(url)
        except ArgumentError:
            raise DatabaseError("not a valid PostgreSQL URL (password not shown)",
                                hint="use postgresql://user:password@host:5432/dbname") from None
        scheme = u.drivername.split("+", 1)[0]
        if scheme not in ("postgresql", "postgres"):
            raise DatabaseError(f"not a PostgreSQL URL: scheme {u.drivername!r}")
        query = {k: (v[-1] if isinstance(v, tuple) else v) for k, v in u.query.items()}
        password = u.password if u.password is not None else query.pop("password", None)
        query.pop("password", None)
        params = {k: str(v) for k, v in query.items()}
        if u.host:
            params["host"] = u.host
        if u.port:
            params["port"] = str(u.port)
        if u.username:
            params["user"] = u.username
        if password is not None:
            params["password"] = str(password)
        user = params.get("user") or os.environ.get("PGUSER") or _login_name()
        params["dbname"] = u.database or os.environ.get("PGDATABASE") or user
        # URL.set(password=None) keeps the password (None means "unchanged"): replace the field.
        redacted = u.difference_update_query(["password"])._replace(password=None)
        assert redacted.password is None and "password" not in redacted.query
        return cls(params, redacted.render_as_string(hide_password=False))

    # ---- where and who, for messages
    @property
    def where(self) -> str:
        host = self.params.get("host") or os.environ.get("PGHOST") or "local socket"
        port = self.params.get("port") or os.environ.get("PGPORT") or "5432"
        return f"{host}:{port}"

    # ---- connections
    def _kwargs(self, dbname: str | None = None) -> dict:
        kw = dict(self.params)
        kw["dbname"] = dbname or self.dbname
        kw.setdefault("connect_timeout", str(max(2, int(self.timeout))))
        kw.setdefault("application_name", "snapkit")
        return kw

    def _connect(self, dbname: str | None = None, autocommit: bool = False):
        import psycopg

        try:
            return psycopg.connect(**self._kwargs(dbname), autocommit=autocommit)
        except psycopg.Error as exc:
            raise self._connect_error(exc, dbname or self.dbname) from None

    def _connect_error(self, exc: Exception, dbname: str) -> DatabaseError:
        text = str(exc).strip()
        user = self.user
        if "password authentication failed" in text or "authentication failed" in text:
            return DatabaseError(f"authentication failed for user {user}",
                                 hint="check the password in the database URL (or PGPASSWORD / ~/.pgpass)")
        if "no password supplied" in text:
            return DatabaseError(f"authentication failed for user {user}: no password given",
                                 hint="put it in the URL (e.g. ${DB_PASSWORD} in snapkit.toml) or in ~/.pgpass")
        m = re.search(r'database "(.*)" does not exist', text)
        if m:
            hint = f"create it (createdb {dbname}) or check [database] url"
            old = self._leftover_old(dbname)
            if old:
                hint = (f"an interrupted snapkit restore left the previous data in database {old}: "
                        f"ALTER DATABASE {_ident(old)} RENAME TO {_ident(dbname)}")
            return DatabaseError(f"database {m.group(1)} does not exist", hint=hint)
        m = re.search(r'role "(.*)" does not exist', text)
        if m:
            return DatabaseError(f"role {m.group(1)} does not exist on the PostgreSQL server at {self.where}")
        reason = text.splitlines()[0] if text else type(exc).__name__
        reason = re.sub(r'^connection failed:\s*', "", reason)
        reason = re.sub(r'^connection to server (at|on) .*? failed:\s*', "", reason)
        reason = re.sub(r'^(FATAL|ERROR):\s*', "", reason).strip()
        return DatabaseError(f"cannot connect to PostgreSQL at {self.where}: {reason}",
                             hint="is the server running, and is [database] url right?")

    def _leftover_old(self, dbname: str) -> str | None:
        """A `<db>_snapkit_old_*` database an interrupted swap left behind, if any."""
        import psycopg

        prefix = _truncate_name(dbname, "_snapkit_old_")[:-len("_snapkit_old_")]
        for maint in MAINTENANCE_DBS:
            if maint == dbname:
                continue
            try:
                with psycopg.connect(**self._kwargs(maint), autocommit=True) as m:
                    row = m.execute("SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY datname DESC",
                                    [prefix.replace("_", r"\_") + r"\_snapkit\_old\_%"]).fetchone()
                    return row[0] if row else None
            except psycopg.Error:
                continue
        return None

    def _maintenance(self):
        """An autocommit connection to a database other than the target (postgres, template1)."""
        import psycopg

        last: DatabaseError | None = None
        for maint in MAINTENANCE_DBS:
            if maint == self.dbname:  # an app database called "postgres" is renamed in the swap
                continue
            try:
                return psycopg.connect(**self._kwargs(maint), autocommit=True)
            except psycopg.Error as exc:
                last = self._connect_error(exc, maint)
                if "does not exist" not in last.message:
                    raise last from None
        raise DatabaseError(f"cannot reach a maintenance database ({', '.join(MAINTENANCE_DBS)}) at {self.where}",
                            hint=last.message if last else None)

    def _sa_engine(self, dbname: str | None = None):
        import psycopg
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        kw = self._kwargs(dbname)
        # Inspect under fixed session settings, not the database's (ALTER DATABASE … SET): table
        # names (plain for public, schema.table otherwise), view definitions and rendered
        # defaults must come out the same for the live database and a restored scratch copy.
        # lock_timeout: an app holding an exclusive lock (a long migration) fails the snapshot
        # after `timeout` instead of blocking it (and the post-commit hook) forever.
        kw["options"] = (f"{kw.get('options', '')} {INSPECT_OPTIONS} "
                         f"-c lock_timeout={max(1, int(self.timeout * 1000))}").strip()
        # A creator keeps the password out of any URL SQLAlchemy could log or render.
        return create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(**kw), poolclass=NullPool)

    # ---- check
    def check(self) -> None:
        """Reachable, authenticated, database present, pg_dump new enough."""
        with self._connect() as con:
            self._server_version_num = int(con.execute("SHOW server_version_num").fetchone()[0])
        self.tool("pg_dump")

    def exists(self) -> bool:
        """True when the database is there; False when the server says it does not exist."""
        try:
            with self._connect():
                return True
        except DatabaseError as exc:
            if exc.message.startswith("database ") and exc.message.endswith("does not exist"):
                return False
            raise

    def server_major(self) -> tuple[int, ...]:
        if self._server_version_num is None:
            with self._maintenance() as m:
                self._server_version_num = int(m.execute("SHOW server_version_num").fetchone()[0])
        return _server_major(self._server_version_num)

    def tool(self, name: str) -> str:
        """Path of pg_dump/pg_restore, at least the server's major version; DatabaseError otherwise."""
        server = self.server_major()
        found = find_tool(name)
        package = f"postgresql-client-{_major_str(server)}"
        if found is None:
            raise DatabaseError(f"{name} not found (looked in {_where_tools()})",
                                hint=f"install the PostgreSQL client tools ({package}), "
                                     "or set SNAPKIT_PG_BIN to the directory holding them")
        version, path = found
        if version < server:
            raise DatabaseError(f"{name} {_major_str(version)} is older than the server "
                                f"({_major_str(server)}): {path}",
                                hint=f"install {package} (pg_dump must be at least the server's major version), "
                                     "or set SNAPKIT_PG_BIN to its bin directory")
        return path

    # ---- the tools' environment: password in a private passfile
    @contextmanager
    def _tool_env(self, tmp_dir: Path):
        env = dict(os.environ)
        passfile = None
        try:
            if "password" in self.params:
                tmp_dir.mkdir(parents=True, exist_ok=True)
                passfile = Path(tmp_dir) / f"pgpass-{os.getpid()}-{os.urandom(6).hex()}"
                fd = os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                escaped = self.params["password"].replace("\\", "\\\\").replace(":", "\\:")
                with os.fdopen(fd, "w") as f:
                    f.write(f"*:*:*:*:{escaped}\n")
                env["PGPASSFILE"] = str(passfile)
                env.pop("PGPASSWORD", None)  # it would win over the passfile
            yield env
        finally:
            if passfile is not None:
                passfile.unlink(missing_ok=True)

    def _conninfo(self, dbname: str | None = None) -> str:
        """A conninfo for -d without the password (argv is world-readable)."""
        from psycopg.conninfo import make_conninfo

        kw = {k: v for k, v in self._kwargs(dbname).items() if k != "password"}
        return make_conninfo(**kw)

    # ---- inspection
    def _inspect(self, dbname: str | None = None, snapshot: str | None = None) -> DatabaseInfo:
        from sqlalchemy.exc import DBAPIError

        from snapkit.engines.sql_inspect import describe

        engine = self._sa_engine(dbname)
        try:
            with engine.connect() as c:
                c = c.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
                if snapshot:
                    c.exec_driver_sql(f"SET TRANSACTION SNAPSHOT {_literal(snapshot)}")
                version = c.exec_driver_sql("SHOW server_version").scalar()
                return describe(c, self.name, str(version), self.url)
        except DBAPIError as exc:
            raise DatabaseError(f"inspecting database {dbname or self.dbname} failed: "
                                f"{str(exc.orig).strip().splitlines()[0]}") from None
        finally:
            engine.dispose()

    def migration_state(self) -> dict:
        """The live database's migration state (for restore's schema check)."""
        from sqlalchemy.exc import DBAPIError

        from snapkit.engines.sql_inspect import migration_state

        engine = self._sa_engine()
        try:
            with engine.connect() as c:
                return migration_state(c)
        except DBAPIError as exc:
            raise DatabaseError(f"reading the migration state of {self.dbname} failed: "
                                f"{str(exc.orig).strip().splitlines()[0]}") from None
        finally:
            engine.dispose()

    # ---- dump
    @contextmanager
    def dump(self, tmp_dir: Path):
        """pg_dump's custom-format stream, with metadata read from the same snapshot."""
        import psycopg

        self.check()
        pg_dump = self.tool("pg_dump")
        exporter = self._connect()
        proc = None
        inspect = None
        try:
            snapshot = None
            try:
                exporter.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                exporter.read_only = True
                snapshot = exporter.execute("SELECT pg_export_snapshot()").fetchone()[0]
            except psycopg.Error:
                exporter.rollback()  # e.g. a pooler or a server that cannot export: pg_dump's own snapshot
            info, info_fn = None, None
            if snapshot:
                # Counting rows is a scan of every table: do it on its own connection, in
                # the same snapshot, while pg_dump runs (the exporter keeps it valid).
                inspect = Background(lambda: self._inspect(snapshot=snapshot))
                info_fn = inspect.result
            else:
                info = self._inspect()
            argv = [pg_dump, "--format=custom", "--compress=0", "--no-password",
                    f"--lock-wait-timeout={max(1, int(self.timeout * 1000))}"]
            if snapshot:
                argv.append(f"--snapshot={snapshot}")
            argv += ["--dbname", self._conninfo()]
            with self._tool_env(tmp_dir) as env, tempfile.TemporaryFile(dir=tmp_dir) as errors:
                try:
                    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors,
                                            env=env)
                except OSError as exc:
                    raise DatabaseError(f"cannot run {pg_dump}: {exc.strerror}") from None
                yield Dump(STRATEGY, info, self._stream(proc, errors, "pg_dump"), None, info_fn=info_fn)
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
            if proc is not None:
                proc.wait()
                proc.stdout.close()
            if inspect is not None:
                inspect.join()  # it may still need the exported snapshot
            exporter.close()

    def _stream(self, proc, errors, tool: str) -> Iterator[bytes]:
        while block := proc.stdout.read(READ_BLOCK):
            yield block
        rc = proc.wait()
        if rc != 0:
            hint = None
            if any(ln.startswith(f"{tool}: detail: Query was: LOCK TABLE") for ln in _read_errors(errors)):
                hint = ("another session holds an exclusive lock on a table (a migration?); "
                        "retry when it is done, or raise the database timeout")
            raise DatabaseError(f"{tool} failed: {_last_line(errors, rc)}", hint=hint)

    # ---- restore
    def restore(self, source: Iterable[bytes], tmp_dir: Path) -> None:
        """All-or-nothing: into a scratch database swapped in, or one transaction (module docstring)."""
        pg_restore = self.tool("pg_restore")
        with self._maintenance() as m:
            role = _role(m)
            target = _database(m, self.dbname)
            if target is None:
                if not (role["rolsuper"] or role["rolcreatedb"]):
                    raise DatabaseError(f"database {self.dbname} does not exist and role {role['rolname']} "
                                        "may not create databases", hint="create it first, or grant CREATEDB")
                self._restore_swap(m, source, tmp_dir, pg_restore, role, None)
            elif role["rolsuper"] or (role["rolcreatedb"] and target["is_owner"]):
                self._restore_swap(m, source, tmp_dir, pg_restore, role, target)
            else:
                self._restore_in_place(source, tmp_dir, pg_restore, role)

    def _pg_restore(self, pg_restore: str, source: Iterable[bytes], tmp_dir: Path, dbname: str, role: dict,
                    extra: tuple[str, ...] = ()) -> None:
        argv = [pg_restore, "--exit-on-error", "--no-password", *extra]
        if not role["rolsuper"]:
            argv.append("--no-owner")
        argv += ["--dbname", self._conninfo(dbname)]
        with self._tool_env(tmp_dir) as env, tempfile.TemporaryFile(dir=tmp_dir) as errors:
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors,
                                        env=env)
            except OSError as exc:
                raise DatabaseError(f"cannot run {pg_restore}: {exc.strerror}") from None
            try:
                for block in source:
                    proc.stdin.write(block)
                proc.stdin.close()
            except BrokenPipeError:
                pass  # pg_restore stopped reading: its exit status and stderr say why
            except BaseException:
                proc.kill()  # a damaged layer or an interrupt: pg_restore must not see a clean end
                proc.wait()
                raise
            finally:
                try:
                    proc.stdin.close()
                except BrokenPipeError:
                    pass
            rc = proc.wait()
            if rc != 0:
                raise DatabaseError(f"pg_restore failed: {_last_line(errors, rc)}",
                                    hint=_restore_hint(errors))

    def _create_scratch(self, m, kind: str, like: dict | None, owner: str | None = None) -> str:
        scratch = _truncate_name(self.dbname, f"_snapkit_{kind}_{os.urandom(4).hex()}")
        sql = f"CREATE DATABASE {_ident(scratch)} TEMPLATE template0"
        if like is not None:
            sql += f" ENCODING {_literal(like['encoding_name'])} LC_COLLATE {_literal(like['datcollate'])}" \
                   f" LC_CTYPE {_literal(like['datctype'])}"
            provider = like.get("datlocprovider")
            locale = like.get("datlocale") or like.get("daticulocale")
            if provider == "i":
                sql += f" LOCALE_PROVIDER icu ICU_LOCALE {_literal(locale or '')}"
                if like.get("daticurules"):
                    sql += f" ICU_RULES {_literal(like['daticurules'])}"
            elif provider == "b":
                sql += f" LOCALE_PROVIDER builtin BUILTIN_LOCALE {_literal(locale or '')}"
            elif provider == "c":
                sql += " LOCALE_PROVIDER libc"
            if like.get("tablespace") and like["tablespace"] != "pg_default":
                sql += f" TABLESPACE {_ident(like['tablespace'])}"
        if owner:
            sql += f" OWNER {_ident(owner)}"
        import psycopg

        try:
            m.execute(sql)
        except psycopg.Error as exc:
            raise DatabaseError(f"cannot create scratch database {scratch}: {_pg_message(exc)}") from None
        return scratch

    def _drop(self, m, name: str) -> None:
        import psycopg

        try:
            if self.server_major() >= (13,):
                m.execute(f"DROP DATABASE IF EXISTS {_ident(name)} WITH (FORCE)")
            else:
                m.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [name])
                m.execute(f"DROP DATABASE IF EXISTS {_ident(name)}")
        except (psycopg.Error, DatabaseError):
            pass  # best effort; the name says what it is (docs/engines.md)

    def _restore_swap(self, m, source, tmp_dir, pg_restore, role, target) -> None:
        owner = target["owner"] if target and target["owner"] != role["rolname"] else None
        scratch = self._create_scratch(m, "restore", target, owner)
        swapped = False
        try:
            self._pg_restore(pg_restore, source, tmp_dir, scratch, role)
            if target is not None:
                _copy_database_properties(m, target, scratch)
                self._swap(m, scratch)
            else:
                _rename(m, scratch, self.dbname)
            swapped = True
        finally:
            if not swapped:
                self._drop(m, scratch)

    def _swap(self, m, scratch: str) -> None:
        import psycopg

        target = self.dbname
        old = _truncate_name(target, f"_snapkit_old_{os.urandom(4).hex()}")
        m.execute(f"ALTER DATABASE {_ident(target)} WITH ALLOW_CONNECTIONS false")
        try:
            deadline = time.monotonic() + max(self.timeout, 1.0)
            while True:
                try:
                    m.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = %s AND pid <> pg_backend_pid()", [target])
                except psycopg.Error as exc:
                    raise DatabaseError(f"other sessions are connected to database {target} and role "
                                        f"{self.user} may not end them: {_pg_message(exc)}",
                                        hint="stop the app first, or restore as a superuser") from None
                try:
                    m.execute(f"ALTER DATABASE {_ident(target)} RENAME TO {_ident(old)}")
                    break
                except psycopg.errors.ObjectInUse:
                    if time.monotonic() > deadline:
                        raise DatabaseError(f"database {target} is still in use; nothing was changed",
                                            hint="stop the app's connections and retry") from None
                    time.sleep(0.05)
        except BaseException:
            m.execute(f"ALTER DATABASE {_ident(target)} WITH ALLOW_CONNECTIONS true")
            raise
        try:
            _rename(m, scratch, target)
        except BaseException:
            m.execute(f"ALTER DATABASE {_ident(old)} RENAME TO {_ident(target)}")
            m.execute(f"ALTER DATABASE {_ident(target)} WITH ALLOW_CONNECTIONS true")
            raise
        self._drop(m, old)

    def _restore_in_place(self, source, tmp_dir, pg_restore, role) -> None:
        self._pg_restore(pg_restore, source, tmp_dir, self.dbname, role,
                         ("--single-transaction", "--clean", "--if-exists"))

    def restore_test(self, source: Iterable[bytes], tmp_dir: Path) -> DatabaseInfo:
        """Restore into a scratch database (never the configured one), inspect it, drop it."""
        pg_restore = self.tool("pg_restore")
        with self._maintenance() as m:
            role = _role(m)
            if not (role["rolsuper"] or role["rolcreatedb"]):
                raise DatabaseError(f"role {role['rolname']} may not create databases: the restore test "
                                    "needs a scratch database",
                                    hint=f"ALTER ROLE {_ident(role['rolname'])} CREATEDB, or verify as a role "
                                         "that has it")
            like = _database(m, self.dbname)
            scratch = self._create_scratch(m, "verify", like)
            try:
                self._pg_restore(pg_restore, source, tmp_dir, scratch, role)
                return self._inspect(scratch)
            finally:
                self._drop(m, scratch)


# ---------------------------------------------------------------- catalog helpers

def _login_name() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "postgres"


def _role(m) -> dict:
    row = m.execute("SELECT rolname, rolsuper, rolcreatedb FROM pg_roles WHERE rolname = current_user").fetchone()
    return {"rolname": row[0], "rolsuper": bool(row[1]), "rolcreatedb": bool(row[2])}


def _database(m, name: str) -> dict | None:
    row = m.execute(
        "SELECT to_jsonb(d), pg_encoding_to_char(d.encoding), pg_get_userbyid(d.datdba), "
        "pg_has_role(d.datdba, 'USAGE'), t.spcname, shobj_description(d.oid, 'pg_database'), "
        "d.datacl IS NULL FROM pg_database d LEFT JOIN pg_tablespace t ON t.oid = d.dattablespace "
        "WHERE d.datname = %s", [name]).fetchone()
    if row is None:
        return None
    props = dict(row[0])
    props.update(encoding_name=row[1], owner=row[2], is_owner=bool(row[3]), tablespace=row[4], comment=row[5],
                 acl_default=bool(row[6]), name=name)
    return props


def _rename(m, old: str, new: str) -> None:
    import psycopg

    try:
        m.execute(f"ALTER DATABASE {_ident(old)} RENAME TO {_ident(new)}")
    except psycopg.Error as exc:
        raise DatabaseError(f"cannot rename database {old} to {new}: {_pg_message(exc)}") from None


def _copy_database_properties(m, target: dict, scratch: str) -> None:
    """What pg_dump (without --create) leaves out, from the live target onto the restored copy."""
    import psycopg

    s = _ident(scratch)
    try:
        settings = m.execute(
            "SELECT r.rolname, s.setconfig FROM pg_db_role_setting s LEFT JOIN pg_roles r ON r.oid = s.setrole "
            "WHERE s.setdatabase = (SELECT oid FROM pg_database WHERE datname = %s)", [target["name"]]).fetchall()
        for rolname, config in settings:
            for item in config or []:
                key, _, value = item.partition("=")
                # set_config() takes the value in its stored form (lists stay lists), FROM CURRENT copies it.
                m.execute("SELECT set_config(%s, %s, false)", [key, value])
                scope = f"ROLE {_ident(rolname)} IN DATABASE {s}" if rolname else f"DATABASE {s}"
                m.execute(f"ALTER {scope} SET {_ident(key)} FROM CURRENT")
                m.execute(f"RESET {_ident(key)}")
        if not target["acl_default"]:
            m.execute(f"REVOKE ALL ON DATABASE {s} FROM PUBLIC")
            m.execute(f"REVOKE ALL ON DATABASE {s} FROM {_ident(target['owner'])}")
            grants = m.execute(
                "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END, a.privilege_type, "
                "a.is_grantable FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = %s",
                [target["name"]]).fetchall()
            for grantee, privilege, grantable in grants:
                who = "PUBLIC" if grantee is None else _ident(grantee)
                m.execute(f"GRANT {privilege} ON DATABASE {s} TO {who}" + (" WITH GRANT OPTION" if grantable else ""))
        if int(target.get("datconnlimit", -1)) != -1:
            m.execute(f"ALTER DATABASE {s} CONNECTION LIMIT {int(target['datconnlimit'])}")
        if target.get("comment"):
            m.execute(f"COMMENT ON DATABASE {s} IS {_literal(target['comment'])}")
    except psycopg.Error as exc:
        raise DatabaseError(f"cannot copy the settings of database {target['name']} to the restored copy: "
                            f"{_pg_message(exc)}; nothing was changed",
                            hint="restore as a superuser or as the database's owner") from None


def _pg_message(exc: Exception) -> str:
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    text = primary or str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_errors(errors) -> list[str]:
    errors.flush()
    errors.seek(0)
    lines = errors.read().decode(errors="replace").splitlines()
    return [ln.strip() for ln in lines if ln.strip()]


def _last_line(errors, rc: int) -> str:
    lines = [ln for ln in _read_errors(errors) if not ln.startswith("Command was:")]
    # The error itself, not the "detail: Query was: …" line pg_dump 15 prints after it.
    errors_only = [ln for ln in lines if re.match(r"^(pg_dump|pg_restore): (error|fatal): ", ln)]
    if errors_only:
        lines = errors_only
    if lines:
        last = lines[-1]
        # "pg_restore: error: could not execute query: ERROR:  role "app" does not exist"
        last = re.sub(r"^(pg_dump|pg_restore): (error|fatal|detail|warning): ", "", last)
        return last[:300]
    if rc < 0:
        return f"killed by signal {-rc}"
    return f"exit status {rc}"


def _restore_hint(errors) -> str | None:
    text = "\n".join(_read_errors(errors))
    if re.search(r'role ".*" does not exist', text):
        return "roles are not part of a snapshot: create the roles the dump names, then retry"
    if "input file does not appear to be a valid archive" in text or "unexpected end of file" in text:
        return "the layer is not a complete pg_dump archive; run `snapkit verify`"
    if "unsupported version" in text:
        return "this pg_restore is older than the pg_dump that wrote the snapshot: install a newer client"
    return None

