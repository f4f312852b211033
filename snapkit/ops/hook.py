"""The post-commit hook: a tiny generated script; the logic is `snapkit _hook-run`.

Our script carries MARKER. A foreign hook already in place is kept beside it
as `post-commit.pre-snapkit` and run first (chained, like pre-commit's
hook-tmpl); `uninstall` puts it back as it was.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
import traceback

from snapkit.model import HookStatus

MARKER = "# snapkit-managed-hook v1"
HOOK = "post-commit"
CHAINED = "post-commit.pre-snapkit"


def _script(python: str) -> str:
    return f"""#!/bin/sh
{MARKER}
# Snapshots HEAD after each commit. A failure never fails the commit: it is
# warned about on stderr and logged to .git/snapkit/hook.log.
hook_dir=$(dirname "$0")
if [ -x "$hook_dir/{CHAINED}" ]; then
    "$hook_dir/{CHAINED}" "$@"
fi
{shlex.quote(python)} -m snapkit _hook-run </dev/null || true
exit 0
"""


def _paths(project):
    d = project.git.hooks_dir()
    return d, d / HOOK, d / CHAINED


def _ours(path) -> bool:
    try:
        return MARKER in path.read_text(errors="replace")
    except (FileNotFoundError, IsADirectoryError):
        return False


def install(project) -> HookStatus:
    """Idempotent. Chains an existing foreign hook instead of overwriting it."""
    d, hook, chained = _paths(project)
    d.mkdir(parents=True, exist_ok=True)
    if hook.exists() and not _ours(hook):
        if chained.exists():
            raise_exists(chained)
        hook.rename(chained)
    tmp = hook.with_name(f".{HOOK}.tmp")
    tmp.write_text(_script(sys.executable))
    os.chmod(tmp, 0o755)
    tmp.replace(hook)
    return hook_status(project)


def raise_exists(path) -> None:
    from snapkit.errors import SnapkitError

    raise SnapkitError(f"{path} already exists; refusing to overwrite a chained hook",
                       hint="move it away, then run `snapkit hook install` again")


def uninstall(project) -> HookStatus:
    """Idempotent. Puts a chained user hook back as it was."""
    _, hook, chained = _paths(project)
    if _ours(hook):
        hook.unlink()
        if chained.exists():
            chained.rename(hook)
    return hook_status(project)


def hook_status(project) -> HookStatus:
    _, hook, chained = _paths(project)
    installed = _ours(hook)
    interpreter = None
    if installed:
        for line in hook.read_text().splitlines():
            if line.endswith("-m snapkit _hook-run </dev/null || true"):
                interpreter = shlex.split(line)[0]
    return HookStatus(installed=installed, path=str(hook), chained=installed and chained.exists(),
                      interpreter=interpreter)


HOOK_LOCK_TIMEOUT = 2.0
HOOK_DB_TIMEOUT = 2.0


def run() -> int:
    """Body of `snapkit _hook-run`: snapshot HEAD; never fail, never block for long."""
    from snapkit.errors import SnapkitError
    from snapkit.project import Project

    log_dir = None
    try:
        project = Project.open(".")
        log_dir = project.git.snapkit_dir()
        result = project.create(lock_timeout=HOOK_LOCK_TIMEOUT, db_timeout=HOOK_DB_TIMEOUT)
        _log(log_dir, f"ok {result.id} stored={result.stored_bytes}")
        print(f"snapkit: snapshot {result.id}", file=sys.stderr)
    except SnapkitError as exc:
        _warn(log_dir, exc.message)
    except Exception as exc:  # the commit must succeed whatever happens
        _warn(log_dir, f"{type(exc).__name__}: {exc}", traceback.format_exc())
    return 0


def _warn(log_dir, message: str, detail: str = "") -> None:
    print(f"snapkit: warning: post-commit snapshot skipped: {message}", file=sys.stderr)
    print("hint: see .git/snapkit/hook.log; run `snapkit create` to retry", file=sys.stderr)
    _log(log_dir, f"error {message}" + (f"\n{detail}" if detail else ""))


def _log(log_dir, line: str) -> None:
    if log_dir is None:
        return
    try:
        with open(log_dir / "hook.log", "a") as f:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {line}\n")
    except OSError:
        pass
