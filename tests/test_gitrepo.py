"""GitRepo against real repositories, with the git CLI as the independent oracle."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from snapkit.errors import DirtyWorkTree, GitError, NotAGitRepo
from snapkit.gitrepo import CommitInfo, GitRepo

PROJECT_ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- helpers


def git(cwd: Path, *args: str, check: bool = True) -> str:
    done = subprocess.run(["git", *args], check=False, cwd=cwd, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {done.stderr}")
    return done.stdout.strip()


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def commit(root: Path, message: str, **files: str) -> str:
    for rel, text in files.items():
        write(root, rel.replace("__", "/"), text)
    git(root, "add", "-A")
    git(root, "commit", "-qm", message)
    return git(root, "rev-parse", "HEAD")


def porcelain(root: Path) -> list[str]:
    out = git(root, "status", "--porcelain", "--untracked-files=all")
    return sorted(out.splitlines()) if out else []


def run_python(code: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**env, "PYTHONPATH": str(PROJECT_ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code], check=False, cwd=cwd, env=env, capture_output=True, text=True
    )


class WriteOnly:
    """A sink with nothing but .write, like a pipe into the encryptor."""

    def __init__(self) -> None:
        self._buf = io.BytesIO()

    def write(self, data: bytes) -> int:
        return self._buf.write(data)

    def getvalue(self) -> bytes:
        return self._buf.getvalue()


@pytest.fixture(autouse=True)
def isolated_git_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the developer's global/system git config and any hook env out."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_CEILING_DIRECTORIES"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "Ada Lovelace")
    git(path, "config", "user.email", "ada@example.com")
    return path


@pytest.fixture
def history(root: Path) -> tuple[Path, list[str]]:
    """main: c0 (a.txt, d/b.txt) -> c1 (+c.txt, a.txt changed) -> c2 (-d/b.txt)."""
    c0 = commit(root, "zero", **{"a.txt": "a0\n", "d__b.txt": "b0\n"})
    c1 = commit(root, "one", **{"a.txt": "a1\n", "c.txt": "c1\n"})
    git(root, "rm", "-q", "d/b.txt")
    git(root, "commit", "-qm", "two")
    return root, [c0, c1, git(root, "rev-parse", "HEAD")]


# ---------------------------------------------------------------- discover


def test_discover_from_subdirectory(root: Path) -> None:
    sub = root / "x" / "y"
    sub.mkdir(parents=True)
    repo = GitRepo.discover(sub)
    assert repo.root == root.resolve()
    assert repo.git_dir == Path(git(root, "rev-parse", "--absolute-git-dir")).resolve()


def test_discover_outside_any_repo(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(NotAGitRepo, match="is not inside a git work tree"):
        GitRepo.discover(plain)
    with pytest.raises(NotAGitRepo):
        GitRepo.discover(tmp_path / "missing")


def test_discover_rejects_bare_repo_and_git_dir(tmp_path: Path, root: Path) -> None:
    git(tmp_path, "init", "-q", "--bare", "bare.git")
    with pytest.raises(NotAGitRepo):
        GitRepo.discover(tmp_path / "bare.git")
    with pytest.raises(NotAGitRepo):
        GitRepo.discover(root / ".git")


def test_discover_ignores_hook_environment(tmp_path: Path, root: Path) -> None:
    """git exports GIT_DIR/GIT_INDEX_FILE/GIT_WORK_TREE into hooks; discover must
    still open the repo around the path, with its real index."""
    commit(root, "base", **{"a.txt": "a\n"})
    write(root, "a.txt", "changed\n")
    sub = root / "sub"
    sub.mkdir()
    other = tmp_path / "other"
    git(tmp_path, "init", "-q", "other")
    code = (
        "from snapkit.gitrepo import GitRepo; r = GitRepo.discover('.');"
        "print(r.root); print(r.head().id); print(r.dirty_files())"
    )
    head = git(root, "rev-parse", "HEAD")
    for git_dir, work_tree in [(root / ".git", root), (other / ".git", other)]:
        env = {
            **os.environ,
            "GIT_DIR": str(git_dir),
            "GIT_WORK_TREE": str(work_tree),
            "GIT_INDEX_FILE": str(tmp_path / "no-such-index"),
        }
        done = run_python(code, sub, env)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == [str(root.resolve()), head, "['a.txt']"]


def test_discover_inside_a_real_post_commit_hook(root: Path) -> None:
    commit(root, "base", **{"a.txt": "a\n", "b.txt": "b\n"})
    out = root.parent / "hook-out.txt"
    hook = root / ".git" / "hooks" / "post-commit"
    code = (
        "from snapkit.gitrepo import GitRepo; r = GitRepo.discover('.');"
        f"open({str(out)!r}, 'w').write(r.head().id + ' ' + ','.join(r.dirty_files()))"
    )
    hook.write_text(f'#!/bin/sh\nPYTHONPATH={PROJECT_ROOT} exec {sys.executable} -c "{code}"\n')
    hook.chmod(0o755)
    write(root, "a.txt", "a2\n")
    write(root, "b.txt", "b2\n")
    # A partial commit: git runs the hook with GIT_INDEX_FILE set; b.txt stays dirty.
    git(root, "commit", "-qm", "only a", "a.txt")
    assert out.read_text() == f"{git(root, 'rev-parse', 'HEAD')} b.txt"


# ---------------------------------------------------------------- commits


def test_unborn_head(root: Path) -> None:
    repo = GitRepo.discover(root)
    assert repo.head() is None
    assert repo.current_branch() == "main"
    assert repo.resolve("HEAD") is None
    assert repo.dirty_files() == []


def test_commit_all_on_unborn_head_creates_branch(root: Path) -> None:
    write(root, "a.txt", "a\n")
    repo = GitRepo.discover(root)
    new = repo.commit_all("first\n\nbody")
    assert git(root, "rev-parse", "HEAD") == new
    assert git(root, "rev-parse", "refs/heads/main") == new
    assert git(root, "log", "-1", "--format=%B") == "first\n\nbody"
    assert git(root, "log", "-1", "--format=%an <%ae>|%cn <%ce>") == (
        "Ada Lovelace <ada@example.com>|Ada Lovelace <ada@example.com>"
    )
    info = repo.head()
    assert info is not None and info.id == new and info.parents == ()


def test_commit_all_adds_modifies_deletes_and_respects_gitignore(root: Path) -> None:
    base = commit(root, "base", **{"keep.txt": "k\n", "gone.txt": "g\n", "d__x.txt": "x\n"})
    write(root, ".gitignore", "*.log\nbuild/\n")
    write(root, "keep.txt", "changed\n")
    (root / "gone.txt").unlink()
    (root / "d" / "x.txt").unlink()
    write(root, "new/deep.txt", "n\n")
    write(root, "debug.log", "ignored\n")
    write(root, "build/out.bin", "ignored\n")
    repo = GitRepo.discover(root)
    new = repo.commit_all("everything")
    assert git(root, "rev-parse", "HEAD") == new
    assert git(root, "rev-parse", "HEAD~1") == base
    assert git(root, "ls-files").splitlines() == [".gitignore", "keep.txt", "new/deep.txt"]
    assert git(root, "show", "HEAD:keep.txt") == "changed"
    assert porcelain(root) == []  # on-disk index updated; ignored files stay out
    assert (root / "debug.log").exists()


def test_commit_all_without_identity_raises_git_error(tmp_path: Path) -> None:
    # libgit2 reads $HOME once per process, so check identity-less config in a child.
    bare_home = tmp_path / "nohome"
    bare_home.mkdir()
    work = tmp_path / "anon"
    git(tmp_path, "init", "-q", "anon")
    write(work, "a.txt", "a\n")
    code = (
        "from snapkit.gitrepo import GitRepo\n"
        "from snapkit.errors import GitError\n"
        "try:\n    GitRepo.discover('.').commit_all('x')\n"
        "except GitError as e:\n    print(e.message); print(e.hint)\n"
    )
    env = {**os.environ, "HOME": str(bare_home), "XDG_CONFIG_HOME": str(bare_home)}
    done = run_python(code, work, env)
    assert done.returncode == 0, done.stderr
    message, hint = done.stdout.splitlines()
    assert "user.name" in message
    assert "git config user.name" in hint and "user.email" in hint
    assert git(work, "rev-parse", "--verify", "-q", "HEAD", check=False) == ""


def test_commit_info_matches_git_log(history) -> None:
    root, (c0, c1, _) = history
    info = GitRepo.discover(root).commit_info(c1)
    fmt = git(root, "log", "-1", "--format=%H|%h|%P|%an <%ae>|%ct", c1).split("|")
    assert info == CommitInfo(
        id=fmt[0],
        short=c1[:7],
        parents=(c0,),
        message="one",
        author=fmt[3],
        time=int(fmt[4]),
    )
    with pytest.raises(GitError, match="no such commit"):
        GitRepo.discover(root).commit_info("0" * 40)


def test_resolve_and_has_commit(history) -> None:
    root, (c0, c1, c2) = history
    git(root, "tag", "light", c0)
    git(root, "tag", "-a", "annotated", "-m", "ann", c1)
    git(root, "branch", "side", c0)
    repo = GitRepo.discover(root)
    assert repo.resolve("HEAD") == c2
    assert repo.resolve("HEAD~1") == c1
    assert repo.resolve(c1[:8]) == c1
    assert repo.resolve(c0) == c0
    assert repo.resolve("light") == c0
    assert repo.resolve("annotated") == c1  # annotated tag peeled to its commit
    assert repo.resolve("side") == c0
    assert repo.resolve("main") == c2
    for garbage in ["nope", "HEAD~9", "0" * 40, "", "HEAD^{tree}", "--all"]:
        assert repo.resolve(garbage) is None, garbage
    assert repo.has_commit(c1) and repo.has_commit(c1[:7])
    assert not repo.has_commit("f" * 40)
    assert not repo.has_commit("HEAD")
    tree = git(root, "rev-parse", "HEAD^{tree}")
    assert not repo.has_commit(tree)


def test_current_branch_detached(history) -> None:
    root, (c0, _, _) = history
    git(root, "checkout", "-q", "--detach", c0)
    assert GitRepo.discover(root).current_branch() is None


def test_ancestors(history) -> None:
    root, (c0, c1, c2) = history
    repo = GitRepo.discover(root)
    assert list(repo.ancestors(c2)) == [c2, c1, c0]
    assert list(repo.ancestors(c1)) == [c1, c0]
    assert list(repo.ancestors(c2, limit=2)) == [c2, c1]
    with pytest.raises(GitError):
        repo.ancestors("nope")


# ---------------------------------------------------------------- status


def test_dirty_and_untracked_files(history) -> None:
    root, _ = history
    write(root, ".gitignore", "*.log\n")
    git(root, "add", ".gitignore")
    git(root, "commit", "-qm", "ignore")
    repo = GitRepo.discover(root)
    assert repo.dirty_files() == []
    write(root, "a.txt", "modified\n")
    (root / "c.txt").unlink()
    write(root, "staged.txt", "s\n")
    git(root, "add", "staged.txt")
    write(root, "loose/u.txt", "u\n")
    write(root, "noise.log", "ignored\n")
    assert repo.dirty_files() == ["a.txt", "c.txt", "staged.txt"]
    assert repo.untracked_files() == ["loose/u.txt"]
    assert repo.is_ignored("noise.log") and not repo.is_ignored("a.txt")
    assert repo.is_ignored(str(root / "noise.log"))


def test_ensure_ignored_is_idempotent(root: Path) -> None:
    repo = GitRepo.discover(root)
    assert repo.ensure_ignored(".snapkit/") is True
    assert repo.ensure_ignored(".snapkit/") is False
    assert (root / ".gitignore").read_text() == ".snapkit/\n"
    (root / ".gitignore").write_text("*.log")  # no trailing newline
    assert repo.ensure_ignored("*.tmp") is True
    assert repo.ensure_ignored("*.log") is False
    assert (root / ".gitignore").read_text() == "*.log\n*.tmp\n"
    write(root, "x.tmp", "t\n")
    assert repo.is_ignored("x.tmp")
    assert git(root, "check-ignore", "x.tmp") == "x.tmp"
    repo.ensure_ignored("build/")
    write(root, "build/deep/out.bin", "b\n")
    assert repo.is_ignored("build/deep/out.bin")
    assert repo.untracked_files() == [".gitignore"]
    with pytest.raises(ValueError):
        repo.ensure_ignored("a\nb")


# ---------------------------------------------------------------- tar


def test_write_tree_tar_is_deterministic_and_complete(root: Path) -> None:
    write(root, "b.txt", "bee\n")
    write(root, "a-dir/inner.txt", "inner\n")
    write(root, "a.txt", "a\n")
    tool = write(root, "bin/tool.sh", "#!/bin/sh\necho hi\n")
    tool.chmod(0o755)
    os.symlink("b.txt", root / "link")
    git(root, "add", "-A")
    # A submodule (gitlink) entry: no content here, so it must be skipped.
    git(root, "update-index", "--add", "--cacheinfo", f"160000,{'1' * 40},sub")
    git(root, "commit", "-qm", "tree")
    head = git(root, "rev-parse", "HEAD")
    ctime = int(git(root, "log", "-1", "--format=%ct"))
    repo = GitRepo.discover(root)

    first, second = WriteOnly(), WriteOnly()
    repo.write_tree_tar(head, first)
    repo.write_tree_tar(head, second)
    assert first.getvalue() == second.getvalue()

    tar_path = root.parent / "out.tar"
    tar_path.write_bytes(first.getvalue())
    listing = subprocess.run(
        ["tar", "-tvf", str(tar_path)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    # git order: "a-dir/" < "a.txt" < "b.txt" < "bin/" < "link"
    assert [line.split()[0] for line in listing] == [
        "drwxr-xr-x",
        "-rw-r--r--",
        "-rw-r--r--",
        "-rw-r--r--",
        "drwxr-xr-x",
        "-rwxr-xr-x",
        "lrwxrwxrwx",
    ]
    assert listing[-1].endswith("link -> b.txt")

    with tarfile.open(fileobj=io.BytesIO(first.getvalue())) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == [
            "a-dir",
            "a-dir/inner.txt",
            "a.txt",
            "b.txt",
            "bin",
            "bin/tool.sh",
            "link",
        ]
        assert {(m.uid, m.gid, m.uname, m.gname, m.mtime) for m in members} == {
            (0, 0, "", "", ctime)
        }
        assert tar.extractfile("bin/tool.sh").read() == b"#!/bin/sh\necho hi\n"
        assert tar.extractfile("a-dir/inner.txt").read() == b"inner\n"
        assert tar.getmember("link").linkname == "b.txt"


def _tar_bytes(repo: GitRepo, commit_id: str) -> bytes:
    out = WriteOnly()
    repo.write_tree_tar(commit_id, out)
    return out.getvalue()


def test_write_tree_tar_streams_big_blobs_to_the_same_bytes(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import snapkit.gitrepo as gitrepo

    write(root, "empty.txt", "")
    write(root, "small.txt", "small\n")
    (root / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 7))  # over one 1 MiB block
    (root / "tool").write_bytes(b"#!/bin/sh\n" * 50_000)
    (root / "tool").chmod(0o755)
    os.symlink("big.bin", root / "link")
    head = commit(root, "files")
    repo = GitRepo.discover(root)
    monkeypatch.setattr(gitrepo, "STREAM_BLOB_BYTES", 1 << 40)
    whole = _tar_bytes(repo, head)  # every blob read whole by pygit2
    with tarfile.open(fileobj=io.BytesIO(whole)) as tar:
        assert tar.extractfile("big.bin").read() == (root / "big.bin").read_bytes()

    monkeypatch.setattr(gitrepo, "STREAM_BLOB_BYTES", 0)
    oid = git(root, "rev-parse", "HEAD:big.bin")
    loose = root / ".git" / "objects" / oid[:2] / oid[2:]
    assert loose.exists()  # loose objects: inflated by snapkit
    assert _tar_bytes(repo, head) == whole
    git(root, "gc", "-q", "--prune=now")
    assert not loose.exists()  # packed: streamed by git cat-file
    # A hook's GIT_DIR / GIT_INDEX_FILE must not send git cat-file elsewhere.
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("GIT_INDEX_FILE", str(tmp_path / "index"))
    assert _tar_bytes(GitRepo.discover(root), head) == whole
    monkeypatch.delenv("GIT_DIR")
    monkeypatch.delenv("GIT_INDEX_FILE")
    monkeypatch.setenv("PATH", str(tmp_path / "no-git-here"))  # no git: read whole by pygit2
    assert _tar_bytes(GitRepo.discover(root), head) == whole


@pytest.mark.parametrize("size", [100, 5 * 1024 * 1024])
def test_write_tree_tar_missing_blob_is_a_git_error(root: Path, size: int) -> None:
    (root / "data.bin").write_bytes(os.urandom(size))
    head = commit(root, "data")
    oid = git(root, "rev-parse", "HEAD:data.bin")
    (root / ".git" / "objects" / oid[:2] / oid[2:]).unlink()
    with pytest.raises(GitError, match=oid):
        GitRepo.discover(root).write_tree_tar(head, WriteOnly())


def test_write_tree_tar_damaged_loose_blob_is_a_git_error(root: Path) -> None:
    (root / "data.bin").write_bytes(os.urandom(5 * 1024 * 1024))
    head = commit(root, "data")
    oid = git(root, "rev-parse", "HEAD:data.bin")
    loose = root / ".git" / "objects" / oid[:2] / oid[2:]
    raw = loose.read_bytes()
    loose.chmod(0o644)
    loose.write_bytes(raw[: len(raw) // 2])  # truncated after its header
    with pytest.raises(GitError, match=oid):
        GitRepo.discover(root).write_tree_tar(head, WriteOnly())


def test_tree_tar_key_is_tree_time_and_format(root: Path) -> None:
    first = commit(root, "a", **{"a.txt": "a\n"})
    repo = GitRepo.discover(root)
    key = repo.tree_tar_key(first)
    assert key == {"tree": git(root, "rev-parse", "HEAD^{tree}"),
                   "mtime": int(git(root, "log", "-1", "--format=%ct")), "format": 1}
    env = {**os.environ, "GIT_COMMITTER_DATE": "2001-01-01T00:00:00Z"}
    subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "same tree"], cwd=root,
                   env=env, check=True)
    second = git(root, "rev-parse", "HEAD")
    assert repo.tree_tar_key(second)["tree"] == key["tree"]
    assert repo.tree_tar_key(second)["mtime"] == 978307200 != key["mtime"]
    assert _tar_bytes(repo, second) != _tar_bytes(repo, first)


def test_write_tree_tar_unknown_commit(root: Path) -> None:
    commit(root, "base", **{"a.txt": "a\n"})
    with pytest.raises(GitError):
        GitRepo.discover(root).write_tree_tar("0" * 40, WriteOnly())


# ---------------------------------------------------------------- refs


def test_keep_ref_survives_gc(root: Path) -> None:
    commit(root, "base", **{"a.txt": "a\n"})
    kept = commit(root, "kept", **{"a.txt": "kept\n"})
    git(root, "reset", "-q", "--hard", "HEAD~1")
    lost = commit(root, "lost", **{"a.txt": "lost\n"})
    git(root, "reset", "-q", "--hard", "HEAD~1")
    repo = GitRepo.discover(root)
    repo.keep_ref("snap-1", kept)
    git(root, "reflog", "expire", "--expire=now", "--all")
    git(root, "gc", "-q", "--prune=now")
    assert git(root, "cat-file", "-t", kept) == "commit"
    assert git(root, "cat-file", "-t", lost, check=False) == ""  # the control: gc works
    assert git(root, "rev-parse", "refs/snapkit/snap-1") == kept


def test_snapkit_refs_and_drop(history) -> None:
    root, (c0, c1, c2) = history
    repo = GitRepo.discover(root)
    repo.keep_ref("s1", c0)
    repo.keep_ref("s2", c1)
    repo.keep_ref("s1", c2)  # overwrite
    assert repo.snapkit_refs() == {"s1": c2, "s2": c1}
    assert git(root, "for-each-ref", "--format=%(refname) %(objectname)", "refs/snapkit") == (
        f"refs/snapkit/s1 {c2}\nrefs/snapkit/s2 {c1}"
    )
    repo.drop_ref("s1")
    repo.drop_ref("s1")  # idempotent
    assert repo.snapkit_refs() == {"s2": c1}
    with pytest.raises(GitError):
        repo.keep_ref("bad..name", c0)
    with pytest.raises(GitError):
        repo.keep_ref("s3", "0" * 40)


# ---------------------------------------------------------------- checkout


def test_checkout_moves_branch_and_removes_dropped_files(history) -> None:
    root, (c0, _, c2) = history
    write(root, "untracked.txt", "mine\n")
    repo = GitRepo.discover(root)
    repo.checkout(c0)
    assert git(root, "rev-parse", "HEAD") == c0
    assert git(root, "rev-parse", "--abbrev-ref", "HEAD") == "main"
    assert git(root, "rev-parse", "refs/heads/main") == c0
    assert not (root / "c.txt").exists()  # tracked in c2, absent in c0
    assert (root / "d" / "b.txt").read_text() == "b0\n"
    assert (root / "a.txt").read_text() == "a0\n"
    assert porcelain(root) == ["?? untracked.txt"]
    assert git(root, "reflog", "-1", "--format=%gs", "main") == f"snapkit: restore {c0[:7]}"
    assert git(root, "reflog", "-1", "--format=%gs", "HEAD") == f"snapkit: restore {c0[:7]}"
    repo.checkout(c2)  # and forward again
    assert git(root, "rev-parse", "HEAD") == c2 and porcelain(root) == ["?? untracked.txt"]


def test_checkout_detach(history) -> None:
    root, (c0, c1, c2) = history
    repo = GitRepo.discover(root)
    repo.checkout(c1, detach=True)
    assert git(root, "rev-parse", "HEAD") == c1
    assert git(root, "rev-parse", "--abbrev-ref", "HEAD") == "HEAD"
    assert git(root, "rev-parse", "refs/heads/main") == c2  # branch untouched
    assert porcelain(root) == []
    assert git(root, "reflog", "-1", "--format=%gs", "HEAD") == f"snapkit: restore {c1[:7]}"
    repo.checkout(c0)  # detached, no detach flag: HEAD just moves
    assert git(root, "rev-parse", "HEAD") == c0
    assert git(root, "rev-parse", "refs/heads/main") == c2
    assert repo.current_branch() is None


def test_checkout_refuses_dirty_tree_then_force(history) -> None:
    root, (c0, _, c2) = history
    write(root, "a.txt", "precious\n")
    write(root, "new.txt", "n\n")
    git(root, "add", "new.txt")
    repo = GitRepo.discover(root)
    with pytest.raises(DirtyWorkTree, match=r"uncommitted changes: a\.txt, new\.txt$"):
        repo.checkout(c0)
    assert (root / "a.txt").read_text() == "precious\n"
    assert git(root, "rev-parse", "HEAD") == c2
    repo.checkout(c0, force=True)
    assert git(root, "rev-parse", "HEAD") == c0
    assert (root / "a.txt").read_text() == "a0\n"
    assert porcelain(root) == []  # staged new file dropped, like reset --hard


def test_checkout_dirty_message_is_capped(history) -> None:
    root, (c0, _, _) = history
    for i in range(12):
        write(root, f"f{i:02}.txt", "x\n")
    git(root, "add", "-A")
    with pytest.raises(DirtyWorkTree) as caught:
        GitRepo.discover(root).checkout(c0)
    assert caught.value.message.endswith("f09.txt and 2 more")


def test_checkout_refuses_to_overwrite_untracked(history) -> None:
    root, (c0, c1, _) = history
    git(root, "checkout", "-q", "-b", "old", c0)  # c0 has no c.txt; c1 does
    write(root, "c.txt", "my own\n")
    repo = GitRepo.discover(root)
    with pytest.raises(GitError, match=r"untracked files would be overwritten.*c\.txt"):
        repo.checkout(c1)
    assert (root / "c.txt").read_text() == "my own\n"
    assert git(root, "rev-parse", "HEAD") == c0
    repo.checkout(c1, force=True)
    assert (root / "c.txt").read_text() == "c1\n"
    assert git(root, "rev-parse", "--abbrev-ref", "HEAD") == "old"
    assert porcelain(root) == []


def test_checkout_refuses_untracked_dir_where_file_goes(history) -> None:
    root, (c0, _, _) = history  # HEAD c2 has no d/ ; c0 has file d/b.txt
    write(root, "d/b.txt/nested.txt", "blocked\n")
    with pytest.raises(GitError, match=r"d/b\.txt/nested\.txt"):
        GitRepo.discover(root).checkout(c0)


def test_checkout_on_unborn_branch(history, tmp_path: Path) -> None:
    root, (c0, _, _) = history
    git(root, "checkout", "-q", "--orphan", "fresh")
    git(root, "rm", "-rq", "--cached", ".")
    for name in ("a.txt", "c.txt"):
        (root / name).unlink()
    GitRepo.discover(root).checkout(c0)
    assert git(root, "rev-parse", "--abbrev-ref", "HEAD") == "fresh"
    assert git(root, "rev-parse", "refs/heads/fresh") == c0
    assert porcelain(root) == []


# ---------------------------------------------------------------- places


def test_hooks_dir(root: Path, tmp_path: Path) -> None:
    repo = GitRepo.discover(root)
    assert repo.hooks_dir() == root.resolve() / ".git" / "hooks"
    git(root, "config", "core.hooksPath", ".githooks")
    assert GitRepo.discover(root).hooks_dir() == root.resolve() / ".githooks"
    git(root, "config", "core.hooksPath", str(tmp_path / "abs-hooks"))
    assert GitRepo.discover(root).hooks_dir() == tmp_path / "abs-hooks"


def test_snapkit_dir_is_created(root: Path) -> None:
    repo = GitRepo.discover(root)
    path = repo.snapkit_dir()
    assert path == repo.git_dir / "snapkit" and path.is_dir()
