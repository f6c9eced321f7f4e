"""The loader: locations, YAML rules, ${VAR} substitution, finding files, duplicate ids."""

from __future__ import annotations

import os

import pytest
import yaml

from reconciler import yamlread
from reconciler.errors import ConfigError
from reconciler.files import Problem, ProjectFile, load_projects, parse_project, substitute

ID_A = "0b7a1f7e-5a52-4a5e-9b1c-2f0c8f1d4e01"
ID_B = "0b7a1f7e-5a52-4a5e-9b1c-2f0c8f1d4e02"
ROLE_ID = "31fcd69e-1b6b-41f1-a7b5-a1a20d976a89"


def parse(text: str, env: dict[str, str] | None = None) -> tuple[ProjectFile | None, list[str]]:
    project, problems = parse_project(text.encode(), "p.yaml", env or {})
    return project, [f"{p.line}:{p.column}: {p.message}" for p in problems]


def write(root, name: str, text: str) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


# --- the data and where it stands ----------------------------------------------------


def test_locations_of_every_key_and_value():
    text = (
        "# yaml-language-server: $schema=../schemas/project.schema.json\n"
        f"id: {ID_A}\n"
        "defaultPatientRole:\n"
        f"  id: {ROLE_ID}\n"
        "  name: Patient\n"
        "auth: {accessTokenEnv: TOKEN}\n"
    )
    project, problems = parse(text)
    assert problems == []
    assert project.data == {
        "id": ID_A,
        "defaultPatientRole": {"id": ROLE_ID, "name": "Patient"},
        "auth": {"accessTokenEnv": "TOKEN"},
    }
    assert project.location() == (2, 1)
    assert project.location("id") == (2, 5)
    assert project.location("defaultPatientRole") == (4, 3)
    assert project.location("defaultPatientRole", "id") == (4, 7)
    assert project.key_location("defaultPatientRole", "name") == (5, 3)
    assert project.location("auth", "accessTokenEnv") == (6, 24)
    # Unknown paths fall back to the nearest known enclosing value.
    assert project.location("defaultPatientRole", "nothing") == (4, 3)
    assert project.location("nothing") == (2, 1)
    assert project.problem("unknown role", "defaultPatientRole", "name") == Problem(
        "p.yaml", 5, 9, "unknown role"
    )


def test_project_file_properties():
    project = ProjectFile("projects/team/sandbox.yml", {"id": ID_A}, {})
    assert (project.id, project.stem, project.auth) == (ID_A, "sandbox", None)
    assert ProjectFile("a.yaml", {"id": ID_A, "auth": {"x": 1}}).auth == {"x": 1}


def test_problem_text_and_dict():
    problem = Problem("p.yaml", 3, 7, "name must not be empty or blank")
    assert str(problem) == "p.yaml:3:7: name must not be empty or blank"
    assert problem.to_dict() == {
        "file": "p.yaml",
        "line": 3,
        "column": 7,
        "message": "name must not be empty or blank",
    }


def test_columns_count_characters_not_bytes():
    _, problems = parse(f"id: {ID_A}\ndescription: 'Zürich'\nnmae: x\nname: é: x\n")
    assert problems == [
        "4:8: invalid YAML: mapping values are not allowed in this context (quote a value that "
        'holds ": ", like name: "é: x")'
    ]


def test_a_byte_order_mark_is_ignored():
    project, problems = parse_project(f"\ufeffid: {ID_A}\n".encode(), "p.yaml", {})
    assert problems == []
    assert project.location("id") == (1, 5)


# --- YAML rules ----------------------------------------------------------------------


def test_scalars_follow_yaml_1_2_core():
    text = (
        f"id: {ID_A}\nname: NO\ndescription: 2024-01-01\n"
        "x: [yes, on, true, False, ~, null, '', 0o17, 0x1f, -3, 1.5, .inf, -.Inf, 1e3]\n"
    )
    project, _ = parse(text)
    assert project.data["name"] == "NO"
    assert project.data["description"] == "2024-01-01"
    values = project.data["x"]
    assert values[:11] == ["yes", "on", True, False, None, None, "", 15, 31, -3, 1.5]
    assert values[11:] == [float("inf"), float("-inf"), 1000.0]


