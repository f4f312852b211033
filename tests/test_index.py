"""The chunk index cache (snapkit/store/index.py): records, sync, add, damage, merging."""

from __future__ import annotations

import multiprocessing
import os
import random
import shutil
import stat

import pytest

from snapkit.store.index import (RECORD, ChunkIndex, Location, check_records, pack_record,
                                 sort_records, unpack_record)
from snapkit.store.index_runs import merge_count

KEY = b"k" * 32


def make_object(seed: int, n: int) -> bytes:
    """n sorted records with random ids; every third one a delta chunk."""
    rng = random.Random(seed)
    recs = []
    for i in range(n):
        depth = i % 3 == 0 and 1 + i % 5 or 0
        recs.append(pack_record(rng.randbytes(32), rng.randbytes(16), i * 100, 50 + i, 4096, depth,
                                rng.randbytes(32) if depth else None))
    return sort_records(b"".join(recs))


def objects(count: int, n: int = 40, seed: int = 0) -> dict[str, bytes]:
    return {f"index/{seed:04d}{i:028x}": make_object(seed * 1000 + i, n) for i in range(count)}


class Fetcher:
    """fetch() over a dict of objects, counting calls."""

    def __init__(self, objs: dict[str, bytes]):
        self.objs, self.calls = objs, []

    def __call__(self, name: str) -> bytes:
        self.calls.append(name)
        return self.objs[name]


def records_of(objs) -> list[bytes]:
    return [data[i : i + 96] for data in objs.values() for i in range(0, len(data), 96)]


def assert_finds(index: ChunkIndex, objs: dict[str, bytes]) -> None:
    for rec in records_of(objs):
        cid, loc = unpack_record(rec)
        assert index.lookup(cid) == loc
        assert cid in index


def assert_misses(index: ChunkIndex, objs: dict[str, bytes]) -> None:
    for rec in records_of(objs):
        assert index.lookup(rec[:32]) is None
        assert rec[:32] not in index


def run_files(folder):
    return sorted(p for p in folder.iterdir() if p.name.startswith("run-"))


# ---- records -------------------------------------------------------------------


def test_record_round_trip_and_checks():
    cid, pack, base = os.urandom(32), os.urandom(16), os.urandom(32)
    rec = pack_record(cid, pack, 7, 8, 9, 2, base)
    assert len(rec) == RECORD.size == 96
    assert unpack_record(rec) == (cid, Location(pack, 7, 8, 9, 2, base))
    full = pack_record(cid, pack, 1, 2, 3, 0, None)
    assert full[64:] == bytes(32) and unpack_record(full)[1].base is None
    with pytest.raises(ValueError):
        pack_record(cid, pack, 1, 2, 3, 1, None)  # a delta needs its base
    with pytest.raises(ValueError):
        pack_record(cid, pack, 2**32, 2, 3, 0, None)
    with pytest.raises(ValueError):
        pack_record(cid[:31], pack, 1, 2, 3, 0, None)
    data = make_object(1, 50)
    check_records(data)
    check_records(b"")
    assert sort_records(data[96:] + data[:96]) == data
    with pytest.raises(ValueError):
        check_records(data[:-1])
    with pytest.raises(ValueError):
        check_records(data[96:192] + data[:96])
    padded = bytearray(data)
    padded[61] = 1
    with pytest.raises(ValueError):
        check_records(bytes(padded))


def test_merge_policy_is_geometric_and_capped():
    assert merge_count([1001, 1950001]) == 0
    assert merge_count([1, 1]) == 2
    assert merge_count([1, 1, 2]) == 3
    assert merge_count([1, 2, 8, 30]) == 0
    assert merge_count([2 ** i for i in range(1, 12)], factor=1) == 4  # 11 runs capped to 8


# ---- sync and lookups -------------------------------------------------------------


def test_lookup_hits_misses_and_iter_records(tmp_path):
    objs = objects(5)
    index = ChunkIndex(tmp_path / "cache", KEY)
    fetch = Fetcher(objs)
    index.sync(list(objs), fetch)
    assert sorted(fetch.calls) == sorted(objs)
    assert len(index) == 5 * 40
    assert_finds(index, objs)
    assert_misses(index, objects(3, seed=9))
    assert index.lookup(b"short") is None
    recs = list(index.iter_records())
    assert recs == sorted(records_of(objs))
    index.close()


