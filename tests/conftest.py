"""Shared fixtures: tests talk to a real emulator over a real socket.

`seed_data` describes three Projects with fixed ids, importable from here
(`from conftest import SANDBOX_ID, DEV_TOKEN`):

    SANDBOX   SANDBOX_ID   r4, sandbox, signup off   roles Patient, Provider
              defaultPatientRole Patient, no SSO role   M2M sandbox-ci
    CLINIC    CLINIC_ID    r4, signup on             roles Patient, Staff, Staff, Provider
              (two roles named "Staff": by name they are ambiguous)
              defaultPatientRole Patient, defaultSSOUserRole the first Staff   M2M clinic-ci
    RESEARCH  RESEARCH_ID  r5, signup off            roles Researcher, Participant
              no default roles   M2M research-ci

    DEV_TOKEN          a Developer of all three
    DEV_SANDBOX_TOKEN  a Developer of SANDBOX only

`emulator` yields `serve(seed_data)`'s handle on a free port (`.url`,
`.api_url`, `.auth_url`, `.store`, `.stats()`); `seed_file` writes the seed as
YAML for tests that start `reconciler emulator --seed FILE`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.emulator import RunningEmulator, serve

SANDBOX_ID = "fd9b1113-4bd2-4dad-8631-a95ba035dfda"
SANDBOX_PATIENT_ROLE_ID = "31fcd69e-1b6b-41f1-a7b5-a1a20d976a89"
SANDBOX_PROVIDER_ROLE_ID = "5167feba-7727-4d1c-8f2f-3493a61a1694"
SANDBOX_CLIENT_ID = "sandbox-ci"
SANDBOX_CLIENT_SECRET = "sandbox-secret-5f2a9c"

CLINIC_ID = "2c7e4b8a-6f1d-4e3a-9b5c-8d0f1a2b3c4d"
CLINIC_PATIENT_ROLE_ID = "a1b2c3d4-0001-4a5b-8c6d-7e8f9a0b1c2d"
CLINIC_STAFF_ROLE_ID = "a1b2c3d4-0002-4a5b-8c6d-7e8f9a0b1c2d"
CLINIC_STAFF2_ROLE_ID = "a1b2c3d4-0003-4a5b-8c6d-7e8f9a0b1c2d"
CLINIC_PROVIDER_ROLE_ID = "a1b2c3d4-0004-4a5b-8c6d-7e8f9a0b1c2d"
CLINIC_CLIENT_ID = "clinic-ci"
CLINIC_CLIENT_SECRET = "clinic-secret-8e1d4b"

RESEARCH_ID = "9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b"
RESEARCH_RESEARCHER_ROLE_ID = "b2c3d4e5-0001-4b6c-9d7e-8f9a0b1c2d3e"
RESEARCH_PARTICIPANT_ROLE_ID = "b2c3d4e5-0002-4b6c-9d7e-8f9a0b1c2d3e"
RESEARCH_CLIENT_ID = "research-ci"
RESEARCH_CLIENT_SECRET = "research-secret-3c7f0a"

DEV_TOKEN = "dev-token-all-projects-7d41"
DEV_SANDBOX_TOKEN = "dev-token-sandbox-only-2b9e"

PROJECT_IDS = (SANDBOX_ID, CLINIC_ID, RESEARCH_ID)

_SEED: dict[str, Any] = {
    "projects": [
        {
            "id": SANDBOX_ID,
            "name": "SANDBOX",
            "description": "Sandbox Project for trying out Oystehr",
            "signupEnabled": False,
            "sandbox": True,
            "fhirVersion": "r4",
            "roles": [
                {"id": SANDBOX_PATIENT_ROLE_ID, "name": "Patient"},
                {"id": SANDBOX_PROVIDER_ROLE_ID, "name": "Provider", "memberCount": 3},
            ],
            "defaultPatientRole": "Patient",
            "m2mClients": [{"clientId": SANDBOX_CLIENT_ID, "clientSecret": SANDBOX_CLIENT_SECRET}],
        },
        {
            "id": CLINIC_ID,
            "name": "CLINIC",
            "description": "Outpatient clinic, production",
            "signupEnabled": True,
            "sandbox": False,
            "fhirVersion": "r4",
            "roles": [
                {"id": CLINIC_PATIENT_ROLE_ID, "name": "Patient", "memberCount": 1200},
                {"id": CLINIC_STAFF_ROLE_ID, "name": "Staff", "memberCount": 14},
                {"id": CLINIC_STAFF2_ROLE_ID, "name": "Staff", "description": "night shift"},
                {"id": CLINIC_PROVIDER_ROLE_ID, "name": "Provider", "memberCount": 6},
            ],
            "defaultPatientRole": "Patient",
            "defaultSSOUserRole": CLINIC_STAFF_ROLE_ID,
            "m2mClients": [{"clientId": CLINIC_CLIENT_ID, "clientSecret": CLINIC_CLIENT_SECRET}],
        },
        {
            "id": RESEARCH_ID,
            "name": "RESEARCH",
            "description": "",
            "signupEnabled": False,
            "sandbox": False,
            "fhirVersion": "r5",
            "roles": [
                {"id": RESEARCH_RESEARCHER_ROLE_ID, "name": "Researcher"},
                {"id": RESEARCH_PARTICIPANT_ROLE_ID, "name": "Participant"},
            ],
            "m2mClients": [
                {"clientId": RESEARCH_CLIENT_ID, "clientSecret": RESEARCH_CLIENT_SECRET}
            ],
        },
    ],
    "developers": [
        {"accessToken": DEV_TOKEN, "projects": list(PROJECT_IDS)},
        {"accessToken": DEV_SANDBOX_TOKEN, "projects": [SANDBOX_ID]},
    ],
}


@pytest.fixture
def seed_data() -> dict[str, Any]:
    """The seed above, as a fresh dict a test may change before starting an emulator."""
    return copy.deepcopy(_SEED)


@pytest.fixture
def seed_file(tmp_path: Path, seed_data: dict[str, Any]) -> Path:
    """The seed written as YAML, for `reconciler emulator --seed FILE`."""
    path = tmp_path / "seed.yaml"
    path.write_text(yaml.safe_dump(seed_data, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def emulator(seed_data: dict[str, Any]) -> Iterator[RunningEmulator]:
    """An in-memory emulator holding `seed_data`, on a free port, for one test."""
    with serve(seed_data) as emu:
        yield emu


@pytest.fixture
def emu() -> Iterator[RunningEmulator]:
    """An emulator holding the CLI end-to-end seed (`tests/e2e.py`), on a free port."""
    from e2e import SEED

    with serve(SEED) as running:
        yield running


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty repository folder, made the current directory (paths print relative)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
