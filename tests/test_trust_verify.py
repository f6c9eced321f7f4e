"""Issue 16, second part: `apply --plan` shows and writes only what it verified.

A plan file's checksum proves nothing about who wrote it. Each crafted plan here starts
from a real `plan --out` in a real git repository, is edited as an attacker would, and
is resealed (checksum recomputed, fingerprints taken from live), so only the checks of
`reconciler/verify.py` can catch it: the files of the plan's commit, the planning code,
and what apply reads live. Every refusal: exit 1, one line, and not one write.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from e2e import DEV_TOKEN, run, write
from objects_e2e import counts

from reconciler.emulator import serve
from reconciler.emulator.seed import seed_m2m_id

PROD = "4d1a6c2e-8b3f-4e5a-9c7d-1e2f3a4b5c6d"
SANDBOX = "5e2b7d3f-9c40-4f6b-8d8e-2f3a4b5c6d7e"
ADMIN = "6f3c8e40-ad51-4a7c-9e9f-3a4b5c6d7e8f"
READER = "704d9f51-be62-4b8d-8fa0-4b5c6d7e8f90"
TMP_CLIENT = seed_m2m_id("tmp-test-client")
LEGACY_EXPORT = seed_m2m_id("legacy-export")

READ_PATIENTS = {"resource": "FHIR:Patient", "action": "FHIR:Read", "effect": "Allow"}
DENY_OBSERVATIONS = {"resource": "FHIR:Observation", "action": "FHIR:Read", "effect": "Deny"}
EVERYTHING = {"resource": "*", "action": "*", "effect": "Allow"}

SEED: dict[str, Any] = {
    "projects": [
        {
            "id": PROD,
            "name": "PRODUCTION",
            "description": "Production",
            "signupEnabled": False,
            "fhirVersion": "r4",
            "roles": [
                {
                    "id": ADMIN,
                    "name": "Admin",
                    "accessPolicy": {"rule": [READ_PATIENTS, DENY_OBSERVATIONS]},
                }
            ],
            "m2mClients": [
                {
                    "clientId": "tmp-test-client",
                    "clientSecret": "tmp-test-secret-1a2b",
                    "name": "tmp-test-client",
                },
                {
                    "clientId": "legacy-export",
                    "clientSecret": "legacy-export-secret-3c4d",
                    "name": "legacy-export",
                    "description": "Nightly export",
                },
            ],
        },
        {
            "id": SANDBOX,
            "name": "SANDBOX",
            "description": "Sandbox",
            "signupEnabled": False,
            "fhirVersion": "r4",
            "roles": [{"id": READER, "name": "Reader"}],
        },
    ],
    "developers": [{"accessToken": DEV_TOKEN, "projects": [PROD, SANDBOX]}],
}

# The reviewed change: production's description, Admin loses its Deny rule, the temporary
# client goes; sandbox turns signup on (from a fragment) and changes its description.
PRODUCTION_FILE = f"""\
id: {PROD}
description: Production, reviewed
roles:
  Admin:
    accessPolicy:
      rule:
        - {{resource: "FHIR:Patient", action: "FHIR:Read", effect: Allow}}
m2mClients:
  legacy-export: {{description: Nightly export}}
prune: [m2mClients]
"""
SANDBOX_FILE = f"""\
id: {SANDBOX}
include: [../base/common.yaml]
description: Sandbox, reviewed
"""
COMMON_FILE = "signupEnabled: true\n"

# What apply --plan of that plan reads and writes, exactly.
READS = {
    "GET /v1/project": 2,
    "GET /v1/iam/role/{id}": 1,
    "GET /v1/m2m/{id}": 1,
}
WRITES = {
    "PATCH /v1/project": 2,
    "PATCH /v1/iam/role/{id}": 1,
    "DELETE /v1/m2m/{id}": 1,
}


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


@pytest.fixture
def emu():
    with serve(json.loads(json.dumps(SEED))) as running:
        yield running


@pytest.fixture
def checkout(repo: Path) -> Path:
    """A git repository holding the reviewed files, committed: what the workflow checks out."""
    git(repo, "init", "-q", "-b", "main")
    write(repo, "projects/production.yaml", PRODUCTION_FILE)
    write(repo, "projects/sandbox.yaml", SANDBOX_FILE)
    write(repo, "base/common.yaml", COMMON_FILE)
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "Review: production and sandbox")
    return repo


def planned(repo: Path, emu, *args: str) -> dict[str, Any]:
    result = run(["plan", "--out", "plan.json", *args], emu)
    assert result.exit_code == 0, result.output
    return json.loads((repo / "plan.json").read_text())


def sha256_of(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def forge(repo: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Edit plan.json as an attacker would, and reseal it (anyone can)."""
    doc = json.loads((repo / "plan.json").read_text())
    edit(doc)
    body = {k: v for k, v in doc.items() if k != "checksum"}
    (repo / "plan.json").write_text(json.dumps({**body, "checksum": sha256_of(body)}))


