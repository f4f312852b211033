"""Every command: parse options, call one ops function, hand the result to render."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from snapkit.cli import render

app = typer.Typer(
    help="Snapshots of your app's code and database, keyed by git commit: encrypted, deduplicated.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,  # a passphrase in a local must never be printed
    context_settings={"help_option_names": ["-h", "--help"]},
)
hook_app = typer.Typer(help="Manage the post-commit hook that snapshots every commit.", no_args_is_help=True)
app.add_typer(hook_app, name="hook")
# `snapkit key …` lives in its own module; it imports only typer and render (start-up time).
from snapkit.cli.key_cmd import key_app
from snapkit.cli.store_cmd import migrate as _migrate
from snapkit.cli.store_cmd import repair_app

app.add_typer(key_app, name="key")
app.add_typer(repair_app, name="repair")
app.command("migrate")(_migrate)

JSON = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]
QUIET = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]


def _project():
    from snapkit.project import Project

    return Project.open(Path.cwd())


def _busy(text: str, quiet: bool):
    """A spinner on a terminal; nothing when quiet or not a TTY."""
    from contextlib import nullcontext

    if quiet or not sys.stderr.isatty():
        return nullcontext()
    return render.console(stderr=True).status(text)


class _Bar:
    """A byte progress bar on a terminal (rich); `callback` is None when quiet or piped."""

    def __init__(self, text: str, quiet: bool):
        self.text = text
        self.on = not quiet and sys.stderr.isatty()
        self.callback = self._update if self.on else None
        self._task = None

    def __enter__(self):
        return self

    def _update(self, done: int, total: int | None) -> None:
        # Started on the first byte, so a confirmation prompt before it is not drawn over.
        if self._task is None:
            from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                                       TimeRemainingColumn, TransferSpeedColumn)

            self._progress = Progress(TextColumn(self.text), BarColumn(), DownloadColumn(),
                                      TransferSpeedColumn(), TimeRemainingColumn(),
                                      console=render.console(stderr=True), transient=True)
            self._progress.__enter__()
            self._task = self._progress.add_task(self.text, total=total)
        self._progress.update(self._task, completed=done)

    def __exit__(self, *exc):
        if self._task is not None:
            self._progress.__exit__(*exc)


@app.callback(invoke_without_command=True)
def _main(
    env: Annotated[str | None, typer.Option("--env", help="Environment (also SNAPKIT_ENV).")] = None,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
):
    if env:
        os.environ["SNAPKIT_ENV"] = env
    if version:
        from snapkit import __version__

        print(f"snapkit {__version__}")
        raise typer.Exit(0)


def _read_new_passphrase() -> str | None:
    from snapkit.cli.key_cmd import prompt_new_passphrase

    return prompt_new_passphrase("SNAPKIT_PASSPHRASE")  # init: the one that will open the store


@app.command()
def init(
    db: Annotated[str | None, typer.Option("--db", help="Database URL, e.g. sqlite:///app.db.")] = None,
    store: Annotated[str | None, typer.Option("--store", help="Store folder (default: snapshots).")] = None,
    passphrase: Annotated[bool, typer.Option("--passphrase", help="Protect the key with a passphrase (prompted, or SNAPKIT_PASSPHRASE).")] = False,
    key_file: Annotated[str | None, typer.Option("--key-file", help="Key file path (default: ~/.config/snapkit/keys/<store-id>.key).")] = None,
    hook: Annotated[bool, typer.Option("--hook", help="Also install the post-commit hook.")] = False,
    json_: JSON = False,
):
    """Write snapkit.toml, create the store and its key, ignore the store in git. Idempotent."""
    from snapkit.ops.init import init as do_init

    secret = _read_new_passphrase() if passphrase else None
    result = do_init(_project(), db=db, store=store, passphrase=secret, use_passphrase=passphrase,
                     key_file=key_file, hook=hook)
    if json_:
        return render.emit_json(result)
    c = render.console(stderr=True)
    c.print(f"store {result.store} ({'created' if result.created_store else 'already there'})")
    if result.key_file:
        c.print(f"key file {result.key_file}" + (" (created)" if result.created_key else ""))
        if result.created_key:
            c.print("[bold]back up this key file now[/bold]: without it (or a passphrase slot) "
                    "the snapshots cannot be read")
    if result.passphrase:
        c.print("passphrase slot added: keep the passphrase safe")
    if result.hook_installed:
        c.print("post-commit hook installed")


@app.command()
def create(
    message: Annotated[str | None, typer.Argument(help="Commit a dirty tree with this message first; also the snapshot's message.")] = None,
    no_commit: Annotated[bool, typer.Option("--no-commit", help="Snapshot HEAD even if the tree is dirty.")] = False,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Add a tag (repeatable).")] = None,
    pin: Annotated[bool, typer.Option("--pin", help="Golden snapshot: retention never removes it.")] = False,
    check: Annotated[str | None, typer.Option("--check", help="Run this validation command first; abort if it fails.")] = None,
    json_: JSON = False,
    quiet: QUIET = False,
):
    """Snapshot the database and code of HEAD (committing first when MESSAGE is given)."""
    project = _project()
    with _Bar("snapshot", quiet or json_) as bar:
        result = project.create(message, no_commit=no_commit, tags=tag or (), pin=pin, check=check,
                                progress=bar.callback)
    if json_:
        return render.emit_json(result)
    render.create(result)


@app.command("list")
def list_(
    n: Annotated[int | None, typer.Option("-n", help="Show at most N snapshots.")] = None,
    commit: Annotated[str | None, typer.Option("--commit", help="Only snapshots of this git revision.")] = None,
    tag: Annotated[str | None, typer.Option("--tag", help="Only snapshots with this tag.")] = None,
    env: Annotated[str | None, typer.Option("--env", help="Only this environment.")] = None,
    json_: JSON = False,
):
    """Snapshots, newest first. Needs the key (the catalog is sealed)."""
    # `--env` anywhere on the line is taken as the global option (cli/app.py), which
    # for `list` means: only that environment's snapshots.
    project = _project()
    entries = project.list(n=n, commit=commit, tag=tag, env=env or os.environ.get("SNAPKIT_ENV"))
    if json_:
        render.list_json(entries)
    else:
        render.snapshot_table(entries)
    damaged = project.catalog.damaged
    if damaged:
        from snapkit.errors import IntegrityError

        for d in damaged[1:]:
            render.console(stderr=True).print(f"damaged: {d.describe()}", markup=False, highlight=False)
        raise IntegrityError(damaged[0].describe()
                             + (f" (and {len(damaged) - 1} more, above)" if len(damaged) > 1 else ""))


@app.command()
def show(ref: Annotated[str, typer.Argument(help="Snapshot id (or prefix), @N, or git revision.")], json_: JSON = False):
    """The whole metadata of a snapshot."""
    meta = _project().show(ref)
    if json_:
        return render.emit_json(meta)
    import json

    render.console().print_json(json.dumps(meta, default=str))




@app.command()
def restore(
    ref: Annotated[str, typer.Argument(help="Snapshot id (or prefix), @N, or git revision.")],
    db_only: Annotated[bool, typer.Option("--db-only", help="Only the database.")] = False,
    code_only: Annotated[bool, typer.Option("--code-only", help="Only the code.")] = False,
    detach: Annotated[bool, typer.Option("--detach", help="Check the commit out detached instead of moving the branch.")] = False,
    to_url: Annotated[str | None, typer.Option("--to-url", help="Restore the database to this URL; touch nothing local.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; change nothing.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    no_safety: Annotated[bool, typer.Option("--no-safety", help="Skip the pre-restore safety snapshot.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Discard uncommitted changes in the work tree.")] = False,
    json_: JSON = False,
):
    """Restore code and database as the snapshot had them."""
    _do_restore(lambda p, **kw: p.restore(ref, **kw), db_only, code_only, detach, to_url, dry_run, yes,
                no_safety, force, json_)


@app.command()
def rollback(
    n: Annotated[int, typer.Argument(help="Steps back on the timeline.")] = 1,
    db_only: Annotated[bool, typer.Option("--db-only", help="Only the database.")] = False,
    code_only: Annotated[bool, typer.Option("--code-only", help="Only the code.")] = False,
    detach: Annotated[bool, typer.Option("--detach", help="Check the commit out detached instead of moving the branch.")] = False,
    to_url: Annotated[str | None, typer.Option("--to-url", help="Restore the database to this URL; touch nothing local.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; change nothing.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    no_safety: Annotated[bool, typer.Option("--no-safety", help="Skip the pre-restore safety snapshot.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Discard uncommitted changes in the work tree.")] = False,
    json_: JSON = False,
):
    """Restore the snapshot N steps back; repeated `rollback` keeps walking back."""
    _do_restore(lambda p, **kw: p.rollback(n, **kw), db_only, code_only, detach, to_url, dry_run, yes,
                no_safety, force, json_)


def _do_restore(call, db_only, code_only, detach, to_url, dry_run, yes, no_safety, force, json_):
    project = _project()
    confirm = None
    if not yes and not dry_run and sys.stdin.isatty() and not json_:
        def confirm(plan):
            render.plan(plan, dry_run=False)
            return typer.confirm("Go ahead?", default=False)
    with _Bar("restore", json_) as bar:
        result = call(project, db_only=db_only, code_only=code_only, detach=detach, to_url=to_url,
                      dry_run=dry_run, no_safety=no_safety, force=force, confirm=confirm,
                      progress=bar.callback)
    if json_:
        return render.emit_json(result)
    if dry_run:
        render.plan(result.plan, dry_run=True)
    else:
        render.restore(result)


@app.command()
def verify(
    refs: Annotated[list[str] | None, typer.Argument(help="Snapshots to check (default: all).")] = None,
    restore_test: Annotated[bool, typer.Option("--restore-test", help="Also restore each database into a scratch database and compare.")] = False,
    json_: JSON = False,
    quiet: QUIET = False,
):
    """Check every chunk is present and authentic. Exit 3 on any problem."""
    with _busy("verifying…", quiet or json_):
        result = _project().verify(refs or (), restore_test=restore_test)
    if json_:
        render.emit_json(result)
    else:
        render.verify(result)
    if not result.ok:
        raise typer.Exit(3)


@app.command()
def cat(
    ref: Annotated[str, typer.Argument(help="Snapshot id (or prefix), @N, or git revision.")],
    layer: Annotated[str, typer.Option("--layer", help="database, files or code.")] = "database",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write to this file instead of stdout.")] = None,
):
    """The plaintext of one layer (a SQLite file, a tar of the code), for the engine's own tools."""
    from snapkit.ops.query import cat as do_cat

    project = _project()
    if output is None:
        if sys.stdout.isatty():
            from snapkit.errors import UsageError

            raise UsageError("refusing to write binary data to a terminal", hint="use -o FILE or a pipe")
        do_cat(project, ref, layer, sys.stdout.buffer)
        sys.stdout.buffer.flush()
        return
    tmp = output.with_name(f".{output.name}.partial")
    try:
        with open(tmp, "wb") as f:
            do_cat(project, ref, layer, f)
        tmp.replace(output)
    finally:
        tmp.unlink(missing_ok=True)


