"""The small things a new user trips over first: a misspelt role name, a YAML
indentation slip, a repository without projects/, and short flags that match."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from e2e import ALPHA, run, write

from reconciler.files import parse_project


def _alpha(repo, body: str) -> None:
    write(repo, "projects/alpha.yaml", f"id: {ALPHA}\n{body}")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "defaultPatientRole: Patinet\n",
            "projects/alpha.yaml:2:21: defaultPatientRole: no role named 'Patinet' in this "
            "Project; did you mean 'Patient'? (roles: Admin, Patient, Staff)",
        ),
        (
            "defaultSSOUserRole: admin\n",
            "projects/alpha.yaml:2:21: defaultSSOUserRole: no role named 'admin' in this "
            "Project; did you mean 'Admin'? (roles: Admin, Patient, Staff)",
        ),
        (
            "roles: {Patient: {}}\nm2mClients:\n  backend: {roles: [Staf]}\n",
            "m2m 'backend': roles: no role named 'Staf' in this Project; did you mean 'Staff'? "
            "(roles: Admin, Patient, Staff)",
        ),
    ],
)
def test_a_misspelt_role_name_gets_a_did_you_mean_at_plan_time(repo, emu, body, message):
    _alpha(repo, body)
    result = run(["plan"], emu)
    assert result.exit_code == 1
    assert message in result.stdout


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "id: x\nauth:\n  clientIdEnv: A\n   clientSecretEnv: B\n",
            "4:19: invalid YAML: mapping values are not allowed in this context (check this "
            "line's indentation: it must line up with the keys it belongs with)",
        ),
        (
            "id: x\n  name: y\n",
            "2:7: invalid YAML: mapping values are not allowed in this context (check this "
            "line's indentation: it must line up with the keys it belongs with)",
        ),
        (
            "id: x\nauth:\n  clientIdEnv:A\n  clientSecretEnv: B\n",
            "4:18: invalid YAML: mapping values are not allowed in this context (a space missing "
            "after the colon on line 3? YAML needs key: value)",
        ),
        (
            "id: x\nname:SANDBOX\nsignupEnabled: true\n",
            "3:1: invalid YAML: could not find expected ':' (while scanning a simple key that "
            "started at line 2, column 1) (a space missing after the colon on line 2? YAML "
            "needs key: value)",
        ),
        (
            'id: x\ndescription: Say "hi": twice  # a comment\n',
            "2:22: invalid YAML: mapping values are not allowed in this context (quote a value "
            "that holds ': ')",
        ),
        (  # a key indented deeper than the keys beside it, after a flow mapping
            "id: x\nm2mClients:\n  Admin: {roles: [A]}\n   description: y\n",
            "4:4: invalid YAML: did not find expected key (while parsing a block mapping that "
            "started at line 3, column 3) (check this line's indentation: it must line up "
            "with the keys it belongs with)",
        ),
        (
            "id: x\ndescription: see https://example.com\n  name: y\n",
            "3:7: invalid YAML: mapping values are not allowed in this context (check this "
            "line's indentation: it must line up with the keys it belongs with)",
        ),
    ],
)
def test_yaml_slips_get_a_hint(text, problem):
    _, problems = parse_project(text.encode(), "p.yaml", {})
    assert [f"{p.line}:{p.column}: {p.message}" for p in problems] == [problem]


@pytest.mark.parametrize("command", [["validate"], ["plan"], ["drift"], ["apply", "--yes"]])
def test_no_projects_folder_points_at_init(repo, emu, command):
    result = run(command, emu)
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == (
        "Error: no such file or directory: projects (run `reconciler init` to start a settings "
        "repository here, or give the project files' paths)\n"
    )
    (repo / "projects").mkdir()
    assert run(command, emu).stderr == (
        "Error: no project files found in: projects (run `reconciler init` to start a settings "
        "repository here, or give the project files' paths)\n"
    )
    assert run([*command, "elsewhere"], emu).stderr == (
        "Error: no such file or directory: elsewhere\n"
    )
    assert emu.stats() == {}


def test_plan_o_saves_the_plan(repo, emu):
    _alpha(repo, "signupEnabled: true\n")
    result = run(["plan", "-o", "plan.json"], emu)
    assert result.exit_code == 0, result.output
    assert json.loads((repo / "plan.json").read_text())["summary"]["changed"] == 1


def test_emulator_q_logs_no_requests(tmp_path):
    emulator = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "emulator", "--port", "0", "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = emulator.stdout.readline().strip()
        import httpx

        assert httpx.get(f"{url}/v1/version").status_code == 200
    finally:
        emulator.terminate()
        out, err = emulator.communicate(timeout=10)
    assert url.startswith("http://127.0.0.1:")
    assert (emulator.returncode, out, err) == (0, "", "")
