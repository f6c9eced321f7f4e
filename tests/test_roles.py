"""Roles as code (SPEC section 9), end to end against the emulator: reads, writes, names as
identity, renamedFrom, references by name, policies as sets, prune, saved plans."""

import json

import pytest
from e2e import run, write
from objects_e2e import (
    FRONT_DESK,
    HELD,
    LEGACY,
    PID,
    STAFF,
    STAFF_POLICY,
    api,
    objects_emulator,
    project,
)

STAFF_FILE = """
  Staff:
    description: Staff
    accessPolicy:
      rule:
        - {resource: "FHIR:Encounter:*", action: "FHIR:Read", effect: Allow}
        - {resource: "FHIR:Patient:*", action: ["FHIR:Read"], effect: Allow}
"""


@pytest.fixture
def emu():
    with objects_emulator() as running:
        yield running


def test_an_in_sync_plan_reads_the_project_the_role_list_and_one_get_per_role_with_fields(
    repo, emu
):
    # Staff manages a policy (one GET); Legacy manages only its name (the list says it).
    project(repo, "roles:" + STAFF_FILE + "  Legacy: {}\n")
    emu.reset_stats()
    result = run(["plan", "--detailed-exitcode"], emu)
    assert result.exit_code == 0, result.output
    assert emu.stats() == {
        "GET /v1/project": 1,
        "GET /v1/iam/role": 1,
        f"GET /v1/iam/role/{STAFF}": 1,
    }
    assert "not managed (left alone; prune deletes them): role FrontDesk, role Held" in (
        result.stdout
    )


def test_policies_compare_as_sets_of_rules(repo, emu):
    # Rules in another order, a list of one written as a string: the same policy.
    project(
        repo,
        """roles:
  Staff:
    accessPolicy:
      rule:
        - {resource: ["FHIR:Encounter:*"], action: ["FHIR:Read"], effect: Allow}
        - {resource: "FHIR:Patient:*", action: "FHIR:Read", effect: Allow}
""",
    )
    assert run(["plan", "--detailed-exitcode"], emu).exit_code == 0


def test_apply_writes_one_request_per_changed_object_and_one_settings_patch(repo, emu):
    project(
        repo,
        "signupEnabled: true\nroles:"
        + STAFF_FILE.replace('action: ["FHIR:Read"]', 'action: ["FHIR:Read", "FHIR:Update"]')
        + "  Legacy: {description: kept for now}\n",
    )
    plan = run(["plan"], emu)
    assert plan.exit_code == 0
    assert (
        "        - accessPolicy rule Allow FHIR:Read on FHIR:Patient:*\n"
        "        + accessPolicy rule Allow FHIR:Read, FHIR:Update on FHIR:Patient:*\n"
    ) in plan.stdout
    assert '    ~ role Legacy\n        ~ description: null -> "kept for now"\n' in plan.stdout
    assert plan.stdout.endswith(
        "Plan: 1 to change, 0 unchanged, 0 errors. Objects: 0 to add, 2 to change, 0 to destroy.\n"
    )
    emu.reset_stats()
    result = run(["apply", "--yes"], emu)
    assert result.exit_code == 0, result.output
    writes = {k: v for k, v in emu.stats().items() if not k.startswith("GET")}
    assert writes == {
        f"PATCH /v1/iam/role/{STAFF}": 1,
        f"PATCH /v1/iam/role/{LEGACY}": 1,
        "PATCH /v1/project": 1,
    }
    assert run(["plan", "--detailed-exitcode"], emu).exit_code == 0
    assert api(emu, "GET", f"/iam/role/{LEGACY}")["description"] == "kept for now"


