"""Fragments (SPEC section 12): where an include may resolve, how fragments merge, and
every problem located where its text is, naming the file that includes it."""

from __future__ import annotations

import os
import subprocess

import pytest
from click.testing import CliRunner
from e2e import write

from reconciler.cli import cli
from reconciler.files import load_projects

ID_A = "0b7a1f7e-5a52-4a5e-9b1c-2f0c8f1d4e01"
ID_B = "0b7a1f7e-5a52-4a5e-9b1c-2f0c8f1d4e02"
POLICY = '{rule: [{resource: "FHIR:Patient", action: FHIR:Read, effect: Allow}]}'


def validate(*args: str):
    return CliRunner().invoke(cli, ["validate", *args])


def project(repo, body: str, name: str = "a", project_id: str = ID_A) -> None:
    write(repo, f"projects/{name}.yaml", f"id: {project_id}\n{body}")


def only(repo):
    result = load_projects(["projects"], env={})
    assert [str(p) for p in result.problems] == []
    [loaded] = result.projects
    return loaded


# --- merge rules ----------------------------------------------------------------------


def test_the_includer_wins_at_every_level(repo):
    write(repo, "base/common.yaml", "name: common\ndescription: common\nsignupEnabled: true\n")
    write(repo, "base/clinic.yaml", "include: [common.yaml]\nname: clinic\ndescription: clinic\n")
    project(repo, "include: [../base/clinic.yaml]\nname: mine\n")
    loaded = only(repo)
    assert {key: loaded.data[key] for key in ("name", "description", "signupEnabled")} == {
        "name": "mine",
        "description": "clinic",
        "signupEnabled": True,
    }
    assert [loaded.source(key) for key in ("name", "description", "signupEnabled")] == [
        "projects/a.yaml:3",
        "base/clinic.yaml:3",
        "base/common.yaml:3",
    ]
    assert loaded.fragments == ("base/clinic.yaml", "base/common.yaml")


def test_objects_merge_field_by_field_a_field_replaced_whole(repo):
    write(
        repo,
        "base/clinic.yaml",
        "applications:\n  Portal:\n    allowedCallbackUrls: [https://a, https://b]\n"
        "    mfaEnabled: true\n    description: shared\n",
    )
    project(
        repo,
        "include: [../base/clinic.yaml]\napplications:\n  Portal:\n"
        "    allowedCallbackUrls: [https://c]\n    mfaEnabled: false\n",
    )
    loaded = only(repo)
    assert loaded.data["applications"] == {
        "Portal": {
            "allowedCallbackUrls": ["https://c"],
            "mfaEnabled": False,
            "description": "shared",
        }
    }
    assert loaded.source("applications", "Portal") == "projects/a.yaml:4"
    assert loaded.source("applications", "Portal", "description") == "base/clinic.yaml:5"
    assert loaded.source("applications", "Portal", "mfaEnabled") == "projects/a.yaml:6"


def test_an_object_named_with_nothing_keeps_the_included_fields(repo):
    write(repo, "base/clinic.yaml", f"roles:\n  Patient:\n    accessPolicy: {POLICY}\n")
    project(repo, "include: [../base/clinic.yaml]\nroles:\n  Patient:\n  Staff: {}\n")
    assert list(only(repo).data["roles"]) == ["Patient", "Staff"]
    assert only(repo).data["roles"]["Patient"]["accessPolicy"]["rule"][0]["effect"] == "Allow"


def test_siblings_merge_different_objects_of_one_kind_and_prune_lists_unite(repo):
    write(repo, "base/roles.yaml", "roles:\n  Patient: {}\nprune: [roles]\n")
    write(
        repo,
        "base/apps.yaml",
        "roles:\n  Staff: {}\napplications: {}\nprune: [applications, roles]\n",
    )
    project(repo, "include: [../base/roles.yaml, ../base/apps.yaml]\nprune: [roles]\n")
    loaded = only(repo)
    assert loaded.data["roles"] == {"Patient": {}, "Staff": {}}
    assert loaded.data["prune"] == ["roles", "applications"]
    assert loaded.source("prune", 1) == "base/apps.yaml:4"


