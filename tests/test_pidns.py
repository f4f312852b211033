"""Two `create`s at once in two PID namespaces of one host (a container with host networking).

Same host name, same boot id, different PID namespaces: each must see the
other's lease and scratch folder as alive. Format 1 took a lock owner for
host + pid and deleted the container's live lock and temp pack.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from benchmarks import workload
from tests.conftest import sqlite_dump


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True)
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(not _unshare_works(),
                                reason="needs `unshare --pid --fork --mount-proc` (root or user namespaces)")


@pytest.mark.slow
def test_creates_in_two_pid_namespaces_both_succeed_and_every_snapshot_restores(project, cli, tmp_path):
    db = project / "app.db"
    db.unlink()
    workload.create(db, 12)
    argv = [sys.executable, "-m", "snapkit", "create", "--no-commit"]
    states: dict[str, str] = {}
    for round_ in range(4):
        workload.change(db, percent=2.0, seed=round_)
        dump = sqlite_dump(db)
        inside = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", *argv], cwd=project,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
        outside = subprocess.Popen(argv, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for proc, where in ((inside, "container"), (outside, "host")):
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, f"round {round_}, {where}: {err}"
            assert "Traceback" not in err
            states[out.strip()] = dump
    assert len(states) == 8  # every create took its own id
    assert cli("verify").returncode == 0
    for sid, dump in states.items():
        out = tmp_path / f"{sid}.db"
        cli("cat", sid, "--layer", "database", "-o", str(out))
        assert sqlite_dump(out) == dump, sid
    assert not list((project / "snapshots" / "locks").iterdir())
