"""snapkit vs restic, borg and the shell pipeline, on the same data, in the same run.

    python -m benchmarks.run                 # full run: ~1 GiB SQLite, 3 repetitions, all peers
    python -m benchmarks.run --smoke         # tiny sizes, what CI runs so the harness cannot rot
    python -m benchmarks.run --size-mb 200 --reps 2 --changes 3
    python -m benchmarks.run --pg-size-mb 0     # without the PostgreSQL workload

Every measurement is a whole process: wall time and peak RSS from the OS
(os.wait4's rusage). Tools run interleaved (A B C D, A B C D, …) on one
database that changes between rounds. Results go to
benchmarks/results/<date>.json and, unless --no-report, docs/benchmarks.md
(+ docs/benchmarks.png).

Peers, each at its natural best settings and encrypted:
- restic (default: CDC ~1 MiB chunks, zstd auto, AES-256-CTR+Poly1305), repository password in the environment;
- borg 1.2 (`--compression zstd,3`, `repokey-blake2`), passphrase in the environment;
- the shell pipeline `sqlite3 app.db ".backup tmp" && zstd -3 -T0 | age -r <recipient>`: one full copy per snapshot.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import workload

ROOT = Path(__file__).resolve().parent.parent
PEERS = ["snapkit", "restic", "borg", "pipeline"]
APT = {"restic": "restic", "borg": "borgbackup", "zstd": "zstd", "age": "age", "sqlite3": "sqlite3"}
PASSWORD = "benchmark-password-not-secret"


def ensure_peers(optional: bool) -> list[str]:
    """Install missing peers from Debian packages; return the peers available."""
    missing = [pkg for tool, pkg in APT.items() if shutil.which(tool) is None]
    if missing and not optional and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], env=env, check=False, capture_output=True)
    have = ["snapkit"]
    for peer, tools in (("restic", ["restic"]), ("borg", ["borg"]), ("pipeline", ["sqlite3", "zstd", "age"])):
        if all(shutil.which(t) for t in tools):
            have.append(peer)
        elif not optional:
            sys.exit(f"benchmarks: {peer} is missing and could not be installed")
    return have


def measure(argv: list[str], cwd: Path, env: dict, shell_input: str | None = None) -> dict:
    """Run one whole process; wall seconds and peak RSS (MiB) of it and its children."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({code}): {err[-500:]}")
    return {"wall_s": round(wall, 3), "rss_mb": round(usage.ru_maxrss / 1024, 1)}


def tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class Peer:
    """One tool's repository for the benchmark database `db`."""

    def __init__(self, name: str, work: Path, db: Path, env: dict):
        self.name, self.work, self.db, self.env = name, work, db, env
        self.repo = work / f"repo-{name}"
        self.n = 0

    def sh(self, script: str) -> list[str]:
        return ["bash", "-c", script]

    def init(self) -> None:
        e = self.env
        if self.name == "snapkit":
            subprocess.run([sys.executable, "-m", "snapkit", "init", "--db", f"sqlite:///{self.db}",
                            "--store", str(self.repo)], cwd=self.db.parent, env=e, check=True,
                           capture_output=True)
        elif self.name == "restic":
            subprocess.run(["restic", "init", "--repo", str(self.repo)], env=e, check=True, capture_output=True)
        elif self.name == "borg":
            subprocess.run(["borg", "init", "--encryption=repokey-blake2", str(self.repo)], env=e, check=True,
                           capture_output=True)
        else:
            self.repo.mkdir()
            key = self.work / "age.key"
            if not key.exists():
                subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
            self.recipient = [ln.split(": ")[1] for ln in key.read_text().splitlines() if "public key" in ln][0]

    def snapshot(self) -> dict:
        self.n += 1
        if self.name == "snapkit":
            argv = [sys.executable, "-m", "snapkit", "create", "--no-commit", "--quiet"]
            return measure(argv, self.db.parent, self.env)
        if self.name == "restic":
            return measure(["restic", "backup", "--quiet", "--repo", str(self.repo), self.db.name],
                           self.db.parent, self.env)
        if self.name == "borg":
            return measure(["borg", "create", "--compression", "zstd,3", f"{self.repo}::s{self.n}", self.db.name],
                           self.db.parent, self.env)
        tmp = self.work / "pipeline.tmp"
        out = self.repo / f"s{self.n}.db.zst.age"
        script = (f'sqlite3 "{self.db}" ".backup \'{tmp}\'" && zstd -q -3 -T0 -c "{tmp}" | '
                  f'age -r {self.recipient} > "{out}" && rm -f "{tmp}"')
        return measure(self.sh(script), self.work, self.env)

    def restore(self, which: str, target: Path) -> dict:
        """Restore the newest ("newest") or first ("oldest") snapshot into `target` (a file)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        if self.name == "snapkit":
            ref = "@0" if which == "newest" else f"@{self.n - 1}"
            return measure([sys.executable, "-m", "snapkit", "restore", ref, "--to-url", f"sqlite:///{target}",
                            "--yes"], self.db.parent, self.env)
        if self.name == "restic":
            snaps = json.loads(subprocess.run(["restic", "snapshots", "--json", "--repo", str(self.repo)],
                                              env=self.env, check=True, capture_output=True).stdout)
            sid = snaps[-1]["short_id"] if which == "newest" else snaps[0]["short_id"]
            r = measure(["restic", "restore", sid, "--repo", str(self.repo), "--target", str(target.parent / "r")],
                        self.work, self.env)
            found = next((target.parent / "r").rglob(self.db.name))
            found.rename(target)
            return r
        if self.name == "borg":
            name = f"s{self.n}" if which == "newest" else "s1"
            (target.parent / "b").mkdir(exist_ok=True)
            r = measure(["borg", "extract", f"{self.repo}::{name}"], target.parent / "b", self.env)
            next((target.parent / "b").rglob(self.db.name)).rename(target)
            return r
        n = self.n if which == "newest" else 1
        key = self.work / "age.key"
        script = f'age -d -i "{key}" "{self.repo}/s{n}.db.zst.age" | zstd -q -d -o "{target}"'
        return measure(self.sh(script), self.work, self.env)

    def size(self) -> int:
        return tree_bytes(self.repo)


def sha3(db: Path) -> str:
    return subprocess.run(["sqlite3", str(db), ".sha3sum"], capture_output=True, text=True, check=True).stdout


def scenario_history(peers: list[str], size_mb: float, changes: int, rep: int, work: Path, env: dict) -> dict:
    """First snapshot, then `changes` rounds of 1% change + snapshot; sizes; restores of oldest and newest."""
    d = work / f"rep{rep}"
    d.mkdir()
    db = d / "app" / "app.db"
    db.parent.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=db.parent, check=True)
    subprocess.run(["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q", "--allow-empty", "-m",
                    "bench"], cwd=db.parent, check=True)
    workload.create(db, size_mb, seed=rep + 1)
    oldest = sha3(db)
    tools = {p: Peer(p, d, db, env) for p in peers}
    for t in tools.values():
        t.init()
    out: dict = {"db_bytes": db.stat().st_size, "tools": {p: {"snapshots": [], "sizes": []} for p in peers}}
    for round_no in range(changes + 1):
        if round_no:
            workload.change(db, percent=1.0, seed=100 * rep + round_no)
        order = peers if round_no % 2 == 0 else list(reversed(peers))  # interleave, alternate order
        for p in order:
            res = tools[p].snapshot()
            out["tools"][p]["snapshots"].append(res)
            out["tools"][p]["sizes"].append(tools[p].size())
    newest = sha3(db)
    # The unchanged database: what a snapshot costs when nothing changed.
    for p in peers:
        out["tools"][p]["unchanged"] = tools[p].snapshot()
    for which, expect in (("newest", newest), ("oldest", oldest)):
        for p in peers:
            target = d / f"restore-{p}-{which}" / "app.db"
            res = tools[p].restore(which, target)
            res["exact"] = sha3(target) == expect
            out["tools"][p][f"restore_{which}"] = res
            shutil.rmtree(target.parent)
    shutil.rmtree(d)
    return out


def grow(db: Path, size_mb: float) -> None:
    """Make the workload database reach size_mb quickly: copy events rows in SQL until it does."""
    import sqlite3

    workload.create(db, min(size_mb, 256))
    con = sqlite3.connect(db)
    while db.stat().st_size < size_mb * 1024 * 1024:
        missing = size_mb * 1024 * 1024 - db.stat().st_size
        (rows, pages) = con.execute("SELECT count(*), (SELECT page_count FROM pragma_page_count) FROM events").fetchone()
        per_row = pages * 4096 / max(1, rows) * 0.7
        con.execute("INSERT INTO events(user_id, kind, payload, at) SELECT user_id, kind, payload, at FROM events "
                    "LIMIT ?", (max(1000, int(missing / per_row)),))
        con.commit()
    con.close()


def memory_scaling(work: Path, env: dict, sizes_mb: list[float]) -> dict:
    """Peak RSS of snapkit create and restore as the database grows (flat is the goal)."""
    out = {}
    for size in sizes_mb:
        d = work / f"mem-{int(size)}"
        app = d / "app"
        app.mkdir(parents=True)
        subprocess.run(["git", "init", "-q"], cwd=app, check=True)
        (app / ".gitignore").write_text("app.db\n")
        subprocess.run(["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q", "--allow-empty", "-m",
                        "bench"], cwd=app, check=True)
        db = app / "app.db"
        grow(db, size)
        subprocess.run([sys.executable, "-m", "snapkit", "init", "--db", f"sqlite:///{db}", "--store",
                        str(d / "store")], cwd=app, env=env, check=True, capture_output=True)
        create = measure([sys.executable, "-m", "snapkit", "create", "--no-commit", "--quiet"], app, env)
        target = d / "restored.db"
        restore = measure([sys.executable, "-m", "snapkit", "restore", "@0", "--to-url", f"sqlite:///{target}",
                           "--yes"], app, env)
        exact = sha3(target) == sha3(db)
        out[str(int(size))] = {"db_bytes": db.stat().st_size, "create": create, "restore": restore, "exact": exact}
        print(f"[bench] memory at {db.stat().st_size / 2**30:.2f} GiB: create {create}, restore {restore}",
              file=sys.stderr)
        shutil.rmtree(d)
    return out


GIT = ["git", "-c", "user.name=b", "-c", "user.email=b@b"]


def _git_app(app: Path, db_mb: float, env: dict) -> Path:
    """A git work tree with a workload database of db_mb, `snapkit init` done, one commit."""
    app.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=app, check=True)
    (app / ".gitignore").write_text("app.db\n")
    workload.create(app / "app.db", db_mb)
    subprocess.run([sys.executable, "-m", "snapkit", "init", "--db", "sqlite:///app.db"], cwd=app, env=env,
                   check=True, capture_output=True)
    subprocess.run([*GIT, "add", "-A"], cwd=app, check=True)
    subprocess.run([*GIT, "commit", "-qm", "init"], cwd=app, check=True, env=env)
    return app


def hook_overhead(work: Path, env: dict, size_mb: float, reps: int) -> dict:
    """Added wall time of `git commit` with the post-commit hook, on a small database."""
    app = _git_app(work / "hook", size_mb, env)
    g = GIT
    with_hook, without = [], []
    for i in range(reps):
        subprocess.run([sys.executable, "-m", "snapkit", "hook", "uninstall"], cwd=app, env=env, check=True,
                       capture_output=True)
        without.append(measure([*g, "commit", "-q", "--allow-empty", "-m", f"n{i}"], app, env)["wall_s"])
        subprocess.run([sys.executable, "-m", "snapkit", "hook", "install"], cwd=app, env=env, check=True,
                       capture_output=True)
        workload.change(app / "app.db", percent=1.0, seed=i)
        with_hook.append(measure([*g, "commit", "-q", "--allow-empty", "-m", f"h{i}"], app, env)["wall_s"])
    shutil.rmtree(app)
    return {"db_mb": size_mb, "commit_s": without, "commit_with_hook_s": with_hook,
            "added_s_median": round(statistics.median(with_hook) - statistics.median(without), 3)}


def catalog_speed(work: Path, env: dict, n: int) -> dict:
    """`snapkit list` with n snapshots in the catalog (entries written directly, as create would)."""
    app = work / "catalog"
    app.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=app, check=True)
    subprocess.run(["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q", "--allow-empty", "-m",
                    "x"], cwd=app, check=True)
    (app / "app.db").write_bytes(b"")
    subprocess.run([sys.executable, "-m", "snapkit", "init", "--db", "sqlite:///app.db"], cwd=app, env=env,
                   check=True, capture_output=True)
    code = f"""
