"""Issue 10: `apply --plan` treats the file as untrusted (SPEC section 4).

Each case starts from a real plan of the e2e emulator, edits it as an attacker would,
recomputes the checksum (anyone can), and checks: exit 1, one line
`Error: plan.json: not a valid plan file: REASON`, no traceback, and not one request.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest
from e2e import A_ADMIN, A_PATIENT, A_STAFF_1, ALPHA, BETA, GAMMA, run, write

Doc = dict[str, Any]


def sealed(doc: Doc) -> Doc:
    """The document with its checksum recomputed, as SPEC section 4 defines it."""
    body = {k: v for k, v in doc.items() if k != "checksum"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return {**body, "checksum": "sha256:" + hashlib.sha256(text.encode()).hexdigest()}


@pytest.fixture
def plan_doc(repo, emu) -> Doc:
    """A real plan: alpha changes signupEnabled and its patient role, beta its
    description, gamma nothing."""
    write(
        repo,
        "projects/alpha.yaml",
        f"id: {ALPHA}\nsignupEnabled: true\ndefaultPatientRole: Admin\n",
    )
    write(repo, "projects/beta.yaml", f"id: {BETA}\ndescription: Beta, reviewed\n")
    write(repo, "projects/gamma.yaml", f"id: {GAMMA}\nname: Gamma R5\n")
    result = run(["plan", "--out", "plan.json"], emu)
    assert result.exit_code == 0, result.output
    return json.loads((repo / "plan.json").read_text())


def first(doc: Doc) -> Doc:
    return doc["projects"][0]


def set_in(path: list[Any], value: Any) -> Callable[[Doc], None]:
    def edit(doc: Doc) -> None:
        target = doc
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value

    return edit


def forged_patch(doc: Doc) -> None:
    # The attack: a patch no change derives, for another Project, managing nothing,
    # with the fingerprint of {}.
    project = first(doc)
    project["projectId"] = GAMMA
    project["patch"] = {"name": "pwned", "signupEnabled": True}
    project["managedKeys"] = []
    text = json.dumps({}, sort_keys=True, separators=(",", ":"))
    project["liveFingerprint"] = "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    doc["projects"] = [project]
    doc["summary"] = {"changed": 1, "unchanged": 0, "errors": 0}


def extra_patch_key(doc: Doc) -> None:
    first(doc)["patch"]["name"] = "not planned"


def patch_value_differs(doc: Doc) -> None:
    first(doc)["patch"]["signupEnabled"] = False


def role_patch_to_other_id(doc: Doc) -> None:
    first(doc)["patch"]["defaultPatientRoleId"] = A_STAFF_1


def unmanaged_change(doc: Doc) -> None:
    first(doc)["managedKeys"] = ["defaultPatientRole"]


def fhir_change(doc: Doc) -> None:
    project = first(doc)
    project["changes"].append({"field": "fhirVersion", "before": "r4", "after": "r5"})
    project["managedKeys"].append("fhirVersion")
    project["patch"]["fhirVersion"] = "r5"


def duplicate_project(doc: Doc) -> None:
    doc["projects"].append(copy.deepcopy(first(doc)))
    doc["summary"]["changed"] += 1


def nested(doc: Doc) -> None:
    first(doc)["name"] = {"a": [1]}


CASES = [
    (
        set_in(["projects", 0, "status"], "weird"),
        'projects[0].status: "weird" is not one of changed, unchanged, error',
    ),
    (
        set_in(["projects", 0, "auth"], ["a"]),
        'projects[0].auth: expected an object or null, got ["a"]',
    ),
    (
        set_in(["projects", 0, "auth"], {"clientIdEnv": "X"}),
        "projects[0].auth: clientIdEnv needs clientSecretEnv as well",
    ),
    (
        set_in(
            ["projects", 0, "auth"],
            {"accessTokenEnv": "A", "clientIdEnv": "B", "clientSecretEnv": "C"},
        ),
        "projects[0].auth: give accessTokenEnv, or clientIdEnv and clientSecretEnv, not both",
    ),
    (
        set_in(["projects", 0, "auth"], {"accessTokenEnv": "Bearer abc.def"}),
        "projects[0].auth.accessTokenEnv must be the NAME of an environment variable "
        "(letters, digits and _, like SANDBOX_CLIENT_SECRET), not its value",
    ),
    (
        set_in(["projects", 0, "auth"], {"accessTokenEnv": "GITHUB_TOKEN"}),
        "projects[0].auth.accessTokenEnv may not name a variable starting with GITHUB_, "
        "ACTIONS_ or RECONCILER_VAR_",
    ),
    (forged_patch, "projects[0].changes[0].field: signupEnabled is not in managedKeys"),
    (
        extra_patch_key,
        'projects[0].patch: "name" is not derived from any change',
    ),
    (
        patch_value_differs,
        "projects[0].patch.signupEnabled: false is not what its change derives (true)",
    ),
    (
        role_patch_to_other_id,
        f'projects[0].patch.defaultPatientRoleId: "{A_STAFF_1}" is not what its change '
        f'derives ("{A_ADMIN}")',
    ),
    (unmanaged_change, "projects[0].changes[0].field: signupEnabled is not in managedKeys"),
    (fhir_change, 'projects[0].changes[2].field: "fhirVersion" is not a writable key'),
    (
        set_in(["projects", 0, "changes", 0, "field"], "sandbox"),
        'projects[0].changes[0].field: "sandbox" is not a writable key',
    ),
    (
        set_in(["projects", 0, "managedKeys"], ["signupEnabled", "defaultPatientRole", "sandbox"]),
        'projects[0].managedKeys: "sandbox" is not a key a file can manage',
    ),
    (
        set_in(["projects", 0, "changes", 0, "after"], "yes"),
        "projects[0].changes[0].after: expected a boolean, got string 'yes'",
    ),
    (
        set_in(["projects", 0, "changes", 1, "after"], {"id": "../../admin", "name": "Admin"}),
        "projects[0].changes[1].after.id: '../../admin' is not a valid UUID (expected "
        "lowercase 8-4-4-4-12 hex, like fd9b1113-4bd2-4dad-8631-a95ba035dfda)",
    ),
    (
        set_in(["projects", 0, "changes", 1, "after"], A_PATIENT),
        f'projects[0].changes[1].after: expected an object, got "{A_PATIENT}"',
    ),
    (
        set_in(["projects", 0, "projectId"], ALPHA.upper()),
        f"projects[0].projectId: '{ALPHA.upper()}' is not a valid UUID (expected lowercase "
        "8-4-4-4-12 hex, like fd9b1113-4bd2-4dad-8631-a95ba035dfda)",
    ),
    (
        set_in(["projects", 0, "liveFingerprint"], "sha256:{}"),
        "projects[0].liveFingerprint: expected 'sha256:' and 64 hex digits, got \"sha256:{}\"",
    ),
    (set_in(["projects", 0, "error"], "oops"), "projects[0].error: a changed Project has no error"),
    (
        set_in(["projects", 0, "changes"], []),
        "projects[0]: a changed Project has at least one change",
    ),
    (
        set_in(["projects", 2, "patch"], {"name": "x"}),
        "projects[2]: a Project that is unchanged has no changes and no patch",
    ),
    (
        set_in(["projects", 0, "name"], {"a": [1]}),
        'projects[0].name: expected a string or null, got {"a": [1]}',
    ),
    (set_in(["projects", 0, "sandbox"], True), 'projects[0]: unknown key "sandbox"'),
    (set_in(["extra"], 1), 'the document: unknown key "extra"'),
    (set_in(["projects"], "all"), 'projects: expected a list, got "all"'),
    (set_in(["projects", 1], [1]), "projects[1]: expected an object, got [1]"),
    (
        set_in(["summary"], {"changed": 0, "unchanged": 3, "errors": 0}),
        'summary {"changed": 0, "errors": 0, "unchanged": 3} does not count the projects '
        '({"changed": 2, "errors": 0, "unchanged": 1})',
    ),
    (duplicate_project, f"projects[3].projectId: {ALPHA} is planned twice"),
    (set_in(["apiUrl"], None), "apiUrl: expected a string, got null"),
]


@pytest.mark.parametrize(("edit", "reason"), CASES)
def test_an_inconsistent_plan_is_refused_before_any_request(repo, emu, plan_doc, edit, reason):
    edit(plan_doc)
    (repo / "plan.json").write_text(json.dumps(sealed(plan_doc)))
    emu.reset_stats()
    result = run(["apply", "--plan", "plan.json", "--yes"], emu)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"Error: plan.json: not a valid plan file: {reason}")
    assert result.stderr.count("\n") == 1
    assert emu.stats() == {}


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested deeper than 64 levels"),
        ('{"projects": [], "checksum": "x", "formatVersion": true}', None),
        ("9" * 5000, "not JSON (Exceeds the limit"),
    ],
)
def test_hostile_json_is_one_line(repo, emu, content, reason):
    (repo / "plan.json").write_text(content)
    result = run(["apply", "--plan", "plan.json", "--yes"], emu)
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    if reason:
        assert result.stderr.startswith(f"Error: plan.json: not a valid plan file: {reason}")
    else:
        assert result.stderr.startswith("Error: plan.json: plan format true is not 3")


def test_the_untouched_plan_still_applies(repo, emu, plan_doc):
    # The checks refuse forgeries, not real plans: the same file, resealed, applies.
    (repo / "plan.json").write_text(json.dumps(sealed(plan_doc)))
    emu.reset_stats()
    result = run(["apply", "--plan", "plan.json", "--yes"], emu)
    assert result.exit_code == 0, result.output
    # alpha's patient role changes to one named Admin: the role list says which that is.
    assert emu.stats() == {"GET /v1/project": 2, "GET /v1/iam/role": 1, "PATCH /v1/project": 2}
