"""The one trust boundary: the only module that holds keys or imports `cryptography`.

A store has one random 256-bit master key. Key slots wrap it under a key
encryption key (KEK) that comes from a key file's secret (HKDF) or from a
passphrase (scrypt). From the master key HKDF derives three subkeys:

- `enc`: AES-256-GCM for every stored object (random 96-bit nonce per seal),
- `id`:  HMAC-SHA256 key for chunk ids, so ids do not reveal plaintext hashes,
- `mac`: HMAC-SHA256 key that authenticates plaintext catalog entries.

`seal(aad, plaintext)` / `open(aad, blob)` bind each ciphertext to the name of
the object it lives in (associated data), so a blob moved elsewhere fails.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

NONCE_BYTES = 12
TAG_BYTES = 16
KEY_BYTES = 32

# scrypt cost for passphrases: n=2**17, r=8 takes ~0.3 s and 128 MiB (OWASP's
# 2023 floor is n=2**17). Tests lower it through `set_kdf_cost` (one fixture).
_SCRYPT = {"n": 2**17, "r": 8, "p": 1}


class AuthenticationFailed(Exception):
    """A blob failed AEAD authentication: wrong key, or damaged bytes."""


def set_kdf_cost(n: int) -> None:
    """Lower the scrypt cost for tests (restic's TestUseLowSecurityKDFParameters)."""
    _SCRYPT["n"] = n


def random_key() -> bytes:
    return os.urandom(KEY_BYTES)


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(secret)


def kek_from_keyfile(secret: bytes, salt: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=b"snapkit keyfile kek"
    ).derive(secret)


def kek_from_passphrase(passphrase: str, salt: bytes, params: dict | None = None) -> tuple[bytes, dict]:
    """Stretch a passphrase with scrypt; returns (kek, params used)."""
    params = dict(params or _SCRYPT)
    kdf = Scrypt(salt=salt, length=KEY_BYTES, n=params["n"], r=params["r"], p=params["p"])
    return kdf.derive(passphrase.encode("utf-8")), params


def wrap(kek: bytes, master: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(kek).encrypt(nonce, master, aad)


def unwrap(kek: bytes, blob: bytes, aad: bytes) -> bytes:
    try:
        return AESGCM(kek).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
    except InvalidTag as exc:
        raise AuthenticationFailed("key slot did not open") from exc


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@dataclass(frozen=True, eq=False)
class Keys:
    """Subkeys of an opened store. Never logged, never in metadata."""

    enc: bytes
    id: bytes
    mac: bytes

    def __repr__(self) -> str:  # keep keys out of tracebacks and logs
        return "Keys(<redacted>)"

    @classmethod
    def from_master(cls, master: bytes) -> Keys:
        return cls(
            enc=_hkdf(master, b"snapkit enc"),
            id=_hkdf(master, b"snapkit chunk-id"),
            mac=_hkdf(master, b"snapkit catalog-mac"),
        )

    def chunk_id(self, plaintext: bytes | memoryview) -> bytes:
        return hmac.digest(self.id, plaintext, "sha256")

    def mac_of(self, data: bytes) -> bytes:
        return hmac.digest(self.mac, data, "sha256")

    def seal(self, aad: bytes, plaintext: bytes | memoryview) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + _aead(self.enc).encrypt(nonce, plaintext, aad)

    def open(self, aad: bytes, blob: bytes | memoryview) -> bytes:
        blob = memoryview(blob)
        try:
            return _aead(self.enc).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
        except InvalidTag as exc:
            raise AuthenticationFailed("authentication failed") from exc


_AEADS: dict[bytes, AESGCM] = {}


def _aead(key: bytes) -> AESGCM:
    # AESGCM objects are cheap but not free; one per key is enough and thread-safe.
    aead = _AEADS.get(key)
    if aead is None:
        aead = _AEADS[key] = AESGCM(key)
    return aead
