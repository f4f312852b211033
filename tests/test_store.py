"""Unit tests of the store, in-process: chunkers, crypto, backend, repository, catalog."""

from __future__ import annotations

import hashlib
import json
import os
import random
import stat
import time
from pathlib import Path

import pytest

from snapkit.backends import local as local_backend
from snapkit.backends.base import BackendError
from snapkit.catalog import Catalog
from snapkit.errors import IntegrityError, StoreFormatError
from snapkit.store import cache, crypto, keys, objects
from snapkit.store.chunker import make_chunker
from snapkit.store.repository import Store, config_checksum


# ---------------------------------------------------------------------------- helpers


def feed_all(strategy: str, data: bytes, pieces: list[int] | None) -> list[bytes]:
    """Chunks of `data` when it is fed in pieces of the given sizes (None: one piece)."""
    chunker = make_chunker(strategy)
    out: list[bytes] = []
    if pieces is None:
        out += chunker.feed(data)
    else:
        pos = 0
        for n in pieces:
            out += chunker.feed(memoryview(data)[pos : pos + n])
            pos += n
        assert pos >= len(data)
    out += chunker.finish()
    return out


def random_pieces(rnd: random.Random, total: int, small: bool = False) -> list[int]:
    pieces, left = [], total
    while left > 0:
        kind = rnd.random()
        if small or kind < 0.3:
            n = rnd.randint(1, 5000)
        elif kind < 0.8:
            n = rnd.randint(5000, 300_000)
        else:
            n = rnd.randint(300_000, 3_000_000)
        n = min(n, left)
        pieces.append(n)
        left -= n
    return pieces


def store_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*"))


# ---------------------------------------------------------------------------- chunkers


@pytest.mark.parametrize("strategy", ["fixed:4096", "fixed:65536", "cdc:16384", "cdc:65536"])
def test_chunks_concatenate_to_input_whatever_the_feed_sizes(strategy):
    rnd = random.Random(f"concat-{strategy}")
    # More than the cdc window (8 MiB + max chunk) so windowing is exercised, not a multiple of 4096.
    data = rnd.randbytes(10 * 1024 * 1024 + 12345)
    whole = feed_all(strategy, data, None)
    assert b"".join(whole) == data
    for trial in range(3):
        pieces = random_pieces(rnd, len(data), small=(trial == 0 and strategy.startswith("fixed")))
        chunks = feed_all(strategy, data, pieces)
        assert b"".join(chunks) == data
        # Chunk boundaries never depend on how the producer happened to split its writes.
        assert [len(c) for c in chunks] == [len(c) for c in whole]
        assert chunks == whole


def test_fixed_chunks_are_aligned_blocks():
    data = random.Random(3).randbytes(4096 * 10 + 100)
    chunks = feed_all("fixed:4096", data, [1, 4095, 4097, 30000, 100000])
    assert [len(c) for c in chunks] == [4096] * 10 + [100]


def test_cdc_chunk_sizes_follow_the_average():
    data = random.Random(4).randbytes(4 * 1024 * 1024)
    chunks = feed_all("cdc:65536", data, None)
    sizes = [len(c) for c in chunks]
    assert all(len(c) <= 4 * 65536 for c in chunks)
    assert all(s >= 65536 // 4 for s in sizes[:-1])
    assert 16 <= len(chunks) <= 256


def test_cdc_insert_in_the_middle_changes_only_a_couple_of_chunks():
    rnd = random.Random(5)
    data = rnd.randbytes(4 * 1024 * 1024)
    mid = len(data) // 2 + 777
    changed = data[:mid] + rnd.randbytes(100) + data[mid:]
    before = feed_all("cdc:65536", data, random_pieces(rnd, len(data)))
    after = feed_all("cdc:65536", changed, random_pieces(rnd, len(changed)))
    assert b"".join(after) == changed
    old = {hashlib.sha256(c).digest() for c in before}
    new = [c for c in after if hashlib.sha256(c).digest() not in old]
    assert len(before) > 20
    assert 1 <= len(new) <= 3, f"{len(new)} of {len(after)} chunks changed after a 100-byte insert"
    # The same holds for a fixed chunker only after the insert point (it shifts everything): a sanity contrast.
    fixed_old = {hashlib.sha256(c).digest() for c in feed_all("fixed:65536", data, None)}
    fixed_new = [c for c in feed_all("fixed:65536", changed, None) if hashlib.sha256(c).digest() not in fixed_old]
    assert len(fixed_new) > 10


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError):
        make_chunker("rabin:4096")
    with pytest.raises(ValueError):
        make_chunker("fixed:0")