import os, sys
from snapkit.project import Project
p = Project.open({str(app)!r})
store = p.unlocked_store()
for i in range({n}):
    p.catalog.add({{"id": f"20260101T{{i // 3600 % 24:02d}}{{i // 60 % 60:02d}}{{i % 60:02d}}Z{{i // 86400:02d}}-abcdef0",
                     "commit": "abcdef0" * 5 + "abcde", "branch": "main", "message": f"snapshot {{i}}",
                     "created_at": "2026-01-01T00:00:00Z", "env": "default", "tags": [], "pinned": False,
                     "safety": False, "dirty": False, "engine": "sqlite", "logical_bytes": 1, "stored_bytes": 1,
                     "layers": {{}}}}, "0" * 64)
"""
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    cold = measure([sys.executable, "-m", "snapkit", "list", "-n", "20"], app, env)
    warm = [measure([sys.executable, "-m", "snapkit", "list"], app, env) for _ in range(3)]
    version = [measure([sys.executable, "-m", "snapkit", "--version"], app, env) for _ in range(5)]
    shutil.rmtree(app)
    return {"snapshots": n, "list_cold": cold, "list_warm_s": [w["wall_s"] for w in warm],
            "version_s": [v["wall_s"] for v in version]}


def big_index(work: Path, env: dict, chunks: int, db_mb: float) -> dict:
    """Open + `create` of an unchanged database on a store whose index holds `chunks` chunks.

    The store gets one real snapshot, then index objects of random records
    (as if many other snapshots had been made) written through the store's
    own code. The first create after that builds the local index cache (a
    new machine); the next ones find it up to date (every hook run).
    """
    app = _git_app(work / "bigindex", db_mb, env)
    subprocess.run([sys.executable, "-m", "snapkit", "create", "--no-commit"], cwd=app, env=env, check=True,
                   capture_output=True)
    code = f"""