@app.command()
def status(json_: JSON = False):
    """Store health: newest snapshot and its age, HEAD covered, dedup, last verify. Exit 4 if unhealthy."""
    result = _project().status()
    if json_:
        render.emit_json(result)
    else:
        render.status(result)
    if not result.healthy:
        raise typer.Exit(4)


def _mark(ref, **kw):
    from snapkit.ops.query import mark

    entry = mark(_project(), ref, **kw)
    marks = (["pinned"] if entry.get("pinned") else []) + entry.get("tags", [])
    render.console(stderr=True).print(f"{entry['id']}: {', '.join(marks) or 'no marks'}")


@app.command()
def pin(ref: Annotated[str, typer.Argument(help="Snapshot reference.")]):
    """Mark a golden snapshot: retention never removes it."""
    _mark(ref, pin=True)


@app.command()
def unpin(ref: Annotated[str, typer.Argument(help="Snapshot reference.")]):
    """Remove the golden mark."""
    _mark(ref, pin=False)


@app.command()
def tag(ref: Annotated[str, typer.Argument(help="Snapshot reference.")],
        name: Annotated[str, typer.Argument(help="Tag to add.")]):
    """Add a tag to a snapshot."""
    _mark(ref, add_tag=name)


@app.command()
def untag(ref: Annotated[str, typer.Argument(help="Snapshot reference.")],
          name: Annotated[str, typer.Argument(help="Tag to remove.")]):
    """Remove a tag from a snapshot."""
    _mark(ref, remove_tag=name)


