"""Renderers: a Plan (or an apply result) in, text written to a file handle. Nothing else.

- text: Terraform-like blocks for a terminal, colour optional.
- markdown: a pull-request comment (or issue body), capped at 65,000 characters.
- json: the plan file of SPEC section 4.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from reconciler.escape import markdown, md_escape, plural, term, without_userinfo  # noqa: F401 (md_escape: re-exported)
from reconciler.plan import CHANGED, ERROR, UNCHANGED, Plan, ProjectPlan

PLAN_MARKER = "<!-- reconciler-plan -->"
DRIFT_MARKER = "<!-- reconciler-drift -->"
APPLY_MARKER = "<!-- reconciler-apply -->"
MARKDOWN_LIMIT = 65_000

APPLIED, FAILED, SKIPPED = "applied", "failed", "skipped"
# A PATCH was in flight when the run was interrupted: it may or may not have been applied.
UNKNOWN = "unknown"

_ICONS = {CHANGED: "🟡", UNCHANGED: "⚪", ERROR: "🔴"}
_COLOURS = {"~": "33", "!": "31", "+": "32", "=": "2", "bold": "1"}


@dataclass(frozen=True)
class Outcome:
    """What apply did to one Project."""

    file: str
    project_id: str
    status: str  # applied | unchanged | failed | unknown | skipped
    error: str | None = None
    name: str | None = None

    def to_dict(self) -> dict:
        return {
            "file": self.file,
            "projectId": self.project_id,
            "name": self.name,
            "status": self.status,
            "error": self.error,
        }


def apply_summary(outcomes: Sequence[Outcome]) -> dict[str, int]:
    counts = {APPLIED: 0, UNCHANGED: 0, FAILED: 0, UNKNOWN: 0, SKIPPED: 0}
    for outcome in outcomes:
        counts[outcome.status] += 1
    return counts


# Values ---------------------------------------------------------------------------


def format_value(value: Any) -> str:
    """A value as a person reads it: roles as `Name (id)`, strings quoted, null as null."""
    if isinstance(value, Mapping) and "id" in value:
        return f"{value.get('name')} ({value['id']})" if value.get("name") else str(value["id"])
    return json.dumps(value, ensure_ascii=False)


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
                line = (
                    f"    ~ {term(change.field)}: {term(format_value(change.before))} -> "
                    f"{term(format_value(change.after))}"
                )
                fh.write(_paint(line, "~", colour) + "\n")
            fh.write("\n")
        elif project.status == ERROR:
            fh.write(
                _paint(f"! {term(_title(project))}", "!", colour) + f"  {term(project.file)}\n"
            )
            fh.write(_paint(f"    error: {term(project.error)}", "!", colour) + "\n\n")
        elif verbose:
            line = f"= {term(_title(project))}  {term(project.file)}: unchanged"
            fh.write(_paint(line, "=", colour) + "\n")
    summary = plan.summary
    if drift:
        line = (
            f"Drift: {summary[CHANGED]} drifted, {summary[UNCHANGED]} in sync, "
            f"{plural(summary['errors'], 'error')}."
        )
    else:
        line = (
            f"Plan: {summary[CHANGED]} to change, {summary[UNCHANGED]} unchanged, "
            f"{plural(summary['errors'], 'error')}."
        )
    fh.write(_paint(line, "bold", colour) + "\n")


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
    fh.write(_paint(f"Apply: {_apply_counts(outcomes)}.", "bold", colour) + "\n")


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
    summary = plan.summary
    marker = DRIFT_MARKER if drift else PLAN_MARKER
    if drift:
        heading = (
            f"### reconciler drift: {summary[CHANGED]} drifted, {summary[UNCHANGED]} in sync, "
            f"{plural(summary['errors'], 'error')}"
        )
    else:
        heading = (
            f"### reconciler plan: {summary[CHANGED]} to change, {summary[UNCHANGED]} unchanged, "
            f"{plural(summary['errors'], 'error')}"
        )
    status_text = {
        CHANGED: "drifted" if drift else "to change",
        UNCHANGED: "in sync" if drift else "unchanged",
        ERROR: "error",
    }
    head = [marker, heading, ""]
    # The table lists what needs a reviewer's eye; unchanged Projects only get counted
    # there (a fleet of hundreds would bury the changes) and are listed folded below.
    attention = sorted((p for p in plan.projects if p.status != UNCHANGED), key=_attention_first)
    rows = [
        f"| {_md_title(p)} | {markdown(p.file)} | "
        f"{_ICONS[p.status]} {status_text[p.status]}"
        + (f" ({len(p.changes)})" if p.status == CHANGED else "")
        + " |"
        for p in attention
    ]
    if rows:
        head += ["| Project | File | Status |", "| --- | --- | --- |"]
    blocks = [_md_block(p) for p in plan.projects if p.status in (CHANGED, ERROR)]
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


def _md_block(project: ProjectPlan) -> str:
    if project.status == ERROR:
        return (
            f"<details open><summary>🔴 {_md_title(project)} — error</summary>\n\n"
            f"{markdown(project.file)}: {markdown(project.error or '', MD_ERROR_LIMIT)}\n\n"
            "</details>\n"
        )
    lines = [
        f"<details><summary>🟡 {_md_title(project)} — "
        f"{len(project.changes)} change{'s' if len(project.changes) != 1 else ''} "
        f"({markdown(project.file)})</summary>",
        "",
        "| Field | Before | After |",
        "| --- | --- | --- |",
    ]
    lines += [
        f"| {markdown(change.field)} | {_md_value(change.before)} | {_md_value(change.after)} |"
        for change in project.changes
    ]
    lines += ["", "</details>", ""]
    return "\n".join(lines)


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


def _possessive(count: int) -> str:
    return "Project's" if count == 1 else "Projects'"


def render_apply_markdown(outcomes: Sequence[Outcome], fh: TextIO) -> None:
    lines = [APPLY_MARKER, f"### reconciler apply: {_apply_counts(outcomes)}", ""]
    shown = [o for o in outcomes if o.status != UNCHANGED]
    if shown:
        lines += ["| Project | File | Result |", "| --- | --- | --- |"]
        for outcome in shown:
            result = outcome.status + (
                f": {markdown(outcome.error, MD_ERROR_LIMIT)}" if outcome.error else ""
            )
            lines.append(f"| {_md_title(outcome)} | {markdown(outcome.file)} | {result} |")
    text = "\n".join(lines) + "\n"
    fh.write(text[:MARKDOWN_LIMIT])