def test_duplicate_keys_name_both_lines_even_nested():
    text = f"id: {ID_A}\nauth:\n  accessTokenEnv: A\n  accessTokenEnv: B\nid: {ID_B}\n"
    project, problems = parse(text)
    assert problems == [
        "4:3: duplicate key 'accessTokenEnv' in auth: already set at line 3",
        "5:1: duplicate key 'id': already set at line 1",
    ]
    assert project.data["id"] == ID_A  # the first one stands, unlike PyYAML


def test_keys_must_be_strings():
    _, problems = parse(f"id: {ID_A}\n1: one\ntrue: yes\n")
    assert problems == [
        "2:1: a key must be a string, got integer 1 (quote it)",
        "3:1: a key must be a string, got boolean true (quote it)",
    ]


def test_unsupported_tags_are_refused():
    _, problems = parse(f"id: {ID_A}\nname: !!binary aGVsbG8=\ndescription: !custom x\n")
    assert problems == [
        "2:7: unsupported YAML tag !!binary",
        "3:14: unsupported YAML tag !custom",
    ]


def test_explicit_str_tag_keeps_a_string():
    project, problems = parse(f"id: {ID_A}\nname: !!str 123\n")
    assert problems == []
    assert project.data["name"] == "123"


def test_a_self_referencing_alias_does_not_loop():
    _, problems = parse("a: &x [*x]\n")
    assert problems[0] == "1:4: aliases (*name) are not supported in project files: write it out"


def test_malformed_yaml_says_where_it_started():
    _, problems = parse(f"id: {ID_A}\nname: 'unterminated\n")
    assert problems == [
        "3:1: invalid YAML: found unexpected end of stream "
        "(while scanning a quoted scalar that started at line 2, column 7)"
    ]


def test_a_tab_after_a_key_is_a_tab_problem():
    _, problems = parse(f"id: {ID_A}\n\tname: x\n")
    assert problems == ["2:1: tab character: YAML indents with spaces, not tabs"]


def test_every_control_character_is_reported():
    _, problems = parse(f"id: {ID_A}\nname: a\x00b\x1b\n")
    assert problems == [
        "2:8: control character U+0000 is not allowed in a YAML file",
        "2:10: control character U+001B is not allowed in a YAML file",
    ]


def test_a_scalar_document_is_not_a_mapping():
    _, problems = parse("just a string\n")
    assert problems == [
        "1:1: the document is a single value: a project file is a mapping of settings (key: value)"
    ]


def test_a_comment_only_file_is_empty():
    assert parse("# nothing here\n\n")[1] == [
        "1:1: empty file: a project file is a mapping of settings with at least an id"
    ]


def test_the_pure_python_loader_reads_the_same(monkeypatch):
    class PurePython(
        yaml.reader.Reader,
        yaml.scanner.Scanner,
        yaml.parser.Parser,
        yaml.composer.Composer,
        yamlread._CoreResolver,
    ):
        def __init__(self, stream):
            yaml.reader.Reader.__init__(self, stream)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)
            yaml.composer.Composer.__init__(self)
            yamlread._CoreResolver.__init__(self)

    text = f"id: {ID_A}\nname: NO\ndefaultPatientRole: {{name: Patient}}\nsignupEnabled: true\n"
    expected = parse(text)[0]
    monkeypatch.setattr(yamlread, "_Loader", PurePython)
    project = parse(text)[0]
    assert project.data == expected.data
    assert project.locations == expected.locations


