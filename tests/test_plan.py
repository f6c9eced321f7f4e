"""diff() and the plan values: pure data in, pure data out."""

import json

import pytest

from reconciler.differ import diff, needs_role_lookup, normalise_live, unconverged
from reconciler.plan import (
    CHANGED,
    ERROR,
    UNCHANGED,
    Plan,
    ProjectPlan,
    checksum,
    fingerprint,
)

PID = "fd9b1113-4bd2-4dad-8631-a95ba035dfda"
PATIENT = {"id": "31fcd69e-1b6b-41f1-a7b5-a1a20d976a89", "name": "Patient"}
STAFF_A = {"id": "5167feba-7727-4d1c-8f2f-3493a61a1694", "name": "Staff"}
STAFF_B = {"id": "6d4b1c3a-0000-4000-8000-000000000002", "name": "Staff"}
ROLES = [PATIENT, STAFF_A, STAFF_B]
LIVE = {
    "id": PID,
    "name": "SANDBOX",
    "description": "Sandbox",
    "signupEnabled": False,
    "sandbox": True,
    "defaultPatientRole": PATIENT,
    "fhirVersion": "r4",
}


def test_normalise_live_fills_absent_roles_with_none():
    live = normalise_live(LIVE)
    assert live["defaultPatientRole"] == PATIENT
    assert live["defaultSSOUserRole"] is None
    assert "sandbox" not in live and "id" not in live


def test_absent_keys_are_unmanaged():
    plan = diff("p.yaml", {"id": PID, "signupEnabled": False}, LIVE)
    assert plan.status == UNCHANGED
    assert plan.managed_keys == ("signupEnabled",)
    assert plan.patch == {}


def test_each_plain_field_change_is_patched_by_its_own_name():
    desired = {"id": PID, "name": "SANDBOX 2", "description": "New", "signupEnabled": True}
    plan = diff("p.yaml", desired, LIVE)
    assert plan.status == CHANGED
    assert [c.to_dict() for c in plan.changes] == [
        {"field": "name", "before": "SANDBOX", "after": "SANDBOX 2", "source": None},
        {"field": "description", "before": "Sandbox", "after": "New", "source": None},
        {"field": "signupEnabled", "before": False, "after": True, "source": None},
    ]
    assert plan.patch == {"name": "SANDBOX 2", "description": "New", "signupEnabled": True}


def test_null_role_clears_and_absent_live_role_equals_null():
    plan = diff("p.yaml", {"id": PID, "defaultPatientRole": None}, LIVE)
    assert plan.patch == {"defaultPatientRoleId": None}
    assert plan.changes[0].before == PATIENT and plan.changes[0].after is None
    plan = diff("p.yaml", {"id": PID, "defaultSSOUserRole": None}, LIVE)
    assert plan.status == UNCHANGED


@pytest.mark.parametrize(
    "value", ["Patient", {"name": "Patient"}, {"id": PATIENT["id"]}, dict(PATIENT)]
)
def test_role_already_satisfied_needs_no_lookup(value):
    desired = {"id": PID, "defaultPatientRole": value}
    assert not needs_role_lookup(desired, normalise_live(LIVE))
    assert diff("p.yaml", desired, LIVE).status == UNCHANGED


def test_role_by_name_resolves_through_the_role_list():
    desired = {"id": PID, "defaultSSOUserRole": {"id": STAFF_A["id"]}}
    assert needs_role_lookup(desired, normalise_live(LIVE))
    plan = diff("p.yaml", desired, LIVE, ROLES)
    assert plan.patch == {"defaultSSOUserRoleId": STAFF_A["id"]}
    assert plan.changes[0].after == STAFF_A


def test_unknown_role_name_lists_the_roles_that_exist():
    plan = diff("p.yaml", {"id": PID, "defaultPatientRole": "Nurse"}, LIVE, ROLES)
    assert plan.status == ERROR
    assert plan.error == (
        "defaultPatientRole: no role named 'Nurse' in this Project (roles: Patient, Staff)"
    )


def test_ambiguous_role_name_asks_for_the_id():
    plan = diff("p.yaml", {"id": PID, "defaultSSOUserRole": "Staff"}, LIVE, ROLES)
    assert plan.status == ERROR
    assert "2 roles are named 'Staff'" in plan.error and "give the role as {id: ...}" in plan.error


def test_unknown_role_id_is_an_error():
    missing = "00000000-0000-4000-8000-000000000000"
    plan = diff("p.yaml", {"id": PID, "defaultSSOUserRole": {"id": missing}}, LIVE, ROLES)
    assert plan.error.startswith(f"defaultSSOUserRole: no role with id {missing}")


def test_id_and_mismatched_name_is_an_error():
    value = {"id": PATIENT["id"], "name": "Staff"}
    plan = diff("p.yaml", {"id": PID, "defaultPatientRole": value}, LIVE, ROLES)
    assert plan.error == f"defaultPatientRole: role {PATIENT['id']} is named 'Patient', not 'Staff'"


def test_fhir_version_is_asserted_never_patched():
    plan = diff("p.yaml", {"id": PID, "fhirVersion": "r5", "name": "X"}, LIVE)
    assert plan.status == ERROR
    assert plan.error == "fhirVersion is immutable: live r4, desired r5"
    assert plan.patch == {}
    assert diff("p.yaml", {"id": PID, "fhirVersion": "r4"}, LIVE).status == UNCHANGED


def test_errors_carry_the_location_when_given():
    plan = diff("p.yaml", {"id": PID, "fhirVersion": "r5"}, LIVE, locate=lambda k: "p.yaml:7:14")
    assert plan.error == "p.yaml:7:14: fhirVersion is immutable: live r4, desired r5"


def test_fingerprint_covers_only_managed_keys():
    live = normalise_live(LIVE)
    edited = normalise_live({**LIVE, "description": "hand edit"})
    assert fingerprint(live, ["signupEnabled"]) == fingerprint(edited, ["signupEnabled"])
    assert fingerprint(live, ["description"]) != fingerprint(edited, ["description"])


def test_plan_document_checksum_and_round_trip():
    changed = diff("a.yaml", {"id": PID, "signupEnabled": True}, LIVE, auth={"accessTokenEnv": "T"})
    failed = ProjectPlan.failed("b.yaml", "b-id", "boom")
    plan = Plan(
        api_url="http://x/v1", projects=(changed, failed), created_at="2026-01-01T00:00:00Z"
    )
    doc = plan.to_dict()
    assert doc["summary"] == {"changed": 1, "unchanged": 0, "errors": 1}
    body = {k: v for k, v in doc.items() if k != "checksum"}
    import hashlib

    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    assert doc["checksum"] == "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    assert checksum(doc) == doc["checksum"]
    again = Plan.from_dict(json.loads(json.dumps(doc)))
    assert again.to_dict() == doc
    assert doc["projects"][0]["auth"] == {"accessTokenEnv": "T"}


def test_unconverged_names_fields_the_answer_did_not_take():
    plan = diff("p.yaml", {"id": PID, "signupEnabled": True, "defaultPatientRole": None}, LIVE)
    assert unconverged(plan, {**LIVE, "signupEnabled": True, "defaultPatientRole": None}) == []
    assert unconverged(plan, LIVE) == ["signupEnabled", "defaultPatientRole"]
