"""`snapkit key list|add|remove|rotate`: parse, call one ops/keys.py function, show the result.

New passphrases are prompted twice on a terminal, otherwise read from
SNAPKIT_NEW_PASSPHRASE — never taken from the command line, where shell history
and `ps` would keep them. The passphrase that opens the store stays
SNAPKIT_PASSPHRASE. Only light imports at module level: this module is loaded
with the command table at every start-up.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from snapkit.cli import render

key_app = typer.Typer(help="Manage the store's key slots: the key files and passphrases that open it.",
                      no_args_is_help=True)

JSON = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]
NEW_PASSPHRASE_ENV = "SNAPKIT_NEW_PASSPHRASE"
_CONTROL = dict.fromkeys([*range(32), 127])


def _project():
    from snapkit.project import Project

    return Project.open(Path.cwd())


def prompt_new_passphrase(env_var: str) -> str | None:
    """Prompted twice on a terminal, else the environment variable `env_var` (None when unset)."""
    if sys.stdin.isatty():
        first = typer.prompt("New passphrase", hide_input=True)
        if typer.prompt("Repeat new passphrase", hide_input=True) != first:
            from snapkit.errors import KeyAccessError

            raise KeyAccessError("the two passphrases differ; nothing was written")
        return first
    return os.environ.get(env_var) or None


def _new_passphrase() -> str | None:
    return prompt_new_passphrase(NEW_PASSPHRASE_ENV)


def _say(text: str) -> None:
    # Ids and paths come from the store and the user: no rich markup, no control characters.
    render.console(stderr=True).print(text.translate(_CONTROL), markup=False, highlight=False)


def _warn(warnings) -> None:
    for w in warnings:
        _say(f"snapkit: warning: {w}")


@key_app.command("list")
def key_list(json_: JSON = False):
    """Every key slot of the store: id, kind, creation time, KDF, damaged or not. Needs no key."""
    from snapkit.ops.keys import list_keys

    result = list_keys(_project())
    if json_:
        return render.emit_json(result)
    rows = [("id", "kind", "created", "kdf", "state")]
    for s in result.slots:
        created = (s.created or "-").replace("T", " ").rstrip("Z")
        state = f"damaged: {s.problem}" if s.damaged else "ok"
        rows.append((s.id, s.kind or "?", created, s.kdf or "-", state))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    out = "".join("  ".join([*(c.ljust(w) for c, w in zip(r, widths)), r[4]]).translate(_CONTROL) + "\n"
                  for r in rows)
    sys.stdout.write(out)


@key_app.command("add")
def key_add(
    passphrase: Annotated[bool, typer.Option("--passphrase", help=f"Add a passphrase slot (prompted twice, or {NEW_PASSPHRASE_ENV}).")] = False,
    key_file: Annotated[Path | None, typer.Option("--key-file", help="Add a key file slot for this key file (created when missing).")] = None,
    json_: JSON = False,
):
    """Add a key slot: a new passphrase or key file that opens the store. Needs the current key."""
    from snapkit.errors import UsageError
    from snapkit.ops.keys import add_key

    if passphrase == (key_file is not None):
        raise UsageError("give exactly one of --passphrase and --key-file PATH")
    if passphrase:
        result = add_key(_project(), "passphrase", passphrase=_new_passphrase())
    else:
        result = add_key(_project(), "keyfile", key_file=key_file)
    if json_:
        return render.emit_json(result)
    _warn(result.warnings)
    if result.added:
        _say(f"key slot {result.slot_id} added ({'key file' if result.kind == 'keyfile' else 'passphrase'})")
    if result.created_key_file:
        _say(f"key file {result.key_file} (created): back it up now, somewhere other than the store")
    print(result.slot_id)


@key_app.command("remove")
def key_remove(
    slot: Annotated[str, typer.Argument(help="Slot id or unique id prefix (see `snapkit key list`).")],
    json_: JSON = False,
):
    """Remove a key slot. Needs the current key; refuses to remove the last intact slot."""
    from snapkit.ops.keys import remove_key

    result = remove_key(_project(), slot)
    if json_:
        return render.emit_json(result)
    _warn(result.warnings)
    _say(f"key slot {result.slot_id} removed" + (" (it was damaged)" if result.damaged else ""))


@key_app.command("rotate")
def key_rotate(json_: JSON = False):
    """Replace the secret of the slot that opens the store (a new key file secret or passphrase)."""
    from snapkit.ops.keys import rotate_key

    result = rotate_key(_project(), new_passphrase=_new_passphrase)
    if json_:
        return render.emit_json(result)
    if result.kind == "keyfile":
        _say(f"key file {result.key_file} now holds a new secret: back it up again; "
             "old copies of it no longer open this store")
    else:
        _say("passphrase replaced: the old passphrase no longer opens this store")
    _say(f"key slot {', '.join(result.removed)} replaced by {result.new_slot_id}")
    _say(f"note: {result.does_not}")
    print(result.new_slot_id)
