"""The markdown renderers: a plan (or drift report) as a pull-request comment or an
issue body, validation problems as a comment, and apply's job summary.

A comment opens with the hidden marker (to find and update it), a heading with the
counts, and a table of counts per Project and kind. Then each Project has a heading
and one collapsible section per kind (its settings are one more): creates as a
table, one row per object with the fields its kind declares as its main ones
(`Kind.summary_fields`); updates with their field lines (policies as rules added and
removed); deletes always listed. When the whole would not fit a comment,
:func:`reconciler.render.fit.fit` summarises the largest sections first (names only,
then counts only), never a Project's counts, errors or deletes.

Every value (names, ids, paths, field values, errors) is in a code span
(:func:`reconciler.escape.markdown`), or in ``<code>`` inside HTML: GitHub never makes
a mention, a link or a reference of it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from reconciler.escape import markdown, plural, without_userinfo
from reconciler.kinds import Kind, policy_rules
from reconciler.objects import is_ref
from reconciler.plan import CHANGED, ERROR, UNCHANGED, Change, ObjectChange, Plan, ProjectPlan
from reconciler.render.fit import Section, fit
from reconciler.render.lines import (
    ACTION_MARKS,
    COMPARED,
    SETTINGS,
    TALLY_WORDS,
    Line,
    by_kind,
    field_source_parts,
    join,
    kind_for,
    kind_label,
    kind_word,
    leftover_lines,
    object_counts,
    object_lines,
    ordered,
    plan_counts,
    project_title,
    source_parts,
    tally,
    tally_phrase,
    title_parts,
    value_parts,
    value_source_text,
)
from reconciler.render.outcomes import (
    APPLIED,
    BLOCKED,
    FAILED,
    SKIPPED,
    UNKNOWN,
    ObjectOutcome,
    Outcome,
    apply_counts,
    result_word,
)

PLAN_MARKER = "<!-- reconciler-plan -->"
DRIFT_MARKER = "<!-- reconciler-drift -->"
APPLY_MARKER = "<!-- reconciler-apply -->"
# GitHub refuses a comment over 65,536 characters; the margin leaves room for a line a
# workflow appends (the plan failed) and for the comment's own footer.
MARKDOWN_LIMIT = 65_000
# A job summary takes up to 1 MiB (bytes: a value may take several per character):
# there the plan is shown whole, or all but whole.
STEP_SUMMARY_LIMIT = 500_000
# An error message is text about values, longer than one value may be; it is still capped
# so that one Project's error cannot push the others out of a comment.
MD_ERROR_LIMIT = 1_000

SUMMARISED = "**Summarised to fit one comment:** the largest sections list names only."
APPLY_SUMMARISED = (
    "**Summarised to fit:** the largest sections are counted only; the run log lists every object."
)
FULL_PLAN = "The full plan is in this workflow run's summary and in its plan artifact."
FULL_DRIFT = "The full report is in this workflow run's summary."

_ICONS = {CHANGED: "🟡", UNCHANGED: "⚪", ERROR: "🔴"}
_MARKS = {"+": "➕", "~": "✏️", "-": "➖", "=": "⚪"}
_OUTCOME_ICONS = {
    APPLIED: "🟢",
    FAILED: "🔴",
    UNKNOWN: "🟠",
    SKIPPED: "⚪",
    BLOCKED: "⛔",
    UNCHANGED: "⚪",
}
VALUE_SOURCE = "valueSource"  # a secret's pseudo-field in a table of new secrets


def _md(value: str) -> str:
    """A value outside a table."""
    return markdown(value, table=False)


def _title(project: Any, escape: Callable[[str], str] = markdown) -> str:
    return join(project_title(project), escape)


# Plan and drift -------------------------------------------------------------------------


def render_markdown(
    plan: Plan, fh: TextIO, *, drift: bool = False, limit: int = MARKDOWN_LIMIT
) -> None:
    """A PR comment (or drift issue body): marker, counts, a section per Project and kind."""
    heading = f"### reconciler {'drift' if drift else 'plan'}: {plan_counts(plan, drift=drift)}"
    objects = object_counts(plan, drift=drift)
    if objects:
        heading += f"; objects: {objects}"
    head = [DRIFT_MARKER if drift else PLAN_MARKER, heading, ""]
    if drift:
        head += ["Values read **live → file**: what the Project has now, what its file says.", ""]
    # A Project with secret values to compare is shown (apply compares them), not drift.
    shown = [
        p for p in ordered(plan.projects) if p.status != UNCHANGED or (p.objects and not drift)
    ]
    # Errors first: they need a reviewer's eye before anything else.
    shown.sort(key=lambda p: p.status != ERROR)
    rows = [row for project in shown for row in _count_rows(project)]
    if rows:
        head += [
            "| Project | File | Kind | Add | Change | Destroy |",
            "| --- | --- | --- | ---: | ---: | ---: |",
        ]
    sections = [section for project in shown for section in _project_sections(project, drift)]
    unchanged = [p for p in ordered(plan.projects) if p.status == UNCHANGED and p not in shown]
    if unchanged:
        sections.append(_unchanged_section(unchanged, drift))
    footer = [
        f"<sub>{_md(plan.tool)} · {_md(without_userinfo(plan.api_url))} · "
        f"{_md(plan.created_at)}</sub>"
    ]
    full = FULL_DRIFT if drift else FULL_PLAN
    fh.write(fit(head, rows, sections, footer, limit, summarised=SUMMARISED, full=full))


def _count_rows(project: ProjectPlan) -> list[str]:
    """The counts table's rows for one Project: its settings, then each kind. The
    Project by name (its id is in its heading below; its file tells two apart)."""
    first = [f"{_ICONS[project.status]} {markdown(project.name or project.project_id)}"]
    first.append(markdown(project.file))
    if project.status == ERROR:
        return [_row([*first, "**error**", "", "", ""])]
    kinds = [(SETTINGS, {"change": len(project.changes)})] if project.changes else []
    kinds += [(kind_label(name), tally(changes)) for name, changes in by_kind(project.objects)]
    return [
        _row(
            [
                *(first if index == 0 else ["", ""]),
                label,
                *(str(counts.get(word) or "") for word in TALLY_WORDS),
            ]
        )
        for index, (label, counts) in enumerate(kinds)
    ]


def _project_sections(project: ProjectPlan, drift: bool) -> list[Section]:
    heading = f"#### {_ICONS[project.status]} {_title(project, _md)} · {_md(project.file)}\n"
    if project.status == ERROR:
        error = markdown(project.error or "", MD_ERROR_LIMIT, table=False)
        return [Section([f"{heading}\n{error}\n"])]
    sections = [Section([heading])]
    if project.changes:
        sections.append(_settings_section(project))
    for kind_name, changes in by_kind(project.objects):
        sections.append(_kind_section(kind_name, changes, project.file, drift))
    if leftover_lines(project):
        sections.append(_leftovers_section(project))
    return sections


def _details(summary: str, body: Sequence[str]) -> str:
    """A collapsible section. `summary` is raw HTML (GitHub parses no markdown there), so
    it holds only our own words and counts; values go in `body`, which is markdown."""
    body = list(body)
    while body and not body[-1]:
        body.pop()
    return "\n".join([f"<details><summary>{summary}</summary>", "", *body, "", "</details>", ""])


def _settings_section(project: ProjectPlan) -> Section:
    """The Project's settings: a `Field | Live | File` table, or the fields' names."""
    summary = f"{SETTINGS}: {plural(len(project.changes), 'change')}"
    rows = [_row(["Field", "Live", "File"]), _row(["---"] * 3)]
    rows += [
        _row(
            [
                markdown(change.field) + join(source_parts(change, project.file), markdown),
                join(value_parts(change.before), markdown),
                join(value_parts(change.after), markdown),
            ]
        )
        for change in project.changes
    ]
    names = ", ".join(_md(change.field) for change in project.changes)
    return Section([_details(summary, rows), _details(summary, [f"Fields: {names}"])])


def _kind_section(
    kind_name: str, changes: Sequence[ObjectChange], project_file: str, drift: bool
) -> Section:
    """One kind of one Project: full, names only, counted only; deletes in all three."""
    summary = f"{kind_label(kind_name)}: {tally_phrase(tally(changes))}"
    creates = [c for c in changes if c.action == "create"]
    updates = [c for c in changes if c.action not in ("create", "delete")]
    deletes = [
        f"- {_MARKS['-']} {join(title_parts(c, project_file), _md)}"
        for c in changes
        if c.action == "delete"
    ]
    if not creates and not updates:
        return Section([_details(summary, deletes)])
    full: list[str] = []
    names: list[str] = []
    if creates:
        full += [*_create_table(kind_for(kind_name), creates, project_file), ""]
        names += [f"**To add ({len(creates)}):** {_names(creates, project_file)}", ""]
    full += [_md_line(line) for c in updates for line in object_lines(c, project_file, drift=drift)]
    changed = [c for c in updates if c.action != COMPARED]
    if changed:
        names += [f"**To change ({len(changed)}):** {_names(changed, project_file)}", ""]
    if len(changed) < len(updates):
        compared = [c for c in updates if c.action == COMPARED]
        names += [f"**Compared at apply ({len(compared)}):** {_names(compared, project_file)}", ""]
    hidden = plural(len(creates) + len(updates), "more object")
    counted = [f"{hidden} to add or change: listed in the full plan.", ""]
    return Section(
        [
            _details(summary, full + deletes),
            _details(f"{summary} (names only)", names + deletes),
            _details(f"{summary} (counted only)", counted + deletes),
        ]
    )


def _md_line(line: Line) -> str:
    return "  " * line.depth + f"- {_MARKS[line.mark]} {join(line.parts, _md)}"


def _names(changes: Sequence[ObjectChange], project_file: str) -> str:
    return ", ".join(join(title_parts(change, project_file), _md) for change in changes)


def _create_table(
    kind: Kind | None, creates: Sequence[ObjectChange], project_file: str
) -> list[str]:
    """One row per object: its name, the kind's main fields, then any other field it
    sets; a field written in another file than its object says where."""
    main = kind.summary_fields if kind is not None else ()
    fields = [_row_fields(change) for change in creates]
    others = any(set(given) - set(main) for given in fields)
    header = ["Name", *main] + (["Other fields"] if others else [])
    rows = [_row(header), _row(["---"] * len(header))]
    for change, given in zip(creates, fields, strict=True):
        # A secret's source has its own column.
        cells = [join(title_parts(change, project_file, value=False), markdown)]
        cells += [
            _field_cell(kind, change, given[name], project_file) if name in given else ""
            for name in main
        ]
        if others:
            cells.append(
                "<br>".join(
                    f"{markdown(name)}: {_field_cell(kind, change, field, project_file)}"
                    for name, field in given.items()
                    if name not in main
                )
            )
        rows.append(_row(cells))
    return rows


def _row_fields(change: ObjectChange) -> dict[str, Change]:
    """A new object's fields for its row; a secret's `valueSource` (never its value)."""
    given = {c.field: c for c in change.changes if c.field != "name"}
    source = value_source_text(change)
    if source is not None:
        given[VALUE_SOURCE] = Change(VALUE_SOURCE, None, source, change.source)
    return given


def _field_cell(kind: Kind | None, change: ObjectChange, field: Change, project_file: str) -> str:
    """A new object's field in its table row, saying where it is written when that is
    not where the object is."""
    source = field_source_parts(field, change, project_file)
    return _cell(kind, field.field, field.after) + join(source, markdown)


def _row(cells: Sequence[str]) -> str:
    """A table row; an empty cell is one space."""
    return "|" + "|".join(f" {cell} " if cell else " " for cell in cells) + "|"


def _cell(kind: Kind | None, name: str, value: Any) -> str:
    """One field's value in a table cell: rules one per line, roles by name, lists one
    item per line, strings as they are, anything else as JSON."""
    if kind is not None and name in kind.shown:
        return markdown(kind.shown[name](value))
    if kind is not None and name in kind.policy_fields:
        return "<br>".join(markdown(rule) for rule in sorted(policy_rules(value))) or "*no rules*"
    if kind is not None and name in kind.role_fields and isinstance(value, list):
        return ", ".join(map(_role, value))
    if kind is not None and name in kind.role_fields and isinstance(value, dict):
        return _role(value)
    if isinstance(value, list) and value:
        return "<br>".join(_cell(kind, name, item) for item in value)
    if isinstance(value, str):
        return markdown(value)
    return markdown(json.dumps(value, ensure_ascii=False))


def _role(role: Any) -> str:
    """A role by name (`(new)` when this plan creates it), else by id."""
    if not isinstance(role, dict):
        return markdown(str(role))
    new = " (new)" if is_ref(role.get("id")) else ""
    return markdown(str(role.get("name") or role.get("id"))) + new


def _leftovers_section(project: ProjectPlan) -> Section:
    not_managed, kept = len(project.not_managed), len(project.kept)
    summary = f"left alone: {not_managed} not managed" + (f", {kept} kept" if kept else "")
    lines = [f"- {_MARKS['=']} {join(parts, _md)}" for parts in leftover_lines(project)]
    return Section([_details(summary, lines), _details(summary, ["Listed in the full plan."])])


def _unchanged_section(unchanged: Sequence[ProjectPlan], drift: bool) -> Section:
    summary = f"{_ICONS[UNCHANGED]} {len(unchanged)} {'in sync' if drift else 'unchanged'}"
    listed = [f"- {_title(p, _md)} — {_md(p.file)}" for p in unchanged]
    return Section([_details(summary, listed), _details(summary, ["Listed in the full plan."])])


# Validation problems --------------------------------------------------------------------


def render_problems_markdown(
    problems: Sequence[Any], fh: TextIO, *, limit: int = MARKDOWN_LIMIT
) -> None:
    """Validation problems as a plan comment, so a pull request with a typo hears where.

    `problems` are the loader's (`.file`, `.line`, `.column`, `.message`)."""
    head = [
        PLAN_MARKER,
        f"### reconciler plan: {plural(len(problems), 'problem')} in the project files",
        "",
        "Nothing was read or written. Fix these and push again:",
        "",
        "| File | Line | Column | Problem |",
        "| --- | --- | --- | --- |",
    ]
    rows = [
        f"| {markdown(p.file)} | {p.line} | {p.column} | {markdown(p.message, MD_ERROR_LIMIT)} |"
        for p in problems
    ]
    fh.write(fit(head, rows, [], [], limit))


