"""A throwaway PostgreSQL server per test session (per xdist worker): `pg_server` fixture.

It never touches a server the machine happens to run (e.g. on 5432): it
initdb's a cluster into a fresh directory under /tmp, listens on a free port
on 127.0.0.1 with its unix socket in that directory, and is stopped and
removed at session end.

Authentication: trust on the unix socket and for the superuser `postgres`
over TCP; every other role authenticates with scram-sha-256 over TCP, so
wrong-password errors are real.

No server binaries: `pytest.fail` when $CI is set (scripts/test installs
them), `pytest.skip` otherwise.
"""

from __future__ import annotations

import atexit
import glob
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import pytest

SUPERUSER = "postgres"


def find_bindir() -> Path | None:
    """The newest /usr/lib/postgresql/N/bin (or $SNAPKIT_TEST_PG_BIN) holding initdb, pg_ctl and postgres."""
    override = os.environ.get("SNAPKIT_TEST_PG_BIN")
    candidates = [override] if override else []

    def major(path: str) -> float:
        m = re.search(r"/(\d+(?:\.\d+)?)/bin$", path)
        return float(m.group(1)) if m else 0.0

    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=major, reverse=True)
    candidates += sorted(glob.glob("/usr/pgsql-*/bin"), reverse=True)
    for path in [p for p in candidates if p]:
        if all(os.access(os.path.join(path, tool), os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(path)
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl") and shutil.which("postgres"):
        return Path(on_path).resolve().parent
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    def __init__(self, bindir: Path, base: Path, run_as: str | None):
        self.bindir = bindir
        self.base = base
        self.data = base / "data"
        self.sock = base / "sock"
        self.log = base / "server.log"
        self.run_as = run_as
        self.port = 0
        self.host = "127.0.0.1"
        self.version = ""

    # ---- lifecycle
    def _as_owner(self, argv: list[str], **kw) -> subprocess.CompletedProcess:
        if self.run_as:
            argv = ["runuser", "-u", self.run_as, "--", *argv]
        return subprocess.run(argv, capture_output=True, text=True, **kw)

    def start(self) -> None:
        self.sock.mkdir()
        if self.run_as:
            shutil.chown(self.base, self.run_as)
            shutil.chown(self.sock, self.run_as)
        proc = self._as_owner([str(self.bindir / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "-E", "UTF8",
                               "--locale=C.UTF-8", "--auth=trust", "--no-sync"])
        if proc.returncode != 0:
            raise RuntimeError(f"initdb failed: {proc.stderr.strip()}")
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            f"host all {SUPERUSER} 127.0.0.1/32 trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n")
        with open(self.data / "postgresql.conf", "a") as f:
            f.write("\nlisten_addresses = '127.0.0.1'\n"
                    f"unix_socket_directories = '{self.sock}'\n"
                    "password_encryption = 'scram-sha-256'\n"
                    "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                    "max_connections = 60\nshared_buffers = 32MB\n"
                    "log_min_messages = warning\n")
        for _attempt in range(5):
            self.port = free_port()
            proc = self._as_owner([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                                   "-o", f"-p {self.port}", "-w", "-t", "60", "start"])
            if proc.returncode == 0:
                break
        else:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {proc.stderr.strip()}\n{log}")
        self.version = self.psql("-Atc", "SHOW server_version").stdout.strip()

    def stop(self) -> None:
        if self.data.exists():
            self._as_owner([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"])
        shutil.rmtree(self.base, ignore_errors=True)

    # ---- helpers
    def conninfo(self, dbname: str = "postgres", user: str = SUPERUSER) -> str:
        """libpq conninfo over the unix socket (trust): for psql, load.sh and counts.sh."""
        return f"host={self.sock} port={self.port} user={user} dbname={dbname}"

    def url(self, dbname: str = "postgres", user: str = SUPERUSER, password: str | None = None,
            port: int | None = None, scheme: str = "postgresql") -> str:
        """A TCP URL snapkit is given (password-protected roles need `password`)."""
        auth = quote(user, safe="") + (":" + quote(password, safe="") if password is not None else "")
        return f"{scheme}://{auth}@{self.host}:{port or self.port}/{quote(dbname, safe='')}"

    def psql(self, *args: str, dbname: str = "postgres", check: bool = True, input: str | None = None,
             env: dict | None = None) -> subprocess.CompletedProcess:
        argv = [str(self.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", self.conninfo(dbname), *args]
        proc = subprocess.run(argv, capture_output=True, text=True, input=input, env={**os.environ, **(env or {})})
        if check and proc.returncode != 0:
            raise AssertionError(f"psql {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def sql(self, statement: str, dbname: str = "postgres") -> str:
        """Run one statement; its unaligned, tuples-only output."""
        return self.psql("-Atc", statement, dbname=dbname).stdout.strip()

    def createdb(self, name: str, owner: str = SUPERUSER) -> str:
        self.sql(f'CREATE DATABASE "{name}" OWNER "{owner}"')
        return name

    def dropdb(self, name: str) -> None:
        self.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def create_role(self, name: str, password: str, *attrs: str) -> None:
        pw = password.replace("'", "''")
        self.sql(f"CREATE ROLE \"{name}\" LOGIN PASSWORD '{pw}' {' '.join(attrs)}")

    def databases(self) -> set[str]:
        return set(self.sql("SELECT datname FROM pg_database").splitlines())

    def tool(self, name: str) -> str:
        return str(self.bindir / name)


def _start() -> PgServer:
    bindir = find_bindir()
    if bindir is None:
        reason = "no PostgreSQL server binaries (initdb, pg_ctl, postgres) found"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: install postgresql (scripts/test does it)", pytrace=False)
        pytest.skip(f"{reason}; install postgresql to run these tests")
    run_as = None
    if os.geteuid() == 0:  # initdb refuses root: the cluster belongs to the postgres system user
        import pwd

        try:
            pwd.getpwnam("postgres")
            run_as = "postgres"
        except KeyError:
            pytest.fail("running as root without a `postgres` system user to own the test cluster",
                        pytrace=False)
    base = Path(tempfile.mkdtemp(prefix="snapkit-pg-"))
    os.chmod(base, 0o755)
    server = PgServer(bindir, base, run_as)
    atexit.register(server.stop)  # also when the session dies before the fixture's finaliser
    try:
        server.start()
    except Exception as exc:
        server.stop()
        message = f"could not start a throwaway PostgreSQL server: {exc}"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return server


@pytest.fixture(scope="session")
def pg_server():
    """A private PostgreSQL server for this session (each xdist worker gets its own)."""
    server = _start()
    try:
        yield server
    finally:
        server.stop()


def wait_for(predicate, timeout: float = 10.0, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False
