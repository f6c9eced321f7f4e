"""Renderers write to a file handle; tests hand them a StringIO. Markdown is read back
as GitHub renders it (tests/gfm.py)."""

from __future__ import annotations

import io
import json
import random
import re
from dataclasses import dataclass, replace

import gfm
import pytest
from e2e import ALPHA, run

from reconciler.differ import LiveObjects, diff
from reconciler.files import Problem
from reconciler.kinds import KINDS
from reconciler.plan import Change, ObjectChange, Plan, ProjectPlan
from reconciler.render import (
    MARKDOWN_LIMIT,
    PLAN_MARKER,
    ObjectOutcome,
    Outcome,
    format_value,
    md_escape,
    render_apply_markdown,
    render_apply_text,
    render_json,
    render_markdown,
    render_problems_markdown,
    render_text,
)

PID = "fd9b1113-4bd2-4dad-8631-a95ba035dfda"
EHR = "7a1c2e3f-4b5d-4e6f-8a9b-0c1d2e3f4a5b"
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

RESOURCES = ["FHIR:Patient:*", "FHIR:Encounter:*", "FHIR:Appointment:*", "Z3:reports/*"]
ACTIONS = ["FHIR:Read", "FHIR:Update", "FHIR:Create", "FHIR:Search"]


def bootstrap(roles: int, applications: int, m2m: int, *, file="projects/ehr.yaml", pid=EHR):
    """The plan of a file declaring these objects against a bare Project, made by the
    differ itself: every object a create, as `plan` would show it."""
    rng = random.Random(roles * 7 + applications * 3 + m2m)
    doc = {"id": pid, "name": "EHR", "signupEnabled": True, "defaultPatientRole": "role-000"}
    doc["roles"] = {
        f"role-{i:03d}": {
            "description": f"Role {i}: what it may read and write in the EHR",
            "accessPolicy": {
                "rule": [
                    {"resource": r, "action": rng.sample(ACTIONS, 2), "effect": "Allow"}
                    for r in rng.sample(RESOURCES, rng.randint(1, 3))
                ]
            },
        }
        for i in range(roles)
    }
    doc["applications"] = {
        f"app-{i:03d}": {
            "description": f"Application {i}",
            "allowedCallbackUrls": [f"https://app{i}.ehr.example.com/callback"],
            "allowedLogoutUrls": [f"https://app{i}.ehr.example.com/"],
            "loginWithEmailEnabled": True,
            "mfaEnabled": i % 2 == 0,
        }
        for i in range(applications)
    }
    doc["m2mClients"] = {
        f"job-{i:03d}": {"description": f"back-end job {i}", "roles": [f"role-{i % roles:03d}"]}
        for i in range(m2m)
    }
    live = {"id": pid, "name": "EHR", "signupEnabled": False, "fhirVersion": "r4"}
    lists = {"role": [], "application": [], "m2m": []}
    return diff(file, doc, live, [], live_objects=LiveObjects(lists=lists, roles=[]))


# Text ---------------------------------------------------------------------------------


def test_text_is_terraform_like_with_roles_as_name_and_id():
    assert _render(render_text, _plan(CHANGED, UNCHANGED, FAILED)) == (
        "! b1  projects/bad.yaml\n"
        "    error: GET /project answered 403: Forbidden\n"
        "\n"
        f"~ SANDBOX ({PID})  projects/sandbox.yaml\n"
        "    ~ signupEnabled: false -> true\n"
        f"    ~ defaultPatientRole: Patient ({PATIENT['id']}) -> null\n"
        "\n"
        "Plan: 1 to change, 1 unchanged, 1 error.\n"
    )


def test_values_read_as_a_person_reads_them():
    assert format_value({"id": PATIENT["id"], "name": "Patient"}) == f"Patient ({PATIENT['id']})"
    ref = {"id": {"ref": {"kind": "role", "name": "Nurse"}}, "name": "Nurse"}
    assert format_value([ref, {"id": "r1", "name": None}]) == "[Nurse (created by this plan), r1]"
    assert format_value("x") == '"x"' and format_value(None) == "null"


