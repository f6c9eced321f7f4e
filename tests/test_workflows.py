"""The GitHub workflows, the composite action and the pre-commit hook are valid and least-privilege.

Schemas: `check-jsonschema`'s vendored copies of SchemaStore's workflow and
action schemas, so this runs offline. Structure: the promises of SPEC section 8
that a schema cannot see (permissions, fork safety, one apply at a time).
"""

from __future__ import annotations

import json
import os
import re
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
    ("apply.yml", "plan"): {"contents": "read", "actions": "read", "pull-requests": "read"},
    ("apply.yml", "apply"): {"contents": "read"},
    ("drift.yml", "drift"): {"contents": "read", "issues": "write"},
    ("release.yml", "build"): {"contents": "read"},
    ("release.yml", "publish"): {"id-token": "write"},
    ("release.yml", "github-release"): {"contents": "write"},
}
# Which credential set each job sees: read (repository secrets READ_*), write
# (production environment secrets), or none.
CREDENTIALS = {
    ("ci.yml", "test"): None,
    ("plan.yml", "validate"): None,
    ("plan.yml", "plan"): "read",
    ("apply.yml", "plan"): "read",
    ("apply.yml", "apply"): "write",
    ("drift.yml", "drift"): "read",
    ("release.yml", "build"): None,
    ("release.yml", "publish"): None,  # trusted publishing: no secret at all
    ("release.yml", "github-release"): None,
}
LOCAL_ACTION = "./.github/actions/reconciler"
PINNED = re.compile(r"[\w.-]+/[\w.-]+@[0-9a-f]{40} # v\d+\.\d+\.\d+")


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
        if step.get("uses") == LOCAL_ACTION
    ]


def _secrets(node: Any) -> set[str]:
    return set(re.findall(r"secrets\.(\w+)", yaml.safe_dump(node)))


# Schemas ------------------------------------------------------------------------


def test_the_four_workflows_exist():
    names = ["apply.yml", "ci.yml", "drift.yml", "plan.yml", "release.yml"]
    assert [p.name for p in WORKFLOW_FILES] == names


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


def test_read_credentials_for_plan_and_drift_write_credentials_only_in_production():
    seen = {}
    for path in WORKFLOW_FILES:
        doc = _load(path)
        # Workflow-level env reaches every job, fork validation included.
        assert not _secrets(doc.get("env") or {}), path.name
        for name, job in doc["jobs"].items():
            assert not _secrets(job.get("env") or {}), (path.name, name)  # per step only
            found = _secrets(job)
            kinds = {"read" if s.startswith("READ_") else "write" for s in found}
            assert len(kinds) <= 1, (path.name, name, found)
            seen[(path.name, name)] = kinds.pop() if kinds else None
            if seen[(path.name, name)] == "write":
                assert job["environment"] == "production"
            else:
                assert job.get("environment") in (None, "pypi")
    assert seen == CREDENTIALS


def test_credentials_reach_only_the_steps_that_call_the_api():
    for path in WORKFLOW_FILES:
        for job_name, job in _load(path)["jobs"].items():
            for step in job["steps"]:
                if not _secrets(step):
                    continue
                command = step.get("with", {}).get("command", "")
                assert (command.split() or [""])[0] in ("plan", "drift", "apply") or (
                    "for name in" in step.get("run", "")
                ), (path.name, job_name, step)


def test_third_party_actions_are_pinned_to_a_full_sha_with_the_version():
    for path in [*WORKFLOW_FILES, ACTION]:
        text = path.read_text(encoding="utf-8")
        assert "pull_request_target" not in text, path.name
        for line in text.splitlines():
            match = re.match(r"\s*(?:- )?uses:\s*(.+)$", line)
            if match:
                assert match[1] == LOCAL_ACTION or PINNED.fullmatch(match[1]), line


def test_the_pin_check_rejects_a_tag():
    assert not PINNED.fullmatch("actions/checkout@v4")
    assert not PINNED.fullmatch("actions/checkout@3d3c42e5aac5ba805825da76410c181273ba90b1")
    assert PINNED.fullmatch("actions/checkout@3d3c42e5aac5ba805825da76410c181273ba90b1 # v7.0.1")


