"""The plan digest: what would change, carried in the plan comment for the merge-time guard."""

import base64
import gzip
import hashlib
import json

import pytest

from reconciler.digest import (
    digest_comment,
    digest_entries,
    entries_outside,
    find_digest_comment,
    parse_digest,
)
from reconciler.plan import Plan, diff
from reconciler.render import PLAN_MARKER

PID = "fd9b1113-4bd2-4dad-8631-a95ba035dfda"
OTHER = "2c7e4b8a-6f1d-4e3a-9b5c-8d0f1a2b3c4d"
LIVE = {
    "id": PID,
    "name": "SANDBOX",
    "description": "Sandbox",
    "signupEnabled": False,
    "defaultPatientRole": None,
    "fhirVersion": "r4",
}

# A format-2 plan document: Project changes and object changes.
PLAN_V2 = {
    "formatVersion": 2,
    "projects": [
        {
            "projectId": PID,
            "changes": [
                {"field": "signupEnabled", "before": False, "after": True},
                {"field": "description", "before": "old", "after": "new"},
            ],
            "patch": {"signupEnabled": True, "description": "new"},
            "objects": [
                {
                    "kind": "role",
                    "name": "Nurse",
                    "id": None,
                    "action": "create",
                    "changes": [{"field": "description", "before": None, "after": "Ward staff"}],
                    "body": {"name": "Nurse"},
                    "liveFingerprint": None,
                },
                {
                    "kind": "application",
                    "name": "Old app",
                    "id": "app-1",
                    "action": "delete",
                    "changes": [],
                    "body": None,
                    "liveFingerprint": "sha256:x",
                },
            ],
        },
        {"projectId": OTHER, "changes": [], "patch": {}, "objects": []},
    ],
}


def _plan(*projects):
    return Plan(api_url="http://api/v1", projects=projects, created_at="2026-11-28T00:00:00Z")


def _comment(entries_json: bytes, *, hex_digest: str | None = None) -> str:
    encoded = base64.b64encode(gzip.compress(entries_json, mtime=0)).decode()
    hex_digest = hex_digest or hashlib.sha256(entries_json).hexdigest()
    return f"text <!-- reconciler-digest v1 sha256:{hex_digest} {encoded} --> more"


def test_entries_hold_what_changes_to_what_never_from_what():
    assert digest_entries(PLAN_V2) == [
        # Sorted by their canonical JSON.
        {
            "action": "create",
            "after": {"description": "Ward staff"},
            "kind": "role",
            "name": "Nurse",
            "projectId": PID,
        },
        {
            "action": "delete",
            "after": {},
            "kind": "application",
            "name": "Old app",
            "projectId": PID,
        },
        {"after": "new", "field": "description", "projectId": PID},
        {"after": True, "field": "signupEnabled", "projectId": PID},
    ]


def test_entries_of_a_plan_without_objects():
    changed = diff("projects/s.yaml", {"id": PID, "signupEnabled": True}, LIVE)
    doc = _plan(changed).to_dict()
    assert doc["projects"][0]["objects"] == []
    assert digest_entries(doc) == [{"projectId": PID, "field": "signupEnabled", "after": True}]
    assert digest_entries({"projects": []}) == []


def test_before_values_do_not_change_the_digest():
    moved = json.loads(json.dumps(PLAN_V2))
    moved["projects"][0]["changes"][0]["before"] = "something else"
    assert digest_comment(moved) == digest_comment(PLAN_V2)
    moved["projects"][0]["changes"][0]["after"] = False
    assert digest_comment(moved) != digest_comment(PLAN_V2)


def test_comment_is_deterministic_and_round_trips():
    comment = digest_comment(PLAN_V2)
    assert comment == digest_comment(json.loads(json.dumps(PLAN_V2)))
    assert comment.startswith("<!-- reconciler-digest v1 sha256:") and comment.endswith(" -->")
    assert parse_digest(f"{PLAN_MARKER}\n{comment}\n### plan") == digest_entries(PLAN_V2)
    assert find_digest_comment(f"x\n{comment}\ny") == comment
    assert parse_digest(digest_comment({"projects": []})) == []


@pytest.mark.parametrize(
    "body",
    [
        None,
        42,
        "",
        "no digest here",
        "<!-- reconciler-digest v1 sha256:abc notbase64 -->",
        "<!-- reconciler-digest v2 sha256:" + "0" * 64 + " AAAA -->",
        _comment(b'[{"projectId":"p","field":"f","after":1}]', hex_digest="0" * 64),  # hash
        _comment(b"not json"),
        _comment(b'{"projectId":"p"}'),  # not a list
        _comment(b'[{"projectId":"p","field":"f"}]'),  # no after
        _comment(b'[{"projectId":1,"field":"f","after":1}]'),
        _comment(b'[{"projectId":"p","field":"f","after":1,"extra":2}]'),
        _comment(b'[{"projectId":"p","kind":"role","name":"n","action":"create","after":3}]'),
        "<!-- reconciler-digest v1 sha256:" + "0" * 64 + " " + "QUJD" * 20_000 + " -->",
    ],
    ids=lambda b: repr(b)[:40],
)
def test_untrusted_bodies_give_none_never_an_exception(body):
    assert parse_digest(body) is None


def test_a_gzip_bomb_is_refused():
    bomb = b"[" + b" " * (20 * 1024 * 1024) + b"]"  # valid JSON, 20 MB, compresses to ~20 KB
    assert parse_digest(_comment(bomb)) is None


def test_entries_outside_the_reviewed_union():
    entries = digest_entries(PLAN_V2)
    assert entries_outside(entries, entries) == []
    assert entries_outside(entries, entries[1:]) == entries[:1]
    # Key order inside an entry does not matter.
    reordered = [dict(reversed(list(e.items()))) for e in entries]
    assert entries_outside(entries, reordered) == []
