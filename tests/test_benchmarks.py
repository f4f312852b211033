"""The benchmark harness's smoke run, so it cannot rot (the full run is by hand: docs/benchmarks.md)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_smoke_benchmark_runs_and_every_restore_is_exact(tmp_path):
    out = tmp_path / "smoke.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--smoke", "--no-report", "--out", str(out),
                           "--work", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    tools = result["summary"]["tools"]
    assert "snapkit" in tools
    for name, t in tools.items():
        assert t["exact"], f"{name} did not restore exactly"
    snap = tools["snapkit"]
    # A 1% change costs a small fraction of the first snapshot, even at smoke size.
    assert snap["growth_per_change"]["median"] < 0.25 * snap["first_size"]["median"]
    assert result["catalog"]["snapshots"] == 200
    from benchmarks.report import markdown

    assert "| first snapshot |" in markdown(result)