# ---------------------------------------------------------------------------- crypto


def test_seal_open_round_trip_and_aad_binding():
    """A sealed object (docs/format.md, "Objects"): 75-byte header, payload bound to name, kind and key."""
    k = crypto.Keys.from_master(os.urandom(32))
    name = "index/" + "ab" * 16
    for plain in (b"", b"x", os.urandom(100_000)):
        blob = objects.seal(k, objects.INDEX, name, plain)
        # header: magic, version 2, kind, key id, wrap 0, wrapped object key (12 + 32 + 16); then the payload
        assert blob[:4] == b"SNPK" and blob[4] == 2 and blob[5:6] == b"I" and blob[6:14] == k.key_id
        assert blob[14] == 0 and objects.HEADER_BYTES == 75
        assert len(blob) == 75 + 12 + len(plain) + 16
        if len(plain) > 16:
            assert plain[:64] not in blob
        assert objects.open_sealed(k, objects.INDEX, name, blob) == plain
        assert objects.open_sealed(k, objects.INDEX, name, memoryview(blob)) == plain
        # Bound to its name and its kind: renamed, or read as another kind, it does not open.
        with pytest.raises(IntegrityError) as exc:
            objects.open_sealed(k, objects.INDEX, "index/" + "ac" * 16, blob)
        assert "ac" * 16 in exc.value.message
        with pytest.raises(IntegrityError):
            objects.open_sealed(k, objects.MANIFEST, name, blob)
    blob = bytearray(objects.seal(k, objects.CATALOG, "catalog/s1~0", b"hello world" * 10))
    # key id, wrap byte (refused as "not supported"), wrapped key, payload nonce, ciphertext, tag
    for pos in (8, 14, 20, 50, 75, 75 + 12 + 40, len(blob) - 1):
        bad = bytearray(blob)
        bad[pos] ^= 0x01
        with pytest.raises((IntegrityError, StoreFormatError)):
            objects.open_sealed(k, objects.CATALOG, "catalog/s1~0", bytes(bad))
    # Another header on this payload: the payload's associated data is the whole header.
    other_head = objects.seal(k, objects.CATALOG, "catalog/s1~0", b"x")[: objects.HEADER_BYTES]
    with pytest.raises(IntegrityError):
        objects.open_sealed(k, objects.CATALOG, "catalog/s1~0", other_head + bytes(blob[objects.HEADER_BYTES:]))
    # Another store's key: named as such, not taken for damage of the bytes.
    other = crypto.Keys.from_master(os.urandom(32))
    with pytest.raises(IntegrityError) as exc:
        objects.open_sealed(other, objects.CATALOG, "catalog/s1~0", bytes(blob))
    assert "another master key" in exc.value.message
    # Object keys on their own (what packs use for their chunks): AES-GCM bound to the associated data.
    key = k.new_object_key()
    sealed = key.seal(b"chunk id", b"payload")
    assert key.open(b"chunk id", sealed) == b"payload"
    with pytest.raises(crypto.AuthenticationFailed):
        key.open(b"other id", sealed)
    with pytest.raises(crypto.AuthenticationFailed):
        k.new_object_key().open(b"chunk id", sealed)


