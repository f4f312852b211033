"""Key slots: the store's master key wrapped under a key file or a passphrase.

A slot is `keys/<slot-id>.json`. Its `checksum` covers the other fields, so a
damaged slot (exit 3) is told apart from a wrong key or passphrase (exit 1).
A key file holds 32 random bytes, hex, and lives outside the repository
(`$XDG_CONFIG_HOME/snapkit/keys/<store-id>.key`, 0600).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from snapkit.errors import IntegrityError, KeyAccessError
from snapkit.store import crypto
from snapkit.store.backend import FILE_MODE, LocalBackend

FOLDER = "keys"


@dataclass(frozen=True)
class KeySource:
    """How to open a store: a key file path and/or a passphrase. Never printed."""

    key_file: Path | None = None
    passphrase: str | None = None

    def __repr__(self) -> str:
        return f"KeySource(key_file={self.key_file!r}, passphrase={'<set>' if self.passphrase else None})"


def default_key_path(store_id: str) -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "snapkit" / "keys" / f"{store_id}.key"


def write_key_file(path: Path) -> bytes:
    """Create a new key file (0600, parents 0700); refuses to overwrite one."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    secret = crypto.random_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    with os.fdopen(fd, "w") as f:
        f.write("snapkit-key-v1 " + secret.hex() + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, FILE_MODE)
    return secret


def read_key_file(path: Path) -> bytes:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        raise KeyAccessError(f"key file {path} does not exist") from None
    except OSError as exc:
        raise KeyAccessError(f"cannot read key file {path}: {exc.strerror}") from None
    tag, _, hexkey = text.partition(" ")
    try:
        secret = bytes.fromhex(hexkey)
    except ValueError:
        secret = b""
    if tag != "snapkit-key-v1" or len(secret) != crypto.KEY_BYTES:
        raise KeyAccessError(f"{path} is not a snapkit key file")
    return secret


def _checksum(slot: dict) -> str:
    body = {k: v for k, v in slot.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _aad(slot_id: str) -> bytes:
    return f"snapkit key slot {slot_id}".encode()


def add_slot(backend: LocalBackend, master: bytes, kind: str, secret: bytes | str) -> str:
    """Wrap `master` under a key file secret (kind "keyfile") or passphrase ("passphrase")."""
    slot_id = os.urandom(8).hex()
    salt = os.urandom(16)
    if kind == "keyfile":
        kek, kdf = crypto.kek_from_keyfile(secret, salt), {"name": "hkdf-sha256"}
    else:
        kek, params = crypto.kek_from_passphrase(secret, salt)
        kdf = {"name": "scrypt", **params}
    slot = {
        "format": 1,
        "id": slot_id,
        "kind": kind,
        "kdf": kdf,
        "salt": base64.b64encode(salt).decode(),
        "wrapped": base64.b64encode(crypto.wrap(kek, master, _aad(slot_id))).decode(),
    }
    slot["checksum"] = _checksum(slot)
    backend.put(f"{FOLDER}/{slot_id}.json", json.dumps(slot, indent=1).encode())
    return slot_id


def read_slots(backend: LocalBackend) -> tuple[list[dict], list[str]]:
    """(intact slots, names of damaged slots)."""
    slots, damaged = [], []
    for name in backend.list(FOLDER):
        try:
            slot = json.loads(backend.get(name))
            if not isinstance(slot, dict) or slot.get("checksum") != _checksum(slot):
                raise ValueError
            slots.append(slot)
        except ValueError:
            damaged.append(name)
    return slots, damaged


def open_master(backend: LocalBackend, source: KeySource) -> bytes:
    """Unwrap the master key with whatever `source` offers.

    Raises KeyAccessError for a wrong key/passphrase or none given, and
    IntegrityError when the only slots that could open the store are damaged.
    """
    slots, damaged = read_slots(backend)
    if not slots and damaged:
        raise IntegrityError(f"key slot damaged: {', '.join(damaged)}",
                             hint="restore the key slot from a backup of the store")
    tried = []
    secret = read_key_file(source.key_file) if source.key_file and source.key_file.exists() else None
    for slot in slots:
        salt = base64.b64decode(slot["salt"])
        blob = base64.b64decode(slot["wrapped"])
        if slot["kind"] == "keyfile" and secret is not None:
            kek = crypto.kek_from_keyfile(secret, salt)
        elif slot["kind"] == "passphrase" and source.passphrase is not None:
            params = {k: slot["kdf"][k] for k in ("n", "r", "p")}
            kek, _ = crypto.kek_from_passphrase(source.passphrase, salt, params)
        else:
            continue
        tried.append(slot["kind"])
        try:
            return crypto.unwrap(kek, blob, _aad(slot["id"]))
        except crypto.AuthenticationFailed:
            continue
    if damaged:
        raise IntegrityError(f"key slot damaged: {', '.join(damaged)}; no intact slot opens the store",
                             hint="restore the key slot from a backup of the store")
    if tried:
        what = " or ".join(sorted({"passphrase" if t == "passphrase" else "key file" for t in tried}))
        raise KeyAccessError(f"wrong {what}: the store could not be opened")
    if source.key_file and not source.key_file.exists():
        raise KeyAccessError(f"key file {source.key_file} does not exist and no passphrase was given")
    raise KeyAccessError("no key: this store needs a key file or a passphrase",
                         hint="set SNAPKIT_PASSPHRASE or SNAPKIT_KEY_FILE, or [encryption] key_file")
