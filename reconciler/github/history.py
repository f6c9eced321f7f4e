"""Git, for the merge guard: commits, ancestry, and the files of a commit read from git's
objects (`git ls-tree` + `git cat-file`), never from a checkout.

Every call is `git -C ROOT …` with `-z` output where paths appear, so no path is
ever split or unquoted wrongly. A failing git command is a :class:`GitError` (one
line: the command and git's own message).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from reconciler.errors import ReconcilerError

GIT_TIMEOUT = 300.0
SYMLINK_MODE = "120000"
REGULAR_MODES = ("100644", "100755")


class GitError(ReconcilerError):
    """A git command failed, or the folder is not a git repository."""


@dataclass(frozen=True)
class TreeEntry:
    """One blob of a commit's tree."""

    mode: str
    object_id: str
    path: str

    @property
    def is_symlink(self) -> bool:
        return self.mode == SYMLINK_MODE


class Repository:
    """The git repository around a folder."""

    def __init__(self, root: str) -> None:
        self.root = root

    @classmethod
    def around(cls, folder: str = ".") -> Repository:
        try:
            top = _git(folder, "rev-parse", "--show-toplevel").decode().strip()
        except GitError:
            raise GitError(
                f"{os.path.abspath(folder)} is not in a git repository: the guard reads the "
                "history of the checkout (actions/checkout with fetch-depth: 0)"
            ) from None
        return cls(top)

    def git(self, *args: str, stdin: bytes | None = None) -> bytes:
        return _git(self.root, *args, stdin=stdin)

    def commit(self, revision: str) -> str | None:
        """The full sha of `revision` as a commit, or None when this repository lacks it."""
        try:
            out = self.git(
                "rev-parse", "--verify", "--quiet", "--end-of-options", f"{revision}^{{commit}}"
            )
        except GitError:
            return None
        return out.decode().strip() or None

    def is_shallow(self) -> bool:
        return self.git("rev-parse", "--is-shallow-repository").strip() == b"true"

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        done = subprocess.run(
            ["git", "-C", self.root, "merge-base", "--is-ancestor", ancestor, descendant],
            capture_output=True,
            timeout=GIT_TIMEOUT,
        )
        if done.returncode in (0, 1):
            return done.returncode == 0
        raise GitError(_failed(("merge-base", "--is-ancestor", ancestor, descendant), done.stderr))

    def first_parent_history(self, base: str, head: str) -> list[tuple[str, tuple[str, ...]]]:
        """`git rev-list --first-parent --parents base..head`: each commit, newest first,
        with its parents (first parent first; more than one: a true merge)."""
        out = self.git("rev-list", "--first-parent", "--parents", f"{base}..{head}", "--")
        return [(line.split()[0], tuple(line.split()[1:])) for line in out.decode().splitlines()]

    def changed_paths(self, base: str, head: str) -> list[str]:
        """Every path that differs between the two commits (a rename: both paths)."""
        out = self.git("diff", "--name-only", "--no-renames", "-z", base, head, "--")
        return sorted(path for path in out.decode("utf-8", "surrogateescape").split("\0") if path)

    def tree(self, revision: str) -> list[TreeEntry]:
        """The blobs of a commit's whole tree (submodules left out)."""
        out = self.git("ls-tree", "-r", "-z", "--full-tree", revision)
        entries = []
        for record in out.decode("utf-8", "surrogateescape").split("\0"):
            if not record:
                continue
            meta, _, path = record.partition("\t")
            mode, kind, object_id = meta.split(" ")
            if kind == "blob":
                entries.append(TreeEntry(mode, object_id, path))
        return entries

    def blobs(self, object_ids: Iterable[str]) -> dict[str, bytes]:
        """The contents of blobs, read in one `git cat-file --batch`."""
        wanted = list(dict.fromkeys(object_ids))
        if not wanted:
            return {}
        out = self.git("cat-file", "--batch", stdin="".join(f"{o}\n" for o in wanted).encode())
        contents: dict[str, bytes] = {}
        at = 0
        for object_id in wanted:
            end = out.index(b"\n", at)
            header = out[at:end].split()
            if len(header) != 3:
                raise GitError(f"git cat-file: object {object_id} is missing")
            size = int(header[2])
            contents[object_id] = out[end + 1 : end + 1 + size]
            at = end + 1 + size + 1  # the content, then a newline
        return contents

    def relative(self, path: str) -> str:
        """A path given from the current folder, as a path inside the repository."""
        absolute = os.path.realpath(path)
        root = os.path.realpath(self.root)
        relative = os.path.relpath(absolute, root)
        if relative == os.pardir or relative.startswith(os.pardir + os.sep):
            raise GitError(f"{path} is outside the git repository {self.root}")
        return "" if relative == os.curdir else relative.replace(os.sep, "/")


def _git(folder: str, *args: str, stdin: bytes | None = None) -> bytes:
    try:
        done = subprocess.run(
            ["git", "-C", folder, *args],
            input=stdin,
            capture_output=True,
            timeout=GIT_TIMEOUT,
        )
    except FileNotFoundError:
        raise GitError("git is not installed: the guard reads git history") from None
    except subprocess.TimeoutExpired:
        raise GitError(f"git {args[0]} took longer than {GIT_TIMEOUT:.0f} s") from None
    if done.returncode != 0:
        raise GitError(_failed(args, done.stderr))
    return done.stdout


def _failed(args: Sequence[str], stderr: bytes) -> str:
    message = stderr.decode("utf-8", "replace").strip().splitlines()
    return f"git {' '.join(args[:2])}: {message[-1] if message else 'failed'}"
