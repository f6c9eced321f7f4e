"""Which changes of a plan the project files explain: the pure part of the merge guard,
fed with documents as the loader gives them (`reconciler/github/explain.py`).

The end-to-end stories (real git, real plans, a fake GitHub) are in test_guard.py; here
are the rules one by one, including kinds that later sections add (a Zambda
function's `code`, a secret compared at apply), given as data.
"""

from __future__ import annotations

from typing import Any

import pytest

from reconciler.files import ProjectFile
from reconciler.github.explain import Changes, Entry, explain, plan_entries
from reconciler.github.revision import Revision, templated_paths
from reconciler.plan import CHANGED, Change, ObjectChange, Plan, ProjectPlan

PID = "fd9b1113-4bd2-4dad-8631-a95ba035dfda"
KINDS = {"role": "roles", "zambda": "zambdas"}


def _revision(sha: str, data: dict[str, Any] | None, text: str = "") -> Revision:
    revision = Revision(sha * 40)
    if data is not None:
        revision.projects[PID] = ProjectFile("projects/p.yaml", {"id": PID, **data})
        revision.templated[PID] = templated_paths(text)
    return revision


def _setting(name: str) -> Entry:
    return Entry(PID, "P (projects/p.yaml)", None, name, "update", (), f"~ {name}")


def _object(kind: str, name: str, action: str, *fields: str) -> Entry:
    return Entry(PID, "P (projects/p.yaml)", kind, name, action, fields, f"{action} {name}")


def _why(entry: Entry, base: Revision, head: Revision, *changed: str) -> str | None:
    ((_, why),) = explain([entry], base, head, Changes(changed), KINDS)
    return why


def test_a_setting_is_explained_when_its_value_differs_or_appears():
    assert (
        _why(_setting("name"), _revision("a", {"name": "A"}), _revision("b", {"name": "B"})) is None
    )
    assert _why(_setting("name"), _revision("a", {}), _revision("b", {"name": "B"})) is None
    same = _why(_setting("name"), _revision("a", {"name": "B"}), _revision("b", {"name": "B"}))
    assert same == "not changed in the files"


def test_a_project_new_since_the_base_is_explained_unless_the_base_did_not_load():
    assert _why(_setting("name"), _revision("a", None), _revision("b", {"name": "B"})) is None
    broken = _revision("a", None)
    broken.failed["projects/p.yaml"] = "projects/p.yaml:2:1: unknown key 'x'"
    assert _why(_setting("name"), broken, _revision("b", {"name": "B"})) == (
        "its files did not load at aaaaaaaaaaaa, so every change is refused: "
        "projects/p.yaml:2:1: unknown key 'x'"
    )
    # Any file that failed at the base might have been this Project before it moved.
    elsewhere = _revision("a", None)
    elsewhere.failed["projects/old.yaml"] = "projects/old.yaml:1:1: duplicate id"
    assert "did not load" in _why(_setting("name"), elsewhere, _revision("b", {"name": "B"}))


def test_a_project_the_plan_has_but_the_files_do_not_is_refused():
    assert _why(_setting("name"), _revision("a", {}), _revision("b", None)) == (
        "not in the project files at bbbbbbbbbbbb"
    )


@pytest.mark.parametrize(
    ("base", "head", "explained"),
    [
        ({"roles": {"R": {"description": "a"}}}, {"roles": {"R": {"description": "b"}}}, True),
        ({"roles": {}}, {"roles": {"R": None}}, True),  # declared since the base
        ({"roles": {"R": {}}}, {"roles": {"R": {}}, "prune": ["roles"]}, True),
        ({"roles": {"Old": {}}}, {"roles": {"R": {"renamedFrom": "Old"}}}, True),
        ({"roles": {"R": {"description": "a"}}}, {"roles": {"R": {"description": "a"}}}, False),
        ({"roles": {"R": {}}, "name": "x"}, {"roles": {"R": {}}, "name": "y"}, False),
    ],
)
def test_an_object_is_explained_by_its_declaration_or_its_kinds_prune(base, head, explained):
    why = _why(
        _object("role", "R", "update", "description"), _revision("a", base), _revision("b", head)
    )
    assert (why is None) == explained


def test_an_update_is_explained_field_by_field():
    """A reviewed change to one field of an object does not carry a hand edit of another."""
    base = _revision("a", {"roles": {"R": {"description": "a", "accessPolicy": {"rule": []}}}})
    head = _revision("b", {"roles": {"R": {"description": "b", "accessPolicy": {"rule": []}}}})
    both = _object("role", "R", "update", "description", "accessPolicy")
    assert _why(both, base, head) == "accessPolicy not changed in the files"
    assert _why(_object("role", "R", "update", "description"), base, head) is None


def test_a_rename_is_explained_by_its_renamed_from():
    base = _revision("a", {"roles": {"New": {"description": "d"}}})
    head = _revision("b", {"roles": {"New": {"description": "d", "renamedFrom": "Old"}}})
    assert _why(_object("role", "New", "rename", "name"), base, head) is None
    # The same rename once more: someone renamed it back by hand.
    assert _why(_object("role", "New", "rename", "name"), head, head) == (
        "name not changed in the files"
    )