def test_text_drift_summary_and_colour():
    text = _render(render_text, _plan(CHANGED, UNCHANGED), drift=True, colour=True)
    assert text.endswith("\x1b[1mDrift: 1 drifted, 1 in sync, 0 errors.\x1b[0m\n")
    assert "\x1b[33m~ SANDBOX" in text
    assert "\x1b[" not in _render(render_text, _plan(CHANGED))


def test_text_reads_by_file_then_kind_in_write_order_then_name():
    """Whatever order the plan holds them in (requests finish in any order)."""
    project = bootstrap(3, 2, 2)
    objects = list(project.objects)
    random.Random(5).shuffle(objects)
    shuffled = replace(project, objects=tuple(objects))
    later = replace(bootstrap(1, 0, 0), file="projects/z.yaml")
    text = _render(render_text, _plan(later, shuffled))
    assert text.index("projects/ehr.yaml") < text.index("projects/z.yaml")
    titles = [
        line.strip() for line in text.splitlines() if line.startswith("    ") and line[4] in "#+"
    ]
    assert titles[:10] == [
        "# roles: 3 to add",
        "+ role role-000",
        "+ role role-001",
        "+ role role-002",
        "# applications: 2 to add",
        "+ application app-000",
        "+ application app-001",
        "# m2mClients: 2 to add",
        "+ m2m job-000",
        "+ m2m job-001",
    ]
    assert _render(render_text, _plan(later, shuffled)) == _render(
        render_text, _plan(later, project)
    )


# Markdown -----------------------------------------------------------------------------


def test_markdown_opens_with_counts_per_project_and_kind():
    text = _render(render_markdown, _plan(CHANGED, UNCHANGED, FAILED, bootstrap(2, 1, 1)))
    assert text.startswith(
        f"{PLAN_MARKER}\n"
        "### reconciler plan: 2 to change, 1 unchanged, 1 error; "
        "objects: 4 to add, 0 to change, 0 to destroy\n"
        "\n"
        "| Project | File | Kind | Add | Change | Destroy |\n"
        "| --- | --- | --- | ---: | ---: | ---: |\n"
        "| 🔴 `b1` | `projects/bad.yaml` | **error** | | | |\n"
        "| 🟡 `EHR` | `projects/ehr.yaml` | settings | | 2 | |\n"
        "| | | roles | 2 | | |\n"
        "| | | applications | 1 | | |\n"
        "| | | m2mClients | 1 | | |\n"
        "| 🟡 `SANDBOX` | `projects/sandbox.yaml` | settings | | 2 | |\n"
        "\n"
        "#### 🔴 `b1` · `projects/bad.yaml`\n"
        "\n"
        "`GET /project answered 403: Forbidden`\n"
    )
    page = gfm.render(text)
    counts = page.tables[0]
    assert counts[0] == ["Project", "File", "Kind", "Add", "Change", "Destroy"]
    assert [row[2] for row in counts[1:]] == [
        "error",
        "settings",
        "roles",
        "applications",
        "m2mClients",
        "settings",
    ]
    assert all(len(row) == 6 for row in counts)
    # Each kind of each Project is its own section; unchanged Projects fold into one.
    summaries = re.findall(r"<summary>(.*?)</summary>", page.html)
    assert summaries == [
        "settings: 2 changes",
        "roles: 2 to add",
        "applications: 1 to add",
        "m2mClients: 1 to add",
        "settings: 2 changes",
        "⚪ 1 unchanged",
    ]
    assert f"- `SANDBOX` (`{PID}`) — `projects/other.yaml`" in text
    assert f"| `defaultPatientRole` | `Patient` (`{PATIENT['id']}`) | `null` |" in text
    assert page.pings() == []