def test_seal_uses_a_fresh_nonce_and_key_and_chunk_ids_are_keyed():
    k = crypto.Keys.from_master(os.urandom(32))
    a = objects.seal(k, objects.MANIFEST, "manifests/s1", b"same")
    b = objects.seal(k, objects.MANIFEST, "manifests/s1", b"same")
    assert a != b
    assert a[15:75] != b[15:75]  # each object has its own random key
    assert a[75:87] != b[75:87]  # and its own nonce
    key = k.new_object_key()
    assert key.seal(b"a", b"same") != key.seal(b"a", b"same")
    assert key.secret != k.new_object_key().secret
    other = crypto.Keys.from_master(os.urandom(32))
    assert k.chunk_id(b"data") == k.chunk_id(b"data")
    assert k.chunk_id(b"data") != other.chunk_id(b"data")
    assert k.chunk_id(b"data") != hashlib.sha256(b"data").digest()
    # The subkeys are distinct, and the key id (public, in every header) reveals none of them.
    subkeys = [k.id, k.data, k.meta, k.cache, k.legacy_enc, k.legacy_mac]
    assert len(set(subkeys)) == len(subkeys) and all(len(x) == 32 for x in subkeys)
    assert len(k.key_id) == 8 and not any(k.key_id in x for x in subkeys)


def test_keys_repr_does_not_leak():
    master = os.urandom(32)
    k = crypto.Keys.from_master(master)
    key = k.new_object_key()
    for text in (repr(k), str(k), f"{k}", f"{k!r}", repr([k]), repr({"k": k}), repr(key), str(key),
                 repr([key])):
        for secret in (master, k.id, k.data, k.meta, k.cache, k.legacy_enc, k.legacy_mac, key.secret):
            assert secret.hex() not in text
            assert repr(secret) not in text
            assert secret.hex()[:16] not in text
    src = keys.KeySource(key_file=Path("/x/k.key"), passphrase="hunter2-secret")
    assert "hunter2-secret" not in repr(src) and "hunter2-secret" not in str(src)


# ---------------------------------------------------------------------------- backend


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


# ---------------------------------------------------------------------------- repository


@pytest.fixture
def store(tmp_path):
    s = Store.init(tmp_path / "store", tmp_path / "cfg" / "k.key", None)
    return s


def _reopen(store: Store, tmp_path: Path, use_cache: bool = True) -> Store:
    """The store opened again; `use_cache=False` is another machine (no local caches)."""
    s = Store(store.path, use_cache=use_cache)
    s.unlock(keys.KeySource(key_file=tmp_path / "cfg" / "k.key"))
    return s


def _write_snapshot(store: Store, sid: str, layers: dict[str, tuple[str, bytes]], piece: int = 100_000) -> tuple[str, dict]:
    w = store.writer()
    results = {}
    for name, (strategy, data) in layers.items():
        results[name] = w.write_layer(name, strategy,
                                      (data[i : i + piece] for i in range(0, len(data), piece)))
    got, digest = w.commit(lambda attempt: sid if attempt == 0 else f"{sid}.{attempt}", {"note": "test"})
    # The digest is the stored manifest's SHA-256 (what its catalog entry will name).
    assert digest == hashlib.sha256((store.path / "manifests" / got).read_bytes()).hexdigest()
    return got, results


def test_repository_round_trip_and_dedup(store, tmp_path):
    rnd = random.Random(11)
    db = rnd.randbytes(3 * 1024 * 1024 + 4096 * 3)
    code = rnd.randbytes(500_000)
    sid1, r1 = _write_snapshot(store, "s1", {"database": ("fixed:4096", db), "code": ("cdc:32768", code)})
    assert sid1 == "s1"
    assert r1["database"].new_chunks == r1["database"].chunks == len(db) // 4096
    assert r1["database"].sha256 == hashlib.sha256(db).hexdigest()
    def objects_of(folder: str) -> dict:
        return {p.name: p.stat().st_size for p in (store.path / folder).rglob("*") if p.is_file()}

    packs_before, index_before = objects_of("packs"), objects_of("index")
    # The same layers again (different feed sizes): nothing new is stored.
    sid2, r2 = _write_snapshot(_reopen(store, tmp_path), "s2",
                               {"database": ("fixed:4096", db), "code": ("cdc:32768", code)}, piece=7777)
    assert r2["database"].new_chunks == 0 and r2["code"].new_chunks == 0
    assert r2["database"].stored_bytes == 0 and r2["code"].stored_bytes == 0
    assert objects_of("packs") == packs_before  # no pack data at all
    assert objects_of("index") == index_before
    # A one-page change stores one page.
    db3 = bytearray(db)
    db3[4096 * 5 + 10] ^= 0xFF
    _sid3, r3 = _write_snapshot(_reopen(store, tmp_path), "s3", {"database": ("fixed:4096", bytes(db3))})
    assert r3["database"].new_chunks == 1
    fresh = _reopen(store, tmp_path)
    for sid, expected in (("s1", db), ("s2", db), ("s3", bytes(db3))):
        m = fresh.load_manifest(sid)
        assert b"".join(fresh.read_layer(m, "database")) == expected
    assert b"".join(fresh.read_layer(fresh.load_manifest("s2"), "code")) == code
    assert sorted(fresh.manifest_ids()) == ["s1", "s2", "s3"]


