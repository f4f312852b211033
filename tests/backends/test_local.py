"""LocalBackend passes the backend contract, plus what only a local directory has:
file modes, temp files, fsyncs, errno mapping, the fd cache, a real read-only mount."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import random
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from snapkit.backends import local as local_mod
from snapkit.backends.base import AlreadyExists, BackendError, NotFound, ReadOnlyStore
from snapkit.backends.fdcache import MAX_OPEN_FDS
from snapkit.backends.local import LocalBackend
from tests.backends.contract import BackendContract

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def backend(tmp_path):
    be = LocalBackend.create(tmp_path / "store")
    yield be
    be.close()


def _fail(code: int, path) -> None:
    raise OSError(code, os.strerror(code), os.fspath(path))


def inject_write_errors(monkeypatch, root: Path, code: int) -> None:
    """Make every write syscall under `root` fail with `code`, as a read-only mount would."""
    prefix = os.fspath(root)

    def under(p) -> bool:
        p = os.fspath(p)
        return p == prefix or p.startswith(prefix + os.sep)

    real_open, real_link, real_replace = os.open, os.link, os.replace
    real_mkdir, real_unlink, real_chmod = os.mkdir, os.unlink, os.chmod

    def open_(path, flags, mode=0o777, *, dir_fd=None):
        if under(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            _fail(code, path)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    def two(real):
        def call(src, dst, *a, **kw):
            if under(dst):
                _fail(code, dst)
            return real(src, dst, *a, **kw)
        return call

    def one(real):
        def call(path, *a, **kw):
            if under(path):
                _fail(code, path)
            return real(path, *a, **kw)
        return call

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "link", two(real_link))
    monkeypatch.setattr(os, "replace", two(real_replace))
    for name, real in (("mkdir", real_mkdir), ("unlink", real_unlink), ("chmod", real_chmod)):
        monkeypatch.setattr(os, name, one(real))


@pytest.fixture
def make_read_only(monkeypatch):
    """In-process read-only store: EROFS injected (the real mount is tested below)."""
    def make(be: LocalBackend) -> LocalBackend:
        inject_write_errors(monkeypatch, be.root, errno.EROFS)
        return LocalBackend(be.root)

    return make


def all_paths(root: Path) -> list[Path]:
    return [root, *sorted(root.rglob("*"))]


def temps(be: LocalBackend) -> list[str]:
    return sorted(p.name for p in be.root.rglob(".tmp-*"))


class TestLocalBackend(BackendContract):
    pass


# ---------------------------------------------------------------------------- modes, layout


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o000, 0o277])
def test_files_are_0600_and_folders_0700_whatever_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        src = tmp_path / "scratch-pack"
        src.write_bytes(b"pack")  # mode 0666 & ~mask: put_file must fix it
        be = LocalBackend.create(tmp_path / "parent" / "store")
        be.put("packs/ab/abcdef", b"one")
        be.put("packs/ab/abcdef", b"two")
        be.put("config", b"{}")
        be.put_new("manifests/x", b"m")
        be.put_file("packs/cd/cdef", src)
    finally:
        os.umask(old)
    assert be.get("packs/ab/abcdef") == b"two"
    for p in [tmp_path / "parent", *all_paths(be.root)]:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o700 if p.is_dir() else 0o600), f"{p}: {oct(mode)}"
    assert temps(be) == []
    assert sorted(o.name for o in be.list("")) == ["config", "manifests/x", "packs/ab/abcdef",
                                                  "packs/cd/cdef"]


def test_new_folders_are_fsynced_into_their_parent(backend, monkeypatch):
    synced = []
    real = local_mod.fsync_dir
    monkeypatch.setattr(local_mod, "fsync_dir", lambda p: (synced.append(Path(p)), real(p)))
    backend.put("packs/ab/abcdef", b"x")
    root = backend.root
    # tmp/ and packs/ are entries of the root, ab/ of packs/, the object of ab/
    assert {root, root / "packs", root / "packs" / "ab"} <= set(synced)
    synced.clear()
    backend.put_new("packs/ab/abcd02", b"y")  # existing folder: only it is fsynced
    assert synced == [root / "packs" / "ab"]


def test_create_makes_private_parents_and_is_idempotent(tmp_path):
    be = LocalBackend.create(tmp_path / "a" / "b" / "store")
    for p in (tmp_path / "a", tmp_path / "a" / "b", be.root):
        assert stat.S_IMODE(p.stat().st_mode) == 0o700, p
    be.put("config", b"{}")
    LocalBackend.create(be.root)
    assert be.get("config") == b"{}"
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(BackendError):
        LocalBackend.create(tmp_path / "file")


def test_a_missing_root_is_never_recreated_by_a_write(tmp_path):
    be = LocalBackend(tmp_path / "unmounted" / "store")
    with pytest.raises(BackendError, match="does not exist"):
        be.put("config", b"{}")
    with pytest.raises(BackendError, match="does not exist"):
        be.put_new("locks/l", b"{}")
    assert not (tmp_path / "unmounted").exists()
    with pytest.raises(NotFound):
        be.get("config")
    assert be.list("") == []


def test_list_skips_temp_files_and_the_tmp_folder(backend):
    backend.put("index/a", b"1")
    (backend.root / "index" / ".tmp-123-abcd-b").write_bytes(b"old-style temp beside")
    (backend.root / "tmp" / ".tmp-abcdef").write_bytes(b"partial")
    (backend.root / "tmp" / "sqlite-123-copy").write_bytes(b"scratch")
    assert [o.name for o in backend.list("index")] == ["index/a"]
    assert [o.name for o in backend.list("")] == ["index/a"]


@pytest.mark.parametrize("name", ["tmp", "tmp/x", "tmp/.tmp-x"])
def test_tmp_folder_names_are_reserved(backend, name):
    for call in (lambda: backend.put(name, b"x"), lambda: backend.get(name),
                 lambda: backend.list(name), lambda: backend.path(name)):
        with pytest.raises(ValueError):
            call()


# ---------------------------------------------------------------------------- failures


@pytest.mark.parametrize("victim", ["fsync", "replace", "write"])
def test_a_failed_put_leaves_no_temp_and_keeps_the_old_object(backend, monkeypatch, victim):
    backend.put("index/a", b"old contents")
    monkeypatch.setattr(os, victim, lambda *a, **kw: _fail(errno.EIO, "x"))
    with pytest.raises(BackendError) as e:
        backend.put("index/a", b"new contents that never land")
    assert not isinstance(e.value, OSError) and "index/a" in str(e.value)
    if victim != "replace":
        with pytest.raises(BackendError):
            backend.put_new("index/b", b"new")
    monkeypatch.undo()
    assert backend.get("index/a") == b"old contents"
    assert [o.name for o in backend.list("")] == ["index/a"]
    assert temps(backend) == []


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_says_so(backend, monkeypatch, code):
    backend.put("index/a", b"old")
    monkeypatch.setattr(os, "write", lambda *a: _fail(code, "x"))
    with pytest.raises(BackendError) as e:
        backend.put("index/a", b"new")
    assert not isinstance(e.value, ReadOnlyStore)
    assert "no space left on the store's disk" in str(e.value) and "\n" not in str(e.value)
    assert "space" in e.value.hint
    monkeypatch.undo()
    assert backend.get("index/a") == b"old" and temps(backend) == []


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES, errno.EPERM])
def test_a_refused_write_is_a_read_only_store(backend, monkeypatch, code):
    backend.put("index/a", b"old")
    inject_write_errors(monkeypatch, backend.root, code)
    with pytest.raises(ReadOnlyStore, match=rf"^store {backend.root} is read-only \(.+\)$"):
        backend.put("index/a", b"new")


def test_other_os_errors_are_one_line_backend_errors(backend, monkeypatch):
    backend.put("index/a", b"x")
    monkeypatch.setattr(local_mod, "open", lambda *a, **kw: _fail(errno.EACCES, "x"), raising=False)
    with pytest.raises(BackendError) as e:  # EACCES on a read is no read-only store
        backend.get("index/a")
    assert not isinstance(e.value, ReadOnlyStore) and "index/a" in str(e.value)
    monkeypatch.setattr(os, "pread", lambda *a: _fail(errno.EIO, "x"))
    with pytest.raises(BackendError, match="Input/output error"):
        backend.get_range("index/a", 0, 1)


def test_sweep_temps_removes_only_old_temp_files(backend):
    folder = backend.root / "tmp"
    folder.mkdir(mode=0o700)  # made on demand by the first put
    old, new, scratch = folder / ".tmp-0ld", folder / ".tmp-new", folder / "sqlite-1-copy"
    for p in (old, new, scratch):
        p.write_bytes(b"partial")
    two_hours_ago = time.time() - 7200
    for p in (old, scratch):
        os.utime(p, (two_hours_ago, two_hours_ago))
    assert backend.sweep_temps() == ["tmp/.tmp-0ld"]
    assert sorted(p.name for p in folder.iterdir()) == [".tmp-new", "sqlite-1-copy"]
    assert backend.sweep_temps(max_age_s=0) == ["tmp/.tmp-new"]
    assert LocalBackend(backend.root / "nowhere").sweep_temps() == []


# ---------------------------------------------------------------------------- put_file


def test_put_file_on_the_same_filesystem_links_without_copying(backend, tmp_path):
    src = tmp_path / "pack"
    src.write_bytes(b"p" * 1000)
    os.chmod(src, 0o644)
    backend.put_file("packs/ab/ab01", src)
    assert os.stat(src).st_ino == os.stat(backend.path("packs/ab/ab01")).st_ino
    assert stat.S_IMODE(os.stat(src).st_mode) == 0o600
    src.unlink()  # the caller may delete its copy
    assert backend.get("packs/ab/ab01") == b"p" * 1000


def test_put_file_across_filesystems_copies(backend, tmp_path, monkeypatch):
    src = tmp_path / "pack"
    data = os.urandom(3 << 20)
    src.write_bytes(data)
    real_link = os.link

    def link(a, b, *args, **kw):
        if Path(a) == src:
            _fail(errno.EXDEV, b)
        return real_link(a, b, *args, **kw)

    monkeypatch.setattr(os, "link", link)
    backend.put_file("packs/ab/ab01", src)
    with pytest.raises(AlreadyExists):
        backend.put_file("packs/ab/ab01", src)
    assert backend.get("packs/ab/ab01") == data
    assert os.stat(src).st_ino != os.stat(backend.path("packs/ab/ab01")).st_ino
    assert src.read_bytes() == data and temps(backend) == []


# ---------------------------------------------------------------------------- races, fd cache


def _race_writer(root: str, name: str, i: int, barrier, results) -> None:
    be = LocalBackend(Path(root))
    barrier.wait()
    try:
        be.put_new(name, f"process {i}".encode() * 1000)
        results.put((i, "won"))
    except AlreadyExists:
        results.put((i, "lost"))
    except Exception as exc:  # noqa: BLE001 - reported by the assert in the test
        results.put((i, repr(exc)))


def test_exactly_one_of_racing_processes_wins_put_new(backend):
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods()
                                      else "spawn")
    n = 6
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_race_writer,
                         args=(str(backend.root), "manifests/m", i, barrier, results))
             for i in range(n)]
    for p in procs:
        p.start()
    outcome = dict(results.get(timeout=30) for _ in range(n))
    for p in procs:
        p.join(timeout=30)
    assert sorted(outcome.values()) == ["lost"] * (n - 1) + ["won"], outcome
    winner = next(i for i, o in outcome.items() if o == "won")
    assert backend.get("manifests/m") == f"process {winner}".encode() * 1000
    assert temps(backend) == []


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_the_fd_cache_is_bounded_and_close_releases_it(backend):
    for i in range(100):
        backend.put(f"packs/{i % 4:02x}/p{i:03d}", bytes([i]) * 10)
    before = _open_fds()
    for i in range(100):
        assert backend.get_range(f"packs/{i % 4:02x}/p{i:03d}", 3, 2) == bytes([i]) * 2
    assert _open_fds() - before <= MAX_OPEN_FDS
    backend.close()
    assert _open_fds() == before


def test_concurrent_ranged_reads_and_replacements_see_whole_objects(backend):
    names = [f"packs/00/p{i:03d}" for i in range(80)]  # more than the cache holds
    for n in names:
        backend.put(n, b"\x00" * 4096)
    stop, bad = threading.Event(), []

    def reader(seed: int) -> None:
        rnd = random.Random(seed)
        while not stop.is_set():
            got = backend.get_range(rnd.choice(names), rnd.randrange(4000), 96)
            if len(got) != 96 or len(set(got)) != 1:
                bad.append(got)

    def writer() -> None:
        rnd = random.Random(0)
        for v in range(1, 200):
            backend.put(rnd.choice(names), bytes([v]) * 4096)

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    writer()
    stop.set()
    for t in threads:
        t.join()
    assert bad == []
    backend.close()


# ---------------------------------------------------------------------------- real read-only store

_RO_SNIPPET = r"""
import json, sys
from pathlib import Path
from snapkit.backends.base import ReadOnlyStore
from snapkit.backends.local import LocalBackend
be, src = LocalBackend(Path(sys.argv[1])), Path(sys.argv[2])
out = {"get": be.get("config").decode(), "range": be.get_range("packs/ab/ab01", 2, 3).decode(),
       "stat": be.stat("manifests/s1").size, "list": [[o.name, o.size] for o in be.list("")]}