def test_creates_are_a_table_of_their_main_fields_and_updates_keep_their_field_lines():
    live_role = {"id": PATIENT["id"], "name": "FrontDesk", "description": "desk"}
    live_policy = {
        "rule": [{"resource": "FHIR:Patient:*", "action": "FHIR:Read", "effect": "Allow"}]
    }
    doc = {
        "id": PID,
        "roles": {
            "Front Desk": {
                "renamedFrom": "FrontDesk",
                "description": "the desk",
                "accessPolicy": {"rule": [{"resource": "FHIR:*", "action": "*", "effect": "Deny"}]},
            },
            "Nurse": {"description": "Nurses", "accessPolicy": live_policy},
        },
        "applications": {
            "Portal": {
                "allowedCallbackUrls": ["https://a.example/cb", "https://b.example/cb"],
                "logoUri": "https://a.example/logo.png",
            }
        },
        "prune": ["roles"],
    }
    lists = {
        "role": [live_role, {"id": "9c3e4051-6d7f-4081-8cbd-2e3f4a5b6c7d", "name": "Legacy"}],
        "application": [],
    }
    details = {PATIENT["id"]: {**live_role, "accessPolicy": live_policy}}
    roles = [*lists["role"]]
    project = diff(
        "projects/s.yaml",
        doc,
        LIVE,
        roles,
        live_objects=LiveObjects(lists=lists, details=details, roles=roles),
    )
    text = _render(render_markdown, _plan(project))
    assert (
        "<details><summary>roles: 1 to add, 1 to change, 1 to destroy</summary>\n"
        "\n"
        "| Name | description | accessPolicy |\n"
        "| --- | --- | --- |\n"
        "| `Nurse` | `Nurses` | `Allow FHIR:Read on FHIR:Patient:*` |\n"
        "\n"
        "- ✏️ `Front Desk` (renamed from `FrontDesk`)\n"
        '  - ✏️ `description`: `"desk"` -> `"the desk"`\n'
        "  - ➖ `accessPolicy` rule `Allow FHIR:Read on FHIR:Patient:*`\n"
        "  - ➕ `accessPolicy` rule `Deny * on FHIR:*`\n"
        "- ➖ `Legacy`\n"
        "\n"
        "</details>\n"
    ) in text
    # A field outside the kind's main ones is still shown, in the last column.
    assert (
        "| Name | description | allowedCallbackUrls | loginWithEmailEnabled | mfaEnabled "
        "| Other fields |\n"
    ) in text
    assert (
        "| `Portal` | | `https://a.example/cb`<br>`https://b.example/cb` | | "
        "| `logoUri`: `https://a.example/logo.png` |\n"
    ) in text
    page = gfm.render(text)
    assert page.pings() == []
    portal = page.tables[-1][1]
    assert portal[2] == "https://a.example/cb\nhttps://b.example/cb"


def test_every_kind_declares_its_main_fields():
    for kind in KINDS:
        assert "name" not in kind.summary_fields
        if kind.concealed:  # a secret's row says where its value comes from, never the value
            assert kind.summary_fields == ("valueSource",), kind.name
        elif kind.write_fields == ("name",):  # a bucket is its name
            assert kind.summary_fields == (), kind.name
        else:
            assert kind.summary_fields, kind.name
            assert set(kind.summary_fields) <= set(kind.compared_fields), kind.name


def _names_in_code(page: gfm.Rendered) -> set[str]:
    return set(page.codes)


def test_the_bootstrap_plan_of_an_ehr_sized_project_fits_one_comment_whole():
    """200 roles with policies, 20 applications, 100 M2M clients: nothing summarised."""
    project = bootstrap(200, 20, 100)
    text = _render(render_markdown, _plan(project))
    assert len(text) <= MARKDOWN_LIMIT
    assert "Summarised" not in text and "Truncated" not in text
    page = gfm.render(text)
    assert [len(table) - 1 for table in page.tables] == [4, 2, 200, 20, 100]
    assert {o.name for o in project.objects} <= _names_in_code(page)