def test_data_is_compressed_and_encrypted_at_rest(store):
    text = (b"CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT); -- very secret row \n" * 20000)
    _write_snapshot(store, "s1", {"database": ("cdc:65536", text)})
    raw = b"".join(p.read_bytes() for p in store_files(store.path) if p.is_file())
    assert b"very secret row" not in raw
    assert sum(p.stat().st_size for p in (store.path / "packs").rglob("*") if p.is_file()) < len(text) // 10


def test_manifest_id_is_never_overwritten(store):
    _write_snapshot(store, "same", {"database": ("fixed:4096", b"a" * 8192)})
    got, _ = _write_snapshot(store, "same", {"database": ("fixed:4096", b"b" * 8192)})
    assert got == "same.1"
    assert b"".join(store.read_layer(store.load_manifest("same"), "database")) == b"a" * 8192


def _set_version_byte(path: Path, version: int) -> None:
    data = bytearray(path.read_bytes())
    assert data[:4] == objects.MAGIC
    data[4] = version
    path.write_bytes(bytes(data))


def test_manifest_with_newer_format_version_is_refused(store, tmp_path):
    _write_snapshot(store, "s1", {"database": ("fixed:4096", os.urandom(20000))})
    _set_version_byte(store.path / "manifests" / "s1", objects.FORMAT_VERSION + 1)
    with pytest.raises(StoreFormatError):
        _reopen(store, tmp_path).load_manifest("s1")


def test_index_with_newer_format_version_is_refused(store, tmp_path):
    _write_snapshot(store, "s1", {"database": ("fixed:4096", os.urandom(20000))})
    [index] = (store.path / "index").iterdir()
    _set_version_byte(index, objects.FORMAT_VERSION + 1)
    # On a machine that has not merged it yet (this one keeps the records it wrote in its cache).
    with pytest.raises(StoreFormatError):
        _reopen(store, tmp_path, use_cache=False).index()


def test_pack_with_newer_format_version_is_refused(store, tmp_path):
    data = os.urandom(20000)
    _write_snapshot(store, "s1", {"database": ("fixed:4096", data)})
    [pack] = [p for p in (store.path / "packs").rglob("*") if p.is_file()]
    _set_version_byte(pack, objects.FORMAT_VERSION + 1)
    s = _reopen(store, tmp_path)
    with pytest.raises(StoreFormatError):
        b"".join(s.read_layer(s.load_manifest("s1"), "database"))


def test_store_config_with_unknown_format_is_refused(store):
    cfg = json.loads((store.path / "config").read_text())
    assert cfg["format"] == 2
    cfg["format"] = 99
    cfg["checksum"] = config_checksum(cfg)  # a well-formed config of a newer snapkit, not a damaged one
    (store.path / "config").write_text(json.dumps(cfg))
    with pytest.raises(StoreFormatError) as exc:
        Store(store.path)
    assert "99" in exc.value.message and exc.value.exit_code == 1
    # The same edit without its checksum is damage (exit 3), not a version question.
    cfg["format"] = 2
    (store.path / "config").write_text(json.dumps(cfg))
    with pytest.raises(IntegrityError) as exc:
        Store(store.path)
    assert "config" in exc.value.message and exc.value.exit_code == 3


