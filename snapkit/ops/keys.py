"""`snapkit key list|add|remove|rotate`: manage the store's key slots.

One use case per function; each returns a frozen result and prints nothing.
Every change first opens the store with the project's key source
(`project.key_source()`): only someone who can already read the store may
change who else can. Listing needs no key (slots hold nothing secret in clear).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from snapkit.backends.local import fsync_dir
from snapkit.errors import AmbiguousRef, KeyAccessError, RefNotFound, SnapkitError, UsageError
from snapkit.model import Result
from snapkit.store import keys as slots
from snapkit.store.keys import KeySource, SlotInfo

ROTATE_DOES_NOT = (
    "rotate replaces how the master key is wrapped, not the master key itself: anyone who kept "
    "a copy of the old key file (or knows the old passphrase) together with an old copy of this "
    "store's key slot, or who read the master key out of an unlocked snapkit process, can still "
    "decrypt every snapshot, old and new. For a leaked key, copy the snapshots into a new store "
    "with a new master key (planned: `snapkit copy`) and delete the old store and its backups."
)
_NEW_PASSPHRASE_HINT = "type it at the prompt (twice), or set SNAPKIT_NEW_PASSPHRASE"


@dataclass(frozen=True)
class KeyListResult(Result):
    store_id: str
    slots: tuple[SlotInfo, ...]


@dataclass(frozen=True)
class KeyAddResult(Result):
    slot_id: str
    kind: str
    added: bool                  # False: the key file already opened this slot
    key_file: str | None = None
    created_key_file: bool = False
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class KeyRemoveResult(Result):
    slot_id: str
    kind: str | None             # None for a slot too damaged to tell
    damaged: bool
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class KeyRotateResult(Result):
    kind: str
    old_slot_id: str             # the slot that opened the store
    new_slot_id: str
    removed: tuple[str, ...]     # every slot the old secret opened (usually just old_slot_id)
    key_file: str | None = None  # rewritten in place with the new secret
    does_not: str = ROTATE_DOES_NOT


def _open(project) -> tuple[object, KeySource, bytes, str]:
    """(backend, key source, master key, id of the slot that opened it)."""
    backend = project.store.backend
    source = project.key_source()
    master, slot_id = slots.open_master_slot(backend, source)
    return backend, source, master, slot_id


def list_keys(project) -> KeyListResult:
    """Every key slot, intact or damaged. Needs no key."""
    return KeyListResult(store_id=project.store.id, slots=tuple(slots.list_slots(project.store.backend)))


def add_key(project, kind: str, *, passphrase: str | None = None,
            key_file: Path | None = None) -> KeyAddResult:
    """Add a passphrase slot, or a key file slot for `key_file`.

    A missing key file is created (0600, parents 0700); an existing snapkit key
    file is reused (nothing is added when it already opens a slot); any other
    existing file is never overwritten.
    """
    if kind == "passphrase":
        if key_file is not None:
            raise UsageError("a passphrase slot takes no key file", hint="pass --passphrase or --key-file, not both")
        if not passphrase:
            raise KeyAccessError("no new passphrase was given; nothing was written", hint=_NEW_PASSPHRASE_HINT)
    elif kind == "keyfile":
        if key_file is None:
            raise UsageError("a key file slot needs a key file path", hint="snapkit key add --key-file PATH")
        if passphrase is not None:
            raise UsageError("a key file slot takes no passphrase", hint="pass --passphrase or --key-file, not both")
    else:
        raise UsageError(f"unknown key kind {kind!r}", hint="use --passphrase or --key-file PATH")
    backend, _source, master, _opened = _open(project)
    if kind == "passphrase":
        return KeyAddResult(slot_id=slots.add_slot(backend, master, kind, passphrase), kind=kind, added=True)

    path = Path(key_file).expanduser().absolute()
    warnings = []
    if _inside(path, project.root):
        warnings.append(f"{path} is inside the git work tree: keep it out of commits (.gitignore)")
    created = False
    if path.exists() or path.is_symlink():
        try:
            secret = slots.read_key_file(path)
        except KeyAccessError as exc:
            raise KeyAccessError(f"refusing to overwrite {path}: {exc.message}",
                                 hint="choose a path that is free or holds a snapkit key file") from None
        already = slots.opening_slots(backend, KeySource(key_file=path))
        if already:
            return KeyAddResult(slot_id=already[0], kind=kind, added=False, key_file=str(path),
                                warnings=(*warnings,
                                          f"{path} already opens key slot {already[0]}; nothing was added"))
    else:
        secret = _new_key_file(path, f"cannot create key file {path}",
                               "check the folder exists or can be created, and is writable")
        created = True
    try:
        slot_id = slots.add_slot(backend, master, kind, secret)
    except BaseException:
        if created:  # a key file no slot knows would only mislead
            path.unlink(missing_ok=True)
        raise
    return KeyAddResult(slot_id=slot_id, kind=kind, added=True, key_file=str(path),
                        created_key_file=created, warnings=tuple(warnings))


def _exclusive(project, command: str):
    """An exclusive lease: two slot removals at once could each see another slot left."""
    from snapkit.store.lock import StoreLock

    return StoreLock(project.store.backend, exclusive=True, command=command)


def remove_key(project, slot_id_or_prefix: str) -> KeyRemoveResult:
    """Remove one slot by id or unique id prefix, after opening the store.

    Refuses to remove the last intact slot (the store would be unreadable for good).
    A damaged slot can always be removed.
    """
    with _exclusive(project, "key remove"):
        return _remove_key(project, slot_id_or_prefix)


def _remove_key(project, slot_id_or_prefix: str) -> KeyRemoveResult:
    backend, source, _master, opened = _open(project)
    infos = slots.list_slots(backend)
    target = _resolve(infos, slot_id_or_prefix)
    if not target.damaged and sum(not s.damaged for s in infos) <= 1:
        raise SnapkitError(f"refusing to remove key slot {target.id}: it is the last intact slot",
                           hint="add another first (`snapkit key add`), or use `snapkit key rotate`")
    slots.remove_slot(backend, target.id)
    warnings = ()
    if target.id == opened and not slots.opening_slots(backend, source):
        what = "key file" if target.kind == "keyfile" else "passphrase"
        warnings = (f"the {what} you opened the store with no longer opens it",)
    return KeyRemoveResult(slot_id=target.id, kind=target.kind, damaged=target.damaged, warnings=warnings)


def _resolve(infos: list[SlotInfo], ref: str) -> SlotInfo:
    ref = ref.strip()
    if not ref:
        raise UsageError("no key slot given", hint="run `snapkit key list` to see the slots")
    exact = [s for s in infos if s.id == ref]
    found = exact or [s for s in infos if s.id.startswith(ref)]
    if not found:
        raise RefNotFound(f"no key slot {ref!r}", hint="run `snapkit key list` to see the slots")
    if len(found) > 1:
        raise AmbiguousRef(f"key slot prefix {ref!r} matches {', '.join(s.id for s in found)}",
                           hint="use more characters of the slot id")
    return found[0]


def rotate_key(project, *, new_passphrase: str | Callable[[], str] | None = None) -> KeyRotateResult:
    """Re-wrap the master key for the slot that opened the store, with a new secret.

    A key file slot gets a new key file secret, written over the same key file
    path. A passphrase slot needs `new_passphrase` (a string, or a function
    asked for it only when the opening slot is a passphrase slot). Every slot the
    old secret opened is removed. The master key does not change: see
    `ROTATE_DOES_NOT`.

    Crash-safe: at every point some slot opens the store with what is on disk —
    the new slot is written before the key file is replaced, and the old slot is
    removed only after.
    """
    with _exclusive(project, "key rotate"):
        return _rotate_key(project, new_passphrase)


def _rotate_key(project, new_passphrase) -> KeyRotateResult:
    backend, source, master, opened = _open(project)
    kind = next((s.kind for s in slots.list_slots(backend) if s.id == opened), None)
    if kind is None:  # removed by someone else since we opened it
        raise SnapkitError(f"key slot {opened} vanished while rotating", hint="run `snapkit key rotate` again")
    if kind == "keyfile":
        if isinstance(new_passphrase, str):
            raise UsageError("the store was opened with a key file: rotate replaces the key file, "
                             "not a passphrase", hint="to add a passphrase use `snapkit key add --passphrase`")
        return _rotate_key_file(backend, source.key_file, master, opened)
    new = new_passphrase() if callable(new_passphrase) else new_passphrase
    if not new:
        raise KeyAccessError("rotating a passphrase slot needs a new passphrase; nothing was written",
                             hint=_NEW_PASSPHRASE_HINT)
    if new == source.passphrase:
        raise UsageError("the new passphrase is the old one; nothing was written")
    old = slots.opening_slots(backend, KeySource(passphrase=source.passphrase))
    new_id = slots.add_slot(backend, master, "passphrase", new)
    for slot_id in old:
        slots.remove_slot(backend, slot_id)
    return KeyRotateResult(kind=kind, old_slot_id=opened, new_slot_id=new_id, removed=tuple(old))


def _new_key_file(path: Path, failure: str, hint: str) -> bytes:
    """A new key file's secret; a one-line error starting with `failure` when it cannot be written."""
    try:
        return slots.write_key_file(path)
    except OSError as exc:
        raise SnapkitError(f"{failure}: {exc.strerror or exc}", hint=hint) from None


