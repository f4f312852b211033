"""`snapkit migrate` and `snapkit repair index`: store maintenance. Parse, call, render."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from snapkit.cli import render

repair_app = typer.Typer(help="Rebuild derived parts of the store from what it holds.", no_args_is_help=True)

JSON = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]


def _project():
    from snapkit.project import Project

    return Project.open(Path.cwd())


def migrate(json_: JSON = False):
    """Convert a store written by an older snapkit to the current format, in place and crash-safely."""
    from snapkit.ops.migrate import migrate as do_migrate

    result = do_migrate(_project())
    if json_:
        return render.emit_json(result)
    c = render.console(stderr=True)
    if result.from_format == result.to_format:
        c.print(f"store {result.store} is already format {result.to_format}"
                + (f"; removed {result.removed} leftover(s) of format 1" if result.removed else ""))
    else:
        c.print(f"store {result.store}: format {result.from_format} → {result.to_format}, "
                f"{result.snapshots} snapshot(s), {result.chunks} chunk(s) indexed")
    for name in result.skipped:
        c.print(f"warning: {name} is damaged and was not carried over (run `snapkit verify`)", markup=False)


@repair_app.command("index")
def repair_index(json_: JSON = False):
    """Rebuild the store's index from the pack files alone (after index damage or loss)."""
    from snapkit.ops.repair import repair_index as do_repair

    result = do_repair(_project())
    if json_:
        return render.emit_json(result)
    c = render.console(stderr=True)
    c.print(f"indexed {result.chunks} chunk(s) from {result.packs} pack(s): "
            f"{result.index_objects_written} index object(s) written, {result.index_objects_removed} replaced")
    for name in result.damaged_packs:
        c.print(f"warning: {name} is damaged; its chunks are not indexed (run `snapkit verify`)",
                markup=False)