def test_store_files_are_private(tmp_path, umask_022):
    s = Store.init(tmp_path / "store", tmp_path / "cfg" / "k.key", "pw")
    _write_snapshot(s, "s1", {"database": ("fixed:4096", os.urandom(50000))})
    Catalog(s).entries()  # writes the local catalog cache
    for p in [s.path, *store_files(s.path)]:
        assert stat.S_IMODE(p.stat().st_mode) == (0o700 if p.is_dir() else 0o600), p
    assert stat.S_IMODE((tmp_path / "cfg" / "k.key").stat().st_mode) == 0o600
    # Only what docs/format.md lists is in the store; the caches are on this machine, private too.
    assert {p.name for p in s.path.iterdir()} <= {"config", "keys", "packs", "index", "manifests", "catalog",
                                                  "locks", "tmp"}
    assert not list((s.path / "tmp").iterdir())
    local = cache.store_dir(s.id)
    assert local.is_relative_to(Path(os.environ["XDG_CACHE_HOME"])) and list(local.rglob("*"))
    for p in [local, *local.rglob("*")]:
        assert stat.S_IMODE(p.stat().st_mode) == (0o700 if p.is_dir() else 0o600), p


# ---------------------------------------------------------------------------- catalog


def _entry(i: int) -> dict:
    return {"id": f"2026{i:08d}T000000Z-abcdef0", "commit": f"{i:040x}", "branch": "main",
            "message": f"snapshot number {i}", "created_at": "2026-01-01T00:00:00Z", "env": "default",
            "tags": ["nightly"] if i % 10 == 0 else [], "pinned": i % 1000 == 0, "safety": False,
            "dirty": False, "engine": "sqlite", "logical_bytes": 1000 + i, "stored_bytes": i,
            "layers": {"database": {"logical_bytes": 1000 + i, "stored_bytes": i}}}


DIGEST = "ab" * 32  # a manifest digest: the catalog only carries it (resolving checks it)


def _catalog_objects(store: Store) -> list[str]:
    return sorted(str(p.relative_to(store.path)) for p in (store.path / "catalog").rglob("*") if p.is_file())


def test_catalog_with_10000_entries_lists_fast_when_warm(store, tmp_path, monkeypatch):
    cat = Catalog(store)
    # Durability of each entry is not what this test measures: skip the fsyncs while filling the store.
    monkeypatch.setattr(local_backend.os, "fsync", lambda fd: None)
    order = list(range(10_000))
    random.Random(7).shuffle(order)
    for i in order:
        cat.add(_entry(i), DIGEST)
    monkeypatch.undo()
    first = Catalog(_reopen(store, tmp_path)).entries()  # cold: reads every entry, builds the local cache
    assert len(first) == 10_000
    again = Catalog(_reopen(store, tmp_path))  # as a new process would: one listing + the local cache
    t0 = time.perf_counter()
    warm = again.entries()
    elapsed = time.perf_counter() - t0
    assert elapsed < 0.5, f"warm Catalog.entries() took {elapsed:.3f}s"
    assert warm == first
    assert [e["id"] for e in warm] == sorted(e["id"] for e in warm)
    assert warm[0] == _entry(0) and warm[-1] == _entry(9999)
    # Without the cache (what verify does), every entry authenticates from the store itself.
    fresh = Catalog(_reopen(store, tmp_path, use_cache=False), trust_cache=False)
    assert fresh.entries() == first and fresh.damaged == []
    assert fresh.manifest_digest(_entry(123)["id"]) == DIGEST