writes = {"put": lambda: be.put("config", b"x"), "put_new": lambda: be.put_new("index/n", b"x"),
          "put_file": lambda: be.put_file("packs/cd/cd01", src),
          "delete": lambda: be.delete("manifests/s1")}
for what, call in writes.items():
    try:
        call()
        out[what] = "no error"
    except ReadOnlyStore as exc:
        out[what] = "ReadOnlyStore: " + str(exc)
    except BaseException as exc:
        out[what] = type(exc).__name__ + ": " + str(exc)
print(json.dumps(out))
"""


def _fill_for_read_only(tmp_path: Path) -> tuple[LocalBackend, Path]:
    be = LocalBackend.create(tmp_path / "store")
    be.put("config", b"{}")
    be.put("packs/ab/ab01", b"0123456789")
    be.put_new("manifests/s1", b"m")
    src = tmp_path / "src"
    src.write_bytes(b"pack")
    return be, src


def _check_read_only_result(out: dict, root: Path) -> None:
    assert out["get"] == "{}" and out["range"] == "234" and out["stat"] == 1
    assert out["list"] == [["config", 2], ["manifests/s1", 1], ["packs/ab/ab01", 10]]
    for what in ("put", "put_new", "put_file", "delete"):
        expected = f"ReadOnlyStore: store {root} is read-only ("
        assert out[what].startswith(expected), (what, out[what])


def test_a_real_read_only_mount_reads_and_refuses_writes(tmp_path):
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("needs unshare(1) and mount(1) for a private read-only bind mount")
    be, src = _fill_for_read_only(tmp_path)
    ns = ["unshare", "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        ns[1:1] = ["--user", "--map-root-user"]
    script = ('mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" || exit 97; '
              'echo MOUNTED; exec "$2" -c "$3" "$1" "$4"')
    args = [str(be.root), sys.executable, _RO_SNIPPET, str(src)]
    proc = subprocess.run([*ns, "sh", "-c", script, "sh", *args], capture_output=True, text=True,
                          timeout=60, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    if not proc.stdout.startswith("MOUNTED"):
        pytest.skip(f"cannot make a private read-only mount here: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0, proc.stderr
    _check_read_only_result(json.loads(proc.stdout.split("\n", 1)[1]), be.root)
    assert be.get("config") == b"{}" and be.list("index") == []  # outside the namespace: untouched


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_a_store_without_write_permission_reads_and_refuses_writes(tmp_path):
    be, src = _fill_for_read_only(tmp_path)
    paths = all_paths(be.root)
    for p in reversed(paths):
        os.chmod(p, 0o500 if p.is_dir() else 0o400)
    try:
        proc = subprocess.run([sys.executable, "-c", _RO_SNIPPET, str(be.root), str(src)],
                              capture_output=True, text=True, timeout=60, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        assert proc.returncode == 0, proc.stderr
        _check_read_only_result(json.loads(proc.stdout), be.root)
    finally:
        for p in paths:
            os.chmod(p, 0o700 if p.is_dir() else 0o600)