def test_the_workflows_are_inits_templates_with_this_repositorys_credentials():
    from reconciler.demo import BUILD_COMMAND
    from reconciler.init import (
        LOCAL,
        ZambdaFiles,
        credential_names,
        project_files,
        render_workflow,
        secret_variables,
    )

    names = credential_names(project_files(ROOT / "projects"))
    secrets = secret_variables(project_files(ROOT / "projects"))
    assert secrets == ["RECONCILER_SECRET_SANDBOX_STRIPE_SECRET_KEY"]
    assert names == [
        "PRODUCTION_CLIENT_ID",
        "PRODUCTION_CLIENT_SECRET",
        "SANDBOX_CLIENT_ID",
        "SANDBOX_CLIENT_SECRET",
        "STAGING_ACCESS_TOKEN",
    ]
    # The example sandbox's function: its zip is built from zambdas/ by the build input.
    zambdas = ZambdaFiles.found_in(project_files(ROOT / "projects") + project_files(ROOT / "base"))
    assert zambdas == ZambdaFiles(("zambdas/notifications-updater/**",), (".dist/zips/*.zip",))
    for name in ("plan", "apply", "drift"):
        expected = render_workflow(
            name, LOCAL, names, build=BUILD_COMMAND, zambdas=zambdas, secrets=secrets
        )
        assert (WORKFLOWS / f"{name}.yml").read_text(encoding="utf-8") == expected, name


def _vars(workflow: str) -> dict[str, str]:
    env = _load(WORKFLOWS / workflow).get("env") or {}
    return {k: v for k, v in env.items() if k.startswith("RECONCILER_VAR_") or "URL" in k}


def test_plan_and_apply_define_the_same_values():
    # A difference would make the merge-time plan differ from the reviewed one.
    assert _vars("plan.yml") == _vars("apply.yml") == _vars("drift.yml")
    assert _vars("plan.yml")["OYSTEHR_PROJECT_API_URL"] == "https://project-api.zapehr.com/v1"


def test_ci_installs_the_pinned_constraints():
    constraints = (ROOT / "constraints.txt").read_text(encoding="utf-8")
    pinned = {
        re.sub(r"[-_.]+", "-", line.split("==")[0]).lower()
        for line in constraints.splitlines()
        if line and not line.startswith("#")
    }
    assert all("==" in line for line in constraints.splitlines() if line and line[0] != "#")
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    # Every quoted requirement of pyproject.toml (dependencies and the test extra).
    wanted = re.findall(r'^    "([A-Za-z][\w.-]*)[<>=!~]', pyproject, re.MULTILINE)
    assert {"pyyaml", "httpx", "click", "pytest", "check-jsonschema"} <= {w.lower() for w in wanted}
    for name in wanted:
        assert re.sub(r"[-_.]+", "-", name).lower() in pinned, name
    assert 'name = "oystehr-reconciler"' in pyproject


# Each workflow ------------------------------------------------------------------


def test_ci_runs_pytest_on_every_supported_python():
    doc = _load(WORKFLOWS / "ci.yml")
    assert set(doc["on"]) == {"push", "pull_request"}
    job = doc["jobs"]["test"]
    assert job["strategy"]["matrix"]["python-version"] == ["3.10", "3.11", "3.12", "3.13"]
    runs = [step.get("run") for step in job["steps"]]
    assert "pip install -c constraints.txt -e '.[test]'" in runs and "pytest" in runs


def test_plan_validates_forks_and_plans_only_with_secrets():
    doc = _load(WORKFLOWS / "plan.yml")
    assert list(doc["on"]) == ["pull_request"]
    assert doc["on"]["pull_request"]["paths"] == [
        "projects/**",
        "base/**",
        "schemas/**",
        "zambdas/notifications-updater/**",  # the example function's sourceInputs
    ]
    validate, plan = doc["jobs"]["validate"], doc["jobs"]["plan"]
    assert "if" not in validate and _commands("plan.yml", "validate") == ["validate"]
    assert plan["if"] == "github.event.pull_request.head.repo.full_name == github.repository"