def entry(doc: dict[str, Any], kind: str, name: str) -> dict[str, Any]:
    objects = doc["projects"][0]["objects"]
    return next(o for o in objects if (o["kind"], o["name"]) == (kind, name))


def refused(repo: Path, emu) -> str:
    """apply --plan of the forged plan: exit 1, one line, nothing shown, nothing written."""
    emu.reset_stats()
    result = run(["apply", "--plan", "plan.json", "--yes"], emu)
    assert result.exit_code == 1
    assert result.stdout == "" and result.stderr.count("\n") == 1, result.output
    assert not [k for k in emu.stats() if not k.startswith("GET ")], emu.stats()
    return result.stderr


# --- the honest path ------------------------------------------------------------------


def test_a_plan_made_in_git_records_its_commit_applies_and_converges(checkout, emu):
    doc = planned(checkout, emu)
    assert doc["formatVersion"] == 3
    assert doc["commit"] == git(checkout, "rev-parse", "HEAD") and doc["filesHash"] is None
    emu.reset_stats()
    result = run(["apply", "--plan", "plan.json", "--yes"], emu)
    assert result.exit_code == 0, result.output
    # Shown before writing: the plan apply verified, Projects by their live names.
    assert result.stdout.startswith(
        f"~ PRODUCTION ({PROD})  projects/production.yaml\n"
        '    ~ description: "Production" -> "Production, reviewed"\n'
        "    # roles: 1 to change\n"
        "    ~ role Admin\n"
        "        - accessPolicy rule Deny FHIR:Read on FHIR:Observation\n"
        "    # m2mClients: 1 to destroy\n"
        "    - m2m tmp-test-client\n\n"
        f"~ SANDBOX ({SANDBOX})  projects/sandbox.yaml\n"
        '    ~ description: "Sandbox" -> "Sandbox, reviewed"\n'
        "    ~ signupEnabled: false -> true (from base/common.yaml:1)\n\n"
    ), result.stdout
    assert result.stdout.endswith(
        f"+ PRODUCTION ({PROD})  projects/production.yaml: applied\n"
        "    ~ role Admin: updated\n"
        "    - m2m tmp-test-client: deleted\n"
        f"+ SANDBOX ({SANDBOX})  projects/sandbox.yaml: applied\n"
        "Apply: 2 applied, 0 unchanged, 0 failed.\n"
    )
    # Re-read once what it changes, then write each once.
    assert counts(emu) == {**READS, **WRITES}
    assert run(["plan", "--detailed-exitcode"], emu).exit_code == 0


def test_a_plan_of_uncommitted_files_records_their_hash_and_applies(checkout, emu):
    write(checkout, "base/common.yaml", "signupEnabled: true\ndescription: Sandbox, not yet\n")
    write(checkout, "projects/sandbox.yaml", f"id: {SANDBOX}\ninclude: [../base/common.yaml]\n")
    doc = planned(checkout, emu)
    assert doc["commit"] is None and doc["filesHash"].startswith("sha256:")
    emu.reset_stats()
    result = run(["apply", "--plan", "plan.json", "--yes"], emu)
    assert result.exit_code == 0, result.output
    assert counts(emu) == {**READS, **WRITES}
    assert run(["plan", "--detailed-exitcode"], emu).exit_code == 0