def test_catalog_follows_changes_and_entries_are_sealed_to_their_names(store, tmp_path):
    cat = Catalog(store)
    for i in range(5):
        cat.add(_entry(i), DIGEST)
    assert len(Catalog(_reopen(store, tmp_path)).entries()) == 5
    ids = [_entry(i)["id"] for i in range(5)]
    assert _catalog_objects(store) == sorted(f"catalog/{sid}~0" for sid in ids)
    cat.delete(ids[2])
    changed = cat.update(ids[3], lambda e: {**e, "tags": ["golden"]})
    assert changed == {**_entry(3), "tags": ["golden"]}
    # A change is revision n+1 (the older revision is removed); an entry cannot be added twice.
    assert f"catalog/{ids[3]}~1" in _catalog_objects(store) and f"catalog/{ids[3]}~0" not in _catalog_objects(store)
    with pytest.raises(FileExistsError):
        cat.add(_entry(0), DIGEST)
    fresh = Catalog(_reopen(store, tmp_path))
    assert [e["id"] for e in fresh.entries()] == [ids[i] for i in (0, 1, 3, 4)]
    assert fresh.get(ids[3])["tags"] == ["golden"]
    assert fresh.manifest_digest(ids[3]) == DIGEST
    # The entries are sealed: nothing readable in the store.
    raw = b"".join((store.path / n).read_bytes() for n in _catalog_objects(store))
    assert b"snapshot number" not in raw and b"main" not in raw and DIGEST.encode() not in raw
    # Alter an entry behind the catalog's back (same size): named and refused, on a machine that
    # has not cached it and on this one, whose local cache holds the entry as it was.
    path = store.path / "catalog" / f"{ids[4]}~0"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    for machine in (Catalog(_reopen(store, tmp_path, use_cache=False)), Catalog(_reopen(store, tmp_path))):
        assert [e["id"] for e in machine.entries()] == [ids[i] for i in (0, 1, 3)]
        assert [d.name for d in machine.damaged] == [f"catalog/{ids[4]}~0"]
        with pytest.raises(IntegrityError) as exc:
            machine.get(ids[4])
        assert f"catalog/{ids[4]}~0" in exc.value.message
    # An authentic entry copied under another snapshot's name does not authenticate there.
    (store.path / "catalog" / f"{ids[2]}~0").write_bytes((store.path / "catalog" / f"{ids[0]}~0").read_bytes())
    other_machine = Catalog(_reopen(store, tmp_path, use_cache=False))
    assert ids[2] not in [e["id"] for e in other_machine.entries()]
    assert f"catalog/{ids[2]}~0" in [d.name for d in other_machine.damaged]
    # Another store's key does not authenticate these entries either.
    stranger = Store(store.path, use_cache=False)
    stranger._keys = crypto.Keys.from_master(os.urandom(32))
    c = Catalog(stranger)
    assert c.entries() == [] and len(c.damaged) == 5
    assert all("another master key" in d.reason for d in c.damaged), c.damaged


@pytest.mark.parametrize("how", ["hand-edited", "flipped", "other key", "truncated"])
def test_local_catalog_cache_is_rebuilt_never_believed_and_never_in_the_store(store, tmp_path, how):
    cat = Catalog(store)
    for i in range(4):
        cat.add(_entry(i), DIGEST)
    truth = Catalog(_reopen(store, tmp_path)).entries()  # builds the cache
    path = cache.store_dir(store.id) / "catalog"
    assert path.exists() and cache.read_sealed(store.keys, path, "catalog") is not None
    # The cache is sealed under the store's cache key: nothing readable there either.
    assert b"snapshot number" not in path.read_bytes()
    forged = [{**e, "message": "forged", "commit": "f" * 40} for e in truth]
    if how == "hand-edited":  # what a hand edit would write: plain JSON with other entries
        docs = {f"catalog/{e['id']}~0": [(store.path / "catalog" / f"{e['id']}~0").stat().st_size,
                                         {"id": e["id"], "rev": 0, "manifest": "00" * 32, "entry": e}]
                for e in forged}
        path.write_text(json.dumps({"docs": docs, "high": {}}))
    elif how == "flipped":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    elif how == "other key":  # well sealed, but not under this store's key
        other = crypto.Keys.from_master(os.urandom(32))
        docs = {f"catalog/{e['id']}~0": [(store.path / "catalog" / f"{e['id']}~0").stat().st_size,
                                         {"id": e["id"], "rev": 0, "manifest": "00" * 32, "entry": e}]
                for e in forged}
        assert cache.write_sealed(other, path, "catalog", json.dumps({"docs": docs, "high": {}}).encode())
    else:
        path.write_bytes(path.read_bytes()[:40])
    again = Catalog(_reopen(store, tmp_path))
    assert again.entries() == truth and again.damaged == []
    assert again.manifest_digest(truth[0]["id"]) == DIGEST
    # ... and the cache was rebuilt from the store, under this store's key.
    rebuilt = json.loads(cache.read_sealed(store.keys, path, "catalog"))
    assert sorted(rebuilt["docs"]) == sorted(f"catalog/{e['id']}~0" for e in truth)
    assert all(doc[1]["entry"] in truth for doc in rebuilt["docs"].values())
    # The store holds no cache of any kind: catalog entries, and nothing beside them.
    assert _catalog_objects(store) == sorted(f"catalog/{e['id']}~0" for e in truth)
    assert not [p for p in store_files(store.path) if "cache" in p.name or p.name.endswith(".json")
                and p.parent.name != "keys"]


