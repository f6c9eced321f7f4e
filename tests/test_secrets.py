"""Secrets as code, end to end against the emulator (SPEC section 13): every source and
action, with request counts, and no value in any output, file or error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from secrets_e2e import (
    EXISTING,
    EXISTING_ID,
    EXISTING_SECRET,
    LITERAL,
    NEW_STRIPE,
    NEW_URL,
    OLD_GONE,
    OLD_STRIPE,
    OLD_URL,
    PID,
    STRIPE_VARIABLE,
    count,
    env_for,
    leaks,
    live_names,
    run,
    secret_value,
    seed,
    token_status,
    write_project,
    writes,
)

from reconciler.emulator import serve


@pytest.fixture
def emu():
    with serve(seed()) as running:
        yield running


def test_plan_apply_and_every_output_hold_no_value_and_the_new_secret_gets_a_token(repo, emu):
    write_project(repo)
    elsewhere = repo / "elsewhere" / "other.yaml"  # compare's second Project, offline
    elsewhere.parent.mkdir()
    elsewhere.write_text(f"id: {PID}\nsecrets:\n  ENVIRONMENT: {{value: other-value-6e1f}}\n")
    summary = repo / "summary.md"
    env = env_for(emu, GITHUB_STEP_SUMMARY=str(summary))
    outputs = []

    emu.reset_stats()
    planned = run(["plan", "-v", "--out", "plan.json"], env)
    assert planned.exit_code == 0, planned.output
    # One list per kind, the role list (for the new client's role), and one GET of each
    # live secret whose desired value the plan has: a literal and an env value.
    assert emu.stats() == {
        "GET /v1/project": 1,
        "GET /v1/secret": 1,
        "GET /v1/z3": 1,
        "GET /v1/m2m/v2/list": 1,
        "GET /v1/iam/role": 1,
        "GET /v1/secret/STRIPE_KEY": 1,
        "GET /v1/secret/WEBSITE_URL": 1,
    }
    plan_lines = planned.stdout.splitlines()
    for line in (
        "    # secrets: 3 to add, 2 to change, 1 to destroy",
        "    + secret ENVIRONMENT (literal)",
        "    ~ secret STRIPE_KEY: value changes (not shown)",
        "    ~ secret WEBSITE_URL: value changes (not shown)",
        "    + secret ZAMBDAS_CLIENT (m2m Zambdas Admin clientId)",
        "    + secret ZAMBDAS_SECRET (m2m Zambdas Admin clientSecret, rotated at apply)",
        "    - secret OLD",
        "    # buckets: 1 to add, 1 to destroy",
        f"    + bucket {PID}-visit-notes",
        f"    - bucket {PID}-old-scans (and every object in it)",
    ):
        assert line in plan_lines, planned.stdout
    outputs += [planned.output]
    for fmt in ("markdown", "json"):
        result = run(["plan", "--format", fmt], env)
        assert result.exit_code == 0
        outputs.append(result.output)
    doc = json.loads(outputs[-1])
    entries = {o["name"]: o for o in doc["projects"][0]["objects"] if o["kind"] == "secret"}
    assert {name: (o["action"], o.get("valueSource")) for name, o in entries.items()} == {
        "ENVIRONMENT": ("create", "literal"),
        "WEBSITE_URL": ("update", "literal"),
        "STRIPE_KEY": ("update", f"env {STRIPE_VARIABLE}"),
        "ZAMBDAS_CLIENT": ("create", "m2m Zambdas Admin clientId"),
        "ZAMBDAS_SECRET": ("create", "m2m Zambdas Admin clientSecret"),
        "OLD": ("delete", None),
    }
    assert all(o["changes"] == [] and o["body"] == {} for o in entries.values())
    for args in (
        ["render", "projects/clinic.yaml"],
        ["compare", str(elsewhere), "projects/clinic.yaml"],
    ):
        outputs.append(run(args, env).output)
    assert "ENVIRONMENT: {value: '(not shown: literal)'}" in outputs[-2]
    assert "~ secrets.ENVIRONMENT.value: differs (not shown)" in outputs[-1]

    emu.reset_stats()
    applied = run(["apply", "--plan", "plan.json", "--yes", "-v", "--allow-bucket-deletes"], env)
    assert applied.exit_code == 0, applied.output
    stats = emu.stats()
    # Verification: the Project, each kind's list (a new client's name still free, the
    # secrets and buckets still as they were), the role list (the new client's role).
    # A value the plan found different is compared again (one GET each) and written only
    # if it still differs. Then one write each, the rotation once.
    assert {k: n for k, n in stats.items() if k.startswith("GET")} == {
        "GET /v1/project": 1,
        "GET /v1/iam/role": 1,
        "GET /v1/m2m/v2/list": 1,
        "GET /v1/secret": 1,
        "GET /v1/z3": 1,
        "GET /v1/secret/STRIPE_KEY": 1,
        "GET /v1/secret/WEBSITE_URL": 1,
    }
    assert writes(stats) == {
        "POST /v1/m2m": 1,
        **{k: 1 for k in stats if k.endswith("/rotate-secret")},
        "POST /v1/secret": 5,
        f"PUT /v1/z3/{PID}-visit-notes": 1,
        "DELETE /v1/secret/OLD": 1,
        f"DELETE /v1/z3/{PID}-old-scans": 1,
    }
    assert count(stats, "POST", "/v1/m2m/") == 1  # one rotation
    outputs.append(applied.output)
    applied_json = run(["plan", "--format", "json", "--detailed-exitcode"], env)
    assert applied_json.exit_code == 0, applied_json.output  # in sync: nothing to do
    outputs.append(applied_json.output)

    # The new client's id and secret are stored, and that secret gets a token.
    client_id, client_secret = (
        secret_value(emu, "ZAMBDAS_CLIENT"),
        secret_value(emu, "ZAMBDAS_SECRET"),
    )
    assert token_status(emu, client_id, client_secret) == 200
    assert secret_value(emu, "STRIPE_KEY") == NEW_STRIPE
    assert secret_value(emu, "WEBSITE_URL") == NEW_URL
    assert secret_value(emu, "ENVIRONMENT") == LITERAL
    assert live_names(emu, "/secret") == [
        "ENVIRONMENT",
        "STRIPE_KEY",
        "WEBSITE_URL",
        "ZAMBDAS_CLIENT",
        "ZAMBDAS_SECRET",
    ]

    files = [Path("plan.json").read_text(), summary.read_text()]
    values = [LITERAL, NEW_URL, NEW_STRIPE, OLD_STRIPE, OLD_URL, OLD_GONE, client_id, client_secret]
    assert leaks(outputs + files, values) == []
    assert "### reconciler apply: 1 applied" in files[1]


def test_a_changed_literal_makes_exactly_one_post_and_no_rotation(repo, emu):
    write_project(repo)
    env = env_for(emu)
    assert run(["apply", "--yes", "--allow-bucket-deletes"], env).exit_code == 0
    write_project(repo, Path("projects/clinic.yaml").read_text().replace(LITERAL, "changed-7d"))
    emu.reset_stats()
    result = run(["apply", "--yes"], env)
    assert result.exit_code == 0, result.output
    assert "    ~ secret ENVIRONMENT: value changes (not shown)\n" in result.stdout
    assert "    ~ secret ENVIRONMENT: updated\n" in result.stdout
    assert writes(emu.stats()) == {"POST /v1/secret": 1}
    assert secret_value(emu, "ENVIRONMENT") == "changed-7d"


def test_plan_without_the_env_value_compares_or_creates_and_reads_no_value(repo, emu):
    write_project(
        repo,
        f"id: {PID}\nsecrets:\n"
        "  STRIPE_KEY: {valueFrom: {env: STAGING_STRIPE_KEY}}\n"
        "  NEW_KEY: {valueFrom: {env: NEW_KEY}}\n",
    )
    emu.reset_stats()
    result = run(["plan", "--detailed-exitcode"], env_for(emu, **{STRIPE_VARIABLE: None}))
    assert result.exit_code == 2, result.output
    assert result.stdout.splitlines()[1:4] == [
        "    # secrets: 1 to add, 1 compared at apply",
        "    + secret NEW_KEY (env RECONCILER_SECRET_NEW_KEY)",
        "    = secret STRIPE_KEY: value compared at apply",
    ]
    assert emu.stats() == {"GET /v1/project": 1, "GET /v1/secret": 1}


def test_apply_without_the_env_value_is_that_projects_error_and_writes_nothing(repo, emu):
    write_project(repo)
    assert (
        run(["plan", "--out", "plan.json"], env_for(emu, **{STRIPE_VARIABLE: None})).exit_code == 0
    )
    for args in (["apply", "--plan", "plan.json", "--yes"], ["apply", "--yes"]):
        emu.reset_stats()
        result = run(args, env_for(emu, **{STRIPE_VARIABLE: ""}))  # GitHub's unset secret
        assert result.exit_code == 1, result.output
        assert (
            f"! Clinic (staging) ({PID})  projects/clinic.yaml: failed: apply needs every value "
            f"it writes, and {STRIPE_VARIABLE} (secret STRIPE_KEY) is not set. Nothing was "
            "written to this Project.\n"
        ) in result.stdout
        # Each object: nothing was written (marked as unchanged, never as a delete).
        assert (
            "    = secret ENVIRONMENT: skipped: not started: the Project failed before any write\n"
        ) in result.stdout
        assert writes(emu.stats()) == {}
    assert secret_value(emu, "STRIPE_KEY") == OLD_STRIPE


def test_read_credentials_plan_names_only_and_apply_sets_back_a_hand_changed_value(repo, emu):
    """The README's read-only policy: one refused GET /secret/{name} (remembered for the
    run), `compare` for every managed secret that exists; the apply job reads each once
    and writes only the one that differs."""
    write_project(
        repo,
        f"id: {PID}\nsecrets:\n"
        f"  STRIPE_KEY: {{valueFrom: {{env: STAGING_STRIPE_KEY}}}}\n"
        f"  WEBSITE_URL: {{value: '{OLD_URL}'}}\n",
    )
    emu.reset_stats()
    planned = run(["plan", "--out", "plan.json", "--detailed-exitcode"], env_for(emu, "reader"))
    assert planned.exit_code == 2, planned.output  # apply has values to compare
    assert planned.stdout.splitlines() == [
        f"= Clinic (staging) ({PID})  projects/clinic.yaml: unchanged",
        "    # secrets: 2 compared at apply",
        "    = secret STRIPE_KEY: value compared at apply",
        "    = secret WEBSITE_URL: value compared at apply",
        "    = not managed (left alone; prune deletes them): secret OLD",
        "Plan: 0 to change, 1 unchanged, 0 errors. Objects: 0 to add, 0 to change, 0 to "
        "destroy, 2 secret values compared at apply.",
    ]
    value_reads = [r for r in emu.requests() if r["path"].startswith("/v1/secret/")]
    assert [(r["method"], r["status"]) for r in value_reads] == [("GET", 403)]
    doc = json.loads(Path("plan.json").read_text())
    assert doc["summary"] == {"changed": 0, "unchanged": 1, "errors": 0}
    assert [o["action"] for o in doc["projects"][0]["objects"]] == ["compare", "compare"]

    emu.reset_stats()
    applied = run(["apply", "--plan", "plan.json", "--yes"], env_for(emu, "ci"))
    assert applied.exit_code == 0, applied.output
    assert "    ~ secret STRIPE_KEY: updated\n" in applied.stdout
    assert "    = secret WEBSITE_URL: compared: the value was right\n" in applied.stdout
    stats = emu.stats()
    assert count(stats, "GET", "/v1/secret/") == 2
    assert writes(stats) == {"POST /v1/secret": 1}
    assert secret_value(emu, "STRIPE_KEY") == NEW_STRIPE

    # Nothing differs now: the same plan's apply reads and writes nothing more.
    emu.reset_stats()
    again = run(["apply", "--yes"], env_for(emu, "ci"))
    assert again.exit_code == 0 and writes(emu.stats()) == {}
    assert "Apply: 0 applied, 1 unchanged, 0 failed." in again.stdout
    assert leaks([planned.output, applied.output, again.output], [OLD_STRIPE, NEW_STRIPE]) == []


def test_a_value_changed_by_hand_is_set_back_by_the_next_apply(repo, emu):
    write_project(repo, f"id: {PID}\nsecrets:\n  WEBSITE_URL: {{value: '{OLD_URL}'}}\n")
    assert run(["plan", "--out", "plan.json"], env_for(emu, "reader")).exit_code == 0
    run_hand = run(["apply", "--yes"], env_for(emu))  # in sync: nothing written
    assert run_hand.exit_code == 0
    import httpx

    headers = {"authorization": "Bearer dev-token-secrets-3a9c", "x-oystehr-project-id": PID}
    httpx.post(
        f"{emu.api_url}/secret", json={"name": "WEBSITE_URL", "value": "by-hand"}, headers=headers
    ).raise_for_status()
    emu.reset_stats()
    applied = run(["apply", "--plan", "plan.json", "--yes"], env_for(emu, "ci"))
    assert applied.exit_code == 0, applied.output
    assert writes(emu.stats()) == {"POST /v1/secret": 1}
    assert secret_value(emu, "WEBSITE_URL") == OLD_URL


def test_an_existing_clients_secret_is_rotated_only_with_rotate_and_never_the_runs_own(repo, emu):
    write_project(
        repo,
        f"id: {PID}\nsecrets:\n"
        f"  ADMIN_ID: {{valueFrom: {{m2mClient: {EXISTING}, field: clientId}}}}\n"
        f"  ADMIN_SECRET: {{valueFrom: {{m2mClient: {EXISTING}, field: clientSecret}}}}\n"
        "  ALSO_SECRET: {valueFrom: {m2mClient: Existing Admin, field: clientSecret}}\n",
    )
    env = env_for(emu, "ci")
    refused = run(["plan"], env)
    assert refused.exit_code == 1
    assert (
        "secret 'ADMIN_SECRET': its value is a new secret of M2M client 'Existing Admin', "
        "which exists: rotating it breaks every other holder of its current secret, so it "
        "is rotated only on request: --rotate PROJECT_ID:ADMIN_SECRET"
    ) in refused.stdout
    assert token_status(emu, EXISTING_ID, EXISTING_SECRET) == 200

    emu.reset_stats()
    rotated = run(["apply", "--yes", "--rotate", f"{PID}:ADMIN_SECRET"], env)
    assert rotated.exit_code == 0, rotated.output
    stats = emu.stats()
    assert count(stats, "POST", "/v1/m2m/") == 1  # once, stored in both secrets
    assert writes(stats) == {
        **{k: 1 for k in stats if k.endswith("/rotate-secret")},
        "POST /v1/secret": 3,
    }
    new_secret = secret_value(emu, "ADMIN_SECRET")
    assert secret_value(emu, "ALSO_SECRET") == new_secret
    assert secret_value(emu, "ADMIN_ID") == EXISTING_ID
    assert token_status(emu, EXISTING_ID, new_secret) == 200
    assert token_status(emu, EXISTING_ID, EXISTING_SECRET) == 401  # the old one is gone
    assert leaks([rotated.output], [new_secret, EXISTING_ID, EXISTING_SECRET]) == []
    # In sync now: a client secret is never compared (it cannot be read back).
    assert run(["plan", "--detailed-exitcode"], env).exit_code == 0

    write_project(
        repo,
        f"id: {PID}\nsecrets:\n"
        "  CI_SECRET: {valueFrom: {m2mClient: ci, field: clientSecret}}\n",
    )
    emu.reset_stats()
    own = run(["apply", "--yes", "--rotate", f"{PID}:CI_SECRET"], env)
    assert own.exit_code == 1
    assert (
        "secret 'CI_SECRET': valueFrom.m2mClient 'ci' is the client this run authenticates "
        "as: it is never rotated"
    ) in own.stdout
    assert writes(emu.stats()) == {}
    assert run(["apply", "--yes", "--rotate", "nope"], env).exit_code == 1
    wrong = run(["apply", "--yes", "--rotate", f"{PID}:ADMIN_ID"], env)
    assert "has no secret ADMIN_ID whose value is an M2M client's clientSecret" in wrong.output


def test_a_saved_plans_rotation_needs_rotate_at_apply_too(repo, emu):
    write_project(
        repo,
        f"id: {PID}\nsecrets:\n"
        f"  ADMIN_SECRET: {{valueFrom: {{m2mClient: {EXISTING}, field: clientSecret}}}}\n",
    )
    env = env_for(emu, "ci")
    rotate = ["--rotate", f"{PID}:ADMIN_SECRET"]
    assert run(["plan", "--out", "plan.json", *rotate], env).exit_code == 0
    emu.reset_stats()
    refused = run(["apply", "--plan", "plan.json", "--yes"], env)
    assert refused.exit_code == 1
    assert refused.output == (
        "Error: the plan rotates M2M client 'Existing Admin', which exists (secret "
        f"ADMIN_SECRET of Project {PID}): apply does it only when given --rotate "
        f"{PID}:ADMIN_SECRET; nothing was applied\n"
    )
    assert emu.stats() == {}
    applied = run(["apply", "--plan", "plan.json", "--yes", *rotate], env)
    assert applied.exit_code == 0, applied.output
    assert token_status(emu, EXISTING_ID, secret_value(emu, "ADMIN_SECRET")) == 200


def test_two_projects_reading_one_variable_need_shared_on_each(repo):
    fragment = repo / "base" / "keys.yaml"
    fragment.parent.mkdir()
    fragment.write_text("secrets:\n  STRIPE_KEY: {valueFrom: {env: STRIPE_KEY}}\n")
    for name, pid in (("dev", "0b5e6a52-7d0e-4c61-9d1a-2f3c4b5a6d71"), ("prod", PID)):
        write_project(repo, f"id: {pid}\ninclude: [../base/keys.yaml]\n", f"{name}.yaml")
    result = run(["validate", "projects"], {})
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        "base/keys.yaml:2:33: secrets.STRIPE_KEY.valueFrom.env: RECONCILER_SECRET_STRIPE_KEY "
        f"is read by another Project of this run too ({other}, from base/keys.yaml:2); write "
        "`shared: true` beside env in each to allow it (a fragment shared by environments "
        f"must not copy one Project's key into another) (included from {mine}:2)"
        for other, mine in (
            ("projects/dev.yaml", "projects/prod.yaml"),
            ("projects/prod.yaml", "projects/dev.yaml"),
        )
    ]
    fragment.write_text("secrets:\n  STRIPE_KEY: {valueFrom: {env: STRIPE_KEY, shared: true}}\n")
    assert run(["validate", "projects"], {}).exit_code == 0
    # Each Project its own variable: no sharing needed.
    fragment.write_text("secrets:\n  STRIPE_KEY: {valueFrom: {env: '${PROJECT_ID}_KEY'}}\n")
    assert run(["validate", "projects"], {}).exit_code == 1  # a name cannot start with a digit
    fragment.write_text("secrets:\n  STRIPE_KEY: {valueFrom: {env: 'K_${PROJECT_ID}'}}\n")
    assert run(["validate", "projects"], {}).exit_code == 1  # '-' is not in a name
    fragment.write_text("secrets:\n  STRIPE_KEY: {valueFrom: {env: '${ENV}_KEY'}}\n")
    for name, pid in (("dev", "0b5e6a52-7d0e-4c61-9d1a-2f3c4b5a6d71"), ("prod", PID)):
        write_project(
            repo,
            f"id: {pid}\ninclude: [../base/keys.yaml]\nvars: {{ENV: {name}}}\n",
            f"{name}.yaml",
        )
    assert run(["validate", "projects"], {}).exit_code == 0


def test_a_value_equal_to_a_credential_is_refused_naming_both_never_the_value(repo, emu):
    write_project(
        repo, f"id: {PID}\nsecrets:\n  STRIPE_KEY: {{valueFrom: {{env: STAGING_STRIPE_KEY}}}}\n"
    )
    env = env_for(emu, "ci", **{STRIPE_VARIABLE: "secrets-ci-secret-7f3a9b"})
    planned = run(["plan"], env)
    assert planned.exit_code == 1
    assert (
        "projects/clinic.yaml:3:33: secrets.STRIPE_KEY.valueFrom.env: "
        f"{STRIPE_VARIABLE} holds the value of OYSTEHR_CLIENT_SECRET, a credential: it "
        "would be copied into Oystehr"
    ) in planned.output
    # A saved plan made without the value: apply refuses the Project, writing nothing.
    assert (
        run(["plan", "--out", "plan.json"], env_for(emu, "ci", **{STRIPE_VARIABLE: None})).exit_code
        == 0
    )
    emu.reset_stats()
    applied = run(["apply", "--plan", "plan.json", "--yes"], env)
    assert applied.exit_code == 1
    assert (
        f"secrets.STRIPE_KEY.valueFrom.env: {STRIPE_VARIABLE} holds the value of "
        "OYSTEHR_CLIENT_SECRET, a credential: it would be copied into Oystehr"
    ) in applied.output
    assert emu.stats() == {}  # the files are checked before any request
    # A fresh apply is refused the same way; the Project's own refusal at apply (for a
    # value only the apply job holds) names the secret and the credential.
    fresh = run(["apply", "--yes"], env)
    assert fresh.exit_code == 1 and writes(emu.stats()) == {}
    assert "secrets-ci-secret-7f3a9b" not in planned.output + applied.output + fresh.output


def test_validate_locates_every_bad_secret_and_never_quotes_a_value(repo):
    write_project(
        repo,
        f"id: {PID}\n"
        "secrets:\n"
        "  PASTED: sk_live_pasted_value_1234\n"
        "  BOTH: {value: x, valueFrom: {env: X}}\n"
        "  NUMBER: {value: 12345678}\n"
        "  bad name: {value: x}\n"
        "  RENAMED: {value: x, renamedFrom: OLD}\n"
        "  ENV: {valueFrom: {env: 'not a name'}}\n"
        "  CLIENT: {valueFrom: {m2mClient: x}}\n"
        "  FIELD: {valueFrom: {m2mClient: x, field: secret}}\n",
    )
    result = run(["validate", "projects"], {})
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        "projects/clinic.yaml:3:11: secrets.PASTED: expected {value: ...} or {valueFrom: ...} "
        "(where the value comes from), got string",
        "projects/clinic.yaml:4:9: secrets.BOTH: give exactly one of value (a literal) and "
        "valueFrom ({env: NAME} or {m2mClient: NAME, field: clientId|clientSecret})",
        "projects/clinic.yaml:5:19: secrets.NUMBER.value: expected a string, got integer",
        "projects/clinic.yaml:6:3: secrets: 'bad name' is not a secret name: letters, "
        "digits, '-' and '_' only",
        "projects/clinic.yaml:7:23: secrets.RENAMED.renamedFrom: secrets and buckets cannot "
        "be renamed (the API has no rename): declare the new name, and prune deletes the "
        "old one",
        "projects/clinic.yaml:8:26: secrets.ENV.valueFrom.env must be a variable NAME "
        "(letters, digits and _, not starting with a digit) after ${...}; the value is read "
        "from RECONCILER_SECRET_NAME",
        "projects/clinic.yaml:9:23: secrets.CLIENT.valueFrom: m2mClient needs field as well",
        "projects/clinic.yaml:10:44: secrets.FIELD.valueFrom.field: expected clientId or "
        "clientSecret, got 'secret'",
    ]
    assert "sk_live_pasted" not in result.output and "12345678" not in result.output


def test_editors_and_standard_tools_accept_names_written_with_substitution(repo):
    """Before substitution (what an editor checks) `${ENV}_STRIPE_KEY` and
    `${PROJECT_ID}-visit-notes` are names too; after it, the strict rules apply."""
    import subprocess
    import sys

    path = write_project(repo)
    schema = Path(__file__).resolve().parent.parent / "schemas" / "project.schema.json"
    command = [sys.executable, "-m", "check_jsonschema", "--schemafile", str(schema), str(path)]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert run(["validate", "projects"], {}).exit_code == 0


def test_a_client_named_nowhere_is_that_projects_error(repo, emu):
    write_project(
        repo, f"id: {PID}\nsecrets:\n  X: {{valueFrom: {{m2mClient: Ghost, field: clientId}}}}\n"
    )
    result = run(["plan"], env_for(emu))
    assert result.exit_code == 1
    assert (
        "secret 'X': valueFrom.m2mClient 'Ghost' is neither declared in m2mClients nor live "
        "(M2M clients: Existing Admin, ci, plan reader)"
    ) in result.stdout
    # A misspelt one (here one the file declares) gets the closest name.
    write_project(
        repo,
        f"id: {PID}\nm2mClients:\n  Zambdas Admin: {{roles: [Admin]}}\nsecrets:\n"
        "  X: {valueFrom: {m2mClient: Zambda Admin, field: clientId}}\n",
    )
    result = run(["plan"], env_for(emu))
    assert result.exit_code == 1
    assert (
        "valueFrom.m2mClient 'Zambda Admin' is neither declared in m2mClients nor live; "
        "did you mean 'Zambdas Admin'? (M2M clients: "
    ) in result.stdout


def test_export_writes_secrets_as_env_names_and_plans_clean_with_them_set(repo, emu):
    result = run(["export", "--project-id", PID, "--include", "secrets,buckets"], env_for(emu))
    assert result.exit_code == 0, result.output
    doc = yaml.safe_load(result.stdout)
    assert doc["secrets"] == {
        name: {"valueFrom": {"env": f"CLINIC_STAGING_{name}"}}
        for name in ("OLD", "STRIPE_KEY", "WEBSITE_URL")
    }
    assert doc["buckets"] == {"${PROJECT_ID}-old-scans": {}}
    assert "\nbuckets:\n  ${PROJECT_ID}-old-scans: {}\n" in result.stdout  # as one writes it
    assert leaks([result.output], [OLD_STRIPE, OLD_URL, OLD_GONE]) == []
    assert "GET /v1/secret/OLD" not in emu.stats()  # a value is never read
    write_project(repo, result.stdout)
    values = {
        "RECONCILER_SECRET_CLINIC_STAGING_OLD": OLD_GONE,
        "RECONCILER_SECRET_CLINIC_STAGING_STRIPE_KEY": OLD_STRIPE,
        "RECONCILER_SECRET_CLINIC_STAGING_WEBSITE_URL": OLD_URL,
    }
    planned = run(["plan", "--detailed-exitcode"], env_for(emu, **values))
    assert planned.exit_code == 0, planned.output
    assert planned.stdout == "Plan: 0 to change, 1 unchanged, 0 errors.\n"


def test_init_maps_secret_values_from_production_in_the_apply_step_only(tmp_path):
    write_project(
        tmp_path,
        f"id: {PID}\nvars: {{ENV: STAGING}}\nsecrets:\n"
        "  STRIPE_KEY: {valueFrom: {env: '${ENV}_STRIPE_KEY'}}\n"
        "  LATER: {valueFrom: {env: '${FROM_WORKFLOW}_KEY', shared: true}}\n",
    )
    result = run(["init", str(tmp_path), "--action", f"acme/reconciler@{'a' * 40}"], {})
    assert result.exit_code == 0, result.output
    assert f"     gh secret set {STRIPE_VARIABLE} --env production\n" in result.output
    workflows = tmp_path / ".github" / "workflows"
    texts = {p.name: p.read_text() for p in workflows.glob("*.yml")}
    mapping = f"{STRIPE_VARIABLE}: ${{{{ secrets.{STRIPE_VARIABLE} }}}}"
    assert [name for name, text in texts.items() if STRIPE_VARIABLE in text] == ["apply.yml"]
    apply = yaml.safe_load(texts["apply.yml"])
    steps = [s for job in apply["jobs"].values() for s in job["steps"]]
    holding = [s["name"] for s in steps if STRIPE_VARIABLE in (s.get("env") or {})]
    assert holding == ["Apply that plan"]
    assert mapping in texts["apply.yml"]
    assert "FROM_WORKFLOW" not in texts["apply.yml"]  # needs the workflow's own vars


def test_a_forged_secret_entry_is_refused_before_any_write(repo, emu):
    """apply --plan plans each secret again from the files: a saved entry that reads
    another variable, or compares a secret the files do not declare, is not what they
    give."""
    from reconciler.plan import checksum

    write_project(
        repo, f"id: {PID}\nsecrets:\n  STRIPE_KEY: {{valueFrom: {{env: STAGING_STRIPE_KEY}}}}\n"
    )
    assert run(["plan", "--out", "plan.json"], env_for(emu, "reader")).exit_code == 0
    saved = json.loads(Path("plan.json").read_text())

    def forged(edit) -> str:
        doc = json.loads(json.dumps(saved))
        edit(doc["projects"][0]["objects"])
        doc["checksum"] = checksum(doc)
        Path("forged.json").write_text(json.dumps(doc))
        emu.reset_stats()
        result = run(["apply", "--plan", "forged.json", "--yes"], env_for(emu, "ci"))
        assert result.exit_code == 1 and writes(emu.stats()) == {}
        return result.output

    def other_variable(objects: list) -> None:
        objects[0]["valueSource"] = "env RECONCILER_SECRET_PRODUCTION_STRIPE_KEY"

    def undeclared(objects: list) -> None:
        from reconciler.objects import sha256_of

        fingerprint = sha256_of({"name": "WEBSITE_URL"})  # as live: not stale, forged
        objects.append(
            {
                **objects[0],
                "name": "WEBSITE_URL",
                "id": "WEBSITE_URL",
                "liveFingerprint": fingerprint,
            }
        )

    assert (
        "not a valid plan file: projects/clinic.yaml "
        f"({PID}): secret 'STRIPE_KEY': the plan says its value comes from env "
        "RECONCILER_SECRET_PRODUCTION_STRIPE_KEY; the files say env "
        f"{STRIPE_VARIABLE}; nothing was applied"
    ) in forged(other_variable)
    assert (
        "secret 'WEBSITE_URL': the plan would compare it; the files and what is live do not"
    ) in forged(undeclared)
    applied = run(["apply", "--plan", "plan.json", "--yes"], env_for(emu, "ci"))
    assert applied.exit_code == 0, applied.output
    assert secret_value(emu, "STRIPE_KEY") == NEW_STRIPE


@pytest.mark.parametrize("saved", [False, True], ids=["apply", "apply --plan"])
def test_a_secret_from_a_client_the_same_plan_renames_applies(repo, emu, saved):
    # The plan renames Existing Admin and takes its clientId into a secret: apply finds
    # the client by the id the plan read, not by the new name, which is not live yet.
    write_project(
        repo,
        f"""\
id: {PID}
secrets:
  ADMIN_CLIENT: {{valueFrom: {{m2mClient: Zambdas Admin, field: clientId}}}}
m2mClients:
  Zambdas Admin: {{renamedFrom: {EXISTING}, roles: [Zambdas Runner]}}
""",
    )
    env = env_for(emu, "ci")
    planned = run(["plan", "--out", "plan.json"], env)
    assert planned.exit_code == 0, planned.output
    applied = run(["apply", "--yes", *(["--plan", "plan.json"] if saved else [])], env)
    assert applied.exit_code == 0, applied.output
    assert "    + secret ADMIN_CLIENT: created\n" in applied.stdout
    assert secret_value(emu, "ADMIN_CLIENT") == EXISTING_ID
    assert run(["plan", "--detailed-exitcode"], env).exit_code == 0
