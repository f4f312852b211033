"""A local directory as a backend (see `base` for the contract every backend keeps).

Layout: object `packs/ab/abcd…` is the file `<root>/packs/ab/abcd…`. The
top-level folder `tmp/` is the backend's own: temp files `tmp/.tmp-<hex>`
live there (so they share the store's filesystem and can be renamed or linked
into place), and no object name may start with `tmp/`.

How each write is atomic and durable:
- `put`: write a temp (O_EXCL, 0600), fsync it, `os.replace` it onto the
  name, fsync the name's folder. A reader sees the old file or the new one.
- `put_new` / `put_file`: publish with `os.link`, which is atomic and refuses
  an existing name — of N racing writers (threads or processes) exactly one
  wins, the others get `AlreadyExists`. The folder is fsynced after.
- A folder created on demand is 0700 and its parent is fsynced, so a new
  `packs/ab/` survives a crash together with the object in it.
- `delete` is not fsynced: a crash right after it may bring the object back
  (whole), which every caller tolerates (a lock or an unreferenced pack).
Every file is 0600 and every folder 0700 whatever the umask (explicit chmod).

A failed write leaves no temp file behind and the old object untouched. A
writer killed mid-put leaves a temp file; `sweep_temps` removes old ones.

Errors are always one-line: `NotFound`, `AlreadyExists`, `ReadOnlyStore`
(EROFS, or EACCES / EPERM on a write) or `BackendError` (full disk and any
other OSError); no raw OSError leaves this module.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat as stat_mod
import time
from pathlib import Path

from snapkit.backends.base import (AlreadyExists, BackendError, NotFound, ObjectInfo,
                                   ReadOnlyStore, check_name)
from snapkit.backends.fdcache import FdCache

FILE_MODE = 0o600
DIR_MODE = 0o700
TEMP_FOLDER = "tmp"
TEMP_PREFIX = ".tmp-"

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_DENIED = (errno.EACCES, errno.EPERM)
# link() failures that mean "not this way" rather than "the store is broken":
# another filesystem, too many links, or a filesystem without hard links.
_NO_LINK = (errno.EXDEV, errno.EMLINK, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalBackend:
    """A directory as a byte store. The root must exist (`create` makes it)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._fds = FdCache()

    @classmethod
    def create(cls, root: Path) -> LocalBackend:
        """Make `root` and its missing parents (0700, parents fsynced); idempotent."""
        backend = cls(root)
        try:
            backend._make_folders(backend.root, stop=None)
        except OSError as exc:
            raise backend._error(exc, "create", str(backend.root), write=True) from exc
        return backend

    def describe(self) -> str:
        return str(self.root)

    def path(self, name: str) -> Path:
        """The local file of `name`. LOCAL ONLY (tests, `snapkit migrate`): store code must
        not use it, or it would not work on a backend without a disk."""
        return self.root / self._check(name)

    # ---- reads -------------------------------------------------------------

    def get(self, name: str) -> bytes:
        """The whole object; `NotFound` when missing."""
        try:
            with open(self.root / self._check(name), "rb") as f:
                return f.read()
        except OSError as exc:
            raise self._error(exc, "read", name) from exc

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        """`length` bytes at `offset` (fewer only at the end; b"" past it).

        Reads through a cached fd. Objects replaced by this backend are evicted
        from the cache; one replaced by another process may still be read at
        its old version until evicted, which is fine for immutable objects
        (packs), the only ones read by range.
        """
        if offset < 0 or length < 0:
            raise ValueError(f"invalid range offset={offset} length={length}")
        # Restore reads every chunk through here: a cached fd skips the name check
        # and the path join (pathlib costs ~10 µs a call), done once per object.
        h = self._fds.acquire_cached(name)
        if h is None:
            self._check(name)
            try:
                h = self._fds.acquire(name, self.root / name)
            except OSError as exc:
                raise self._error(exc, "read", name) from exc
        try:
            first = os.pread(h.fd, length, offset)
            if len(first) == length or not first:
                return first
            parts, got = [first], len(first)
            while got < length:  # pread may return short reads before the end
                piece = os.pread(h.fd, length - got, offset + got)
                if not piece:
                    break
                parts.append(piece)
                got += len(piece)
            return b"".join(parts)
        except OSError as exc:
            raise self._error(exc, "read", name) from exc
        finally:
            self._fds.release(h)

    def stat(self, name: str) -> ObjectInfo:
        try:
            st = os.stat(self.root / self._check(name))
        except OSError as exc:
            raise self._error(exc, "stat", name) from exc
        if not stat_mod.S_ISREG(st.st_mode):
            raise NotFound(f"no object {name} in store {self.root} (it is a folder)")
        return ObjectInfo(name, st.st_size, _version(st))

    def list(self, folder: str) -> list[ObjectInfo]:
        """Every object under `folder/` (recursively; "" is the whole store), sorted by
        name, with sizes. A missing folder lists empty; temp files are never listed."""
        folder = folder.rstrip("/")
        if folder:
            self._check(folder)
        found: list[ObjectInfo] = []
        try:
            self._walk(self.root / folder if folder else self.root, folder, found)
        except OSError as exc:
            raise self._error(exc, "list", folder or "/") from exc
        found.sort(key=lambda o: o.name)
        return found

    def _walk(self, path: Path, prefix: str, found: list[ObjectInfo]) -> None:
        try:
            it = os.scandir(path)
        except (FileNotFoundError, NotADirectoryError):
            return
        with it:
            for e in it:
                name = f"{prefix}/{e.name}" if prefix else e.name
                if e.name.startswith(TEMP_PREFIX) or name == TEMP_FOLDER:
                    continue
                try:
                    if e.is_dir(follow_symlinks=False):
                        self._walk(Path(e.path), name, found)
                    elif e.is_file(follow_symlinks=False):
                        st = e.stat(follow_symlinks=False)
                        found.append(ObjectInfo(name, st.st_size, _version(st)))
                except FileNotFoundError:  # deleted while we listed: not an object any more
                    continue

    # ---- writes ------------------------------------------------------------

    def put(self, name: str, data: bytes) -> None:
        """Create or replace `name` atomically and durably."""
        final = self.root / self._check(name)
        tmp = self._write_temp(name, data)
        try:
            self._in_folder(final, lambda: os.replace(tmp, final))
        except BaseException as exc:
            _unlink_quietly(tmp)
            if isinstance(exc, OSError):
                raise self._error(exc, "write", name, write=True) from exc
            raise
        self._fds.evict(name)
        try:
            fsync_dir(final.parent)
        except OSError as exc:
            raise self._error(exc, "write", name, write=True) from exc

    def put_new(self, name: str, data: bytes) -> None:
        """`put` that never replaces: `AlreadyExists` if `name` exists (old bytes kept)."""
        final = self.root / self._check(name)
        tmp = self._write_temp(name, data)
        try:
            self._publish(tmp, final, name)
        finally:
            _unlink_quietly(tmp)

    def put_file(self, name: str, path: Path) -> None:
        """Publish the closed local file `path` as `name`, put-if-absent.

        On the store's filesystem `path` is hard-linked into place (no copy):
        it becomes the stored object, so it is chmodded 0600 and the caller
        must not modify it afterwards (deleting it is fine). Elsewhere it is
        copied. `path` itself is never deleted.
        """
        final = self.root / self._check(name)
        path = Path(path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise BackendError(f"cannot upload {path}: {exc.strerror}") from exc
        try:
            try:
                os.fsync(fd)
                st = os.fstat(fd)
            except OSError as exc:
                raise BackendError(f"cannot upload {path}: {exc.strerror}") from exc
            if not stat_mod.S_ISREG(st.st_mode):
                raise BackendError(f"cannot upload {path}: not a regular file")
            linkable = True
            if stat_mod.S_IMODE(st.st_mode) != FILE_MODE:
                try:
                    os.fchmod(fd, FILE_MODE)
                except OSError:  # not ours to chmod (or read-only): copy it instead
                    linkable = False
            if linkable and self._publish(path, final, name, fallback=True):
                return
            tmp = self._write_temp(name, fd)
            try:
                self._publish(tmp, final, name)
            finally:
                _unlink_quietly(tmp)
        finally:
            os.close(fd)

    def delete(self, name: str) -> None:
        """Remove `name`; a missing name is not an error. Folders are kept."""
        self._fds.evict(self._check(name))
        try:
            os.unlink(self.root / name)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            pass
        except OSError as exc:
            raise self._error(exc, "delete", name, write=True) from exc

    def close(self) -> None:
        """Close the cached read fds. Idempotent; the backend stays usable."""
        self._fds.clear()

    def sweep_temps(self, max_age_s: float = 3600) -> list[str]:
        """Remove temp files older than `max_age_s` (by mtime) left by killed writers.

        Returns the removed names (`tmp/.tmp-…`). A live put never lasts an
        hour, so the default cannot remove a temp still being written. Not part
        of the backend protocol (an object store has no temp files).
        """
        folder = self.root / TEMP_FOLDER
        cutoff = time.time() - max_age_s
        removed = []
        try:
            with os.scandir(folder) as it:
                entries = [e for e in it if e.name.startswith(TEMP_PREFIX)]
            for e in entries:
                try:
                    st = e.stat(follow_symlinks=False)
                    if stat_mod.S_ISREG(st.st_mode) and st.st_mtime < cutoff:
                        os.unlink(e.path)
                        removed.append(f"{TEMP_FOLDER}/{e.name}")
                except FileNotFoundError:  # another sweeper got it first
                    continue
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise self._error(exc, "sweep", TEMP_FOLDER, write=True) from exc
        return sorted(removed)

    # ---- internals ---------------------------------------------------------

    def _check(self, name: str) -> str:
        check_name(name)
        if name == TEMP_FOLDER or name.startswith(TEMP_FOLDER + "/"):
            raise ValueError(f"invalid object name {name!r} (tmp/ is reserved for temp files)")
        return name

    def _write_temp(self, name: str, source: bytes | int) -> Path:
        """A durable private temp file in tmp/ holding `source` (bytes, or an fd to copy)."""
        while True:
            tmp = self.root / TEMP_FOLDER / f"{TEMP_PREFIX}{os.urandom(8).hex()}"
            try:
                fd = self._in_folder(tmp, lambda: os.open(
                    tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE))
                break
            except FileExistsError:  # 64 random bits collided: draw again
                continue
            except OSError as exc:
                raise self._error(exc, "write", name, write=True) from exc
        try:
            try:
                os.fchmod(fd, FILE_MODE)  # O_CREAT's mode is masked by the umask
                if isinstance(source, int):
                    _copy_fd(source, fd)
                else:
                    view = memoryview(source)
                    while view:
                        view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException as exc:
            _unlink_quietly(tmp)
            if isinstance(exc, OSError):
                raise self._error(exc, "write", name, write=True) from exc
            raise
        return tmp

    def _publish(self, src: Path, final: Path, name: str, fallback: bool = False) -> bool:
        """Hard-link `src` to `final` (atomic put-if-absent), then fsync the folder.

        With `fallback`, returns False when `src` cannot be linked there (another
        filesystem, no hard links) so the caller can copy it instead.
        """
        try:
            self._in_folder(final, lambda: os.link(src, final))
        except FileExistsError as exc:
            raise AlreadyExists(f"{name} already exists in store {self.root}") from exc
        except OSError as exc:
            if fallback and exc.errno in _NO_LINK:
                return False
            if exc.errno == errno.EPERM:  # src is our own temp: link() itself is refused
                raise BackendError(f"cannot write {name} in store {self.root}: its filesystem "
                                   "does not support hard links") from exc
            raise self._error(exc, "write", name, write=True) from exc
        self._fds.evict(name)
        try:
            fsync_dir(final.parent)
        except OSError as exc:
            raise self._error(exc, "write", name, write=True) from exc
        return True

    def _in_folder(self, path: Path, op):
        """Run `op`; if `path`'s folder is missing, create it (under the root) and retry once."""
        try:
            return op()
        except FileNotFoundError:
            self._make_folders(path.parent, stop=self.root)
            return op()

    def _make_folders(self, folder: Path, stop: Path | None) -> None:
        """Create `folder` and its missing parents, 0700, fsyncing each new one's parent.

        With `stop`, never create `stop` itself: a store whose root vanished (an
        unmounted disk) must fail, not be silently re-created on another disk.
        """
        missing = []
        p = folder
        while not p.is_dir():
            if p == stop:
                raise BackendError(f"store {stop} does not exist",
                                   hint="check that its disk is mounted, or run `snapkit init`")
            missing.append(p)
            if p.parent == p:
                break
            p = p.parent
        for p in reversed(missing):
            try:
                os.mkdir(p, DIR_MODE)
            except FileExistsError:  # a racing writer made it (fsync below anyway)...
                if not p.is_dir():  # ...unless it is a file: never chmod that
                    raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(p))
            os.chmod(p, DIR_MODE)  # mkdir's mode is masked by the umask
            fsync_dir(p.parent)

    def _error(self, exc: OSError, op: str, name: str, write: bool = False) -> Exception:
        """Map an OSError to NotFound / ReadOnlyStore / BackendError (one line each)."""
        code = exc.errno
        if not write and code in (errno.ENOENT, errno.EISDIR, errno.ENOTDIR):
            return NotFound(f"no object {name} in store {self.root}")
        if code == errno.EROFS or (write and code in _DENIED):
            return ReadOnlyStore(f"store {self.root} is read-only ({exc.strerror})")
        if code in _DISK_FULL:
            return BackendError(f"no space left on the store's disk ({self.root}) "
                                f"while writing {name}: {exc.strerror}",
                                hint="free some space (`snapkit prune`) or move the store "
                                     "to a bigger disk, then run the command again")
        return BackendError(f"cannot {op} {name} in store {self.root}: {exc.strerror or exc}")


def _version(st: os.stat_result) -> str:
    # ctime changes on every write, rename or chmod and cannot be set back by a
    # normal user (unlike mtime); with the inode it names this very file version.
    return f"{st.st_ino}:{st.st_ctime_ns}"


def _copy_fd(src: int, dst: int) -> None:
    # closefd=False: both fds stay the caller's to close
    with open(src, "rb", closefd=False) as r, open(dst, "wb", closefd=False) as w:
        shutil.copyfileobj(r, w, 1 << 20)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
