"""Store locks as leases (snapkit/store/lock.py), on the real backends, and `snapkit unlock`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from snapkit.backends.base import BackendError, ReadOnlyStore
from snapkit.backends.local import LocalBackend
from snapkit.backends.memory import MemoryBackend
from snapkit.errors import LockedError
from snapkit.store import lock as lock_mod
from snapkit.store.lock import (LockLost, StoreLock, break_locks, machine_identity, pid_alive,
                                read_locks)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def lock_backend(tmp_path):
    return LocalBackend.create(tmp_path / "store")


@pytest.fixture(params=["local", "memory"])
def any_backend(request, tmp_path):
    return LocalBackend.create(tmp_path / "store") if request.param == "local" else MemoryBackend()


def names(be) -> list[str]:
    return [o.name for o in be.list("locks")]


def write_lock(be, *, owner: str = "f" * 32, exclusive: bool = True, age: float = 100.0,
               refreshed_ago: float = 1.0, ttl: float = 300.0, **fields) -> str:
    """A lock as another holder would write it; by default one of this machine and PID namespace."""
    host, boot_id, pidns = machine_identity()
    now = time.time()
    body = {"owner": owner, "host": host, "boot_id": boot_id, "pidns": pidns, "pid": os.getpid(),
            "start": lock_mod._start_time(os.getpid()), "exclusive": exclusive, "created": now - age,
            "refreshed": now - refreshed_ago, "ttl": ttl, "command": "create", **fields}
    name = f"locks/{owner}.json"
    be.put(name, json.dumps(body).encode())
    return name


def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


# ---------------------------------------------------------------------------- basics


def test_machine_identity_and_pid_alive():
    host, boot_id, pidns = machine_identity()
    assert host and boot_id and pidns.startswith("pid:[")
    assert pid_alive(os.getpid()) and not pid_alive(dead_pid())
    assert not pid_alive(0) and not pid_alive(-1)


def test_shared_locks_coexist_and_release(any_backend):
    a = StoreLock(any_backend, exclusive=False, timeout=1)
    b = StoreLock(any_backend, exclusive=False, timeout=1, command="restore")
    with a, b:
        assert sorted(names(any_backend)) == sorted([a.name, b.name])
        body = json.loads(any_backend.get(b.name))
        assert body["owner"] == b.owner and len(b.owner) == 32 and b.name == f"locks/{b.owner}.json"
        assert (body["host"], body["boot_id"], body["pidns"]) == machine_identity()
        assert body["pid"] == os.getpid() and body["command"] == "restore" and body["ttl"] == 300.0
        a.check()
    assert names(any_backend) == []
    a.release()  # idempotent


def test_exclusive_blocks_shared_and_shared_blocks_exclusive(any_backend):
    host = machine_identity()[0]
    with StoreLock(any_backend, exclusive=True, timeout=1, command="prune"):
        t0 = time.monotonic()
        with pytest.raises(LockedError) as exc:
            StoreLock(any_backend, exclusive=False, timeout=0.3).acquire()
        assert 0.25 <= time.monotonic() - t0 < 3
        msg = exc.value.message
        assert f"exclusive lock held by pid {os.getpid()} on {host} (prune)" in msg, msg
        assert len(names(any_backend)) == 1  # the loser left nothing behind
    with StoreLock(any_backend, exclusive=False, timeout=1):
        with pytest.raises(LockedError) as exc:
            StoreLock(any_backend, exclusive=True, timeout=0.2).acquire()
        assert f"shared lock held by pid {os.getpid()}" in exc.value.message
    assert names(any_backend) == []


def test_lock_waits_for_the_holder_to_go(lock_backend):
    holder = StoreLock(lock_backend, exclusive=True)
    holder.acquire()
    threading.Timer(0.3, holder.release).start()
    t0 = time.monotonic()
    with StoreLock(lock_backend, exclusive=True, timeout=5):
        assert time.monotonic() - t0 >= 0.25


# ---------------------------------------------------------------------------- staleness


def test_lock_of_dead_local_process_is_broken_automatically(lock_backend):
    stale = write_lock(lock_backend, pid=dead_pid(), start=None)
    t0 = time.monotonic()
    with StoreLock(lock_backend, exclusive=True, timeout=5):
        assert time.monotonic() - t0 < 1
        assert stale not in names(lock_backend)


def test_lock_of_reused_pid_is_stale(lock_backend):
    # Our own pid, but another process start time: the pid was reused, its owner is dead.
    stale = write_lock(lock_backend, start=1)
    [info] = read_locks(lock_backend)
    assert info.stale and "gone" in info.reason
    with StoreLock(lock_backend, exclusive=False, timeout=2):
        assert stale not in names(lock_backend)


def test_existing_pid_with_another_start_time_is_stale_even_on_eperm(lock_backend, monkeypatch):
    start_1 = lock_mod._start_time(1)
    assert start_1 is not None
    wrong = write_lock(lock_backend, owner="a" * 32, pid=1, start=start_1 + 12345)
    right = write_lock(lock_backend, owner="b" * 32, pid=1, start=start_1, exclusive=False)
    for kill_fails in (False, True):
        if kill_fails:  # as a non-root user sees pid 1: it exists, but we may not signal it
            def kill(pid, sig):
                raise PermissionError(1, "Operation not permitted")

            monkeypatch.setattr(lock_mod.os, "kill", kill)
        judged = {i.name: i.stale for i in read_locks(lock_backend)}
        assert judged == {wrong: True, right: False}, kill_fails


def test_unreadable_lock_is_stale(any_backend):
    any_backend.put("locks/junk.json", b'{"host": "a", "pi')
    any_backend.put("locks/list.json", b"[1, 2]")
    infos = read_locks(any_backend)
    assert [i.stale for i in infos] == [True, True]
    assert "unreadable" in infos[0].describe()
    with StoreLock(any_backend, exclusive=True, timeout=1) as lk:
        assert names(any_backend) == [lk.name]


@pytest.mark.parametrize("where", ["other-host", "other-pidns"])
def test_fresh_foreign_lock_is_kept_and_blocks(lock_backend, where):
    host, boot_id, _ = machine_identity()
    if where == "other-host":
        who = {"host": "build-server-7.example", "boot_id": "0" * 8, "pidns": "pid:[4026531836]"}
    else:  # a container on this host: same host name and boot id, pids of its own
        who = {"host": host, "boot_id": boot_id, "pidns": "pid:[1]"}
    # A pid that is dead here: it must not matter, it is not a pid of our namespace.
    other = write_lock(lock_backend, pid=dead_pid(), start=7, command="prune", refreshed_ago=12, **who)
    with pytest.raises(LockedError) as exc:
        StoreLock(lock_backend, exclusive=False, timeout=0.3).acquire()
    msg = exc.value.message
    assert who["host"] in msg and "(prune)" in msg and "lease expires in 28" in msg, msg
    assert ("another PID namespace" in msg) == (where == "other-pidns")
    assert "--force" in exc.value.hint
    assert names(lock_backend) == [other]
    [info] = read_locks(lock_backend)
    assert not info.stale and "lease expires" in info.reason
    assert break_locks(lock_backend) == [] and names(lock_backend) == [other]
    assert [i.name for i in break_locks(lock_backend, force=True)] == [other]
    with StoreLock(lock_backend, exclusive=True, timeout=1):
        pass


def test_expired_foreign_lock_is_broken_automatically(lock_backend):
    other = write_lock(lock_backend, host="build-server-7.example", boot_id="x", pidns="pid:[9]",
                       refreshed_ago=60, ttl=10)
    [info] = read_locks(lock_backend)
    assert info.stale and "expired" in info.reason and "stale" in info.describe()
    t0 = time.monotonic()
    with StoreLock(lock_backend, exclusive=True, timeout=5):
        assert time.monotonic() - t0 < 1
        assert other not in names(lock_backend)


# ---------------------------------------------------------------------------- the lease


def test_refresher_keeps_the_lease_alive(lock_backend, monkeypatch):
    holder = StoreLock(lock_backend, exclusive=True, timeout=1, ttl=1.0)
    holder.acquire()
    first = json.loads(lock_backend.get(holder.name))["refreshed"]
    # Judge the lock as another host would: by its lease alone.
    monkeypatch.setattr(lock_mod, "machine_identity", lambda: ("elsewhere", "b", "pid:[1]"))
    try:
        for _ in range(5):
            time.sleep(0.5)
            [info] = read_locks(lock_backend)
            assert not info.stale, info.reason
        with pytest.raises(LockedError):
            StoreLock(lock_backend, exclusive=False, timeout=0.1).acquire()
        assert json.loads(lock_backend.get(holder.name))["refreshed"] > first + 1.5
        holder.check()
        # Control: once it stops refreshing (a hung holder), the lease runs out a ttl later.
        holder._refresh_once = lambda: True
        time.sleep(0.3)  # let a refresh in flight land
        data, me = lock_backend.get(holder.name), lock_mod.machine_identity()
        assert not lock_mod._parse(holder.name, data, time.time(), me).stale
        assert lock_mod._parse(holder.name, data, time.time() + 1.05, me).stale
    finally:
        holder.release()
    assert names(lock_backend) == []


def test_broken_lease_is_detected_and_never_resurrected(lock_backend):
    with StoreLock(lock_backend, exclusive=False, ttl=0.5) as lk:
        lk.check()
        assert [i.name for i in break_locks(lock_backend, force=True)] == [lk.name]
        with pytest.raises(LockLost) as exc:
            lk.check()
        assert "broken while this command ran" in exc.value.message and "unlock --force" in exc.value.hint
        time.sleep(0.35)  # the refresher ticks (every 0.1 s): it must not write the lock back
        assert names(lock_backend) == []
        assert lk._thread is not None and not lk._thread.is_alive()


def test_lease_replaced_by_another_owner_is_lost(any_backend):
    with StoreLock(any_backend, exclusive=False, ttl=0.5) as lk:
        any_backend.put(lk.name, json.dumps({"owner": "someone else"}).encode())
        time.sleep(0.25)
        with pytest.raises(LockLost):
            lk.check()


class Flaky(MemoryBackend):
    """Writes fail (BackendError) while `down` is set."""

    down = False

    def put(self, name, data):
        if self.down:
            raise BackendError("connection reset")
        super().put(name, data)

    def get(self, name):
        if self.down:
            raise BackendError("connection reset")
        return super().get(name)


def test_failed_refreshes_are_retried_until_the_ttl_passes():
    be = Flaky()
    with StoreLock(be, exclusive=False, ttl=1.0) as lk:
        be.down = True
        time.sleep(0.4)  # a few failed ticks, less than the ttl
        lk.check()
        be.down = False
        time.sleep(0.3)
        lk.check()
        be.down = True
        time.sleep(1.15)  # a whole ttl without a successful refresh
        be.down = False
        with pytest.raises(LockLost) as exc:
            lk.check()
        assert "refreshed" in exc.value.message


def test_read_only_store_shared_lock_proceeds_exclusive_raises():
    be = MemoryBackend()
    be.read_only = True
    with StoreLock(be, exclusive=False, timeout=1) as lk:
        assert lk.read_only and lk.name is None
        lk.check()
    with pytest.raises(ReadOnlyStore):
        StoreLock(be, exclusive=True, timeout=1).acquire()
    # A live exclusive lock (say a prune with write access elsewhere) still keeps readers out;
    # a stale one is ignored, as it cannot be removed.
    be.read_only = False
    write_lock(be, owner="a" * 32, host="writer.example", boot_id="x", pidns="pid:[9]")
    write_lock(be, owner="b" * 32, pid=dead_pid(), start=None)
    be.read_only = True
    with pytest.raises(LockedError):
        StoreLock(be, exclusive=False, timeout=0.2).acquire()
    be.read_only = False
    break_locks(be, force=True)
    write_lock(be, owner="b" * 32, pid=dead_pid(), start=None)
    be.read_only = True
    with StoreLock(be, exclusive=False, timeout=0.2):
        assert len(names(be)) == 1


# ---------------------------------------------------------------------------- PID namespaces

_CONTAINER = """
import sys
from snapkit.backends.local import LocalBackend
from snapkit.store.lock import StoreLock, machine_identity
with StoreLock(LocalBackend(sys.argv[1]), exclusive=False, command="container") as lk:
    print(lk.name, machine_identity()[2], flush=True)
    sys.stdin.read()  # hold the lock until the test closes our stdin
    lk.check()
