"""`export --output FILE` over an existing project file: the round trip a user does on
real files keeps the file's leading comments and its auth block, without --force."""

from __future__ import annotations

import pytest
from e2e import ALPHA, BETA, BETA_CLIENT, BETA_SECRET, hand_edit, run, write


def _beta_file(repo):
    return write(
        repo,
        "projects/beta.yaml",
        f"""
        # yaml-language-server: $schema=../schemas/project.schema.json
        # Beta: the sandbox our partners try.

        # Owned by the platform team.
        id: {BETA}
        name: Beta (old name)
        signupEnabled: false   # an inline comment goes with the value
        # Its M2M client, by name:
        auth:
          clientIdEnv: BETA_ID      # the CI client
          clientSecretEnv: BETA_SECRET
        # a comment after the block
        """,
    )


BETA_ENV = {"OYSTEHR_ACCESS_TOKEN": None, "BETA_ID": BETA_CLIENT, "BETA_SECRET": BETA_SECRET}


def test_export_over_the_projects_own_file_keeps_its_comments_and_auth(repo, emu):
    path = _beta_file(repo)
    args = ["export", "--project-id", BETA, "--include", "settings", "-o", "projects/beta.yaml"]
    emu.reset_stats()
    # No --force, and no OYSTEHR_* credentials: it reads with those the auth block names.
    result = run(args, emu, BETA_ENV)
    assert result.exit_code == 0, result.output
    assert result.stderr == (
        "Wrote projects/beta.yaml (kept its leading comments and auth block).\n"
    )
    assert path.read_text() == (
        "# yaml-language-server: $schema=../schemas/project.schema.json\n"
        "# Beta: the sandbox our partners try.\n"
        "\n"
        "# Owned by the platform team.\n"
        f"id: {BETA}\n"
        "name: Beta Sandbox\n"
        "description: Beta sandbox\n"
        "signupEnabled: true\n"
        "defaultPatientRole: Patient\n"
        "defaultSSOUserRole: Patient\n"
        "fhirVersion: r4\n"
        "# Its M2M client, by name:\n"
        "auth:\n"
        "  clientIdEnv: BETA_ID      # the CI client\n"
        "  clientSecretEnv: BETA_SECRET\n"
    )
    assert emu.stats()["POST /oauth/token"] == 1  # as the auth block's client
    assert BETA_SECRET not in result.output + result.stderr
    # The round trip: it plans with no change, with the same credentials.
    plan = run(["plan", "--detailed-exitcode"], emu, BETA_ENV)
    assert plan.exit_code == 0, plan.output
    assert plan.stdout.endswith("Plan: 0 to change, 1 unchanged, 0 errors.\n")


def test_a_file_without_auth_keeps_its_comments_and_gets_the_auth_hint(repo, emu):
    path = write(repo, "projects/alpha.yaml", f"# Alpha, by hand\nid: {ALPHA}\nname: x\n")
    hand_edit(emu, ALPHA, {"description": "edited live"})
    result = run(["export", "--project-id", ALPHA, "--include", "settings", "-o", str(path)], emu)
    assert result.exit_code == 0, result.output
    assert result.stderr == "Wrote " + str(path) + " (kept its leading comments).\n"
    text = path.read_text()
    assert text.startswith(f"# Alpha, by hand\nid: {ALPHA}\nname: Alpha Clinic\n")
    assert "description: edited live\n" in text
    assert text.endswith(
        "# auth: {clientIdEnv: MY_PROJECT_CLIENT_ID, clientSecretEnv: MY_PROJECT_CLIENT_SECRET}\n"
    )


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (f"id: {BETA}\nname: Beta\n", f"is the project file of {BETA}, not {ALPHA}"),
        ("keep me\n", f"exists and is not a project file for {ALPHA}"),
    ],
)
def test_any_other_existing_file_still_needs_force(repo, emu, text, why):
    path = write(repo, "projects/beta.yaml", text)
    args = ["export", "--project-id", ALPHA, "--output", "projects/beta.yaml"]
    result = run(args, emu)
    assert result.exit_code == 1
    assert result.stderr == f"Error: projects/beta.yaml {why}; pass --force to overwrite it\n"
    assert path.read_text() == text
    assert emu.stats() == {}
    forced = run([*args, "--force", "--include", "settings"], emu)
    assert forced.exit_code == 0, forced.output
    assert forced.stderr == "Wrote projects/beta.yaml.\n"
    assert path.read_text().startswith(f"id: {ALPHA}\nname: Alpha Clinic\n")  # nothing kept


def test_a_broken_auth_block_is_one_line_and_nothing_is_written(repo, emu):
    path = write(repo, "projects/beta.yaml", f"id: {BETA}\nauth: {{clientIdEnv: BETA_ID}}\n")
    result = run(["export", "--project-id", BETA, "-o", "projects/beta.yaml"], emu, BETA_ENV)
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: projects/beta.yaml:2: its auth block is not valid (")
    assert result.stderr.endswith(
        "); fix it (reconciler validate) or pass --force to overwrite the file\n"
    )
    assert result.stderr.count("\n") == 1
    assert path.read_text() == f"id: {BETA}\nauth: {{clientIdEnv: BETA_ID}}\n"
    assert emu.stats() == {}


def test_the_auth_blocks_variables_must_be_set(repo, emu):
    _beta_file(repo)
    result = run(["export", "--project-id", BETA, "-o", "projects/beta.yaml"], emu)
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: auth names environment variable(s) that are not set: BETA_ID, BETA_SECRET "
        "(export the Project's credentials under those names; in CI the workflows map them "
        "from the secrets `reconciler init` lists)\n"
    )