# --- ${VAR} ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "env", "expected"),
    [
        ("plain", {}, "plain"),
        ("${A}", {"A": "x"}, "x"),
        ("pre-${A}-post", {"A": "x"}, "pre-x-post"),
        ("${A}${B}", {"A": "1", "B": "2"}, "12"),
        ("${A:-fallback}", {}, "fallback"),
        ("${A:-fallback}", {"A": ""}, "fallback"),
        ("${A:-}", {}, ""),
        ("${A:-fallback}", {"A": "set"}, "set"),
        ("${A}", {"A": ""}, ""),
        ("$${A}", {"A": "x"}, "${A}"),
        ("cost: $5 and $$", {}, "cost: $5 and $$"),
        ("${A}", {"A": "${B}"}, "${B}"),  # a value from the environment is not re-read
        ("${a}", {"a": "lower"}, "lower"),  # case is kept: RECONCILER_VAR_a
    ],
)
def test_substitution(value, env, expected):
    # ${A} reads RECONCILER_VAR_A, never A (SPEC section 2).
    prefixed = {f"RECONCILER_VAR_{name}": v for name, v in env.items()}
    assert substitute(value, prefixed) == (expected, [])


def test_substitution_never_reads_the_variable_itself():
    assert substitute("${A}", {"A": "x"}) == (
        "${A}",
        ["RECONCILER_VAR_A is not set (A is set but is not read)"],
    )
    assert substitute("${A:-default}", {"A": "x"}) == ("default", [])


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("${MISSING}", "RECONCILER_VAR_MISSING is not set"),
        ("${1A}", "invalid reference '${1A}'"),
        ("${FOO", "invalid reference '${FOO'"),
        ("${}", "invalid reference '${}'"),
        ("${A:-${B}}", "invalid reference '${A:-${B}'"),
        ("${A-default}", "invalid reference '${A-default}'"),
    ],
)
def test_substitution_problems(value, problem):
    _, problems = substitute(value, {})
    assert problems[0].startswith(problem)


def test_substitution_happens_in_strings_only_never_keys():
    text = f"id: {ID_A}\nname: ${{N}}\n'${{K}}': 1\nsignupEnabled: ${{T:-true}}\n"
    project, problems = parse(text, {"RECONCILER_VAR_N": "Portal", "RECONCILER_VAR_K": "name"})
    assert project.data["name"] == "Portal"
    assert "${K}" in project.data
    assert project.data["signupEnabled"] == "true"
    assert problems == [
        "3:1: unknown key '${K}'",
        "4:16: signupEnabled: expected a boolean, got string '${T:-true}' "
        "(a value from ${...} is always a string)",
    ]


def test_messages_quote_the_file_never_the_environment():
    # A variable may hold a secret: a message shows the reference, not its value.
    env = {"RECONCILER_VAR_FLAG": "s3cret"}
    _, problems = parse(f"id: {ID_A}\nname: x-${{FLAG}}\nsignupEnabled: ${{FLAG}}\n", env)
    assert problems == [
        "3:16: signupEnabled: expected a boolean, got string '${FLAG}' "
        "(a value from ${...} is always a string)",
    ]


def test_the_id_is_never_substituted():
    # The id says which Project a file is: it is what the file says, never a variable.
    _, problems = parse("id: ${ID}\n", {"RECONCILER_VAR_ID": ID_A})
    assert problems == [
        "1:5: id: '${ID}' is not a valid UUID "
        "(expected lowercase 8-4-4-4-12 hex, like fd9b1113-4bd2-4dad-8631-a95ba035dfda)"
    ]


def test_an_unset_variable_is_not_reported_twice():
    # The schema would also reject "${R}" as a role name's id: one problem is enough.
    _, problems = parse(f"id: {ID_A}\ndefaultPatientRole: {{id: '${{R}}'}}\n")
    assert problems == ["2:26: defaultPatientRole.id: RECONCILER_VAR_R is not set"]


