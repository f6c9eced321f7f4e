"""Issue 10: hostile or broken servers are one Project's error, never a crash of the run,
and never print a secret. Each case runs the CLI against a hostile server of our own
(tests/hostile.py) over a real socket, and checks the exit code, the one line printed,
the PATCHes the server saw, and that the token appears nowhere: stdout, stderr, the plan
file, the step summary.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from hostile import (
    HostileServer,
    Request,
    json_response,
    project_doc,
    project_files,
    response,
)

from reconciler.cli import cli

TOKEN = "hostile-test-token-4f9a1c"


def invoke(repo: Path, args: list[str], server: Any, **env: str | None) -> Result:
    base: dict[str, str | None] = {
        "OYSTEHR_PROJECT_API_URL": server.api_url if server else None,
        "OYSTEHR_AUTH_URL": server.auth_url if server else None,
        "OYSTEHR_ACCESS_TOKEN": TOKEN,
        "OYSTEHR_CLIENT_ID": None,
        "OYSTEHR_CLIENT_SECRET": None,
        "GITHUB_STEP_SUMMARY": str(repo / "summary.md"),
        "NO_COLOR": None,
    }
    return CliRunner().invoke(cli, args, env=base | env, catch_exceptions=False)


def nowhere(repo: Path, result: Result, *secrets: str) -> None:
    """No secret in stdout, stderr, the plan file or the step summary; no traceback."""
    places = [result.stdout, result.stderr]
    for name in ("plan.json", "summary.md"):
        if (repo / name).exists():
            places.append((repo / name).read_text())
    for secret in secrets:
        for text in places:
            assert secret not in text
    assert "Traceback" not in result.output


def plan_against(repo: Path, reply: Any, *args: str) -> tuple[Result, str]:
    """`reconciler plan --out plan.json ARGS` against a hostile server; (result, API URL)."""
    with HostileServer(reply) as server:
        return invoke(repo, ["plan", "--out", "plan.json", *args], server), server.api_url


def project_error(repo: Path, result: Result, line: str) -> None:
    """Exit 1 with `line` as a Project's error in the plan, and no token anywhere."""
    assert result.exit_code == 1
    assert f"    error: {line}\n" in result.stdout
    nowhere(repo, result, TOKEN)


def good(request: Request, **fields: Any) -> bytes:
    return json_response(200, project_doc(request.headers["x-oystehr-project-id"], **fields))


# Wrong shapes: the Project's error, the others still planned ----------------------


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ([], "GET {api}/project: expected an object, got []"),
        (
            {"defaultPatientRole": "Patient"},
            'GET {api}/project: defaultPatientRole: expected an object, got "Patient"',
        ),
        ({"name": 5}, "GET {api}/project: name: expected a string, got 5"),
        (
            {"signupEnabled": "yes"},
            'GET {api}/project: signupEnabled: expected a boolean, got "yes"',
        ),
        (
            {"defaultSSOUserRole": {"name": "x"}},
            "GET {api}/project: defaultSSOUserRole: missing key 'id'",
        ),
    ],
)
def test_a_project_of_the_wrong_shape_is_that_projects_error(repo, answer, reason):
    bad, fine = project_files(repo, 2)

    def reply(request: Request) -> bytes:
        if request.headers["x-oystehr-project-id"] == fine:
            return good(request)
        if isinstance(answer, dict):
            return good(request, **answer)
        return json_response(200, answer)

    result, api = plan_against(repo, reply)
    project_error(repo, result, reason.format(api=api))
    assert result.stdout.endswith("Plan: 1 to change, 0 unchanged, 1 error.\n")


@pytest.mark.parametrize(
    ("roles", "reason"),
    [
        ({"roles": []}, 'GET {api}/iam/role: expected a list, got {{"roles": []}}'),
        (["Patient"], 'GET {api}/iam/role[0]: expected an object, got "Patient"'),
        ([{"id": 7, "name": "Patient"}], "GET {api}/iam/role[0].id: expected a string, got 7"),
    ],
)
def test_a_role_list_of_the_wrong_shape_is_that_projects_error(repo, roles, reason):
    project_files(repo, 1, "defaultPatientRole: Patient\n")

    def reply(request: Request) -> bytes:
        return json_response(200, roles) if request.path == "/v1/iam/role" else good(request)

    result, api = plan_against(repo, reply)
    project_error(repo, result, reason.format(api=api))


