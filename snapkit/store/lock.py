"""Store locks as leases: shared for create/restore, exclusive for prune.

A lock is the object `locks/<owner>.json`, `owner` being 16 random bytes (hex),
fresh for every acquisition. Its JSON body names the holder: `owner`, `host`,
`boot_id`, `pidns` (the target of /proc/self/ns/pid), `pid`, `start` (field 22
of /proc/<pid>/stat, or null), `exclusive`, `created`, `refreshed` (unix
times), `ttl` (seconds) and `command` (a label such as "create").

Taking a lock writes our object first, then lists the others, so two
processes can never both believe they hold conflicting locks; on a conflict
we delete ours and retry with backoff until the timeout.

While a lock is held a daemon thread rewrites it every ttl/5 with a new
`refreshed` time: the lock is a lease. A lock is stale when
  (a) it comes from this very machine and PID namespace (host, boot_id and
      pidns all equal and non-empty) and its pid is dead or now belongs to
      another process (the start time differs): known at once (a lock without
      a start time, where pid reuse cannot be told, also expires as in (b)); or
  (b) otherwise, when `now - refreshed > ttl`: its owner stopped refreshing
      (dead on another host or in another PID namespace, where its pid means
      nothing to us). This compares wall clocks of different machines, so
      hosts sharing a store need roughly synchronized clocks (NTP); skew
      must stay well below the ttl.
An unparseable lock object is stale: locks are written with the backend's
atomic `put`, so it cannot be a lock being written, only a damaged or foreign
object. Stale locks met while acquiring are deleted; live ones are only ever
removed by `break_locks(force=True)` (`snapkit unlock --force`).

A holder whose lease was broken (the object deleted or replaced, or no
successful refresh for a whole ttl) finds out through `StoreLock.check()`,
which raises `LockLost`; commands call it before publishing their results.

On a read-only store (ReadOnlyStore when writing the lock) a shared lock
proceeds without an object, so reading keeps working; an exclusive one fails.
"""

from __future__ import annotations

import json
import math
import os
import random
import socket
import threading
import time
from dataclasses import dataclass, replace

from snapkit.backends.base import BackendError, ReadOnlyStore
from snapkit.errors import LockedError, SnapkitError

FOLDER = "locks"
LEASE_TTL = 300.0

_LOCKED_HINT = ("wait for the other snapkit process; a lock whose holder died on another host (or in a "
                "container) expires when its lease runs out; `snapkit unlock --force` removes it at once, "
                "but only when you are sure its holder is dead")


class LockLost(SnapkitError):
    """Our lease on the store was broken while we held it."""

    hint = ("someone ran `snapkit unlock --force` while this command ran, or the store was unreachable "
            "for longer than the lock's lease; nothing was published — run the command again")


# ---------------------------------------------------------------------------- processes


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def machine_identity() -> tuple[str, str, str]:
    """(host name, boot id, PID namespace) of this process; "" for what cannot be known.

    Two processes can judge each other's pids only when all three are equal.
    """
    try:
        pidns = os.readlink("/proc/self/ns/pid")
        # A /proc mounted from another PID namespace numbers processes differently from
        # os.kill: our liveness checks would look at the wrong processes there.
        if os.readlink("/proc/self") != str(os.getpid()):
            pidns = ""
    except OSError:
        pidns = ""
    return socket.gethostname(), _read("/proc/sys/kernel/random/boot_id"), pidns


def _start_time(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (/proc/<pid>/stat field 22), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # The command name (field 2) may contain spaces and ")": split after the last ")".
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int, start: int | None) -> bool:
    """Whether `pid` is a running process of this PID namespace and, if `start` is given, the same one."""
    if pid <= 0:
        return False  # 0 and negatives address process groups, never one process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists but is another user's: a reused pid, perhaps, so still compare start times
    if start is None:
        return True
    now = _start_time(pid)
    return now is None or now == start  # unreadable /proc (hidepid): assume it is the holder


