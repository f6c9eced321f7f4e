"""apply and export end to end: refusals before any write, minimal writes, convergence."""

import io
import json
import threading
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest
import secrets_e2e
import yaml
from e2e import (
    A_STAFF_1,
    ALPHA,
    BETA,
    BETA_CLIENT,
    BETA_SECRET,
    GAMMA,
    SEED,
    hand_edit,
    live,
    run,
    write,
)
from objects_e2e import M2M_ENV, counts, objects_emulator, project
from secrets_e2e import EXISTING

from reconciler.emulator import Faults, serve


def three_changes(repo):
    write(repo, "projects/alpha.yaml", f"id: {ALPHA}\nsignupEnabled: true\n")
    write(repo, "projects/beta.yaml", f"id: {BETA}\ndescription: Beta, reviewed\n")
    write(repo, "projects/gamma.yaml", f"id: {GAMMA}\nname: Gamma\n")


def test_without_a_terminal_and_without_yes_nothing_is_written(repo, emu):
    three_changes(repo)
    emu.reset_stats()
    result = run(["apply"], emu)
    assert result.exit_code == 1
    assert "refusing to apply without --yes" in result.stderr
    assert "PATCH /v1/project" not in emu.stats()


def test_apply_yes_converges_and_a_second_plan_is_clean(repo, emu):
    three_changes(repo)
    emu.reset_stats()
    result = run(["apply", "--yes"], emu)
    assert result.exit_code == 0, result.output
    assert result.stdout.endswith("Apply: 3 applied, 0 unchanged, 0 failed.\n")
    assert emu.stats() == {"GET /v1/project": 3, "PATCH /v1/project": 3}
    assert run(["plan", "--detailed-exitcode"], emu).exit_code == 0
    assert run(["apply"], emu).exit_code == 0  # nothing to do: no question asked


def test_max_changes_refuses_before_any_write(repo, emu):
    three_changes(repo)
    emu.reset_stats()
    result = run(["apply", "--yes", "--max-changes", "2"], emu)
    assert result.exit_code == 1
    assert "more than --max-changes 2" in result.stderr
    assert "PATCH /v1/project" not in emu.stats()


def test_saved_plan_costs_k_gets_and_k_patches(repo, emu):
    three_changes(repo)
    write(repo, "projects/unchanged.yaml", f"id: {ALPHA}\n")
    (repo / "projects/unchanged.yaml").unlink()
    assert run(["plan", "--out", "plan.json"], emu).exit_code == 0
    emu.reset_stats()
    result = run(["apply", "--plan", "plan.json", "--yes", "--format", "json"], emu)
    assert result.exit_code == 0, result.output
    assert emu.stats() == {"GET /v1/project": 3, "PATCH /v1/project": 3}
    doc = json.loads(result.stdout)
    assert doc["summary"]["applied"] == 3
    assert [p["status"] for p in doc["projects"]] == ["applied"] * 3


def test_stale_plan_is_refused_naming_the_project(repo, emu):
    three_changes(repo)
    run(["plan", "--out", "plan.json"], emu)
    hand_edit(emu, BETA, {"description": "someone else's edit"})
    emu.reset_stats()
    result = run(["apply", "--plan", "plan.json", "--yes"], emu)
    assert result.exit_code == 1
    assert "stale plan" in result.stderr and f"projects/beta.yaml ({BETA})" in result.stderr
    assert "PATCH /v1/project" not in emu.stats()


def test_edit_of_an_unmanaged_key_does_not_make_the_plan_stale(repo, emu):
    three_changes(repo)
    run(["plan", "--out", "plan.json"], emu)
    hand_edit(emu, BETA, {"signupEnabled": False})  # beta.yaml manages only description
    result = run(["apply", "--plan", "plan.json", "--yes"], emu)
    assert result.exit_code == 0, result.output
    assert live(emu, BETA)["signupEnabled"] is False


def test_a_project_renamed_since_the_plan_is_not_the_project_it_shows(repo, emu):
    # Apply names Projects as they are live: a plan that names one otherwise is refused.
    three_changes(repo)
    run(["plan", "--out", "plan.json"], emu)
    hand_edit(emu, BETA, {"name": "Renamed by hand"})
    emu.reset_stats()
    result = run(["apply", "--plan", "plan.json", "--yes"], emu)
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: plan.json: not a valid plan file: projects/beta.yaml ({BETA}): the Project "
        'is named "Renamed by hand" live, not "Beta Sandbox" as the plan says; nothing was '
        "applied\n"
    )
    assert emu.stats() == {"GET /v1/project": 3}