def test_a_diamond_is_read_once_and_is_no_conflict(repo):
    write(repo, "base/shared.yaml", "signupEnabled: true\nroles:\n  Patient: {}\n")
    write(repo, "base/left.yaml", "include: [shared.yaml]\nname: left\n")
    write(repo, "base/right.yaml", "include: [shared.yaml]\ndescription: right\n")
    project(repo, "include: [../base/left.yaml, ../base/right.yaml]\n")
    loaded = only(repo)
    assert loaded.data["roles"] == {"Patient": {}} and loaded.data["signupEnabled"] is True
    assert loaded.fragments == ("base/left.yaml", "base/shared.yaml", "base/right.yaml")


def test_siblings_declaring_one_setting_or_object_is_an_error_naming_both(repo):
    write(repo, "base/one.yaml", "# one\nname: one\nroles:\n  Patient: {}\n")
    write(repo, "base/two.yaml", "roles:\n  Patient:\n    description: two\nname: two\n")
    project(repo, "include: [../base/one.yaml, ../base/two.yaml]\n")
    expected = (
        "base/two.yaml:2:3: roles.Patient: an object declared by two files projects/a.yaml "
        "includes, base/one.yaml:4 and base/two.yaml:2; declare it in one of them (included "
        "from projects/a.yaml:2)\n"
        "base/two.yaml:4:1: name: a setting declared by two files projects/a.yaml includes, "
        "base/one.yaml:2 and base/two.yaml:4; declare it in one of them (included from "
        "projects/a.yaml:2)\n"
    )
    result = validate()
    assert (result.exit_code, result.stdout) == (1, expected)
    # Even when the including file sets it too: which of the two it overrides is unclear.
    project(repo, "include: [../base/one.yaml, ../base/two.yaml]\nname: mine\nroles:\n  Patient:\n")
    assert validate().stdout == expected


# --- where an include may resolve -------------------------------------------------------


def test_a_cycle_is_an_error_naming_it(repo):
    write(repo, "base/a.yaml", "include: [b.yaml]\n")
    write(repo, "base/b.yaml", "include: [./a.yaml]\n")
    project(repo, "include: [../base/a.yaml]\n")
    assert validate().stdout == (
        "base/b.yaml:1:11: include './a.yaml': a cycle: base/a.yaml includes base/b.yaml "
        "includes base/a.yaml (included from base/a.yaml:1, from projects/a.yaml:2)\n"
    )


def test_paths_leaving_the_repository_are_refused(repo, tmp_path_factory):
    outside = tmp_path_factory.mktemp("elsewhere") / "x.yaml"
    outside.write_text("name: outside\n")
    relative = os.path.relpath(outside, repo / "projects")
    project(repo, f"include: [{relative}, /etc/x.yaml, ../base/x.txt]\n")
    result = validate()
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        f"projects/a.yaml:2:11: include '{relative}': it resolves outside the repository "
        f"({repo}); --root chooses another",
        f"projects/a.yaml:2:{13 + len(relative)}: include '/etc/x.yaml': write a path relative "
        "to this file",
        f"projects/a.yaml:2:{26 + len(relative)}: include '../base/x.txt': a fragment is a "
        ".yaml or .yml file",
    ]
    # --root moves the boundary.
    assert validate("--root", str(outside.parent.parent)).stdout.splitlines()[0] == (
        f"projects/a.yaml:2:{13 + len(relative)}: include '/etc/x.yaml': write a path relative "
        "to this file"
    )