def test_outside_git_the_plan_records_the_hash_too(repo, emu):
    write(repo, "projects/sandbox.yaml", f"id: {SANDBOX}\ndescription: Sandbox, reviewed\n")
    doc = planned(repo, emu)
    assert doc["commit"] is None and doc["filesHash"].startswith("sha256:")
    result = run(["apply", "--plan", "plan.json", "--yes"], emu)
    assert result.exit_code == 0, result.output


# --- crafted plans -----------------------------------------------------------------------


def forged_before(doc: dict[str, Any]) -> None:
    # Shows "removed rule Deny FHIR:Read" while its body grants Allow * on *.
    admin = entry(doc, "role", "Admin")
    admin["changes"][0]["before"] = {"rule": [EVERYTHING, DENY_OBSERVATIONS]}
    admin["changes"][0]["after"] = admin["body"]["accessPolicy"] = {"rule": [EVERYTHING]}


def test_a_forged_before_is_refused_and_nothing_is_written(checkout, emu):
    planned(checkout, emu)
    forge(checkout, forged_before)
    assert refused(checkout, emu) == (
        f"Error: plan.json: not a valid plan file: projects/production.yaml ({PROD}): role "
        "'Admin': accessPolicy: before is [Allow * on *; Deny FHIR:Read on FHIR:Observation] "
        "in the plan; live it is [Allow FHIR:Read on FHIR:Patient; Deny FHIR:Read on "
        "FHIR:Observation]; nothing was applied\n"
    )
    assert counts(emu) == READS


def test_a_delete_of_another_client_under_a_harmless_name_is_refused(checkout, emu):
    def delete_legacy_export(doc: dict[str, Any]) -> None:
        # Shows "- m2m tmp-test-client"; the id is legacy-export's, the fingerprint its live one.
        tmp = entry(doc, "m2m", "tmp-test-client")
        tmp["id"], tmp["liveFingerprint"] = LEGACY_EXPORT, sha256_of({"name": "legacy-export"})

    planned(checkout, emu)
    forge(checkout, delete_legacy_export)
    assert refused(checkout, emu) == (
        f"Error: plan.json: not a valid plan file: projects/production.yaml ({PROD}): m2m "
        f"'tmp-test-client': the plan would delete the m2m with id {LEGACY_EXPORT}, which is "
        '"legacy-export" live, not "tmp-test-client"; nothing was applied\n'
    )
    assert counts(emu) == READS
    assert sorted(c["name"] for c in emu.store.list_m2m(PROD)) == [
        "legacy-export",
        "tmp-test-client",
    ]


def label_as_sandbox(doc: dict[str, Any]) -> None:
    production = doc["projects"][0]
    production["name"], production["file"] = "SANDBOX", "projects/sandbox.yaml"


def name_as_sandbox(doc: dict[str, Any]) -> None:
    doc["projects"][0]["name"] = "SANDBOX"


@pytest.mark.parametrize(
    ("edit", "reason", "reads"),
    [
        (
            label_as_sandbox,
            f"projects[0].file: projects/sandbox.yaml is the file of Project {SANDBOX}, not {PROD}",
            {},
        ),
        (
            lambda doc: doc["projects"][0].update(auth={"accessTokenEnv": "SANDBOX_TOKEN"}),
            "projects[0].auth: not the auth projects/production.yaml gives",
            {},
        ),
        (
            name_as_sandbox,
            f'projects/production.yaml ({PROD}): the Project is named "PRODUCTION" live, not '
            '"SANDBOX" as the plan says; nothing was applied',
            {"GET /v1/project": 1, "GET /v1/iam/role/{id}": 1, "GET /v1/m2m/{id}": 1},
        ),
    ],
)
def test_a_forged_project_label_is_refused(checkout, emu, edit, reason, reads):
    planned(checkout, emu, "--project", "production")
    forge(checkout, edit)
    assert refused(checkout, emu) == f"Error: plan.json: not a valid plan file: {reason}\n"
    assert counts(emu) == reads


def grant_everything(doc: dict[str, Any]) -> None:
    admin = entry(doc, "role", "Admin")
    admin["changes"][0]["after"] = admin["body"]["accessPolicy"] = {"rule": [EVERYTHING]}


