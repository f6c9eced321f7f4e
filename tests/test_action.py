"""The composite action, run as a runner runs it, from another repository.

The layout is a runner's: the action's repository checked out under
`_actions/OWNER/REPO/REF/`, a user repository that holds only `projects/`, real
`GITHUB_ENV`, `GITHUB_OUTPUT` and `GITHUB_STEP_SUMMARY` files. Each `run:` step
of action.yml is executed with bash as the runner would (its `${{ }}` inputs in
the step's environment, GITHUB_ENV carried to the next step), with `python` a
venv made here. pip runs with `--no-index`: the reconciler comes from the
action's checkout, or a wheel built here with the test environment's own tools.

That venv starts as a runner's Python with the dependencies already installed:
it sees the packages of the environment running the tests (what `pip install -e
'.[test]'` put there: the dependencies, pip, setuptools, wheel), never the base
interpreter's and never this checkout's own reconciler. So the tests pass on any
clean Python, whatever the machine happens to have installed.
"""

from __future__ import annotations

import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import venv
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, SANDBOX_ID

from reconciler import __version__

ROOT = Path(__file__).resolve().parent.parent
ACTION = ROOT / ".github" / "actions" / "reconciler" / "action.yml"
# What the runner checks out of the action's repository that the install needs.
SHIPPED = ("pyproject.toml", "README.md", "LICENSE", "constraints.txt", "reconciler", ".github")


@pytest.fixture(scope="module")
def python_env(tmp_path_factory) -> Path:
    """A venv that sees the test environment's packages except reconciler; `bin` goes
    first on PATH."""
    where = tmp_path_factory.mktemp("venv")
    venv.create(where, with_pip=False, symlinks=True)
    found = subprocess.run(
        [where / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    )
    shared = _packages_without_reconciler(tmp_path_factory.mktemp("packages"))
    Path(found.stdout.strip(), "test-environment.pth").write_text(f"{shared}\n", encoding="utf-8")
    return where / "bin"


# What an install of reconciler puts in site-packages (plain, or editable by setuptools).
_OURS = re.compile(r"(reconciler|oystehr_reconciler[-.].*|__editable___*oystehr_reconciler.*)")


def _packages_without_reconciler(folder: Path) -> Path:
    """A folder of links to every package of the environment running the tests, except
    reconciler itself: the action must install that one."""
    sources = [*site.getsitepackages(), sysconfig.get_path("purelib")]
    if site.ENABLE_USER_SITE:
        sources.append(site.getusersitepackages())
    for source in dict.fromkeys(Path(s) for s in sources if os.path.isdir(s)):  # in sys.path order
        for entry in sorted(source.iterdir()):
            if _OURS.fullmatch(entry.name) or entry.suffix == ".pth":
                continue
            if not (folder / entry.name).exists():
                (folder / entry.name).symlink_to(entry)
    return folder


def _ship(target: Path) -> Path:
    """A copy of this repository as the runner checks it out for `uses:`.

    Its constraints.txt pins what this test environment holds: the action installs
    with the versions it was tested with, and here those are the ones installed (pip
    runs without an index)."""
    for name in SHIPPED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    (target / "constraints.txt").write_text(_tested_versions(), encoding="utf-8")
    return target


def _tested_versions() -> str:
    """constraints.txt with each pin set to the version installed here."""
    pins = []
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        name = line.partition("==")[0].strip()
        if not name or name.startswith("#"):
            continue
        try:
            pins.append(f"{name}=={metadata.version(name)}\n")
        except metadata.PackageNotFoundError:
            continue  # not needed on this Python (or by this install)
    return "".join(pins)


@dataclass
class Runner:
    """One job on a fake runner: its files and the environment steps share."""

    root: Path
    bin: Path
    workspace: Path
    env: dict[str, str] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)

    def file(self, name: str) -> Path:
        return self.root / "_runner" / name

    def run_action(self, action_dir: Path, inputs: dict[str, str], **step_env: str) -> int:
        """Run every `run:` step of the action whose `if:` holds; the last exit code."""
        action = yaml.safe_load((action_dir / "action.yml").read_text(encoding="utf-8"))
        values = {k: str(v.get("default", "")) for k, v in action["inputs"].items()}
        values.update(inputs)
        code = 0
        for step in action["runs"]["steps"]:
            if "run" not in step or not _holds(step.get("if"), values, self.env):
                continue
            env = {
                k: _expand(str(v), values, action_dir) for k, v in (step.get("env") or {}).items()
            }
            done = subprocess.run(
                ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
                cwd=self.workspace,
                env={**self.base_env(action_dir), **self.env, **step_env, **env},
                capture_output=True,
                text=True,
                timeout=300,
            )
            self.log.append(done.stdout + done.stderr)
            code = done.returncode
            for line in self.file("env").read_text(encoding="utf-8").splitlines():
                key, _, value = line.partition("=")
                self.env[key] = value
            if code != 0:
                return code
        return code

    def base_env(self, action_dir: Path) -> dict[str, str]:
        keep = {k: os.environ[k] for k in ("HOME", "LANG", "TMPDIR") if k in os.environ}
        return {
            **keep,
            "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            "GITHUB_ENV": str(self.file("env")),
            "GITHUB_OUTPUT": str(self.file("output")),
            "GITHUB_STEP_SUMMARY": str(self.file("summary")),
            "GITHUB_ACTION_PATH": str(action_dir),
            "GITHUB_WORKSPACE": str(self.workspace),
            # No index: everything comes from the checkout, a local wheel or the venv.
            "PIP_NO_INDEX": "1",
            # pip reads this negative option inverted: "off" means no build isolation.
            "PIP_NO_BUILD_ISOLATION": "off",
            "PIP_NO_CACHE_DIR": "1",
        }

    def output(self) -> str:
        return self.file("output").read_text(encoding="utf-8")


