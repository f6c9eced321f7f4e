"""A Project with roles, applications and M2M clients, for the end-to-end tests of SPEC
section 9 (`test_roles.py`, `test_apps_m2m.py`): ids are fixed so tests can name them."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from e2e import DEV_TOKEN, write

from reconciler.emulator import serve

PID = "7a1c2e3f-4b5d-4e6f-8a9b-0c1d2e3f4a5b"
FRONT_DESK = "8b2d3f40-5c6e-4f70-9bac-1d2e3f4a5b6c"
STAFF = "9c3e4051-6d7f-4081-8cbd-2e3f4a5b6c7d"
LEGACY = "ad4f5162-7e80-4192-9dce-3f4a5b6c7d8e"
HELD = "be506273-8f91-42a3-8edf-4a5b6c7d8e9f"
PORTAL = "cf617384-90a2-43b4-9fe0-5b6c7d8e9fa0"
CI_CLIENT, CI_SECRET = "objects-ci", "objects-ci-secret-4f1e"
JOB_CLIENT, JOB_SECRET = "old-job", "old-job-secret-9a2b"

STAFF_POLICY = {
    "rule": [
        {"resource": ["FHIR:Patient:*"], "action": ["FHIR:Read"], "effect": "Allow"},
        {"resource": "FHIR:Encounter:*", "action": "FHIR:Read", "effect": "Allow"},
    ]
}

SEED: dict[str, Any] = {
    "projects": [
        {
            "id": PID,
            "name": "Objects",
            "description": "roles, applications and M2M clients",
            "signupEnabled": False,
            "fhirVersion": "r4",
            "roles": [
                {
                    "id": FRONT_DESK,
                    "name": "FrontDesk",
                    "description": "Desk staff",
                    "accessPolicy": {
                        "rule": [
                            {
                                "resource": "FHIR:Appointment:*",
                                "action": "FHIR:Read",
                                "effect": "Allow",
                            }
                        ]
                    },
                },
                {
                    "id": STAFF,
                    "name": "Staff",
                    "description": "Staff",
                    "accessPolicy": STAFF_POLICY,
                },
                {"id": LEGACY, "name": "Legacy"},
                {"id": HELD, "name": "Held", "members": 2},
            ],
            "defaultPatientRole": FRONT_DESK,
            "applications": [
                {
                    "id": PORTAL,
                    "name": "Portal",
                    "allowedCallbackUrls": ["https://portal.example.com/cb"],
                    "loginWithEmailEnabled": True,
                }
            ],
            "m2mClients": [
                {"clientId": CI_CLIENT, "clientSecret": CI_SECRET, "name": "ci"},
                {
                    "clientId": JOB_CLIENT,
                    "clientSecret": JOB_SECRET,
                    "name": "old-job",
                    "roles": ["Staff"],
                },
            ],
        }
    ],
    "developers": [{"accessToken": DEV_TOKEN, "projects": [PID]}],
}

M2M_ENV = {"OYSTEHR_ACCESS_TOKEN": None, "OYSTEHR_CLIENT_ID": CI_CLIENT}
M2M_ENV["OYSTEHR_CLIENT_SECRET"] = CI_SECRET


@contextmanager
def objects_emulator(**changes: Any) -> Iterator[Any]:
    """The seed above (with `changes` to its Project), on a free port."""
    seed = copy.deepcopy(SEED)
    seed["projects"][0].update(changes)
    with serve(seed) as emu:
        yield emu


def project(repo, text: str) -> None:
    """The Project's file, `id` first, then `text`."""
    write(repo, "projects/objects.yaml", f"id: {PID}\n" + text)


def api(emu, method: str, path: str, body: Any = None) -> Any:
    """The live API as a Developer sees it (stats are read before calling this)."""
    headers = {"authorization": f"Bearer {DEV_TOKEN}", "x-oystehr-project-id": PID}
    response = httpx.request(method, emu.api_url + path, headers=headers, json=body)
    response.raise_for_status()
    return response.json() if response.content else None


def counts(emu) -> dict[str, int]:
    """Request counts with object ids folded: `GET /v1/iam/role/{id}`."""
    folded: dict[str, int] = {}
    for key, value in emu.stats().items():
        method, path = key.split(" ", 1)
        parts = path.split("/")
        for index, part in enumerate(parts):
            if len(part) == 36 and part.count("-") == 4:
                parts[index] = "{id}"
        name = f"{method} {'/'.join(parts)}"
        folded[name] = folded.get(name, 0) + value
    return folded
