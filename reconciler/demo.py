"""`reconciler demo`: the whole job in one command, on an embedded emulator.

Starts an emulator on a free port seeded with bundled example data, copies the
bundled example project files to a temporary folder, and runs the real
commands as a user would, each in its own process over HTTP: validate -> plan
-> apply -> drift, then a hand edit that drift catches. Before the plan it builds
the sandbox's Zambda function zip from its bundled source, as the workflows' build
input does in CI. Nothing outside the temporary folder is touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import click

from reconciler.emulator import serve

# The emulator's own credentials for the demo's Projects (see data/demo/seed.yaml).
DEMO_ENV = {
    "SANDBOX_CLIENT_ID": "sandbox-ci",
    "SANDBOX_CLIENT_SECRET": "demo-sandbox-secret",
    "PRODUCTION_CLIENT_ID": "production-ci",
    "PRODUCTION_CLIENT_SECRET": "demo-production-secret",
    "STAGING_ACCESS_TOKEN": "demo-staging-token",
    # A secret's value from CI: what apply.yml maps from the production environment.
    "RECONCILER_SECRET_SANDBOX_STRIPE_SECRET_KEY": "sk_test_demo_4eC39HqLyjWDarjt",
}
STAGING = "31f7e0b1-b7ae-439d-a141-27b4e09ba6a1"
STAGING_STAFF = "0b7d0f5e-6a43-4c8e-9f8e-1f6f7f0a9e11"
WIDER_STAFF = {
    "rule": [
        {
            "resource": "FHIR:*",
            "action": ["FHIR:Read", "FHIR:Update", "FHIR:Create", "FHIR:Delete"],
            "effect": "Allow",
        }
    ]
}

# The sandbox's function: its zip is a build output, built from its source folder. This
# is the repository's own build command (the `build` input of its workflows).
ZAMBDA_SOURCE = "zambdas/notifications-updater/index.mjs"
ZAMBDA_ZIP = ".dist/zips/notifications-updater.zip"
BUILD_COMMAND = f"mkdir -p .dist/zips && python -m zipfile -c {ZAMBDA_ZIP} {ZAMBDA_SOURCE}"
BUILD_STEP = (
    "Build the sandbox's Zambda function zip from its source (in CI: the plan job, through "
    "the action's build input; apply uploads that zip and never builds)",
    BUILD_COMMAND,
)

# (heading, command line, exit code that means the step went as the demo expects)
STEPS = [
    (
        "Validate the project files (offline: YAML, includes, schema, ${VAR}, duplicate ids)",
        ["validate", "projects"],
        0,
    ),
    (
        "Staging and production both include base/clinic.yaml and say what differs: "
        "staging's effective document, each key under the file and line it comes from",
        ["render", "projects/staging.yaml"],
        0,
    ),
    (
        "How production differs from staging (offline): what promoting staging's "
        "configuration to production would change there",
        ["compare", "projects/production.yaml", "projects/staging.yaml"],
        0,
    ),
    (
        "Plan: what would change, Project by Project. The base declares a role and makes it "
        "the default patient role in the same plan, with its app and back-end; the sandbox "
        "gains a cron function that runs as a role the same plan creates, its code "
        "identified by the zip's code hash; a value from the base says where it is written",
        ["plan", "--out", "plan.json"],
        0,
    ),
    (
        "Apply the reviewed plan (checked against its files and what is live, re-reading "
        "only what it changes; refuses a forged or stale plan)",
        ["apply", "--plan", "plan.json", "--yes"],
        0,
    ),
    ("Drift check: the live Projects now match their files", ["drift"], 0),
]
HAND_EDIT_STEP = (
    "Someone turns off self-signup in staging and gives its Staff role FHIR:Delete, by hand; "
    "drift catches both (exit 2)",
    ["drift", "--format", "text"],
    2,
)


def run_demo(echo=click.echo) -> int:
    """Run every step and return 0 when each exited as expected."""
    data = resources.files("reconciler") / "data" / "demo"
    with tempfile.TemporaryDirectory(prefix="reconciler-demo-") as folder:
        work = Path(folder)
        shutil.copytree(str(data / "projects"), work / "projects")
        shutil.copytree(str(data / "base"), work / "base")
        shutil.copytree(str(data / "zambdas"), work / "zambdas")
        with resources.as_file(data / "seed.yaml") as seed, serve(seed) as emu:
            env = {
                **DEMO_ENV,
                "OYSTEHR_PROJECT_API_URL": emu.api_url,
                "OYSTEHR_AUTH_URL": emu.auth_url,
            }
            echo(f"Emulator: {emu.url} (3 example Projects; credentials are the emulator's)")
            echo(f"Project files: {work / 'projects'}")
            ok = True
            with _environment(env), _cwd(work):
                number = 0
                for heading, args, expected in STEPS:
                    if args[0] == "plan":
                        number += 1
                        _build(number, work, echo)
                    number += 1
                    ok &= _step(number, heading, args, expected, echo)
                emu.store.set_project_fields(STAGING, {"signupEnabled": False})
                emu.store.update_role(STAGING, STAGING_STAFF, {"accessPolicy": WIDER_STAFF})
                heading, args, expected = HAND_EDIT_STEP
                ok &= _step(number + 1, heading, args, expected, echo)
    echo("")
    echo("Done: every step behaved as expected." if ok else "A step did not behave as expected.")
    return 0 if ok else 1


def _build(number: int, work: Path, echo) -> None:
    """What BUILD_COMMAND does, in this process (so it works wherever Python does)."""
    heading, command = BUILD_STEP
    echo("")
    echo(click.style(f"== {number}. {heading}", bold=True))
    echo(f"$ {command}")
    (work / ZAMBDA_ZIP).parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(work / ZAMBDA_ZIP, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(work / ZAMBDA_SOURCE, os.path.basename(ZAMBDA_SOURCE))


def _step(number: int, heading: str, args: list[str], expected: int, echo) -> bool:
    """One command in its own process (`python -m reconciler`), its output shown as is."""
    echo("")
    echo(click.style(f"== {number}. {heading}", bold=True))
    echo(f"$ reconciler {' '.join(args)}")
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # one stream, so errors stay in order with output
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
        check=False,
    )
    echo(done.stdout, nl=False)
    echo(f"(exit {done.returncode})")
    return done.returncode == expected


@contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def _cwd(path: Path) -> Iterator[None]:
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)
