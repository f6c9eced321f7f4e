"""`reconciler render` and `reconciler compare`: effective documents, offline."""

from __future__ import annotations

import json
from io import StringIO

import yaml
from click.testing import CliRunner
from e2e import write

from reconciler.cli import cli
from reconciler.effective import differences, effective_document, render_yaml
from reconciler.files import ProjectFile

STAGING = "31f7e0b1-b7ae-439d-a141-27b4e09ba6a1"
PRODUCTION = "ff328f9d-d5f2-425b-b8ff-80a03ce89573"

BASE = """\
signupEnabled: true
defaultPatientRole: Patient
roles:
  Patient:
    accessPolicy: {rule: [{resource: "FHIR:Patient", action: FHIR:Read, effect: Allow}]}
applications:
  Patient Portal:
    allowedCallbackUrls: ["https://${DOMAIN}/callback"]
    mfaEnabled: true
prune: [roles]
"""


def example(repo) -> None:
    write(repo, "base/clinic.yaml", BASE)
    write(
        repo,
        "projects/staging.yaml",
        f"id: {STAGING}\ninclude: [../base/clinic.yaml]\nvars:\n"
        "  DOMAIN: staging.clinic.example.com\nname: Clinic (staging)\napplications:\n"
        "  Patient Portal:\n    mfaEnabled: false\n",
    )
    write(
        repo,
        "projects/production.yaml",
        f"id: {PRODUCTION}\ninclude: [../base/clinic.yaml]\nvars: {{DOMAIN: clinic.example.com}}\n"
        "name: Clinic\nroles:\n  Auditor:\n    description: Reads everything, $${not a var}\n"
        "auth: {accessTokenEnv: PRODUCTION_TOKEN}\n",
    )


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_render_prints_the_effective_document_with_its_sources(repo):
    example(repo)
    result = invoke("render", "projects/production.yaml")
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "# projects/production.yaml: the effective document (includes merged, vars applied)\n"
        "# from projects/production.yaml:1\n"
        f"id: {PRODUCTION}\n"
        "# from projects/production.yaml:4\n"
        "name: Clinic\n"
        "# from base/clinic.yaml:1\n"
        "signupEnabled: true\n"
        "# from base/clinic.yaml:2\n"
        "defaultPatientRole: Patient\n"
        "# from projects/production.yaml:8\n"
        "auth: {accessTokenEnv: PRODUCTION_TOKEN}\n"
        "# from base/clinic.yaml:3, projects/production.yaml:5\n"
        "roles:\n"
        "  Auditor: {description: 'Reads everything, $${not a var}'}\n"
        "  Patient:\n"
        "    accessPolicy:\n"
        "      rule:\n"
        "      - {resource: 'FHIR:Patient', action: 'FHIR:Read', effect: Allow}\n"
        "# from base/clinic.yaml:6\n"
        "applications:\n"
        "  Patient Portal:\n"
        "    allowedCallbackUrls: ['https://clinic.example.com/callback']\n"
        "    mfaEnabled: true\n"
        "# from base/clinic.yaml:10\n"
        "prune: [roles]\n"
    )


def test_rendered_yaml_reads_back_as_the_same_document(repo):
    example(repo)
    rendered = invoke("render", "projects/production.yaml").stdout
    (repo / "projects" / "flat.yaml").write_text(rendered.replace(PRODUCTION, STAGING))
    again = invoke("render", "projects/flat.yaml").stdout
    assert yaml.safe_load(again.replace(STAGING, PRODUCTION)) == yaml.safe_load(rendered)


def test_render_json_gives_the_document_and_a_source_per_path(repo):
    example(repo)
    result = invoke("render", "projects/staging.yaml", "--format", "json")
    doc = json.loads(result.stdout)
    assert doc["file"] == "projects/staging.yaml"
    assert doc["document"]["applications"] == {
        "Patient Portal": {
            "allowedCallbackUrls": ["https://staging.clinic.example.com/callback"],
            "mfaEnabled": False,
        }
    }
    assert "vars" not in doc["document"] and "include" not in doc["document"]
    assert doc["sources"]["applications.Patient Portal.mfaEnabled"] == "projects/staging.yaml:8"
    assert doc["sources"]["applications.Patient Portal.allowedCallbackUrls"] == (
        "base/clinic.yaml:8"
    )
    assert doc["sources"]["prune"] == "base/clinic.yaml:10"
    both = json.loads(invoke("render", "projects", "--format", "json").stdout)
    assert [item["file"] for item in both] == ["projects/production.yaml", "projects/staging.yaml"]


def test_render_of_several_files_is_one_yaml_stream(repo):
    example(repo)
    out = invoke("render", "projects").stdout
    assert out.count("\n---\n") == 1
    assert [doc["id"] for doc in yaml.safe_load_all(out)] == [PRODUCTION, STAGING]


def test_render_stops_on_a_problem(repo):
    example(repo)
    (repo / "base" / "clinic.yaml").write_text(BASE + "nmae: x\n")
    result = invoke("render", "projects/staging.yaml")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (
        "base/clinic.yaml:11:1: unknown key 'nmae' (did you mean 'name'?) (included from "
        "projects/staging.yaml:2)\n"
        "Error: 1 problem in the project files; run `reconciler validate` for details\n"
    )


