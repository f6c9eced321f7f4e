"""plan and drift end to end: the CLI against the emulator over a real socket."""

import json

import pytest
from e2e import (
    A_ADMIN,
    A_PATIENT,
    A_STAFF_1,
    ALPHA,
    BETA,
    BETA_CLIENT,
    BETA_SECRET,
    GAMMA,
    SEED,
    hand_edit,
    run,
    write,
)

from reconciler.emulator import Faults, serve


def alpha(repo, body="name: Alpha Clinic\n"):
    return write(repo, "projects/alpha.yaml", f"id: {ALPHA}\n{body}")


def test_unchanged_plan_costs_one_get_per_project(repo, emu):
    alpha(repo, "name: Alpha Clinic\ndefaultPatientRole: Patient\nfhirVersion: r4\n")
    write(repo, "projects/beta.yaml", f"id: {BETA}\nsignupEnabled: true\n")
    emu.reset_stats()
    result = run(["plan"], emu)
    assert result.exit_code == 0, result.output
    assert result.stdout == "Plan: 0 to change, 2 unchanged, 0 errors.\n"
    assert emu.stats() == {"GET /v1/project": 2}


def test_each_change_type_and_the_exact_patch(repo, emu):
    alpha(
        repo,
        "name: Alpha\ndescription: New words\nsignupEnabled: true\n"
        f"defaultPatientRole: null\ndefaultSSOUserRole: {{id: {A_STAFF_1}}}\n",
    )
    emu.reset_stats()
    result = run(["plan", "--format", "json"], emu)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    [project] = doc["projects"]
    assert project["status"] == "changed"
    assert project["patch"] == {
        "name": "Alpha",
        "description": "New words",
        "signupEnabled": True,
        "defaultPatientRoleId": None,
        "defaultSSOUserRoleId": A_STAFF_1,
    }
    assert project["changes"][3] == {
        "field": "defaultPatientRole",
        "before": {"id": A_PATIENT, "name": "Patient"},
        "after": None,
        "source": "projects/alpha.yaml:5",
    }
    assert emu.stats() == {"GET /v1/project": 1, "GET /v1/iam/role": 1}


def test_text_plan_and_detailed_exitcode(repo, emu):
    alpha(repo, "signupEnabled: true\ndefaultPatientRole: Admin\n")
    result = run(["plan", "--detailed-exitcode"], emu)
    assert result.exit_code == 2
    assert result.stdout == (
        f"~ Alpha Clinic ({ALPHA})  projects/alpha.yaml\n"
        "    ~ signupEnabled: false -> true\n"
        f"    ~ defaultPatientRole: Patient ({A_PATIENT}) -> Admin ({A_ADMIN})\n"
        "\n"
        "Plan: 1 to change, 0 unchanged, 0 errors.\n"
    )
    assert run(["plan"], emu).exit_code == 0


def test_absent_keys_are_never_read_into_the_diff(repo, emu):
    alpha(repo, "signupEnabled: false\n")
    hand_edit(emu, ALPHA, {"description": "edited by hand", "defaultPatientRoleId": None})
    result = run(["plan", "--format", "json"], emu)
    project = json.loads(result.stdout)["projects"][0]
    assert project["status"] == "unchanged" and project["managedKeys"] == ["signupEnabled"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "defaultPatientRole: Nurse\n",
            "projects/alpha.yaml:2:21: defaultPatientRole: no role named 'Nurse' in this "
            "Project (roles: Admin, Patient, Staff)",
        ),
        ("defaultPatientRole: Staff\n", "2 roles are named 'Staff'"),
        (
            "defaultPatientRole: {id: 99999999-9999-4999-8999-999999999999}\n",
            "no role with id 99999999-9999-4999-8999-999999999999",
        ),
    ],
)
def test_role_errors_name_file_line_and_roles(repo, emu, body, message):
    alpha(repo, body)
    write(repo, "projects/beta.yaml", f"id: {BETA}\nsignupEnabled: false\n")
    result = run(["plan"], emu)
    assert result.exit_code == 1
    assert message in result.stdout
    # The other Project's plan is not hidden by this one's error.
    assert "~ Beta Sandbox" in result.stdout
    assert result.stdout.endswith("Plan: 1 to change, 0 unchanged, 1 error.\n")


def test_fhir_version_is_immutable(repo, emu):
    write(repo, "projects/gamma.yaml", f"id: {GAMMA}\nfhirVersion: r4\n")
    result = run(["plan", "--format", "json"], emu)
    assert result.exit_code == 1
    project = json.loads(result.stdout)["projects"][0]
    assert project["error"] == (
        "projects/gamma.yaml:2:14: fhirVersion is immutable: live r5, desired r4"
    )
    assert project["patch"] == {}