def test_plan_comments_even_when_the_plan_fails_then_fails_the_job():
    steps = _steps("plan.yml", "plan")
    # Installs before any secret is in reach, and lets a typo through to the plan step.
    assert _commands("plan.yml", "plan")[0] == "--version"
    assert not _secrets(steps[:2])
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
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert upload["with"]["path"] == "plan.json" and upload["if"] == "${{ !cancelled() }}"
    last = steps[-1]
    assert last["if"] == "steps.plan.outputs.exit-code != '0'" and last["run"] == "exit 1"
    assert steps.index(plan) < steps.index(comment) < steps.index(last)


def test_apply_plans_guards_then_applies_that_artifact_in_production():
    doc = _load(WORKFLOWS / "apply.yml")
    assert doc["on"]["push"] == {
        "branches": ["main"],
        "paths": ["projects/**", "base/**", "zambdas/notifications-updater/**"],
    }
    assert "workflow_dispatch" in doc["on"]
    assert "concurrency" not in doc  # per apply job: a later plan job never waits on approval
    plan, apply = doc["jobs"]["plan"], doc["jobs"]["apply"]
    assert plan["if"] == "github.ref == 'refs/heads/main'" and "environment" not in plan
    assert _commands("apply.yml", "plan") == [
        "validate",
        "plan --format markdown --out plan.json --detailed-exitcode",
        "github guard --plan-file plan.json",
    ]
    planned = next(s for s in plan["steps"] if s.get("id") == "plan")
    assert planned["with"]["allowed-exit-codes"] == "0 2"
    upload = next(s for s in plan["steps"] if s.get("uses", "").startswith("actions/upload-"))
    assert plan["outputs"] == {
        "artifact": "${{ steps.artifact.outputs.name }}",
        "changes": "${{ steps.plan.outputs.exit-code == '2' }}",
    }
    assert upload["with"]["name"] == "${{ steps.artifact.outputs.name }}"
    # The zips the plan hashed travel with it: the apply job uploads those, never builds.
    assert upload["with"]["path"] == "plan.json\n.dist/zips/*.zip\n"
    assert upload["with"]["include-hidden-files"] is True
    assert plan["steps"].index(upload) < len(plan["steps"]) - 1  # the guard comes last
    # The guard reads the whole history, and the repository variables as env.
    checkout = plan["steps"][0]
    assert checkout["uses"].startswith("actions/checkout@")
    assert checkout["with"] == {"fetch-depth": 0, "persist-credentials": False}
    guard = plan["steps"][-1]
    assert guard["with"]["command"] == "github guard --plan-file plan.json"
    assert guard["env"] == {
        "GITHUB_TOKEN": "${{ github.token }}",
        "RECONCILER_GUARD_BOOTSTRAP": "${{ vars.RECONCILER_GUARD_BOOTSTRAP }}",
        "RECONCILER_GUARD_APPROVALS": "${{ vars.RECONCILER_GUARD_APPROVALS }}",
        "RECONCILER_GUARD_OVERRIDERS": "${{ vars.RECONCILER_GUARD_OVERRIDERS }}",
    }
    # workflow_dispatch is guarded too; its override input is read by the guard from
    # the event (never put into a command line).
    override = doc["on"]["workflow_dispatch"]["inputs"]["override"]
    assert (override["type"], override["default"]) == ("boolean", False)
    # The other input (deleting buckets) reaches only the apply step, as an environment
    # variable: never a command line.
    allow = doc["on"]["workflow_dispatch"]["inputs"]["allow-bucket-deletes"]
    assert (allow["type"], allow["default"]) == ("boolean", False)
    text = (WORKFLOWS / "apply.yml").read_text(encoding="utf-8")
    assert [line.strip() for line in text.splitlines() if "inputs." in line] == [
        "RECONCILER_ALLOW_BUCKET_DELETES: ${{ inputs.allow-bucket-deletes }}"
    ]
    applying = next(s for s in _steps("apply.yml", "apply") if s.get("name") == "Apply that plan")
    assert (
        applying["env"]["RECONCILER_ALLOW_BUCKET_DELETES"] == "${{ inputs.allow-bucket-deletes }}"
    )

    assert apply["needs"] == "plan" and apply["environment"] == "production"
    assert apply["if"] == "needs.plan.outputs.changes == 'true'"  # nothing to approve
    assert apply["concurrency"] == {"group": "reconciler-apply", "cancel-in-progress": False}
    tip = next(s for s in apply["steps"] if s.get("id") == "tip")
    assert tip["with"] == {
        "command": "github check-tip --branch main",
        "allowed-exit-codes": "0 3",
    }
    after = apply["steps"][apply["steps"].index(tip) + 1 :]
    assert all(s["if"] == "steps.tip.outputs.exit-code == '0'" for s in after)
    download = next(s for s in after if s.get("uses", "").startswith("actions/download-"))
    assert download["with"] == {"name": "${{ needs.plan.outputs.artifact }}"}
    # apply --plan loads the files of the commit the plan was made at, from this checkout.
    assert apply["steps"][0]["with"] == {"ref": "${{ github.sha }}", "persist-credentials": False}
    assert _commands("apply.yml", "apply") == [
        "github check-tip --branch main",
        "apply --plan plan.json --yes",
    ]


