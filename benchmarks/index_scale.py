"""Scale check of the chunk index cache (snapkit/store/index.py): a script, not a test.

    python -m benchmarks.index_scale [--records 2000000] [--work DIR]

Builds a cache of N records with random chunk ids, stored as one big index
object (synced) plus 50 small ones (each `add`ed, as 50 `create`s would), then
in a fresh subprocess measures what every command pays: open + sync when the
cache is up to date (wall time), 10,000 random lookups (5,000 hits drawn
uniformly over all records, 5,000 misses; µs each) and peak RSS (ru_maxrss).
Targets: open well under 1 s, peak RSS <= 120 MB, a lookup a few µs. The open
is measured with the cache files in the page cache (they were just written);
the MAC pass over every byte is the cost either way. Peak RSS is reported both
as ru_maxrss and as VmHWM (Linux carries ru_maxrss over from the parent
process, so the driver stays small: the build runs in its own child).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEY = bytes(range(32))
SMALL_OBJECTS = 50
SAMPLE = 5000


def make_object(rng: random.Random, n: int) -> bytes:
    """n records with random chunk ids, sorted: a store index object's payload."""
    from snapkit.store.index import RECORD

    ids = sorted(rng.randbytes(32) for _ in range(n))
    out = bytearray(n * RECORD.size)
    pack = b""
    for i, cid in enumerate(ids):
        if i % 1000 == 0:
            pack = rng.randbytes(16)  # ~1000 chunks a pack
        RECORD.pack_into(out, i * RECORD.size, cid, pack, (i % 1000) * 65536, 30000, 65536, 0,
                         bytes(32))
    return bytes(out)


def build(folder: Path, records: int, seed: int = 1) -> dict:
    """Build the cache in `folder`; write names.txt and sample.bin (hit ids) beside it."""
    from snapkit.store.index import ChunkIndex

    rng = random.Random(seed)
    small = max(1, records // 1000)
    big_n = max(0, records - SMALL_OBJECTS * small)
    names = [f"index/{i:032x}" for i in range(SMALL_OBJECTS + 1)]
    objects = {names[0]: make_object(rng, big_n)}
    t0 = time.perf_counter()
    index = ChunkIndex(folder / "cache", KEY)
    index.sync(names[:1], objects.__getitem__)
    t_sync = time.perf_counter() - t0
    adds = []
    for name in names[1:]:
        objects[name] = make_object(rng, small)
        t = time.perf_counter()
        index.add(name, objects[name])
        adds.append(time.perf_counter() - t)
    runs = len(index._runs)
    total = len(index)
    index.close()
    (folder / "names.txt").write_text("\n".join(names))
    # Hits drawn uniformly over all records (so ~95% from the big object).
    datas = list(objects.values())
    hits = []
    for data in rng.choices(datas, weights=[len(d) for d in datas], k=SAMPLE):
        off = rng.randrange(len(data) // 96) * 96
        hits.append(data[off : off + 32])
    (folder / "sample.bin").write_bytes(b"".join(hits))
    cache_bytes = sum(p.stat().st_size for p in (folder / "cache").iterdir())
    return {"records": total, "build_sync_s": round(t_sync, 3),
            "add_ms_mean": round(1000 * sum(adds) / len(adds), 2),
            "add_ms_max": round(1000 * max(adds), 2), "runs": runs,
            "cache_mb": round(cache_bytes / 2**20, 1)}


def measure(folder: Path) -> dict:
    """In a fresh process: open + up-to-date sync, lookups, peak RSS."""
    import os

    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    from snapkit.store.index import ChunkIndex

    names = (folder / "names.txt").read_text().split("\n")
    fetched = []
    t0 = time.perf_counter()
    index = ChunkIndex(folder / "cache", KEY)
    index.sync(names, lambda name: fetched.append(name) or b"")
    t_open = time.perf_counter() - t0
    raw = (folder / "sample.bin").read_bytes()
    hits = [raw[i : i + 32] for i in range(0, len(raw), 32)]
    misses = [os.urandom(32) for _ in hits]
    t = time.perf_counter()
    found = sum(index.lookup(cid) is not None for cid in hits)
    t_hit = time.perf_counter() - t
    t = time.perf_counter()
    wrong = sum(index.lookup(cid) is not None for cid in misses)
    t_miss = time.perf_counter() - t
    return {"open_sync_s": round(t_open, 4), "fetched": len(fetched), "runs": len(index._runs),
            "records": len(index), "hits_found": f"{found}/{len(hits)}", "false_hits": wrong,
            "lookup_hit_us": round(1e6 * t_hit / len(hits), 2),
            "lookup_miss_us": round(1e6 * t_miss / len(misses), 2),
            "rss_python_mb": round(rss_start / 1024, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "vm_hwm_mb": _vm_hwm_mb()}


def _vm_hwm_mb() -> float | None:
    # This process's own peak: Linux carries ru_maxrss over from the parent across
    # fork + exec, so ru_maxrss is at least the (small) driver's peak.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _run(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.index_scale", *args],
                          cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def build_in_subprocess(folder: Path, records: int) -> dict:
    """Build in a child, so that this process stays small for the measuring child's ru_maxrss."""
    return _run("--build", str(folder), "--records", str(records))


def measure_in_subprocess(folder: Path) -> dict:
    return _run("--measure", str(folder))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=2_000_000)
    ap.add_argument("--work", type=Path, help="folder for the cache (default: a temp folder)")
    ap.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--build", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.measure or args.build:
        result = measure(args.measure) if args.measure else build(args.build, args.records)
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        built = build_in_subprocess(Path(tmp), args.records)
        print("build:  ", json.dumps(built))
        print("measure:", json.dumps(measure_in_subprocess(Path(tmp))))


if __name__ == "__main__":
    main()