def test_a_plan_past_the_limit_summarises_the_largest_sections_first_and_names_every_object():
    """600 roles, 200 applications, 300 M2M clients: the roles' table (the largest) is
    summarised to names; the others stay tables; every object is still named."""
    project = bootstrap(600, 200, 300)
    whole = _render(render_markdown, _plan(project), limit=10**7)
    assert len(whole) > MARKDOWN_LIMIT
    text = _render(render_markdown, _plan(project))
    assert len(text) <= MARKDOWN_LIMIT
    assert text.startswith(PLAN_MARKER + "\n")
    assert (
        "> **Summarised to fit one comment:** the largest sections list names only. "
        "The full plan is in this workflow run's summary and in its plan artifact.\n"
    ) in text
    assert "<summary>roles: 600 to add (names only)</summary>" in text
    assert "<summary>applications: 200 to add</summary>" in text
    assert "<summary>m2mClients: 300 to add</summary>" in text
    page = gfm.render(text)
    assert {o.name for o in project.objects} <= _names_in_code(page)
    assert [len(table) - 1 for table in page.tables] == [4, 2, 200, 300]
    assert page.pings() == []


def _later_kind(kind: str, count: int, fields) -> tuple[ObjectChange, ...]:
    """Creates of a kind the renderers do not know yet (secrets, buckets, zambdas): they
    show every field in one column until the kind declares its main ones."""
    return tuple(
        ObjectChange(
            kind,
            name,
            None,
            "create",
            (Change("name", None, name), *(Change(f, None, v) for f, v in fields(name).items())),
        )
        for name in (f"{kind}-{i:03d}-{'x' * (i % 20)}" for i in range(count))
    )


def test_the_bootstrap_plan_of_the_ehr_fits_one_comment_and_names_every_object():
    """About 430 objects as the EHR has them: 200 roles with policies, 20 applications,
    100 M2M clients, 36 secrets, 22 buckets and 334 zambdas with their code hashes."""
    iam = bootstrap(200, 20, 100)
    later = (
        _later_kind("secret", 36, lambda n: {"value": "(not shown: env X)"})
        + _later_kind("bucket", 22, lambda n: {})
        + _later_kind(
            "zambda",
            334,
            lambda n: {
                "runtime": "nodejs22.x",
                "triggerMethod": "http_auth",
                "code": "0123456789abcdef" * 4,
            },
        )
    )
    project = replace(iam, objects=iam.objects + later)
    text = _render(render_markdown, _plan(project))
    assert len(text) <= MARKDOWN_LIMIT
    assert "Summarised to fit one comment" in text
    page = gfm.render(text)
    assert {o.name for o in project.objects} <= set(page.codes)
    assert "| | | zambdas | 334 | | |" in text


def test_summarising_never_hides_counts_errors_or_deletes():
    deletes = tuple(
        ObjectChange("m2m", f"old-{i:03d}", f"id-{i}", "delete", live_fingerprint="sha256:x")
        for i in range(40)
    )
    project = replace(bootstrap(300, 0, 0), objects=bootstrap(300, 0, 0).objects + deletes)
    error = ProjectPlan.failed("projects/bad.yaml", "b1", "GET /project answered 403: " + "x" * 900)
    text = _render(render_markdown, _plan(project, error), limit=4_000)
    assert len(text) <= 4_000
    assert "<summary>roles: 300 to add (counted only)</summary>" in text
    assert "300 more objects to add or change: listed in the full plan." in text
    assert "| | | m2mClients | | | 40 |" in text
    assert all(f"- ➖ `old-{i:03d}`" in text for i in range(40))
    assert "`GET /project answered 403: " + "x" * 900 + "`" in text
    assert "Truncated" not in text


def test_past_all_summaries_whole_sections_go_with_a_visible_notice_marker_kept():
    big = "x" * 2000
    plans = [
        ProjectPlan.failed(f"projects/p{i:03d}.yaml", f"id-{i}", f"error {i}: {big}")
        for i in range(200)
    ]
    text = _render(render_markdown, _plan(*plans))
    assert len(text) <= MARKDOWN_LIMIT
    assert text.startswith(PLAN_MARKER)
    assert "> **Truncated** to fit a comment: 0 more table rows and " in text
    assert text.rstrip().endswith("</sub>")
    assert text.count("| 🔴 ") == 200  # every Project is still counted


def test_drift_reads_live_to_file():
    text = _render(render_markdown, _plan(CHANGED), drift=True)
    assert text.startswith("<!-- reconciler-drift -->\n### reconciler drift: 1 drifted")
    assert "Values read **live → file**: what the Project has now, what its file says." in text
    assert "| `signupEnabled` | `false` | `true` |" in text


