"""The one trust boundary: the only module that holds keys or imports `cryptography`.

A store has one random 256-bit master key. Key slots wrap it under a key
encryption key (KEK) that comes from a key file's secret (HKDF) or from a
passphrase (scrypt). HKDF derives the subkeys of `Keys` from the master key;
every stored object is sealed with AES-256-GCM under a random key of its own
(an `ObjectKey`), which its header carries wrapped under a subkey: so a later
write-only mode can wrap object keys for public-key recipients instead
(docs/format.md, "Keys"). Sealing binds each ciphertext to where it belongs
(associated data), so a blob moved elsewhere fails.
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
KEY_ID_BYTES = 8
WRAPPED_BYTES = NONCE_BYTES + KEY_BYTES + TAG_BYTES  # an object key sealed under a subkey

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
    """Subkeys of an opened store (docs/format.md, "Keys"). Never logged, never in metadata.

    - `id`: HMAC-SHA256 key for chunk ids (the same derivation as format 1, so
      the ids of chunks stored by format 1 stay valid after `snapkit migrate`);
    - `data`: wraps each writer's random data key (in every pack header);
    - `meta`: wraps the random key of each index, manifest and catalog object;
    - `cache`: authenticates the local caches (catalog, index) outside the store;
    - `legacy_enc`, `legacy_mac`: format 1's object and catalog keys, read-only.
    `key_id` (8 bytes) names the master key in every object header.
    """

    id: bytes
    data: bytes
    meta: bytes
    cache: bytes
    key_id: bytes
    legacy_enc: bytes
    legacy_mac: bytes

    def __repr__(self) -> str:  # keep keys out of tracebacks and logs
        return "Keys(<redacted>)"

    @classmethod
    def from_master(cls, master: bytes) -> Keys:
        return cls(
            id=_hkdf(master, b"snapkit chunk-id"),
            data=_hkdf(master, b"snapkit v2 data-wrap"),
            meta=_hkdf(master, b"snapkit v2 meta-wrap"),
            cache=_hkdf(master, b"snapkit v2 local-cache"),
            key_id=_hkdf(master, b"snapkit v2 key-id")[:KEY_ID_BYTES],
            legacy_enc=_hkdf(master, b"snapkit enc"),
            legacy_mac=_hkdf(master, b"snapkit catalog-mac"),
        )

    def chunk_id(self, plaintext: bytes | memoryview) -> bytes:
        return hmac.digest(self.id, plaintext, "sha256")

    def cache_mac(self, data: bytes | memoryview) -> bytes:
        return hmac.digest(self.cache, data, "sha256")

    def new_object_key(self) -> ObjectKey:
        """A fresh random key for one object (or one writer's packs)."""
        return ObjectKey(random_key())

    def wrap_object_key(self, purpose: str, key: ObjectKey, aad: bytes) -> bytes:
        """The object key sealed under the `data` or `meta` subkey: WRAPPED_BYTES."""
        return _seal(self._wrapping(purpose), aad, key.secret)

    def open_object_key(self, purpose: str, wrapped: bytes | memoryview, aad: bytes) -> ObjectKey:
        """Raises AuthenticationFailed for a wrapped key that is damaged or not ours."""
        secret = _open(self._wrapping(purpose), aad, wrapped)
        if len(secret) != KEY_BYTES:
            raise AuthenticationFailed("object key has the wrong length")
        return ObjectKey(secret)

    def _wrapping(self, purpose: str) -> bytes:
        return {"data": self.data, "meta": self.meta}[purpose]

    def legacy_open(self, aad: bytes, blob: bytes | memoryview) -> bytes:
        """Open a format-1 object or chunk (sealed under the old `enc` subkey)."""
        return _open(self.legacy_enc, aad, blob)

    def legacy_seal(self, aad: bytes, plaintext: bytes | memoryview) -> bytes:
        """Format-1 sealing; only tests that build format-1 stores use it."""
        return _seal(self.legacy_enc, aad, plaintext)

    def legacy_catalog_mac(self, data: bytes) -> bytes:
        return hmac.digest(self.legacy_mac, data, "sha256")

    def seal_local(self, aad: bytes, plaintext: bytes | memoryview) -> bytes:
        """Seal a local cache file (under the `cache` subkey)."""
        return _seal(self.cache, aad, plaintext)

    def open_local(self, aad: bytes, blob: bytes | memoryview) -> bytes:
        return _open(self.cache, aad, blob)


class ObjectKey:
    """A random AES-256-GCM key for one object, or for all packs of one writer."""

    __slots__ = ("_aead", "secret")

    def __init__(self, secret: bytes):
        self.secret = secret
        self._aead = AESGCM(secret)

    def __repr__(self) -> str:
        return "ObjectKey(<redacted>)"

    def seal(self, aad: bytes, plaintext: bytes | memoryview) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, aad: bytes, blob: bytes | memoryview) -> bytes:
        blob = memoryview(blob)
        try:
            return self._aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
        except InvalidTag as exc:
            raise AuthenticationFailed("authentication failed") from exc


def _seal(key: bytes, aad: bytes, plaintext: bytes | memoryview) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + _aead(key).encrypt(nonce, plaintext, aad)


def _open(key: bytes, aad: bytes, blob: bytes | memoryview) -> bytes:
    blob = memoryview(blob)
    try:
        return _aead(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
    except InvalidTag as exc:
        raise AuthenticationFailed("authentication failed") from exc


_AEADS: dict[bytes, AESGCM] = {}


def _aead(key: bytes) -> AESGCM:
    # AESGCM objects are cheap but not free; one per key is enough and thread-safe.
    aead = _AEADS.get(key)
    if aead is None:
        aead = _AEADS[key] = AESGCM(key)
    return aead
