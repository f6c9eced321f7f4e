"""The GitHub workflows, the composite action and the pre-commit hook are valid and least-privilege.

Schemas: `check-jsonschema`'s vendored copies of SchemaStore's workflow and
action schemas, so this runs offline. Structure: the promises of SPEC section 8
that a schema cannot see (permissions, fork safety, one apply at a time).
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"
ACTION = ROOT / ".github" / "actions" / "reconciler" / "action.yml"
WORKFLOW_FILES = sorted(WORKFLOWS.glob("*.yml"))

# Every job and exactly the permissions it holds.
LEAST_PERMISSIONS = {
    ("ci.yml", "test"): {"contents": "read"},
    ("plan.yml", "validate"): {"contents": "read"},
    ("plan.yml", "plan"): {"contents": "read", "pull-requests": "write"},
    ("apply.yml", "apply"): {"contents": "read"},
    ("drift.yml", "drift"): {"contents": "read", "issues": "write"},
}


def _load(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    # YAML 1.1 reads the bare key `on` as True.
    if True in doc:
        doc["on"] = doc.pop(True)
    return doc


def _check_jsonschema(schema: str, *paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _steps(workflow: str, job: str) -> list[dict[str, Any]]:
    return _load(WORKFLOWS / workflow)["jobs"][job]["steps"]


def _commands(workflow: str, job: str) -> list[str]:
    """The reconciler command of each step that runs the composite action."""
    return [
        step["with"]["command"]
        for step in _steps(workflow, job)
        if step.get("uses") == "./.github/actions/reconciler"
    ]


# Schemas ------------------------------------------------------------------------


def test_the_four_workflows_exist():
    assert [p.name for p in WORKFLOW_FILES] == ["apply.yml", "ci.yml", "drift.yml", "plan.yml"]


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_workflow_matches_githubs_schema(path):
    result = _check_jsonschema("vendor.github-workflows", path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_action_matches_githubs_schema():
    result = _check_jsonschema("vendor.github-actions", ACTION)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_rejects_a_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n"
        "    permissions: {contents: wrte}\n    steps: []\n",
        encoding="utf-8",
    )
    assert _check_jsonschema("vendor.github-workflows", broken).returncode == 1


# Permissions and secrets --------------------------------------------------------


def test_every_job_holds_the_least_permissions():
    held = {}
    for path in WORKFLOW_FILES:
        doc = _load(path)
        assert doc["permissions"] == {"contents": "read"}, path.name
        for name, job in doc["jobs"].items():
            held[(path.name, name)] = job.get("permissions")
    assert held == LEAST_PERMISSIONS


def test_secrets_reach_only_the_jobs_that_call_the_api():
    with_secrets = set()
    for path in WORKFLOW_FILES:
        doc = _load(path)
        # Workflow-level env reaches every job, fork validation included.
        assert "secrets." not in yaml.safe_dump(doc.get("env") or {}), path.name
        for name, job in doc["jobs"].items():
            if "secrets." in yaml.safe_dump(job):
                with_secrets.add((path.name, name))
    assert with_secrets == {("plan.yml", "plan"), ("apply.yml", "apply"), ("drift.yml", "drift")}


def test_only_pinned_actions_and_never_pull_request_target():
    for path in [*WORKFLOW_FILES, ACTION]:
        text = path.read_text(encoding="utf-8")
        assert "pull_request_target" not in text, path.name
        for used in re.findall(r"uses:\s*(\S+)", text):
            assert used.startswith("./") or re.fullmatch(r"[\w.-]+/[\w.-]+@v\d+", used), used


# Each workflow ------------------------------------------------------------------


def test_ci_runs_pytest_on_every_supported_python():
    doc = _load(WORKFLOWS / "ci.yml")
    assert set(doc["on"]) == {"push", "pull_request"}
    job = doc["jobs"]["test"]
    assert job["strategy"]["matrix"]["python-version"] == ["3.10", "3.11", "3.12", "3.13"]
    runs = [step.get("run") for step in job["steps"]]
    assert "pip install -e '.[test]'" in runs and "pytest" in runs


def test_plan_validates_forks_and_plans_only_with_secrets():
    doc = _load(WORKFLOWS / "plan.yml")
    assert list(doc["on"]) == ["pull_request"]
    assert "projects/**" in doc["on"]["pull_request"]["paths"]
    validate, plan = doc["jobs"]["validate"], doc["jobs"]["plan"]
    assert "if" not in validate and _commands("plan.yml", "validate") == ["validate"]
    assert plan["if"] == "github.event.pull_request.head.repo.full_name == github.repository"


def test_plan_comments_even_when_the_plan_fails_then_fails_the_job():
    steps = _steps("plan.yml", "plan")
    plan = next(s for s in steps if s.get("id") == "plan")
    assert plan["with"] == {
        "command": "plan --format markdown --out plan.json",
        "stdout": "plan.md",
        "allowed-exit-codes": "0 1",
    }
    comment = next(s for s in steps if "github comment" in s.get("with", {}).get("command", ""))
    assert "--body-file plan.md" in comment["with"]["command"]
    assert comment["env"] == {"GITHUB_TOKEN": "${{ github.token }}"}
    assert "if" not in comment  # runs whenever plan ran, failed or not
    upload = next(s for s in steps if s.get("uses") == "actions/upload-artifact@v4")
    assert upload["with"]["path"] == "plan.json" and upload["if"] == "${{ !cancelled() }}"
    last = steps[-1]
    assert last["if"] == "steps.plan.outputs.exit-code != '0'" and last["run"] == "exit 1"
    assert steps.index(plan) < steps.index(comment) < steps.index(last)


def test_apply_is_one_at_a_time_gated_and_applies_the_saved_plan():
    doc = _load(WORKFLOWS / "apply.yml")
    assert doc["on"]["push"] == {"branches": ["main"], "paths": ["projects/**"]}
    assert "workflow_dispatch" in doc["on"]
    assert doc["concurrency"] == {"group": "reconciler-apply", "cancel-in-progress": False}
    job = doc["jobs"]["apply"]
    assert job["environment"] == "production"
    assert job["if"] == "github.ref == 'refs/heads/main'"
    assert _commands("apply.yml", "apply") == [
        "plan --out plan.json",
        "apply --plan plan.json --yes",
    ]
    assert any(s.get("uses") == "actions/upload-artifact@v4" for s in job["steps"])


def test_drift_runs_on_a_schedule_and_hands_its_exit_code_on():
    doc = _load(WORKFLOWS / "drift.yml")
    assert doc["on"]["schedule"] and "workflow_dispatch" in doc["on"]
    drift = next(s for s in _steps("drift.yml", "drift") if s.get("id") == "drift")
    assert drift["with"]["command"] == "drift --format markdown"
    assert drift["with"]["allowed-exit-codes"] == "0 1 2"
    assert _commands("drift.yml", "drift")[-1] == (
        "github drift-issue --exit-code ${{ steps.drift.outputs.exit-code }} --report-file drift.md"
    )


# The composite action -----------------------------------------------------------


def test_action_installs_this_repository_and_outputs_the_exit_code():
    action = yaml.safe_load(ACTION.read_text(encoding="utf-8"))
    assert action["runs"]["using"] == "composite"
    assert action["inputs"]["command"]["required"] is True
    assert action["outputs"]["exit-code"]["value"] == "${{ steps.run.outputs.exit-code }}"
    # github.action_path/../../.. is the root of the repository that ships the action.
    assert (ACTION.parent / ".." / ".." / "..").resolve() == ROOT
    assert (ROOT / "pyproject.toml").is_file()


def _run_action_script(tmp_path: Path, args: str, allowed: str) -> tuple[int, str, str]:
    """Run the action's `run` step as the runner would: (exit code, GITHUB_OUTPUT, stdout file)."""
    action = yaml.safe_load(ACTION.read_text(encoding="utf-8"))
    script = next(step for step in action["runs"]["steps"] if step.get("id") == "run")["run"]
    shim = tmp_path / "bin" / "reconciler"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m reconciler "$@"\n', encoding="utf-8")
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    output, stdout = tmp_path / "github_output", tmp_path / "out.txt"
    env = {
        **os.environ,
        "PATH": f"{shim.parent}{os.pathsep}{os.environ['PATH']}",
        "GITHUB_OUTPUT": str(output),
        "RECONCILER_ARGS": args,
        "RECONCILER_STDOUT": str(stdout),
        "RECONCILER_ALLOWED": allowed,
    }
    done = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    return done.returncode, output.read_text(encoding="utf-8"), stdout.read_text(encoding="utf-8")