def test_cache_is_private(tmp_path):
    folder = tmp_path / "cache"
    objs = objects(2)
    with ChunkIndex(folder, KEY) as index:
        index.sync(list(objs), Fetcher(objs))
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for path in folder.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path


def test_sync_adds_new_drops_removed_and_fetches_nothing_when_unchanged(tmp_path):
    folder = tmp_path / "cache"
    objs = objects(6)
    names = list(objs)
    with ChunkIndex(folder, KEY) as index:
        index.sync(names[:4], Fetcher(objs))
    with ChunkIndex(folder, KEY) as index:
        fetch = Fetcher(objs)
        index.sync(names[:4], fetch)
        assert fetch.calls == []
        index.sync(names, fetch)  # two new objects
        assert sorted(fetch.calls) == sorted(names[4:])
        assert_finds(index, objs)
    # Prune removed object 1 (and merged 2 and 3 into a new object 6).
    merged = sort_records(objs[names[2]] + objs[names[3]])
    now = {n: objs[n] for n in (names[0], names[4], names[5])} | {"index/merged": merged}
    with ChunkIndex(folder, KEY) as index:
        fetch = Fetcher(now)
        index.sync(list(now), fetch)
        # The one run covered object 1 too: dropped, and what still exists fetched again.
        assert sorted(fetch.calls) == sorted(now)
        assert_finds(index, now)
        assert_misses(index, {names[1]: objs[names[1]]})
        assert len(index) == sum(len(d) for d in now.values()) // 96
    with ChunkIndex(folder, KEY) as index:
        fetch = Fetcher(now)
        index.sync(list(now), fetch)
        assert fetch.calls == []
        index.sync([], fetch)
        assert len(index) == 0 and run_files(folder) == []


def test_empty_objects_are_covered_too(tmp_path):
    objs = objects(2) | {"index/empty": b""}
    with ChunkIndex(tmp_path / "cache", KEY) as index:
        index.sync(list(objs), Fetcher(objs))
        index.add("index/empty2", b"")
        assert len(index) == 80
    with ChunkIndex(tmp_path / "cache", KEY) as index:
        fetch = Fetcher(objs)
        index.sync(list(objs) + ["index/empty2"], fetch)
        assert fetch.calls == []
        assert_finds(index, objs)


def test_fetch_error_propagates_and_keeps_what_was_fetched(tmp_path):
    folder = tmp_path / "cache"
    objs = objects(4)
    a, b, c, d = list(objs)
    with ChunkIndex(folder, KEY) as index:
        index.sync([a], Fetcher(objs))
        bad = dict(objs)
        bad[c] = objs[c][96:] + objs[c][:96]  # unsorted
        with pytest.raises(ValueError):
            index.sync([a, b, c, d], Fetcher(bad))
        with pytest.raises(KeyError):
            index.sync([a, b, c, d], Fetcher({}))  # nothing fetched twice: c is next
        fetch = Fetcher(objs)
        index.sync([a, b, d], fetch)  # the caller retries without the damaged object
        assert fetch.calls == [d]
        assert_finds(index, {k: objs[k] for k in (a, b, d)})
        assert_misses(index, {c: objs[c]})
    with ChunkIndex(folder, KEY) as index:
        fetch = Fetcher(objs)
        index.sync([a, b, d], fetch)
        assert fetch.calls == []


def test_add_is_visible_at_once_and_after_reopening(tmp_path):
    folder = tmp_path / "cache"
    objs = objects(3)
    names = list(objs)
    with ChunkIndex(folder, KEY) as index:
        index.sync(names[:2], Fetcher(objs))
        new = {names[2]: objs[names[2]]}
        assert_misses(index, new)
        index.add(names[2], objs[names[2]])
        assert_finds(index, objs)
        index.add(names[2], objs[names[2]])  # again: no duplicate records
        assert len(index) == 3 * 40
    with ChunkIndex(folder, KEY) as index:
        fetch = Fetcher(objs)
        index.sync(names, fetch)
        assert fetch.calls == []
        assert_finds(index, objs)


