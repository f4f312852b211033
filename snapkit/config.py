"""snapkit.toml / [tool.snapkit] + SNAPKIT_* environment → a frozen Config."""

from __future__ import annotations

import os
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from snapkit.errors import ConfigError, NotAProject

CONFIG_FILE = "snapkit.toml"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class Config:
    root: Path
    env: str = "default"
    database_url: str | None = None
    post_restore: tuple[tuple[str, ...], ...] = ()
    store_path: Path | None = None
    key_file: Path | None = None
    passphrase_env: str = "SNAPKIT_PASSPHRASE"
    max_age_s: float = 26 * 3600
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def passphrase(self) -> str | None:
        return os.environ.get(self.passphrase_env) or os.environ.get("SNAPKIT_PASSPHRASE") or None


def _expand(value):
    if isinstance(value, str):
        def sub(m):
            if m.group(1) not in os.environ:
                raise ConfigError(f"snapkit.toml uses ${{{m.group(1)}}} but it is not set",
                                  hint=f"export {m.group(1)}=… before running snapkit")
            return os.environ[m.group(1)]
        return _VAR.sub(sub, value)
    if isinstance(value, list):
        return [_expand(v) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    return value


def parse_duration(text: str) -> float:
    """'26h' → seconds; suffixes s, m, h, d, w."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", str(text))
    if not m:
        raise ConfigError(f"not a duration: {text!r}", hint="use a number with s, m, h, d or w, e.g. 26h")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]


def command_list(value) -> tuple[str, ...]:
    """A configured command: a list, or a string split like a shell would — never run by a shell."""
    if isinstance(value, str):
        return tuple(shlex.split(value))
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(f"not a command: {value!r}", hint='write a command as a list, e.g. ["alembic", "upgrade", "head"]')


def _commands(value) -> tuple[tuple[str, ...], ...]:
    if not value:
        return ()
    # ["alembic", "upgrade", "head"] is one command; [["a"], "b c"] is two.
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return (tuple(value),)
    if isinstance(value, str):
        return (command_list(value),)
    return tuple(command_list(v) for v in value)


def find_config(root: Path) -> dict | None:
    path = root / CONFIG_FILE
    if path.exists():
        try:
            return tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    pyproject = root / "pyproject.toml"
    if pyproject.exists():
        try:
            data = tomllib.loads(pyproject.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{pyproject}: {exc}") from None
        if "snapkit" in data.get("tool", {}):
            return data["tool"]["snapkit"]
    return None


def load(root: Path, env: str | None = None) -> Config:
    """The project's configuration; NotAProject when it has none."""
    raw = find_config(root)
    if raw is None:
        raise NotAProject(f"{root} has no snapkit.toml")
    env = env or os.environ.get("SNAPKIT_ENV") or "default"
    environments = raw.get("environments", {})
    if env != "default" and env not in environments:
        raise ConfigError(f"unknown environment {env!r}",
                          hint=f"define [environments.{env}] in snapkit.toml")
    section = dict(raw.get("database", {}))
    if env != "default":
        section.update(environments[env].get("database", {}))
    db = _expand(section)
    store = _expand(raw.get("store", {}))
    enc = _expand(raw.get("encryption", {}))
    status = raw.get("status", {})
    url = os.environ.get("SNAPKIT_DATABASE_URL") or db.get("url")
    store_path = Path(os.environ.get("SNAPKIT_STORE") or store.get("path") or "snapshots").expanduser()
    key_file = os.environ.get("SNAPKIT_KEY_FILE") or enc.get("key_file")
    return Config(
        root=root,
        env=env,
        database_url=url,
        post_restore=_commands(db.get("post_restore")),
        store_path=store_path if store_path.is_absolute() else root / store_path,
        key_file=Path(key_file).expanduser() if key_file else None,
        passphrase_env=enc.get("passphrase_env", "SNAPKIT_PASSPHRASE"),
        max_age_s=parse_duration(status.get("max_age", "26h")),
        raw=raw,
    )


def render_new(database_url: str, store: str, key_file: Path | None, passphrase: bool) -> str:
    """The snapkit.toml that `init` writes."""
    lines = ["# snapkit configuration (docs/cli.md)", "", "[database]", f"url = {_q(database_url)}",
             "post_restore = []", "", "[store]", f"path = {_q(store)}", "", "[encryption]"]
    if key_file is not None:
        lines.append(f"key_file = {_q(str(key_file))}")
    if passphrase:
        lines.append('passphrase_env = "SNAPKIT_PASSPHRASE"')
    lines += ["", "[status]", 'max_age = "26h"', ""]
    return "\n".join(lines)


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