def test_load_projects_reads_the_environment_by_default(tmp_path, monkeypatch):
    write(tmp_path, "p.yaml", f"id: {ID_A}\nname: ${{NAME}}\n")
    monkeypatch.setenv("RECONCILER_VAR_NAME", "from the environment")
    assert [p.data["name"] for p in load_projects([str(tmp_path)]).projects] == [
        "from the environment"
    ]
    env = {"RECONCILER_VAR_NAME": "given"}
    assert [p.data["name"] for p in load_projects([str(tmp_path)], env=env).projects] == ["given"]


# --- finding files, duplicate ids ------------------------------------------------------


def test_files_are_found_recursively_sorted_and_read_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "projects/b.yaml", f"id: {ID_B}\n")
    write(tmp_path, "projects/a/deep.yml", f"id: {ID_A}\n")
    write(tmp_path, "projects/notes.md", "not a project\n")
    write(tmp_path, "projects/.hidden/skip.yaml", "broken: [\n")
    result = load_projects(["projects", "projects/b.yaml", "./projects/a"])
    assert [p.path for p in result.projects] == ["projects/a/deep.yml", "projects/b.yaml"]
    assert result.files_read == 2
    assert result.problems == []


def test_paths_outside_the_current_folder_are_shown_as_given(tmp_path):
    write(tmp_path, "x.yaml", "id: 1\n")
    result = load_projects([str(tmp_path / "x.yaml")])
    assert result.problems[0].file == str(tmp_path / "x.yaml")


def test_a_file_named_directly_is_read_whatever_its_suffix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "project.txt", f"id: {ID_A}\n")
    assert [p.path for p in load_projects(["project.txt"]).projects] == ["project.txt"]


def test_missing_path_raises(tmp_path):
    with pytest.raises(ConfigError, match="^no such file or directory: .*nowhere$"):
        load_projects([str(tmp_path / "nowhere")])


def test_no_files_raises(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(ConfigError, match="^no project files found in: a, b$"):
        load_projects(["a", "b"])


def test_a_dangling_link_is_an_unreadable_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.symlink(tmp_path / "gone.yaml", tmp_path / "link.yaml")
    result = load_projects(["."])
    assert [str(p) for p in result.problems] == [
        "link.yaml:1:1: cannot read file: no such file or directory"
    ]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_a_file_without_read_permission(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "p.yaml", f"id: {ID_A}\n")
    (tmp_path / "p.yaml").chmod(0)
    assert [str(p) for p in load_projects(["."]).problems] == [
        "p.yaml:1:1: cannot read file: permission denied"
    ]


def test_duplicate_ids_name_every_other_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "a.yaml", f"id: {ID_A}\n")
    write(tmp_path, "b.yaml", f"# copy of a\nid: {ID_A}\n")
    write(tmp_path, "c.yaml", f"name: x\nid: {ID_A}\n")
    write(tmp_path, "d.yaml", f"id: {ID_B}\n")
    result = load_projects(["."])
    assert [str(p) for p in result.problems] == [
        f"a.yaml:1:5: duplicate project id {ID_A}: also in b.yaml:2, c.yaml:2",
        f"b.yaml:2:5: duplicate project id {ID_A}: also in a.yaml:1, c.yaml:2",
        f"c.yaml:2:5: duplicate project id {ID_A}: also in a.yaml:1, b.yaml:2",
    ]
    assert [p.path for p in result.projects] == ["d.yaml"]


def test_problems_are_sorted_and_invalid_files_left_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "b.yaml", "nmae: x\nid: bad\n")
    write(tmp_path, "a.yaml", f"id: {ID_A}\nsignupEnabled: 'no'\n")
    write(tmp_path, "c.yaml", f"id: {ID_B}\n")
    result = load_projects(["."])
    assert [(p.file, p.line) for p in result.problems] == [
        ("a.yaml", 2),
        ("b.yaml", 1),
        ("b.yaml", 2),
    ]
    assert [p.path for p in result.projects] == ["c.yaml"]
    assert result.files_read == 3