def test_auth_from_file_env_names_uses_m2m_and_one_token(repo, emu):
    write(
        repo,
        "projects/beta.yaml",
        f"id: {BETA}\nsignupEnabled: false\n"
        "auth: {clientIdEnv: BETA_ID, clientSecretEnv: BETA_SECRET}\n",
    )
    # Loaded after beta.yaml (whose credentials are not set in this run), so no read has
    # started when the duplicate stops the run: none can reach the emulator after the reset.
    write(repo, "projects/zz-copy/other.yml", f"id: {BETA}\n")
    assert run(["plan"], emu).exit_code == 1  # duplicate id: validation first
    (repo / "projects/zz-copy/other.yml").unlink()
    emu.reset_stats()
    env = {"BETA_ID": BETA_CLIENT, "BETA_SECRET": BETA_SECRET, "OYSTEHR_ACCESS_TOKEN": None}
    result = run(["plan", "--format", "json"], emu, env)
    assert result.exit_code == 0, result.output
    assert emu.stats() == {"POST /oauth/token": 1, "GET /v1/project": 1}
    assert BETA_SECRET not in result.output


def test_global_m2m_credentials_fetch_one_token_per_client(repo, emu):
    write(repo, "projects/beta.yaml", f"id: {BETA}\nsignupEnabled: true\n")
    emu.reset_stats()
    env = {
        "OYSTEHR_ACCESS_TOKEN": None,
        "OYSTEHR_CLIENT_ID": BETA_CLIENT,
        "OYSTEHR_CLIENT_SECRET": BETA_SECRET,
    }
    result = run(["plan"], emu, env)
    assert result.exit_code == 0, result.output
    assert emu.stats()["POST /oauth/token"] == 1


def test_missing_auth_variable_is_an_error_for_that_project_only(repo, emu):
    write(repo, "projects/beta.yaml", f"id: {BETA}\nauth: {{accessTokenEnv: BETA_TOKEN}}\n")
    alpha(repo)
    result = run(["plan"], emu)
    assert result.exit_code == 1
    assert "BETA_TOKEN" in result.stdout and "not set" in result.stdout
    assert "Plan: 0 to change, 1 unchanged, 1 error." in result.stdout


def test_bad_secret_is_refused_and_never_echoed(repo, emu):
    write(repo, "projects/beta.yaml", f"id: {BETA}\n")
    env = {
        "OYSTEHR_ACCESS_TOKEN": None,
        "OYSTEHR_CLIENT_ID": BETA_CLIENT,
        "OYSTEHR_CLIENT_SECRET": "wrong-secret-xyz",
    }
    result = run(["plan", "--format", "json"], emu, env)
    assert result.exit_code == 1
    assert "refused (401)" in result.stdout
    assert "wrong-secret-xyz" not in result.output


def test_m2m_secret_is_not_sent_to_the_default_auth_url(repo, emu):
    write(repo, "projects/beta.yaml", f"id: {BETA}\n")
    env = {
        "OYSTEHR_ACCESS_TOKEN": None,
        "OYSTEHR_CLIENT_ID": BETA_CLIENT,
        "OYSTEHR_CLIENT_SECRET": BETA_SECRET,
        "OYSTEHR_AUTH_URL": None,
    }
    result = run(["plan"], emu, env)
    assert result.exit_code == 1
    assert "pass --auth-url" in result.stdout


def test_api_unreachable_is_one_clear_error_per_project(repo, emu):
    alpha(repo)
    result = run(["plan", "--api-url", "http://127.0.0.1:9/v1", "--retries", "0"], emu)
    assert result.exit_code == 1
    assert "GET http://127.0.0.1:9/v1/project" in result.stdout
    assert "Traceback" not in result.output


def test_validation_problems_stop_before_any_request(repo, emu):
    alpha(repo, "signupEnabled: yes-please\n")
    emu.reset_stats()
    result = run(["plan"], emu)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "projects/alpha.yaml:2:16:" in result.stderr
    assert emu.stats() == {}


def test_project_filter_and_unknown_filter(repo, emu):
    alpha(repo)
    write(repo, "projects/beta.yaml", f"id: {BETA}\n")
    emu.reset_stats()
    assert run(["plan", "--project", "beta"], emu).exit_code == 0
    assert emu.stats() == {"GET /v1/project": 1}
    result = run(["plan", "--project", "nope"], emu)
    assert result.exit_code == 1
    assert "--project matches no project file" in result.stderr


def test_503s_are_retried_with_backoff(repo):
    for i, pid in enumerate([ALPHA, BETA, GAMMA]):
        write(repo, f"projects/p{i}.yaml", f"id: {pid}\n")
    with serve(SEED, faults=Faults(error_rate=0.5, seed=7)) as emu:
        result = run(["plan", "--retries", "10"], emu)
        assert result.exit_code == 0, result.output
        assert result.stdout == "Plan: 0 to change, 3 unchanged, 0 errors.\n"
        assert emu.stats()["GET /v1/project"] > 3  # faults were met, and retried


