"""Snapshot ids and the frozen results that ops return and cli/render.py shows."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

RESULT_SCHEMA = 1


def snapshot_id(when: float, short_commit: str, seq: int) -> str:
    """`20261122T021105Z-4c7cec7`; the n-th snapshot in the same second gets `Z01`, `Z02`…

    '-' sorts before digits, so ids sort in creation order even within a second.
    """
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(when))
    return f"{stamp}Z{'' if seq == 0 else f'{seq:02d}'}-{short_commit}"


def iso(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


class Result:
    def as_json(self) -> dict:
        return {"schema": RESULT_SCHEMA, **asdict(self)}


@dataclass(frozen=True)
class InitResult(Result):
    config_path: str
    store: str
    store_id: str
    key_file: str | None
    passphrase: bool
    created_store: bool
    created_key: bool
    hook_installed: bool


@dataclass(frozen=True)
class CreateResult(Result):
    id: str
    commit: str
    committed: bool
    dirty: bool
    logical_bytes: int
    stored_bytes: int
    chunks: int
    new_chunks: int
    duration_s: float
    layers: dict = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class RestorePlan(Result):
    id: str
    commit: str
    layers: tuple[str, ...]
    database: str | None
    to_url: str | None
    code_action: str | None
    safety_snapshot: bool
    dirty_files: tuple[str, ...]
    notes: tuple[str, ...] = ()
    schema: str | None = None   # migration relation of a database-only restore: same/older/newer/diverged


@dataclass(frozen=True)
class RestoreResult(Result):
    plan: RestorePlan
    dry_run: bool
    safety_id: str | None = None
    restored: tuple[str, ...] = ()
    post_restore: tuple[str, ...] = ()


@dataclass(frozen=True)
class Problem:
    snapshot: str | None
    layer: str | None
    chunk: str | None
    object: str | None
    message: str


@dataclass(frozen=True)
class VerifyResult(Result):
    snapshots: int
    chunks_checked: int
    restore_tested: int
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class StatusResult(Result):
    store: str
    snapshots: int
    newest: str | None
    newest_age_s: float | None
    head_commit: str | None
    head_snapshot: str | None
    logical_bytes: int
    stored_bytes: int
    dedup_ratio: float | None
    last_verify: dict | None
    hook_installed: bool
    healthy: bool
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class HookStatus(Result):
    installed: bool
    path: str
    chained: bool
    interpreter: str | None = None