def another_description(doc: dict[str, Any]) -> None:
    production = doc["projects"][0]
    production["changes"][0]["after"] = production["patch"]["description"] = "pwned"


def create_a_backdoor(doc: dict[str, Any]) -> None:
    changes = [
        {"field": "name", "before": None, "after": "Backdoor", "source": None},
        {"field": "accessPolicy", "before": None, "after": {"rule": [EVERYTHING]}, "source": None},
    ]
    doc["projects"][0]["objects"].insert(
        0,
        {
            "kind": "role",
            "name": "Backdoor",
            "id": None,
            "action": "create",
            "changes": changes,
            "body": {"name": "Backdoor", "accessPolicy": {"rule": [EVERYTHING]}},
            "liveFingerprint": None,
            "source": "projects/production.yaml:4",
        },
    )
    doc["objectSummary"]["add"] += 1


def moved_source(doc: dict[str, Any]) -> None:
    # The value is the file's own; the plan says a fragment gives it.
    doc["projects"][0]["changes"][0]["source"] = "base/common.yaml:1"


@pytest.mark.parametrize(
    ("edit", "reason", "reads"),
    [
        (
            grant_everything,
            "role 'Admin': accessPolicy: after is [Allow * on *] in the plan; the files give "
            "[Allow FHIR:Read on FHIR:Patient]",
            READS,
        ),
        (
            another_description,
            'description: after is "pwned" in the plan; the files give "Production, reviewed"',
            READS,
        ),
        (
            create_a_backdoor,
            "role 'Backdoor': the plan would create it; the files and what is live change nothing",
            {**READS, "GET /v1/iam/role": 1},
        ),
        (
            moved_source,
            'description: the plan says it comes from "base/common.yaml:1"; it comes from '
            '"projects/production.yaml:2"',
            READS,
        ),
    ],
)
def test_an_entry_the_files_do_not_give_is_refused(checkout, emu, edit, reason, reads):
    planned(checkout, emu)
    forge(checkout, edit)
    assert refused(checkout, emu) == (
        f"Error: plan.json: not a valid plan file: projects/production.yaml ({PROD}): {reason}; "
        "nothing was applied\n"
    )
    assert counts(emu) == reads


def test_a_reference_that_no_longer_resolves_is_a_stale_plan(checkout, emu):
    write(
        checkout,
        "projects/sandbox.yaml",
        SANDBOX_FILE + "m2mClients:\n  reader-job: {roles: [Reader]}\n",
    )
    git(checkout, "commit", "-q", "-am", "A job that reads")
    planned(checkout, emu, "--project", "sandbox")
    emu.store.delete_role(SANDBOX, READER)  # by hand, after the plan
    emu.reset_stats()
    result = run(["apply", "--plan", "plan.json", "--yes"], emu)
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: stale plan: live values changed since the plan was made: "
        f"projects/sandbox.yaml ({SANDBOX}): now projects/sandbox.yaml:5:3: m2m 'reader-job': "
        "roles: no role named 'Reader' in this Project (roles: (none)); nothing was applied. "
        "Make a new plan and review it.\n"
    )
    assert counts(emu) == {"GET /v1/project": 1, "GET /v1/m2m/v2/list": 1, "GET /v1/iam/role": 1}


# --- the files the plan was made from ------------------------------------------------------


def test_a_plan_whose_commit_is_not_head_is_refused(checkout, emu):
    doc = planned(checkout, emu)
    write(checkout, "projects/sandbox.yaml", SANDBOX_FILE + "signupEnabled: false\n")
    git(checkout, "commit", "-q", "-am", "A later merge")
    head = git(checkout, "rev-parse", "HEAD")
    assert refused(checkout, emu) == (
        f"Error: plan.json: not a valid plan file: it was made at commit {doc['commit']}, and "
        f"HEAD is {head}; check out that commit, or make a new plan\n"
    )
    assert emu.stats() == {}


def test_a_file_changed_since_the_commit_is_refused(checkout, emu):
    doc = planned(checkout, emu)
    write(checkout, "base/common.yaml", "signupEnabled: false\n")
    assert refused(checkout, emu) == (
        f"Error: plan.json: not a valid plan file: it was made from the files of commit "
        f"{doc['commit']}, and base/common.yaml differs from that commit here (uncommitted "
        "changes)\n"
    )
    assert emu.stats() == {}