def test_a_default_role_may_name_a_role_the_same_plan_creates(repo, emu):
    project(
        repo,
        """defaultPatientRole: Patient
roles:
  Patient:
    description: People who sign up
    accessPolicy: {rule: [{resource: "FHIR:Patient:*", action: FHIR:Read, effect: Allow}]}
""",
    )
    plan = run(["plan", "--format", "json"], emu)
    doc = json.loads(plan.stdout)["projects"][0]
    ref = {"ref": {"kind": "role", "name": "Patient"}}
    assert doc["patch"] == {"defaultPatientRoleId": ref}
    assert doc["objects"][0]["action"] == "create" and doc["objects"][0]["id"] is None
    text = run(["plan"], emu).stdout
    assert "~ defaultPatientRole: FrontDesk (" in text
    assert "-> Patient (created by this plan)" in text
    emu.reset_stats()
    result = run(["apply", "--yes"], emu)
    assert result.exit_code == 0, result.output
    writes = {k: v for k, v in emu.stats().items() if not k.startswith("GET")}
    assert writes == {"POST /v1/iam/role": 1, "PATCH /v1/project": 1}
    live = api(emu, "GET", "/project")
    assert live["defaultPatientRole"]["name"] == "Patient"
    assert run(["plan", "--detailed-exitcode"], emu).exit_code == 0


def test_renamed_from_renames_in_place_and_sends_no_settings_write(repo, emu):
    # FrontDesk is the default patient role: renaming it changes no id, so no PATCH /project.
    project(
        repo, "defaultPatientRole: Front Desk\nroles:\n  Front Desk: {renamedFrom: FrontDesk}\n"
    )
    text = run(["plan"], emu).stdout
    assert "    ~ role Front Desk (renamed from FrontDesk)\n" in text
    assert "defaultPatientRole" not in text
    emu.reset_stats()
    assert run(["apply", "--yes"], emu).exit_code == 0
    writes = {k: v for k, v in emu.stats().items() if not k.startswith("GET")}
    assert writes == {f"PATCH /v1/iam/role/{FRONT_DESK}": 1}
    assert api(emu, "GET", f"/iam/role/{FRONT_DESK}")["name"] == "Front Desk"
    # Only the new name live now: nothing to do.
    assert run(["plan", "--detailed-exitcode"], emu).exit_code == 0


def test_renamed_from_with_both_names_live_is_an_error_and_with_neither_a_create(repo, emu):
    project(repo, "roles:\n  Staff: {renamedFrom: Legacy}\n  Nurse: {renamedFrom: Gone}\n")
    result = run(["plan", "--format", "json"], emu)
    assert result.exit_code == 1
    error = json.loads(result.stdout)["projects"][0]["error"]
    assert "role 'Staff' is renamedFrom 'Legacy', but both names are live" in error
    project(repo, "roles:\n  Nurse: {renamedFrom: Gone}\n")
    doc = json.loads(run(["plan", "--format", "json"], emu).stdout)["projects"][0]
    assert [(o["action"], o["name"]) for o in doc["objects"]] == [("create", "Nurse")]


def test_prune_deletes_unnamed_roles_but_not_held_or_default_ones(repo, emu):
    # FrontDesk is the default patient role, Held has 2 members, Staff is held by old-job.
    project(repo, "roles:\n  Legacy: {}\nprune: [roles]\n")
    result = run(["plan"], emu)
    assert result.exit_code == 1
    assert "role 'FrontDesk' cannot be pruned: it is still the defaultPatientRole" in result.stdout
    assert "role 'Held' cannot be pruned: held by 2 user(s), developer(s) or M2M client(s)" in (
        result.stdout
    )
    assert "role 'Staff' cannot be pruned: held by 1 user(s)" in result.stdout
    emu.reset_stats()
    assert run(["apply", "--yes"], emu).exit_code == 1
    assert all(k.startswith("GET") for k in emu.stats())  # a plan error writes nothing


def test_prune_deletes_a_free_role_and_names_the_managed_client_that_holds_one(repo, emu):
    api(emu, "PATCH", "/project", {"defaultPatientRoleId": None})
    api(emu, "PATCH", f"/iam/role/{HELD}", {"name": "Held"})
    project(
        repo,
        "roles:\n  FrontDesk: {}\n  Held: {}\nm2mClients:\n  old-job: {roles: [Staff]}\n"
        "prune: [roles]\n",
    )
    result = run(["plan"], emu)
    assert "role 'Staff' cannot be pruned: M2M client(s) old-job still hold it" in result.stdout
    project(repo, "roles:\n  FrontDesk: {}\n  Held: {}\n  Staff: {}\nprune: [roles]\n")
    plan = run(["plan"], emu)
    assert "    - role Legacy\n" in plan.stdout
    emu.reset_stats()
    assert run(["apply", "--yes"], emu).exit_code == 0
    assert {k: v for k, v in emu.stats().items() if not k.startswith("GET")} == {
        f"DELETE /v1/iam/role/{LEGACY}": 1
    }
    assert "Legacy" not in [r["name"] for r in api(emu, "GET", "/iam/role")]


def test_a_managed_name_held_by_two_live_roles_is_an_error(repo, emu):
    api(emu, "POST", "/iam/role", {"name": "Staff"})
    project(repo, "roles:\n  Staff: {description: x}\n")
    result = run(["plan"], emu)
    assert result.exit_code == 1
    assert "role 'Staff': 2 live roles have that name" in result.stdout


def test_a_role_reference_that_resolves_nowhere_lists_what_exists(repo, emu):
    project(repo, "defaultSSOUserRole: Nurse\nroles:\n  Patient: {}\n")
    result = run(["plan"], emu)
    assert result.exit_code == 1
    assert (
        "defaultSSOUserRole: no role named 'Nurse' in this Project "
        "(roles: FrontDesk, Held, Legacy, Patient, Staff)"
    ) in result.stdout


def test_a_saved_plan_rereads_only_what_it_changes_and_writes_each_once(repo, emu):
    project(repo, "roles:" + STAFF_FILE.replace("description: Staff", "description: All staff"))
    assert run(["plan", "--out", "plan.json"], emu).exit_code == 0
    emu.reset_stats()
    result = run(["apply", "--plan", "plan.json", "--yes"], emu)
    assert result.exit_code == 0, result.output
    assert emu.stats() == {
        "GET /v1/project": 1,
        f"GET /v1/iam/role/{STAFF}": 1,
        f"PATCH /v1/iam/role/{STAFF}": 1,
    }


def test_a_saved_plan_is_refused_when_an_object_changed_since(repo, emu):
    project(repo, "roles:" + STAFF_FILE.replace("description: Staff", "description: All staff"))
    assert run(["plan", "--out", "plan.json"], emu).exit_code == 0
    api(emu, "PATCH", f"/iam/role/{STAFF}", {"description": "someone else"})
    emu.reset_stats()
    result = run(["apply", "--plan", "plan.json", "--yes"], emu)
    assert result.exit_code == 1
    assert "stale plan" in result.stderr and "role 'Staff'" in result.stderr
    assert all(k.startswith("GET") for k in emu.stats())


def test_a_saved_plan_applies_a_created_role_and_the_default_that_names_it(repo, emu, tmp_path):
    project(repo, "defaultSSOUserRole: Nurse\nroles:\n  Nurse: {description: Nurses}\n")
    assert run(["plan", "--out", "plan.json"], emu).exit_code == 0
    emu.reset_stats()
    result = run(["apply", "--plan", "plan.json", "--yes"], emu)
    assert result.exit_code == 0, result.output
    # Re-read: the settings (is the plan stale?) and the role list (is the name still free?).
    assert emu.stats() == {
        "GET /v1/project": 1,
        "GET /v1/iam/role": 1,
        "POST /v1/iam/role": 1,
        "PATCH /v1/project": 1,
    }
    assert api(emu, "GET", "/project")["defaultSSOUserRole"]["name"] == "Nurse"


def test_a_saved_plan_is_refused_when_a_name_it_creates_was_taken_since(repo, emu):
    project(repo, "roles:\n  Nurse: {description: Nurses}\n")
    assert run(["plan", "--out", "plan.json"], emu).exit_code == 0
    api(emu, "POST", "/iam/role", {"name": "Nurse"})
    emu.reset_stats()
    result = run(["apply", "--plan", "plan.json", "--yes"], emu)
    assert result.exit_code == 1
    assert "stale plan" in result.stderr and "role 'Nurse' exists now" in result.stderr
    assert emu.stats() == {"GET /v1/project": 1, "GET /v1/iam/role": 1}


