"""A plan as lines a person reads, shared by the text and the markdown renderers.

Each line is our own words with the values in it marked (:class:`Value`): anything
that came from a file, a plan file or the API. Each renderer escapes values for
where they go (:func:`reconciler.escape.term` on a terminal, a code span in a
comment) and writes our words as they are. Order is fixed here, whatever order
requests finished in: Projects by file, then kinds in write order, then names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reconciler.escape import plural
from reconciler.kinds import BY_NAME, KINDS, Kind, policy_rules
from reconciler.objects import is_ref
from reconciler.plan import CHANGED, UNCHANGED, Change, ObjectChange, Plan, ProjectPlan
from reconciler.secretvalues import Source


class Value(str):
    """Text from a file, a plan file or the API: escaped wherever it is written."""


Parts = tuple[str, ...]  # our words (str) and values (Value), in reading order


@dataclass(frozen=True)
class Line:
    depth: int  # 0: an object (or setting); 1: one of its fields
    mark: str  # + ~ - = (what happens), as Terraform marks it
    parts: Parts


ACTION_MARKS = {"create": "+", "update": "~", "rename": "~", "delete": "-", "compare": "="}
# Terraform's words for what happens to objects: `N to add, N to change, N to destroy`.
TALLY = {"create": "add", "update": "change", "rename": "change", "delete": "destroy"}
TALLY_WORDS = ("add", "change", "destroy")
COMPARED = "compare"  # a secret's value compared at apply: counted apart, never a change
SETTINGS = "settings"  # the row and section of a Project's own settings


def join(parts: Iterable[str], escape: Callable[[str], str]) -> str:
    """The parts as one string, each value passed through ``escape``."""
    return "".join(escape(part) if isinstance(part, Value) else part for part in parts)


# Values ---------------------------------------------------------------------------------


def value_parts(value: Any) -> Parts:
    """A value as a person reads it: roles as `Name (id)` (or `Name (created by this
    plan)`), role lists as `[Name (id), …]`, other values as JSON (strings quoted)."""
    if isinstance(value, Mapping) and "id" in value:
        if is_ref(value["id"]):
            return (Value(str(value.get("name"))), " (created by this plan)")
        if value.get("name"):
            return (Value(str(value["name"])), " (", Value(str(value["id"])), ")")
        return (Value(str(value["id"])),)
    if (
        isinstance(value, list)
        and value
        and all(isinstance(item, Mapping) and "id" in item for item in value)
    ):
        parts: list[str] = ["["]
        for index, item in enumerate(value):
            parts += [", "] * bool(index) + list(value_parts(item))
        return (*parts, "]")
    return (Value(json.dumps(value, ensure_ascii=False)),)


def format_value(value: Any) -> str:
    """A value as plain text a person reads (:func:`value_parts`, unescaped)."""
    return join(value_parts(value), str)


def source_parts(change: Change | ObjectChange, *files: str) -> Parts:
    """`(from FILE:LINE)` when the change's desired value is written in another file
    than ``files`` (the Project's own; for a new object's field, the object's too),
    i.e. in an included fragment; else nothing."""
    source = getattr(change, "source", None)
    if not isinstance(source, str) or not source or _file_of(source) in files:
        return ()
    return (" (from ", Value(source), ")")


def field_source_parts(field: Change, change: ObjectChange, project_file: str) -> Parts:
    """Where an object's field is written, when that says more than where the object
    is: a new object's fields are written where it is, unless a file overrides one."""
    object_source = getattr(change, "source", None)
    if change.action == "create" and isinstance(object_source, str):
        return source_parts(field, project_file, _file_of(object_source))
    return source_parts(field, project_file)


def _file_of(source: str) -> str:
    file, colon, line = source.rpartition(":")
    return file if colon and line.isdigit() else source


# Lines ----------------------------------------------------------------------------------


def setting_line(change: Change, project_file: str, *, drift: bool = False, depth: int = 0) -> Line:
    """`~ field: before -> after` (a drift report: `live before → file after`); a
    setting, or (at depth 1) a field of an object."""
    before, after = value_parts(change.before), value_parts(change.after)
    if drift:
        parts = (Value(change.field), ": live ", *before, " → file ", *after)
    else:
        parts = (Value(change.field), ": ", *before, " -> ", *after)
    return Line(depth, "~", parts + source_parts(change, project_file))


def title_parts(change: ObjectChange, project_file: str, *, value: bool = True) -> Parts:
    """The object's name, what it was renamed from (a secret: where its value comes
    from, never the value, unless `value` is False; a bucket's delete: that its objects
    go too), and where it is declared."""
    parts: Parts = (Value(change.name),)
    if change.renamed_from is not None:
        parts += (" (renamed from ", Value(str(change.renamed_from)), ")")
    kind = BY_NAME.get(change.kind)
    if kind is not None and kind.concealed and value:
        parts += value_source_parts(change)
    if kind is not None and change.action == "delete":
        parts += (kind.delete_note,) if kind.delete_note else ()
    if change.action not in ACTION_MARKS:
        parts += (f" ({change.action})",)
    return parts + source_parts(change, project_file)


def value_source_parts(change: ObjectChange) -> Parts:
    """A secret's line after its name: `(env RECONCILER_SECRET_X)` for a new one, `:
    value changes (not shown)`, `: value compared at apply`; a client secret says that
    the client's secret is rotated at apply."""
    if change.action == COMPARED:
        return (": value compared at apply",)
    if change.value_source is None or change.action not in ("create", "update"):
        return ()
    rotated = ", rotated at apply" if _rotates(change.value_source) else ""
    if change.action == "create":
        return (" (", Value(change.value_source), f"{rotated})")
    if rotated:
        return (": value changes (not shown; ", Value(change.value_source), f"{rotated})")
    return (": value changes (not shown)",)


def value_source_text(change: ObjectChange) -> str | None:
    """Where a new secret's value comes from, as a table cell says it."""
    if change.value_source is None:
        return None
    return change.value_source + (", rotated at apply" if _rotates(change.value_source) else "")


def _rotates(value_source: str) -> bool:
    try:
        return Source.parse(value_source).rotates
    except ValueError:
        return False


def object_lines(change: ObjectChange, project_file: str, *, drift: bool = False) -> list[Line]:
    """One object change: its title (without the kind), then one line per field. A
    policy shows the rules it adds and removes, each on one line, never two blobs. A
    drift report reads from what is live to what the file says. An update of a field
    its kind shows in its own words alone (a function's code) is one line:
    `check-in: code 3f2a9c01… → 9be41d7a…`."""
    mark, title = ACTION_MARKS.get(change.action, "="), title_parts(change, project_file)
    fields = field_lines(change, project_file, drift=drift)
    kind = BY_NAME.get(change.kind)
    alone = len(change.changes) == 1 and kind is not None
    if change.action == "update" and alone and change.changes[0].field in kind.shown:
        return [Line(0, mark, (*title, ": ", *fields[0].parts))]
    return [Line(0, mark, title), *fields]


def field_lines(change: ObjectChange, project_file: str, *, drift: bool = False) -> list[Line]:
    kind = BY_NAME.get(change.kind)
    creating = change.action == "create"
    lines = []
    for field_change in change.changes:
        name, before, after = field_change.field, field_change.before, field_change.after
        if name == "name":
            continue
        source = field_source_parts(field_change, change, project_file)
        if kind is not None and name in kind.shown:
            show = kind.shown[name]
            parts = (Value(name), " ", Value(show(before)), " → ", Value(show(after)), *source)
            lines.append(Line(1, "+" if creating else "~", parts))
        elif kind is not None and name in kind.policy_fields:
            old = set() if creating else set(policy_rules(before))
            new = set(policy_rules(after))
            live_only, file_only = (" (live only)", " (file only)") if drift else ("", "")
            for mark, rules, note in (("-", old - new, live_only), ("+", new - old, file_only)):
                lines += [
                    Line(1, mark, (Value(name), " rule ", Value(rule), note, *source))
                    for rule in sorted(rules)
                ]
            if not old ^ new:
                lines.append(
                    Line(1, "+" if creating else "~", (Value(name), ": no rules", *source))
                )
        elif creating:
            lines.append(Line(1, "+", (Value(name), ": ", *value_parts(after), *source)))
        else:
            lines.append(setting_line(field_change, project_file, drift=drift, depth=1))
    return lines


# Grouping and counting ------------------------------------------------------------------


def kind_label(kind_name: str) -> str:
    """How a kind is named in headings: its file key (`roles`, `m2mClients`)."""
    kind = BY_NAME.get(kind_name)
    return kind.key if kind is not None else kind_word(kind_name)


def kind_word(kind_name: str) -> str:
    """A kind's own name (`role`, `m2m`) as our words show it. A plan file's kinds are
    checked, but a name we do not know is still kept to letters and digits, so it can
    neither escape where it is written nor link or mention anything."""
    return re.sub(r"[^A-Za-z0-9]", "?", kind_name)[:40]


def by_kind(changes: Iterable[Any]) -> list[tuple[str, list[Any]]]:
    """Changes (or apply outcomes: anything with `.kind` and `.name`) grouped by kind,
    kinds in write order (unknown ones after, by name), each group by name."""
    order = {kind.name: index for index, kind in enumerate(KINDS)}
    groups: dict[str, list[Any]] = {}
    for change in changes:
        groups.setdefault(change.kind, []).append(change)
    return [
        (name, sorted(groups[name], key=lambda c: (c.name, c.action)))
        for name in sorted(groups, key=lambda n: (order.get(n, len(order)), n))
    ]


def tally(changes: Iterable[ObjectChange]) -> dict[str, int]:
    """Terraform's counts, and (apart) the values compared at apply."""
    counts = dict.fromkeys((*TALLY_WORDS, COMPARED), 0)
    for change in changes:
        if change.action in TALLY:
            counts[TALLY[change.action]] += 1
        elif change.action == COMPARED:
            counts[COMPARED] += 1
    return counts


def tally_phrase(counts: Mapping[str, int]) -> str:
    """`200 to add, 1 to destroy` (the words with a count), then `3 compared at apply`,
    or `no change`."""
    words = [f"{counts[word]} to {word}" for word in TALLY_WORDS if counts.get(word)]
    if counts.get(COMPARED):
        words.append(f"{counts[COMPARED]} compared at apply")
    return ", ".join(words) or "no change"


def ordered(projects: Sequence[ProjectPlan]) -> list[ProjectPlan]:
    """Projects by file (a stable sort: one file's Projects keep their order)."""
    return sorted(projects, key=lambda project: project.file)


def kind_for(kind_name: str) -> Kind | None:
    return BY_NAME.get(kind_name)


# Projects and plans ---------------------------------------------------------------------


def project_title(project: Any) -> Parts:
    """A Project (or an apply outcome) as `Name (id)`, or its id."""
    if project.name:
        return (Value(project.name), " (", Value(project.project_id), ")")
    return (Value(project.project_id),)


def leftover_lines(project: ProjectPlan) -> list[Parts]:
    """The live objects a plan leaves alone: not named without prune, or kept by prune."""
    lines = []
    if project.not_managed:
        named = _named(project.not_managed)
        lines.append(("not managed (left alone; prune deletes them): ", *named))
    if project.kept:
        named = _named(project.kept)
        lines.append(("kept: ", *named, " (the M2M client this run authenticates as)"))
    return lines


def _named(pairs: Sequence[tuple[str, str]]) -> Parts:
    parts: list[str] = []
    for index, (kind, name) in enumerate(pairs):
        parts += [", "] * bool(index) + [f"{kind} ", Value(name)]
    return tuple(parts)


def plan_counts(plan: Plan, *, drift: bool = False) -> str:
    """`N to change, N unchanged, N errors` (drift: `N drifted, N in sync, N errors`)."""
    summary = plan.summary
    changed, unchanged = ("drifted", "in sync") if drift else ("to change", "unchanged")
    return (
        f"{summary[CHANGED]} {changed}, {summary[UNCHANGED]} {unchanged}, "
        f"{plural(summary['errors'], 'error')}"
    )


def object_counts(plan: Plan, *, drift: bool = False) -> str:
    """Terraform's object counts (`N to add, N to change, N to destroy`) when the plan
    manages objects (a drift report: when any object drifted), else ""."""
    counts = plan.object_summary
    if not plan.manages_objects or (drift and not any(counts.values())):
        return ""
    text = f"{counts['add']} to add, {counts['change']} to change, {counts['destroy']} to destroy"
    if plan.compared and not drift:
        text += f", {plural(plan.compared, 'secret value')} compared at apply"
    return text