# ---------------------------------------------------------------------------- delta chunks and failed writes


def test_delta_chunks_round_trip_along_a_chain(store, tmp_path):
    rnd = random.Random(21)
    blocks = [bytearray(rnd.randbytes(65536)) for _ in range(40)]
    history = []
    base = None
    for gen in range(8):  # longer than the maximum delta depth
        for b in blocks[::3]:
            pos = rnd.randrange(0, 65536 - 64)
            b[pos : pos + 64] = rnd.randbytes(64)
        data = b"".join(bytes(b) for b in blocks)
        w = _reopen(store, tmp_path).writer()
        r = w.write_layer("database", "fixed:65536", [data], base=base)
        sid, _digest = w.commit(lambda a, gen=gen: f"s{gen}", {})
        if gen:
            assert r.new_chunks == 14
        if gen:
            # 14 changed blocks of 64 KiB each, stored as small deltas against the previous
            # snapshot's blocks; at gen 6 the chains reached their cap (5) and restart from
            # their full chunks, so those deltas hold six edits: still small.
            assert r.stored_bytes < 14 * 65536 // 4, (gen, r.stored_bytes)
            fresh = _reopen(store, tmp_path)
            depths = {fresh.lookup(c).depth for c in fresh.load_manifest(sid).chunk_ids("database")}
            assert max(depths) == (gen if gen <= 5 else gen - 5), (gen, depths)  # restarted at gen 6
        history.append((sid, data))
        base = _reopen(store, tmp_path).load_manifest(sid)
    fresh = _reopen(store, tmp_path)
    for sid, data in history:
        assert b"".join(fresh.read_layer(fresh.load_manifest(sid), "database")) == data


