"""Private scratch folders: one per process, 0700, removed at exit; a dead process's is swept."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time

from snapkit import scratch

MAKE = "import os, sys; from snapkit import scratch; p = scratch.private_dir(sys.argv[1]); print(p, flush=True)"


def _spawn(base, then: str):
    code = MAKE + "; " + then
    return subprocess.Popen([sys.executable, "-c", code, str(base)], stdout=subprocess.PIPE, text=True,
                            stdin=subprocess.PIPE)


def test_folder_is_private_reused_and_removed_at_exit(tmp_path):
    proc = _spawn(tmp_path, "sys.stdin.read()")
    path = proc.stdout.readline().strip()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    proc.communicate("")
    assert proc.returncode == 0
    assert not os.path.exists(path)  # removed by its own process at exit


def test_a_killed_process_folder_is_swept_but_a_live_one_is_kept(tmp_path):
    dead = _spawn(tmp_path, "os._exit(0)")  # no clean-up: as if killed
    dead_path = dead.stdout.readline().strip()
    dead.wait()
    assert os.path.isdir(dead_path)  # nobody removed it yet
    live = _spawn(tmp_path, "sys.stdin.read()")
    live_path = live.stdout.readline().strip()
    assert os.path.isdir(live_path)
    # The live process made its folder after the dead one's exit and swept it already.
    assert not os.path.exists(dead_path)
    assert scratch.sweep(tmp_path) == []
    assert os.path.isdir(live_path)  # its owner lock is held
    live.communicate("")


def test_a_folder_left_half_built_is_swept_at_once(tmp_path):
    (tmp_path / ".new-123-deadbeef").mkdir()
    old = tmp_path / "456-cafebabe"  # a finished name without an owner: only after a grace period
    old.mkdir()
    swept = scratch.sweep(tmp_path)
    assert tmp_path / ".new-123-deadbeef" in swept and old.exists()
    past = time.time() - 3600
    os.utime(old, (past, past))
    assert scratch.sweep(tmp_path) == [old]
