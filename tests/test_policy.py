"""The read-only posture (issue 11, SPEC sections 6 and 8): an M2M client whose access
policy allows only the Get and List actions can plan and detect drift, and its apply
is refused by the API with one clear line, writing nothing.

READ_ONLY_POLICY below is the policy the README gives for plan and drift credentials.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result
from conftest import SANDBOX_ID

from reconciler.cli import cli
from reconciler.emulator import RunningEmulator, serve

READ_ONLY_POLICY_YAML = """\
rule:
  - effect: Allow
    resource: Project:Settings
    action: Project:GetProjectInfo
  - effect: Allow
    resource: IAM:Role
    action: [IAM:ListAllRoles, IAM:GetRole]
  - effect: Allow
    resource: App:Application
    action: [App:ListAllApplications, App:GetApplication]
  - effect: Allow
    resource: IAM:M2MClient
    action: [App:ListAllM2MClients, App:GetM2MClient]
  - effect: Allow
    resource: Zambda:Secret
    action: Zambda:ListAllSecrets
  - effect: Allow
    resource: Z3:BucketName
    action: Z3:ListBuckets
  - effect: Allow
    resource: Zambda:Function
    action: [Zambda:ListAllFunctions, Zambda:GetFunction]
"""
READ_ONLY_POLICY: dict[str, Any] = yaml.safe_load(READ_ONLY_POLICY_YAML)

READER_ID, READER_SECRET = "plan-reader", "plan-reader-secret-1f9c"
LIVE_DESCRIPTION = "Sandbox Project for trying out Oystehr"


@pytest.fixture
def reader_emulator(seed_data: dict[str, Any]) -> Any:
    """SANDBOX with one more M2M client, held to the read-only policy."""
    seed_data["projects"][0]["m2mClients"].append(
        {
            "clientId": READER_ID,
            "clientSecret": READER_SECRET,
            "name": "plan and drift (read-only)",
            "accessPolicy": READ_ONLY_POLICY,
        }
    )
    with serve(seed_data) as emu:
        yield emu


@pytest.fixture
def project_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A repository whose file for SANDBOX changes its description."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "projects" / "sandbox.yaml"
    path.parent.mkdir()
    path.write_text(f"id: {SANDBOX_ID}\ndescription: Reviewed in Git\n")
    return path


def run_as_reader(emu: RunningEmulator, *args: str) -> Result:
    env = {
        "OYSTEHR_CLIENT_ID": READER_ID,
        "OYSTEHR_CLIENT_SECRET": READER_SECRET,
        "OYSTEHR_ACCESS_TOKEN": None,
        "OYSTEHR_PROJECT_API_URL": None,
        "OYSTEHR_AUTH_URL": None,
        "GITHUB_STEP_SUMMARY": None,
        "NO_COLOR": "1",
    }
    urls = ["--api-url", emu.api_url, "--auth-url", emu.auth_url]
    return CliRunner().invoke(cli, [*args, *urls], env=env, catch_exceptions=False)


def test_read_only_client_plans(reader_emulator, project_file):
    result = run_as_reader(reader_emulator, "plan", "--detailed-exitcode")
    assert result.exit_code == 2, result.output
    assert "description" in result.stdout
    assert "Reviewed in Git" in result.stdout
    assert READER_SECRET not in result.output


def test_read_only_client_detects_drift(reader_emulator, project_file):
    result = run_as_reader(reader_emulator, "drift")
    assert result.exit_code == 2, result.output
    assert "description" in result.stdout


def test_read_only_client_cannot_apply(reader_emulator, project_file):
    reader_emulator.reset_stats()
    result = run_as_reader(reader_emulator, "apply", "--yes")
    assert result.exit_code == 1, result.output
    # One line (on stdout or stderr) says why: the 403 and the refused action.
    errors = [line for line in result.output.splitlines() if "403" in line]
    assert len(errors) == 1, result.output
    assert "not allowed: Project:UpdateProjectInfo on Project:Settings" in errors[0]
    assert "Traceback" not in result.output
    assert READER_SECRET not in result.output
    stats = reader_emulator.stats()
    assert stats["PATCH /v1/project"] == 1  # tried once, refused, not retried
    project = reader_emulator.store.get_project(SANDBOX_ID)
    assert project["description"] == LIVE_DESCRIPTION


def test_the_policy_allows_exactly_the_reads():
    from reconciler.emulator.policy import ENDPOINT_ACTIONS, allows

    # The endpoints of settings, roles, applications and M2M clients (the kinds this
    # policy covers; secrets, buckets and Zambda Functions came later).
    covered = {"Project:Settings", "IAM:Role", "App:Application", "IAM:M2MClient"}
    endpoints = {key: need for key, need in ENDPOINT_ACTIONS.items() if need[1] in covered}
    allowed = {
        key
        for key, (action, resource) in endpoints.items()
        if allows([READ_ONLY_POLICY], action, resource)
    }
    assert allowed == {key for key in endpoints if key[0] == "GET"}
    # Plan credentials never read a secret's value (it may be an M2M client's secret).
    assert not allows([READ_ONLY_POLICY], "Zambda:GetSecret", "Zambda:Secret")