def test_action_records_the_exit_code_and_fails_only_on_codes_not_allowed(tmp_path):
    (tmp_path / "projects").mkdir()
    (tmp_path / "projects" / "bad.yaml").write_text("id: [\n", encoding="utf-8")

    rc, output, stdout = _run_action_script(tmp_path, "validate 'projects'", "0 1")
    assert (rc, output) == (0, "exit-code=1\n")
    assert stdout.startswith("projects/bad.yaml:")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    rc, output, stdout = _run_action_script(elsewhere, "--version", "0")
    assert (rc, output) == (0, "exit-code=0\n")
    assert stdout.startswith("reconciler, version ")


def test_action_fails_the_step_on_an_exit_code_not_allowed(tmp_path):
    (tmp_path / "projects").mkdir()
    (tmp_path / "projects" / "bad.yaml").write_text("id: [\n", encoding="utf-8")
    rc, output, _ = _run_action_script(tmp_path, "validate", "0")
    assert (rc, output) == (1, "exit-code=1\n")


# The pre-commit hook ------------------------------------------------------------


def test_pre_commit_hook_runs_reconciler_validate_on_project_files():
    (hook,) = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text(encoding="utf-8"))
    assert hook["id"] == "reconciler-validate"
    assert hook["entry"] == "reconciler validate"
    assert hook["language"] == "python" and hook["pass_filenames"] is True
    files = re.compile(hook["files"])
    assert files.search("projects/sandbox.yaml") and files.search("projects/eu/prod.yml")
    assert not files.search("projects/README.md") and not files.search("other/x.yaml")
