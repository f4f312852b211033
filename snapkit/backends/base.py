"""The backend protocol: the only way snapkit reads or writes a store.

A backend is a small flat byte store of named objects. Names are relative
POSIX paths (`packs/ab/abcd…`, `index/…`, `locks/…`); a name never starts with
`/`, never contains `..` or an empty part, and never starts with `.tmp-`
(reserved for a backend's own temp files). Nothing in this protocol needs a
local disk: an object-store backend (S3) implements it with GET (ranged),
PUT, PUT with If-None-Match, LIST and DELETE.

Every backend passes one contract suite (`tests/backends/contract.py`).

Guarantees every backend gives:
- `put` is atomic and durable: a reader sees the old object, the new one, or
  (for a new name) nothing — never a part. When it returns, the object
  survives a crash or power cut.
- `put_new` is `put` that never replaces: it raises `AlreadyExists` when the
  name exists, and of two racing `put_new`s of one name exactly one wins.
- `put_file` uploads a closed local file under a new name (`put_new`
  semantics): how packs, written piece by piece into a private scratch
  folder, reach the store.
- `get` / `get_range` / `stat` raise `NotFound` for a missing name.
- `delete` is idempotent (deleting a missing name is not an error).
- `list(folder)` returns every object under `folder/` (recursively), with
  sizes, sorted by name; a backend's own temp files are never listed.
- A write refused because the store is read-only (a read-only mount, a
  bucket with read-only credentials) raises `ReadOnlyStore`; any other I/O
  failure raises `BackendError` (a full disk says so). Both are one-line
  SnapkitErrors, never tracebacks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from snapkit.errors import SnapkitError


class NotFound(FileNotFoundError):
    """The named object does not exist."""


class AlreadyExists(FileExistsError):
    """`put_new` / `put_file`: the name is taken (another writer won)."""


class BackendError(SnapkitError):
    """An I/O failure of the store (full disk, network, permissions)."""

    hint = "check the store's disk or connection, then run the command again"


class ReadOnlyStore(BackendError):
    """The store refused a write: read-only disk, mount or credentials."""

    hint = "read commands work on a read-only store; writing needs write access"


@dataclass(frozen=True)
class ObjectInfo:
    """An object as a listing sees it.

    `version` changes whenever the object's bytes may have changed (a local
    file's inode and ctime, which nobody can set back without root; an object
    store's ETag), so a cache keyed by (name, size, version) notices a
    replaced object of the same size. "" means the backend cannot tell: a
    cache must then read the object again.
    """

    name: str
    size: int
    version: str = field(default="", compare=False)


def check_name(name: str) -> str:
    """Reject names that could escape the store or collide with temp files; returns name."""
    parts = name.split("/")
    if (not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts)
            or parts[-1].startswith(".tmp-") or "\\" in name or "\0" in name):
        raise ValueError(f"invalid object name {name!r}")
    return name


class Backend(Protocol):
    """What a store needs from the storage under it; see the module docstring."""

    def describe(self) -> str:
        """Where this store lives, for messages (a path or URL; never a secret)."""

    def get(self, name: str) -> bytes: ...

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        """`length` bytes at `offset`; fewer only at the end of the object."""

    def stat(self, name: str) -> ObjectInfo: ...

    def put(self, name: str, data: bytes) -> None: ...

    def put_new(self, name: str, data: bytes) -> None: ...

    def put_file(self, name: str, path: Path) -> None:
        """Upload the closed local file `path` as `name`, put-if-absent."""

    def list(self, folder: str) -> list[ObjectInfo]: ...

    def delete(self, name: str) -> None: ...

    def close(self) -> None:
        """Release cached handles and connections. Idempotent."""
