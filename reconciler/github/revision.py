"""The Projects one commit's files give, read from git's objects, never from a checkout.

The YAML blobs of the commit's tree are written into a temporary folder that mirrors
the repository, and the normal loader (`files.load_projects`) reads them there, so a
Project at a commit is exactly what `plan` would have read at that commit (includes
resolve inside the same mirror). A symbolic link among the files the loader reads is
refused: its target is not part of what anyone reviewed.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from reconciler.errors import ConfigError
from reconciler.files import PROJECT_SUFFIXES, ProjectFile, load_projects
from reconciler.github.history import REGULAR_MODES, Repository
from reconciler.yamlread import nearest

KeyPath = tuple[Any, ...]

# "$${" is a literal "${"; "${NAME" starts a reference (files.py scans the same way).
_REFERENCE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)")


@dataclass
class Revision:
    """The Projects of one commit, by id, and what did not load."""

    sha: str
    projects: dict[str, ProjectFile] = field(default_factory=dict)
    # file (as in the repository) -> the first problem that kept it from loading
    failed: dict[str, str] = field(default_factory=dict)
    # project id -> the key paths whose value is written with ${NAME}
    templated: dict[str, set[KeyPath]] = field(default_factory=dict)

    def failed_file(self, path: str) -> str | None:
        return self.failed.get(path)


def load_revision(
    repository: Repository, sha: str, paths: Sequence[str], env: Mapping[str, str]
) -> Revision:
    """Load the project files under `paths` (repository-relative) as they are at `sha`."""
    revision = Revision(sha)
    entries = [e for e in repository.tree(sha) if e.path.endswith(PROJECT_SUFFIXES)]
    entries = [e for e in entries if _safe_path(e.path)]
    for entry in entries:
        if entry.is_symlink and _under(entry.path, paths):
            revision.failed[entry.path] = "refused: a symbolic link; a project file is a file"
    regular = [e for e in entries if e.mode in REGULAR_MODES]
    contents = repository.blobs(e.object_id for e in regular)
    with tempfile.TemporaryDirectory(prefix="reconciler-guard-") as mirror:
        for entry in regular:
            target = os.path.join(mirror, *entry.path.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as fh:
                fh.write(contents[entry.object_id])
        roots = [os.path.join(mirror, p) for p in paths if os.path.exists(os.path.join(mirror, p))]
        if not roots:
            return revision
        try:
            # The mirror is the repository root: includes resolve inside it, and every
            # path is shown as it is in the repository.
            result = load_projects(roots, env, root=mirror, relative_to=mirror)
        except ConfigError:  # no project file at all under the paths at this commit
            return revision
    texts = {e.path: contents[e.object_id].decode("utf-8", "replace") for e in regular}
    for problem in result.problems:
        revision.failed.setdefault(problem.file, str(problem))
    for project in result.projects:
        revision.projects[project.id] = project
        revision.templated[project.id] = _templated(project, texts)
    return revision


def _templated(project: ProjectFile, texts: Mapping[str, str]) -> set[KeyPath]:
    """Where the Project's effective document takes a `${NAME}` value: from its file or a
    fragment it includes, in the parts that file wins (an includer that overrides a
    fragment's templated field with a literal makes it a literal)."""
    found = {path for path, *_ in project.substituted}
    for file in (project.path, *project.fragments):
        for path in templated_paths(texts.get(file, "")):
            _, owner = nearest(project.owners, path)
            if owner is None or owner[0].file == file:
                found.add(path)
    return found


def templated_paths(text: str) -> set[KeyPath]:
    """The key paths of a YAML document whose string value holds a `${NAME}` reference
    (with or without a default): where a workflow's RECONCILER_VAR_ value lands."""
    try:
        root = yaml.compose(text.removeprefix("\ufeff"), Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError):
        return set()
    found: set[KeyPath] = set()

    def walk(node: Node | None, path: KeyPath, depth: int) -> None:
        if node is None or depth > 64:
            return
        if isinstance(node, ScalarNode):
            if any(match[1] for match in _REFERENCE.finditer(str(node.value))):
                found.add(path)
        elif isinstance(node, MappingNode):
            for key, value in node.value:
                if isinstance(key, ScalarNode):
                    walk(value, (*path, key.value), depth + 1)
        elif isinstance(node, SequenceNode):
            for index, item in enumerate(node.value):
                walk(item, (*path, index), depth + 1)

    walk(root, (), 0)
    return found


def _under(path: str, roots: Sequence[str]) -> bool:
    return any(r in ("", ".") or path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _safe_path(path: str) -> bool:
    parts = path.split("/")
    return not path.startswith("/") and all(p not in ("", ".", "..", ".git") for p in parts)
