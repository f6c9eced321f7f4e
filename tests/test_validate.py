"""`reconciler validate`: one located line per problem, the summary on stderr, exit 0/1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from reconciler.cli import cli

REPO = Path(__file__).resolve().parent.parent
BROKEN = "tests/fixtures/broken"
PROJECT_ID = "0b7a1f7e-5a52-4a5e-9b1c-2f0c8f1d4e01"

# Every file in tests/fixtures/broken and what validate says about it, alone.
EXPECTED = {
    "alias.yaml": [
        "2:1: aliases (*name) are not supported in project files: write it out",
    ],
    "api-write-name.yaml": [
        "2:1: defaultPatientRoleId is the API's write name: "
        "use defaultPatientRole: {id: ...} (or a role name)",
    ],
    "auth-incomplete.yaml": [
        "3:3: auth: clientIdEnv needs clientSecretEnv as well",
    ],
    "auth-secret-pasted.yaml": [
        "4:20: auth.clientSecretEnv must be the NAME of an environment variable "
        "(letters, digits and _, like SANDBOX_CLIENT_SECRET), not its value",
    ],
    "bad-fhir-version.yaml": [
        "2:14: fhirVersion: expected r4 or r5, got 'r6'",
    ],
    "bad-reference.yaml": [
        "2:14: description: invalid reference '${1A}': "
        "write ${NAME} or ${NAME:-default}, or $${ for a literal ${",
    ],
    "bad-role.yaml": [
        "2:64: unknown key 'label' in defaultPatientRole",
        "3:21: defaultSSOUserRole: give the role's id, its name, or both",
    ],
    "bad-uuid.yaml": [
        "1:5: id: 'fd9b1113-4bd2-4dad-8631' is not a valid UUID "
        "(expected lowercase 8-4-4-4-12 hex, like fd9b1113-4bd2-4dad-8631-a95ba035dfda)",
    ],
    "control-character.yaml": [
        "2:11: control character U+0007 is not allowed in a YAML file",
    ],
    "duplicate-key.yaml": [
        "3:1: duplicate key 'name': already set at line 2",
    ],
    "empty-name.yaml": [
        "2:7: name must not be empty or blank",
    ],
    "empty.yaml": [
        "1:1: empty file: a project file is a mapping of settings with at least an id",
    ],
    "invalid-utf8.yaml": [
        "2:10: invalid UTF-8: byte 0xe9 cannot be decoded (save the file as UTF-8)",
    ],
    "malformed.yaml": [
        "2:13: invalid YAML: mapping values are not allowed in this context (quote a value that "
        'holds ": ", like name: "Broken: colon")',
    ],
    "missing-id.yaml": [
        "1:1: missing required key 'id'",
    ],
    "not-a-mapping.yaml": [
        "1:1: the document is a list: a project file is a mapping of settings (key: value)",
    ],
    "read-only-key.yaml": [
        "2:1: sandbox is read-only: it is set when the Project is created "
        "and cannot be managed here",
    ],
    "several-documents.yaml": [
        "2:1: a second YAML document starts here: a project file holds exactly one",
    ],
    "substituted-stays-string.yaml": [
        "2:16: signupEnabled: expected a boolean, got string "
        "'${FIXTURE_UNSET:-true}' (a value from ${...} is always a string)",
    ],
    "tab.yaml": [
        "3:1: tab character: YAML indents with spaces, not tabs",
    ],
    "unknown-key.yaml": [
        "2:1: unknown key 'nmae' (did you mean 'name'?)",
    ],
    "unset-variable.yaml": [
        "2:7: name: RECONCILER_VAR_FIXTURE_UNSET is not set",
    ],
    "wrong-type.yaml": [
        "2:16: signupEnabled: expected a boolean, got string 'yes'",
    ],
}
DUPLICATE_IDS = [
    "duplicate-id-a.yaml:1:5: duplicate project id 0b7a1f7e-5a52-4a5e-9b1c-2f0c8f1d4e12: "
    f"also in {BROKEN}/duplicate-id-b.yaml:1",
    "duplicate-id-b.yaml:1:5: duplicate project id 0b7a1f7e-5a52-4a5e-9b1c-2f0c8f1d4e12: "
    f"also in {BROKEN}/duplicate-id-a.yaml:1",
]


def validate(*args: str):
    return CliRunner().invoke(cli, ["validate", *args])


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("RECONCILER_VAR_FIXTURE_UNSET", raising=False)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """Write one project file in a fresh folder and return its name there."""
    monkeypatch.chdir(tmp_path)

    def write(text: str, name: str = "p.yaml") -> str:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
        return name

    return write


def test_the_example_projects_are_valid(in_repo):
    result = validate()
    assert result.exit_code == 0
    assert result.stdout == ""
    assert result.stderr == "3 files and 1 fragment valid.\n"


def test_the_broken_folder_gives_one_located_line_per_problem(in_repo):
    result = validate(BROKEN)
    expected = [f"{BROKEN}/{name}:{line}" for name, lines in EXPECTED.items() for line in lines]
    expected += [f"{BROKEN}/{line}" for line in DUPLICATE_IDS]
    assert result.exit_code == 1
    assert result.stdout.splitlines() == sorted(expected, key=_location)
    assert result.stderr == f"{len(expected)} problems in 25 files (25 files checked).\n"


def test_every_broken_fixture_is_listed_here(in_repo):
    names = {path.name for path in (REPO / BROKEN).iterdir()}
    assert names == set(EXPECTED) | {"duplicate-id-a.yaml", "duplicate-id-b.yaml"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_broken_file_alone(in_repo, name):
    result = validate(f"{BROKEN}/{name}")
    assert result.exit_code == 1
    lines = [f"{BROKEN}/{name}:{line}" for line in EXPECTED[name]]
    if name == "missing-id.yaml":  # named alone, outside projects/: maybe a fragment
        lines = [
            f"{lines[0]} (a fragment? fragments are checked through the project files that "
            "include them: `reconciler validate`)"
        ]
    assert result.stdout.splitlines() == lines
    problems = len(EXPECTED[name])
    noun = "problem" if problems == 1 else "problems"
    assert result.stderr == f"{problems} {noun} in 1 file (1 file checked).\n"


def test_json_format(in_repo):
    result = validate(f"{BROKEN}/wrong-type.yaml", "--format", "json")
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {
        "problems": [
            {
                "file": f"{BROKEN}/wrong-type.yaml",
                "line": 2,
                "column": 16,
                "message": "signupEnabled: expected a boolean, got string 'yes'",
            }
        ]
    }


def test_json_format_when_valid(in_repo):
    result = validate("projects", "--format", "json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"problems": []}


def test_missing_path_is_one_error_line(in_repo):
    result = validate("projects", "no/such/place")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == "Error: no such file or directory: no/such/place\n"


def test_no_project_files_found(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not a project\n")
    result = validate("empty")
    assert result.exit_code == 1
    assert result.stderr == "Error: no project files found in: empty\n"


def test_yml_files_are_found_recursively(project):
    project(f"id: {PROJECT_ID}\nname: x\n", "team/a/deep.yml")
    project("id: nope\n", "team/b/other.yaml")
    result = validate("team")
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        "team/b/other.yaml:1:5: id: 'nope' is not a valid UUID "
        "(expected lowercase 8-4-4-4-12 hex, like fd9b1113-4bd2-4dad-8631-a95ba035dfda)"
    ]
    assert result.stderr == "1 problem in 1 file (2 files checked).\n"


def test_unreadable_file(project, monkeypatch):
    name = project(f"id: {PROJECT_ID}\n")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", name)

    # Running as root, chmod 000 does not stop a read: fail the open instead.
    monkeypatch.setattr("reconciler.includes.open", denied, raising=False)
    result = validate(name)
    assert result.exit_code == 1
    assert result.stdout == "p.yaml:1:1: cannot read file: permission denied\n"


def test_every_problem_in_a_file_is_reported(project):
    name = project("id: ABC\nname: ''\nsignupEnabled: 1\ncolour: red\nfhirVersion: r3\n")
    result = validate(name)
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        "p.yaml:1:5: id: 'ABC' is not a valid UUID "
        "(expected lowercase 8-4-4-4-12 hex, like fd9b1113-4bd2-4dad-8631-a95ba035dfda)",
        "p.yaml:2:7: name must not be empty or blank",
        "p.yaml:3:16: signupEnabled: expected a boolean, got integer 1",
        "p.yaml:4:1: unknown key 'colour'",
        "p.yaml:5:14: fhirVersion: expected r4 or r5, got 'r3'",
    ]


def test_an_environment_variable_fills_a_value(project, monkeypatch):
    monkeypatch.setenv("RECONCILER_VAR_PROJECT_NAME", "Portal")
    name = project(f"id: {PROJECT_ID}\nname: ${{PROJECT_NAME}}\n")
    result = validate(name)
    assert result.exit_code == 0, result.stdout
    assert result.stderr == "1 file valid.\n"


def test_unset_variable_names_the_variable_at_its_line(project, monkeypatch):
    monkeypatch.delenv("RECONCILER_VAR_PROJECT_NAME", raising=False)
    monkeypatch.setenv("PROJECT_NAME", "not read")
    name = project(f"id: {PROJECT_ID}\ndescription: >-\n  made by ${{PROJECT_NAME}}\n")
    result = validate(name)
    assert result.exit_code == 1
    assert result.stdout == (
        "p.yaml:2:14: description: RECONCILER_VAR_PROJECT_NAME is not set "
        "(PROJECT_NAME is set but is not read)\n"
    )


def test_unterminated_reference(project):
    result = validate(project(f"id: {PROJECT_ID}\nname: x${{FOO\n"))
    assert result.exit_code == 1
    assert result.stdout == (
        "p.yaml:2:7: name: invalid reference '${FOO': "
        "write ${NAME} or ${NAME:-default}, or $${ for a literal ${\n"
    )


def _location(line: str) -> tuple[str, int, int, str]:
    file, row, column, message = line.split(":", 3)
    return file, int(row), int(column), message
