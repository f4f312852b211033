"""What every engine provides (SQLite now; PostgreSQL and MySQL/MariaDB share it)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class DatabaseInfo:
    """The snapshot's `database` metadata (docs/cli.md, `snapkit show`). Never holds a password."""

    engine: str
    server_version: str
    url: str
    tables: dict[str, int] = field(default_factory=dict)
    schema_fingerprint: str = ""
    migration_state: dict = field(default_factory=dict)

    def as_meta(self) -> dict:
        return {"engine": self.engine, "server_version": self.server_version, "url": self.url,
                "tables": dict(self.tables), "schema_fingerprint": self.schema_fingerprint,
                "migration_state": dict(self.migration_state)}


@dataclass
class Dump:
    """A consistent copy of the database being read: its layer bytes and metadata."""

    strategy: str          # chunking strategy for the layer (store/chunker.py)
    info: DatabaseInfo | None
    stream: Iterator[bytes]
    size: int | None = None  # bytes the stream will yield, when known (for progress)
    # What identifies the source's state cheaply, when the engine can tell
    # that nothing changed (SQLite in rollback-journal mode); None otherwise.
    state: dict | None = None
    info_fn: Callable[[], DatabaseInfo] | None = None  # computed while the stream runs

    def database_info(self) -> DatabaseInfo:
        """The metadata; call after the stream is consumed."""
        if self.info is None and self.info_fn is not None:
            self.info = self.info_fn()
        return self.info


class Engine(Protocol):
    name: str
    url: str               # redacted

    def check(self) -> None:
        """Raise DatabaseError when the database cannot be read (missing, locked, not a database)."""

    def dump(self, tmp_dir: Path) -> AbstractContextManager[Dump]:
        """A consistent dump as a stream; temporary files are gone after the block."""

    def restore(self, source: Iterable[bytes], tmp_dir: Path) -> None:
        """All-or-nothing restore of a layer's bytes into the configured database."""

    def restore_test(self, source: Iterable[bytes], tmp_dir: Path) -> DatabaseInfo:
        """Restore into a scratch database, inspect it, drop it; returns what was found."""


class Background:
    """Run `fn` in a thread now; `result()` waits and returns its value or raises its error."""

    def __init__(self, fn):
        import threading

        self._out: dict = {}
        self._thread = threading.Thread(target=self._run, args=(fn,), name="snapkit-inspect", daemon=True)
        self._thread.start()

    def _run(self, fn) -> None:
        try:
            self._out["value"] = fn()
        except BaseException as exc:  # handed to the caller in result()
            self._out["error"] = exc

    def join(self) -> None:
        self._thread.join()

    def result(self):
        self._thread.join()
        if "error" in self._out:
            raise self._out["error"]
        return self._out["value"]
