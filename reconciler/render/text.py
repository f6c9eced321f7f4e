"""The text renderers: Terraform-like blocks for a terminal or a CI log.

Every value is escaped (:func:`reconciler.escape.term`): it may come from a file, a
plan file or the API, and must not reach a terminal or a log raw. A Project's
objects are grouped by kind, each kind under a `# roles: 200 to add` line, so a
plan of hundreds of objects still reads from the top.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TextIO

from reconciler.escape import term
from reconciler.plan import CHANGED, ERROR, UNCHANGED, Plan, ProjectPlan
from reconciler.render.lines import (
    ACTION_MARKS,
    Line,
    by_kind,
    join,
    kind_label,
    kind_word,
    leftover_lines,
    object_counts,
    object_lines,
    ordered,
    plan_counts,
    project_title,
    setting_line,
    tally,
    tally_phrase,
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

_COLOURS = {"~": "33", "!": "31", "+": "32", "-": "31", "?": "31", "=": "2", "bold": "1"}
_INDENT = "    "


def _paint(text: str, style: str, colour: bool) -> str:
    return f"\x1b[{_COLOURS[style]}m{text}\x1b[0m" if colour else text


def _line(line: Line, indent: int, colour: bool, prefix: str = "") -> str:
    text = _INDENT * (line.depth + indent) + f"{line.mark} {prefix}{join(line.parts, term)}"
    return _paint(text, line.mark, colour) + "\n"


def render_text(
    plan: Plan, fh: TextIO, *, colour: bool = False, drift: bool = False, verbose: bool = False
) -> None:
    """Terraform-like: one block per changed or failed Project, then the summary line."""
    for project in ordered(plan.projects):
        if project.status == CHANGED:
            _changed_block(project, fh, colour, drift)
        elif project.status == ERROR:
            fh.write(_header("!", project, colour))
            fh.write(_paint(f"{_INDENT}error: {term(project.error)}", "!", colour) + "\n\n")
        elif verbose or leftover_lines(project) or (project.objects and not drift):
            line = f"= {join(project_title(project), term)}  {term(project.file)}: unchanged"
            fh.write(_paint(line, "=", colour) + "\n")
            if not drift:  # secret values compared at apply
                _objects(project, fh, colour, drift)
            _leftovers(project, fh, colour)
    line = f"{'Drift' if drift else 'Plan'}: {plan_counts(plan, drift=drift)}."
    objects = object_counts(plan, drift=drift)
    if objects:
        line += f" Objects: {objects}."
    fh.write(_paint(line, "bold", colour) + "\n")


def _header(mark: str, project: ProjectPlan, colour: bool) -> str:
    title = f"{mark} {join(project_title(project), term)}"
    return _paint(title, mark, colour) + f"  {term(project.file)}\n"


def _changed_block(project: ProjectPlan, fh: TextIO, colour: bool, drift: bool) -> None:
    fh.write(_header("~", project, colour))
    for change in project.changes:
        fh.write(_line(setting_line(change, project.file, drift=drift), 1, colour))
    _objects(project, fh, colour, drift)
    _leftovers(project, fh, colour)
    fh.write("\n")


def _objects(project: ProjectPlan, fh: TextIO, colour: bool, drift: bool) -> None:
    for kind_name, changes in by_kind(project.objects):
        # Where one kind ends and the next begins, in a plan of hundreds of objects.
        heading = f"{_INDENT}# {kind_label(kind_name)}: {tally_phrase(tally(changes))}"
        fh.write(_paint(heading, "=", colour) + "\n")
        for change in changes:
            for index, line in enumerate(object_lines(change, project.file, drift=drift)):
                fh.write(_line(line, 1, colour, "" if index else f"{kind_word(change.kind)} "))


def _leftovers(project: ProjectPlan, fh: TextIO, colour: bool) -> None:
    for parts in leftover_lines(project):
        fh.write(_paint(f"{_INDENT}= {join(parts, term)}", "=", colour) + "\n")


# Apply ------------------------------------------------------------------------------------

_MARKS = {
    APPLIED: ("+", "+"),
    FAILED: ("!", "!"),
    UNKNOWN: ("?", "!"),
    SKIPPED: ("=", "="),  # nothing was written (never "-": that is a delete)
    BLOCKED: ("!", "!"),
    UNCHANGED: ("=", "="),
}


def render_apply_text(outcomes: Sequence[Outcome], fh: TextIO, *, colour: bool = False) -> None:
    """One line per Project that apply touched, one per object under it, then the
    summary line. Objects are in kind order, then by name."""
    for outcome in outcomes:
        if outcome.status == UNCHANGED:
            continue
        mark, style = _MARKS[outcome.status]
        line = (
            f"{mark} {join(project_title(outcome), term)}  {term(outcome.file)}: {outcome.status}"
        )
        if outcome.error:
            line += f": {term(outcome.error)}"
        fh.write(_paint(line, style, colour) + "\n")
        for _, results in by_kind(outcome.objects):
            for result in results:
                mark, style = _MARKS[result.status]
                if result.status == APPLIED:
                    mark = style = ACTION_MARKS.get(result.action, "+")
                line = f"{_INDENT}{mark} {kind_word(result.kind)} {term(result.name)}: "
                fh.write(_paint(line + object_result(result), style, colour) + "\n")
    fh.write(_paint(f"Apply: {apply_counts(outcomes)}.", "bold", colour) + "\n")


def object_result(result: ObjectOutcome) -> str:
    """`created`, or `failed: why` (escaped for a terminal)."""
    if result.status == APPLIED:
        return result_word(result) + (f" ({term(result.detail)})" if result.detail else "")
    return result.status + (f": {term(result.error)}" if result.error else "")
