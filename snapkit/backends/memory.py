"""An in-memory backend, for fast unit tests of code that talks to a backend.

It keeps the contract of `base` (and passes `tests/backends/contract.py`):
every operation runs under one lock, so `put` is atomic (a reader sees the
old bytes or the new, never a part) and of N racing `put_new`s of one name
exactly one wins. "Durable" means "until the process exits". With
`read_only=True` (settable at any time, e.g. after filling the store) every
write raises `ReadOnlyStore` and reads keep working.
"""

from __future__ import annotations

import threading
from pathlib import Path

from snapkit.backends.base import (AlreadyExists, BackendError, NotFound, ObjectInfo,
                                   ReadOnlyStore, check_name)


class MemoryBackend:
    """A dict of name → bytes behind a lock."""

    def __init__(self, read_only: bool = False):
        self.read_only = read_only
        self._objects: dict[str, bytes] = {}
        self._versions: dict[str, int] = {}  # bumped at every write: ObjectInfo.version
        self._writes = 0
        self._lock = threading.Lock()

    def describe(self) -> str:
        return f"memory:{id(self):x}"

    # ---- reads -------------------------------------------------------------

    def get(self, name: str) -> bytes:
        """The whole object; `NotFound` when missing."""
        check_name(name)
        with self._lock:
            try:
                return self._objects[name]
            except KeyError:
                raise self._not_found(name) from None

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        """`length` bytes at `offset` (fewer only at the end; b"" past it)."""
        check_name(name)
        if offset < 0 or length < 0:
            raise ValueError(f"invalid range offset={offset} length={length}")
        with self._lock:
            try:
                return self._objects[name][offset:offset + length]
            except KeyError:
                raise self._not_found(name) from None

    def stat(self, name: str) -> ObjectInfo:
        check_name(name)
        with self._lock:
            try:
                return ObjectInfo(name, len(self._objects[name]), str(self._versions[name]))
            except KeyError:
                raise self._not_found(name) from None

    def list(self, folder: str) -> list[ObjectInfo]:
        """Every object under `folder/` (recursively; "" is the whole store), sorted
        by name, with sizes. A missing folder lists empty."""
        folder = folder.rstrip("/")
        if folder:
            check_name(folder)
        prefix = f"{folder}/" if folder else ""
        with self._lock:
            return sorted((ObjectInfo(n, len(d), str(self._versions[n])) for n, d in self._objects.items()
                           if n.startswith(prefix)), key=lambda o: o.name)

    # ---- writes ------------------------------------------------------------

    def put(self, name: str, data: bytes) -> None:
        """Create or replace `name` atomically."""
        check_name(name)
        data = bytes(data)  # a caller's later change to a bytearray must not change the object
        with self._lock:
            self._writable()
            self._store(name, data)

    def put_new(self, name: str, data: bytes) -> None:
        """`put` that never replaces: `AlreadyExists` if `name` exists (old bytes kept)."""
        check_name(name)
        data = bytes(data)
        with self._lock:
            self._writable()
            if name in self._objects:
                raise AlreadyExists(f"{name} already exists in store {self.describe()}")
            self._store(name, data)

    def put_file(self, name: str, path: Path) -> None:
        """Publish the contents of the local file `path` as `name`, put-if-absent.
        `path` is only read."""
        check_name(name)
        with self._lock:  # fail before reading a big file the store will refuse anyway
            self._writable()
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise BackendError(f"cannot upload {path}: {exc.strerror}") from exc
        self.put_new(name, data)

    def delete(self, name: str) -> None:
        """Remove `name`; a missing name is not an error."""
        check_name(name)
        with self._lock:
            self._writable()
            self._objects.pop(name, None)
            self._versions.pop(name, None)

    def close(self) -> None:
        """Nothing to release. Idempotent; the objects are kept."""

    # ---- internals ---------------------------------------------------------

    def _store(self, name: str, data: bytes) -> None:  # called with the lock held
        self._writes += 1
        self._objects[name] = data
        self._versions[name] = self._writes

    def _writable(self) -> None:
        if self.read_only:
            raise ReadOnlyStore(f"store {self.describe()} is read-only (read_only=True)")

    def _not_found(self, name: str) -> NotFound:
        return NotFound(f"no object {name} in store {self.describe()}")