def test_tampered_plan_is_refused(repo, emu):
    three_changes(repo)
    run(["plan", "--out", "plan.json"], emu)
    doc = json.loads((repo / "plan.json").read_text())
    doc["projects"][0]["patch"]["signupEnabled"] = False
    (repo / "plan.json").write_text(json.dumps(doc))
    emu.reset_stats()
    result = run(["apply", "--plan", "plan.json", "--yes"], emu)
    assert result.exit_code == 1
    assert "checksum does not match" in result.stderr
    assert emu.stats() == {}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json at all", "not a valid plan file: not JSON"),
        ('{"hello": 1}', "not a valid plan file: not a reconciler plan"),
        ("[1, 2]", "not a valid plan file: not a reconciler plan"),
    ],
)
def test_garbage_plan_file_is_one_clear_error(repo, emu, content, message):
    (repo / "plan.json").write_text(content)
    result = run(["apply", "--plan", "plan.json", "--yes"], emu)
    assert result.exit_code == 1
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_missing_plan_file(repo, emu):
    result = run(["apply", "--plan", "nope.json", "--yes"], emu)
    assert result.exit_code == 1
    assert result.stderr == "Error: cannot read plan file nope.json: No such file or directory\n"


def test_plan_for_another_api_is_refused(repo, emu):
    three_changes(repo)
    run(["plan", "--out", "plan.json"], emu)
    result = run(
        ["apply", "--plan", "plan.json", "--yes", "--api-url", "http://127.0.0.1:9/v1"], emu
    )
    assert result.exit_code == 1
    assert f"the plan was made for {emu.api_url}" in result.stderr


def test_plan_with_errors_is_refused(repo, emu):
    three_changes(repo)
    write(repo, "projects/gamma.yaml", f"id: {GAMMA}\nfhirVersion: r4\n")
    assert run(["plan", "--out", "plan.json"], emu).exit_code == 1
    emu.reset_stats()
    result = run(["apply", "--plan", "plan.json", "--yes"], emu)
    assert result.exit_code == 1
    assert "the plan has errors" in result.stderr and "projects/gamma.yaml" in result.stderr
    assert emu.stats() == {}


def test_unmanaged_keys_untouched_and_null_clears_only_that_role(repo, emu):
    before = live(emu, BETA)
    write(repo, "projects/beta.yaml", f"id: {BETA}\ndefaultSSOUserRole: null\n")
    assert run(["apply", "--yes"], emu).exit_code == 0
    after = live(emu, BETA)
    assert "defaultSSOUserRole" not in after
    assert after == {k: v for k, v in before.items() if k != "defaultSSOUserRole"}


def test_partial_failure_applies_the_others_and_rerun_converges(repo, emu):
    three_changes(repo)
    write(
        repo,
        "projects/beta.yaml",
        f"id: {BETA}\ndescription: Beta, reviewed\n"
        "auth: {clientIdEnv: BETA_ID, clientSecretEnv: BETA_SECRET}\n",
    )
    wrong = {"BETA_ID": BETA_CLIENT, "BETA_SECRET": "not-the-secret"}
    result = run(["apply", "--yes"], emu, wrong)
    assert result.exit_code == 1
    assert "Apply: 2 applied, 0 unchanged, 1 failed." in result.stdout
    assert "not-the-secret" not in result.output
    right = {"BETA_ID": BETA_CLIENT, "BETA_SECRET": BETA_SECRET}
    emu.reset_stats()
    result = run(["apply", "--yes"], emu, right)
    assert result.exit_code == 0, result.output
    assert "Apply: 1 applied, 2 unchanged, 0 failed." in result.stdout
    # One token for the M2M client across its GET and its PATCH.
    assert emu.stats()["POST /oauth/token"] == 1