@pytest.mark.parametrize(
    ("patch_reply", "reason"),
    [
        (
            json_response(200, []),
            "PATCH {api}/project: expected an object, got []; the PATCH was sent and may "
            "have been applied: plan again to see",
        ),
        (
            response(200, "<html>ok</html>", content_type="text/html"),
            "PATCH {api}/project answered 200 with a text/html page, not JSON; is the API URL "
            "right? (--api-url); the PATCH was sent and may have been applied: plan again to see",
        ),
        (
            json_response(302, {"name": "New name"}, headers={"Location": "http://127.0.0.1:9/"}),
            "PATCH {api}/project answered 302: redirects are not followed",
        ),
        (
            response(200, b"{" + b" " * (11 * 1024 * 1024) + b"}"),
            "PATCH {api}/project: the answer's body is over 10 MB; stopped reading",
        ),
    ],
    ids=["a list", "an HTML page", "a 302", "11 MB"],
)
def test_a_patch_answered_wrongly_is_failed_and_the_report_still_prints(repo, patch_reply, reason):
    ids = project_files(repo, 2)

    def reply(request: Request) -> bytes:
        if request.method == "PATCH":
            if request.headers["x-oystehr-project-id"] == ids[0]:
                return patch_reply
            return good(request, name="New name")
        return good(request)

    with HostileServer(reply) as server:
        result = invoke(repo, ["apply", "--yes"], server)
        api = server.api_url
        patches = server.count("PATCH /v1/project")
    assert result.exit_code == 1
    assert patches == 2
    assert (
        f"! Hostile ({ids[0]})  projects/p0.yaml: failed: {reason.format(api=api)}\n"
        in result.stdout
    )
    assert result.stdout.endswith("Apply: 1 applied, 0 unchanged, 1 failed.\n")
    assert (
        "### reconciler apply: 1 applied, 0 unchanged, 1 failed"
        in (repo / "summary.md").read_text()
    )
    nowhere(repo, result, TOKEN)


def test_a_redirect_is_never_followed_so_the_token_stays(repo):
    [project_id] = project_files(repo, 1)
    with HostileServer(good) as elsewhere:
        location = elsewhere.api_url + "/project"
        with HostileServer(
            lambda r: json_response(302, {}, headers={"Location": location})
        ) as server:
            result = invoke(repo, ["plan"], server)
            api = server.api_url
        assert elsewhere.requests == []
    assert result.exit_code == 1
    assert (
        f"    error: GET {api}/project answered 302: redirects are not followed\n" in result.stdout
    )


def test_a_server_echoing_the_token_has_it_redacted(repo):
    # A proxy that puts the Authorization header in its error message.
    project_files(repo, 1)

    def reply(request: Request) -> bytes:
        return json_response(400, {"message": f"bad header {request.headers['authorization']}"})

    result, api = plan_against(repo, reply)
    project_error(repo, result, f"GET {api}/project answered 400: bad header Bearer ***")


# URL rules, checked at start -----------------------------------------------------


@pytest.mark.parametrize(
    ("api_url", "line"),
    [
        (
            "127.0.0.1:35281/v1",
            "Error: --api-url (OYSTEHR_PROJECT_API_URL) '127.0.0.1:35281/v1' must start with "
            "https:// (or http:// for loopback), like https://project-api.zapehr.com/v1\n",
        ),
        (
            "http://api.example.com/v1",
            "Error: --api-url (OYSTEHR_PROJECT_API_URL) http://api.example.com/v1 must use "
            "https://: plain http:// is only for loopback (localhost, 127.0.0.0/8, ::1), so a "
            "token never crosses a network in the clear\n",
        ),
        (
            "https://admin:hunter2-password@api.example.com/v1",
            "Error: --api-url (OYSTEHR_PROJECT_API_URL) must not hold credentials (user:pass@): "
            "give them in the environment (OYSTEHR_ACCESS_TOKEN, or OYSTEHR_CLIENT_ID and "
            "OYSTEHR_CLIENT_SECRET)\n",
        ),
    ],
)
def test_api_urls_are_https_or_loopback_and_hold_no_credentials(repo, api_url, line):
    project_files(repo, 1)
    result = invoke(repo, ["plan", "--api-url", api_url], None)
    assert result.exit_code == 1
    assert (result.stdout, result.stderr) == ("", line)
    nowhere(repo, result, TOKEN, "hunter2-password")


@pytest.mark.parametrize(
    "url", ["http://localhost:9/v1", "http://127.8.0.1:9/v1", "http://[::1]:9/v1"]
)
def test_plain_http_to_loopback_is_allowed(repo, url):
    project_files(repo, 1)
    result = invoke(repo, ["plan", "--api-url", url, "--retries", "0"], None)
    assert result.exit_code == 1
    assert "cannot connect" in result.stdout


# Credentials ---------------------------------------------------------------------


@pytest.mark.parametrize("value", [TOKEN + "\r", TOKEN + "\n", "two words-token", TOKEN + "\x1b"])
def test_a_credential_with_whitespace_or_a_control_is_refused_at_start(repo, value):
    project_files(repo, 1)
    with HostileServer(good) as server:
        result = invoke(repo, ["plan"], server, OYSTEHR_ACCESS_TOKEN=value)
        assert server.requests == []
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: OYSTEHR_ACCESS_TOKEN holds whitespace or a control character (a pasted "
        "newline?); set the value alone\n"
    )
    nowhere(repo, result, value.strip(), "two words")


def test_an_auth_named_credential_with_a_newline_is_refused_naming_it(repo):
    project_files(repo, 1, "auth: {clientIdEnv: PROD_ID, clientSecretEnv: PROD_SECRET}\n")
    with HostileServer(good) as server:
        result = invoke(
            repo, ["plan"], server, PROD_ID="prod-client", PROD_SECRET="prod-secret-77\n"
        )
        assert server.requests == []
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: PROD_SECRET holds whitespace or a control character")
    nowhere(repo, result, "prod-secret-77")


