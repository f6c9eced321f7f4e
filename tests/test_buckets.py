"""Z3 buckets as code, end to end against the emulator (SPEC section 13): names with
${PROJECT_ID}, created with PUT, never updated, and a pruned bucket deleted (with every
object in it) only when apply is told so; and the plan-file checks of both new kinds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from secrets_e2e import PID, env_for, live_names, run, seed, write_project, writes

from reconciler.emulator import serve
from reconciler.errors import PlanFileError
from reconciler.plan import checksum
from reconciler.planfile import plan_from_document

OLD_SCANS = f"{PID}-old-scans"
FILE = f"""\
id: {PID}
secrets:
  ENVIRONMENT: {{value: staging-9d2c}}
buckets:
  ${{PROJECT_ID}}-visit-notes: {{}}
  shared-logs-4f1a:
prune: [buckets]
"""


@pytest.fixture
def emu():
    with serve(seed()) as running:
        yield running


def test_a_pruned_bucket_survives_without_allow_bucket_deletes_and_goes_with_it(repo, emu):
    write_project(repo, FILE)
    summary = repo / "summary.md"
    env = env_for(emu, GITHUB_STEP_SUMMARY=str(summary))
    planned = run(["plan", "--out", "plan.json"], env)
    assert planned.stdout.splitlines()[1:7] == [
        "    # secrets: 1 to add",
        "    + secret ENVIRONMENT (literal)",
        "    # buckets: 2 to add, 1 to destroy",
        f"    - bucket {OLD_SCANS} (and every object in it)",
        f"    + bucket {PID}-visit-notes",
        "    + bucket shared-logs-4f1a",
    ]

    emu.reset_stats()
    blocked = run(["apply", "--plan", "plan.json", "--yes"], env)
    assert blocked.exit_code == 1, blocked.output
    # The other writes are done; the delete is not even sent.
    assert writes(emu.stats()) == {
        "POST /v1/secret": 1,
        f"PUT /v1/z3/{PID}-visit-notes": 1,
        "PUT /v1/z3/shared-logs-4f1a": 1,
    }
    assert blocked.stdout.splitlines()[-6:-1] == [
        f"! Clinic (staging) ({PID})  projects/clinic.yaml: blocked: 1 delete blocked: apply "
        "deletes them only when given --allow-bucket-deletes; everything else was applied",
        "    + secret ENVIRONMENT: created",
        f"    ! bucket {OLD_SCANS}: blocked: not deleted: deleting a bucket destroys every "
        "object in it; apply deletes it only when given --allow-bucket-deletes",
        f"    + bucket {PID}-visit-notes: created",
        "    + bucket shared-logs-4f1a: created",
    ]
    assert blocked.stdout.endswith("Apply: 0 applied, 0 unchanged, 0 failed, 1 blocked.\n")
    assert (
        "### reconciler apply: 0 applied, 0 unchanged, 0 failed, 1 blocked" in summary.read_text()
    )
    assert OLD_SCANS in live_names(emu, "/z3")

    as_json = run(["apply", "--yes", "--format", "json"], env)
    assert as_json.exit_code == 1
    doc = json.loads(as_json.stdout)
    assert doc["summary"]["blocked"] == 1
    assert [(o["name"], o["status"]) for o in doc["projects"][0]["objects"]] == [
        (OLD_SCANS, "blocked")
    ]

    emu.reset_stats()
    allowed = run(["apply", "--yes", "--allow-bucket-deletes"], env)
    assert allowed.exit_code == 0, allowed.output
    assert writes(emu.stats()) == {f"DELETE /v1/z3/{OLD_SCANS}": 1}
    assert live_names(emu, "/z3") == sorted([f"{PID}-visit-notes", "shared-logs-4f1a"])
    # Created, never updated: the next plan has nothing to do.
    assert run(["plan", "--detailed-exitcode"], env).exit_code == 0


def test_the_workflows_input_allows_bucket_deletes_through_the_environment(repo, emu):
    write_project(repo, f"id: {PID}\nbuckets: {{}}\nprune: [buckets]\n")
    assert run(["apply", "--yes"], env_for(emu, RECONCILER_ALLOW_BUCKET_DELETES="")).exit_code == 1
    allowed = run(["apply", "--yes"], env_for(emu, RECONCILER_ALLOW_BUCKET_DELETES="true"))
    assert allowed.exit_code == 0, allowed.output
    assert live_names(emu, "/z3") == []


def test_bucket_names_take_substitution_and_are_checked_after_it(repo):
    write_project(
        repo,
        f"id: {PID}\nvars: {{ENV: staging}}\nbuckets:\n"
        f"  ${{PROJECT_ID}}-notes: {{}}\n  {PID}-notes: {{}}\n  ${{ENV}}_Scans: {{}}\n"
        "  ok-bucket: {id: x}\n",
    )
    result = run(["validate", "projects"], {})
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        f"projects/clinic.yaml:5:3: duplicate key '{PID}-notes' in buckets: already set at line 4",
        "projects/clinic.yaml:6:3: buckets: 'staging_Scans' is not a bucket name: 3 to 63 "
        "characters of a-z, 0-9, '.' and '-' that start and end with a letter or digit, as "
        "S3 allows (after ${...})",
        "projects/clinic.yaml:7:15: buckets.ok-bucket.id is read-only: it is set by Oystehr "
        "and cannot be managed here",
    ]


# The plan file is untrusted: each kind's entries are checked on their own terms ---------


def _plan(objects: list[dict], status: str = "changed") -> dict:
    doc = {
        "formatVersion": 3,
        "tool": "reconciler test",
        "createdAt": "2026-01-01T00:00:00Z",
        "apiUrl": "http://127.0.0.1:1/v1",
        "commit": "0" * 40,
        "filesHash": None,
        "summary": {
            "changed": int(status == "changed"),
            "unchanged": int(status == "unchanged"),
            "errors": 0,
        },
        "objectSummary": {"add": 0, "change": 0, "destroy": 0},
        "projects": [
            {
                "file": "projects/clinic.yaml",
                "projectId": PID,
                "name": "Clinic",
                "status": status,
                "changes": [],
                "patch": {},
                "auth": None,
                "managedKeys": [],
                "liveFingerprint": "sha256:" + "0" * 64,
                "error": None,
                "prune": ["secrets", "buckets"],
                "objects": objects,
                "notManaged": [],
                "kept": [],
            }
        ],
    }
    words = {"create": "add", "update": "change", "rename": "change", "delete": "destroy"}
    for entry in objects:
        if entry.get("action") in words:
            doc["objectSummary"][words[entry["action"]]] += 1
    doc["checksum"] = checksum(doc)
    return doc


FINGERPRINT = "sha256:" + "1" * 64


def secret(action: str = "compare", **extra) -> dict:
    """A secret's entry as plan writes it."""
    entry = {
        "kind": "secret",
        "name": "STRIPE_KEY",
        "id": None if action == "create" else "STRIPE_KEY",
        "action": action,
        "changes": [],
        "body": {},
        "liveFingerprint": None if action == "create" else FINGERPRINT,
        "source": "projects/clinic.yaml:3",
        "valueSource": "env RECONCILER_SECRET_STRIPE_KEY",
    }
    return {**entry, **extra}


