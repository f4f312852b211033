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

from snapkit.catalog import Catalog
from snapkit.errors import IntegrityError, StoreFormatError
from snapkit.store import backend as backend_mod
from snapkit.store import crypto, keys, objects
from snapkit.store.backend import LocalBackend
from snapkit.store.chunker import make_chunker
from snapkit.store.repository import Store


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
    k = crypto.Keys.from_master(os.urandom(32))
    for plain in (b"", b"x", os.urandom(100_000)):
        blob = k.seal(b"packs/ab/cd", plain)
        if len(plain) > 16:
            assert plain[:64] not in blob
        assert k.open(b"packs/ab/cd", blob) == plain
        assert k.open(b"packs/ab/cd", memoryview(blob)) == plain
        with pytest.raises(crypto.AuthenticationFailed):
            k.open(b"packs/ab/ce", blob)
    blob = bytearray(k.seal(b"aad", b"hello world" * 10))
    for pos in (0, len(blob) // 2, len(blob) - 1):  # nonce, ciphertext, tag
        bad = bytearray(blob)
        bad[pos] ^= 0x01
        with pytest.raises(crypto.AuthenticationFailed):
            k.open(b"aad", bytes(bad))
    other = crypto.Keys.from_master(os.urandom(32))
    with pytest.raises(crypto.AuthenticationFailed):
        other.open(b"aad", bytes(blob))


def test_seal_uses_a_fresh_nonce_and_chunk_ids_are_keyed():
    k = crypto.Keys.from_master(os.urandom(32))
    assert k.seal(b"a", b"same") != k.seal(b"a", b"same")
    other = crypto.Keys.from_master(os.urandom(32))
    assert k.chunk_id(b"data") == k.chunk_id(b"data")
    assert k.chunk_id(b"data") != other.chunk_id(b"data")
    assert k.chunk_id(b"data") != hashlib.sha256(b"data").digest()


def test_keys_repr_does_not_leak():
    master = os.urandom(32)
    k = crypto.Keys.from_master(master)
    for text in (repr(k), str(k), f"{k}", f"{k!r}", repr([k]), repr({"k": k})):
        for secret in (master, k.enc, k.id, k.mac):
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


def _reopen(store: Store, tmp_path: Path) -> Store:
    s = Store(store.path)
    s.unlock(keys.KeySource(key_file=tmp_path / "cfg" / "k.key"))
    return s


def _write_snapshot(store: Store, sid: str, layers: dict[str, tuple[str, bytes]], piece: int = 100_000) -> tuple[str, dict]:
    w = store.writer()
    results = {}
    for name, (strategy, data) in layers.items():
        results[name] = w.write_layer(name, strategy,
                                      (data[i : i + piece] for i in range(0, len(data), piece)))
    got = w.commit(lambda attempt: sid if attempt == 0 else f"{sid}.{attempt}", {"note": "test"})
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
    with pytest.raises(StoreFormatError):
        _reopen(store, tmp_path).index()


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
    cfg["format"] = 99
    (store.path / "config").write_text(json.dumps(cfg))
    with pytest.raises(StoreFormatError) as exc:
        Store(store.path)
    assert "99" in exc.value.message and exc.value.exit_code == 1


def test_store_files_are_private(tmp_path, umask_022):
    s = Store.init(tmp_path / "store", tmp_path / "cfg" / "k.key", "pw")
    _write_snapshot(s, "s1", {"database": ("fixed:4096", os.urandom(50000))})
    for p in [s.path, *store_files(s.path)]:
        assert stat.S_IMODE(p.stat().st_mode) == (0o700 if p.is_dir() else 0o600), p
    assert stat.S_IMODE((tmp_path / "cfg" / "k.key").stat().st_mode) == 0o600


# ---------------------------------------------------------------------------- catalog


def _entry(i: int) -> dict:
    return {"id": f"2026{i:08d}T000000Z-abcdef0", "commit": f"{i:040x}", "branch": "main",
            "message": f"snapshot number {i}", "created_at": "2026-01-01T00:00:00Z", "env": "default",
            "tags": ["nightly"] if i % 10 == 0 else [], "pinned": i % 1000 == 0, "safety": False,
            "dirty": False, "engine": "sqlite", "logical_bytes": 1000 + i, "stored_bytes": i,
            "layers": {"database": {"logical_bytes": 1000 + i, "stored_bytes": i}}}


def test_catalog_with_10000_entries_lists_fast_when_warm(tmp_path, monkeypatch):
    be = LocalBackend(tmp_path / "store")
    be.mkdir()
    be.mkdir("catalog")
    k = crypto.Keys.from_master(os.urandom(32))
    cat = Catalog(be)
    # Durability of each entry is not what this test measures: skip the fsyncs while filling the store.
    monkeypatch.setattr(backend_mod.os, "fsync", lambda fd: None)
    order = list(range(10_000))
    random.Random(7).shuffle(order)
    for i in order:
        cat.write(_entry(i), k)
    monkeypatch.undo()
    first = Catalog(be).entries()  # cold: builds the cache
    assert len(first) == 10_000
    t0 = time.perf_counter()
    warm = Catalog(be).entries()
    elapsed = time.perf_counter() - t0
    assert elapsed < 0.5, f"warm Catalog.entries() took {elapsed:.3f}s"
    assert warm == first
    assert [e["id"] for e in warm] == sorted(e["id"] for e in warm)
    assert warm[0] == _entry(0) and warm[-1] == _entry(9999)
    assert Catalog(be).check(k) == []


def test_catalog_cache_follows_changes_and_macs_are_checked(tmp_path):
    be = LocalBackend(tmp_path / "store")
    k = crypto.Keys.from_master(os.urandom(32))
    cat = Catalog(be)
    for i in range(5):
        cat.write(_entry(i), k)
    assert len(Catalog(be).entries()) == 5
    cat.delete(_entry(2)["id"])
    changed = _entry(3)
    changed["tags"] = ["golden"]
    cat.write(changed, k)
    fresh = Catalog(be)
    assert [e["id"] for e in fresh.entries()] == [_entry(i)["id"] for i in (0, 1, 3, 4)]
    assert fresh.get(changed["id"])["tags"] == ["golden"]
    assert fresh.authenticated(changed["id"], k) == changed
    # Alter an entry's message behind the catalog's back: the MAC catches it.
    path = be.path(f"catalog/{_entry(4)['id']}.json")
    doc = json.loads(path.read_text())
    doc["entry"]["message"] = "snapshot number 5"
    path.write_text(json.dumps(doc, sort_keys=True))
    assert Catalog(be).check(k) == [f"catalog/{_entry(4)['id']}.json"]
    with pytest.raises(IntegrityError):
        Catalog(be).authenticated(_entry(4)["id"], k)
    # Another store's key does not authenticate these entries either.
    with pytest.raises(IntegrityError):
        Catalog(be).authenticated(_entry(0)["id"], crypto.Keys.from_master(os.urandom(32)))


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
        sid = w.commit(lambda a, gen=gen: f"s{gen}", {})
        if gen:
            assert r.new_chunks == 14
        if gen:
            # 14 changed blocks of 64 KiB each, stored as small deltas against the previous
            # snapshot's blocks; at gen 6 the chains reached their cap (5) and restart from
            # their full chunks, so those deltas hold six edits: still small.
            assert r.stored_bytes < 14 * 65536 // 4, (gen, r.stored_bytes)
            depths = {fresh_depth for fresh_depth in (_reopen(store, tmp_path).lookup(c)[4]
                                                      for c in _reopen(store, tmp_path).load_manifest(sid)
                                                      .chunk_ids("database"))}
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
    pack_id, off, length, _size, depth = s.lookup(first)
    assert depth == 0
    pack = store.path / "packs" / pack_id.hex()[:2] / pack_id.hex()
    raw = bytearray(pack.read_bytes())
    raw[off + length // 2] ^= 0x01
    pack.write_bytes(bytes(raw))
    s = _reopen(store, tmp_path)
    for sid in ("s1", "s2"):
        with pytest.raises(IntegrityError):
            b"".join(s.read_layer(s.load_manifest(sid), "database"))


@pytest.mark.parametrize("failure", ["pack write fails", "writer abandoned"])
def test_failed_write_leaves_no_phantom_chunks(store, tmp_path, monkeypatch, failure):
    data = random.Random(23).randbytes(3 * 1024 * 1024)
    w = store.writer()
    if failure == "pack write fails":
        def publish(temps):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(store.backend, "publish", publish)
        with pytest.raises(OSError):
            w.write_layer("database", "fixed:65536", [data])
            w.commit(lambda a: "s1", {})
        monkeypatch.undo()
    else:
        w.write_layer("database", "fixed:65536", [data])  # e.g. the code layer then fails: no commit
    w.abort()
    assert not [p for p in (store.path / "packs").rglob("*") if p.is_file()]  # temp packs are gone
    # The same process (a long-running app using the Python API) tries again.
    w2 = store.writer()
    r = w2.write_layer("database", "fixed:65536", [data])
    w2.commit(lambda a: "s2", {})
    s = _reopen(store, tmp_path)
    assert b"".join(s.read_layer(s.load_manifest("s2"), "database")) == data
    assert r.new_chunks == r.chunks