def test_markdown_puts_live_values_in_code_spans():
    live = {**LIVE, "description": "a | b <script>`x`</script> [link](http://evil)"}
    plan = diff("projects/s.yaml", {"id": PID, "description": "safe"}, live)
    text = _render(render_markdown, _plan(plan))
    assert '| ``"a \\| b <script>`x`</script> [link](http://evil)"`` |' in text
    page = gfm.render(text)
    assert "<script>" not in page.html and page.pings() == []
    assert '"a | b <script>`x`</script> [link](http://evil)"' in page.codes
    assert md_escape("a\nb") == "a<br>b"


def test_problems_as_markdown():
    problems = [
        Problem("projects/a.yaml", 3, 1, "unknown key 'signupEnabeld'"),
        Problem("projects/b|c.yaml", 1, 5, "expected <a mapping>"),
    ]
    assert _render(render_problems_markdown, problems) == (
        f"{PLAN_MARKER}\n"
        "### reconciler plan: 2 problems in the project files\n\n"
        "Nothing was read or written. Fix these and push again:\n\n"
        "| File | Line | Column | Problem |\n"
        "| --- | --- | --- | --- |\n"
        "| `projects/a.yaml` | 3 | 1 | `unknown key 'signupEnabeld'` |\n"
        "| `projects/b\\|c.yaml` | 1 | 5 | `expected <a mapping>` |\n\n"
    )


# Sources ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _SourcedChange(Change):
    """A local stand-in for `Change.source` ("FILE:LINE", SPEC section 12), until
    plan.py has it."""

    source: str | None = None


@dataclass(frozen=True)
class _SourcedObject(ObjectChange):
    source: str | None = None


HAS_SOURCE = "source" in Change.__dataclass_fields__
SourcedChange = Change if HAS_SOURCE else _SourcedChange
SourcedObject = ObjectChange if HAS_SOURCE else _SourcedObject


def test_a_change_from_an_included_fragment_names_it():
    own = SourcedChange("signupEnabled", False, True, source="projects/staging.yaml:3")
    included = SourcedChange("description", "old", "new", source="base/clinic.yaml:9")
    role = SourcedObject(
        "role",
        "Patient",
        None,
        "create",
        (
            Change("name", None, "Patient"),
            SourcedChange("description", None, "P", source="base/c.yaml:4"),
            SourcedChange("accessPolicy", None, {"rule": []}, source="base/clinic.yaml:13"),
        ),
        source="base/clinic.yaml:12",
    )
    update = SourcedObject(
        "role",
        "Staff",
        "r1",
        "update",
        (SourcedChange("description", "a", "b", source="base/clinic.yaml:20"),),
        source="projects/staging.yaml:30",
    )
    project = ProjectPlan(
        "projects/staging.yaml", PID, "changed", changes=(own, included), objects=(role, update)
    )
    text = _render(render_text, _plan(project))
    assert "    ~ signupEnabled: false -> true\n" in text
    assert '    ~ description: "old" -> "new" (from base/clinic.yaml:9)\n' in text
    assert "    + role Patient (from base/clinic.yaml:12)\n" in text
    assert '        + description: "P" (from base/c.yaml:4)\n' in text
    # A field written where its new object is says nothing more.
    assert "        + accessPolicy: no rules\n" in text
    assert "    ~ role Staff\n" in text
    assert '        ~ description: "a" -> "b" (from base/clinic.yaml:20)\n' in text
    md = _render(render_markdown, _plan(project))
    assert "| `signupEnabled` | `false` | `true` |" in md
    assert '| `description` (from `base/clinic.yaml:9`) | `"old"` | `"new"` |' in md
    assert (
        "| `Patient` (from `base/clinic.yaml:12`) | `P` (from `base/c.yaml:4`) | *no rules* |\n"
    ) in md
    assert "- ✏️ `Staff`\n" in md
    assert '  - ✏️ `description`: `"a"` -> `"b"` (from `base/clinic.yaml:20`)\n' in md


# JSON and apply -----------------------------------------------------------------------


