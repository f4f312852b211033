"""The Typer app, global options, and main(): the one place errors are printed."""

from __future__ import annotations

import os
import sys


def _split_global(argv: list[str]) -> list[str]:
    """`--env NAME` may stand before or after the command name (docs/cli.md, "Global options")."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            out += argv[i:]
            break
        if a == "--env" and i + 1 < len(argv):
            os.environ["SNAPKIT_ENV"] = argv[i + 1]
            i += 2
            continue
        if a.startswith("--env="):
            os.environ["SNAPKIT_ENV"] = a.split("=", 1)[1]
            i += 1
            continue
        out.append(a)
        i += 1
    return out


def _print_error(message: str, hint: str | None) -> None:
    sys.stderr.write(f"snapkit: error: {message}\n")
    if hint:
        sys.stderr.write(f"hint: {hint}\n")


def main(argv: list[str] | None = None) -> None:
    argv = _split_global(list(sys.argv[1:] if argv is None else argv))
    # Fast paths: the hook runs at every commit and --version is a start-up probe;
    # neither imports typer, rich or the store (docs/decisions.md).
    if argv == ["--version"]:
        from snapkit import __version__

        sys.stdout.write(f"snapkit {__version__}\n")
        sys.exit(0)
    if argv[:1] == ["_hook-run"]:
        from snapkit.ops.hook import run

        sys.exit(run())
    sys.exit(run_app(argv))


def run_app(argv: list[str]) -> int:
    from snapkit.cli.commands import app
    from snapkit.errors import SnapkitError

    try:
        # Standalone mode: typer handles usage errors (exit 2), --help and typer.Exit
        # by raising SystemExit; our own errors propagate here and only here.
        app(args=argv, prog_name="snapkit")
        return 0
    except SnapkitError as exc:
        _print_error(exc.message, exc.hint)
        return exc.exit_code
    except KeyboardInterrupt:
        _print_error("interrupted", None)
        return 130
    except BrokenPipeError:
        return 1
