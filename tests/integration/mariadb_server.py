"""A throwaway MariaDB server for the integration tests, started and stopped by the suite.

Never the machine's own server: each pytest process (each xdist worker) gets a
fresh data directory under /tmp (short, for the unix socket's 108-byte limit),
its own socket and a free TCP port on 127.0.0.1. Start-up is about a second:
`mariadb-install-db` without the test database, then `mariadbd --no-defaults`
with small buffers and no durability (a test server loses nothing it needs).

Without the server binaries the tests that need one are skipped, except in CI
(env CI set), where they fail: a CI run must not pass by skipping them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import pytest

# A password that needs quoting everywhere: URL, option file, SQL.
PASSWORD = "s3cr\"et'#\\ pw;=%"
USER = "snap"
START_TIMEOUT = 30.0


def _find(*names: str) -> str | None:
    for name in names:
        for where in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
            if where and os.access(where, os.X_OK):
                return where
    return None


def binaries() -> dict[str, str]:
    """Paths of the server, installer, client and dump tool; {} when one is missing."""
    found = {"server": _find("mariadbd", "mysqld"), "install": _find("mariadb-install-db", "mysql_install_db"),
             "client": _find("mariadb", "mysql"), "dump": _find("mariadb-dump", "mysqldump")}
    return found if all(found.values()) else {}


def unavailable(reason: str):
    """Skip locally, fail in CI (it must not go green by skipping the server tests)."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; install mariadb-server: scripts/test does it", pytrace=False)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MariaDB:
    """One running server: root over the socket (no password), USER with PASSWORD."""

    def __init__(self, base: Path, bins: dict[str, str]):
        self.base = base
        self.bins = bins
        self.datadir = base / "data"
        self.socket = base / "m.sock"
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.user = USER
        self.password = PASSWORD

    # ---- life cycle ------------------------------------------------------

    def start(self) -> None:
        as_root = ["--user=root"] if os.geteuid() == 0 else []
        subprocess.run([self.bins["install"], "--no-defaults", f"--datadir={self.datadir}",
                        "--auth-root-authentication-method=normal", "--skip-test-db", "--skip-name-resolve",
                        *as_root], check=True, capture_output=True, timeout=120)
        last_error = ""
        for _attempt in range(3):  # a free port can be taken before the server binds it
            self.port = _free_port()
            log = self.base / "error.log"
            self.proc = subprocess.Popen(
                [self.bins["server"], "--no-defaults", f"--datadir={self.datadir}", f"--socket={self.socket}",
                 f"--port={self.port}", "--bind-address=127.0.0.1", f"--pid-file={self.base / 'm.pid'}",
                 f"--log-error={log}", "--skip-log-bin", "--skip-name-resolve",
                 "--character-set-server=utf8mb4", "--collation-server=utf8mb4_general_ci",
                 "--innodb-buffer-pool-size=64M", "--innodb-flush-log-at-trx-commit=0",
                 "--innodb-doublewrite=0",
                 "--max-connections=200", *as_root],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True)
            if self._wait_ready():
                self._setup()
                return
            last_error = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            self._kill()
        raise RuntimeError(f"mariadbd did not start:\n{last_error}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if self.socket.exists():
                probe = subprocess.run(self._client("-N", "-B", "-e", "SELECT 1"), capture_output=True, text=True,
                                       check=False)
                if probe.returncode == 0:
                    return True
            time.sleep(0.05)
        return False

    def _setup(self) -> None:
        pw = self.password.replace("\\", "\\\\").replace("'", "\\'")
        for host in ("localhost", "%"):
            self.sql(f"CREATE USER '{USER}'@'{host}' IDENTIFIED BY '{pw}'")
            self.sql(f"GRANT ALL PRIVILEGES ON *.* TO '{USER}'@'{host}'")

    def _kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        # The data is thrown away: SIGKILL is instant where a clean shutdown takes a second.
        self._kill()
        shutil.rmtree(self.base, ignore_errors=True)

    # ---- what tests use --------------------------------------------------

    def url(self, db: str, user: str = "root", password: str | None = None, tcp: bool = False,
            scheme: str = "mysql") -> str:
        """A snapkit database URL; over the unix socket unless tcp."""
        auth = quote(user, safe="") + (":" + quote(password, safe="") if password is not None else "")
        if tcp:
            return f"{scheme}://{auth}@127.0.0.1:{self.port}/{quote(db, safe='')}"
        return f"{scheme}://{auth}@localhost/{quote(db, safe='')}?unix_socket={quote(str(self.socket), safe='/')}"

    def client_args(self) -> list[str]:
        """Arguments for the mariadb client (and load.sh / counts.sh): root over our socket."""
        return [f"--socket={self.socket}", "-uroot"]

    def _client(self, *args: str) -> list[str]:
        return [self.bins["client"], "--no-defaults", *self.client_args(), "--default-character-set=utf8mb4",
                *args]

    def sql(self, statements: str, db: str | None = None, check: bool = True) -> str:
        """Run SQL as root through the mariadb client; returns its tab-separated output."""
        args = ["-N", "-B", "-e", statements] + ([f"--database={db}"] if db else [])
        proc = subprocess.run(self._client(*args), capture_output=True, text=True, timeout=120, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"mariadb: {proc.stderr.strip()}\nSQL: {statements[:500]}")
        return proc.stdout

    def connect(self, db: str | None = None, **kw):
        import pymysql

        kw.setdefault("autocommit", True)
        return pymysql.connect(unix_socket=str(self.socket), user="root", database=db, charset="utf8mb4", **kw)

    def create_database(self, name: str) -> str:
        self.sql(f"DROP DATABASE IF EXISTS `{name}`; CREATE DATABASE `{name}` CHARACTER SET utf8mb4 "
                 "COLLATE utf8mb4_general_ci")
        return name

    def databases(self) -> set[str]:
        return set(self.sql("SHOW DATABASES").split())

    def dump_schema(self, db: str) -> str:
        """Independent oracle: the stock dump tool's schema-only output (no dates)."""
        proc = subprocess.run([self.bins["dump"], "--no-defaults", *self.client_args(), "--no-data", "--routines",
                               "--triggers", "--events", "--skip-dump-date", "--default-character-set=utf8mb4",
                               db], capture_output=True, text=True, check=True, timeout=120)
        return proc.stdout


def start(tmp_root: str | None = None) -> MariaDB:
    bins = binaries()
    if not bins:
        unavailable("MariaDB server binaries (mariadbd, mariadb-install-db, mariadb, mariadb-dump) not found")
    base = Path(tempfile.mkdtemp(prefix="snapkit-mdb-", dir=tmp_root or "/tmp"))
    server = MariaDB(base, bins)
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def mariadb():
    """A private MariaDB for this test process; stopped and removed at the end of the session."""
    server = start()
    try:
        yield server
    finally:
        server.stop()

