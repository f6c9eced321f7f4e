"""Renderers: a Plan (or an apply result) in, text written to a file handle. Nothing else.

- text: Terraform-like blocks for a terminal, colour optional.
- markdown: a pull-request comment (or issue body), capped at 65,000 characters.
- json: the plan file of SPEC section 4.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TextIO

from reconciler.escape import markdown, md_escape, plural, term, without_userinfo  # noqa: F401 (md_escape: re-exported)
from reconciler.kinds import BY_NAME, policy_rules
from reconciler.objects import is_ref
from reconciler.plan import CHANGED, ERROR, UNCHANGED, ObjectChange, Plan, ProjectPlan

PLAN_MARKER = "<!-- reconciler-plan -->"
DRIFT_MARKER = "<!-- reconciler-drift -->"
APPLY_MARKER = "<!-- reconciler-apply -->"
MARKDOWN_LIMIT = 65_000

APPLIED, FAILED, SKIPPED = "applied", "failed", "skipped"
# A PATCH was in flight when the run was interrupted: it may or may not have been applied.
UNKNOWN = "unknown"

_ICONS = {CHANGED: "🟡", UNCHANGED: "⚪", ERROR: "🔴"}
_COLOURS = {"~": "33", "!": "31", "+": "32", "-": "31", "?": "31", "=": "2", "bold": "1"}


@dataclass(frozen=True)
class ObjectOutcome:
    """What apply did to one object of a Project."""

    kind: str  # role | application | m2m
    name: str
    action: str
    status: str  # applied | failed | skipped
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Outcome:
    """What apply did to one Project."""

    file: str
    project_id: str
    status: str  # applied | unchanged | failed | unknown | skipped
    error: str | None = None
    name: str | None = None
    objects: tuple[ObjectOutcome, ...] = ()

    def to_dict(self) -> dict:
        return {
            "file": self.file,
            "projectId": self.project_id,
            "name": self.name,
            "status": self.status,
            "error": self.error,
            "objects": [outcome.to_dict() for outcome in self.objects],
        }


def apply_summary(outcomes: Sequence[Outcome]) -> dict[str, int]:
    counts = {APPLIED: 0, UNCHANGED: 0, FAILED: 0, UNKNOWN: 0, SKIPPED: 0}
    for outcome in outcomes:
        counts[outcome.status] += 1
    return counts


# Values ---------------------------------------------------------------------------


def format_value(value: Any) -> str:
    """A value as a person reads it: roles as `Name (id)` (or `Name (created by this plan)`),
    role lists as `[Name (id), …]`, strings quoted, null as null."""
    if isinstance(value, Mapping) and "id" in value:
        if is_ref(value["id"]):
            return f"{value.get('name')} (created by this plan)"
        return f"{value.get('name')} ({value['id']})" if value.get("name") else str(value["id"])
    if (
        isinstance(value, list)
        and value
        and all(isinstance(item, Mapping) and "id" in item for item in value)
    ):
        return "[" + ", ".join(format_value(item) for item in value) + "]"
    return json.dumps(value, ensure_ascii=False)


_ACTION_MARKS = {"create": "+", "update": "~", "rename": "~", "delete": "-"}


def object_lines(change: ObjectChange, *, drift: bool = False) -> list[tuple[int, str, str]]:
    """One object change as lines a person reads: (depth, mark, text). A policy shows the
    rules it adds and removes, each on one line, never two blobs. A drift report reads
    from what is live to what the file says."""
    mark = _ACTION_MARKS[change.action]
    title = f"{change.kind} {change.name}"
    if change.renamed_from is not None:
        title += f" (renamed from {change.renamed_from})"
    lines = [(0, mark, title)]
    kind = BY_NAME.get(change.kind)
    for field_change in change.changes:
        name, before, after = field_change.field, field_change.before, field_change.after
        if name == "name":
            continue
        if kind is not None and name in kind.policy_fields:
            old = set() if change.action == "create" else set(policy_rules(before))
            new = set(policy_rules(after))
            live_only, file_only = (" (live only)", " (file only)") if drift else ("", "")
            lines += [(1, "-", f"{name} rule {rule}{live_only}") for rule in sorted(old - new)]
            lines += [(1, "+", f"{name} rule {rule}{file_only}") for rule in sorted(new - old)]
            if not old ^ new:
                lines.append((1, "+" if change.action == "create" else "~", f"{name}: no rules"))
        elif change.action == "create":
            lines.append((1, "+", f"{name}: {format_value(after)}"))
        elif drift:
            lines.append(
                (1, "~", f"{name}: live {format_value(before)} → file {format_value(after)}")
            )
        else:
            lines.append((1, "~", f"{name}: {format_value(before)} -> {format_value(after)}"))
    return lines


def _leftovers(project: ProjectPlan) -> list[str]:
    """The live objects a plan leaves alone: not named without prune, or kept by prune."""
    lines = []
    if project.not_managed:
        named = ", ".join(f"{kind} {name}" for kind, name in project.not_managed)
        lines.append(f"not managed (left alone; prune deletes them): {named}")
    if project.kept:
        named = ", ".join(f"{kind} {name}" for kind, name in project.kept)
        lines.append(f"kept: {named} (the M2M client this run authenticates as)")
    return lines


def _object_counts(plan: Plan, *, drift: bool = False) -> str:
    """Terraform's object counts (`N to add, N to change, N to destroy`) when the plan
    manages objects (a drift report: when any object drifted), else ""."""
    counts = plan.object_summary
    if not plan.manages_objects or (drift and not any(counts.values())):
        return ""
    return f"{counts['add']} to add, {counts['change']} to change, {counts['destroy']} to destroy"


def _paint(text: str, style: str, colour: bool) -> str:
    return f"\x1b[{_COLOURS[style]}m{text}\x1b[0m" if colour else text


def _title(project: ProjectPlan | Outcome) -> str:
    """The Project as the raw text a person reads; escape it for where it goes."""
    return f"{project.name} ({project.project_id})" if project.name else project.project_id


# Every value in text output is escaped (escape.term): it may come from a file, a plan
# file or the API, and must not reach a terminal or CI log raw.


# Text -----------------------------------------------------------------------------


def render_text(
    plan: Plan, fh: TextIO, *, colour: bool = False, drift: bool = False, verbose: bool = False
) -> None:
    """Terraform-like: one block per changed or failed Project, then the summary line."""
    for project in plan.projects:
        if project.status == CHANGED:
            fh.write(
                _paint(f"~ {term(_title(project))}", "~", colour) + f"  {term(project.file)}\n"
            )
            for change in project.changes:
                before = term(format_value(change.before))
                after = term(format_value(change.after))
                if drift:
                    # A drift report reads from what is live to what the file says.
                    line = f"    ~ {change.field}: live {before} → file {after}"
                else:
                    line = f"    ~ {change.field}: {before} -> {after}"
                fh.write(_paint(line, "~", colour) + "\n")
            for change in project.objects:
                for depth, mark, text in object_lines(change, drift=drift):
                    line = "    " * (depth + 1) + f"{mark} {term(text)}"
                    fh.write(_paint(line, mark, colour) + "\n")
            for text in _leftovers(project):
                fh.write(_paint(f"    = {term(text)}", "=", colour) + "\n")
            fh.write("\n")
        elif project.status == ERROR:
            fh.write(
                _paint(f"! {term(_title(project))}", "!", colour) + f"  {term(project.file)}\n"
            )
            fh.write(_paint(f"    error: {term(project.error)}", "!", colour) + "\n\n")
        elif verbose or _leftovers(project):
            line = f"= {term(_title(project))}  {term(project.file)}: unchanged"
            fh.write(_paint(line, "=", colour) + "\n")
            for text in _leftovers(project):
                fh.write(_paint(f"    = {term(text)}", "=", colour) + "\n")
    line = f"{'Drift' if drift else 'Plan'}: {_counts(plan, drift=drift)}."
    objects = _object_counts(plan, drift=drift)
    if objects:
        line += f" Objects: {objects}."
    fh.write(_paint(line, "bold", colour) + "\n")


def _counts(plan: Plan, *, drift: bool = False) -> str:
    """`N to change, N unchanged, N errors` (drift: `N drifted, N in sync, N errors`)."""
    summary = plan.summary
    changed, unchanged = ("drifted", "in sync") if drift else ("to change", "unchanged")
    return (
        f"{summary[CHANGED]} {changed}, {summary[UNCHANGED]} {unchanged}, "
        f"{plural(summary['errors'], 'error')}"
    )


def render_apply_text(outcomes: Sequence[Outcome], fh: TextIO, *, colour: bool = False) -> None:
    marks = {
        APPLIED: ("+", "+"),
        FAILED: ("!", "!"),
        UNKNOWN: ("?", "!"),
        SKIPPED: ("-", "="),
        UNCHANGED: ("=", "="),
    }
    for outcome in outcomes:
        if outcome.status == UNCHANGED:
            continue
        mark, style = marks[outcome.status]
        line = f"{mark} {term(_title(outcome))}  {term(outcome.file)}: {outcome.status}"
        if outcome.error:
            line += f": {term(outcome.error)}"
        fh.write(_paint(line, style, colour) + "\n")
        for result in outcome.objects:
            mark, style = marks[result.status]
            if result.status == APPLIED:
                mark = style = _ACTION_MARKS[result.action]
            line = f"    {mark} {term(result.kind)} {term(result.name)}: {_object_result(result)}"
            fh.write(_paint(line, style, colour) + "\n")
    fh.write(_paint(f"Apply: {_apply_counts(outcomes)}.", "bold", colour) + "\n")


_DONE = {"create": "created", "update": "updated", "rename": "renamed", "delete": "deleted"}


def _object_result(result: ObjectOutcome) -> str:
    if result.status == APPLIED:
        return _DONE[result.action]
    return result.status + (f": {term(result.error)}" if result.error else "")


def _object_tally(outcome: Outcome) -> str:
    """`3 created, 1 deleted`: what apply did to a Project's objects."""
    counts: dict[str, int] = {}
    for result in outcome.objects:
        if result.status == APPLIED:
            counts[_DONE[result.action]] = counts.get(_DONE[result.action], 0) + 1
    return ", ".join(f"{n} {word}" for word, n in counts.items())


