"""`snapkit status`: is this project's data protected right now?"""

from __future__ import annotations

import calendar
import time

from snapkit.model import StatusResult
from snapkit.ops.hook import hook_status
from snapkit.ops.verify import last_verify


def _age(created_at: str) -> float:
    return time.time() - calendar.timegm(time.strptime(created_at, "%Y-%m-%dT%H:%M:%SZ"))


def status(project) -> StatusResult:
    """Needs the key: the catalog is sealed (docs/format.md, "Threat model")."""
    store = project.unlocked_store()
    entries = project.catalog.entries()
    plain = [e for e in entries if not e.get("safety")]
    newest = plain[-1] if plain else None
    head = project.git.head()
    head_snap = None
    if head is not None:
        matching = [e for e in plain if e["commit"] == head.id]
        head_snap = matching[-1]["id"] if matching else None
    logical = sum(e.get("logical_bytes", 0) for e in entries)
    stored = sum(e.get("stored_bytes", 0) for e in entries)
    verify = last_verify(store)
    age = _age(newest["created_at"]) if newest else None
    reasons = []
    if newest is None:
        reasons.append("the store has no snapshot")
    elif age > project.config.max_age_s:
        reasons.append(f"newest snapshot is {age / 3600:.1f} h old (max_age {project.config.max_age_s / 3600:g} h)")
    if verify is not None and not verify.get("ok"):
        reasons.append("the last verify found problems")
    if project.catalog.damaged:
        reasons.append(f"{len(project.catalog.damaged)} catalog entr{'y is' if len(project.catalog.damaged) == 1 else 'ies are'} "
                       "damaged (run `snapkit verify`)")
    return StatusResult(
        store=str(store.path), snapshots=len(entries), newest=newest["id"] if newest else None,
        newest_age_s=round(age, 1) if age is not None else None,
        head_commit=head.id if head else None, head_snapshot=head_snap,
        logical_bytes=logical, stored_bytes=stored,
        dedup_ratio=round(logical / stored, 2) if stored else None,
        last_verify=verify, hook_installed=hook_status(project).installed,
        healthy=not reasons, reasons=tuple(reasons),
    )
