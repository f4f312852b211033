"""Store locks: shared for create/restore, exclusive for prune and unlock.

A lock is a file `locks/<host>-<pid>-<rand>.json` naming its owner. Taking a
lock writes our file first, then looks at the others, so two processes can
never both believe they hold conflicting locks. A lock whose owner is a dead
process on this host (pid gone, or reused: the process start time differs) is
stale and removed automatically; one from another host is reported with its
owner (`snapkit unlock` removes it).
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass

from snapkit.errors import LockedError
from snapkit.store.backend import LocalBackend

FOLDER = "locks"


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    return _alive(pid, None)


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    now = _start_time(pid)
    return start is None or now is None or now == start


@dataclass(frozen=True)
class LockInfo:
    name: str
    host: str
    pid: int
    exclusive: bool
    created: float
    start: str | None

    def describe(self) -> str:
        kind = "exclusive" if self.exclusive else "shared"
        age = int(time.time() - self.created)
        return f"{kind} lock held by pid {self.pid} on {self.host} for {age}s"


class StoreLock:
    def __init__(self, backend: LocalBackend, exclusive: bool, timeout: float = 30.0):
        self.backend = backend
        self.exclusive = exclusive
        self.timeout = timeout
        self.name: str | None = None

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        host = socket.gethostname()
        pid = os.getpid()
        body = {"host": host, "pid": pid, "exclusive": self.exclusive,
                "created": time.time(), "start": _start_time(pid)}
        deadline = time.monotonic() + self.timeout
        delay = 0.05
        while True:
            self.name = f"{FOLDER}/{host}-{pid}-{os.urandom(4).hex()}.json"
            self.backend.put(self.name, json.dumps(body).encode())
            blocker = self._conflict()
            if blocker is None:
                return
            self.release()
            if time.monotonic() >= deadline:
                raise LockedError(f"store is locked: {blocker.describe()}")
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def release(self) -> None:
        if self.name:
            self.backend.delete(self.name)
            self.name = None

    def _conflict(self) -> LockInfo | None:
        for info in read_locks(self.backend, break_stale=True):
            if info.name == self.name:
                continue
            if self.exclusive or info.exclusive:
                return info
        return None


def read_locks(backend: LocalBackend, break_stale: bool = False) -> list[LockInfo]:
    """The live locks; with break_stale, remove those of dead local processes."""
    host = socket.gethostname()
    out = []
    for name in backend.list(FOLDER):
        try:
            d = json.loads(backend.get(name))
            info = LockInfo(name, d["host"], int(d["pid"]), bool(d["exclusive"]),
                            float(d["created"]), d.get("start"))
        except FileNotFoundError:
            continue
        except (ValueError, KeyError, TypeError):
            # A torn or foreign file is not a lock anyone can own; drop it.
            if break_stale:
                backend.delete(name)
            continue
        if info.host == host and not _alive(info.pid, info.start):
            if break_stale:
                backend.delete(name)
            continue
        out.append(info)
    return out


def break_locks(backend: LocalBackend) -> list[LockInfo]:
    """`snapkit unlock`: remove every lock, returning what was removed."""
    removed = read_locks(backend, break_stale=True)
    for info in removed:
        backend.delete(info.name)
    return removed