import os
from snapkit.project import Project
from snapkit.store.index import pack_record, sort_records
store = Project.open({str(app)!r}).unlocked_store()
left = {chunks}
while left:
    n = min(left, 200_000)
    recs = b"".join(pack_record(os.urandom(32), os.urandom(16), 75, 20000, 65536, 0, None) for _ in range(n))
    name = "index/" + os.urandom(16).hex()
    store.backend.put_new(name, store.seal_index(name, sort_records(recs)))
    left -= n
"""
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    argv = [sys.executable, "-m", "snapkit", "create", "--no-commit"]
    cold = measure(argv, app, env)
    warm = [measure(argv, app, env) for _ in range(3)]
    shutil.rmtree(app)
    return {"chunks": chunks, "db_mb": db_mb, "create_cold": cold, "create_warm": warm,
            "warm_s_median": statistics.median(w["wall_s"] for w in warm),
            "warm_rss_mb_max": max(w["rss_mb"] for w in warm)}


def summarize(runs: list[dict], peers: list[str]) -> dict:
    """Medians and min–max per tool and scenario, and ratios snapkit/peer."""
    def stats(values):
        return {"median": round(statistics.median(values), 3), "min": min(values), "max": max(values)}

    s: dict = {}
    for p in peers:
        t = [r["tools"][p] for r in runs]
        s[p] = {
            "first_s": stats([x["snapshots"][0]["wall_s"] for x in t]),
            "change_s": stats([x["snapshots"][1]["wall_s"] for x in t]) if len(t[0]["snapshots"]) > 1 else None,
            "unchanged_s": stats([x["unchanged"]["wall_s"] for x in t]),
            "first_size": stats([x["sizes"][0] for x in t]),
            "growth_1": stats([x["sizes"][1] - x["sizes"][0] for x in t]) if len(t[0]["sizes"]) > 1 else None,
            "size_after_all": stats([x["sizes"][-1] for x in t]),
            "growth_per_change": stats([(x["sizes"][-1] - x["sizes"][0]) / max(1, len(x["sizes"]) - 1) for x in t]),
            "restore_newest_s": stats([x["restore_newest"]["wall_s"] for x in t]),
            "restore_oldest_s": stats([x["restore_oldest"]["wall_s"] for x in t]),
            "peak_rss_mb": stats([max(y["rss_mb"] for y in x["snapshots"]) for x in t]),
            "restore_rss_mb": stats([x["restore_newest"]["rss_mb"] for x in t]),
            "exact": all(x["restore_newest"]["exact"] and x["restore_oldest"]["exact"] for x in t),
        }
    ratios = {}
    for p in peers:
        if p == "snapkit":
            continue
        ratios[p] = {}
        for key in ("first_s", "change_s", "growth_per_change", "restore_newest_s", "restore_oldest_s"):
            if s[p].get(key) and s["snapkit"].get(key):
                # pair by pair: snapkit's run i against the peer's run i, then the median ratio
                pairs = []
                for r in runs:
                    a, b = _value(r["tools"]["snapkit"], key), _value(r["tools"][p], key)
                    if b:
                        pairs.append(a / b)
                ratios[p][key] = round(statistics.median(pairs), 3) if pairs else None
    return {"tools": s, "snapkit_over_peer": ratios}


def _value(t: dict, key: str) -> float:
    if key == "first_s":
        return t["snapshots"][0]["wall_s"]
    if key == "change_s":
        return t["snapshots"][1]["wall_s"]
    if key == "growth_per_change":
        return (t["sizes"][-1] - t["sizes"][0]) / max(1, len(t["sizes"]) - 1)
    if key == "restore_newest_s":
        return t["restore_newest"]["wall_s"]
    return t["restore_oldest"]["wall_s"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, peers optional (CI)")
    ap.add_argument("--size-mb", type=float, default=None)
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--changes", type=int, default=None)
    ap.add_argument("--catalog", type=int, default=None, help="snapshots for the list benchmark")
    ap.add_argument("--memory-gib", default="1,4", help="database sizes for the peak-RSS scenario ('' skips it)")
    ap.add_argument("--pg-size-mb", type=float, default=None,
                    help="SQLite-equivalent size of the PostgreSQL workload (0 skips it)")
    ap.add_argument("--index-chunks", type=int, default=None,
                    help="chunks in the index for the big-store scenario (0 skips it)")
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temp dir)")
    ap.add_argument("--no-report", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    size = a.size_mb or (8 if a.smoke else 1024)
    reps = a.reps or (1 if a.smoke else 3)
    changes = a.changes if a.changes is not None else (2 if a.smoke else 10)
    catalog_n = a.catalog or (200 if a.smoke else 10000)
    available = ensure_peers(optional=a.smoke)
    peers = [p for p in a.peers.split(",") if p in available]
    work = Path(tempfile.mkdtemp(prefix="snapkit-bench-", dir=a.work))
    env = {**os.environ, "RESTIC_PASSWORD": PASSWORD, "BORG_PASSPHRASE": PASSWORD,
           "HOME": str(work / "home"), "XDG_CONFIG_HOME": str(work / "home" / ".config"),
           "XDG_CACHE_HOME": str(work / "home" / ".cache"),
           "BORG_BASE_DIR": str(work / "borg"), "RESTIC_CACHE_DIR": str(work / "restic-cache"),
           "PYTHONPATH": str(ROOT), "GIT_CONFIG_NOSYSTEM": "1"}
    (work / "home").mkdir()
    try:
        runs = []
        for rep in range(reps):
            print(f"[bench] repetition {rep + 1}/{reps}: {size} MB, {changes} changes, {', '.join(peers)}",
                  file=sys.stderr)
            runs.append(scenario_history(peers, size, changes if rep == 0 else min(changes, 1), rep, work, env))
        pg_size = a.pg_size_mb if a.pg_size_mb is not None else (4 if a.smoke else size * 0.75)
        pg = None
        if pg_size:
            from benchmarks.postgres import scenario_postgres

            print(f"[bench] PostgreSQL: {pg_size} MB of rows, {changes} changes", file=sys.stderr)
            pg = scenario_postgres(pg_size, changes, reps, work, env, measure)
        mem_sizes = [8, 32] if a.smoke else [float(x) * 1024 for x in a.memory_gib.split(",") if x]
        memory = memory_scaling(work, env, mem_sizes) if mem_sizes else None
        print("[bench] hook and catalog", file=sys.stderr)
        hook = hook_overhead(work, env, 2 if a.smoke else 20, 3 if a.smoke else 5)
        catalog = catalog_speed(work, env, catalog_n)
        n_index = a.index_chunks if a.index_chunks is not None else (50_000 if a.smoke else 1_000_000)
        bigindex = None
        if n_index:
            print(f"[bench] open + create on a store of {n_index} chunks", file=sys.stderr)
            bigindex = big_index(work, env, n_index, 2 if a.smoke else 20)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "smoke": a.smoke, "size_mb": size,
              "reps": reps, "changes": changes, "peers": peers, "machine": _machine(), "runs": runs,
              "summary": summarize(runs, peers), "hook": hook, "catalog": catalog, "postgres": pg,
              "memory": memory, "big_index": bigindex}
    out = a.out or ROOT / "benchmarks" / "results" / f"{time.strftime('%Y-%m-%d')}{'-smoke' if a.smoke else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"[bench] wrote {out}", file=sys.stderr)
    if not a.no_report:
        from benchmarks.report import write_report

        write_report(result)
    return 0


def _machine() -> dict:
    import platform

    versions = {}
    for tool, arg in (("restic", "version"), ("borg", "--version"), ("zstd", "--version"), ("age", "--version"),
                      ("sqlite3", "--version")):
        if shutil.which(tool):
            v = subprocess.run([tool, arg], capture_output=True, text=True).stdout.strip().splitlines()
            versions[tool] = v[0][:80] if v else "?"
    from snapkit import __version__

    versions["snapkit"] = __version__
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "versions": versions}


if __name__ == "__main__":
    sys.exit(main())
