"""Helpers for end-to-end tests: a seeded emulator on a free port, project files in a
tmp folder, and the CLI invoked as a user would (with the environment it reads).

No mocks: every request goes over a real socket to the emulator.
"""

from __future__ import annotations

import textwrap
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import httpx
from click.testing import CliRunner, Result

from reconciler.cli import cli

ALPHA = "0b5e6a52-7d0e-4c61-9d1a-2f3c4b5a6d71"
BETA = "1c6f7b63-8e1f-4d72-8e2b-3a4d5c6b7e82"
GAMMA = "2d708c74-9f20-4e83-9f3c-4b5e6d7c8f93"
A_PATIENT = "3e819d85-a031-4f94-8a4d-5c6f7e8d9a04"
A_STAFF_1 = "4f92ae96-b142-4aa5-9b5e-6d708f9eab15"
A_STAFF_2 = "50a3bfa7-c253-4bb6-8c6f-7e81a0afbc26"
A_ADMIN = "61b4c0b8-d364-4cc7-9d70-8f92b1b0cd37"
B_PATIENT = "72c5d1c9-e475-4dd8-8e81-90a3c2c1de48"
DEV_TOKEN = "dev-token-e2e"
BETA_CLIENT, BETA_SECRET = "beta-ci", "beta-secret-value-never-shown"

SEED = {
    "projects": [
        {
            "id": ALPHA,
            "name": "Alpha Clinic",
            "description": "Alpha production",
            "signupEnabled": False,
            "sandbox": False,
            "fhirVersion": "r4",
            "roles": [
                {"id": A_PATIENT, "name": "Patient"},
                {"id": A_STAFF_1, "name": "Staff"},
                {"id": A_STAFF_2, "name": "Staff"},
                {"id": A_ADMIN, "name": "Admin"},
            ],
            "defaultPatientRole": A_PATIENT,
        },
        {
            "id": BETA,
            "name": "Beta Sandbox",
            "description": "Beta sandbox",
            "signupEnabled": True,
            "sandbox": True,
            "fhirVersion": "r4",
            "roles": [{"id": B_PATIENT, "name": "Patient"}],
            "defaultPatientRole": B_PATIENT,
            "defaultSSOUserRole": B_PATIENT,
            "m2mClients": [{"clientId": BETA_CLIENT, "clientSecret": BETA_SECRET}],
        },
        {
            "id": GAMMA,
            "name": "Gamma R5",
            "description": "",
            "signupEnabled": False,
            "sandbox": True,
            "fhirVersion": "r5",
            "roles": [],
        },
    ],
    "developers": [{"accessToken": DEV_TOKEN, "projects": [ALPHA, BETA, GAMMA]}],
}


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def run(args: list[str], emu, env: Mapping[str, str] | None = None) -> Result:
    """Run the CLI against the emulator, with a Developer token unless env says otherwise."""
    base = {
        "OYSTEHR_PROJECT_API_URL": emu.api_url,
        "OYSTEHR_AUTH_URL": emu.auth_url,
        "OYSTEHR_ACCESS_TOKEN": DEV_TOKEN,
        "OYSTEHR_CLIENT_ID": None,
        "OYSTEHR_CLIENT_SECRET": None,
        "GITHUB_STEP_SUMMARY": None,
        "NO_COLOR": None,
    }
    base.update(env or {})
    return CliRunner().invoke(cli, args, env=base, catch_exceptions=False)


def live(emu, project_id: str) -> dict:
    """The Project as the API returns it (does not count: stats are read before it)."""
    headers = {"authorization": f"Bearer {DEV_TOKEN}", "x-oystehr-project-id": project_id}
    response = httpx.get(emu.api_url + "/project", headers=headers)
    response.raise_for_status()
    return response.json()


def hand_edit(emu, project_id: str, body: dict) -> dict:
    """Someone changes a Project outside reconciler."""
    headers = {"authorization": f"Bearer {DEV_TOKEN}", "x-oystehr-project-id": project_id}
    response = httpx.patch(emu.api_url + "/project", headers=headers, json=body)
    response.raise_for_status()
    return response.json()


def when_first(emu, request: str, action) -> threading.Thread:
    """Run `action` as soon as the emulator receives its first `request` ("POST /v1/m2m":
    its counts go up on arrival, before its latency): something changes live mid-apply,
    after `apply --plan` verified the plan."""

    def watch() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and request not in emu.stats():
            time.sleep(0.002)
        action()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread
