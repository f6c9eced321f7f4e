"""The quick validity check agrees with jsonschema: on every fixture, and on thousands of
documents mutated from valid ones (a wrong type, a missing or unknown key, a bad value)."""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler import schema
from reconciler.quickschema import conforms

FIXTURES = Path(__file__).parent / "fixtures"
ID = "fd9b1113-4bd2-4dad-8631-a95ba035dfda"
RICH = {
    "id": ID,
    "name": "Clinic",
    "description": "",
    "signupEnabled": True,
    "defaultPatientRole": "Patient",
    "defaultSSOUserRole": {"id": ID, "name": "Staff"},
    "fhirVersion": "r4",
    "auth": {"clientIdEnv": "CLINIC_CLIENT_ID", "clientSecretEnv": "CLINIC_CLIENT_SECRET"},
    "roles": {
        "Patient": {
            "description": "People",
            "accessPolicy": {
                "rule": [
                    {"resource": "FHIR:Patient:*", "action": ["FHIR:Read"], "effect": "Allow"},
                    {"resource": ["Z3:*"], "action": "Z3:GetObject", "effect": "Deny"},
                ]
            },
        },
        "Front Desk": {"renamedFrom": "FrontDesk", "accessPolicy": {"rule": []}},
        "Empty": None,
    },
    "applications": {
        "Portal": {
            "allowedCallbackUrls": ["https://portal.example.com/callback"],
            "loginWithEmailEnabled": True,
            "mfaEnabled": False,
        }
    },
    "m2mClients": {"job": {"description": "Nightly", "roles": ["Patient", {"id": ID}]}},
    "prune": ["roles", "m2mClients"],
}
VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    1.0,
    2.5,
    "",
    " ",
    "x",
    "r5",
    "Allow",
    ID,
    ID.upper(),
    "fd9b1113-4bd2-4dad-8631-a95ba035dfd",
    "GITHUB_TOKEN",
    "roles",
    [],
    ["x"],
    [None],
    {},
    {"id": ID},
    {"name": "x"},
    {"rule": []},
]


def jsonschema_says(document: Any) -> bool:
    return not any(True for _ in schema.validator().iter_errors(document))


def paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += paths(value, (*prefix, index))
    return found


def mutate(document: dict, rng: random.Random) -> dict:
    document = copy.deepcopy(document)
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(paths(document)[1:])
        parent = document
        for part in path[:-1]:
            parent = parent[part]
        last = path[-1]
        move = rng.random()
        if move < 0.55:
            parent[last] = copy.deepcopy(rng.choice(VALUES))
        elif move < 0.7 and isinstance(parent, dict):
            del parent[last]
        elif move < 0.85 and isinstance(parent, dict):
            parent[rng.choice(["sandbox", "extra", "clientId", "secret", "", "id"])] = rng.choice(
                VALUES
            )
        elif isinstance(parent, list):
            parent.append(copy.deepcopy(rng.choice(VALUES)))
    return document


def documents() -> list[Any]:
    docs = []
    for path in sorted(FIXTURES.rglob("*.yaml")) + sorted(
        (Path(__file__).parents[1] / "reconciler" / "data").rglob("*.yaml")
    ):
        try:
            docs.append(yaml.safe_load(path.read_text(encoding="utf-8")))
        except (yaml.YAMLError, UnicodeDecodeError):
            continue
    return docs


def test_the_quick_check_agrees_with_jsonschema_on_every_fixture():
    docs = documents() + [RICH]
    assert len(docs) > 20
    for document in docs:
        assert conforms(schema.inlined(), document) == jsonschema_says(document), document


def test_the_quick_check_agrees_with_jsonschema_on_mutated_documents():
    rng = random.Random(18)
    answers = {True: 0, False: 0}
    for _ in range(3000):
        document = mutate(RICH, rng)
        quick = conforms(schema.inlined(), document)
        assert quick == jsonschema_says(document), document
        answers[quick] += 1
    assert min(answers.values()) > 100  # both answers were really tested


@pytest.mark.parametrize(
    ("keyword", "value"),
    [("format", "email"), ("if", {}), ("$ref", "#/$defs/x"), ("patternProperties", {})],
)
def test_a_keyword_it_does_not_check_is_left_to_jsonschema(keyword, value):
    assert conforms({keyword: value}, {"a": 1}) is None