def _rotate_key_file(backend, key_file: Path, master: bytes, opened: str) -> KeyRotateResult:
    old = slots.opening_slots(backend, KeySource(key_file=key_file))
    # Replace the real file, not a symlink to it, or the old secret would stay behind.
    path = key_file.resolve()
    tmp = path.with_name(f".{path.name}.rotate-{os.urandom(4).hex()}")
    secret = _new_key_file(tmp, f"cannot write a new key file beside {path}",
                           "the key file's folder must be writable; nothing was changed")
    new_id = None
    try:
        new_id = slots.add_slot(backend, master, "keyfile", secret)
        # From here the new slot opens with tmp, the old one with the file at `path`.
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        if new_id is not None and not _holds(path, secret):
            slots.remove_slot(backend, new_id)  # nothing on disk opens it
        raise
    # The new key file is in place and opens new_id: the old slots may go.
    for slot_id in old:
        slots.remove_slot(backend, slot_id)
    return KeyRotateResult(kind="keyfile", old_slot_id=opened, new_slot_id=new_id, removed=tuple(old),
                           key_file=str(path))


def _holds(path: Path, secret: bytes) -> bool:
    try:
        return slots.read_key_file(path) == secret
    except KeyAccessError:
        return False


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(Path(root).resolve())
        return True
    except ValueError:
        return False