# Apply ----------------------------------------------------------------------------------


def render_apply_markdown(
    outcomes: Sequence[Outcome], fh: TextIO, *, limit: int = MARKDOWN_LIMIT
) -> None:
    """Apply's job summary: one row per Project touched, with its objects counted per
    kind; then, per Project with objects, its error and failed objects (always shown)
    and a section per kind saying what was done to each object."""
    head = [APPLY_MARKER, f"### reconciler apply: {apply_counts(outcomes)}", ""]
    shown = [o for o in outcomes if o.status != UNCHANGED]
    rows = [
        _row(
            [
                f"{_OUTCOME_ICONS[o.status]} {_title(o)}",
                markdown(o.file),
                o.status,
                "<br>".join(
                    f"{kind_label(kind_name)}: {_results_phrase(results)}"
                    for kind_name, results in by_kind(o.objects)
                ),
            ]
        )
        for o in shown
    ]
    if rows:
        head += ["| Project | File | Result | Objects |", "| --- | --- | --- | --- |"]
    sections = [s for o in shown if o.objects or o.error for s in _outcome_sections(o)]
    fh.write(fit(head, rows, sections, [], limit, summarised=APPLY_SUMMARISED))


def _results_phrase(results: Sequence[ObjectOutcome]) -> str:
    """`200 created, 1 failed, 3 skipped`."""
    counts: dict[str, int] = {}
    for result in results:
        word = result_word(result)
        counts[word] = counts.get(word, 0) + 1
    return ", ".join(f"{count} {word}" for word, count in counts.items())