def test_a_delete_is_explained_when_the_declaration_went_or_prune_came():
    delete = _object("role", "Gone", "delete")
    removed = _why(
        delete,
        _revision("a", {"roles": {"Gone": {}}, "prune": ["roles"]}),
        _revision("b", {"roles": {}, "prune": ["roles"]}),
    )
    assert removed is None
    hand_made = _why(
        delete,
        _revision("a", {"roles": {}, "prune": ["roles"]}),
        _revision("b", {"roles": {}, "prune": ["roles"]}),
    )
    assert hand_made == "not changed in the files"  # someone created it by hand


def test_a_create_of_an_object_deleted_by_hand_is_refused():
    same = {"roles": {"R": {"description": "a"}}}
    why = _why(_object("role", "R", "create", "name"), _revision("a", same), _revision("b", same))
    assert why == "not changed in the files"


TEMPLATED = "id: x\ndescription: ${DESCRIPTION:-none}\nroles:\n  R:\n    description: ${ROLE}\n"
LITERAL = "id: x\ndescription: $${NOT_A_VARIABLE}\n"


def test_templated_paths_find_references_with_or_without_a_default_and_skip_literals():
    assert templated_paths(TEMPLATED) == {("description",), ("roles", "R", "description")}
    assert templated_paths(LITERAL) == set()
    assert templated_paths("a: [x, '${Y}']\n") == {("a", 1)}
    assert templated_paths(":\n- [") == set()  # not YAML: nothing, never an exception


def test_a_value_written_with_a_variable_is_explained_by_a_workflow_change():
    base = _revision("a", {"description": "one", "roles": {"R": {"description": "r"}}})
    head = _revision("b", {"description": "one", "roles": {"R": {"description": "r"}}}, TEMPLATED)
    workflow = ".github/workflows/apply.yml"
    assert _why(_setting("description"), base, head, workflow) is None
    assert _why(_setting("description"), base, head, "README.md") == "not changed in the files"
    role = _object("role", "R", "update", "description")
    assert _why(role, base, head, workflow) is None
    # A field that is not written with a variable is not explained by a workflow change.
    both = _object("role", "R", "update", "description", "accessPolicy")
    assert _why(both, base, head, workflow) == "accessPolicy not changed in the files"


ZAMBDA = {"runtime": "nodejs22.x", "source": ".dist/c.zip", "sourceInputs": ["packages/c/src/**"]}


@pytest.mark.parametrize(
    ("changed", "explained"),
    [
        (["packages/c/src/index.ts"], True),
        (["packages/c/src/deep/er/util.ts"], True),
        (["packages/c/package.json"], False),
        (["packages/other/src/index.ts"], False),
        ([], False),
    ],
)
def test_a_functions_code_is_explained_by_a_change_to_its_source_inputs(changed, explained):
    files = {"zambdas": {"check-in": ZAMBDA}}
    code = _object("zambda", "check-in", "update", "code")
    assert (_why(code, _revision("a", files), _revision("b", files), *changed) is None) == explained
    # Source inputs explain the code only, never a configuration field changed by hand.
    both = _object("zambda", "check-in", "update", "code", "memorySize")
    assert _why(both, _revision("a", files), _revision("b", files), *changed) == (
        "memorySize not changed in the files"
        if explained
        else "code, memorySize not changed in the files"
    )


def test_a_functions_code_is_explained_by_a_new_source_path():
    base = _revision("a", {"zambdas": {"check-in": ZAMBDA}})
    head = _revision("b", {"zambdas": {"check-in": {**ZAMBDA, "source": ".dist/v2.zip"}}})
    assert _why(_object("zambda", "check-in", "update", "code"), base, head) is None


def test_globs_are_relative_to_the_root_and_stars_stay_in_their_folder():
    changes = Changes(("src/a/b.ts", "lib/x.js"))
    assert changes.any_matches(["src/**"]) and changes.any_matches(["src/*/b.ts"])
    assert changes.any_matches(["**/x.js"]) and changes.any_matches(["lib/?.js"])
    assert not changes.any_matches(["src/*.ts"]) and not changes.any_matches(["src/a"])
    assert not changes.any_matches("src/**") and not changes.any_matches(None)


def test_an_unknown_kind_is_refused_rather_than_guessed():
    why = _why(_object("widget", "W", "create"), _revision("a", {}), _revision("b", {}))
    assert why == "a kind the guard does not know (widget)"


def test_plan_entries_leave_out_values_compared_at_apply():
    project = ProjectPlan(
        file="projects/p.yaml",
        project_id=PID,
        status=CHANGED,
        name="P",
        changes=(Change("signupEnabled", False, True),),
        objects=(
            ObjectChange("secret", "STRIPE_KEY", None, "compare"),
            ObjectChange("role", "New", "r1", "rename", (Change("name", "Old", "New"),)),
            ObjectChange("role", "R", "r2", "update", (Change("description", "a", "b"),)),
        ),
    )
    entries = plan_entries(Plan(api_url="https://x/v1", projects=(project,)))
    assert [str(e) for e in entries] == [
        "P (projects/p.yaml): ~ signupEnabled: false -> true",
        "P (projects/p.yaml): ~ role New (renamed from Old)",
        "P (projects/p.yaml): ~ role R (description)",
    ]