def test_a_symlink_leaving_the_repository_is_refused_unread(repo, tmp_path_factory):
    secret = tmp_path_factory.mktemp("outside") / "secret.yaml"
    secret.write_text("name: hunter2-do-not-show\n")
    (repo / "base").mkdir()
    os.symlink(secret, repo / "base" / "shared.yaml")
    project(repo, "include: [../base/shared.yaml]\n")
    result = validate()
    assert result.stdout == (
        "projects/a.yaml:2:11: include '../base/shared.yaml': a symlink leaving the "
        "repository: refused, unread\n"
    )
    assert "hunter2" not in result.output


def test_a_symlink_inside_the_repository_is_followed(repo):
    write(repo, "shared/real.yaml", "name: shared\n")
    (repo / "base").mkdir()
    os.symlink(repo / "shared" / "real.yaml", repo / "base" / "clinic.yaml")
    project(repo, "include: [../base/clinic.yaml]\n")
    assert only(repo).data["name"] == "shared"


def test_a_project_is_never_a_fragment(repo):
    project(repo, "name: b\n", name="b", project_id=ID_B)
    project(repo, "include: [b.yaml]\n")
    assert validate().stdout == (
        "projects/a.yaml:2:11: include 'b.yaml': files under projects/ are Projects, never "
        "fragments (move it, e.g. to base/)\n"
    )


def test_a_fragment_named_directly_is_told_how_fragments_are_checked(repo):
    write(repo, "base/common.yaml", "signupEnabled: true\n")
    project(repo, "include: [../base/common.yaml]\n")
    hint = (
        "missing required key 'id' (a fragment? fragments are checked through the project "
        "files that include them: `reconciler validate`)"
    )
    assert validate("base/common.yaml").stdout == f"base/common.yaml:1:1: {hint}\n"
    assert validate("./base/common.yaml", "projects").stdout == f"base/common.yaml:1:1: {hint}\n"
    # A file under projects/ is a project file that lacks its id: no such hint.
    write(repo, "projects/b.yaml", "name: b\n")
    assert validate().stdout == "projects/b.yaml:1:1: missing required key 'id'\n"


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        (
            "id",
            ID_B,
            "a fragment is shared by the Projects that include it; id belongs in each project file",
        ),
        (
            "auth",
            "{accessTokenEnv: TOKEN}",
            "credentials are per Project; write auth in each project file",
        ),
        (
            "vars",
            "{X: y}",
            "vars are per Project; set them in each project file that includes this",
        ),
    ],
)
def test_a_fragment_may_not_hold_id_auth_or_vars(repo, key, value, why):
    write(repo, "base/clinic.yaml", f"name: clinic\n{key}: {value}\n")
    project(repo, "include: [../base/clinic.yaml]\n")
    assert validate().stdout == (
        f"base/clinic.yaml:2:1: {key} is not allowed in a fragment: {why} (included from "
        "projects/a.yaml:2)\n"
    )


def test_includes_nest_at_most_8_deep(repo):
    for level in range(1, 10):
        write(repo, f"base/f{level}.yaml", f"include: [f{level + 1}.yaml]\n" if level < 9 else "")
    write(repo, "base/f9.yaml", "name: too deep\n")
    project(repo, "include: [../base/f1.yaml]\n")
    chain = ", ".join(
        [f"from base/f{level}.yaml:1" for level in range(7, 0, -1)] + ["from projects/a.yaml:2"]
    )
    assert validate().stdout == (
        "base/f8.yaml:1:11: include 'f9.yaml': includes nest more than 8 deep (included from "
        f"{chain.removeprefix('from ')})\n"
    )


def test_at_most_64_fragments_per_project(repo):
    names = [f"../base/f{index}.yaml" for index in range(65)]
    for index in range(65):
        write(repo, f"base/f{index}.yaml", f"roles:\n  R{index}: {{}}\n")
    project(repo, f"include: [{', '.join(names)}]\n")
    result = validate()
    assert result.stdout == (
        f"projects/a.yaml:2:{11 + sum(len(n) + 2 for n in names[:64])}: include "
        "'../base/f64.yaml': a Project may include at most 64 fragments\n"
    )