def test_a_saved_plans_secrets_and_buckets_are_checked_as_untrusted_input():
    # What plan writes passes: a compare-only Project is unchanged.
    assert plan_from_document(_plan([secret()], "unchanged")).to_apply
    assert plan_from_document(
        _plan([secret("create"), secret("delete", name="OLD", id="OLD", valueSource=None)])
    )
    bucket = {
        "kind": "bucket",
        "name": "visit-notes",
        "id": None,
        "action": "create",
        "changes": [{"field": "name", "before": None, "after": "visit-notes"}],
        "body": {"name": "visit-notes"},
        "liveFingerprint": None,
    }
    assert plan_from_document(_plan([bucket]))
    refused = {
        "a value in the body": [secret("update", body={"value": "sk_live"})],
        "a field change": [
            secret("update", changes=[{"field": "value", "before": None, "after": "x"}])
        ],
        "no source": [{k: v for k, v in secret().items() if k != "valueSource"}],
        "a source of another form": [secret(valueSource="env STRIPE_KEY")],
        "a rename": [secret("rename")],
        "another id": [secret(id="OTHER")],
        "a bad name": [secret(name="STRIPE KEY", id="STRIPE KEY")],
        "a role compared": [
            {**secret(), "kind": "role", "id": "31fcd69e-1b6b-41f1-a7b5-a1a20d976a89"}
        ],
        "a bucket's update": [
            {
                **bucket,
                "action": "update",
                "id": "visit-notes",
                "liveFingerprint": FINGERPRINT,
                "changes": [{"field": "name", "before": "a-b-c", "after": "visit-notes"}],
            }
        ],
        "a bucket of a name S3 refuses": [
            {**bucket, "name": "Visit_Notes", "changes": [], "body": {}}
        ],
        "a bucket with a value source": [{**bucket, "valueSource": "literal"}],
    }
    for why, objects in refused.items():
        with pytest.raises(PlanFileError, match="not a valid plan file"):
            plan_from_document(_plan(objects))
            pytest.fail(why)
    # An unchanged Project may hold compares only.
    with pytest.raises(PlanFileError, match="has no changes"):
        plan_from_document(_plan([secret("update")], "unchanged"))
    with pytest.raises(PlanFileError, match="at least one change"):
        plan_from_document(_plan([secret()], "changed"))


def test_the_plan_file_holds_no_value_nor_any_hash_of_one(repo, emu):
    write_project(repo, f"id: {PID}\nsecrets:\n  STRIPE_KEY: {{value: sk_live_new_value_77}}\n")
    assert run(["plan", "--out", "plan.json"], env_for(emu)).exit_code == 0
    text = Path("plan.json").read_text()
    import hashlib

    value = "sk_live_new_value_77"
    for form in (value, hashlib.sha256(value.encode()).hexdigest()):
        assert form not in text
    [entry] = json.loads(text)["projects"][0]["objects"]
    assert set(entry) == {
        "kind",
        "name",
        "id",
        "action",
        "changes",
        "body",
        "liveFingerprint",
        "source",
        "valueSource",
    }
    # Its fingerprint covers existence only: the same whatever the live value.
    from reconciler.objects import sha256_of

    assert entry["liveFingerprint"] == sha256_of({"name": "STRIPE_KEY"})
