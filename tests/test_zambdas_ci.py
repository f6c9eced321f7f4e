"""Zambda zips in CI (SPEC section 14): built in the plan job by the action's `build`
input, before any credential is in reach; carried with the plan artifact; never built
by the apply job; `init --build` and each function's `sourceInputs` in the workflows."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml
from click.testing import CliRunner
from e2e import DEV_TOKEN
from test_action import ACTION, _runner
from test_zambdas import PID, functions_emulator

from reconciler.cli import cli

BUILD = "mkdir -p .dist/zips && python -m zipfile -c .dist/zips/check-in.zip src/index.mjs"


def _workspace_with_a_function(workspace: Path) -> None:
    (workspace / "src").mkdir()
    (workspace / "src" / "index.mjs").write_text("export const index = () => 1;\n")
    (workspace / "projects" / "functions.yaml").write_text(
        f"id: {PID}\nzambdas:\n  check-in:\n    runtime: nodejs22.x\n"
        "    source: .dist/zips/check-in.zip\n    sourceInputs: [src/**]\n"
    )


def test_the_action_builds_the_zips_before_the_command(tmp_path):
    # The venv of this test run is the runner's python, reconciler already installed.
    runner = _runner(tmp_path, Path(sys.executable).parent)
    runner.env["RECONCILER_ACTION_INSTALLED"] = "true"
    _workspace_with_a_function(runner.workspace)
    with functions_emulator() as emu:
        inputs = {
            "python-version": "",
            "build": BUILD,
            "command": "plan --out plan.json",
            "stdout": "plan.txt",
        }
        api = {
            "OYSTEHR_PROJECT_API_URL": emu.api_url,
            "OYSTEHR_AUTH_URL": emu.auth_url,
            "OYSTEHR_ACCESS_TOKEN": DEV_TOKEN,
        }
        assert runner.run_action(ACTION.parent, inputs, **api) == 0, runner.log
    assert (runner.workspace / ".dist" / "zips" / "check-in.zip").is_file()
    doc = json.loads((runner.workspace / "plan.json").read_text())
    assert doc["projects"][0]["objects"][0]["zip"] == ".dist/zips/check-in.zip"
    assert runner.output() == "exit-code=0\n"


def test_a_failing_build_fails_the_step_and_runs_no_command(tmp_path):
    runner = _runner(tmp_path, Path(sys.executable).parent)
    runner.env["RECONCILER_ACTION_INSTALLED"] = "true"
    inputs = {"python-version": "", "build": "echo building; exit 3", "command": "validate"}
    assert runner.run_action(ACTION.parent, inputs) == 3
    error = "::error::the build command exited 3: echo building; exit 3\n"
    assert runner.log[-1] == "building\n" + error
    assert runner.output() == ""  # the reconciler command never ran


def _steps(workflow: dict, job: str) -> list[dict]:
    return workflow["jobs"][job]["steps"]


def test_init_builds_in_the_plan_jobs_only_and_watches_the_source_inputs(tmp_path):
    repo = tmp_path / "settings"
    (repo / "projects").mkdir(parents=True)
    (repo / "base").mkdir()
    (repo / "projects" / "functions.yaml").write_text(
        f"id: {PID}\ninclude: [../base/zambdas.yaml]\n"
        "zambdas:\n  check-in:\n    runtime: nodejs22.x\n"
        "    source: build/zips/check-in.zip\n    sourceInputs: [packages/check-in/**]\n"
    )
    (repo / "base" / "zambdas.yaml").write_text(
        "zambdas:\n  nightly:\n    runtime: nodejs22.x\n"
        "    source: .dist/zips/nightly.zip\n    sourceInputs: [packages/shared/**]\n"
    )
    result = CliRunner().invoke(
        cli, ["init", str(repo), "--action", f"acme/reconciler@{'a' * 40}", "--build", "make zips"]
    )
    assert result.exit_code == 0, result.output
    workflows = {
        name: yaml.safe_load((repo / ".github" / "workflows" / f"{name}.yml").read_text())
        for name in ("plan", "apply", "drift")
    }
    inputs = ["packages/check-in/**", "packages/shared/**"]
    assert workflows["plan"][True]["pull_request"]["paths"][3:] == inputs
    assert workflows["apply"][True]["push"]["paths"][2:] == inputs
    builds = {
        (name, job): [step["name"] for step in steps if "build" in step.get("with", {})]
        for name, doc in workflows.items()
        for job in doc["jobs"]
        for steps in [_steps(doc, job)]
    }
    assert builds == {
        ("plan", "validate"): [],
        ("plan", "plan"): ["Install reconciler and build the Zambda zips"],
        ("apply", "plan"): ["Validate and build the Zambda zips"],
        ("apply", "apply"): [],  # the apply job never builds
        ("drift", "drift"): ["Validate and build the Zambda zips"],
    }
    # The build runs where no credential is in reach, before the plan.
    for name, job in (("plan", "plan"), ("apply", "plan"), ("drift", "drift")):
        steps = _steps(workflows[name], job)
        build = next(s for s in steps if "build" in s.get("with", {}))
        assert build["with"]["build"] == "make zips" and "env" not in build
    upload = next(
        s for s in _steps(workflows["apply"], "plan") if "upload-artifact" in s.get("uses", "")
    )
    assert upload["with"]["path"] == "plan.json\n.dist/zips/*.zip\nbuild/zips/*.zip\n"
    assert upload["with"]["include-hidden-files"] is True
    assert "The project files name Zambda zips" not in result.output
    # Its files are the repository's Projects: no example beside them, no example's
    # credentials in the workflows; the fragment schema for base/ is there.
    assert not (repo / "projects" / "example.yaml").exists()
    assert "EXAMPLE_" not in (repo / ".github" / "workflows" / "plan.yml").read_text()
    assert (repo / "schemas" / "fragment.schema.json").is_file()


def test_init_without_build_says_where_the_build_command_goes(tmp_path):
    repo = tmp_path / "settings"
    (repo / "projects").mkdir(parents=True)
    (repo / "projects" / "functions.yaml").write_text(
        f"id: {PID}\nzambdas:\n  f:\n    runtime: java21\n    source: zips/f.zip\n"
    )
    result = CliRunner().invoke(cli, ["init", str(repo), "--action", f"acme/reconciler@{'a' * 40}"])
    assert result.exit_code == 0, result.output
    assert "The project files name Zambda zips: give the workflows the command" in result.output
    plan = (repo / ".github" / "workflows" / "plan.yml").read_text()
    assert '          build: ""\n' in plan
    apply = yaml.safe_load((repo / ".github" / "workflows" / "apply.yml").read_text())
    upload = next(s for s in _steps(apply, "plan") if "upload-artifact" in s.get("uses", ""))
    assert upload["with"] == {
        "name": "${{ steps.artifact.outputs.name }}",
        "path": "plan.json\nzips/*.zip\n",
        "if-no-files-found": "error",
    }
