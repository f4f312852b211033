"""A project: a git work tree with snapkit.toml. The Python API (`snapkit.Project`).

    from snapkit import Project
    Project.open(".").create("gallery added", tags=["event"])

Every CLI command is a thin layer over these methods, which call `snapkit.ops`.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

from snapkit import config as config_mod
from snapkit.errors import StoreMissing


class Project:
    def __init__(self, root: Path, env: str | None = None):
        self.root = Path(root)
        self.env_override = env

    @classmethod
    def open(cls, path: Path | str = ".", env: str | None = None) -> Project:
        """The project whose work tree contains `path`. Raises NotAGitRepo / NotAProject."""
        from snapkit.gitrepo import GitRepo

        repo = GitRepo.discover(path)
        project = cls(repo.root, env)
        project.__dict__["git"] = repo
        return project

    @cached_property
    def git(self):
        from snapkit.gitrepo import GitRepo

        return GitRepo.discover(self.root)

    @cached_property
    def config(self) -> config_mod.Config:
        return config_mod.load(self.root, self.env_override)

    @property
    def env(self) -> str:
        return self.config.env

    @cached_property
    def store(self):
        """The store, not yet unlocked. StoreMissing before `init`."""
        from snapkit.store.repository import Store

        path = self.config.store_path
        if not (path / "config").exists():
            raise StoreMissing(f"no snapkit store at {path}")
        return Store(path, scratch_base=self.scratch_base())

    def key_source(self):
        from snapkit.store.keys import KeySource, default_key_path

        key_file = self.config.key_file
        if key_file is None:
            default = default_key_path(self.store_id())
            key_file = default if default.exists() else None
        return KeySource(key_file=key_file, passphrase=self.config.passphrase)

    def store_id(self) -> str:
        """The store's id, read from its config (works for a store of any format)."""
        if "store" in self.__dict__:
            return self.store.id
        from snapkit.store.repository import open_backend, read_config

        return read_config(open_backend(self.config.store_path))["id"]

    def unlocked_store(self):
        store = self.store
        store.unlock(self.key_source())
        return store

    @cached_property
    def catalog(self):
        """The store's catalog; opening it needs the key (entries are sealed)."""
        from snapkit.catalog import Catalog

        return Catalog(self.unlocked_store())

    def scratch_base(self) -> Path:
        """Where private scratch folders go: beside the work tree's git data, never in the store."""
        return self.git.snapkit_dir() / "tmp"

    def tmp_dir(self) -> Path:
        """This process's private scratch folder (0700, removed at exit; docs/format.md)."""
        from snapkit import scratch

        return scratch.private_dir(self.scratch_base())

    def engine(self, url: str | None = None, timeout: float | None = None):
        from snapkit.engines import open_engine

        engine = open_engine(url or self.config.database_url, self.root)
        if timeout is not None:
            engine.timeout = timeout
        return engine

    # ---- the API: one method per command ----------------------------------

    def create(self, message: str | None = None, **kw):
        from snapkit.ops.create import create

        return create(self, message, **kw)

    def list(self, **kw):
        from snapkit.ops.query import list_snapshots

        return list_snapshots(self, **kw)

    def show(self, ref: str) -> dict:
        from snapkit.ops.query import show

        return show(self, ref)

    def restore(self, ref: str, **kw):
        from snapkit.ops.restore import restore

        return restore(self, ref, **kw)

    def rollback(self, steps: int = 1, **kw):
        from snapkit.ops.restore import rollback

        return rollback(self, steps, **kw)

    def verify(self, refs=(), **kw):
        from snapkit.ops.verify import verify

        return verify(self, refs, **kw)

    def status(self):
        from snapkit.ops.status import status

        return status(self)


def hostname() -> str:
    return os.uname().nodename
