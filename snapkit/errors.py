"""The SnapkitError tree: every failure a user can hit, with its exit code and a hint.

The CLI prints `snapkit: error: <message>` and `hint: <hint>` and exits with
`exit_code`; nothing else in snapkit prints errors (cli/app.py).
"""

from __future__ import annotations

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTEGRITY = 3
EXIT_UNHEALTHY = 4


class SnapkitError(Exception):
    exit_code = EXIT_ERROR
    hint: str | None = None

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    @property
    def message(self) -> str:
        return str(self.args[0])


class UsageError(SnapkitError):
    exit_code = EXIT_USAGE


class NotAProject(SnapkitError):
    hint = "run `snapkit init` in the root of your git work tree"


class NotAGitRepo(SnapkitError):
    hint = "run snapkit inside a git work tree (`git init` first)"


class ConfigError(SnapkitError):
    hint = "check snapkit.toml (see docs/cli.md)"


class StoreMissing(SnapkitError):
    hint = "run `snapkit init` first"


class StoreFormatError(SnapkitError):
    hint = "upgrade snapkit: this store was written by a newer version"


class KeyAccessError(SnapkitError):
    """Wrong key or passphrase, or no way to get one."""

    hint = "check SNAPKIT_PASSPHRASE / SNAPKIT_KEY_FILE or [encryption] in snapkit.toml"


class LockedError(SnapkitError):
    hint = ("wait for the other snapkit process; a dead one's lease expires by itself "
            "(`snapkit unlock` lists the locks; `--force` only when you are sure)")


class DatabaseError(SnapkitError):
    hint = "check [database] url in snapkit.toml or SNAPKIT_DATABASE_URL"


class GitError(SnapkitError):
    pass


class DirtyWorkTree(SnapkitError):
    hint = "commit or stash your changes, or pass --force to discard them"


class RefNotFound(SnapkitError):
    hint = "run `snapkit list` to see the snapshots"


class AmbiguousRef(SnapkitError):
    hint = "use more characters of the snapshot id"


class CheckFailed(SnapkitError):
    hint = "fix what the check reports, or drop --check"


class IntegrityError(SnapkitError):
    """Something stored is missing or fails authentication."""

    exit_code = EXIT_INTEGRITY
    hint = "run `snapkit verify` for the full report"


class Unhealthy(SnapkitError):
    exit_code = EXIT_UNHEALTHY


class Aborted(SnapkitError):
    hint = None