def _clock() -> float:
    """Seconds on a clock that, unlike time.monotonic() on Linux, keeps counting while the
    machine is suspended: a laptop waking up must know its lease may have run out meanwhile."""
    return time.clock_gettime(time.CLOCK_BOOTTIME) if hasattr(time, "CLOCK_BOOTTIME") else time.monotonic()


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists in this PID namespace."""
    return _alive(pid, None)


# ---------------------------------------------------------------------------- lock objects


@dataclass(frozen=True)
class LockInfo:
    """One lock object as read from the store, judged live or stale."""

    name: str
    owner: str
    host: str
    boot_id: str
    pidns: str
    pid: int
    start: int | None
    exclusive: bool
    created: float
    refreshed: float
    ttl: float
    command: str
    stale: bool
    reason: str

    def describe(self) -> str:
        """One line for messages, e.g. `exclusive lock held by pid 123 on host-a (create) for 12s`."""
        if not self.owner:
            return f"{self.name}: {self.reason}"
        kind = "exclusive" if self.exclusive else "shared"
        host, boot_id, pidns = machine_identity()
        where = self.host
        if self.host == host and self.boot_id == boot_id and self.pidns != pidns:
            where += " in another PID namespace"
        text = f"{kind} lock held by pid {self.pid} on {where}"
        text += f" ({self.command})" if self.command else ""
        text += f" for {max(0, int(time.time() - self.created))}s"
        if self.stale:
            return f"{text}; stale: {self.reason}"
        if not _is_here(self, (host, boot_id, pidns)):
            left = int(self.refreshed + self.ttl - time.time())
            text += f"; its lease expires in {left}s if that process is dead"
        return text


def _is_here(d, me: tuple[str, str, str]) -> bool:
    return all(me) and (d.host, d.boot_id, d.pidns) == me


def _parse(name: str, data: bytes, now: float, me: tuple[str, str, str]) -> LockInfo:
    try:
        d = json.loads(data)
        created = float(d["created"])
        info = LockInfo(
            name, owner=str(d.get("owner") or name), host=str(d["host"]),
            boot_id=str(d.get("boot_id", "")), pidns=str(d.get("pidns", "")), pid=int(d["pid"]),
            start=None if d.get("start") is None else int(d["start"]),
            exclusive=bool(d["exclusive"]), created=created,
            # Locks written before leases have no ttl: they expire LEASE_TTL after creation.
            refreshed=float(d.get("refreshed", created)), ttl=float(d.get("ttl", LEASE_TTL)),
            command=str(d.get("command", "")), stale=False, reason="")
        if not all(map(math.isfinite, (info.created, info.refreshed, info.ttl))):
            raise ValueError("NaN or infinite time")  # would never expire
    except (ValueError, KeyError, TypeError, AttributeError):
        return LockInfo(name, "", "", "", "", 0, None, False, 0.0, 0.0, 0.0, "", True,
                        "unreadable lock object (damaged, or not written by snapkit)")
    if _is_here(info, me):
        if not _alive(info.pid, info.start):
            return replace(info, stale=True, reason=f"process {info.pid} on this machine is gone")
        if info.start is not None:
            return replace(info, reason=f"process {info.pid} is running on this machine")
        # Without a start time a reused pid looks alive: let the lease decide too.
    age = now - info.refreshed
    if age > info.ttl:
        return replace(info, stale=True,
                       reason=f"lease expired: not refreshed for {int(age)}s (ttl {info.ttl:g}s)")
    return replace(info, reason=f"lease expires in {int(info.ttl - age)}s")


def read_locks(backend) -> list[LockInfo]:
    """Every lock on the store, each judged: `stale` and a human `reason`."""
    me, now, out = machine_identity(), time.time(), []
    for name in (info.name for info in backend.list(FOLDER)):
        try:
            data = backend.get(name)
        except FileNotFoundError:  # backends' NotFound is one; released since the listing
            continue
        out.append(_parse(name, data, now, me))
    return out


def break_locks(backend, force: bool = False) -> list[LockInfo]:
    """Remove the stale locks (with `force`, every lock); returns what was removed."""
    removed = [info for info in read_locks(backend) if force or info.stale]
    for info in removed:
        backend.delete(info.name)
    return removed


# ---------------------------------------------------------------------------- holding a lock


class StoreLock:
    """A shared or exclusive lease on the store; a context manager.

    `acquire()` waits up to `timeout` seconds for conflicting live locks to go
    (LockedError naming the holder after that), breaking stale ones it meets.
    A shared lock on a read-only store (ReadOnlyStore on writing the lock)
    proceeds without an object: `read_only` is True and `name` None — readers
    keep working there; it still waits for a live exclusive lock. An exclusive
    lock on a read-only store raises ReadOnlyStore. `release()` is idempotent.
    """

    def __init__(self, backend, exclusive: bool, timeout: float = 30.0, ttl: float = LEASE_TTL,
                 command: str = ""):
        self.backend = backend
        self.exclusive = exclusive
        self.timeout = timeout
        self.ttl = ttl
        self.command = command
        self.name: str | None = None
        self.owner: str | None = None
        self.read_only = False
        self._body: dict = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_ok = 0.0  # _clock() when the last successful write of our lock began
        self._lost: str | None = None

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        host, boot_id, pidns = machine_identity()
        self.owner = os.urandom(16).hex()
        self.name = f"{FOLDER}/{self.owner}.json"
        self.read_only, self._lost = False, None
        pid = os.getpid()
        deadline = time.monotonic() + self.timeout
        delay = 0.05
        while True:
            now = time.time()
            self._body = {"owner": self.owner, "host": host, "boot_id": boot_id, "pidns": pidns, "pid": pid,
                          "start": _start_time(pid), "exclusive": self.exclusive, "created": now,
                          "refreshed": now, "ttl": self.ttl, "command": self.command}
            try:
                if not self.read_only:
                    try:
                        self._last_ok = _clock()
                        self.backend.put(self.name, json.dumps(self._body).encode())
                    except ReadOnlyStore:
                        if self.exclusive:
                            raise
                        self.read_only, self.name = True, None
                blocker = self._conflict()
            except BaseException:
                self.release()  # a put that failed late may have landed: delete it
                raise
            if blocker is None:
                if not self.read_only:
                    self._stop = threading.Event()
                    self._thread = threading.Thread(target=self._refresh_loop, name="snapkit-lock-refresh",
                                                    daemon=True)
                    self._thread.start()
                return
            self._delete_own()
            left = deadline - time.monotonic()
            if left <= 0:
                self.name = None
                raise LockedError(f"store is locked: {blocker.describe()}", hint=_LOCKED_HINT)
            # Jitter: two exclusive lockers backing off in step would collide forever.
            time.sleep(min(left, delay * random.uniform(0.5, 1.0)))
            delay = min(delay * 2, 0.5)

    def _conflict(self) -> LockInfo | None:
        for info in read_locks(self.backend):
            if info.name == self.name:
                continue
            if info.stale:
                if not self.read_only:
                    self.backend.delete(info.name)
                continue
            if self.exclusive or info.exclusive:
                return info
        return None

    def _delete_own(self) -> None:
        if self.name:
            try:
                self.backend.delete(self.name)
            except (BackendError, OSError):
                pass  # left behind, it is seen dead (this machine) or expires (elsewhere)

    def release(self) -> None:
        """Stop refreshing and delete our lock. Idempotent."""
        self._stop.set()
        if self._thread is not None:
            # A refresh stuck in the backend must not hang the command's exit; the loop
            # deletes what it writes after the stop (see _refresh_once).
            self._thread.join(timeout=max(1.0, self.ttl / 5))
            self._thread = None
        self._delete_own()
        self.name = None

    def check(self) -> None:
        """Raise LockLost when our lease was broken; call it before publishing results."""
        if self.read_only or self.name is None:
            return
        if self._lost is None and _clock() - self._last_ok > self.ttl:
            self._lost = f"it could not be refreshed for {self.ttl:g}s"
        if self._lost is None:
            self._lost = self._verify(self.name)  # catches `unlock --force` at once, not a refresh later
        if self._lost is not None:
            raise LockLost(f"the store lock was broken while this command ran ({self._lost})")

    def _verify(self, name: str) -> str | None:
        """Why our lock object is no longer ours, or None (also when the store cannot be read now)."""
        try:
            data = json.loads(self.backend.get(name))
        except FileNotFoundError:
            return "its lock object was removed"
        except (BackendError, OSError):
            return None  # unreachable: the ttl rule decides
        except ValueError:
            return "its lock object was overwritten"
        if not isinstance(data, dict) or data.get("owner") != self.owner:
            return "its lock object was overwritten"
        return None

    def _refresh_loop(self) -> None:
        try:
            while not self._stop.wait(self.ttl / 5):
                if not self._refresh_once():
                    return
        except Exception as e:  # a bug must surface through check(), not die silently in a thread
            self._lost = f"refreshing it failed: {e!r}"

    def _refresh_once(self) -> bool:
        """One refresh; False once the lease is lost (then it is never written again)."""
        attempt = _clock()
        if attempt - self._last_ok > self.ttl:
            # Others may have broken it by now: rewriting it would resurrect a broken lock.
            self._lost = f"it could not be refreshed for {self.ttl:g}s"
            return False
        name = self.name
        if name is None:
            return False
        why = self._verify(name)
        if why is not None:
            self._lost = why
            return False
        body = {**self._body, "refreshed": time.time()}
        try:
            self.backend.put(name, json.dumps(body).encode())
        except (BackendError, OSError):
            return True  # retried at the next tick; lost only after a whole ttl of failures
        self._last_ok = attempt
        if self._stop.is_set():
            # release() may have given up waiting for us and deleted it already.
            try:
                self.backend.delete(name)
            except (BackendError, OSError):
                pass
            return False
        return True