def test_apply_reads_only_the_files_of_the_projects_it_changes(checkout, emu):
    # Sandbox in sync: the plan changes production only. A committed plan's apply loads the
    # changed Projects' files alone, so sandbox's file, unreadable now, is never read.
    write(checkout, "projects/sandbox.yaml", f"id: {SANDBOX}\ndescription: Sandbox\n")
    git(checkout, "commit", "-q", "-am", "Sandbox as it is")
    doc = planned(checkout, emu)
    assert [p["status"] for p in doc["projects"]] == ["changed", "unchanged"]
    write(checkout, "projects/sandbox.yaml", "id: [\n")
    result = run(["apply", "--plan", "plan.json", "--yes"], emu)
    assert result.exit_code == 0, result.output
    assert result.stdout.endswith(
        f"+ PRODUCTION ({PROD})  projects/production.yaml: applied\n"
        "    ~ role Admin: updated\n"
        "    - m2m tmp-test-client: deleted\n"
        "Apply: 1 applied, 1 unchanged, 0 failed.\n"
    ), result.stdout


def test_a_plan_of_uncommitted_files_applied_after_they_changed_is_refused(checkout, emu):
    write(checkout, "projects/sandbox.yaml", SANDBOX_FILE.replace("reviewed", "draft"))
    assert planned(checkout, emu)["commit"] is None
    write(checkout, "projects/sandbox.yaml", SANDBOX_FILE.replace("reviewed", "changed again"))
    assert refused(checkout, emu) == (
        "Error: plan.json: not a valid plan file: the files it was made from changed since "
        "(filesHash does not match projects/production.yaml, projects/sandbox.yaml, "
        "base/common.yaml)\n"
    )
    assert emu.stats() == {}


def test_a_version_2_plan_is_refused_with_a_message_to_plan_again(checkout, emu):
    planned(checkout, emu)

    def version_2(doc: dict[str, Any]) -> None:
        doc["formatVersion"] = 2
        del doc["commit"], doc["filesHash"]

    forge(checkout, version_2)
    assert refused(checkout, emu) == (
        "Error: plan.json: plan format 2 is not 3; make the plan again with this version of "
        "reconciler\n"
    )
    assert emu.stats() == {}


def test_a_plan_with_neither_commit_nor_hash_is_refused(checkout, emu):
    planned(checkout, emu)
    forge(checkout, lambda doc: doc.update(commit=None))
    assert refused(checkout, emu) == (
        "Error: plan.json: not a valid plan file: a plan records either commit or filesHash "
        "(and only one)\n"
    )
    assert emu.stats() == {}


def test_a_saved_rename_and_role_references_verify_and_apply(repo):
    # The recomputation resolves references as plan did: a role renamed in the same plan,
    # the default role naming it by its new name, a client given roles by name.
    from objects_e2e import FRONT_DESK, JOB_CLIENT, STAFF, api, objects_emulator, project

    project(
        repo,
        "defaultPatientRole: Front Desk\n"
        "roles:\n  Front Desk: {renamedFrom: FrontDesk}\n  Staff: {}\n"
        "m2mClients:\n  old-job: {roles: [Front Desk, Staff]}\n",
    )
    with objects_emulator() as emu:
        planned(repo, emu)
        emu.reset_stats()
        result = run(["apply", "--plan", "plan.json", "--yes"], emu)
        assert result.exit_code == 0, result.output
        assert "    ~ role Front Desk (renamed from FrontDesk)\n" in result.stdout
        assert counts(emu) == {
            "GET /v1/project": 1,
            "GET /v1/iam/role": 1,
            "GET /v1/iam/role/{id}": 1,
            "GET /v1/m2m/{id}": 1,
            "PATCH /v1/iam/role/{id}": 1,
            "PATCH /v1/m2m/{id}": 1,
        }
        job = api(emu, "GET", f"/m2m/{seed_m2m_id(JOB_CLIENT)}")
        assert sorted(role["id"] for role in job["roles"]) == sorted([FRONT_DESK, STAFF])
        assert run(["plan", "--detailed-exitcode"], emu).exit_code == 0