@app.command()
def unlock(
    force: Annotated[bool, typer.Option("--force", help="Remove live locks too: only when you are sure "
                                                        "their holders are dead.")] = False,
    json_: JSON = False,
):
    """Remove stale locks on the store; with --force, every lock."""
    from snapkit.store.lock import break_locks, read_locks

    from snapkit.store.repository import open_backend

    # The backend, not the Store: unlocking needs no key and works on a store of any format.
    backend = open_backend(_project().config.store_path)
    removed = break_locks(backend, force=force)
    live = [] if force else [i for i in read_locks(backend) if not i.stale]
    if json_:
        return render.emit_json({"removed": [r.describe() for r in removed],
                                 "live": [i.describe() for i in live]})
    out = render.console(stderr=True)
    out.print(f"removed {len(removed)} lock(s)" + (", live ones included (--force)" if force and removed else ""))
    if live:
        out.print(f"{len(live)} live lock(s) kept:")
        for info in live:
            out.print(f"  {info.describe()}")
        out.print("hint: they belong to running snapkit processes, or to processes elsewhere whose lease has "
                  "not expired yet; use --force only when you are sure their holders are dead")


@hook_app.command("install")
def hook_install(json_: JSON = False):
    """Install the post-commit hook (chains an existing hook, honours core.hooksPath)."""
    from snapkit.ops.hook import install

    _hook_out(install(_project()), json_)


@hook_app.command("uninstall")
def hook_uninstall(json_: JSON = False):
    """Remove the hook and put a chained hook back as it was."""
    from snapkit.ops.hook import uninstall

    _hook_out(uninstall(_project()), json_)


@hook_app.command("status")
def hook_status_cmd(json_: JSON = False):
    """Whether the hook is installed, where, and whether it chains another hook."""
    from snapkit.ops.hook import hook_status

    _hook_out(hook_status(_project()), json_)


def _hook_out(st, json_: bool) -> None:
    if json_:
        return render.emit_json(st)
    state = "installed" if st.installed else "not installed"
    render.console().print(f"hook {state} at {st.path}" + (" (chains the previous hook)" if st.chained else ""))
