"""Where a plan comes from: the git commit of the files it read, or a hash of them.

`plan` records it in the plan file (`commit`, `filesHash`); `apply --plan` checks it
before it trusts those files to verify the plan against (``verify.py``):

- **commit**: when every file the plan read (its Projects' files and the fragments
  they include) is committed at HEAD and unchanged in the index and the working tree
  (not modified, untracked or ignored), the plan records `git rev-parse HEAD`, and
  apply requires HEAD to be that commit and the same files to be unchanged there.
- **filesHash** otherwise (a file not committed, or no git at all): ``sha256:`` over
  one line per file, in order of its path relative to the root (``/``-separated):
  ``PATH NUL HEX(sha256(BYTES)) LF``; apply requires the same files to hash the same.

The root is ``--root`` or the repository that holds the plan's first file (git's top
level; outside git, the parent of its ``projects/`` folder): the same rule on both
sides, applied to the same file labels.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterable, Sequence

from reconciler.includes import find_root

GIT_TIMEOUT = 60.0


def plan_root(first_file: str, root: str | None = None) -> str:
    """The folder a plan's paths are relative to (see the module docstring)."""
    return os.path.abspath(root) if root is not None else find_root(first_file)


def files_read(files: Iterable[tuple[str, Iterable[str]]]) -> list[str]:
    """Every file a plan read, once: (project file, its fragments) pairs, as shown."""
    return list(
        dict.fromkeys(path for project, fragments in files for path in (project, *fragments))
    )


def record(files: Sequence[str], root: str) -> tuple[str | None, str | None]:
    """(commit, None) when every file is committed and unchanged at HEAD, else
    (None, filesHash)."""
    commit = head(root)
    if commit is not None and not uncommitted(files, root):
        return commit, None
    return None, files_hash(files, root)


def head(root: str) -> str | None:
    """The commit HEAD is at in the repository around `root`, or None (no git, no
    repository, no commit yet)."""
    out = _git(root, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")
    if out is None:
        return None
    return out.decode().strip() or None


def uncommitted(files: Sequence[str], root: str) -> list[str]:
    """The files (as given) that are not committed unchanged at HEAD: modified, staged,
    untracked, ignored, or outside the repository."""
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None:
        return list(files)
    top_level = os.path.realpath(top.decode().strip())
    inside = {file: _relative(file, top_level) for file in files}
    outside = [file for file, path in inside.items() if path is None]
    paths = {path: file for file, path in inside.items() if path is not None}
    if not paths:
        return outside
    folders = sorted({os.path.dirname(path) or "." for path in paths})
    out = _git(
        top_level,
        "status",
        "--porcelain=v1",
        "-z",
        "--untracked-files=all",
        "--ignored=matching",
        "--",
        *folders,
    )
    if out is None:
        return list(files)
    changed: set[str] = set()
    records = out.decode("utf-8", "surrogateescape").split("\0")
    index = 0
    while index < len(records):
        record_ = records[index]
        index += 1
        if len(record_) < 4:
            continue
        changed.add(record_[3:])
        if record_[0] in "RC":  # a rename or copy: the original path follows
            changed.add(records[index])
            index += 1
    return outside + [file for path, file in paths.items() if path in changed]


def files_hash(files: Sequence[str], root: str) -> str:
    """``sha256:`` over each file's path (relative to `root`) and the sha256 of its
    bytes, in order of path. A file that cannot be read hashes as missing."""
    entries = []
    for file in files:
        path = os.path.relpath(os.path.abspath(file), root).replace(os.sep, "/")
        try:
            with open(file, "rb") as fh:
                digest = hashlib.sha256(fh.read()).hexdigest()
        except OSError:
            digest = "missing"
        entries.append((path, digest))
    total = hashlib.sha256()
    for path, digest in sorted(entries):
        total.update(path.encode("utf-8", "surrogateescape") + b"\0" + digest.encode() + b"\n")
    return "sha256:" + total.hexdigest()


def _relative(file: str, top_level: str) -> str | None:
    path = os.path.relpath(os.path.realpath(file), top_level)
    if path == os.pardir or path.startswith(os.pardir + os.sep):
        return None
    return path.replace(os.sep, "/")


def _git(folder: str, *args: str) -> bytes | None:
    """A git command's output, or None when git is missing or the command fails (outside a
    repository, say): every caller then treats the files as not committed."""
    try:
        done = subprocess.run(
            ["git", "-C", folder, "--literal-pathspecs", *args],
            capture_output=True,
            timeout=GIT_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None
