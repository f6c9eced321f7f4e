"""Issue 10: a project file cannot print a secret. `${NAME}` reads only
RECONCILER_VAR_NAME, a substituted value holding a credential is refused, `auth` cannot
name GitHub's or our own variables, and a symlink out of the folder is refused unread.
End to end against the e2e emulator: exit code, the one line, no request, and the
secret nowhere (stdout, stderr, plan file, step summary).
"""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner
from e2e import ALPHA, BETA, run, write

from reconciler.cli import cli

SECRET = "production-secret-5b1e0f9a"


def everywhere(repo, result) -> str:
    texts = [result.stdout, result.stderr]
    for name in ("plan.json", "summary.md"):
        if (repo / name).exists():
            texts.append((repo / name).read_text())
    return "\n".join(texts)


def test_a_file_cannot_read_a_credential_by_its_name(repo, emu):
    # The issue's first case: the plan job holds PRODUCTION_CLIENT_SECRET for beta's auth.
    write(
        repo, "projects/alpha.yaml", f'id: {ALPHA}\ndescription: "${{PRODUCTION_CLIENT_SECRET}}"\n'
    )
    write(
        repo,
        "projects/beta.yaml",
        f"id: {BETA}\nauth: {{clientIdEnv: PRODUCTION_CLIENT_ID, "
        "clientSecretEnv: PRODUCTION_CLIENT_SECRET}\n",
    )
    env = {
        "PRODUCTION_CLIENT_ID": "production-client",
        "PRODUCTION_CLIENT_SECRET": SECRET,
        "GITHUB_STEP_SUMMARY": str(repo / "summary.md"),
    }
    emu.reset_stats()
    result = run(["plan", "--out", "plan.json", "--format", "markdown"], emu, env)
    assert result.exit_code == 1
    assert result.stderr == (
        "projects/alpha.yaml:2:14: description: RECONCILER_VAR_PRODUCTION_CLIENT_SECRET is "
        "not set (PRODUCTION_CLIENT_SECRET is set but is not read)\n"
        "Error: 1 problem in the project files; nothing was read or written\n"
    )
    assert emu.stats() == {}
    assert SECRET not in everywhere(repo, result)


@pytest.mark.parametrize(
    "credential",
    [
        "OYSTEHR_ACCESS_TOKEN",
        "OYSTEHR_CLIENT_SECRET",
        "OYSTEHR_CLIENT_ID",
        "GITHUB_TOKEN",
        "BETA_KEY",
    ],
)
def test_a_substituted_value_holding_a_credential_is_refused(repo, emu, credential):
    write(repo, "projects/alpha.yaml", f'id: {ALPHA}\nname: Alpha\ndescription: "key: ${{DESC}}"\n')
    write(repo, "projects/beta.yaml", f"id: {BETA}\nauth: {{accessTokenEnv: BETA_KEY}}\n")
    env = {
        "RECONCILER_VAR_DESC": f"see {SECRET} here",
        credential: SECRET,
        "GITHUB_STEP_SUMMARY": str(repo / "summary.md"),
    }
    emu.reset_stats()
    result = run(["plan", "--out", "plan.json"], emu, env)
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == (
        "projects/alpha.yaml:3:14: description: RECONCILER_VAR_DESC holds the value of "
        f"{credential}, a credential: it would show in plans and PR comments"
    )
    # Alpha's reads may have started before beta's file named BETA_KEY (a plan reads a
    # Project as soon as its file is valid on its own); nothing was written or shown.
    assert all(key.startswith("GET ") for key in emu.stats())
    assert SECRET not in everywhere(repo, result)


def test_short_credentials_and_defaults_are_not_compared(repo, emu):
    write(
        repo,
        "projects/alpha.yaml",
        f'id: {ALPHA}\nname: "${{NAME}}"\ndescription: "${{D:-{SECRET}}}"\n',
    )
    env = {"RECONCILER_VAR_NAME": "Alpha Clinic", "OYSTEHR_CLIENT_ID": "Alpha", "X": SECRET}
    result = run(["plan", "--format", "json"], emu, env)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("name", ["GITHUB_TOKEN", "ACTIONS_RUNTIME_TOKEN", "RECONCILER_VAR_X"])
def test_auth_may_not_name_reserved_variables(repo, name):
    write(repo, "projects/alpha.yaml", f"id: {ALPHA}\nauth:\n  accessTokenEnv: {name}\n")
    result = CliRunner().invoke(cli, ["validate"])
    assert result.exit_code == 1
    assert result.stdout == (
        "projects/alpha.yaml:3:19: auth.accessTokenEnv may not name a variable starting with "
        "GITHUB_, ACTIONS_ or RECONCILER_VAR_: those belong to GitHub Actions and to ${...} "
        "substitution, not to a Project's credentials\n"
    )


def test_a_symlink_out_of_the_folder_is_refused_unread(repo, emu, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside") / "shadow"
    outside.write_text("root:hunter2-hash:19000:0:99999:7:::\n")
    write(repo, "projects/alpha.yaml", f"id: {ALPHA}\n")
    os.symlink(outside, repo / "projects" / "x.yaml")
    emu.reset_stats()
    result = run(["plan"], emu)
    assert result.exit_code == 1
    assert result.stderr == (
        "projects/x.yaml:1:1: refused: a link to a file outside projects; a project file "
        "lives in it\nError: 1 problem in the project files; nothing was read or written\n"
    )
    assert "hunter2" not in result.output
    assert emu.stats() == {}
    named = CliRunner().invoke(cli, ["validate", "projects/x.yaml"])
    assert named.stdout == (
        "projects/x.yaml:1:1: refused: a link to a file outside its folder; a project file "
        "lives in it\n"
    )


def test_a_symlink_inside_the_folder_is_read(repo, emu):
    write(repo, "projects/real/alpha.yaml", f"id: {ALPHA}\nname: Alpha Clinic\n")
    os.symlink(repo / "projects/real/alpha.yaml", repo / "projects/alias.yaml")
    result = CliRunner().invoke(cli, ["validate"])
    assert result.exit_code == 0, result.output
    assert result.stderr == "1 file valid.\n"
