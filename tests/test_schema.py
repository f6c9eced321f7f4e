"""The JSON Schema itself, its two copies, and the messages it gives."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from jsonschema import Draft202012Validator

from reconciler.cli import cli
from reconciler.files import load_projects
from reconciler.schema import Finding, check, inline_refs, load_schema, schema_text, validator

REPO = Path(__file__).resolve().parent.parent
ID = "0b7a1f7e-5a52-4a5e-9b1c-2f0c8f1d4e01"
ROLE_ID = "31fcd69e-1b6b-41f1-a7b5-a1a20d976a89"


def messages(**fields) -> list[str]:
    return [finding.message for finding in check({"id": ID, **fields})]


def test_the_schema_is_a_valid_2020_12_schema():
    schema = load_schema()
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] and schema["title"] and schema["description"]


def test_the_two_copies_are_byte_identical():
    packaged = REPO / "reconciler" / "data" / "project.schema.json"
    assert (REPO / "schemas" / "project.schema.json").read_bytes() == packaged.read_bytes()
    assert schema_text() == packaged.read_text(encoding="utf-8")


def test_the_schema_command_prints_the_packaged_file():
    result = CliRunner().invoke(cli, ["schema"])
    assert result.exit_code == 0
    assert result.stdout == schema_text()
    json.loads(result.stdout)


def _properties(schema: dict, where: str = ""):
    for name, sub in schema.get("properties", {}).items():
        yield f"{where}{name}", sub
        yield from _properties(sub, f"{where}{name}.")


def test_every_property_has_a_description_for_editors():
    schema = load_schema()
    found = list(_properties(schema)) + [
        (f"$defs.role.{name}", sub) for name, sub in _properties(schema["$defs"]["role"])
    ]
    assert len(found) > 10
    assert [name for name, sub in found if not sub.get("description")] == []


def test_every_object_refuses_unknown_keys():
    schema = load_schema()
    objects = [schema, schema["properties"]["auth"], schema["$defs"]["role"]]
    assert all(sub["additionalProperties"] is False for sub in objects)


def test_the_example_projects_validate(monkeypatch):
    monkeypatch.chdir(REPO)
    result = load_projects(["projects"], env={})
    assert result.problems == []
    assert [project.stem for project in result.projects] == ["production", "sandbox", "staging"]


def test_check_jsonschema_accepts_the_examples():
    # The schema works with standard tools too, not only with our translator.
    examples = sorted(str(path) for path in (REPO / "projects").glob("*.yaml"))
    schema = str(REPO / "schemas" / "project.schema.json")
    command = [sys.executable, "-m", "check_jsonschema", "--schemafile", schema, *examples]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_a_valid_document_has_no_findings():
    assert (
        messages(
            name="Portal",
            description="",
            signupEnabled=True,
            defaultPatientRole={"id": ROLE_ID, "name": "Patient"},
            defaultSSOUserRole=None,
            fhirVersion="r5",
            auth={"clientIdEnv": "CLIENT_ID", "clientSecretEnv": "CLIENT_SECRET"},
        )
        == []
    )


@pytest.mark.parametrize(
    "role", ["Patient", None, {"id": ROLE_ID}, {"name": "Patient"}, {"id": ROLE_ID, "name": "P"}]
)
def test_every_role_form_is_accepted(role):
    assert messages(defaultPatientRole=role, defaultSSOUserRole=role) == []


NOT_A_ROLE = ": expected a role name, {id: ...}, {name: ...} or null, got "
EMPTY_ROLE = ": a role name must not be empty or blank (use null for no default role)"


@pytest.mark.parametrize(
    ("role", "expected"),
    [
        (5, NOT_A_ROLE + "integer 5"),
        ([], NOT_A_ROLE + "a list"),
        ("", EMPTY_ROLE),
        (" ", EMPTY_ROLE),
        ({}, ": give the role's id, its name, or both"),
        ({"name": ""}, ".name must not be empty or blank"),
        (
            {"id": "patient"},
            ".id: 'patient' is not a valid UUID "
            "(expected lowercase 8-4-4-4-12 hex, like fd9b1113-4bd2-4dad-8631-a95ba035dfda)",
        ),
    ],
)
def test_role_problems_are_one_readable_line(role, expected):
    assert messages(defaultPatientRole=role) == ["defaultPatientRole" + expected]


def test_unknown_key_in_a_role():
    assert messages(defaultPatientRole={"nmae": "x"}) == [
        "unknown key 'nmae' in defaultPatientRole (did you mean 'name'?)"
    ]


def test_unknown_and_refused_keys_are_reported_at_the_key():
    findings = check({"id": ID, "sandbox": True, "nmae": "x", "defaultSSOUserRoleId": None})
    assert findings == [
        Finding(("nmae",), "unknown key 'nmae' (did you mean 'name'?)", at_key=True),
        Finding(
            ("sandbox",),
            "sandbox is read-only: it is set when the Project is created "
            "and cannot be managed here",
            at_key=True,
        ),
        Finding(
            ("defaultSSOUserRoleId",),
            "defaultSSOUserRoleId is the API's write name: "
            "use defaultSSOUserRole: {id: ...} (or a role name)",
            at_key=True,
        ),
    ]


def test_a_refused_key_is_never_suggested():
    assert messages(sandbx=True) == ["unknown key 'sandbx'"]


def test_uuids_must_be_lowercase_and_canonical():
    upper = ID.upper()
    assert messages(id=upper) == [
        f"id: '{upper}' is not a valid UUID "
        "(expected lowercase 8-4-4-4-12 hex, like fd9b1113-4bd2-4dad-8631-a95ba035dfda)"
    ]
    assert len(messages(id=ID.replace("-", ""))) == 1
    assert messages(id=7) == ["id: expected a string, got integer 7"]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"name": None}, "name: expected a string, got null"),
        ({"name": "  "}, "name must not be empty or blank"),
        ({"description": 2024}, "description: expected a string, got integer 2024"),
        ({"signupEnabled": "yes"}, "signupEnabled: expected a boolean, got string 'yes'"),
        ({"signupEnabled": {}}, "signupEnabled: expected a boolean, got a mapping"),
        ({"fhirVersion": 4}, "fhirVersion: expected r4 or r5, got integer 4"),
        ({"auth": None}, "auth: expected a mapping, got null"),
        ({"auth": {}}, "auth: give accessTokenEnv, or clientIdEnv and clientSecretEnv"),
        ({"auth": {"clientSecretEnv": "S"}}, "auth: clientSecretEnv needs clientIdEnv as well"),
        (
            {"auth": {"accessTokenEnv": "T", "clientIdEnv": "I", "clientSecretEnv": "S"}},
            "auth: give accessTokenEnv, or clientIdEnv and clientSecretEnv, not both",
        ),
        ({"auth": {"token": "T"}}, "unknown key 'token' in auth"),
    ],
)
def test_messages(fields, expected):
    assert messages(**fields) == [expected]


def test_missing_id_is_at_the_document():
    assert check({"name": "x"}) == [Finding((), "missing required key 'id'")]


def test_a_pasted_secret_is_never_echoed():
    secret = "sk_live_51H8dJ2eZvKYlo2C"  # a valid env name shape would pass: make it not
    found = messages(auth={"accessTokenEnv": secret + "-x"}) + messages(
        auth={"clientIdEnv": 12345678, "clientSecretEnv": "p@ss word"}
    )
    assert found == [
        "auth.accessTokenEnv must be the NAME of an environment variable "
        "(letters, digits and _, like SANDBOX_CLIENT_SECRET), not its value",
        "auth.clientIdEnv: expected a string, got integer",
        "auth.clientSecretEnv must be the NAME of an environment variable "
        "(letters, digits and _, like SANDBOX_CLIENT_SECRET), not its value",
    ]
    assert not any(secret in line or "p@ss" in line or "12345678" in line for line in found)


def test_long_values_are_shortened():
    (message,) = messages(signupEnabled="x" * 500)
    assert message == "signupEnabled: expected a boolean, got string '" + "x" * 59 + "…'"


def test_inlining_refs_keeps_every_rule():
    # The validator runs on the inlined schema: it must accept and reject the same documents.
    schema = load_schema()
    inlined = inline_refs(schema, schema["$defs"])
    assert "$ref" not in json.dumps(inlined)
    assert inlined["properties"]["id"]["pattern"] == schema["$defs"]["uuid"]["pattern"]
    assert inlined["properties"]["id"]["description"] == schema["properties"]["id"]["description"]
    plain = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    documents = [
        {"id": ID, "defaultPatientRole": {"id": "x", "nme": 1}, "auth": {"clientIdEnv": "a b"}},
        {"id": "nope", "name": "", "defaultSSOUserRole": 3, "sandbox": False},
        {"id": ID, "defaultPatientRole": "Patient", "auth": {"accessTokenEnv": "T"}},
    ]
    for document in documents:
        expected = sorted((list(e.absolute_path), e.validator) for e in plain.iter_errors(document))
        got = sorted(
            (list(e.absolute_path), e.validator) for e in validator().iter_errors(document)
        )
        assert got == expected