def test_many_adds_keep_runs_bounded(tmp_path):
    folder = tmp_path / "cache"
    base = objects(1, n=3000)
    added = objects(50, n=20, seed=1)
    with ChunkIndex(folder, KEY) as index:
        index.sync(list(base), Fetcher(base))
        for name, data in added.items():
            index.add(name, data)
            assert len(run_files(folder)) <= 8
        assert_finds(index, base | added)
        assert list(index.iter_records()) == sorted(records_of(base | added))
    with ChunkIndex(folder, KEY) as index:
        fetch = Fetcher(base | added)
        index.sync(list(base | added), fetch)
        assert fetch.calls == [] and len(index) == 3000 + 50 * 20


def test_duplicate_chunk_ids_are_all_kept(tmp_path):
    objs = objects(2, n=10)
    a, b = list(objs)
    other = bytearray(objs[a])  # the same chunks, stored again in another pack
    for off in range(0, len(other), 96):
        other[off + 32 : off + 48] = b"\xff" * 16
    objs[b] = bytes(other)
    with ChunkIndex(tmp_path / "cache", KEY) as index:
        index.sync([a], Fetcher(objs))
        index.add(b, objs[b])
        assert len(index) == 20
        recs = list(index.iter_records())
        assert recs == sorted(records_of(objs))
        for rec in records_of({a: objs[a]}):
            assert index.lookup(rec[:32]).pack in (rec[32:48], b"\xff" * 16)


# ---- damage ----------------------------------------------------------------------


def damaged_setup(tmp_path, damage):
    folder = tmp_path / "cache"
    objs = objects(4)
    with ChunkIndex(folder, KEY) as index:
        index.sync(list(objs), Fetcher(objs))
    (run,) = run_files(folder)
    damage(run)
    return folder, objs, run


@pytest.mark.parametrize("damage", [
    lambda p: p.write_bytes(p.read_bytes()[:-200] + bytes([p.read_bytes()[-200] ^ 1])
                            + p.read_bytes()[-199:]),
    lambda p: p.write_bytes(p.read_bytes()[:-100]),
    lambda p: p.write_bytes(p.read_bytes()[:10]),
    lambda p: p.write_bytes(b""),
    lambda p: p.unlink(),
], ids=["flipped-byte", "truncated", "header-only", "empty", "missing"])
def test_damaged_run_is_rebuilt_from_the_store(tmp_path, damage):
    folder, objs, run = damaged_setup(tmp_path, damage)
    with ChunkIndex(folder, KEY) as index:
        fetch = Fetcher(objs)
        index.sync(list(objs), fetch)
        assert sorted(fetch.calls) == sorted(objs)
        assert_finds(index, objs)
        assert not run.exists()
    with ChunkIndex(folder, KEY) as index:
        fetch = Fetcher(objs)
        index.sync(list(objs), fetch)
        assert fetch.calls == []


def test_damaged_manifest_or_wrong_key_rebuilds(tmp_path):
    folder = tmp_path / "cache"
    objs = objects(3)
    with ChunkIndex(folder, KEY) as index:
        index.sync(list(objs), Fetcher(objs))
    with ChunkIndex(folder, b"x" * 32) as index:
        fetch = Fetcher(objs)
        index.sync(list(objs), fetch)
        assert sorted(fetch.calls) == sorted(objs)
        assert_finds(index, objs)
    manifest = folder / "manifest"
    manifest.write_bytes(manifest.read_bytes().replace(b"run ", b"run  ", 1))
    with ChunkIndex(folder, b"x" * 32) as index:
        fetch = Fetcher(objs)
        index.sync(list(objs), fetch)
        assert sorted(fetch.calls) == sorted(objs)
        assert_finds(index, objs)
        assert len(run_files(folder)) == 1


def test_a_run_cannot_be_swapped_for_another_valid_one(tmp_path):
    folder = tmp_path / "cache"
    objs = objects(2)
    a, b = list(objs)
    with ChunkIndex(folder, KEY) as index:
        index.sync([a], Fetcher(objs))
    (run_a,) = run_files(folder)
    saved = run_a.read_bytes()
    with ChunkIndex(folder, KEY) as index:
        index.sync([b], Fetcher(objs))  # drops a's run, writes b's
    (run_b,) = run_files(folder)
    run_b.write_bytes(saved)  # a validly MACed run, but not the one the manifest names
    with ChunkIndex(folder, KEY) as index:
        fetch = Fetcher(objs)
        index.sync([b], fetch)
        assert fetch.calls == [b]
        assert_misses(index, {a: objs[a]})
        assert_finds(index, {b: objs[b]})