def test_a_patch_the_api_does_not_take_is_reported_as_not_converged(repo, emu):
    """A proxy in front of the emulator drops `name` from PATCH bodies."""

    def drop_name(environ, start_response):
        if environ["REQUEST_METHOD"] == "PATCH":
            body = json.loads(environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"])))
            body.pop("name", None)
            data = json.dumps(body).encode()
            environ["wsgi.input"], environ["CONTENT_LENGTH"] = io.BytesIO(data), str(len(data))
        return emu.app(environ, start_response)

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    with make_server("127.0.0.1", 0, drop_name, handler_class=Quiet) as proxy:
        thread = threading.Thread(target=proxy.serve_forever, kwargs={"poll_interval": 0.01})
        thread.start()
        try:
            three_changes(repo)
            url = f"http://127.0.0.1:{proxy.server_port}/v1"
            result = run(["apply", "--yes", "--api-url", url], emu)
        finally:
            proxy.shutdown()
            thread.join()
    assert result.exit_code == 1
    assert "did not converge: the API answered with other values for name" in result.stdout
    assert "Apply: 2 applied, 0 unchanged, 1 failed." in result.stdout


def test_apply_under_faults_converges(repo):
    for i, pid in enumerate([ALPHA, BETA, GAMMA]):
        write(repo, f"projects/p{i}.yaml", f"id: {pid}\ndescription: converged {i}\n")
    faults = Faults(error_rate=0.3, rate_limit_every=5, seed=11)
    with serve(SEED, faults=faults) as emu:
        result = run(["apply", "--yes", "--retries", "10"], emu)
        assert result.exit_code == 0, result.output
        assert run(["plan", "--detailed-exitcode", "--retries", "10"], emu).exit_code == 0
        assert emu.store.get_project(BETA)["description"] == "converged 1"


def test_apply_summary_goes_to_the_step_summary(repo, emu):
    three_changes(repo)
    summary = repo / "summary.md"
    result = run(["apply", "--yes"], emu, {"GITHUB_STEP_SUMMARY": str(summary)})
    assert result.exit_code == 0
    text = summary.read_text()
    assert text.startswith("<!-- reconciler-apply -->\n### reconciler apply: 3 applied")
    assert f"| 🟢 `Beta Sandbox` (`{BETA}`) | `projects/beta.yaml` | applied | |" in text


# export ---------------------------------------------------------------------------


def test_export_round_trip_with_an_ambiguous_role_name(repo, emu):
    hand_edit(emu, ALPHA, {"defaultSSOUserRoleId": A_STAFF_1})  # two roles are named Staff
    (repo / "schemas").mkdir()
    (repo / "schemas/project.schema.json").write_text("{}")
    result = run(
        [
            "export",
            "--project-id",
            ALPHA,
            "--include",
            "settings",
            "--output",
            "projects/alpha.yaml",
        ],
        emu,
    )
    assert result.exit_code == 0, result.output
    text = (repo / "projects/alpha.yaml").read_text()
    assert text.startswith("# yaml-language-server: $schema=../schemas/project.schema.json\n")
    doc = yaml.safe_load(text)
    assert list(doc) == [
        "id",
        "name",
        "description",
        "signupEnabled",
        "defaultPatientRole",
        "defaultSSOUserRole",
        "fhirVersion",
    ]
    assert doc["defaultPatientRole"] == "Patient"
    assert doc["defaultSSOUserRole"] == {"id": A_STAFF_1}
    emu.reset_stats()
    result = run(["plan", "--detailed-exitcode"], emu)
    assert result.exit_code == 0, result.output
    assert emu.stats() == {"GET /v1/project": 1}  # roles already match: no look-up


def test_export_absent_role_as_null_and_literal_dollar_brace(repo, emu):
    hand_edit(emu, GAMMA, {"description": "costs ${PRICE} and $${X}"})
    result = run(["export", "--project-id", GAMMA], emu)
    assert result.exit_code == 0
    doc = yaml.safe_load(result.stdout)
    assert doc["defaultPatientRole"] is None and doc["defaultSSOUserRole"] is None
    assert doc["description"] == "costs $${PRICE} and $$${X}"
    (repo / "projects").mkdir()
    (repo / "projects/gamma.yaml").write_text(result.stdout)
    assert run(["plan", "--detailed-exitcode"], emu).exit_code == 0


def test_apply_does_not_read_m2m_me_again_after_its_plan(repo):
    # Apply checks /m2m/me, and the M2M clients secrets' values come from, before any
    # write; a fresh plan of the same run, with the same credentials, read them already.
    with objects_emulator() as emu:
        project(repo, "m2mClients: {}\nprune: [m2mClients]\n")
        emu.reset_stats()
        assert run(["apply", "--yes"], emu, env=M2M_ENV).exit_code == 0
        assert counts(emu) == {
            "POST /oauth/token": 1,
            "GET /v1/project": 1,
            "GET /v1/m2m/v2/list": 1,
            "GET /v1/m2m/me": 1,
            "DELETE /v1/m2m/{id}": 1,
        }


def test_apply_does_not_read_again_the_clients_its_plan_read_for_secrets(repo):
    with serve(secrets_e2e.seed()) as emu:
        secrets_e2e.write_project(
            repo,
            f"id: {secrets_e2e.PID}\nsecrets:\n"
            f"  ADMIN_ID: {{valueFrom: {{m2mClient: {EXISTING}, field: clientId}}}}\n"
            f"  ADMIN_SECRET: {{valueFrom: {{m2mClient: {EXISTING}, field: clientSecret}}}}\n",
        )
        emu.reset_stats()
        rotate = ["apply", "--yes", "--rotate", f"{secrets_e2e.PID}:ADMIN_SECRET"]
        result = secrets_e2e.run(rotate, secrets_e2e.env_for(emu, "ci"))
        assert result.exit_code == 0, result.output
        # The list, and the client whose clientId is a value (and is rotated), once each.
        reads = {k: n for k, n in emu.stats().items() if k.startswith("GET /v1/m2m")}
        assert reads.pop("GET /v1/m2m/v2/list") == 1
        assert list(reads.values()) == [1]


def test_apply_plan_does_not_list_again_the_clients_its_verification_listed(repo):
    # A saved plan is verified with apply's own reads: the M2M list it reads there is
    # the one the secrets' checks use.
    with serve(secrets_e2e.seed()) as emu:
        secrets_e2e.write_project(
            repo,
            f"id: {secrets_e2e.PID}\nsecrets:\n"
            f"  ADMIN_ID: {{valueFrom: {{m2mClient: {EXISTING}, field: clientId}}}}\n",
        )
        env = secrets_e2e.env_for(emu, "ci")
        assert secrets_e2e.run(["plan", "--out", "plan.json"], env).exit_code == 0
        emu.reset_stats()
        result = secrets_e2e.run(["apply", "--plan", "plan.json", "--yes"], env)
        assert result.exit_code == 0, result.output
        assert emu.stats()["GET /v1/m2m/v2/list"] == 1