def _credentials_check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    step = next(s for s in _steps("apply.yml", "apply") if "for name in" in s.get("run", ""))
    names = list(step["env"])
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
        env={"PATH": os.environ["PATH"], **{n: env.get(n, "") for n in names}},
        capture_output=True,
        text=True,
    )


def test_apply_fails_with_one_line_when_the_write_credentials_are_empty():
    empty = _credentials_check({})
    assert empty.returncode == 1
    assert empty.stdout.count("\n") == 1
    assert empty.stdout.startswith("::error::PRODUCTION_CLIENT_ID is empty: add it as a secret")
    names = [
        "PRODUCTION_CLIENT_ID",
        "PRODUCTION_CLIENT_SECRET",
        "SANDBOX_CLIENT_ID",
        "SANDBOX_CLIENT_SECRET",
        "STAGING_ACCESS_TOKEN",
    ]
    full = _credentials_check(dict.fromkeys(names, "s3cret"))
    assert (full.returncode, full.stdout) == (0, "")
    one_missing = _credentials_check({n: "s3cret" for n in names if n != "STAGING_ACCESS_TOKEN"})
    assert one_missing.stdout.startswith("::error::STAGING_ACCESS_TOKEN is empty")


def test_drift_runs_on_a_schedule_and_hands_its_exit_code_on():
    doc = _load(WORKFLOWS / "drift.yml")
    assert doc["on"]["schedule"] and "workflow_dispatch" in doc["on"]
    drift = next(s for s in _steps("drift.yml", "drift") if s.get("id") == "drift")
    assert drift["with"]["command"] == "drift --format markdown"
    assert drift["with"]["allowed-exit-codes"] == "0 1 2"
    assert _commands("drift.yml", "drift")[-1] == (
        "github drift-issue --exit-code ${{ steps.drift.outputs.exit-code }} --report-file drift.md"
    )


def test_release_builds_tests_publishes_with_trusted_publishing_and_attaches_the_wheel():
    doc = _load(WORKFLOWS / "release.yml")
    assert doc["on"] == {"push": {"tags": ["v*"]}}
    build, publish, release = (doc["jobs"][n] for n in ("build", "publish", "github-release"))
    runs = "\n".join(step.get("run", "") for step in build["steps"])
    assert "pytest" in runs and "pip wheel --no-deps --wheel-dir dist ." in runs
    assert publish["needs"] == "build" and publish["environment"] == "pypi"
    assert publish["steps"][-1]["uses"].startswith("pypa/gh-action-pypi-publish@")
    assert "with" not in publish["steps"][-1]  # no password: the OIDC token
    assert release["needs"] == "publish"
    assert "gh release create" in release["steps"][-1]["run"]
    assert "dist/*.whl" in release["steps"][-1]["run"]


def _release_step(name: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    step = next(s for s in _steps("release.yml", "build") if s.get("name") == name)
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
        cwd=cwd,
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
    )


