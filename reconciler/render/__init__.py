"""Renderers: a Plan (or an apply result) in, text written to a file handle. Nothing else.

- ``text``: Terraform-like blocks for a terminal, colour optional.
- ``markdown``: a pull-request comment (or issue body, or job summary), fitted to
  GitHub's limit by ``fit``.
- ``document``: JSON, the plan file of SPEC section 4, redacted before it is serialised.
- ``lines``: what text and markdown share: values, lines, order and counts.
- ``outcomes``: what apply did, as values.
"""

from reconciler.escape import md_escape
from reconciler.render.document import plan_document, render_apply_json, render_json
from reconciler.render.lines import format_value
from reconciler.render.markdown import (
    APPLY_MARKER,
    DRIFT_MARKER,
    MARKDOWN_LIMIT,
    MD_ERROR_LIMIT,
    PLAN_MARKER,
    STEP_SUMMARY_LIMIT,
    render_apply_markdown,
    render_markdown,
    render_problems_markdown,
)
from reconciler.render.outcomes import (
    APPLIED,
    BLOCKED,
    FAILED,
    SKIPPED,
    UNKNOWN,
    ObjectOutcome,
    Outcome,
    apply_summary,
)
from reconciler.render.text import render_apply_text, render_text

__all__ = [
    "APPLIED",
    "BLOCKED",
    "APPLY_MARKER",
    "DRIFT_MARKER",
    "FAILED",
    "MARKDOWN_LIMIT",
    "MD_ERROR_LIMIT",
    "PLAN_MARKER",
    "SKIPPED",
    "STEP_SUMMARY_LIMIT",
    "UNKNOWN",
    "ObjectOutcome",
    "Outcome",
    "apply_summary",
    "format_value",
    "md_escape",
    "plan_document",
    "render_apply_json",
    "render_apply_markdown",
    "render_apply_text",
    "render_json",
    "render_markdown",
    "render_problems_markdown",
    "render_text",
]