# ---- no usable folder ------------------------------------------------------------------


def test_no_folder_or_unwritable_folder_works(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    objs = objects(3)
    for folder in (None, tmp_path / "file" / "index"):
        index = ChunkIndex(folder, KEY)
        index.sync(list(objs)[:2], Fetcher(objs))
        index.add(list(objs)[2], objs[list(objs)[2]])
        assert_finds(index, objs)
        temp = index._folder
        assert temp.exists() and temp != folder
        index.close()
        assert not temp.exists()


def test_cache_folder_failing_later_falls_back_to_a_temp_folder(tmp_path):
    folder = tmp_path / "cache"
    objs = objects(3)
    a, b, c = list(objs)
    index = ChunkIndex(folder, KEY)
    index.sync([a, b], Fetcher(objs))
    shutil.rmtree(folder)
    folder.write_text("the cache folder is gone")  # nothing can be written there any more
    index.add(c, objs[c])
    assert_finds(index, objs)
    fetch = Fetcher(objs)
    index.sync([a, b, c], fetch)
    assert fetch.calls == []
    index.close()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_folder_works(tmp_path):
    folder = tmp_path / "cache"
    folder.mkdir()
    folder.chmod(0o500)
    objs = objects(2)
    try:
        with ChunkIndex(folder, KEY) as index:
            index.sync(list(objs), Fetcher(objs))
            assert_finds(index, objs)
    finally:
        folder.chmod(0o700)


# ---- two processes ---------------------------------------------------------------------


def _child_sync(folder, seed, barrier):
    objs = objects(12) | objects(4, seed=7 + seed)
    with ChunkIndex(folder, KEY) as index:
        barrier.wait()
        index.sync(list(objects(12)), Fetcher(objs))
        barrier.wait()  # both have listed the store before either adds (no stale listing)
        for name, data in objects(4, seed=7 + seed).items():
            index.add(name, data)
        assert_finds(index, objs)


def test_two_processes_syncing_one_folder_end_consistent(tmp_path):
    folder = tmp_path / "cache"
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods()
                                      else "spawn")
    barrier = ctx.Barrier(2, timeout=20)
    procs = [ctx.Process(target=_child_sync, args=(folder, seed, barrier)) for seed in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0]
    every = objects(12) | objects(4, seed=8) | objects(4, seed=9)
    with ChunkIndex(folder, KEY) as index:
        fetch = Fetcher(every)
        index.sync(list(every), fetch)
        assert fetch.calls == []  # both processes' objects are cached, each exactly once
        assert len(index) == 20 * 40
        assert list(index.iter_records()) == sorted(records_of(every))
    assert not [p for p in folder.iterdir() if p.name.startswith("tmp-")]


def test_own_adds_survive_a_sync_from_a_stale_listing(tmp_path):
    folder = tmp_path / "cache"
    objs = objects(4)
    a, b, c, d = list(objs)
    writer, other = ChunkIndex(folder, KEY), ChunkIndex(folder, KEY)
    writer.sync([a], Fetcher(objs))
    writer.add(b, objs[b])
    other.sync([a], Fetcher(objs))  # listed the store before b existed: drops b
    writer.add(c, objs[c])
    assert_finds(writer, {k: objs[k] for k in (a, b, c)})
    fetch = Fetcher(objs)
    other.sync([a, b, c, d], fetch)
    assert fetch.calls == [d]
    writer.sync([a, c], Fetcher(objs))  # pruned b: gone for the writer too
    writer.add(d, objs[d])
    assert_misses(writer, {b: objs[b]})
    writer.close()
    other.close()


# ---- scale smoke -------------------------------------------------------------------------


def test_scale_smoke_opens_fast(tmp_path):
    from benchmarks.index_scale import build_in_subprocess, measure_in_subprocess

    built = build_in_subprocess(tmp_path, 50_000)
    assert built["records"] == 50_000 and built["runs"] <= 8
    got = measure_in_subprocess(tmp_path)
    assert got["fetched"] == 0 and got["false_hits"] == 0
    assert got["hits_found"] == "5000/5000"
    assert got["open_sync_s"] < 1.0
