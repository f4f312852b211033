"""Results → human tables or --json. The only place output is shaped."""

from __future__ import annotations

import json
import sys
import time

from snapkit.model import RESULT_SCHEMA


def emit_json(obj) -> None:
    if hasattr(obj, "as_json"):
        obj = obj.as_json()
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def console(stderr: bool = False):
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Piped output is read by scripts and people alike: do not truncate it to 80 columns.
    return Console(stderr=stderr, highlight=False, soft_wrap=True,
                   width=None if stream.isatty() else 200)


def snapshot_table(entries: list[dict]) -> None:
    from rich.table import Table

    if not entries:
        console().print("no snapshots yet — run `snapkit create`")
        return
    table = Table(box=None, pad_edge=False)
    for col in ("id", "commit", "created", "env", "marks", "size", "added", "message"):
        table.add_column(col, no_wrap=col != "message", justify="right" if col in ("size", "added") else "left")
    for e in entries:
        marks = []
        if e.get("pinned"):
            marks.append("pinned")
        marks += e.get("tags", [])
        table.add_row(e["id"], e["commit"][:7], e["created_at"].replace("T", " ").rstrip("Z"), e.get("env", ""),
                      ",".join(marks), human_bytes(e.get("logical_bytes")), human_bytes(e.get("stored_bytes")),
                      (e.get("message") or "").splitlines()[0] if e.get("message") else "")
    console().print(table)


def list_json(entries: list[dict]) -> None:
    emit_json({"schema": RESULT_SCHEMA, "snapshots": entries})


def create(result) -> None:
    c = console(stderr=True)
    for w in result.warnings:
        c.print(f"snapkit: warning: {w}")
    ratio = f"{result.new_chunks}/{result.chunks} chunks new"
    c.print(f"snapshot {result.id}: {human_bytes(result.logical_bytes)} "
            f"→ {human_bytes(result.stored_bytes)} added ({ratio}) in {result.duration_s:.2f}s")
    print(result.id)


def plan(p, dry_run: bool) -> None:
    c = console(stderr=not dry_run)
    head = "would restore" if dry_run else "restore"
    c.print(f"{head} snapshot {p.id} (commit {p.commit[:7]})")
    if "database" in p.layers:
        where = p.to_url or p.database
        c.print(f"  database → {where}" + ("  (safety snapshot first)" if p.safety_snapshot else ""))
    if p.code_action:
        c.print(f"  code: {p.code_action}")
    if p.dirty_files:
        c.print("  uncommitted changes: " + ", ".join(p.dirty_files[:10]))
    for n in p.notes:
        c.print(f"  note: {n}")


def restore(result) -> None:
    c = console(stderr=True)
    if result.safety_id:
        c.print(f"safety snapshot {result.safety_id} taken first")
    c.print(f"restored {', '.join(result.restored)} from {result.plan.id}")
    if result.plan.schema == "older":
        c.print("note: the snapshot's schema is older than the code: run your migrations"
                + (" (post_restore ran: " + "; ".join(result.post_restore) + ")" if result.post_restore else ""))


def verify(result) -> None:
    c = console(stderr=not result.ok)
    if result.ok:
        extra = f", {result.restore_tested} restore-tested" if result.restore_tested else ""
        c.print(f"ok: {result.snapshots} snapshots, {result.chunks_checked} chunks verified{extra}")
        return
    for p in result.problems:
        where = " ".join(x for x in (
            f"snapshot {p.snapshot}" if p.snapshot else None,
            f"layer {p.layer}" if p.layer else None,
            f"chunk {p.chunk}" if p.chunk else None,
            p.object) if x)
        c.print(f"damaged: {where}: {p.message}")
    c.print(f"{len(result.problems)} problem(s) in {result.snapshots} snapshots checked")


def status(r) -> None:
    c = console()
    c.print(f"store        {r.store}")
    c.print(f"snapshots    {r.snapshots}")
    if r.newest:
        c.print(f"newest       {r.newest} ({_age(r.newest_age_s)} ago)")
    c.print(f"HEAD         {r.head_commit[:7] if r.head_commit else '-'}: "
            + (f"snapshot {r.head_snapshot}" if r.head_snapshot else "no snapshot"))
    ratio = f" (dedup {r.dedup_ratio}×)" if r.dedup_ratio else ""
    c.print(f"size         {human_bytes(r.logical_bytes)} logical, {human_bytes(r.stored_bytes)} stored{ratio}")
    if r.last_verify:
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(r.last_verify["time"]))
        c.print(f"last verify  {'ok' if r.last_verify['ok'] else 'FAILED'} at {when} UTC")
    else:
        c.print("last verify  never")
    c.print(f"hook         {'installed' if r.hook_installed else 'not installed'}")
    c.print("health       " + ("ok" if r.healthy else "UNHEALTHY: " + "; ".join(r.reasons)))


def _age(s: float | None) -> str:
    if s is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s / size:.1f}{unit}"
    return f"{s:.0f}s"