def test_release_writes_its_commit_into_the_package_and_init_pins_it(tmp_path):
    package = tmp_path / "reconciler"
    package.mkdir()
    for name in ("__init__.py", "release.py"):
        (package / name).write_text((ROOT / "reconciler" / name).read_text(encoding="utf-8"))
    sha = "3d3c42e5aac5ba805825da76410c181273ba90b1"
    done = _release_step("Write the release commit into the package", tmp_path, GITHUB_SHA=sha)
    assert done.returncode == 0, done.stderr
    released: dict[str, Any] = {}
    exec((package / "release.py").read_text(encoding="utf-8"), released)
    assert released["RELEASE_COMMIT"] == sha

    from reconciler import __version__

    ok = _release_step(
        "Check that the tag names this version", tmp_path, GITHUB_REF_NAME=f"v{__version__}"
    )
    assert (ok.returncode, ok.stdout) == (0, "")
    wrong = _release_step(
        "Check that the tag names this version", tmp_path, GITHUB_REF_NAME="v9.9.9"
    )
    assert wrong.returncode == 1
    assert wrong.stdout == f"::error::the tag v9.9.9 does not name the version {__version__}\n"


# zizmor: the workflows' security audit, offline -----------------------------------


def _zizmor(*paths: Path) -> list[dict[str, Any]]:
    """zizmor's findings of high severity in these files or folders."""
    zizmor = Path(sys.executable).with_name("zizmor")
    done = subprocess.run(
        [str(zizmor), "--offline", "--format", "json", "--min-severity", "high", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode in (0, 14), done.stderr  # 14: findings; anything else: it failed
    return json.loads(done.stdout)


def _where(findings: list[dict[str, Any]]) -> list[str]:
    return [
        f"{f['ident']} {Path(f['locations'][0]['symbolic']['key']['Local']['verbatim_path']).name}"
        for f in findings
    ]


def test_zizmor_finds_nothing_high_in_this_repositorys_workflows_and_action():
    assert _where(_zizmor(WORKFLOWS, ACTION.parent)) == []


def test_zizmor_finds_nothing_high_in_what_init_writes(tmp_path):
    from click.testing import CliRunner

    from reconciler.cli import cli

    pinned = CliRunner().invoke(
        cli, ["init", str(tmp_path / "pinned"), "--action", f"acme/reconciler@{'a' * 40}"]
    )
    assert pinned.exit_code == 0, pinned.output
    assert _where(_zizmor(tmp_path / "pinned")) == []
    # The check can fail: a tag is what the first review found, 12 times.
    tagged = CliRunner().invoke(
        cli, ["init", str(tmp_path / "tagged"), "--action", "acme/reconciler@v1"]
    )
    assert tagged.exit_code == 0
    found = _where(_zizmor(tmp_path / "tagged"))
    assert len(found) == 12 and set(found) == {
        f"unpinned-uses {name}.yml" for name in ("plan", "apply", "drift")
    }


# The pre-commit hook ------------------------------------------------------------


def test_pre_commit_hook_runs_reconciler_validate_on_project_files():
    (hook,) = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text(encoding="utf-8"))
    assert hook["id"] == "reconciler-validate"
    assert hook["entry"] == "reconciler validate"
    # Every file is validated when a project file or a fragment changes (a fragment is
    # checked through the Projects that include it).
    assert hook["language"] == "python" and hook["pass_filenames"] is False
    files = re.compile(hook["files"])
    assert files.search("projects/sandbox.yaml") and files.search("projects/eu/prod.yml")
    assert files.search("base/clinic.yaml")
    assert not files.search("projects/README.md") and not files.search("other/x.yaml")


def test_every_command_in_the_workflows_parses(monkeypatch):
    """A typo in a workflow's reconciler command would only show on GitHub: parse each."""
    import shlex

    import click

    from reconciler.cli import cli

    commands = [
        re.sub(r"\$\{\{[^}]*\}\}", "7", step["with"]["command"])
        for path in WORKFLOW_FILES
        for job in _load(path)["jobs"].values()
        for step in job["steps"]
        if step.get("uses") == LOCAL_ACTION
    ]
    assert len(commands) == 12
    # What the runner sets in every job.
    monkeypatch.setenv("GITHUB_REPOSITORY", "acme/settings")
    monkeypatch.setenv("GITHUB_SHA", "0" * 40)
    for command in commands:
        args = shlex.split(command)
        if args == ["--version"]:
            continue
        group: click.Group = cli
        while isinstance(group.get_command(None, args[0]), click.Group):
            group, args = group.get_command(None, args[0]), args[1:]
        command_obj = group.get_command(None, args[0])
        assert command_obj is not None, command
        with command_obj.make_context(args[0], args[1:], resilient_parsing=False) as ctx:
            assert ctx.params is not None
