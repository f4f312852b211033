"""The contract every backend keeps (see `snapkit/backends/base.py`).

A backend's test module subclasses `BackendContract` as `Test<Name>` and
provides two fixtures:
- `backend`: a fresh, empty, writable backend;
- `make_read_only`: a function taking that backend (with objects in it) and
  returning a backend over the same objects whose writes are refused the way
  that backend's real read-only case refuses them.
(The pattern of restic's backend/test and litestream's replica client tests.)
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from snapkit.backends.base import AlreadyExists, BackendError, NotFound, ObjectInfo, ReadOnlyStore

INVALID_NAMES = ["../x", "/abs", "a//b", ".tmp-x", "packs/.tmp-x", "a/../b", "a/./b", "", "a/"]


def infos(*pairs: tuple[str, int]) -> list[ObjectInfo]:
    return [ObjectInfo(n, s) for n, s in pairs]


class BackendContract:
    # ---- round trips -------------------------------------------------------

    def test_put_get_round_trip(self, backend):
        backend.put("config", b"{}")
        backend.put("packs/ab/abcdef", b"\x00\x01pack")
        assert backend.get("config") == b"{}"
        assert backend.get("packs/ab/abcdef") == b"\x00\x01pack"
        assert backend.stat("packs/ab/abcdef") == ObjectInfo("packs/ab/abcdef", 6)

    def test_put_overwrites(self, backend):
        backend.put("index/a", b"old contents")
        backend.put("index/a", b"new")
        assert backend.get("index/a") == b"new"
        assert backend.stat("index/a").size == 3
        assert backend.list("index") == infos(("index/a", 3))

    def test_version_changes_when_an_object_is_replaced_by_one_of_the_same_size(self, backend):
        # The catalog cache trusts an entry it authenticated only while (size, version)
        # is unchanged: a same-size replacement must show in the version.
        backend.put("catalog/a~0", b"first")
        before = backend.stat("catalog/a~0").version
        assert before and backend.list("catalog")[0].version == before
        time.sleep(0.02)  # a later replacement (a local file's ctime ticks every few ms)
        backend.delete("catalog/a~0")
        backend.put_new("catalog/a~0", b"other")
        after = backend.stat("catalog/a~0")
        assert after.size == 5 and after.version and after.version != before
        assert backend.list("catalog")[0].version == after.version

    def test_empty_object_round_trip(self, backend):
        backend.put("locks/empty", b"")
        assert backend.get("locks/empty") == b""
        assert backend.get_range("locks/empty", 0, 10) == b""
        assert backend.stat("locks/empty").size == 0
        assert backend.list("locks") == infos(("locks/empty", 0))

    def test_large_object_round_trip(self, backend):
        data = os.urandom(4 << 20) + b"tail"
        backend.put_new("packs/ff/big", data)
        assert backend.get("packs/ff/big") == data
        assert backend.stat("packs/ff/big").size == len(data)
        mib = 1 << 20
        assert backend.get_range("packs/ff/big", mib - 3, mib) == data[mib - 3:2 * mib - 3]
        assert backend.get_range("packs/ff/big", len(data) - 10, 100) == data[-10:]

    # ---- put_new -----------------------------------------------------------

    def test_put_new_refuses_an_existing_name_and_keeps_the_old_bytes(self, backend):
        backend.put_new("manifests/s1", b"first")
        with pytest.raises(AlreadyExists) as e:
            backend.put_new("manifests/s1", b"second")
        assert isinstance(e.value, FileExistsError)
        assert "\n" not in str(e.value)
        assert backend.get("manifests/s1") == b"first"
        assert backend.list("manifests") == infos(("manifests/s1", 5))

    def test_put_new_refuses_a_name_written_by_put(self, backend):
        backend.put("manifests/s1", b"first")
        with pytest.raises(AlreadyExists):
            backend.put_new("manifests/s1", b"second")
        assert backend.get("manifests/s1") == b"first"

    def test_exactly_one_of_racing_put_new_wins(self, backend):
        n = 8
        for round_ in range(3):
            name = f"manifests/race-{round_}"
            barrier = threading.Barrier(n)
            outcome: dict[int, str] = {}

            def writer(i: int) -> None:
                barrier.wait()
                try:
                    backend.put_new(name, f"writer {i}".encode() * 1000)
                    outcome[i] = "won"
                except AlreadyExists:
                    outcome[i] = "lost"
                except Exception as exc:  # noqa: BLE001 - reported by the assert below
                    outcome[i] = repr(exc)

            threads = [threading.Thread(target=writer, args=(i,)) for i in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            winners = [i for i, o in outcome.items() if o == "won"]
            assert sorted(outcome.values()) == ["lost"] * (n - 1) + ["won"], outcome
            assert backend.get(name) == f"writer {winners[0]}".encode() * 1000
        assert [o.name for o in backend.list("manifests")] == [f"manifests/race-{r}"
                                                               for r in range(3)]

    # ---- put_file ----------------------------------------------------------

    def test_put_file_round_trip_keeps_the_source(self, backend, tmp_path):
        src = tmp_path / "scratch" / "pack-1"
        src.parent.mkdir()
        data = os.urandom(100_000)
        src.write_bytes(data)
        backend.put_file("packs/12/pack-1", src)
        assert backend.get("packs/12/pack-1") == data
        assert backend.stat("packs/12/pack-1").size == len(data)
        assert src.read_bytes() == data  # the caller still owns it

    def test_put_file_onto_an_existing_name_is_refused(self, backend, tmp_path):
        backend.put("packs/12/pack-1", b"old")
        src = tmp_path / "pack-1"
        src.write_bytes(b"new")
        with pytest.raises(AlreadyExists):
            backend.put_file("packs/12/pack-1", src)
        assert backend.get("packs/12/pack-1") == b"old"
        assert src.read_bytes() == b"new"

    def test_put_file_of_a_missing_file_is_a_backend_error(self, backend, tmp_path):
        with pytest.raises(BackendError):
            backend.put_file("packs/12/x", tmp_path / "nope")
        assert backend.list("packs") == []

    # ---- missing names, ranges ---------------------------------------------

    def test_a_missing_name_is_not_found(self, backend):
        backend.put("index/a", b"x")
        for call in (lambda: backend.get("index/b"), lambda: backend.get_range("index/b", 0, 1),
                     lambda: backend.stat("index/b"), lambda: backend.get("nope/deeper/b")):
            with pytest.raises(NotFound) as e:
                call()
            assert isinstance(e.value, FileNotFoundError)
            assert "\n" not in str(e.value)

    def test_a_folder_is_not_an_object(self, backend):
        backend.put("packs/ab/x", b"x")
        for call in (lambda: backend.get("packs/ab"), lambda: backend.get_range("packs/ab", 0, 1),
                     lambda: backend.stat("packs")):
            with pytest.raises(NotFound):
                call()

    def test_get_range_at_offsets(self, backend):
        data = bytes(range(256)) * 4
        backend.put("packs/00/p", data)
        n = len(data)
        for offset, length in [(0, 10), (5, 100), (n - 1, 1), (n - 5, 10), (0, n), (0, n + 10),
                               (100, 0), (n, 10), (n + 100, 5)]:
            got = backend.get_range("packs/00/p", offset, length)
            assert got == data[offset:offset + length], (offset, length)
        with pytest.raises(ValueError):
            backend.get_range("packs/00/p", -1, 5)
        with pytest.raises(ValueError):
            backend.get_range("packs/00/p", 0, -5)

    def test_get_range_sees_the_object_a_put_replaced(self, backend):
        backend.put("packs/00/p", b"A" * 100)
        assert backend.get_range("packs/00/p", 10, 5) == b"AAAAA"
        backend.put("packs/00/p", b"B" * 100)
        assert backend.get_range("packs/00/p", 10, 5) == b"BBBBB"
        backend.delete("packs/00/p")
        with pytest.raises(NotFound):
            backend.get_range("packs/00/p", 10, 5)
        backend.put_new("packs/00/p", b"C" * 100)
        assert backend.get_range("packs/00/p", 10, 5) == b"CCCCC"

    # ---- list --------------------------------------------------------------

    def test_list_is_recursive_sorted_and_has_sizes(self, backend):
        objects = {"packs/cd/cd01": 3, "packs/ab/ab02": 1, "packs/ab/ab01": 22,
                   "packs/ab/deep/x": 4, "packsfoo": 1, "packs2/ab/x": 2, "index/i1": 5,
                   "config": 2}
        for name, size in objects.items():
            backend.put(name, b"z" * size)
        assert backend.list("packs") == infos(("packs/ab/ab01", 22), ("packs/ab/ab02", 1),
                                              ("packs/ab/deep/x", 4), ("packs/cd/cd01", 3))
        assert backend.list("packs/ab") == infos(("packs/ab/ab01", 22), ("packs/ab/ab02", 1),
                                                 ("packs/ab/deep/x", 4))
        assert backend.list("packs/") == backend.list("packs")
        assert backend.list("index") == infos(("index/i1", 5))
        assert backend.list("") == infos(*sorted(objects.items()))

    def test_list_of_a_missing_or_emptied_folder_is_empty(self, backend):
        assert backend.list("no-such-folder") == []
        assert backend.list("a/b/c") == []
        backend.put("locks/l1", b"x")
        backend.delete("locks/l1")
        assert backend.list("locks") == []

    # ---- delete ------------------------------------------------------------

    def test_delete_is_idempotent_and_then_get_is_not_found(self, backend):
        backend.delete("manifests/none")
        backend.delete("never/existed/at/all")
        backend.put("manifests/s1", b"x")
        backend.put("manifests/s2", b"y")
        backend.delete("manifests/s1")
        backend.delete("manifests/s1")
        with pytest.raises(NotFound):
            backend.get("manifests/s1")
        with pytest.raises(NotFound):
            backend.stat("manifests/s1")
        assert backend.list("manifests") == infos(("manifests/s2", 1))
        backend.put_new("manifests/s1", b"again")  # a deleted name can be taken again
        assert backend.get("manifests/s1") == b"again"

    # ---- names, close, describe --------------------------------------------

    @pytest.mark.parametrize("name", INVALID_NAMES)
    def test_invalid_names_are_refused(self, backend, tmp_path, name):
        src = tmp_path / "f"
        src.write_bytes(b"x")
        for call in (lambda: backend.get(name), lambda: backend.get_range(name, 0, 1),
                     lambda: backend.stat(name), lambda: backend.put(name, b"x"),
                     lambda: backend.put_new(name, b"x"), lambda: backend.put_file(name, src),
                     lambda: backend.delete(name)):
            with pytest.raises(ValueError):
                call()
        if name:  # "" lists the whole store, "a/" the folder a
            if name != "a/":
                with pytest.raises(ValueError):
                    backend.list(name)
        assert backend.list("") == []

    def test_close_is_idempotent(self, backend):
        backend.put("packs/00/p", b"abc")
        assert backend.get_range("packs/00/p", 1, 1) == b"b"
        backend.close()
        backend.close()

    def test_describe_is_a_one_line_string(self, backend):
        d = backend.describe()
        assert isinstance(d, str) and d and "\n" not in d

    # ---- read-only ---------------------------------------------------------

    def test_read_only_store_refuses_every_write_and_still_reads(self, backend, make_read_only,
                                                                 tmp_path):
        backend.put("config", b"{}")
        backend.put("packs/ab/ab01", b"0123456789")
        backend.put("manifests/s1", b"m")
        ro = make_read_only(backend)
        src = tmp_path / "pack"
        src.write_bytes(b"p")
        writes = {
            "put existing": lambda: ro.put("config", b"{changed}"),
            "put new": lambda: ro.put("index/new", b"x"),
            "put in a new folder": lambda: ro.put("packs/cd/cd01", b"x"),
            "put_new": lambda: ro.put_new("manifests/s2", b"x"),
            "put_file": lambda: ro.put_file("packs/ef/ef01", src),
            "delete": lambda: ro.delete("manifests/s1"),
        }
        for what, call in writes.items():
            with pytest.raises(ReadOnlyStore) as e:
                call()
            assert isinstance(e.value, BackendError), what
            assert "read-only" in str(e.value) and "\n" not in str(e.value), what
        # reads still work, and nothing changed
        assert ro.get("config") == b"{}"
        assert ro.get_range("packs/ab/ab01", 3, 4) == b"3456"
        assert ro.stat("manifests/s1") == ObjectInfo("manifests/s1", 1)
        assert ro.list("") == infos(("config", 2), ("manifests/s1", 1), ("packs/ab/ab01", 10))
        with pytest.raises(NotFound):
            ro.get("index/new")
        ro.close()