print("ok", flush=True)
"""


def _unshare_works() -> bool:
    if not shutil.which("unshare"):
        return False
    try:
        return subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_lock_in_another_pid_namespace_is_never_broken(lock_backend):
    if not _unshare_works():
        pytest.skip("`unshare --pid --fork --mount-proc` is not available here (needs root or user namespaces)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", _CONTAINER,
                             str(lock_backend.root)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        name, their_ns = proc.stdout.readline().split()
        body = json.loads(lock_backend.get(name))
        # Same host and boot, a pid of its own namespace (1 or so: it names a live process here too).
        assert their_ns != machine_identity()[2] and body["pidns"] == their_ns and body["pid"] < 10
        end = time.monotonic() + 1.0
        rounds = 0
        while time.monotonic() < end:
            with StoreLock(lock_backend, exclusive=False, timeout=1):
                assert name in names(lock_backend)
            with pytest.raises(LockedError) as exc:
                StoreLock(lock_backend, exclusive=True, timeout=0.1).acquire()
            assert "another PID namespace" in exc.value.message and "(container)" in exc.value.message
            assert break_locks(lock_backend) == []
            assert names(lock_backend) == [name]
            rounds += 1
        assert rounds >= 3
        out, err = proc.communicate("", timeout=10)
        assert proc.returncode == 0 and out.strip() == "ok", err
        assert names(lock_backend) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------------- snapkit unlock


def _store_backend(project: Path) -> LocalBackend:
    from snapkit.project import Project

    return LocalBackend(Project.open(project).store.path)


def test_unlock_removes_stale_locks_and_keeps_live_ones(project, cli):
    be = _store_backend(project)
    dead = write_lock(be, owner="a" * 32, pid=dead_pid(), start=None)
    expired = write_lock(be, owner="b" * 32, host="ci-runner.example", boot_id="x", pidns="pid:[9]",
                         refreshed_ago=400)
    live = write_lock(be, owner="c" * 32, host="ci-runner.example", boot_id="x", pidns="pid:[9]", pid=4242)
    proc = cli("unlock")
    assert "removed 2 lock(s)" in proc.stderr and "1 live lock(s) kept" in proc.stderr, proc.stderr
    assert "pid 4242 on ci-runner.example (create)" in proc.stderr and "--force" in proc.stderr
    assert names(be) == [live] and dead and expired
    proc = cli("unlock", "--json")
    data = json.loads(proc.stdout)
    assert data["removed"] == [] and len(data["live"]) == 1 and "4242" in data["live"][0]
    proc = cli("unlock", "--force")
    assert "removed 1 lock(s), live ones included (--force)" in proc.stderr
    assert names(be) == []