def _holds(condition: str | None, inputs: dict[str, str], env: dict[str, str]) -> bool:
    """The few `if:` forms action.yml uses: `X != 'v'` / `X == 'v'` joined by `&&`."""
    if not condition:
        return True
    for part in condition.split("&&"):
        match = re.fullmatch(r"\s*(env|inputs)\.([\w-]+) (!=|==) '([^']*)'\s*", part)
        assert match, f"unsupported if: {condition}"
        value = (env if match[1] == "env" else inputs).get(match[2], "")
        if (value == match[4]) != (match[3] == "=="):
            return False
    return True


def _expand(text: str, inputs: dict[str, str], action_dir: Path) -> str:
    def one(match: re.Match[str]) -> str:
        expression = match[1].strip()
        if expression == "github.action_path":
            return str(action_dir)
        assert expression.startswith("inputs."), expression
        return inputs[expression.removeprefix("inputs.")]

    return re.sub(r"\$\{\{(.*?)\}\}", one, text)


def _runner(tmp_path: Path, python_env: Path) -> Runner:
    workspace = tmp_path / "work" / "settings" / "settings"
    (workspace / "projects").mkdir(parents=True)
    runner = Runner(root=tmp_path, bin=python_env, workspace=workspace)
    runner.file("env").parent.mkdir(parents=True)
    for name in ("env", "output", "summary"):
        runner.file(name).write_text("", encoding="utf-8")
    return runner


def _sandbox_file(workspace: Path) -> None:
    (workspace / "projects" / "sandbox.yaml").write_text(
        f"id: {SANDBOX_ID}\nsignupEnabled: true\n"
        "auth: {clientIdEnv: SANDBOX_CLIENT_ID, clientSecretEnv: SANDBOX_CLIENT_SECRET}\n",
        encoding="utf-8",
    )


