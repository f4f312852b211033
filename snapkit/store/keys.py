"""Key slots: the store's master key wrapped under a key file or a passphrase.

A slot is `keys/<slot-id>.json` (format 2):

    {"format": 2, "id": "<16 hex>", "kind": "keyfile" | "passphrase",
     "created": "2026-01-02T03:04:05Z", "kdf": {"name": "hkdf-sha256"} |
     {"name": "scrypt", "n": .., "r": .., "p": ..}, "salt": b64, "wrapped": b64,
     "checksum": sha256 hex of the other fields}

Format-1 slots (no `created`) are still read. The checksum is no signature —
anyone who can write the store can forge one — so everything a slot says is
checked against fixed bounds before it is used: a slot whose KDF would cost more
than `MAX_SCRYPT_BYTES` of memory, or whose fields are malformed, counts as
damaged and is never run. A damaged slot (exit 3) is told apart from a wrong
key or passphrase (exit 1); see `open_master_slot` for the rule.

A key file holds 32 random bytes, hex, and lives outside the repository
(`$XDG_CONFIG_HOME/snapkit/keys/<store-id>.key`, 0600).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from snapkit.errors import IntegrityError, KeyAccessError, UsageError
from snapkit.store import crypto

FOLDER = "keys"
FORMAT = 2
READABLE_FORMATS = (1, 2)
KINDS = ("keyfile", "passphrase")
FILE_MODE = 0o600
DIR_MODE = 0o700
KEY_FILE_TAG = "snapkit-key-v1"

# Bounds on what a slot may ask for. n=2**20, r=8 (1 GiB, a few seconds) is far
# above the default cost (n=2**17: 128 MiB); anything beyond is an attack, not a
# setting. The floor n=2**10 is the cost tests use.
MIN_SCRYPT_N, MAX_SCRYPT_N = 2**10, 2**20
MAX_SCRYPT_R, MAX_SCRYPT_P = 32, 16
MAX_SCRYPT_BYTES = 2**30  # 128·n·r·p
MIN_SALT, MAX_SALT = 16, 64
SALT_BYTES = 16
MAX_SLOT_BYTES = 64 * 1024  # a slot is ~400 bytes; never parse a huge one


@dataclass(frozen=True)
class KeySource:
    """How to open a store: a key file path and/or a passphrase. Never printed."""

    key_file: Path | None = None
    passphrase: str | None = None

    def __repr__(self) -> str:
        return f"KeySource(key_file={self.key_file!r}, passphrase={'<set>' if self.passphrase else None})"


@dataclass(frozen=True)
class SlotInfo:
    """What `snapkit key list` shows of a slot: no secret, nothing wrapped."""

    id: str
    kind: str | None          # None when the slot is too damaged to tell
    created: str | None       # None for format-1 slots
    kdf: str | None           # "hkdf-sha256" or "scrypt n=2^17 r=8 p=1"
    damaged: bool
    problem: str | None = None  # why it counts as damaged


class _Damaged(Exception):
    """A slot fails validation; the message says why (shown by `key list`)."""


@dataclass(frozen=True)
class _Slot:
    """An intact, validated slot."""

    id: str
    kind: str
    format: int
    created: str | None
    kdf: dict
    salt: bytes
    wrapped: bytes


# ---------------------------------------------------------------------------- key files


def default_key_path(store_id: str) -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "snapkit" / "keys" / f"{store_id}.key"


def write_key_file(path: Path, secret: bytes | None = None) -> bytes:
    """Create a key file holding `secret` (a new random one if None); returns the secret.

    The file is 0600 and fsynced, missing parents are created 0700; an existing
    file is never overwritten (FileExistsError).
    """
    _make_private_folders(path.parent)
    secret = crypto.random_key() if secret is None else secret
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(f"{KEY_FILE_TAG} {secret.hex()}\n")
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    os.chmod(path, FILE_MODE)  # whatever the umask
    return secret


def _make_private_folders(folder: Path) -> None:
    # mkdir(parents=True) would give the parents the umask's mode, and the umask
    # applies to `mode` too: create each missing folder and chmod it. Folders that
    # already exist (~/.config) are left as they are.
    for p in reversed([folder, *folder.parents]):
        if not p.exists():
            p.mkdir(mode=DIR_MODE, exist_ok=True)
            os.chmod(p, DIR_MODE)


def read_key_file(path: Path) -> bytes:
    """The secret in a key file; KeyAccessError when missing, unreadable or not a key file."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        raise KeyAccessError(f"key file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyAccessError(f"cannot read key file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    tag, _, hexkey = text.partition(" ")
    try:
        secret = bytes.fromhex(hexkey)
    except ValueError:
        secret = b""
    if tag != KEY_FILE_TAG or len(secret) != crypto.KEY_BYTES:
        raise KeyAccessError(f"{path} is not a snapkit key file")
    return secret


# ---------------------------------------------------------------------------- slot parsing


def _checksum(slot: dict) -> str:
    body = {k: v for k, v in slot.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _aad(slot_id: str) -> bytes:
    return f"snapkit key slot {slot_id}".encode()


def _name(slot_id: str) -> str:
    return f"{FOLDER}/{slot_id}.json"


def _int(kdf: dict, key: str, lo: int, hi: int) -> int:
    v = kdf.get(key)
    # bool is an int in Python; a slot saying r=true is malformed, not r=1.
    if type(v) is not int or not lo <= v <= hi:
        raise _Damaged(f"scrypt {key}={v!r} outside {lo}..{hi}")
    return v


def _check_kdf(kind: str, kdf) -> dict:
    """The slot's KDF parameters if they are within bounds; _Damaged otherwise."""
    if not isinstance(kdf, dict):
        raise _Damaged("kdf is not an object")
    if kind == "keyfile":
        if kdf.get("name") != "hkdf-sha256":
            raise _Damaged(f"keyfile slot with kdf {kdf.get('name')!r}")
        return {"name": "hkdf-sha256"}
    if kdf.get("name") != "scrypt":
        raise _Damaged(f"passphrase slot with kdf {kdf.get('name')!r}")
    n = _int(kdf, "n", MIN_SCRYPT_N, MAX_SCRYPT_N)
    if n & (n - 1):
        raise _Damaged(f"scrypt n={n} is not a power of two")
    r = _int(kdf, "r", 1, MAX_SCRYPT_R)
    p = _int(kdf, "p", 1, MAX_SCRYPT_P)
    if 128 * n * r * p > MAX_SCRYPT_BYTES:
        raise _Damaged(f"scrypt n={n} r={r} p={p} needs more than 1 GiB")
    return {"name": "scrypt", "n": n, "r": r, "p": p}


def _b64(slot: dict, key: str) -> bytes:
    v = slot.get(key)
    if not isinstance(v, str):
        raise _Damaged(f"{key} is not a string")
    try:
        return base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError):
        raise _Damaged(f"{key} is not base64") from None


def _parse(slot_id: str, data: bytes) -> _Slot:
    """Validate a slot's bytes completely; _Damaged (with the reason) when damaged."""
    try:
        slot = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: deeply nested crafted JSON
        raise _Damaged("not JSON") from None
    if not isinstance(slot, dict):
        raise _Damaged("not a JSON object")
    if slot.get("checksum") != _checksum(slot):
        raise _Damaged("checksum mismatch")
    fmt = slot.get("format")
    if type(fmt) is not int or fmt not in READABLE_FORMATS:
        raise _Damaged(f"unknown slot format {fmt!r}")
    if slot.get("id") != slot_id:
        raise _Damaged("id does not match the slot's name")
    kind = slot.get("kind")
    if kind not in KINDS:
        raise _Damaged(f"unknown kind {kind!r}")
    created = slot.get("created")
    if fmt >= 2 and not isinstance(created, str):
        raise _Damaged("no creation time")
    kdf = _check_kdf(kind, slot.get("kdf"))
    salt = _b64(slot, "salt")
    if not MIN_SALT <= len(salt) <= MAX_SALT:
        raise _Damaged(f"salt of {len(salt)} bytes outside {MIN_SALT}..{MAX_SALT}")
    wrapped = _b64(slot, "wrapped")
    if len(wrapped) <= crypto.KEY_BYTES:
        raise _Damaged("wrapped key too short")
    return _Slot(id=slot_id, kind=kind, format=fmt, created=created if isinstance(created, str) else None,
                 kdf=kdf, salt=salt, wrapped=wrapped)


def _scan(backend) -> tuple[list[_Slot], dict[str, str]]:
    """(intact slots, {damaged slot id: reason}), both in slot-id order."""
    intact, damaged = [], {}
    for info in backend.list(FOLDER):
        rest = info.name[len(FOLDER) + 1 :]
        if "/" in rest or not rest.endswith(".json"):
            continue  # not a slot (a slot is keys/<id>.json)
        slot_id = rest[: -len(".json")]
        if info.size > MAX_SLOT_BYTES:
            damaged[slot_id] = f"{info.size} bytes, too large for a key slot"
            continue
        try:
            data = backend.get(info.name)
        except FileNotFoundError:
            continue  # removed since the listing
        try:
            intact.append(_parse(slot_id, data))
        except _Damaged as exc:
            why = str(exc)  # may quote crafted values: keep it short
            damaged[slot_id] = why if len(why) <= 80 else why[:77] + "..."
    return intact, damaged


def read_slots(backend) -> tuple[list[_Slot], list[str]]:
    """(intact slots, object names of damaged slots): for `verify`'s report."""
    intact, damaged = _scan(backend)
    return intact, [_name(i) for i in damaged]


def _kdf_summary(kdf: dict) -> str:
    if kdf["name"] == "scrypt":
        return f"scrypt n=2^{kdf['n'].bit_length() - 1} r={kdf['r']} p={kdf['p']}"
    return kdf["name"]


def list_slots(backend) -> list[SlotInfo]:
    """Every slot, intact or damaged, in id order. Needs no key."""
    intact, damaged = _scan(backend)
    out = [SlotInfo(id=s.id, kind=s.kind, created=s.created, kdf=_kdf_summary(s.kdf), damaged=False)
           for s in intact]
    out += [SlotInfo(id=i, kind=None, created=None, kdf=None, damaged=True, problem=why)
            for i, why in damaged.items()]
    return sorted(out, key=lambda s: s.id)


# ---------------------------------------------------------------------------- writing


def add_slot(backend, master: bytes, kind: str, secret: bytes | str) -> str:
    """Wrap `master` under a key file secret (kind "keyfile") or passphrase ("passphrase").

    Written with `put_new` under a new random id, so it never replaces a slot;
    returns the id.
    """
    if kind not in KINDS:
        raise UsageError(f"unknown key slot kind {kind!r}", hint="use keyfile or passphrase")
    slot_id = os.urandom(8).hex()
    salt = os.urandom(SALT_BYTES)
    if kind == "keyfile":
        kek, kdf = crypto.kek_from_keyfile(secret, salt), {"name": "hkdf-sha256"}
    else:
        kek, params = crypto.kek_from_passphrase(secret, salt)
        kdf = {"name": "scrypt", "n": params["n"], "r": params["r"], "p": params["p"]}
    slot = {
        "format": FORMAT,
        "id": slot_id,
        "kind": kind,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "kdf": kdf,
        "salt": base64.b64encode(salt).decode(),
        "wrapped": base64.b64encode(crypto.wrap(kek, master, _aad(slot_id))).decode(),
    }
    slot["checksum"] = _checksum(slot)
    backend.put_new(_name(slot_id), json.dumps(slot, indent=1).encode())
    return slot_id


def remove_slot(backend, slot_id: str) -> None:
    """Delete a slot (idempotent). Checks nothing else: callers keep one that opens."""
    if not slot_id or "/" in slot_id or slot_id.startswith("."):
        raise UsageError(f"{slot_id!r} is not a key slot id", hint="run `snapkit key list`")
    backend.delete(_name(slot_id))


# ---------------------------------------------------------------------------- opening


def _try(slot: _Slot, secret: bytes | None, passphrase: str | None) -> bytes | None:
    """The master key if this slot opens with what we have; None otherwise."""
    if slot.kind == "keyfile":
        kek = crypto.kek_from_keyfile(secret, slot.salt)
    else:
        params = {k: slot.kdf[k] for k in ("n", "r", "p")}
        kek, _ = crypto.kek_from_passphrase(passphrase, slot.salt, params)
    try:
        master = crypto.unwrap(kek, slot.wrapped, _aad(slot.id))
    except crypto.AuthenticationFailed:
        return None
    return master if len(master) == crypto.KEY_BYTES else None


def _secrets(source: KeySource) -> tuple[bytes | None, KeyAccessError | None]:
    if source.key_file is None:
        return None, None
    try:
        return read_key_file(source.key_file), None
    except KeyAccessError as exc:
        return None, exc


def opening_slots(backend, source: KeySource) -> list[str]:
    """Ids of every intact slot that `source` opens (none raises nothing)."""
    secret, _ = _secrets(source)
    intact, _ = _scan(backend)
    usable = [s for s in intact if (secret if s.kind == "keyfile" else source.passphrase) is not None]
    return [s.id for s in usable if _try(s, secret, source.passphrase) is not None]


def open_master(backend, source: KeySource) -> bytes:
    """The master key; see `open_master_slot`."""
    return open_master_slot(backend, source)[0]


def open_master_slot(backend, source: KeySource) -> tuple[bytes, str]:
    """(master key, id of the slot that opened it), trying key file slots first (cheap).

    Errors:
    - KeyAccessError (exit 1) when no secret was given, when an intact slot of a
      kind we have a secret for exists and none of them opens ("wrong passphrase",
      "wrong key file"; damaged slots are named in the hint), or when the store
      has no slot of that kind.
    - IntegrityError (exit 3) "key slot damaged" only when no intact slot could
      be tried at all and damaged ones exist, or when the store has no slots.
    """
    secret, key_err = _secrets(source)
    if secret is None and source.passphrase is None:
        if key_err is not None:
            raise key_err
        raise KeyAccessError("no key: this store needs a key file or a passphrase",
                             hint="set SNAPKIT_PASSPHRASE or SNAPKIT_KEY_FILE, or [encryption] key_file")
    intact, damaged = _scan(backend)
    have = {"keyfile"} if secret is not None else set()
    if source.passphrase is not None:
        have.add("passphrase")
    candidates = sorted((s for s in intact if s.kind in have), key=lambda s: s.kind != "keyfile")
    for slot in candidates:
        master = _try(slot, secret, source.passphrase)
        if master is not None:
            return master, slot.id
    names = ", ".join(_name(i) for i in damaged)
    restore = "restore the store's keys/ folder from a backup of the store"
    if candidates:
        tried = [k for k in KINDS if any(s.kind == k for s in candidates)]
        what = " and ".join("key file" if k == "keyfile" else "passphrase" for k in tried)
        message = f"wrong {what}: no key slot opens with {'it' if len(tried) == 1 else 'either'}"
        if key_err is not None:
            message += f" ({key_err.message})"
        hint = (f"damaged key slot(s) could not be tried: {names}; if the right key is in one, {restore}"
                if damaged else None)
        raise KeyAccessError(message, hint=hint)
    if damaged:
        raise IntegrityError(f"key slot damaged: {names}; no intact slot could be tried", hint=restore)
    if not intact:
        raise IntegrityError("the store has no key slots", hint=restore)
    if key_err is not None:
        raise key_err
    missing = " or ".join("key file" if k == "keyfile" else "passphrase" for k in KINDS if k in have)
    kinds = " or a ".join(sorted({"key file" if s.kind == "keyfile" else "passphrase" for s in intact}))
    raise KeyAccessError(f"this store has no {missing} slot; it opens with a {kinds}")