def _apply_counts(outcomes: Sequence[Outcome]) -> str:
    """`N applied, N unchanged, N failed`, then unknown and skipped when there are any."""
    counts = apply_summary(outcomes)
    text = f"{counts[APPLIED]} applied, {counts[UNCHANGED]} unchanged, {counts[FAILED]} failed"
    for status in (UNKNOWN, SKIPPED):
        if counts[status]:
            text += f", {counts[status]} {status}"
    return text


# JSON -----------------------------------------------------------------------------


def render_json(plan: Plan, fh: TextIO) -> None:
    # ASCII only: JSON escapes C0 controls itself, but a C1 control (a terminal's 8-bit
    # CSI) or a bidi override would otherwise reach a terminal or CI log raw.
    json.dump(plan.to_dict(), fh, indent=2, ensure_ascii=True)
    fh.write("\n")


def render_apply_json(outcomes: Sequence[Outcome], fh: TextIO) -> None:
    doc = {
        "summary": apply_summary(outcomes),
        "projects": [outcome.to_dict() for outcome in outcomes],
    }
    json.dump(doc, fh, indent=2, ensure_ascii=True)
    fh.write("\n")


# Markdown -------------------------------------------------------------------------


def _md_title(project: ProjectPlan | Outcome) -> str:
    """The name shortened on its own, so the id always shows."""
    project_id = markdown(project.project_id)
    return f"{markdown(project.name)} ({project_id})" if project.name else project_id