def _outcome_sections(outcome: Outcome) -> list[Section]:
    """The Project's heading with its error and failed objects (never summarised), then
    what was done per kind."""
    icon = _OUTCOME_ICONS[outcome.status]
    lines = [f"#### {icon} {_title(outcome, _md)} · {_md(outcome.file)} — {outcome.status}"]
    if outcome.error:
        lines += ["", markdown(outcome.error, MD_ERROR_LIMIT, table=False)]
    failed = [r for r in outcome.objects if r.status in (FAILED, UNKNOWN, BLOCKED)]
    if failed:
        lines.append("")
    lines += [
        f"- {_OUTCOME_ICONS[r.status]} {kind_word(r.kind)} {_md(r.name)}: {r.status}"
        + (f": {markdown(r.error, MD_ERROR_LIMIT, table=False)}" if r.error else "")
        for r in by_kind_flat(failed)
    ]
    sections = [Section(["\n".join(lines) + "\n"])]
    for kind_name, results in by_kind(outcome.objects):
        summary = f"{kind_label(kind_name)}: {_results_phrase(results)}"
        listed = [
            f"- {_MARKS[ACTION_MARKS.get(r.action, '=') if r.status == APPLIED else '=']} "
            f"{_md(r.name)}: {result_word(r)}" + (f" ({_md(r.detail)})" if r.detail else "")
            for r in results
        ]
        sections.append(
            Section([_details(summary, listed), _details(summary, ["Listed in the run log."])])
        )
    return sections


def by_kind_flat(items: Sequence[Any]) -> list[Any]:
    return [item for _, group in by_kind(items) for item in group]