def _crafted(repo, edit) -> str:
    doc = json.loads((repo / "plan.json").read_text())
    edit(doc["projects"][0])
    from reconciler.plan import checksum

    doc["checksum"] = checksum(doc)
    (repo / "plan.json").write_text(json.dumps(doc))
    return doc


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda p: p.update(prune=[]), "though prune does not list roles"),
        (
            lambda p: p["objects"][0]["body"].update(name="Admin"),
            '"name" is not derived from any change',
        ),
        (
            lambda p: p["objects"][0].update(id="../../project"),
            "is not a valid UUID",
        ),
        (lambda p: p["objects"][0].update(kind="user"), '"user" is not a kind'),
    ],
)
def test_a_crafted_plan_with_objects_is_not_a_valid_plan(repo, emu, edit, reason):
    project(repo, "roles:\n  Staff: {}\n  FrontDesk: {}\n  Held: {}\nprune: [roles]\n")
    api(emu, "POST", "/iam/role", {"name": "Spare"})
    run(["plan", "--out", "plan.json"], emu)
    doc = json.loads((repo / "plan.json").read_text())
    deletes = [o for o in doc["projects"][0]["objects"] if o["action"] == "delete"]
    assert deletes, doc
    doc["projects"][0]["objects"] = deletes[:1]
    (repo / "plan.json").write_text(json.dumps(doc))
    _crafted(repo, edit)
    emu.reset_stats()
    result = run(["apply", "--plan", "plan.json", "--yes"], emu)
    assert result.exit_code == 1
    assert "not a valid plan file" in result.stderr and reason in result.stderr, result.stderr
    assert emu.stats() == {}


def test_a_version_1_plan_is_refused_with_a_message_to_plan_again(repo, emu):
    project(repo, "signupEnabled: true\n")
    run(["plan", "--out", "plan.json"], emu)
    doc = json.loads((repo / "plan.json").read_text())
    doc["formatVersion"] = 1
    from reconciler.plan import checksum

    doc["checksum"] = checksum(doc)
    (repo / "plan.json").write_text(json.dumps(doc))
    result = run(["apply", "--plan", "plan.json", "--yes"], emu)
    assert result.exit_code == 1
    assert "plan format 1 is not 3; make the plan again" in result.stderr


def test_export_writes_roles_with_policies_and_plans_clean(repo, emu):
    result = run(["export", "--project-id", PID, "--include", "settings,roles"], emu)
    assert result.exit_code == 0, result.output
    assert "prune" not in result.stdout
    write(repo, "projects/objects.yaml", result.stdout)
    import yaml

    doc = yaml.safe_load(result.stdout)
    assert doc["roles"]["Staff"] == {"description": "Staff", "accessPolicy": STAFF_POLICY}
    assert doc["defaultPatientRole"] == "FrontDesk"
    assert run(["plan", "--detailed-exitcode"], emu).exit_code == 0


def test_markdown_shows_objects_under_their_project_with_rules_one_per_line(repo, emu):
    project(
        repo,
        "defaultPatientRole: Nurse\nroles:"
        + STAFF_FILE.replace('action: ["FHIR:Read"]', 'action: ["FHIR:Read", "FHIR:Update"]')
        + "  Nurse: {description: Nurses}\n  Front Desk: {renamedFrom: FrontDesk}\n",
    )
    text = run(["plan", "--format", "markdown"], emu).stdout
    assert "; objects: 1 to add, 2 to change, 0 to destroy\n" in text
    assert "| `defaultPatientRole` | `FrontDesk` (`" in text
    assert "| `Nurse` (created by this plan) |" in text
    assert "<summary>roles: 1 to add, 2 to change</summary>" in text
    assert "| `Nurse` | `Nurses` | |\n" in text
    assert "- ✏️ `Front Desk` (renamed from `FrontDesk`)\n" in text
    assert (
        "- ✏️ `Staff`\n"
        "  - ➖ `accessPolicy` rule `Allow FHIR:Read on FHIR:Patient:*`\n"
        "  - ➕ `accessPolicy` rule `Allow FHIR:Read, FHIR:Update on FHIR:Patient:*`\n"
    ) in text
    assert "| | | roles | 1 | 2 | |\n" in text
    drift = run(["drift", "--format", "markdown"], emu).stdout
    assert "`accessPolicy` rule `Allow FHIR:Read on FHIR:Patient:*` (live only)" in drift
