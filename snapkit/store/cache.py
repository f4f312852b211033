"""Local caches of a store: derived, outside the store, and never trusted on their own.

`$XDG_CACHE_HOME/snapkit/<store-id>/` (default `~/.cache/snapkit/…`, 0700)
holds what can be rebuilt from the store: the catalog (`catalog`), the merged
chunk index (`index/`) and the result of the last `verify` (`verify.json`).
Cache files are sealed or MACed under the store's `cache` subkey, so a
damaged, stale or hand-edited file is detected and rebuilt, never believed;
and a store on a read-only disk or bucket stays fully usable: when the cache
folder cannot be written, commands just work without it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from snapkit.store import crypto

DIR_MODE = 0o700
FILE_MODE = 0o600
_STORE_ID = re.compile(r"^[0-9a-f]{16}$")


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "snapkit"


def store_dir(store_id: str) -> Path | None:
    """The store's cache folder, made 0700; None when it cannot be made (or the id is odd)."""
    if not _STORE_ID.match(store_id):
        return None
    path = cache_root() / store_id
    try:
        missing = [p for p in (path, *path.parents) if not p.exists()]
        for p in reversed(missing):
            p.mkdir(mode=DIR_MODE, exist_ok=True)
        os.chmod(path, DIR_MODE)
    except OSError:
        return None
    return path


def read_sealed(keys: crypto.Keys, path: Path | None, what: str) -> bytes | None:
    """The plaintext of a sealed cache file; None when missing, damaged or not ours."""
    if path is None:
        return None
    try:
        blob = path.read_bytes()
        return keys.open_local(b"snapkit cache " + what.encode(), blob)
    except (OSError, crypto.AuthenticationFailed):
        return None


def write_sealed(keys: crypto.Keys, path: Path | None, what: str, data: bytes) -> bool:
    """Replace a sealed cache file atomically; False (and nothing written) when it cannot."""
    if path is None:
        return False
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{os.urandom(4).hex()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(keys.seal_local(b"snapkit cache " + what.encode(), data))
        os.replace(tmp, path)
        return True
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass
        return False