def test_a_plan_file_naming_a_credential_with_a_newline_is_refused_too(repo):
    project_files(repo, 1)
    with HostileServer(good) as server:
        assert invoke(repo, ["plan", "--out", "plan.json"], server).exit_code == 0
        server.requests.clear()
        result = invoke(
            repo,
            ["apply", "--plan", "plan.json", "--yes"],
            server,
            OYSTEHR_ACCESS_TOKEN="a\rb-token",
        )
        assert server.requests == []
    assert result.exit_code == 1
    assert "Error: OYSTEHR_ACCESS_TOKEN holds whitespace" in result.stderr
    assert result.stdout == ""  # refused before the plan is verified, so before it is shown


def test_the_client_id_is_never_printed_even_when_it_is_a_secret(repo, emu):
    # The case: a file names a secret as its client id, and the token request
    # is refused: the error names the variable, never its value.
    from e2e import ALPHA, run

    secret = "production-secret-d41d8cd98f"
    (repo / "projects").mkdir()
    (repo / "projects/alpha.yaml").write_text(
        f"id: {ALPHA}\nauth: {{clientIdEnv: PRODUCTION_CLIENT_SECRET, clientSecretEnv: X}}\n"
    )
    summary = repo / "summary.md"
    env = {"PRODUCTION_CLIENT_SECRET": secret, "X": "xx", "GITHUB_STEP_SUMMARY": str(summary)}
    emu.reset_stats()
    result = run(["plan", "--out", "plan.json"], emu, env)
    assert result.exit_code == 1
    assert "token request for the M2M client in PRODUCTION_CLIENT_SECRET refused (401)" in (
        result.stdout
    )
    assert emu.stats() == {"POST /oauth/token": 1}
    for text in (
        result.stdout,
        result.stderr,
        summary.read_text(),
        (repo / "plan.json").read_text(),
    ):
        assert secret not in text


def test_the_markdown_footer_never_shows_userinfo():
    import io

    from reconciler.plan import Plan
    from reconciler.render import render_markdown

    out = io.StringIO()
    render_markdown(Plan(api_url="https://user:pw-123456@api.example.com/v1", projects=()), out)
    assert "https://api.example.com/v1" in out.getvalue()
    assert "pw-123456" not in out.getvalue() and "user:" not in out.getvalue()


def test_an_html_404_is_one_line_with_a_hint(repo):
    project_files(repo, 1)
    page = "<!DOCTYPE html>\n<html>\n<h1>Not Found</h1>\n<p>nothing here</p>\n</html>\n"
    with HostileServer(
        lambda r: response(404, page, content_type="text/html; charset=utf-8")
    ) as server:
        result = invoke(repo, ["plan"], server)
        api = server.api_url
    assert result.exit_code == 1
    assert result.stdout.splitlines()[1] == (
        f"    error: GET {api}/project answered 404 with a text/html page; is the API URL "
        "right? (--api-url)"
    )
    assert "<h1>" not in result.output


def test_json_status_for_a_wrong_patch_answer(repo):
    ids = project_files(repo, 1)

    def reply(request: Request) -> bytes:
        return json_response(200, []) if request.method == "PATCH" else good(request)

    with HostileServer(reply) as server:
        result = invoke(repo, ["apply", "--yes", "--format", "json"], server)
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["summary"]["failed"] == 1
    assert doc["projects"][0]["projectId"] == ids[0]
    assert doc["projects"][0]["status"] == "failed"


@pytest.mark.parametrize("transport", ["PooledTransport", "ClientTransport"])
def test_both_transports_bound_time_and_size_and_never_follow_redirects(transport):
    # ClientTransport is what runs behind a proxy (HTTPS_PROXY set): the same bounds hold.
    import time

    import httpx
    from hostile import hang, trickle

    from reconciler import transport as transports

    wire = getattr(transports, transport)()

    def send(server: HostileServer, timeout: float = 1.0) -> httpx.Response:
        timeouts = httpx.Timeout(timeout).as_dict()
        request = httpx.Request("GET", server.url + "/x", extensions={"timeout": timeouts})
        return wire.handle_request(request)

    for answer in (lambda r: trickle(json_response(200, {"a": "b" * 20}), 0.2), lambda r: hang()):
        with HostileServer(answer) as server:
            started = time.monotonic()
            with pytest.raises(httpx.ReadTimeout, match="no complete answer within 1 s"):
                send(server)
            assert time.monotonic() - started < 1.5
    big = response(200, b"x" * (11 * 1024 * 1024))
    with HostileServer(lambda r: big) as server, pytest.raises(transports.BodyTooLarge):
        send(server, 10)
    with HostileServer(lambda r: json_response(302, {}, headers={"Location": "/y"})) as server:
        assert send(server).status_code == 302
        assert [r.path for r in server.requests] == ["/x"]
    wire.close()
