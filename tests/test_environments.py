"""Environments (SPEC section 12) beyond the merge: credentials in final values, sources
in plans and plan files, the fragment schema, export over a file with include."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from e2e import ALPHA, BETA, run, write

from reconciler.cli import cli
from reconciler.differ import diff
from reconciler.errors import PlanFileError
from reconciler.plan import Change, ObjectChange, Plan, ProjectPlan
from reconciler.planfile import plan_from_document
from reconciler.render import render_text
from reconciler.schema import fragment_schema, fragment_schema_text, load_schema

REPO = Path(__file__).resolve().parent.parent
SECRET = "production-secret-5b1e0f9a"


# --- the credential check runs on the final value ----------------------------------------


@pytest.mark.parametrize(
    ("description", "env", "named"),
    [
        (
            "${A}${B}",
            {"RECONCILER_VAR_A": SECRET[:10], "RECONCILER_VAR_B": SECRET[10:]},
            "the value made with RECONCILER_VAR_A and RECONCILER_VAR_B holds",
        ),
        (
            f"${{A}}{SECRET[10:]}",
            {"RECONCILER_VAR_A": SECRET[:10]},
            "the value made with RECONCILER_VAR_A holds",
        ),
        ("${HALF}${A}", {"RECONCILER_VAR_A": SECRET[10:]}, "the value made with vars.HALF and "),
    ],
)
def test_a_credential_split_across_values_is_caught_in_the_final_value(
    repo, emu, description, env, named
):
    write(repo, "base/clinic.yaml", f'description: "{description}"\n')
    write(
        repo,
        "projects/alpha.yaml",
        f"id: {ALPHA}\ninclude: [../base/clinic.yaml]\nauth: {{accessTokenEnv: ALPHA_TOKEN}}\n"
        + (f"vars: {{HALF: {SECRET[:10]}}}\n" if "HALF" in description else ""),
    )
    emu.reset_stats()
    result = run(["plan"], emu, {**env, "ALPHA_TOKEN": SECRET})
    assert result.exit_code == 1
    first = result.stderr.splitlines()[0]
    assert first.startswith(f"base/clinic.yaml:1:14: description: {named}")
    assert first.endswith(
        "holds the value of ALPHA_TOKEN, a credential: it would show in plans and PR comments "
        "(included from projects/alpha.yaml:2)"
    )
    assert SECRET not in result.output and SECRET[:10] not in result.output
    assert emu.stats() == {}


# --- sources in plans --------------------------------------------------------------------


LIVE = {"id": ALPHA, "name": "Old", "signupEnabled": False, "fhirVersion": "r4"}


def test_diff_records_where_each_desired_value_is_written():
    where = {("name",): "base/clinic.yaml:3", ("roles", "Nurse"): "base/clinic.yaml:5"}
    desired = {"id": ALPHA, "name": "New", "roles": {"Nurse": {"description": "x"}}}
    plan = diff(
        "projects/a.yaml",
        desired,
        LIVE,
        source=lambda *keys: where.get(keys, f"projects/a.yaml:{len(keys)}"),
        live_objects=_no_objects(),
    )
    [change] = plan.changes
    assert change.to_dict() == {
        "field": "name",
        "before": "Old",
        "after": "New",
        "source": "base/clinic.yaml:3",
    }
    [nurse] = plan.objects
    assert nurse.source == "base/clinic.yaml:5"
    assert [c.source for c in nurse.changes] == ["base/clinic.yaml:5", "projects/a.yaml:3"]


def _no_objects():
    from reconciler.differ import LiveObjects

    return LiveObjects(lists={"role": []}, roles=[])


def test_text_names_a_source_only_when_it_is_a_fragment():
    project = ProjectPlan(
        file="projects/a.yaml",
        project_id=ALPHA,
        status="changed",
        name="Alpha",
        changes=(
            Change("name", "Old", "New", "projects/a.yaml:3"),
            Change("signupEnabled", False, True, "base/clinic.yaml:2"),
        ),
        objects=(
            ObjectChange(
                "role",
                "Nurse",
                "r1",
                "update",
                (Change("description", "a", "b", "base/clinic.yaml:6"),),
                {"description": "b"},
                "sha256:" + "0" * 64,
                "projects/a.yaml:7",
            ),
        ),
    )
    out = _text(Plan("http://127.0.0.1/v1", (project,)))
    assert out == (
        f"~ Alpha ({ALPHA})  projects/a.yaml\n"
        '    ~ name: "Old" -> "New"\n'
        "    ~ signupEnabled: false -> true (from base/clinic.yaml:2)\n"
        "    # roles: 1 to change\n"
        "    ~ role Nurse\n"
        '        ~ description: "a" -> "b" (from base/clinic.yaml:6)\n\n'
        "Plan: 1 to change, 0 unchanged, 0 errors. Objects: 0 to add, 1 to change, "
        "0 to destroy.\n"
    )


def _text(plan: Plan) -> str:
    from io import StringIO

    out = StringIO()
    render_text(plan, out)
    return out.getvalue()


def _plan_document(source) -> dict:
    change = Change("name", "Old", "New", "projects/a.yaml:3")
    project = ProjectPlan(
        file="projects/a.yaml",
        project_id=ALPHA,
        status="changed",
        name="Old",
        changes=(change,),
        patch={"name": "New"},
        managed_keys=("name",),
        live_fingerprint="sha256:" + "1" * 64,
    )
    doc = Plan(
        "http://127.0.0.1/v1",
        (project,),
        created_at="2024-01-01T00:00:00Z",
        files_hash="sha256:" + "2" * 64,
    ).to_dict()
    doc["projects"][0]["changes"][0]["source"] = source
    from reconciler.plan import checksum

    doc["checksum"] = checksum(doc)
    return doc


@pytest.mark.parametrize("source", ["base/clinic.yaml:3", None])
def test_a_plan_file_carries_sources(source):
    plan = plan_from_document(_plan_document(source))
    assert plan.projects[0].changes[0].source == source


def test_a_plan_file_source_must_be_a_string_or_null():
    with pytest.raises(PlanFileError) as error:
        plan_from_document(_plan_document(3))
    assert str(error.value) == (
        "the plan: not a valid plan file: projects[0].changes[0].source: expected a string or "
        "null, got 3"
    )


# --- the fragment schema ------------------------------------------------------------------


def test_the_fragment_schema_is_derived_from_the_project_schema_and_shipped_twice():
    text = json.dumps(fragment_schema(load_schema()), indent=2, ensure_ascii=False) + "\n"
    assert fragment_schema_text() == text
    assert (REPO / "schemas" / "fragment.schema.json").read_text(encoding="utf-8") == text
    result = CliRunner().invoke(cli, ["schema", "--fragment"])
    assert (result.exit_code, result.stdout) == (0, text)
    assert "id" not in json.loads(text).get("required", [])


def test_check_jsonschema_accepts_the_example_base_and_refuses_an_id_in_it(tmp_path):
    schema = str(REPO / "schemas" / "fragment.schema.json")
    command = [sys.executable, "-m", "check_jsonschema", "--schemafile", schema]
    base = subprocess.run([*command, str(REPO / "base" / "clinic.yaml")], capture_output=True)
    assert base.returncode == 0, base.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"id: {ALPHA}\nname: x\n")
    assert subprocess.run([*command, str(bad)], capture_output=True).returncode == 1


# --- export over a file with include -------------------------------------------------------


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_export_refuses_to_overwrite_a_file_with_include(repo, emu, force):
    write(repo, "base/clinic.yaml", "signupEnabled: true\n")
    path = write(repo, "projects/beta.yaml", f"id: {BETA}\ninclude: [../base/clinic.yaml]\n")
    emu.reset_stats()
    result = run(["export", "--project-id", BETA, "--output", "projects/beta.yaml", *force], emu)
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: projects/beta.yaml includes fragments: export writes a standalone file and "
        "would drop them; export to another file and copy what you need\n"
    )
    assert path.read_text() == f"id: {BETA}\ninclude: [../base/clinic.yaml]\n"
    assert emu.stats() == {}
