"""Turn a results JSON into docs/benchmarks.md (tables) and docs/benchmarks.png (chart)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MB = 1024 * 1024

TARGETS = [
    # (label, peer, summary key, maximum ratio snapkit/peer)
    ("first snapshot ≤ 0.3× restic", "restic", "first_s", 0.3),
    ("first snapshot ≤ 0.5× borg", "borg", "first_s", 0.5),
    ("snapshot after 1% change ≤ 0.2× restic", "restic", "change_s", 0.2),
    ("store growth per change ≤ 0.1× restic", "restic", "growth_per_change", 0.1),
    ("full restore (newest) ≤ 1.0× borg", "borg", "restore_newest_s", 1.0),
]


def _fmt(stat, unit: str = "s") -> str:
    if not stat:
        return "–"
    if unit == "MB":
        return f"{stat['median'] / MB:.1f} MB ({stat['min'] / MB:.1f}–{stat['max'] / MB:.1f})"
    if unit == "RSS":
        return f"{stat['median']:.0f} MB"
    return f"{stat['median']:.2f} s ({stat['min']:.2f}–{stat['max']:.2f})"


def markdown(r: dict) -> str:
    s = r["summary"]["tools"]
    ratios = r["summary"]["snapkit_over_peer"]
    peers = r["peers"]
    first = r["runs"][0]
    lines = [
        "# Benchmarks",
        "",
        f"Run of {r['date']} ({'smoke run: tiny sizes' if r['smoke'] else 'full run'}): a "
        f"{first['db_bytes'] / MB:.0f} MB SQLite database of realistic tables (users, orders, order_items, "
        f"events with JSON text, indexes; `benchmarks/workload.py`), {r['reps']} repetition(s), "
        f"{r['changes']} changes of 1% of rows (skewed to recent rows, plus inserts and deletes) in the first "
        f"repetition and 1 in the others. Tools run interleaved on the same database. Wall time and peak RSS "
        f"of the whole process from the OS (`os.wait4`). Medians, (min–max). Machine: {r['machine']['cpus']} "
        f"cores, Python {r['machine']['python']}.",
        "",
        "Reproduce: `python -m benchmarks.run` (full; installs restic, borgbackup, zstd, age, sqlite3 from "
        "Debian packages when missing) or `python -m benchmarks.run --smoke` (what CI runs).",
        "",
        "| scenario | " + " | ".join(peers) + " |",
        "|---|" + "---|" * len(peers),
    ]
    rows = [
        ("first snapshot", "first_s", "s"),
        ("snapshot after a 1% change", "change_s", "s"),
        ("snapshot, database unchanged", "unchanged_s", "s"),
        ("store after first snapshot", "first_size", "MB"),
        ("store growth per change", "growth_per_change", "MB"),
        ("full restore, newest", "restore_newest_s", "s"),
        ("full restore, oldest", "restore_oldest_s", "s"),
        ("peak RSS, snapshot", "peak_rss_mb", "RSS"),
        ("peak RSS, restore", "restore_rss_mb", "RSS"),
    ]
    for label, key, unit in rows:
        lines.append(f"| {label} | " + " | ".join(_fmt(s[p].get(key), unit) for p in peers) + " |")
    lines.append("| restores exact (sha3 of tables) | " + " | ".join("yes" if s[p]["exact"] else "**NO**"
                                                                      for p in peers) + " |")
    sizes = {p: first["tools"][p]["sizes"] for p in peers}
    lines += ["", f"Store size after the first snapshot and after each of the {len(sizes[peers[0]]) - 1} changes "
              "(first repetition):", "", "| after | " + " | ".join(peers) + " |", "|---|" + "---|" * len(peers)]
    for i in range(len(sizes[peers[0]])):
        lines.append(f"| {'first' if i == 0 else f'change {i}'} | "
                     + " | ".join(f"{sizes[p][i] / MB:.1f} MB" for p in peers) + " |")
    lines += ["", "## Targets", "", "Ratios are snapkit ÷ peer, computed pair by pair within a repetition, "
              "then the median.", "", "| target | measured | met |", "|---|---|---|"]
    for label, peer, key, limit in TARGETS:
        v = ratios.get(peer, {}).get(key)
        lines.append(f"| {label} | {'–' if v is None else f'{v:.3f}×'} | "
                     f"{'–' if v is None else ('yes' if v <= limit else '**no**')} |")
    h, c = r["hook"], r["catalog"]
    lines += [f"| hook adds ≤ 0.5 s to `git commit` ({h['db_mb']} MB database) | {h['added_s_median']:.2f} s | "
              f"{'yes' if h['added_s_median'] <= 0.5 else '**no**'} |"]
    v = sorted(c["version_s"])[len(c["version_s"]) // 2]
    lines += [f"| `snapkit --version` ≤ 0.15 s | {v:.3f} s | {'yes' if v <= 0.15 else '**no**'} |"]
    mem = r.get("memory") or {}
    if mem:
        peak = max(max(m["create"]["rss_mb"], m["restore"]["rss_mb"]) for m in mem.values())
        biggest = max(m["db_bytes"] for m in mem.values()) / 2**30
        lines += [f"| peak RSS ≤ 120 MB at 4 GiB (largest here: {biggest:.1f} GiB) | {peak:.0f} MB | "
                  f"{'yes' if peak <= 120 else '**no**'} |"]
    else:
        snap_rss = s["snapkit"]["peak_rss_mb"]["median"]
        lines += [f"| peak RSS ≤ 120 MB | {snap_rss:.0f} MB | {'yes' if snap_rss <= 120 else '**no**'} |"]
    pg = (r.get("postgres") or {}).get("summary")
    if pg:
        lines += [f"| PostgreSQL snapshot ≤ 1.15× `pg_dump -Fc -Z0` | first {pg['first_over_pg_dump_z0']:.2f}×, "
                  f"after a change {pg['change_over_pg_dump_z0'] or 0:.2f}× | "
                  f"{'yes' if max(pg['first_over_pg_dump_z0'], pg['change_over_pg_dump_z0'] or 0) <= 1.15 else '**no**'} |"]
        if pg.get("history_over_dumps") is not None:
            lines += [f"| PostgreSQL: {pg['changes']}-change history ≤ 0.1× {pg['changes']} `pg_dump -Fc` files | "
                      f"{pg['history_over_dumps']:.3f}× | {'yes' if pg['history_over_dumps'] <= 0.1 else '**no**'} |"]
    big = r.get("big_index")
    if big:
        ok = big["warm_s_median"] < 1.0 and big["warm_rss_mb_max"] <= 120
        lines += [f"| open + `create` of an unchanged database, store of {big['chunks']:,} chunks: < 1 s, "
                  f"≤ 120 MB | {big['warm_s_median']:.2f} s, {big['warm_rss_mb_max']:.0f} MB "
                  f"(first on a new machine: {big['create_cold']['wall_s']:.2f} s, "
                  f"{big['create_cold']['rss_mb']:.0f} MB) | {'yes' if ok else '**no**'} |"]
    w = sorted(c["list_warm_s"])[len(c["list_warm_s"]) // 2]
    lines += ["", f"`snapkit list` with {c['snapshots']} snapshots: {c['list_cold']['wall_s']:.2f} s cold "
              f"(builds the catalog cache), {w:.2f} s warm.", ""]
    lines += ["![benchmark chart](benchmarks.png)", ""]
    lines += _postgres_section(r.get("postgres")) + _memory_section(mem)
    lines += ["## What each peer does", "",
              "- **restic** (`restic backup app.db`, default settings): content-defined chunks of ~1 MiB, "
              "compressed and encrypted; it reads the live file (not a consistent copy).",
              "- **borg** (`borg create --compression zstd,3`, `repokey-blake2`): content-defined chunks of "
              "~2 MiB; reads the live file.",
              "- **pipeline**: `sqlite3 app.db .backup` to a temp file, `zstd -3 -T0`, `age -r`: a full "
              "encrypted copy per snapshot.",
              "- **snapkit** (`snapkit create --no-commit`): a consistent copy (one read transaction), 64 KiB "
              "page-aligned blocks, unchanged blocks deduplicated, changed ones stored as zstd deltas against "
              "the previous snapshot's block, AES-256-GCM; plus the code layer and metadata.", ""]
    notes = ROOT / "benchmarks" / "NOTES.md"
    if notes.exists():
        lines += [notes.read_text()]
    return "\n".join(lines)


def _postgres_section(pg: dict | None) -> list[str]:
    if not pg:
        return []
    s = pg["summary"]

    def med(runs):
        return _fmt({"median": sorted(x["wall_s"] for x in runs)[len(runs) // 2],
                     "min": min(x["wall_s"] for x in runs), "max": max(x["wall_s"] for x in runs)}) if runs else "–"

    lines = ["## PostgreSQL", "",
             f"The same tables in a throwaway PostgreSQL cluster ({pg['db_bytes'] / MB:.0f} MB, "
             f"`pg_database_size`; its uncompressed custom-format dump is {pg['dump_bytes'] / MB:.0f} MB), "
             f"the same 1% change, {s['changes']} times (`benchmarks/postgres.py`). "
             "`pg_dump -Fc -Z0 > /dev/null` is the floor: dumping alone.", "",
             "| | time | |", "|---|---|---|",
             f"| `pg_dump -Fc -Z0` to /dev/null | {med(pg['pg_dump_z0'])} | |",
             f"| snapkit create, first | {med(pg['snapkit_first'])} | {s['first_over_pg_dump_z0']:.2f}× pg_dump |",
             f"| snapkit create, after a change | {med(pg['snapkit_change'])} | "
             f"{(s['change_over_pg_dump_z0'] or 0):.2f}× pg_dump |",
             f"| `pg_dump -Fc` (gzip) to a file | {med(pg['pg_dump_fc_s'])} | |", "",
             "| bytes | snapkit store | `pg_dump -Fc` files |", "|---|---|---|",
             f"| first snapshot / first dump | {s['first_store_bytes'] / MB:.1f} MB | "
             f"{s['first_dump_fc_bytes'] / MB:.1f} MB |"]
    if s.get("history_bytes") is not None:
        lines += [f"| first change | +{s['growth_first_change'] / MB:.2f} MB "
                  f"({100 * s['growth_first_change_over_first']:.1f}% of the first) | "
                  f"+{pg['pg_dump_fc_sizes'][1] / MB:.1f} MB |",
                  f"| {s['changes']} changes after the first | +{s['history_bytes'] / MB:.1f} MB | "
                  f"+{s['dumps_fc_bytes'] / MB:.1f} MB ({s['history_over_dumps']:.3f}×) |",
                  f"| everything | {pg['store_sizes'][-1] / MB:.1f} MB | {sum(pg['pg_dump_fc_sizes']) / MB:.1f} MB "
                  f"({s['store_over_all_dumps']:.3f}×) |"]
    lines += [f"", f"Peak RSS of snapkit create: {s['peak_rss_mb']:.0f} MB.", ""]
    return lines


def _memory_section(mem: dict) -> list[str]:
    if not mem:
        return []
    lines = ["## Memory as the database grows", "",
             "Peak RSS of the whole process (`os.wait4`) for a first snapshot and a full restore "
             "(`benchmarks/run.py`, `memory_scaling`).", "",
             "| database | create | restore | restore exact |", "|---|---|---|---|"]
    for m in sorted(mem.values(), key=lambda m: m["db_bytes"]):
        lines.append(f"| {m['db_bytes'] / 2**30:.2f} GiB | {m['create']['rss_mb']:.0f} MB, "
                     f"{m['create']['wall_s']:.1f} s | {m['restore']['rss_mb']:.0f} MB, "
                     f"{m['restore']['wall_s']:.1f} s | {'yes' if m['exact'] else '**NO**'} |")
    return lines + [""]


def chart(r: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    s = r["summary"]["tools"]
    peers = r["peers"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, (title, key, scale, unit) in zip(axes, [
        ("snapshot time", None, 1, "s"),
        ("store growth per 1% change", "growth_per_change", MB, "MB"),
        ("full restore (newest)", "restore_newest_s", 1, "s"),
    ]):
        if key is None:
            first = [s[p]["first_s"]["median"] for p in peers]
            change = [s[p]["change_s"]["median"] if s[p]["change_s"] else 0 for p in peers]
            x = range(len(peers))
            ax.bar([i - 0.2 for i in x], first, 0.4, label="first")
            ax.bar([i + 0.2 for i in x], change, 0.4, label="after 1% change")
            ax.legend()
        else:
            ax.bar(peers, [s[p][key]["median"] / scale for p in peers])
        ax.set_xticks(range(len(peers)), peers)
        ax.set_title(title)
        ax.set_ylabel(unit)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return True


def write_report(r: dict) -> None:
    docs = ROOT / "docs"
    chart(r, docs / "benchmarks.png")
    (docs / "benchmarks.md").write_text(markdown(r))
    print(f"[bench] wrote {docs / 'benchmarks.md'}", file=sys.stderr)


if __name__ == "__main__":
    write_report(json.loads(Path(sys.argv[1]).read_text()))
