"""The docs and scripts promise what exists: every command has help and a section in
docs/cli.md naming its options; README starts with the two set-up commands; the
scripts are there, executable and parse; the demo runs end to end."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLI_MD = ROOT / "docs" / "cli.md"
README = ROOT / "README.md"
SCRIPTS = ["scripts/test", "scripts/demo", ".ci/run"]


def _commands():
    """(path, click command) for every visible command and subcommand, depth first."""
    import typer.main

    from snapkit.cli.commands import app

    out = []

    def walk(group, prefix):
        for name, cmd in group.commands.items():
            if getattr(cmd, "hidden", False):
                continue
            path = f"{prefix} {name}".strip()
            out.append((path, cmd))
            if hasattr(cmd, "commands"):
                walk(cmd, path)

    walk(typer.main.get_command(app), "")
    return out


COMMANDS = _commands()


def _section(path: str) -> str | None:
    """The text of docs/cli.md under the heading "### `snapkit <path>`", up to the next heading."""
    text = CLI_MD.read_text()
    m = re.search(rf"^###\s+`snapkit {re.escape(path)}`\s*$(.*?)(?=^#{{1,3}}\s|\Z)", text, re.M | re.S)
    return m.group(1) if m else None


def _flag(param) -> str:
    """The name a reader looks for: the long option if there is one."""
    longs = [o for o in param.opts if o.startswith("--")]
    return longs[0] if longs else param.opts[0]


def test_commands_are_found():
    names = {path for path, _ in COMMANDS}
    assert {"init", "create", "list", "restore", "verify", "status", "hook", "hook install"} <= names


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=[p for p, _ in COMMANDS])
def test_command_has_help(path, cmd):
    assert (cmd.help or cmd.short_help or "").strip(), f"`snapkit {path}` has no help text (add a docstring)"


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=[p for p, _ in COMMANDS])
def test_command_and_options_are_in_cli_md(path, cmd):
    section = _section(path)
    assert section is not None, f"docs/cli.md has no section '### `snapkit {path}`'"
    for param in cmd.params:
        if param.param_type_name != "option" or param.name == "help":
            continue
        assert (param.help or "").strip(), f"`snapkit {path} {_flag(param)}` has no help text"
        flag = _flag(param)
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", section), (
            f"docs/cli.md, section `snapkit {path}`, does not mention {flag}")


def test_readme_opens_with_the_two_setup_commands():
    text = README.read_text()
    assert text.startswith("# "), "README.md must open with a title line"
    block = re.search(r"^```[^\n]*\n(.*?)^```", text, re.M | re.S)
    assert block, "README.md has no code block"
    lines = [ln for ln in block.group(1).splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    commands = [ln.split("#", 1)[0].split()[0] for ln in lines]
    assert commands == ["scripts/demo", "scripts/test"], f"first code block holds {commands}"


def test_readme_tours_every_command_and_links_the_docs():
    text = README.read_text()
    for path, _ in COMMANDS:
        if " " not in path:
            assert f"`{path}" in text or f"snapkit {path}" in text, f"README.md never mentions `{path}`"
    for doc in ("docs/format.md", "docs/cli.md", "docs/decisions.md"):
        assert f"]({doc})" in text, f"README.md does not link {doc}"


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_is_executable_bash(script):
    path = ROOT / script
    assert path.is_file(), f"{script} is missing"
    assert os.access(path, os.X_OK), f"{script} is not executable (chmod +x)"
    assert path.read_text().startswith("#!/usr/bin/env bash"), f"{script} needs a bash shebang"
    subprocess.run(["bash", "-n", str(path)], check=True)
    subprocess.run(["bash", "-n", str(ROOT / "scripts" / "_setup.sh")], check=True)


@pytest.mark.skipif(not (shutil.which("git") and shutil.which("sqlite3")), reason="needs git and sqlite3")
def test_demo_runs_end_to_end(tmp_path):
    """scripts/demo with this interpreter and no set-up: it must end with the data back."""
    env = {**os.environ, "SNAPKIT_DEMO_SKIP_SETUP": "1", "SNAPKIT_DEMO_PYTHON": sys.executable,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "TMPDIR": str(tmp_path)}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "demo")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "demo OK" in proc.stdout
    assert "\n5\n" in proc.stdout  # the restored row count, printed after the rollback
    assert not list(tmp_path.glob("snapkit-demo.*")), "the demo left its temp dir behind"


def test_global_options_are_in_cli_md():
    import typer.main

    from snapkit.cli.commands import app

    text = CLI_MD.read_text()
    section = text.split("## Global options", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    for param in typer.main.get_command(app).params:
        if param.param_type_name == "option":
            assert _flag(param) in section, f"docs/cli.md, Global options, does not mention {_flag(param)}"