def test_a_missing_fragment_and_one_listed_twice(repo):
    write(repo, "base/a.yaml", "name: a\n")
    project(repo, "include: [../base/a.yaml, ../base/./a.yaml, ../base/none.yaml]\n")
    assert validate().stdout == (
        "base/none.yaml:1:1: cannot read file: no such file or directory (included from "
        "projects/a.yaml:2)\n"
        "projects/a.yaml:2:27: include '../base/./a.yaml': listed twice\n"
    )


def test_the_root_is_gits_top_level(tmp_path, monkeypatch):
    # projects/ deep inside a git repository: a fragment beside it is inside the root.
    monkeypatch.chdir(tmp_path)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    write(tmp_path, "shared/clinic.yaml", "name: shared\n")
    write(tmp_path, "envs/projects/a.yaml", f"id: {ID_A}\ninclude: [../../shared/clinic.yaml]\n")
    result = load_projects(["envs/projects"], env={})
    assert result.problems == [] and result.root == str(tmp_path)


def test_a_git_revision_written_to_a_folder_loads_with_root(tmp_path, repo):
    # How a caller loads the files of another revision: write them out, pass the root.
    revision = tmp_path / "revision"
    write(revision, "base/clinic.yaml", "name: at that revision\n")
    write(revision, "projects/a.yaml", f"id: {ID_A}\ninclude: [../base/clinic.yaml]\n")
    result = load_projects(
        [str(revision / "projects")], env={}, root=str(revision), relative_to=str(revision)
    )
    [loaded] = result.projects
    assert (loaded.path, loaded.data["name"]) == ("projects/a.yaml", "at that revision")
    assert loaded.source("name") == "base/clinic.yaml:1"


# --- problems in fragments --------------------------------------------------------------


def test_a_problem_in_a_fragment_names_every_project_that_includes_it(repo):
    write(repo, "base/clinic.yaml", "signupEnabled: true\nnmae: typo\n")
    project(repo, "include: [../base/clinic.yaml]\n", name="a", project_id=ID_A)
    project(repo, "# b\ninclude: [../base/clinic.yaml]\n", name="b", project_id=ID_B)
    result = validate()
    assert result.exit_code == 1
    assert result.stdout == (
        "base/clinic.yaml:2:1: unknown key 'nmae' (did you mean 'name'?) (included from "
        "projects/a.yaml:2; projects/b.yaml:3)\n"
    )
    assert result.stderr == "1 problem in 1 file (2 files and 1 fragment checked).\n"


def test_a_fragment_is_substituted_once_per_project(repo):
    write(repo, "base/clinic.yaml", 'name: "${WHO} at ${PROJECT_ID}"\ndescription: ${ONLY_A}\n')
    project(repo, "include: [../base/clinic.yaml]\nvars: {WHO: a, ONLY_A: yes}\n")
    project(repo, "include: [../base/clinic.yaml]\nvars: {WHO: b}\n", name="b", project_id=ID_B)
    result = load_projects(["projects"], env={})
    assert [str(p) for p in result.problems] == [
        "base/clinic.yaml:2:14: description: RECONCILER_VAR_ONLY_A is not set (included from "
        "projects/b.yaml:2)"
    ]
    [loaded] = result.projects
    assert loaded.data["name"] == f"a at {ID_A}"


# --- vars ------------------------------------------------------------------------------


def test_vars_then_project_id_then_the_environment(repo):
    project(repo, 'vars: {A: from vars}\nname: "${A} ${PROJECT_ID} ${B}"\n')
    result = load_projects(["projects"], env={"RECONCILER_VAR_A": "no", "RECONCILER_VAR_B": "env"})
    assert result.projects[0].data["name"] == f"from vars {ID_A} env"