def test_drift_exit_codes_and_markdown(repo, emu):
    alpha(repo, "signupEnabled: false\n")
    assert run(["drift"], emu).exit_code == 0
    hand_edit(emu, ALPHA, {"signupEnabled": True})
    result = run(["drift"], emu)
    assert result.exit_code == 2
    assert result.stdout.endswith("Drift: 1 drifted, 0 in sync, 0 errors.\n")
    result = run(["drift", "--format", "markdown"], emu)
    assert result.stdout.startswith("<!-- reconciler-drift -->\n")
    write(repo, "projects/gamma.yaml", f"id: {GAMMA}\nfhirVersion: r4\n")
    result = run(["drift"], emu)
    assert result.exit_code == 1  # an error wins over drift
    assert "Drift: 1 drifted, 0 in sync, 1 error." in result.stdout


def test_markdown_out_file_and_step_summary(repo, emu):
    alpha(repo, "signupEnabled: true\n")
    summary = repo / "summary.md"
    result = run(
        ["plan", "--format", "markdown", "--out", "plan.json"],
        emu,
        {"GITHUB_STEP_SUMMARY": str(summary)},
    )
    assert result.exit_code == 0
    marker, heading = result.stdout.split("\n")[:2]
    assert marker == "<!-- reconciler-plan -->"
    assert heading.startswith("### reconciler plan: 1 to change")
    assert "| `signupEnabled` | `false` | `true` |" in result.stdout
    assert summary.read_text().startswith("<!-- reconciler-plan -->")
    doc = json.loads((repo / "plan.json").read_text())
    assert doc["summary"] == {"changed": 1, "unchanged": 0, "errors": 0}
    assert doc["apiUrl"] == emu.api_url


def test_no_project_files_is_an_error(repo, emu):
    (repo / "projects").mkdir()
    result = run(["plan"], emu)
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: no project files found")


def test_shards_partition_the_projects(repo, emu):
    for i, pid in enumerate([ALPHA, BETA, GAMMA]):
        write(repo, f"projects/p{i}.yaml", f"id: {pid}\n")
    seen = []
    for shard in ("1/2", "2/2"):
        doc = json.loads(run(["plan", "--shard", shard, "--format", "json"], emu).stdout)
        seen += [p["projectId"] for p in doc["projects"]]
    assert sorted(seen) == sorted([ALPHA, BETA, GAMMA])
    result = run(["plan", "--shard", "3/2"], emu)
    assert result.exit_code == 1 and "--shard" in result.stderr


def test_429_waits_without_using_retries_but_503_does(repo):
    write(repo, "projects/alpha.yaml", f"id: {ALPHA}\n")
    write(repo, "projects/beta.yaml", f"id: {BETA}\n")
    with serve(SEED, faults=Faults(rate_limit_every=2)) as emu:
        result = run(["plan", "--retries", "0", "--concurrency", "1"], emu)
        assert result.exit_code == 0, result.output
        assert emu.stats() == {"GET /v1/project": 3}  # one 429, waited out, then answered
    (repo / "projects/beta.yaml").unlink()
    with serve(SEED, faults=Faults(error_rate=1.0)) as emu:
        result = run(["plan", "--retries", "2"], emu)
        assert result.exit_code == 1
        assert "answered 503" in result.stdout
        assert emu.stats() == {"GET /v1/project": 3}


def test_verbose_logs_each_request_and_never_a_secret(repo, emu):
    write(
        repo,
        "projects/beta.yaml",
        f"id: {BETA}\nauth: {{clientIdEnv: BETA_ID, clientSecretEnv: BETA_SECRET}}\n",
    )
    env = {"BETA_ID": BETA_CLIENT, "BETA_SECRET": BETA_SECRET}
    result = run(["plan", "-v"], emu, env)
    assert result.exit_code == 0, result.output
    assert f"POST {emu.auth_url} -> 200" in result.stderr
    assert f"GET {emu.api_url}/project -> 200" in result.stderr
    assert BETA_SECRET not in result.output
    assert "Bearer" not in result.output


def test_an_api_answering_html_is_one_clear_error(repo, emu):
    """A wrong --api-url that lands on a web page, not the API."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Page(BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<html>Welcome</html>"
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    alpha(repo)
    with ThreadingHTTPServer(("127.0.0.1", 0), Page) as server:
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01})
        thread.start()
        try:
            url = f"http://127.0.0.1:{server.server_port}/v1"
            result = run(["plan", "--api-url", url], emu)
        finally:
            server.shutdown()
            thread.join()
    assert result.exit_code == 1
    assert (
        f"error: GET {url}/project answered 200 with a text/html page, not JSON; "
        "is the API URL right? (--api-url)\n"
    ) in result.stdout
    assert "Traceback" not in result.output
