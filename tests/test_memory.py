"""Peak memory of `create` and `restore` does not grow with the database (issue: streaming everywhere)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import git

MEASURE = """
import resource, subprocess, sys
proc = subprocess.run(sys.argv[1:], capture_output=True)
sys.stderr.buffer.write(proc.stderr)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(proc.returncode)
"""


def _fill(path, mb: int) -> None:
    """Rows of compressible text and random bytes, generated inside SQLite (fast)."""
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT, b BLOB)")
    rows = mb * 1024 * 1024 // 1100
    con.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
        "INSERT INTO t SELECT i, printf('row %d ', i) || hex(randomblob(200)), randomblob(600) FROM n",
        (rows,),
    )
    con.commit()
    con.close()


def _peak_kb(cwd, *args) -> int:
    proc = subprocess.run([sys.executable, "-c", MEASURE, sys.executable, "-m", "snapkit", *args],
                          cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.strip().splitlines()[-1])


def _measure(tmp_path, mb: int) -> tuple[int, int]:
    repo = tmp_path / f"app{mb}"
    repo.mkdir()
    git(repo, "init", "-q")
    git(repo, "config", "user.name", "T")
    git(repo, "config", "user.email", "t@example.com")
    (repo / ".gitignore").write_text("app.db\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "init")
    _fill(repo / "app.db", mb)
    subprocess.run([sys.executable, "-m", "snapkit", "init", "--db", "sqlite:///app.db"], cwd=repo,
                   check=True, capture_output=True)
    create = _peak_kb(repo, "create", "--no-commit")
    os.unlink(repo / "app.db")
    restore = _peak_kb(repo, "restore", "@0", "--db-only", "--yes")
    return create, restore


@pytest.mark.slow
def test_peak_memory_is_flat_from_50_to_500_mb(tmp_path):
    small = _measure(tmp_path, 50)
    big = _measure(tmp_path, 500)
    report = {"create_kb": [small[0], big[0]], "restore_kb": [small[1], big[1]]}
    print(json.dumps(report))
    # Within a few MB: the pack buffer and batches are bounded; the chunk index
    # grows by ~100 bytes per 64 KiB block (≈ 0.8 MB for 450 MB more).
    assert big[0] - small[0] < 8 * 1024, report
    assert big[1] - small[1] < 8 * 1024, report


def _measure_committed_file(tmp_path, mb: int, packed: bool = False) -> tuple[int, Path]:
    """Peak RSS of `create` in a repo tracking an `mb` MB file of random bytes.

    The file is stored uncompressed by git (fast to add); `packed` puts it
    straight into a pack, as git does for files over core.bigFileThreshold.
    """
    repo = tmp_path / f"big{mb}{'-packed' if packed else ''}"
    repo.mkdir()
    git(repo, "init", "-q")
    git(repo, "config", "user.name", "T")
    git(repo, "config", "user.email", "t@example.com")
    (repo / ".gitignore").write_text("app.db\n/snapshots/\nsnapkit.toml\n")
    with open(repo / "big.bin", "wb") as f:
        for _ in range(mb):
            f.write(os.urandom(1024 * 1024))
    threshold = "1m" if packed else "2g"
    git(repo, "-c", "core.looseCompression=0", "-c", "pack.compression=0",
        "-c", f"core.bigFileThreshold={threshold}", "add", "-A")
    git(repo, "commit", "-q", "-m", "big file")
    _fill(repo / "app.db", 1)
    subprocess.run([sys.executable, "-m", "snapkit", "init", "--db", "sqlite:///app.db"], cwd=repo,
                   check=True, capture_output=True)
    return _peak_kb(repo, "create", "--no-commit"), repo


@pytest.mark.slow
def test_peak_memory_of_create_is_flat_in_a_committed_file_size(tmp_path):
    import hashlib
    import tarfile

    small, _ = _measure_committed_file(tmp_path, 30)
    big, repo = _measure_committed_file(tmp_path, 300)
    packed, _ = _measure_committed_file(tmp_path, 300, packed=True)
    report = {"create_kb": {"30 MB": small, "300 MB": big, "300 MB packed": packed}}
    print(json.dumps(report))
    # Blobs stream through in 1 MiB blocks; git cat-file (packed) maps 4 MiB windows.
    assert big - small < 20 * 1024, report
    assert packed - small < 20 * 1024, report
    # And the code layer holds the file byte for byte.
    out = tmp_path / "code.tar"
    subprocess.run([sys.executable, "-m", "snapkit", "cat", "@0", "--layer", "code", "-o",
                    str(out)], cwd=repo, check=True, capture_output=True)
    with tarfile.open(out) as tar:
        member = tar.extractfile("big.bin")
        got = hashlib.sha256()
        while block := member.read(1024 * 1024):
            got.update(block)
    expected = hashlib.sha256()
    with subprocess.Popen(["git", "cat-file", "blob", "HEAD:big.bin"], cwd=repo,
                          stdout=subprocess.PIPE) as proc:
        while block := proc.stdout.read(1024 * 1024):
            expected.update(block)
    assert proc.returncode == 0
    assert got.hexdigest() == expected.hexdigest()