def test_the_action_installs_from_its_own_checkout_and_runs(tmp_path, python_env, emulator):
    action_repo = _ship(tmp_path / "_actions" / "acme" / "reconciler" / "v9")
    action_dir = action_repo / ".github" / "actions" / "reconciler"
    runner = _runner(tmp_path, python_env)
    _sandbox_file(runner.workspace)
    inputs = {"python-version": ""}  # the runner's python: the venv

    assert runner.run_action(action_dir, {**inputs, "command": "validate"}) == 0, runner.log
    assert runner.env["RECONCILER_ACTION_INSTALLED"] == "true"
    assert f"reconciler, version {__version__}" in runner.log[0]
    assert runner.output() == "exit-code=0\n"
    # Installed into the venv from the action's checkout, not the machine's own copy.
    where = subprocess.run(
        [python_env / "python", "-c", "import reconciler; print(reconciler.__file__)"],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"]},
        cwd=tmp_path,
    ).stdout
    assert where.startswith(str(python_env.parent)), where

    credentials = {
        "SANDBOX_CLIENT_ID": SANDBOX_CLIENT_ID,
        "SANDBOX_CLIENT_SECRET": SANDBOX_CLIENT_SECRET,
        "OYSTEHR_PROJECT_API_URL": emulator.api_url,
        "OYSTEHR_AUTH_URL": emulator.auth_url,
    }
    plan = {
        **inputs,
        "command": "plan --format markdown --out plan.json",
        "stdout": "plan.md",
        "allowed-exit-codes": "0 1",
    }
    runs_before = len(runner.log)
    assert runner.run_action(action_dir, plan, **credentials) == 0, runner.log
    assert len(runner.log) == runs_before + 1  # installed once per job: only the run step ran
    assert runner.output() == "exit-code=0\nexit-code=0\n"
    comment = (runner.workspace / "plan.md").read_text(encoding="utf-8")
    assert comment.startswith("<!-- reconciler-plan -->\n### reconciler plan: ")
    assert "| `signupEnabled` | `false` | `true` |" in comment
    assert runner.file("summary").read_text(encoding="utf-8").startswith("<!-- reconciler-plan")
    assert (runner.workspace / "plan.json").is_file()
    assert SANDBOX_CLIENT_SECRET not in "".join(runner.log) + comment


def test_a_copied_action_says_how_to_use_it(tmp_path, python_env):
    runner = _runner(tmp_path, python_env)
    copied = runner.workspace / ".github" / "actions" / "reconciler"
    copied.mkdir(parents=True)
    shutil.copy2(ACTION, copied / "action.yml")
    code = runner.run_action(copied, {"python-version": "", "command": "validate"})
    assert code == 1
    assert runner.log[-1].startswith("::error::reconciler action: ")
    assert "use the action as OWNER/REPO/.github/actions/reconciler@REF" in runner.log[-1]
    assert runner.log[-1].count("\n") == 1


def test_the_version_input_installs_oystehr_reconciler_from_a_wheel(tmp_path, python_env):
    wheels = tmp_path / "wheels"
    source = _ship(tmp_path / "source")
    built = subprocess.run(
        # Built with the test environment's own pip, setuptools and wheel.
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["--no-index", "-w", str(wheels), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("*.whl")
    assert wheel.name.startswith(f"oystehr_reconciler-{__version__}-")

    # The action's checkout holds no pyproject.toml: only the version input can work.
    action_dir = tmp_path / "_actions" / "acme" / "reconciler" / "v9" / ".github" / "actions"
    action_dir = action_dir / "reconciler"
    action_dir.mkdir(parents=True)
    shutil.copy2(ACTION, action_dir / "action.yml")
    runner = _runner(tmp_path, python_env)
    _sandbox_file(runner.workspace)
    inputs = {"python-version": "", "version": __version__, "command": "validate"}
    code = runner.run_action(action_dir, inputs, PIP_FIND_LINKS=str(wheels))
    assert code == 0, runner.log
    assert f"reconciler, version {__version__}" in runner.log[0]
    shown = subprocess.run(
        [python_env / "python", "-m", "pip", "show", "oystehr-reconciler"],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"]},
        cwd=tmp_path,
    ).stdout
    assert f"Version: {__version__}" in shown and str(python_env.parent) in shown


def test_an_exit_code_not_allowed_fails_the_step_and_is_recorded(tmp_path, python_env):
    action_repo = _ship(tmp_path / "_actions" / "acme" / "reconciler" / "v9")
    action_dir = action_repo / ".github" / "actions" / "reconciler"
    runner = _runner(tmp_path, python_env)
    (runner.workspace / "projects" / "bad.yaml").write_text("id: [\n", encoding="utf-8")
    inputs: dict[str, Any] = {"python-version": "", "command": "validate", "stdout": "out.txt"}
    assert runner.run_action(action_dir, {**inputs, "allowed-exit-codes": "0 1"}) == 0
    assert runner.output() == "exit-code=1\n"
    out = (runner.workspace / "out.txt").read_text(encoding="utf-8")
    assert out.startswith("projects/bad.yaml:")
    assert runner.run_action(action_dir, inputs) == 1
    assert runner.output() == "exit-code=1\nexit-code=1\n"
    assert "::error::reconciler validate exited 1" in runner.log[-1]
