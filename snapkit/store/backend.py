"""A local directory as a small byte store. Names are relative POSIX paths.

Contract (a future S3 backend passes the same tests): `put` is atomic and
durable (temp file, fsync, rename, fsync of the directory) — a reader sees the
old object, the new one, or nothing, never a part; `put_new` is the same but
fails with FileExistsError when the name exists; `get` raises FileNotFoundError;
`delete` is idempotent. Everything is created private (0600 / 0700) whatever
the umask.
"""

from __future__ import annotations

import os
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalBackend:
    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, name: str) -> Path:
        return self.root / name

    def mkdir(self, name: str = "") -> Path:
        """Create `name` and any missing parents up to and including the root, all 0700."""
        path = self.root / name if name else self.root
        if not path.is_dir():
            missing = [p for p in (path, *path.parents) if not p.exists()]
            for p in reversed(missing):
                p.mkdir(mode=DIR_MODE, exist_ok=True)
                os.chmod(p, DIR_MODE)
        return path

    def open_temp(self, name: str):
        """A new private temp file beside `name`: (its path, a binary file open for writing).

        For objects written piece by piece; `publish` makes them durable and visible.
        """
        final = self.root / name
        self.mkdir(str(Path(name).parent) if "/" in name else "")
        tmp = final.parent / f".tmp-{os.getpid()}-{os.urandom(4).hex()}-{final.name}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        return tmp, os.fdopen(fd, "wb")

    def publish(self, temps: list[tuple[Path, str]]) -> None:
        """fsync closed temp files, rename each to its name, then fsync their folders.

        Deferring the fsyncs to here lets the kernel write the files back while
        the caller produces more; all of them are durable when this returns.
        """
        for tmp, _name in temps:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        for tmp, name in temps:
            os.replace(tmp, self.root / name)
        for folder in sorted({(self.root / name).parent for _tmp, name in temps}):
            fsync_dir(folder)

    def _write_temp(self, name: str, data: bytes) -> Path:
        tmp, f = self.open_temp(name)
        try:
            with f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def put(self, name: str, data: bytes) -> None:
        tmp = self._write_temp(name, data)
        final = self.root / name
        os.replace(tmp, final)
        fsync_dir(final.parent)

    def put_new(self, name: str, data: bytes) -> None:
        """Like put, but never replaces: FileExistsError if `name` exists."""
        tmp = self._write_temp(name, data)
        final = self.root / name
        try:
            os.link(tmp, final)  # link() is atomic and refuses to overwrite
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(final.parent)

    def get(self, name: str) -> bytes:
        return (self.root / name).read_bytes()

    def exists(self, name: str) -> bool:
        return (self.root / name).exists()

    def list(self, folder: str) -> list[str]:
        """Names (relative to root) of the files directly in `folder`, temp files excluded."""
        try:
            with os.scandir(self.root / folder) as it:
                return sorted(
                    f"{folder}/{e.name}" for e in it if e.is_file() and not e.name.startswith(".tmp-")
                )
        except FileNotFoundError:
            return []

    def delete(self, name: str) -> None:
        (self.root / name).unlink(missing_ok=True)