def _md_value(value: Any) -> str:
    return markdown(format_value(value))


# An error message is text about values, longer than one value may be; it is still capped
# so that one Project's error cannot push the others out of a comment.
MD_ERROR_LIMIT = 1_000


def render_markdown(
    plan: Plan, fh: TextIO, *, drift: bool = False, limit: int = MARKDOWN_LIMIT
) -> None:
    """A PR comment (or drift issue body): marker, summary table, a <details> per change."""
    marker = DRIFT_MARKER if drift else PLAN_MARKER
    heading = f"### reconciler {'drift' if drift else 'plan'}: {_counts(plan, drift=drift)}"
    objects = _object_counts(plan, drift=drift)
    if objects:
        heading += f"; objects: {objects}"
    status_text = {
        CHANGED: "drifted" if drift else "to change",
        UNCHANGED: "in sync" if drift else "unchanged",
        ERROR: "error",
    }
    head = [marker, heading, ""]
    if drift:
        head.insert(2, "Values read **live → file**: what the Project has now, what its file says.")
    # The table lists what needs a reviewer's eye; unchanged Projects only get counted
    # there (a fleet of hundreds would bury the changes) and are listed folded below.
    attention = sorted((p for p in plan.projects if p.status != UNCHANGED), key=_attention_first)
    rows = [
        f"| {_md_title(p)} | {markdown(p.file)} | "
        f"{_ICONS[p.status]} {status_text[p.status]}"
        + (f" ({len(p.changes) + len(p.objects)})" if p.status == CHANGED else "")
        + " |"
        for p in attention
    ]
    if rows:
        head += ["| Project | File | Status |", "| --- | --- | --- |"]
    blocks = [_md_block(p, drift) for p in plan.projects if p.status in (CHANGED, ERROR)]
    unchanged = [p for p in plan.projects if p.status == UNCHANGED]
    if unchanged:
        listed = "\n".join(f"- {_md_title(p)} — {markdown(p.file)}" for p in unchanged)
        blocks.append(
            f"<details><summary>{_ICONS[UNCHANGED]} {len(unchanged)} "
            f"{status_text[UNCHANGED]}</summary>\n\n{listed}\n\n</details>\n"
        )
    footer = [
        f"<sub>{markdown(plan.tool)} · {markdown(without_userinfo(plan.api_url))} · "
        f"{markdown(plan.created_at)}</sub>"
    ]
    fh.write(_fit(head, rows, blocks, footer, limit))