def test_damaged_delta_base_is_an_integrity_error_for_the_dependent_snapshot(store, tmp_path):
    rnd = random.Random(22)
    data = bytearray(rnd.randbytes(65536 * 4))
    _write_snapshot(store, "s1", {"database": ("fixed:65536", bytes(data))})
    base = _reopen(store, tmp_path).load_manifest("s1")
    data[100:110] = b"0123456789"
    w = _reopen(store, tmp_path).writer()
    r = w.write_layer("database", "fixed:65536", [bytes(data)], base=base)
    w.commit(lambda a: "s2", {})
    assert r.new_chunks == 1 and r.stored_bytes < 2000  # one delta
    # Damage the first block of s1 (the base of s2's only new chunk) inside its ciphertext.
    s = _reopen(store, tmp_path)
    first = next(s.load_manifest("s1").chunk_ids("database"))
    loc = s.lookup(first)
    assert loc.depth == 0 and loc.base is None
    pack = store.path / "packs" / loc.pack.hex()[:2] / loc.pack.hex()
    raw = bytearray(pack.read_bytes())
    raw[loc.offset + loc.length // 2] ^= 0x01
    pack.write_bytes(bytes(raw))
    s = _reopen(store, tmp_path)
    for sid in ("s1", "s2"):
        with pytest.raises(IntegrityError):
            b"".join(s.read_layer(s.load_manifest(sid), "database"))


@pytest.mark.parametrize("failure", ["pack upload fails", "writer abandoned"])
def test_failed_write_leaves_no_phantom_chunks(store, tmp_path, monkeypatch, failure):
    data = random.Random(23).randbytes(3 * 1024 * 1024)
    w = store.writer()
    if failure == "pack upload fails":
        def put_file(name, path):
            raise BackendError(f"no space left on the store's disk while writing {name}")

        monkeypatch.setattr(store.backend, "put_file", put_file)
        with pytest.raises(BackendError):
            w.write_layer("database", "fixed:65536", [data])
            w.commit(lambda a: "s1", {})
        monkeypatch.undo()
    else:
        w.write_layer("database", "fixed:65536", [data])  # e.g. the code layer then fails: no commit
        # Packs are written into this process's private scratch folder, never into the store.
        assert list(store.scratch().glob("pack-*"))
    w.abort()
    for folder in ("packs", "index", "manifests", "tmp"):  # nothing reached the store
        assert not [p for p in (store.path / folder).rglob("*") if p.is_file()], folder
    assert not list(store.scratch().glob("pack-*"))  # the temp packs are gone
    # The same process (a long-running app using the Python API) tries again.
    w2 = store.writer()
    r = w2.write_layer("database", "fixed:65536", [data])
    w2.commit(lambda a: "s2", {})
    s = _reopen(store, tmp_path)
    assert b"".join(s.read_layer(s.load_manifest("s2"), "database")) == data
    assert r.new_chunks == r.chunks


def test_index_records_and_pack_trailers_name_each_delta_base(store, tmp_path):
    """docs/format.md: index records are 96 bytes with the base id; trailer records 77 bytes with it.

    Parsed here from the bytes, independently of snapkit's readers (only the AEAD is shared)."""
    import struct

    import zstandard

    rnd = random.Random(24)
    data = bytearray(rnd.randbytes(65536 * 3))
    _write_snapshot(store, "s1", {"database": ("fixed:65536", bytes(data))})
    data[65536 + 100 : 65536 + 110] = b"0123456789"  # the middle block changes: a delta against s1's
    s = _reopen(store, tmp_path)
    w = s.writer()
    w.write_layer("database", "fixed:65536", [bytes(data)], base=s.load_manifest("s1"))
    w.commit(lambda a: "s2", {})
    s = _reopen(store, tmp_path, use_cache=False)
    old = list(s.load_manifest("s1").chunk_ids("database"))
    new = list(s.load_manifest("s2").chunk_ids("database"))
    assert new[0] == old[0] and new[2] == old[2] and new[1] != old[1]

    index = {}  # chunk id -> (pack id, offset, length, size, depth, base)
    for p in sorted((store.path / "index").iterdir()):
        name = f"index/{p.name}"
        payload = objects.open_sealed(s.keys, objects.INDEX, name, p.read_bytes())
        # codec 1, a zstd frame (codec 0, raw, when zstd does not help: a few random ids)
        assert payload[0] in (0, 1)
        records = payload[1:] if payload[0] == 0 else \
            zstandard.ZstdDecompressor().decompressobj().decompress(payload[1:])
        assert len(records) % 96 == 0 and len(records) // 96 in (1, 3)
        ids = [records[o : o + 32] for o in range(0, len(records), 96)]
        assert ids == sorted(ids)
        for o in range(0, len(records), 96):
            cid, pack, off, length, size, depth, pad, base = struct.unpack(">32s16sIIIB3s32s", records[o : o + 96])
            assert pad == bytes(3) and (base == bytes(32)) == (depth == 0)
            index[cid] = (pack, off, length, size, depth, base)
    assert index[old[1]][4] == 0
    assert index[new[1]][4] == 1 and index[new[1]][5] == old[1]  # s2's changed block names its base
    # The pack trailers say the same, record for record.
    trailer = {}
    for p in sorted(p for p in (store.path / "packs").rglob("*") if p.is_file()):
        name = str(p.relative_to(store.path))
        raw = p.read_bytes()
        header = objects.parse_header(raw, objects.PACK, name)
        key = objects.object_key(s.keys, header, name)
        (n,) = struct.unpack(">I", raw[-4:])
        plain = key.open(b"trailer" + raw[:75] + name.encode(), raw[-4 - n : -4])
        assert len(plain) % 77 == 0
        for o in range(0, len(plain), 77):
            cid, off, length, size, depth, base = struct.unpack(">32sIIIB32s", plain[o : o + 77])
            trailer[cid] = (bytes.fromhex(p.name), off, length, size, depth, base)
            # Each chunk blob opens under the pack's data key with its id as associated data; a delta's
            # payload (codec 2 or 3) starts with the base id its records name.
            payload = key.open(cid, raw[off : off + length])
            if depth:
                assert payload[0] in (2, 3) and payload[1:33] == base
            else:
                assert payload[0] in (0, 1)
    assert trailer == index
