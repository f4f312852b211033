"""`snapkit init`: config, store, key, .gitignore; idempotent, never destroys."""

from __future__ import annotations

from pathlib import Path

from snapkit import config as config_mod
from snapkit.errors import KeyAccessError, UsageError
from snapkit.model import InitResult


def init(project, *, db: str | None, store: str | None, passphrase: str | None, use_passphrase: bool,
         key_file: str | None, hook: bool) -> InitResult:
    from snapkit.store.keys import default_key_path
    from snapkit.store.repository import Store

    root = project.root
    cfg_path = root / config_mod.CONFIG_FILE
    if use_passphrase and not passphrase:
        raise KeyAccessError("--passphrase given but no passphrase was entered or set in SNAPKIT_PASSPHRASE")
    if config_mod.find_config(root) is None:
        if not db:
            raise UsageError("snapkit init needs --db URL the first time",
                             hint="e.g. snapkit init --db sqlite:///app.db")
        key_path = Path(key_file).expanduser() if key_file else None
        cfg_path.write_text(config_mod.render_new(db, store or "snapshots", key_path, use_passphrase))
    project.__dict__.pop("config", None)
    cfg = project.config
    created_store = created_key = False
    store_path = cfg.store_path
    if not (store_path / "config").exists():
        import os

        tmp_id = None
        key_path = cfg.key_file
        if key_path is None and not use_passphrase:
            tmp_id = os.urandom(8).hex()
            key_path = default_key_path(f"pending-{tmp_id}")
        created_key = key_path is not None and not key_path.exists()
        new = Store.init(store_path, key_path, passphrase if use_passphrase else None)
        created_store = True
        if tmp_id is not None:
            final = default_key_path(new.id)
            key_path.rename(final)
            key_path = final
        project.__dict__.pop("store", None)
    else:
        key_path = cfg.key_file or default_key_path(project.store.id)
        if not key_path.exists():
            key_path = None
    rel = _relative(store_path, root)
    if rel is not None:
        project.git.ensure_ignored("/" + rel.as_posix().rstrip("/") + "/")
    hook_installed = False
    if hook:
        from snapkit.ops.hook import install

        hook_installed = install(project).installed
    return InitResult(config_path=str(cfg_path), store=str(store_path), store_id=project.store.id,
                      key_file=str(key_path) if key_path else None,
                      passphrase=use_passphrase, created_store=created_store, created_key=created_key,
                      hook_installed=hook_installed)


def _relative(path: Path, root: Path) -> Path | None:
    try:
        return path.resolve().relative_to(root.resolve())
    except ValueError:
        return None
