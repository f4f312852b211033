"""Private scratch folders for this process: temp packs, database copies, restore tests.

Nothing in flight is ever written into the store (a shared disk or a bucket
must never see a plaintext database copy or half a pack). Each process gets
`<base>/<pid>-<random>/` (0700), holding an `owner` file that it keeps
`flock`ed while it lives. The folder is removed at exit; one whose owner lock
can be taken belongs to a process that died (killed, power cut) and is
removed by the next snapkit process that makes a scratch folder under the
same base. `flock` dies with its process and works across PID namespaces on
one kernel, so a container's live folder is never taken for stale.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import shutil
import time
from pathlib import Path

DIR_MODE = 0o700
OWNER = "owner"
# Folders are built under this prefix and renamed once their owner is locked.
_BUILDING = ".new-"
# ... and renamed to this prefix before they are removed.
_DOOMED = ".old-"
# A finished folder always has an owner file; one without (removed by hand?) is
# left alone this long, in case something else is writing there.
_UNOWNED_GRACE_S = 60.0
_mine: dict[Path, int] = {}  # our folders -> the fd holding their owner lock


def default_base() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "snapkit" / "tmp"


def private_dir(base: Path | None = None) -> Path:
    """This process's scratch folder under `base` (made once per base, removed at exit).

    Made as `.new-…` with its owner file locked inside, then renamed to its
    final name, so a folder under its final name always has an owner lock;
    a sweeper that removes a `.new-…` folder under construction (its owner
    not locked yet) makes this retry.
    """
    base = Path(base or default_base())
    for path in _mine:
        if path.parent == base and path.is_dir():
            return path
    _mkdirs(base)
    sweep(base)
    for _ in range(5):
        name = f"{os.getpid()}-{os.urandom(4).hex()}"
        building, path = base / f"{_BUILDING}{name}", base / name
        building.mkdir(mode=DIR_MODE)
        os.chmod(building, DIR_MODE)
        try:
            fd = os.open(building / OWNER, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileNotFoundError:
            continue  # swept while being built
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            os.rename(building, path)
        except FileNotFoundError:
            os.close(fd)
            continue
        if not _mine:
            atexit.register(cleanup)
        _mine[path] = fd
        return path
    raise OSError(f"could not make a scratch folder under {base}")


def sweep(base: Path) -> list[Path]:
    """Remove scratch folders under `base` whose owner process is gone. Returns them."""
    removed = []
    try:
        children = list(os.scandir(base))
    except FileNotFoundError:
        return removed
    for child in children:
        path = Path(child.path)
        if not child.is_dir(follow_symlinks=False) or path in _mine:
            continue
        try:
            fd = os.open(path / OWNER, os.O_RDONLY)
        except FileNotFoundError:
            if child.name.startswith((_BUILDING, _DOOMED)) or _older(child, _UNOWNED_GRACE_S):
                shutil.rmtree(path, ignore_errors=True)  # its builder retries if alive
                removed.append(path)
            continue
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its owner is alive
        finally:
            os.close(fd)
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _older(entry: os.DirEntry, seconds: float) -> bool:
    try:
        return time.time() - entry.stat(follow_symlinks=False).st_mtime > seconds
    except FileNotFoundError:
        return False


def cleanup() -> None:
    """Remove this process's scratch folders (runs at exit).

    Renamed to `.old-…` first: killed half way through the removal, what is
    left has no owner file but a name that says it may go at once.
    """
    for path, fd in list(_mine.items()):
        doomed = path.with_name(_DOOMED + path.name)
        try:
            os.rename(path, doomed)
        except OSError:
            doomed = path
        shutil.rmtree(doomed, ignore_errors=True)
        os.close(fd)
        del _mine[path]


def _mkdirs(path: Path) -> None:
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for p in reversed(missing):
        p.mkdir(mode=DIR_MODE, exist_ok=True)
    os.chmod(path, DIR_MODE)
