# ruff: noqa: E501  (the expected lines are whole messages, as a user reads them)
"""What validate says about the kinds of SPEC section 9: each case a fixture, one located
line each (FILE:LINE:COL), exit 1, nothing read from any API."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from reconciler.cli import cli

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "objects"

# Every file in tests/fixtures/objects and what validate says about it (after FILE:).
EXPECTED = {
    "empty-name.yaml": [
        "3:3: roles: an object's name must not be empty or blank",
    ],
    "kind-as-list.yaml": [
        "3:3: roles: expected a mapping from role name to its fields (roles: {Patient: {description: ...}}), got a list",
    ],
    "null-field.yaml": [
        "3:58: applications.Portal.logoUri: null is not a value here: omit the field to leave it unmanaged",
    ],
    "policy-shape.yaml": [
        "6:11: missing required key 'action' in roles.Patient.accessPolicy.rule.0",
    ],
    "prune-absent-kind.yaml": [
        "3:16: prune: applications is not in this file, so there is nothing to keep; write `applications: {}` to manage it as empty (deleting every live one)",
    ],
    "prune-repeated.yaml": [
        "3:16: prune: roles is listed twice",
    ],
    "prune-unknown.yaml": [
        "3:16: prune.1: expected roles, applications, m2mClients, secrets, buckets or zambdas, got 'users'",
    ],
    "read-only-field.yaml": [
        "3:13: roles.Patient.id is read-only: it is set by Oystehr and cannot be managed here",
        "5:9: m2mClients.job.clientId is read-only: it is set by Oystehr and cannot be managed here",
        "5:24: m2mClients.job.profile is read-only: it is set by Oystehr and cannot be managed here",
    ],
    "rename-chain.yaml": [
        "3:24: roles.Nurse.renamedFrom: 'Carer' is itself renamed from 'Aide'; renames do not chain: rename one step at a time",
    ],
    "rename-declared.yaml": [
        "3:24: roles.Nurse.renamedFrom: 'Staff' is declared in this file too; an object cannot be both renamed and kept",
    ],
    "rename-empty.yaml": [
        "3:24: roles.Nurse.renamedFrom: an object's name must not be empty or blank",
    ],
    "rename-itself.yaml": [
        "3:24: roles.Nurse.renamedFrom names the object itself",
    ],
    "rename-shared.yaml": [
        "4:24: roles.Carer.renamedFrom: 'Nurse' is renamed from 'Old' already; one object can be renamed into only one",
    ],
    "secret-field.yaml": [
        "3:27: m2mClients.job.secret: a client secret is never set here; to store one in a secret, write secrets: {NAME: {valueFrom: {m2mClient: CLIENT, field: clientSecret}}}",
    ],
    "unknown-field.yaml": [
        "3:49: unknown key 'colour' in applications.Portal",
    ],
}


def test_every_fixture_is_listed():
    assert sorted(path.name for path in FIXTURES.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_object_fixture(name, monkeypatch):
    monkeypatch.chdir(FIXTURES)
    result = CliRunner().invoke(cli, ["validate", name])
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [f"{name}:{line}" for line in EXPECTED[name]]


def test_a_valid_file_with_every_kind(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(
        """id: 0b7a1f7e-5a52-4a5e-9b1c-2f0c8f1d4e01
defaultPatientRole: Patient
roles:
  Patient:
    description: People who sign up
    accessPolicy: {rule: [{resource: "FHIR:Patient:*", action: [FHIR:Read], effect: Allow}]}
  Front Desk: {renamedFrom: FrontDesk}
  Empty:
applications:
  Portal: {allowedCallbackUrls: [https://portal.example.com/cb], mfaEnabled: false}
m2mClients:
  backend: {roles: [Front Desk, {id: 31fcd69e-1b6b-41f1-a7b5-a1a20d976a89}], jwksUrl: ""}
prune: [roles, m2mClients]
"""
    )
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 0, result.output


def test_each_kinds_declaration_and_its_schema_agree():
    """The fields a Kind writes are the ones its schema allows, and its read-only fields the
    ones the schema refuses as read-only."""
    from reconciler.kinds import KINDS
    from reconciler.schema import load_schema

    defs = load_schema()["$defs"]
    for kind in KINDS:
        object_schema = defs[f"{kind.name}Object"]
        refused = {
            name
            for name, sub in object_schema["properties"].items()
            if sub.get("$ref") == "#/$defs/readOnlyField"
        }
        assert refused == set(kind.read_only), kind.name
        writable = set(object_schema["properties"]) - refused - {"renamedFrom"}
        writable -= {
            name
            for name, sub in object_schema["properties"].items()
            if sub.get("$ref") == "#/$defs/secretField" or sub.get("not") == {}
        }
        assert writable == set(kind.write_fields) - {"name"} | set(kind.local_fields), kind.name
        assert {f"{kind.api_name(name)}" for name in kind.api_names} <= set(
            object_schema["properties"]
        ), kind.name