def _attention_first(project: ProjectPlan) -> int:
    return {ERROR: 0, CHANGED: 1, UNCHANGED: 2}[project.status]


def _md_block(project: ProjectPlan, drift: bool = False) -> str:
    if project.status == ERROR:
        return (
            f"<details open><summary>🔴 {_md_title(project)} — error</summary>\n\n"
            f"{markdown(project.file)}: {markdown(project.error or '', MD_ERROR_LIMIT)}\n\n"
            "</details>\n"
        )
    count = len(project.changes) + len(project.objects)
    lines = [
        f"<details><summary>🟡 {_md_title(project)} — "
        f"{count} change{'s' if count != 1 else ''} "
        f"({markdown(project.file)})</summary>",
        "",
    ]
    if project.changes:
        lines += ["| Field | Live | File |", "| --- | --- | --- |"]
        lines += [
            f"| {markdown(change.field)} | {_md_value(change.before)} | {_md_value(change.after)} |"
            for change in project.changes
        ]
        lines.append("")
    for change in project.objects:
        for depth, mark, text in object_lines(change, drift=drift):
            lines.append("  " * depth + f"- {_MD_MARKS[mark]} {markdown(text)}")
    for text in _leftovers(project):
        lines.append(f"- {_MD_MARKS['=']} {markdown(text)}")
    lines += ["", "</details>", ""]
    return "\n".join(lines)


_MD_MARKS = {"+": "➕", "~": "✏️", "-": "➖", "=": "⚪"}


def _fit(head: list[str], rows: list[str], blocks: list[str], footer: list[str], limit: int) -> str:
    """Join the parts, dropping table rows and detail blocks from the end (with a visible
    notice) until the whole fits in `limit` characters. The marker always stays."""

    def join(rows_kept: int, blocks_kept: int) -> str:
        parts = head + rows[:rows_kept]
        omitted_rows, omitted_blocks = len(rows) - rows_kept, len(blocks) - blocks_kept
        if omitted_rows or omitted_blocks:
            parts.append("")
            parts.append(
                f"> **Truncated** to fit a comment: {plural(omitted_rows, 'more table row')} "
                f"and {omitted_blocks} more {_possessive(omitted_blocks)} details are not "
                "shown. "
                "The full plan is in the JSON plan artifact."
            )
        parts.append("")
        parts += blocks[:blocks_kept]
        parts += ["", *footer]
        return "\n".join(parts) + "\n"

    text = join(len(rows), len(blocks))
    if len(text) <= limit:
        return text
    rows_kept, blocks_kept = len(rows), len(blocks)
    # Details go first (the table says which Projects change), then rows.
    while blocks_kept and len(join(rows_kept, blocks_kept)) > limit:
        blocks_kept = max(0, blocks_kept - max(1, (blocks_kept // 8)))
    while rows_kept and len(join(rows_kept, blocks_kept)) > limit:
        rows_kept = max(0, rows_kept - max(1, (rows_kept // 8)))
    text = join(rows_kept, blocks_kept)
    return text[:limit] if len(text) > limit else text


def render_problems_markdown(
    problems: Sequence[Any], fh: TextIO, *, limit: int = MARKDOWN_LIMIT
) -> None:
    """Validation problems as a plan comment, so a pull request with a typo hears where.

    `problems` are the loader's (`.file`, `.line`, `.column`, `.message`)."""
    count = len(problems)
    head = [
        PLAN_MARKER,
        f"### reconciler plan: {plural(count, 'problem')} in the project files",
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
    fh.write(_fit(head, rows, [], [], limit))


def _possessive(count: int) -> str:
    return "Project's" if count == 1 else "Projects'"


def render_apply_markdown(outcomes: Sequence[Outcome], fh: TextIO) -> None:
    lines = [APPLY_MARKER, f"### reconciler apply: {_apply_counts(outcomes)}", ""]
    shown = [o for o in outcomes if o.status != UNCHANGED]
    if shown:
        lines += ["| Project | File | Result |", "| --- | --- | --- |"]
        for outcome in shown:
            tally = _object_tally(outcome)
            result = outcome.status + (f" ({tally})" if tally else "")
            result += f": {markdown(outcome.error, MD_ERROR_LIMIT)}" if outcome.error else ""
            lines.append(f"| {_md_title(outcome)} | {markdown(outcome.file)} | {result} |")
    text = "\n".join(lines) + "\n"
    fh.write(text[:MARKDOWN_LIMIT])
