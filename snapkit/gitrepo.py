"""Everything snapkit does with git, through pygit2 (the only module that imports it).

A `GitRepo` wraps one non-bare repository. Its methods speak in full 40-hex commit
ids and work-tree-relative POSIX paths, and raise only snapkit errors:
`NotAGitRepo` (no work tree), `GitError` (git refused or failed) and
`DirtyWorkTree` (a checkout would discard changes).

Hooks: git exports GIT_DIR, GIT_INDEX_FILE and GIT_WORK_TREE (among others)
into hook processes, and GIT_INDEX_FILE may name a temporary index. libgit2
reads none of them unless a repository is opened with
`RepositoryOpenFlag.FROM_ENV`, which this module never passes: the repository
is always located from an explicit path, so `discover` finds the same
repository and the same on-disk index from a post-commit hook as from a shell.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import zlib
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pygit2
from pygit2.enums import (
    CheckoutStrategy,
    FileStatus,
    ReferenceType,
    RepositoryOpenFlag,
    SortMode,
)

from snapkit.errors import DirtyWorkTree, GitError, NotAGitRepo

SNAPKIT_REF_PREFIX = "refs/snapkit/"
HEADS_PREFIX = "refs/heads/"

# git tree entry modes (the octal values git writes into tree objects).
_MODE_TREE = 0o040000
_MODE_LINK = 0o120000
_MODE_SUBMODULE = 0o160000

# Blobs larger than this are streamed instead of read whole: libgit2 (pygit2,
# its BlobIO too) reads an object whole, a loose one twice (compressed and
# inflated), so a committed 300 MB file cost ~950 MB of memory (docs/decisions.md).
STREAM_BLOB_BYTES = 4 * 1024 * 1024
# tarfile's copy size, and the blocks the tar stream is handed on in.
_TAR_BLOCK = 1024 * 1024
# Part of `tree_tar_key`: bump it whenever write_tree_tar writes different bytes
# for the same tree and commit time, so create never reuses a layer in the old form.
TREE_TAR_FORMAT = 1
# Variables that would point a git subprocess at another repository or index; git
# exports some of them into hooks (see the module docstring).
_GIT_LOCATION_VARS = (
    "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_COMMON_DIR", "GIT_NAMESPACE", "GIT_PREFIX",
)
# git streams a packed blob only above core.bigFileThreshold (else it inflates it
# whole), through mmap windows of core.packedGitWindowSize (1 GiB by default),
# keeping up to core.packedGitLimit mapped: all three bounded for cat-file.
_CAT_FILE_CONFIG = (
    "-c", "core.bigFileThreshold=1m",
    "-c", "core.packedGitWindowSize=4m",
    "-c", "core.packedGitLimit=32m",
)

_NO_USER_HINT = 'git config user.name "Your Name" / git config user.email you@example.com'
_LISTED_NAMES = 10


@dataclass(frozen=True)
class CommitInfo:
    id: str  # full 40-hex
    short: str  # first 7 hex digits
    parents: tuple[str, ...]
    message: str  # full message without the trailing newline
    author: str  # "Name <email>"
    time: int  # commit (committer) time, unix seconds


@contextmanager
def _git_errors(action: str) -> Iterator[None]:
    """Turn libgit2 failures into one-line GitErrors that say what we were doing."""
    try:
        yield
    except pygit2.GitError as exc:
        raise GitError(f"{action}: {_one_line(exc)}") from exc


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _name_list(paths: list[str], limit: int = _LISTED_NAMES) -> str:
    """'a, b, c' -- at most `limit` names, then 'and N more'."""
    shown = ", ".join(paths[:limit])
    rest = len(paths) - limit
    return f"{shown} and {rest} more" if rest > 0 else shown


def _decode_name(raw: bytes) -> str:
    # git paths are bytes; surrogateescape round-trips non-UTF-8 names into the tar.
    return raw.decode("utf-8", "surrogateescape")


class GitRepo:
    """A non-bare git repository: its work tree `root` and its `git_dir`."""

    def __init__(self, repo: pygit2.Repository):
        """Wrap an open pygit2 repository; use `discover` instead of calling this."""
        self._repo = repo
        self.root = Path(repo.workdir).resolve()
        self.git_dir = Path(repo.path).resolve()

    # ------------------------------------------------------------------ opening

    @classmethod
    def discover(cls, path: Path | str) -> GitRepo:
        """Open the git work tree enclosing `path` (a file or directory).

        Ignores GIT_DIR / GIT_WORK_TREE / GIT_INDEX_FILE (see module docstring),
        so it is safe inside git hooks. Raises NotAGitRepo if `path` is not inside
        a work tree (no repository, a bare one, or inside the .git directory).
        """
        start = Path(path).expanduser().resolve()
        not_repo = NotAGitRepo(f"{path} is not inside a git work tree")
        if not start.exists():
            raise not_repo
        try:
            found = pygit2.discover_repository(str(start))
        except pygit2.GitError:
            found = None
        if found is None:
            raise not_repo
        try:
            # NO_SEARCH: `found` is the git dir itself; never FROM_ENV (hooks).
            repo = pygit2.Repository(found, RepositoryOpenFlag.NO_SEARCH)
        except pygit2.GitError as exc:
            raise GitError(f"cannot open git repository {found}: {_one_line(exc)}") from exc
        if repo.is_bare or repo.workdir is None:
            raise not_repo
        git_dir = Path(repo.path).resolve()
        if start == git_dir or git_dir in start.parents:
            raise not_repo
        return cls(repo)

    # ------------------------------------------------------------------ commits

    def head(self) -> CommitInfo | None:
        """The commit HEAD points to, or None when HEAD is unborn (no commits yet)."""
        if self._repo.head_is_unborn:
            return None
        with _git_errors("cannot read HEAD"):
            return self._info(self._repo.head.peel(pygit2.Commit))

    def current_branch(self) -> str | None:
        """Short name of the branch HEAD points to (even if unborn); None if detached."""
        if self._repo.head_is_detached:
            return None
        with _git_errors("cannot read HEAD"):
            target = self._repo.lookup_reference("HEAD").target
        if isinstance(target, str) and target.startswith(HEADS_PREFIX):
            return target[len(HEADS_PREFIX) :]
        return None

    def resolve(self, rev: str) -> str | None:
        """Full hex of the commit `rev` names (HEAD~2, branch, tag, full or short
        hash...), peeling annotated tags; None if it names no commit (unknown,
        ambiguous, or not a commit)."""
        if not rev or rev.startswith("-"):
            return None
        try:
            obj = self._repo.revparse_single(rev)
            return str(obj.peel(pygit2.Commit).id)
        except (KeyError, ValueError, TypeError, pygit2.GitError):
            return None

    def commit_info(self, commit_id: str) -> CommitInfo:
        """Details of the commit `commit_id` names. Raises GitError if there is none."""
        return self._info(self._commit(commit_id))

    def has_commit(self, commit_id: str) -> bool:
        """True if `commit_id` (a full or abbreviated hex id) names a commit here."""
        if len(commit_id) < 4 or any(c not in "0123456789abcdefABCDEF" for c in commit_id):
            return False
        return self.resolve(commit_id) is not None

    def ancestors(self, commit_id: str, limit: int = 10000) -> Iterator[str]:
        """`commit_id` itself, then its ancestors, newest first (topological, then
        time order), at most `limit` ids. Raises GitError (now, not on first
        iteration) if `commit_id` names no commit."""
        start = self._commit(commit_id).id
        walker = self._repo.walk(start, SortMode.TOPOLOGICAL | SortMode.TIME)
        return (str(c.id) for _, c in zip(range(max(limit, 0)), walker))

    def _commit(self, rev: str) -> pygit2.Commit:
        full = self.resolve(rev)
        if full is None:
            raise GitError(f"no such commit: {rev}")
        return self._repo.get(full)

    @staticmethod
    def _info(commit: pygit2.Commit) -> CommitInfo:
        hex_id = str(commit.id)
        author = commit.author
        return CommitInfo(
            id=hex_id,
            short=hex_id[:7],
            parents=tuple(str(p) for p in commit.parent_ids),
            message=commit.message.rstrip("\n"),
            author=f"{author.name} <{author.email}>",
            time=int(commit.commit_time),
        )

    # ------------------------------------------------------------------ status

    def dirty_files(self) -> list[str]:
        """Sorted paths of tracked files changed in the work tree or the index
        (modified, deleted, staged additions/renames, conflicts). Untracked and
        ignored files are not listed."""
        with _git_errors("cannot read git status"):
            status = self._repo.status(untracked_files="no")
        untracked_only = FileStatus.WT_NEW | FileStatus.IGNORED
        return sorted(p for p, flags in status.items() if flags & ~untracked_only)

    def untracked_files(self) -> list[str]:
        """Sorted paths of untracked files (every file inside untracked dirs too),
        not counting ignored ones."""
        with _git_errors("cannot read git status"):
            status = self._repo.status(untracked_files="all")
        return sorted(p for p, flags in status.items() if flags == FileStatus.WT_NEW)

    def is_ignored(self, relpath: str) -> bool:
        """True if git ignores `relpath` (relative to root, or absolute inside it)."""
        path = Path(relpath)
        if path.is_absolute():
            path = path.resolve().relative_to(self.root)
        with _git_errors(f"cannot check ignore rules for {relpath}"):
            return self._repo.path_is_ignored(path.as_posix())

    def ensure_ignored(self, pattern: str) -> bool:
        """Append `pattern` as a line of root/.gitignore unless an identical line
        is there (creating the file, keeping it newline-terminated).
        Returns True if the file changed. Raises ValueError on a multi-line pattern."""
        if not pattern or "\n" in pattern or "\r" in pattern:
            raise ValueError(f"not a single .gitignore line: {pattern!r}")
        path = self.root / ".gitignore"
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        if pattern in (line.rstrip("\r") for line in text.split("\n")):
            return False
        if text and not text.endswith("\n"):
            text += "\n"
        path.write_text(f"{text}{pattern}\n", encoding="utf-8")
        return True

    # ------------------------------------------------------------------ committing

    def commit_all(self, message: str) -> str:
        """Stage everything not ignored (like `git add -A`), write the index and
        commit it to the current branch (creating it if HEAD is unborn, or moving
        a detached HEAD). Returns the new commit's hex.

        Raises GitError if no user.name/user.email is configured, or git fails.
        """
        signature = self._signature()
        with _git_errors("cannot stage changes"), _fsynced_writes():
            index = self._repo.index
            index.read(False)  # pick up changes other git processes made
            # git_index_add_all with no pathspec is `git add -A`: it adds new and
            # modified files (honouring .gitignore) and drops deleted ones.
            index.add_all()
            index.write()
            tree = index.write_tree()
        parents = [] if self._repo.head_is_unborn else [self._repo.head.target]
        text = message.rstrip() + "\n"
        with _git_errors("cannot create commit"), _fsynced_writes():
            # "HEAD" makes libgit2 update the branch HEAD points to (or HEAD
            # itself when detached) and write the reflog, as `git commit` does.
            oid = self._repo.create_commit("HEAD", signature, signature, text, tree, parents)
        return str(oid)

    def _signature(self) -> pygit2.Signature:
        try:
            return self._repo.default_signature
        except (KeyError, pygit2.GitError) as exc:
            raise GitError(
                "git does not know who you are: user.name / user.email are not set",
                hint=_NO_USER_HINT,
            ) from exc

    # ------------------------------------------------------------------ archive

    def write_tree_tar(self, commit_id: str, out: BinaryIO) -> None:
        """Write the tree of `commit_id` to `out` as an uncompressed PAX tar stream.

        Deterministic: the bytes depend only on `tree_tar_key(commit_id)`. Paths
        in git (byte) order with each directory before its contents, mtime =
        commit time, uid/gid 0, empty uname/gname; files 0o644 or 0o755 from the
        git mode, directories 0o755, symlinks as symlink entries (0o777),
        submodules skipped. Memory stays bounded whatever the file sizes: blobs
        over STREAM_BLOB_BYTES are streamed (see _BigBlobs), and `out` receives
        blocks of about 1 MiB through `.write` (it needs nothing else).
        Raises GitError for an unknown commit or a missing object.
        """
        commit = self._commit(commit_id)
        mtime = int(commit.commit_time)
        stream = _TarOutput(out)
        blobs = _BigBlobs(self._common_dir() / "objects", self.git_dir)
        try:
            # Mode "w" (not the stream mode "w|"): tarfile's stream buffer re-slices
            # itself on every write, and the bytes written are the same.
            with (
                _git_errors(f"cannot archive {commit_id}"),
                tarfile.TarFile(fileobj=stream, mode="w", format=tarfile.PAX_FORMAT,
                                encoding="utf-8", copybufsize=_TAR_BLOCK) as tar,
            ):
                for path, entry in self._walk(commit.tree, ""):
                    self._add_entry(tar, path, entry, mtime, blobs)
        finally:
            blobs.close()
        stream.flush()

    def tree_tar_key(self, commit_id: str) -> dict:
        """What `write_tree_tar(commit_id)`'s bytes depend on, and nothing else:
        the tree id, the commit time (every entry's mtime) and TREE_TAR_FORMAT.
        Equal keys mean equal tars. Raises GitError for an unknown commit."""
        commit = self._commit(commit_id)
        return {"tree": str(commit.tree_id), "mtime": int(commit.commit_time),
                "format": TREE_TAR_FORMAT}

    def _walk(self, tree: pygit2.Tree, prefix: str) -> Iterator[tuple[str, pygit2.Object]]:
        """(path, entry) for every entry under `tree`, depth first, in git order."""

        def git_order(entry: pygit2.Object) -> bytes:
            # git sorts a directory as if its name ended in "/".
            return entry.raw_name + (b"/" if entry.filemode == _MODE_TREE else b"")

        for entry in sorted(tree, key=git_order):
            path = prefix + _decode_name(entry.raw_name)
            if entry.filemode == _MODE_SUBMODULE:
                continue  # the commit lives in another repository
            yield path, entry
            if entry.filemode == _MODE_TREE:
                yield from self._walk(self._repo.get(entry.id), path + "/")

    def _add_entry(self, tar: tarfile.TarFile, path: str, entry: pygit2.Object, mtime: int,
                   blobs: _BigBlobs) -> None:
        info = tarfile.TarInfo(path)
        info.mtime = mtime
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        if entry.filemode == _MODE_TREE:
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
            return
        if entry.filemode == _MODE_LINK:
            info.type, info.mode = tarfile.SYMTYPE, 0o777
            info.linkname = _decode_name(self._blob_data(entry.id))
            tar.addfile(info)
            return
        info.mode = 0o755 if entry.filemode & 0o111 else 0o644
        try:
            # The header only: tree entries' `.size` would load the whole blob.
            _kind, info.size = self._repo.odb.read_header(entry.id)
        except KeyError:
            raise GitError(f"object {entry.id} ({path}) is missing") from None
        reader = blobs.open(str(entry.id), info.size) if info.size > STREAM_BLOB_BYTES else None
        if reader is None:
            tar.addfile(info, io.BytesIO(self._blob_data(entry.id)))  # small: whole is fine
            return
        with closing(reader):
            tar.addfile(info, reader)
            reader.finish()

    def _blob_data(self, oid: pygit2.Oid) -> bytes:
        blob = self._repo.get(oid)
        if blob is None:
            raise GitError(f"object {oid} is missing")
        return blob.data

    # ------------------------------------------------------------------ refs

    def keep_ref(self, snapshot_id: str, commit_id: str) -> None:
        """Point refs/snapkit/<snapshot_id> at `commit_id` (overwriting), so git gc
        never drops the commit. Raises GitError for an unknown commit or an id
        that is not a valid ref name."""
        name = self._snapkit_ref_name(snapshot_id)
        target = self._commit(commit_id).id
        with _git_errors(f"cannot write {name}"), _fsynced_writes():
            self._repo.create_reference_direct(
                name, target, True, message=f"snapkit: keep {str(target)[:7]}"
            )

    def drop_ref(self, snapshot_id: str) -> None:
        """Delete refs/snapkit/<snapshot_id>; does nothing if it does not exist."""
        name = self._snapkit_ref_name(snapshot_id)
        with _git_errors(f"cannot delete {name}"):
            ref = self._repo.references.get(name)
            if ref is not None:
                ref.delete()

    def snapkit_refs(self) -> dict[str, str]:
        """{snapshot_id: commit hex} for every refs/snapkit/* ref."""
        refs: dict[str, str] = {}
        with _git_errors("cannot list refs"):
            for name in self._repo.listall_references():
                if name.startswith(SNAPKIT_REF_PREFIX):
                    target = self._repo.references[name].resolve().target
                    refs[name[len(SNAPKIT_REF_PREFIX) :]] = str(target)
        return refs

    @staticmethod
    def _snapkit_ref_name(snapshot_id: str) -> str:
        name = SNAPKIT_REF_PREFIX + snapshot_id
        if not snapshot_id or not pygit2.reference_is_valid_name(name):
            raise GitError(f"invalid snapshot id for a git ref: {snapshot_id!r}")
        return name

    # ------------------------------------------------------------------ checkout

    def checkout(self, commit_id: str, *, detach: bool = False, force: bool = False) -> None:
        """Make index and work tree match `commit_id` and point HEAD at it.

        detach=False moves the current branch to the commit (like `git reset
        --hard`; creates it if unborn; a detached HEAD just moves).
        detach=True detaches HEAD at the commit. Files tracked before but absent
        from the commit are removed; untracked files are left alone. The reflog
        says "snapkit: restore <short>".

        Without `force`, raises DirtyWorkTree if tracked files have changes, and
        GitError if untracked files would be overwritten. With `force`, both are
        overwritten. Raises GitError for an unknown commit or a failed checkout.
        """
        target = self._commit(commit_id)
        short = str(target.id)[:7]
        if not force:
            self._refuse_to_lose_work(target.tree)
        # SAFE re-checks what we checked above, so a race cannot lose work.
        strategy = CheckoutStrategy.FORCE if force else CheckoutStrategy.SAFE
        with _git_errors(f"cannot check out {short}"):
            self._repo.checkout_tree(target, strategy=strategy | CheckoutStrategy.RECREATE_MISSING)
        self._point_head(target.id, detach=detach, message=f"snapkit: restore {short}")

    def check_checkout(self, commit_id: str) -> None:
        """Raise what `checkout(commit_id)` without force would raise, changing nothing.

        Restore calls this before touching the database, so a refused code
        checkout never leaves the database restored and the code not.
        """
        self._refuse_to_lose_work(self._commit(commit_id).tree)

    def _refuse_to_lose_work(self, tree: pygit2.Tree) -> None:
        dirty = self.dirty_files()
        if dirty:
            raise DirtyWorkTree(f"work tree has uncommitted changes: {_name_list(dirty)}")
        blocking = [p for p in self.untracked_files() if self._blocks(tree, p)]
        if blocking:
            raise GitError(
                f"untracked files would be overwritten by checkout: {_name_list(blocking)}",
                hint="move or delete them, or pass --force to overwrite them",
            )

    @staticmethod
    def _blocks(tree: pygit2.Tree, path: str) -> bool:
        """True if untracked `path` is in the way of checking out `tree`: the tree
        has something at `path`, or a file where `path` has a parent directory."""
        parts = path.split("/")
        for depth in range(1, len(parts) + 1):
            sub = "/".join(parts[:depth])
            if sub not in tree:
                return False
            if depth == len(parts) or tree[sub].filemode != _MODE_TREE:
                return True
        return False

    def _point_head(self, oid: pygit2.Oid, *, detach: bool, message: str) -> None:
        with _git_errors("cannot update HEAD"):
            head = self._repo.lookup_reference("HEAD")
            if detach or head.type != ReferenceType.SYMBOLIC:
                self._repo.create_reference_direct("HEAD", oid, True, message=message)
            else:
                # Updating the branch also appends to HEAD's reflog (libgit2
                # does so for the ref HEAD points to); works for unborn too.
                self._repo.create_reference_direct(head.target, oid, True, message=message)

    # ------------------------------------------------------------------ places

    def hooks_dir(self) -> Path:
        """Where git runs hooks from: core.hooksPath (relative to the work tree
        root if relative, ~ expanded), else <common git dir>/hooks."""
        try:
            configured = self._repo.config["core.hooksPath"]
        except KeyError:
            return self._common_dir() / "hooks"
        path = Path(os.path.expanduser(configured))
        return path if path.is_absolute() else (self.root / path).resolve()

    def snapkit_dir(self) -> Path:
        """git_dir/snapkit, created if missing: snapkit's logs and state."""
        path = self.git_dir / "snapkit"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _common_dir(self) -> Path:
        # A linked worktree's git dir names the shared one in "commondir"; hooks
        # live there, not in .git/worktrees/<name>.
        pointer = self.git_dir / "commondir"
        if not pointer.is_file():
            return self.git_dir
        return (self.git_dir / pointer.read_text(encoding="utf-8").strip()).resolve()


class _TarOutput:
    """What tarfile writes to: counts bytes (`tell`, which mode "w" needs) and
    hands `out` blocks of at least _TAR_BLOCK bytes, then the rest at `flush`."""

    def __init__(self, out: BinaryIO):
        self._out = out
        self._buf = bytearray()
        self._pos = 0

    def tell(self) -> int:
        return self._pos

    def write(self, data: bytes) -> int:
        self._buf += data
        self._pos += len(data)
        if len(self._buf) >= _TAR_BLOCK:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self._buf:
            self._out.write(bytes(self._buf))
            self._buf.clear()


class _BigBlobs:
    """Readers of large blobs in bounded memory, for write_tree_tar.

    A loose object is inflated here piece by piece (`git cat-file` would mmap
    the whole file: its peak RSS is the file's size). Any other object (packed,
    or in an alternate object store) comes from one `git cat-file --batch`
    process, started on first use and told to stream packed blobs through small
    windows (_CAT_FILE_CONFIG). A packed blob that git stored as a delta is
    still rebuilt whole inside git; git never deltifies blobs over its
    core.bigFileThreshold (512 MiB). Without a git executable such blobs are
    read whole by pygit2, as small ones are.
    """

    def __init__(self, objects_dir: Path, git_dir: Path):
        self._objects = objects_dir
        self._git_dir = git_dir
        self._proc: subprocess.Popen | None = None
        self._no_git = False

    def open(self, oid: str, size: int) -> _LooseBlob | _PipedBlob | None:
        """A reader of blob `oid`'s `size` bytes, or None when only pygit2 can
        read it. Raises GitError if git does not have the blob. Read it to the
        end, call its `finish()` (checks), then `close()`, before opening the next one."""
        try:
            return _LooseBlob(self._objects / oid[:2] / oid[2:], oid, size)
        except FileNotFoundError:
            pass
        proc = self._cat_file()
        if proc is None:
            return None
        try:
            proc.stdin.write(f"{oid}\n".encode())
            proc.stdin.flush()
        except OSError as exc:
            raise GitError(f"git cat-file stopped before reading {oid}: {exc}") from None
        header = proc.stdout.readline()
        if header.split() != [oid.encode(), b"blob", str(size).encode()]:
            said = header.decode("utf-8", "replace").strip() or "no output"
            raise GitError(f"git cat-file could not read blob {oid}: {said}")
        return _PipedBlob(proc.stdout, oid, size)

    def _cat_file(self) -> subprocess.Popen | None:
        if self._proc is None and not self._no_git:
            env = {k: v for k, v in os.environ.items() if k not in _GIT_LOCATION_VARS}
            try:
                self._proc = subprocess.Popen(
                    ["git", *_CAT_FILE_CONFIG, f"--git-dir={self._git_dir}", "cat-file", "--batch"],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                    env=env,
                )
            except OSError:
                self._no_git = True
        return self._proc

    def close(self) -> None:
        """End the git process, if any (closing its pipes stops it even mid-blob)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for pipe in (proc.stdin, proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class _LooseBlob:
    """A loose object's content: the file is zlib of "blob <size>", a NUL byte, the content."""

    def __init__(self, path: Path, oid: str, size: int):
        self._file = open(path, "rb")  # noqa: SIM115 - closed by close() or on error
        self._oid = oid
        self._inflate = zlib.decompressobj()
        self._pending = memoryview(b"")
        self._left = size
        try:
            head = b""
            while b"\0" not in head and len(head) < 64:
                head += self._inflate_some() or b"\0"  # ended early: the check below fails
            kind, _, rest = head.partition(b"\0")
            if kind != f"blob {size}".encode():
                raise GitError(f"loose object {oid} is not a blob of {size} bytes")
            self._pending = memoryview(rest)
        except zlib.error as exc:
            self._file.close()
            raise GitError(f"cannot read loose object {oid}: {exc}") from None
        except BaseException:
            self._file.close()
            raise

    def _inflate_some(self) -> bytes:
        """The next inflated bytes (at most _TAR_BLOCK); b"" at the end of the stream."""
        inflate = self._inflate
        while not inflate.eof:
            src = inflate.unconsumed_tail or self._file.read(_TAR_BLOCK)
            if not src:
                raise GitError(f"loose object {self._oid} is truncated")
            out = inflate.decompress(src, _TAR_BLOCK)
            if out:
                return out
        return b""

    def read(self, n: int = -1) -> bytes:
        n = self._left if n is None or n < 0 else min(n, self._left)
        parts, got = [], 0
        try:
            while got < n:
                if not self._pending:
                    self._pending = memoryview(self._inflate_some())
                    if not self._pending:
                        raise GitError(f"loose object {self._oid} is shorter than its header says")
                take = self._pending[: n - got]
                self._pending = self._pending[len(take) :]
                parts.append(take)
                got += len(take)
        except zlib.error as exc:
            raise GitError(f"cannot read loose object {self._oid}: {exc}") from None
        self._left -= n
        return b"".join(parts)

    def finish(self) -> None:
        """Check the object held exactly its size."""
        if self._left or self._pending or self._inflate_some():
            raise GitError(f"loose object {self._oid} is longer than its header says")

    def close(self) -> None:
        self._file.close()


class _PipedBlob:
    """Exactly `size` bytes of one blob from `git cat-file --batch`'s output."""

    def __init__(self, pipe: BinaryIO, oid: str, size: int):
        self._pipe = pipe
        self._oid = oid
        self._left = size

    def read(self, n: int = -1) -> bytes:
        n = self._left if n is None or n < 0 else min(n, self._left)
        data = self._pipe.read(n)
        if len(data) < n:
            raise GitError(f"git cat-file stopped in the middle of blob {self._oid}")
        self._left -= n
        return data

    def finish(self) -> None:
        """Check the blob was read whole and consume git's newline after it."""
        if self._left or self._pipe.read(1) != b"\n":
            raise GitError(f"git cat-file output out of step after blob {self._oid}")

    def close(self) -> None:
        pass  # the pipe belongs to _BigBlobs


@contextmanager
def _fsynced_writes():
    """libgit2 fsyncs the objects and refs written inside (it does not by default).

    A snapshot becomes visible right after its commit and `refs/snapkit/<id>`
    are written, so both must survive a power cut first. Only these writes pay
    for it (fsyncing the whole filesystem instead cost a second after a large
    database had just been written). libgit2's switch is process-wide and
    cannot be read back: it is turned off again afterwards, its default.
    """
    pygit2.settings.enable_fsync_gitdir(True)
    try:
        yield
    finally:
        pygit2.settings.enable_fsync_gitdir(False)
