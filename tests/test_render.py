"""Renderers write to a file handle; tests hand them a StringIO."""

import io
import json

from reconciler.plan import Plan, ProjectPlan, diff
from reconciler.render import (
    MARKDOWN_LIMIT,
    PLAN_MARKER,
    Outcome,
    md_escape,
    render_apply_text,
    render_json,
    render_markdown,
    render_text,
)

PID = "fd9b1113-4bd2-4dad-8631-a95ba035dfda"
PATIENT = {"id": "31fcd69e-1b6b-41f1-a7b5-a1a20d976a89", "name": "Patient"}
LIVE = {
    "id": PID,
    "name": "SANDBOX",
    "description": "Sandbox",
    "signupEnabled": False,
    "defaultPatientRole": PATIENT,
    "fhirVersion": "r4",
}


def _plan(*projects):
    return Plan(api_url="http://api/v1", projects=projects, created_at="2026-11-28T00:00:00Z")


def _render(fn, plan, **kw):
    fh = io.StringIO()
    fn(plan, fh, **kw)
    return fh.getvalue()


CHANGED = diff(
    "projects/sandbox.yaml",
    {"id": PID, "signupEnabled": True, "defaultPatientRole": None},
    LIVE,
)
UNCHANGED = diff("projects/other.yaml", {"id": PID, "name": "SANDBOX"}, LIVE)
FAILED = ProjectPlan.failed("projects/bad.yaml", "b1", "GET /project answered 403: Forbidden")


def test_text_is_terraform_like_with_roles_as_name_and_id():
    assert _render(render_text, _plan(CHANGED, UNCHANGED, FAILED)) == (
        f"~ SANDBOX ({PID})  projects/sandbox.yaml\n"
        "    ~ signupEnabled: false -> true\n"
        f"    ~ defaultPatientRole: Patient ({PATIENT['id']}) -> null\n"
        "\n"
        "! b1  projects/bad.yaml\n"
        "    error: GET /project answered 403: Forbidden\n"
        "\n"
        "Plan: 1 to change, 1 unchanged, 1 error.\n"
    )


def test_text_drift_summary_and_colour():
    text = _render(render_text, _plan(CHANGED, UNCHANGED), drift=True, colour=True)
    assert text.endswith("\x1b[1mDrift: 1 drifted, 1 in sync, 0 errors.\x1b[0m\n")
    assert "\x1b[33m~ SANDBOX" in text
    assert "\x1b[" not in _render(render_text, _plan(CHANGED))


def test_markdown_has_marker_table_and_details():
    text = _render(render_markdown, _plan(CHANGED, UNCHANGED, FAILED))
    marker, heading = text.split("\n")[:2]
    assert marker == PLAN_MARKER
    assert heading == "### reconciler plan: 1 to change, 1 unchanged, 1 error"
    assert "| Project | File | Status |" in text
    # Errors first, then changes; unchanged Projects are counted, and listed folded.
    assert text.index("| b1 | projects/bad.yaml | 🔴 error |") < text.index("🟡 to change (2)")
    assert "| projects/other.yaml |" not in text
    assert text.count("<details") == 3
    assert "<details><summary>⚪ 1 unchanged</summary>" in text
    assert f"- SANDBOX ({PID}) — projects/other.yaml" in text
    assert f"| defaultPatientRole | Patient ({PATIENT['id']}) | null |" in text


def test_markdown_escapes_live_values():
    live = {**LIVE, "description": "a | b <script>`x`</script> [link](http://evil)"}
    plan = diff("projects/s.yaml", {"id": PID, "description": "safe"}, live)
    text = _render(render_markdown, _plan(plan))
    assert "<script>" not in text and "`x`" not in text
    assert "a \\| b &lt;script&gt;&#96;x&#96;&lt;/script&gt; \\[link\\](http://evil)" in text
    assert md_escape("a\nb") == "a<br>b"


def test_markdown_is_capped_with_a_visible_notice_and_keeps_the_marker():
    big = "x" * 2000
    plans = [
        diff(
            f"projects/p{i}.yaml", {"id": f"id-{i}", "description": big}, {**LIVE, "id": f"id-{i}"}
        )
        for i in range(200)
    ]
    text = _render(render_markdown, _plan(*plans))
    assert len(text) <= MARKDOWN_LIMIT
    assert text.startswith(PLAN_MARKER)
    assert "**Truncated**" in text
    assert text.rstrip().endswith("</sub>")


def test_json_is_the_plan_document():
    doc = json.loads(_render(render_json, _plan(CHANGED)))
    assert doc["formatVersion"] == 2
    assert doc["projects"][0]["patch"] == {"signupEnabled": True, "defaultPatientRoleId": None}
    assert doc["checksum"].startswith("sha256:")


def test_apply_text_summary():
    outcomes = [
        Outcome("a.yaml", "a", "applied", name="A"),
        Outcome("b.yaml", "b", "unchanged"),
        Outcome("c.yaml", "c", "failed", error="did not converge: name"),
    ]
    fh = io.StringIO()
    render_apply_text(outcomes, fh)
    assert fh.getvalue() == (
        "+ A (a)  a.yaml: applied\n"
        "! c  c.yaml: failed: did not converge: name\n"
        "Apply: 1 applied, 1 unchanged, 1 failed.\n"
    )
