"""The live state of a work tree: which snapshot was last created or restored, per env.

Kept in `.git/snapkit/state.json` (per work tree, never committed), so that
`rollback` knows where "step 0" is (docs/cli.md, `snapkit rollback`).
"""

from __future__ import annotations

import json


def _path(project):
    return project.git.snapkit_dir() / "state.json"


def read(project) -> dict:
    try:
        return json.loads(_path(project).read_text()).get(project.env, {})
    except (FileNotFoundError, ValueError):
        return {}


def record(project, snapshot_id: str, commit: str, action: str) -> None:
    path = _path(project)
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        data = {}
    data[project.env] = {"id": snapshot_id, "commit": commit, "action": action}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)
