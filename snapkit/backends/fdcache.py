"""A thread-safe LRU of open read-only file descriptors, for ranged reads of a local store.

Restore reads every chunk by range; opening the pack for each read would cost
an open, a path join and a close per chunk. Handles are reference counted so
a descriptor evicted while another thread is reading is closed only after
that read (closing it earlier could make the reader read EBADF, or a file that
reused the descriptor number).
"""

from __future__ import annotations

import errno
import os
import stat as stat_mod
import threading
from collections import OrderedDict
from pathlib import Path

MAX_OPEN_FDS = 64


class _Handle:
    """A cached read fd; closed only when evicted *and* no reader holds it.

    Closing an fd another thread is about to pread would make it read EBADF —
    or, worse, a file that reused the fd number.
    """

    __slots__ = ("fd", "refs", "evicted")

    def __init__(self, fd: int, evicted: bool = False):
        self.fd, self.refs, self.evicted = fd, 0, evicted


class FdCache:
    """A thread-safe LRU of open read-only fds, keyed by object name."""

    def __init__(self, size: int = MAX_OPEN_FDS):
        self.size = size
        self.lock = threading.Lock()
        self.handles: OrderedDict[str, _Handle] = OrderedDict()
        self.evictions = 0  # bumped by every evict: detects one racing our open()

    def acquire_cached(self, name: str) -> _Handle | None:
        """The cached handle of `name` (its ref taken), or None."""
        with self.lock:
            h = self.handles.get(name)
            if h is not None:
                self.handles.move_to_end(name)
                h.refs += 1
            return h

    def acquire(self, name: str, path: Path) -> _Handle:
        with self.lock:
            seen = self.evictions
        h = self.acquire_cached(name)
        if h is not None:
            return h
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # outside the lock: may be slow
        if not stat_mod.S_ISREG(os.fstat(fd).st_mode):  # a folder opens fine; it is no object
            os.close(fd)
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        with self.lock:
            h = self.handles.get(name)
            if h is not None:  # another thread opened it meanwhile: use theirs
                os.close(fd)
            elif self.evictions != seen:
                # A put/delete ran while we opened: our fd may be the old file. Use it
                # for this read only (old-or-new is fine) but do not cache it.
                h = _Handle(fd, evicted=True)
            else:
                h = self.handles[name] = _Handle(fd)
                while len(self.handles) > self.size:
                    self._retire(self.handles.popitem(last=False)[1])
            h.refs += 1
            return h

    def release(self, h: _Handle) -> None:
        with self.lock:
            h.refs -= 1
            if h.evicted and h.refs == 0:
                os.close(h.fd)

    def evict(self, name: str) -> None:
        with self.lock:
            self.evictions += 1
            h = self.handles.pop(name, None)
            if h is not None:
                self._retire(h)

    def clear(self) -> None:
        with self.lock:
            while self.handles:
                self._retire(self.handles.popitem()[1])

    @staticmethod
    def _retire(h: _Handle) -> None:  # called with the lock held
        h.evicted = True
        if h.refs == 0:
            os.close(h.fd)