def test_json_is_the_plan_document():
    doc = json.loads(_render(render_json, _plan(CHANGED)))
    assert doc["formatVersion"] == 3
    assert doc["projects"][0]["patch"] == {"signupEnabled": True, "defaultPatientRoleId": None}
    assert doc["checksum"].startswith("sha256:")


def test_apply_text_summary():
    outcomes = [
        Outcome("a.yaml", "a", "applied", name="A"),
        Outcome("b.yaml", "b", "unchanged"),
        Outcome("c.yaml", "c", "failed", error="did not converge: name"),
    ]
    assert _render(render_apply_text, outcomes) == (
        "+ A (a)  a.yaml: applied\n"
        "! c  c.yaml: failed: did not converge: name\n"
        "Apply: 1 applied, 1 unchanged, 1 failed.\n"
    )


@pytest.mark.parametrize("roles", [3, 4_000])
def test_apply_summary_counts_per_kind_and_always_shows_failures(roles):
    objects = [ObjectOutcome("role", f"r{i:04d}", "create", "applied") for i in range(roles)]
    objects += [
        ObjectOutcome("m2m", "job", "create", "failed", error="POST /m2m answered 400: @team"),
        ObjectOutcome("m2m", "later", "create", "skipped"),
    ]
    outcomes = [
        Outcome("projects/e.yaml", EHR, "failed", name="EHR", objects=tuple(objects)),
        Outcome("projects/s.yaml", PID, "applied", name="SANDBOX"),
    ]
    text = _render(render_apply_markdown, outcomes)
    assert len(text) <= MARKDOWN_LIMIT
    assert text.startswith(
        "<!-- reconciler-apply -->\n"
        "### reconciler apply: 1 applied, 0 unchanged, 1 failed\n"
        "\n"
        "| Project | File | Result | Objects |\n"
        "| --- | --- | --- | --- |\n"
        f"| 🔴 `EHR` (`{EHR}`) | `projects/e.yaml` | failed | roles: {roles} created<br>"
        "m2mClients: 1 failed, 1 skipped |\n"
        f"| 🟢 `SANDBOX` (`{PID}`) | `projects/s.yaml` | applied | |\n"
    )
    assert "- 🔴 m2m `job`: failed: `POST /m2m answered 400: @team`\n" in text
    assert ("Listed in the run log." in text) == (roles > 3)
    assert gfm.render(text).pings() == []


def test_plan_markdown_shows_validation_problems_on_stdout(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from reconciler.cli import cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "projects").mkdir()
    (tmp_path / "projects" / "a.yaml").write_text(f"id: {PID}\nsignupEnabeld: true\n")
    result = CliRunner().invoke(cli, ["plan", "--format", "markdown"])
    assert result.exit_code == 1
    assert result.stdout.startswith(f"{PLAN_MARKER}\n### reconciler plan: 1 problem in the ")
    assert "| `projects/a.yaml` | 2 | 1 |" in result.stdout and "signupEnabeld" in result.stdout
    assert result.stderr.startswith("projects/a.yaml:2:1: ")
    # Text output keeps stdout for the plan: the problems go to stderr only.
    assert CliRunner().invoke(cli, ["plan"]).stdout == ""


def test_the_job_summary_holds_the_whole_plan_the_comment_summarises(repo, emu):
    roles = "".join(f"  role-{i:03d}: {{description: {'d' * 180}}}\n" for i in range(400))
    (repo / "projects").mkdir()
    (repo / "projects/alpha.yaml").write_text(f"id: {ALPHA}\nroles:\n{roles}")
    summary = repo / "summary.md"
    result = run(["plan", "--format", "markdown"], emu, {"GITHUB_STEP_SUMMARY": str(summary)})
    assert result.exit_code == 0, result.output
    assert len(result.stdout) <= MARKDOWN_LIMIT
    assert "<summary>roles: 400 to add (names only)</summary>" in result.stdout
    whole = summary.read_text()
    assert len(whole) > MARKDOWN_LIMIT and "Summarised" not in whole
    assert whole.count(f"| `{'d' * 180}` |") == 400