def test_compare_shows_what_differs_ignoring_id_auth_and_vars(repo):
    example(repo)
    result = invoke("compare", "projects/staging.yaml", "projects/production.yaml")
    assert result.exit_code == 0
    assert result.stdout == (
        "--- projects/staging.yaml\n"
        "+++ projects/production.yaml\n"
        '~ name: "Clinic (staging)" -> "Clinic"\n'
        "+ roles.Auditor\n"
        '~ applications.Patient Portal.allowedCallbackUrls: ["https://staging.clinic.example.com'
        '/callback"] -> ["https://clinic.example.com/callback"]\n'
        "~ applications.Patient Portal.mfaEnabled: false -> true\n"
        "Compare: 4 differences (id, auth and vars aside).\n"
    )
    detailed = invoke(
        "compare", "projects/staging.yaml", "projects/production.yaml", "--detailed-exitcode"
    )
    assert detailed.exit_code == 2
    same = invoke(
        "compare", "projects/staging.yaml", "projects/staging.yaml", "--detailed-exitcode"
    )
    assert (same.exit_code, same.stdout.splitlines()[-1]) == (
        0,
        "Compare: no differences (id, auth and vars aside).",
    )


def test_compare_raw_is_before_substitution(repo):
    example(repo)
    result = invoke("compare", "projects/staging.yaml", "projects/production.yaml", "--raw")
    assert result.stdout.splitlines() == [
        "--- projects/staging.yaml (before substitution)",
        "+++ projects/production.yaml (before substitution)",
        '~ name: "Clinic (staging)" -> "Clinic"',
        "+ roles.Auditor",
        "~ applications.Patient Portal.mfaEnabled: false -> true",
        "Compare: 3 differences (id, auth and vars aside).",
    ]


def test_compare_shows_policies_as_rules_and_speaks_json(repo):
    example(repo)
    write(
        repo,
        "projects/other.yaml",
        "id: 0b7a1f7e-5a52-4a5e-9b1c-2f0c8f1d4e01\nroles:\n  Patient:\n    accessPolicy:\n"
        "      rule:\n"
        "        - {resource: [FHIR:Patient], action: [FHIR:Read, FHIR:Update], effect: Allow}\n",
    )
    result = invoke("compare", "projects/production.yaml", "projects/other.yaml")
    assert "~ roles.Patient.accessPolicy\n    - rule Allow FHIR:Read on FHIR:Patient\n" in (
        result.stdout
    )
    assert "    + rule Allow FHIR:Read, FHIR:Update on FHIR:Patient\n" in result.stdout
    doc = json.loads(
        invoke(
            "compare", "projects/production.yaml", "projects/other.yaml", "--format", "json"
        ).stdout
    )
    assert doc["a"] == "projects/production.yaml" and doc["raw"] is False
    assert {"change": "-", "path": "roles.Auditor"} in doc["differences"]


def test_compare_needs_two_valid_files(repo):
    example(repo)
    result = invoke("compare", "projects", "projects/staging.yaml")
    assert (result.exit_code, result.stderr) == (
        1,
        "Error: compare takes two project files; projects is a folder\n",
    )


# --- values never shown -------------------------------------------------------------------

DOC = {
    "secrets": {
        "WEBSITE_URL": {"value": "https://hunter2.example.com"},
        "STRIPE_KEY": {"valueFrom": {"env": "STAGING_STRIPE_KEY"}},
        "AUTH0_SECRET": {"valueFrom": {"m2mClient": "Zambdas Admin", "field": "clientSecret"}},
    }
}


def test_render_never_shows_a_secret_value():
    assert effective_document(DOC) == {
        "secrets": {
            "AUTH0_SECRET": {"valueFrom": "(not shown: m2m Zambdas Admin clientSecret)"},
            "STRIPE_KEY": {"valueFrom": "(not shown: env RECONCILER_SECRET_STAGING_STRIPE_KEY)"},
            "WEBSITE_URL": {"value": "(not shown: literal)"},
        }
    }
    out = StringIO()
    render_yaml(ProjectFile("projects/a.yaml", DOC), out)
    assert "hunter2" not in out.getvalue()
    assert "  WEBSITE_URL: {value: '(not shown: literal)'}\n" in out.getvalue()


def test_compare_says_only_that_a_secret_value_differs():
    other = {
        "secrets": {
            "WEBSITE_URL": {"value": "https://other-hunter3.example.com"},
            "STRIPE_KEY": {"valueFrom": {"env": "STAGING_STRIPE_KEY"}},
        }
    }
    found = differences(DOC, other)
    assert [line for d in found for line in d.lines()] == [
        "- secrets.AUTH0_SECRET",
        "~ secrets.WEBSITE_URL.value: differs (not shown)",
    ]
    assert found[1].to_dict() == {
        "change": "~",
        "path": "secrets.WEBSITE_URL.value",
        "note": "differs (values are not shown)",
    }
