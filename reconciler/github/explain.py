"""Which changes of a plan the project files explain (step 3 of the merge guard).

An entry (a setting or an object of the plan) is explained when its Project's
effective value for that setting, or that object's declaration, differs between the
base and HEAD, or when the Project is new since the base: a create or delete by the
object being declared, undeclared or redeclared, or by its kind's `prune`; an
update or rename field by field (each changed field's declared value, a rename's
`renamedFrom`), so a field changed by hand is not reverted because a reviewed pull
request touched another field of the same object. A value written with `${NAME}` is
also explained when a file under `.github/workflows/` changed (that is where
`RECONCILER_VAR_` values live), and a function's `code` by its `source`, its
`sourceInputs`, or a file those globs match that changed.
Anything else would revert a change made by hand. Pure: data in, data out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reconciler.escape import shorten
from reconciler.files import ProjectFile
from reconciler.github.revision import KeyPath, Revision
from reconciler.kinds import KINDS
from reconciler.plan import Plan
from reconciler.render import format_value

# Object changes never guarded: a secret's value compared at apply (SPEC section 13).
UNGUARDED_ACTIONS = ("compare",)
CODE_FIELD = "code"
WORKFLOWS_FOLDER = ".github/workflows/"
_ABSENT = object()


# What the plan would do --------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One change of the plan that the guard must see explained."""

    project_id: str
    project: str  # how a person recognises the Project: name (file)
    kind: str | None  # None for a setting
    name: str  # the setting's field, or the object's name
    action: str
    fields: tuple[str, ...]
    text: str  # what it does, on one line

    def __str__(self) -> str:
        return f"{self.project}: {self.text}"


_MARKS = {"create": "+", "update": "~", "rename": "~", "delete": "-"}


def plan_entries(plan: Plan) -> list[Entry]:
    """Every change of the plan: each setting, each object (values compared at apply are
    not changes)."""
    entries = []
    for project in plan.projects:
        label = f"{project.name} ({project.file})" if project.name else project.file
        for change in project.changes:
            text = (
                f"~ {change.field}: {shorten(format_value(change.before), 80)} -> "
                f"{shorten(format_value(change.after), 80)}"
            )
            entry = Entry(project.project_id, label, None, change.field, "update", (), text)
            entries.append(entry)
        for obj in project.objects:
            if obj.action in UNGUARDED_ACTIONS:
                continue
            fields = tuple(c.field for c in obj.changes)
            text = f"{_MARKS.get(obj.action, '?')} {obj.kind} {obj.name}"
            if obj.renamed_from is not None:
                text += f" (renamed from {obj.renamed_from})"
            elif obj.action == "update":
                text += f" ({', '.join(fields)})"
            entries.append(
                Entry(project.project_id, label, obj.kind, obj.name, obj.action, fields, text)
            )
    return entries


# 3. Every change explained by the files ------------------------------------------------


@dataclass(frozen=True)
class Changes:
    """What changed between base and HEAD besides the Projects' documents."""

    paths: tuple[str, ...]

    @property
    def workflows(self) -> bool:
        return any(path.startswith(WORKFLOWS_FOLDER) for path in self.paths)

    def any_matches(self, globs: Any) -> bool:
        patterns = (
            [_glob(g) for g in globs if isinstance(g, str)] if isinstance(globs, list) else []
        )
        return any(p.fullmatch(path) for p in patterns for path in self.paths)


def _glob(pattern: str) -> re.Pattern[str]:
    """A `sourceInputs` glob, relative to the repository root: `**` crosses folders,
    `*` and `?` do not."""
    out = []
    for token in re.split(r"(\*\*/?|\*|\?)", pattern.lstrip("/")):
        if token in ("**", "**/"):
            out.append("(?:.*/)?" if token == "**/" else ".*")
        elif token == "*":
            out.append("[^/]*")
        elif token == "?":
            out.append("[^/]")
        else:
            out.append(re.escape(token))
    return re.compile("".join(out))


def explain(
    entries: Sequence[Entry],
    base: Revision,
    head: Revision,
    changes: Changes,
    kind_keys: Mapping[str, str] | None = None,
) -> list[tuple[Entry, str | None]]:
    """Each entry with None when the files explain it, else why not."""
    keys = dict(kind_keys) if kind_keys is not None else {k.name: k.key for k in KINDS}
    return [(entry, _unexplained(entry, base, head, changes, keys)) for entry in entries]


def _unexplained(
    entry: Entry, base: Revision, head: Revision, changes: Changes, keys: Mapping[str, str]
) -> str | None:
    now = head.projects.get(entry.project_id)
    if now is None:
        return f"not in the project files at {head.sha[:12]}"
    then = base.projects.get(entry.project_id)
    if then is None:
        broken = base.failed_file(now.path) or next(iter(base.failed.values()), None)
        if broken is None:
            return None  # a Project new since the base
        return f"its files did not load at {base.sha[:12]}, so every change is refused: {broken}"
    templated = head.templated.get(entry.project_id, set())
    if entry.kind is None:
        if _value(then.data, entry.name) != _value(now.data, entry.name):
            return None
        if changes.workflows and _written_with_a_variable(templated, (entry.name,)):
            return None
        return "not changed in the files"
    key = keys.get(entry.kind)
    if key is None:
        return f"a kind the guard does not know ({entry.kind})"
    before, after = _declaration(then, key, entry.name), _declaration(now, key, entry.name)
    if _prunes(then, key) != _prunes(now, key):
        return None
    if entry.action in ("create", "delete") or _ABSENT in (before, after):
        # Its existence: explained by a declaration that came, went or changed.
        return None if before != after else "not changed in the files"
    rest = [
        name
        for name in entry.fields
        if not _field_explained(name, before, after, changes)
        and not (changes.workflows and _written_with_a_variable(templated, (key, entry.name, name)))
    ]
    return f"{', '.join(rest)} not changed in the files" if rest else None


def _field_explained(name: str, before: Any, after: Any, changes: Changes) -> bool:
    """One field of an update or rename: its declared value differs. A rename's name is
    explained by its `renamedFrom`; a function's code by its `source`, its
    `sourceInputs`, or a file those globs match."""
    related = _CODE_KEYS if name == CODE_FIELD else (_RENAME_KEY if name == "name" else (name,))
    if any(_field(before, k) != _field(after, k) for k in related):
        return True
    return name == CODE_FIELD and changes.any_matches(_field(after, "sourceInputs"))


_CODE_KEYS = ("source", "sourceInputs")
_RENAME_KEY = ("renamedFrom",)


def _field(declaration: Any, name: str) -> Any:
    return declaration.get(name, _ABSENT) if isinstance(declaration, Mapping) else _ABSENT


def _value(data: Mapping[str, Any], key: str) -> Any:
    return data.get(key, _ABSENT)


def _declaration(project: ProjectFile, key: str, name: str) -> Any:
    objects = project.data.get(key)
    return objects.get(name, _ABSENT) if isinstance(objects, Mapping) else _ABSENT


def _prunes(project: ProjectFile, key: str) -> bool:
    prune = project.data.get("prune")
    return isinstance(prune, list) and key in prune


def _written_with_a_variable(templated: set[KeyPath], prefix: KeyPath) -> bool:
    return any(path[: len(prefix)] == prefix for path in templated)
