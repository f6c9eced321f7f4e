"""Issue 10: the error messages a new user hit, each one clear line (the URL-without-scheme
case is in test_trust_server.py with the other URL rules)."""

from __future__ import annotations

from e2e import ALPHA, BETA, BETA_CLIENT, BETA_SECRET, run, write
from hostile import HostileServer, response

PAGE = "<!DOCTYPE html>\n<html><body>\n<h1>Welcome to nginx!</h1>\n</body></html>\n"


def test_an_api_url_without_v1_gets_a_hint(repo, emu):
    write(repo, "projects/alpha.yaml", f"id: {ALPHA}\n")
    result = run(["plan", "--api-url", emu.url], emu)
    assert result.exit_code == 1
    assert result.stdout.splitlines()[1] == (
        f"    error: GET {emu.url}/project answered 404: no such endpoint: /project; "
        "is the API URL right? it should end in /v1"
    )


def m2m(repo):
    write(repo, "projects/beta.yaml", f"id: {BETA}\n")
    return {
        "OYSTEHR_ACCESS_TOKEN": None,
        "OYSTEHR_CLIENT_ID": BETA_CLIENT,
        "OYSTEHR_CLIENT_SECRET": BETA_SECRET,
    }


def test_html_from_the_auth_url_names_the_auth_url(repo, emu):
    env = m2m(repo)
    for status in (200, 404):
        with HostileServer(
            lambda r, status=status: response(status, PAGE, content_type="text/html")
        ) as auth:
            url = auth.url + "/token"
            result = run(["plan", "--auth-url", url], emu, env)
            assert auth.count("POST /token") == 1
        assert result.exit_code == 1
        answer = "a text/html page, not JSON" if status == 200 else "a text/html page"
        assert result.stdout.splitlines()[1] == (
            f"    error: POST {url} answered {status} with {answer}; is the auth URL right? "
            f"{url} should be the OAuth token endpoint (--auth-url)"
        )
        assert "API URL" not in result.output and "<h1>" not in result.output
        assert BETA_SECRET not in result.output


def test_a_client_id_without_its_secret_names_the_missing_one(repo, emu):
    env = m2m(repo) | {"OYSTEHR_CLIENT_SECRET": None}
    emu.reset_stats()
    result = run(["plan"], emu, env)
    assert result.exit_code == 1
    assert result.stdout.splitlines()[1] == (
        "    error: OYSTEHR_CLIENT_ID is set but OYSTEHR_CLIENT_SECRET is not: an M2M client "
        "needs both"
    )
    assert emu.stats() == {}
    result = run(["plan"], emu, m2m(repo) | {"OYSTEHR_CLIENT_ID": None})
    assert "OYSTEHR_CLIENT_SECRET is set but OYSTEHR_CLIENT_ID is not" in result.stdout


def test_plurals(repo, emu):
    write(repo, "projects/alpha.yaml", f"id: {ALPHA}\nsignupEnabled: true\n")
    result = run(["apply", "--yes", "--max-changes", "0"], emu)
    assert result.stderr.endswith(
        "Error: the plan makes 1 write (settings PATCHes and object writes) in 1 Project, "
        "more than --max-changes 0; nothing was applied\n"
    )
    write(repo, "projects/beta.yaml", f"id: {BETA}\nauth: {{accessTokenEnv: UNSET_TOKEN}}\n")
    result = run(["plan", "--api-url", "http://127.0.0.1:9/v1", "--retries", "0"], emu)
    assert "(after 1 attempt)\n" in result.stdout
    assert result.stdout.endswith("Plan: 0 to change, 0 unchanged, 2 errors.\n")
    result = run(["plan", "projects/beta.yaml"], emu)
    assert result.stdout.endswith("Plan: 0 to change, 0 unchanged, 1 error.\n")