def test_project_id_cannot_be_redefined_and_vars_are_strings(repo):
    project(repo, "vars:\n  PROJECT_ID: x\n  N: 3\n  1x: y\nname: ${PROJECT_ID}\n")
    assert validate().stdout == (
        "projects/a.yaml:3:3: vars.PROJECT_ID: PROJECT_ID is built in (this file's id) and "
        "cannot be redefined\n"
        "projects/a.yaml:4:6: vars.N: expected a string (vars are strings; quote it), got "
        "integer 3\n"
        "projects/a.yaml:5:3: vars: '1x' is not a variable name (letters, digits and _, not "
        "starting with a digit)\n"
    )


def test_an_unused_var_is_a_warning(repo):
    project(repo, "vars: {USED: x, SPARE: y}\nname: ${USED}\n")
    result = validate()
    assert result.exit_code == 0
    assert result.stdout == ""
    assert result.stderr == (
        "projects/a.yaml:2:17: warning: vars.SPARE is not used: no ${SPARE} in this file or "
        "the fragments it includes\n1 file valid.\n"
    )


def test_no_unused_var_warning_when_a_fragment_did_not_read(repo):
    write(repo, "base/b.yaml", "description: ${USED}\n  name: x\n")
    project(repo, "include: [../base/b.yaml]\nvars: {USED: x}\n")
    result = validate()
    assert result.exit_code == 1
    assert result.stdout.startswith("base/b.yaml:2:7: invalid YAML: ")
    assert "warning" not in result.output


def test_no_substitution_in_include_id_vars_or_renamed_from(repo):
    write(repo, "base/${X}.yaml", "name: odd\n")
    project(
        repo,
        "include: ['../base/${X}.yaml']\nvars: {A: '${B}', X: x}\ndescription: ${A}\n"
        "roles:\n  New:\n    renamedFrom: ${X}\n",
    )
    loaded = only(repo)
    assert loaded.data["description"] == "${B}"  # a var's value is not read again
    assert loaded.data["roles"]["New"]["renamedFrom"] == "${X}"
    assert loaded.data["name"] == "odd"


def test_object_names_take_variables_when_the_kind_says_so(repo):
    # The mechanism buckets use: a kind declares substitute_names; duplicates are found
    # after substitution. Shown here with the builder and a bucket-like key.
    from yaml import compose

    from reconciler.substitution import Rules, Variables
    from reconciler.yamlread import Builder, _Loader

    node = compose("notes:\n  ${PROJECT_ID}-notes: {}\n  p1-notes: {}\n", Loader=_Loader)
    builder = Builder("p.yaml", Variables({}, {}, "p1"), Rules(frozenset(), frozenset({"notes"})))
    assert builder.build(node, ()) == {"notes": {"p1-notes": {}}}
    assert [str(p) for p in builder.problems] == [
        "p.yaml:3:3: duplicate key 'p1-notes' in notes: already set at line 2"
    ]
    plain = Builder("p.yaml", Variables({}, {}, "p1"), Rules())
    assert plain.build(node, ()) == {"notes": {"${PROJECT_ID}-notes": {}, "p1-notes": {}}}


# --- validate and the fragment folders --------------------------------------------------


def test_validate_warns_about_a_fragment_no_project_includes(repo):
    write(repo, "base/clinic.yaml", "name: used\n")
    write(repo, "base/old/forgotten.yaml", "name: nobody\n")
    project(repo, "include: [../base/clinic.yaml]\n")
    result = validate()
    assert result.exit_code == 0
    assert result.stderr == (
        "base/old/forgotten.yaml:1:1: warning: no project file checked here includes this "
        "fragment\n1 file and 1 fragment valid.\n"
    )


def test_where_substitution_applies():
    from reconciler.files import RULES

    assert RULES.in_value(("secrets", "STRIPE", "valueFrom", "env"))  # an env name: yes
    assert RULES.in_value(("applications", "Portal", "allowedCallbackUrls", 0))
    assert not RULES.in_value(("roles", "New", "renamedFrom"))
    assert not any(RULES.in_value((key,)) for key in ("include", "id", "vars"))
    assert not RULES.in_keys(("roles",))  # object names are identity: never substituted
