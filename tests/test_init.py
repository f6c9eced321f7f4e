"""`reconciler init`: a settings repository that validates, with workflows GitHub accepts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from conftest import (
    CLINIC_CLIENT_ID,
    CLINIC_CLIENT_SECRET,
    CLINIC_ID,
    DEV_TOKEN,
    SANDBOX_CLIENT_ID,
    SANDBOX_CLIENT_SECRET,
    SANDBOX_ID,
)

from reconciler import __version__
from reconciler.cli import cli
from reconciler.init import CANONICAL_REPOSITORY, READ_ONLY_POLICY

TREE = [
    ".github/workflows/apply.yml",
    ".github/workflows/drift.yml",
    ".github/workflows/plan.yml",
    ".pre-commit-config.yaml",
    "projects/example.yaml",
    "schemas/fragment.schema.json",
    "schemas/project.schema.json",
]
NO_CREDENTIALS = {
    "OYSTEHR_ACCESS_TOKEN": None,
    "OYSTEHR_CLIENT_ID": None,
    "OYSTEHR_CLIENT_SECRET": None,
    "OYSTEHR_PROJECT_API_URL": None,
    "OYSTEHR_AUTH_URL": None,
}


# A commit to pin to: a checkout of reconciler is no release, so init needs one.
PIN = "0123456789abcdef0123456789abcdef01234567"


def _init(*args: str, **env: str | None):
    pin = [] if "--action" in args else ["--action", f"{CANONICAL_REPOSITORY}@{PIN}"]
    return CliRunner().invoke(cli, ["init", *args, *pin], env={**NO_CREDENTIALS, **env})


def _tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _validate(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", "validate"],
        cwd=root,
        capture_output=True,
        text=True,
    )


def _check_workflows(root: Path) -> subprocess.CompletedProcess[str]:
    workflows = sorted((root / ".github" / "workflows").glob("*.yml"))
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows"]
        + [str(p) for p in workflows],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _load(path: Path) -> dict:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    doc["on"] = doc.pop(True)
    return doc


def test_init_writes_a_repository_that_validates_with_workflows_github_accepts(tmp_path):
    result = _init(str(tmp_path))
    assert result.exit_code == 0, result.output
    assert _tree(tmp_path) == TREE
    assert result.output.startswith(
        "wrote   projects/example.yaml\n"
        "wrote   schemas/project.schema.json\n"
        "wrote   schemas/fragment.schema.json\n"
        "wrote   .github/workflows/plan.yml\n"
    )
    done = _validate(tmp_path)
    assert (done.returncode, done.stderr) == (0, "1 file valid.\n"), done.stdout
    checked = _check_workflows(tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    # Every remote action, ours included, pinned by commit with the version beside it.
    action = f"{CANONICAL_REPOSITORY}/.github/actions/reconciler@{PIN} # v{__version__}"
    for name in ("plan", "apply", "drift"):
        text = (tmp_path / ".github" / "workflows" / f"{name}.yml").read_text(encoding="utf-8")
        assert f"uses: {action}\n" in text
        for used in re.findall(r"uses: (.+)", text):
            assert used == action or re.fullmatch(r"actions/[\w-]+@[0-9a-f]{40} # v[\d.]+", used)
    pre_commit_text = (tmp_path / ".pre-commit-config.yaml").read_text()
    assert f"    rev: {PIN}  # frozen: v{__version__}\n" in pre_commit_text
    assert yaml.safe_load(pre_commit_text) == {
        "repos": [
            {
                "repo": f"https://github.com/{CANONICAL_REPOSITORY}",
                "rev": PIN,
                "hooks": [{"id": "reconciler-validate"}],
            }
        ]
    }


def test_the_credential_sets_come_from_the_files_auth_blocks(tmp_path):
    assert _init(str(tmp_path)).exit_code == 0
    plan = _load(tmp_path / ".github" / "workflows" / "plan.yml")
    step = next(s for s in plan["jobs"]["plan"]["steps"] if s.get("id") == "plan")
    assert step["env"] == {
        "EXAMPLE_CLIENT_ID": "${{ secrets.READ_EXAMPLE_CLIENT_ID }}",
        "EXAMPLE_CLIENT_SECRET": "${{ secrets.READ_EXAMPLE_CLIENT_SECRET }}",
    }
    apply = _load(tmp_path / ".github" / "workflows" / "apply.yml")
    assert apply["jobs"]["apply"]["environment"] == "production"
    applied = apply["jobs"]["apply"]["steps"][-1]
    assert applied["with"]["command"] == "apply --plan plan.json --yes"
    assert applied["env"] == {
        "EXAMPLE_CLIENT_ID": "${{ secrets.EXAMPLE_CLIENT_ID }}",
        "EXAMPLE_CLIENT_SECRET": "${{ secrets.EXAMPLE_CLIENT_SECRET }}",
        "RECONCILER_ALLOW_BUCKET_DELETES": "${{ inputs.allow-bucket-deletes }}",
    }
    env = {
        w: _load(tmp_path / ".github" / "workflows" / f"{w}.yml")["env"] for w in ("plan", "apply")
    }
    assert env["plan"] == env["apply"]


def test_init_ends_with_the_secrets_environment_and_policy_to_create(tmp_path):
    output = _init(str(tmp_path)).output
    assert "     gh secret set READ_EXAMPLE_CLIENT_ID\n" in output
    assert "     gh secret set EXAMPLE_CLIENT_SECRET --env production\n" in output
    assert "An environment named production" in output
    assert "Required reviewers" in output and "Selected branches and tags, add main" in output
    assert "Environments need a public repository or a paid plan." in output
    start = output.index('   {\n     "rule"')
    end = output.index("\n   }\n", start) + 5
    policy = json.loads(output[start:end])
    assert policy == READ_ONLY_POLICY
    actions = sorted(a for rule in policy["rule"] for a in rule["action"])
    assert actions == [
        "App:GetApplication",
        "App:GetM2MClient",
        "App:ListAllApplications",
        "App:ListAllM2MClients",
        "IAM:GetRole",
        "IAM:ListAllRoles",
        "Project:GetProjectInfo",
        "Z3:ListBuckets",
        "Zambda:GetFunction",
        "Zambda:ListAllFunctions",
        "Zambda:ListAllSecrets",
    ]
    assert "Zambda:GetSecret" not in actions  # plan credentials never read a secret's value


def test_init_never_overwrites(tmp_path):
    mine = {
        "projects/example.yaml": "# my own file\n",
        ".github/workflows/plan.yml": "name: my plan\n",
        ".pre-commit-config.yaml": "repos: []\n",
    }
    for relative, text in mine.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text, encoding="utf-8")

    result = _init(str(tmp_path))
    assert result.exit_code == 0, result.output
    for relative, text in mine.items():
        assert (tmp_path / relative).read_text(encoding="utf-8") == text
    # A project file there already: no example is written beside it.
    for relative in (".github/workflows/plan.yml", ".pre-commit-config.yaml"):
        assert f"skipped {relative} (exists; not overwritten)\n" in result.output
    assert "projects/example.yaml" not in result.output
    assert "wrote   .github/workflows/apply.yml\n" in result.output
    assert _tree(tmp_path) == TREE

    before = {p: (tmp_path / p).read_bytes() for p in TREE}
    again = _init(str(tmp_path))
    assert again.exit_code == 0
    assert "wrote" not in again.output and again.output.count("skipped ") == len(TREE) - 1
    assert {p: (tmp_path / p).read_bytes() for p in TREE} == before


def test_init_exports_each_project_with_its_own_credentials(tmp_path, emulator):
    api = ["--api-url", emulator.api_url, "--auth-url", emulator.auth_url]
    ids = ["--project-id", SANDBOX_ID, "--project-id", CLINIC_ID]
    result = _init(str(tmp_path), *ids, *api, OYSTEHR_ACCESS_TOKEN=DEV_TOKEN)
    assert result.exit_code == 0, result.output
    assert "wrote   projects/sandbox.yaml\nwrote   projects/clinic.yaml\n" in result.output
    assert not (tmp_path / "projects" / "example.yaml").exists()
    sandbox = (tmp_path / "projects" / "sandbox.yaml").read_text(encoding="utf-8")
    assert sandbox.startswith("# yaml-language-server: $schema=../schemas/project.schema.json\n")
    assert sandbox.endswith(
        "auth:\n  clientIdEnv: SANDBOX_CLIENT_ID\n  clientSecretEnv: SANDBOX_CLIENT_SECRET\n"
    )
    assert DEV_TOKEN not in result.output
    plan = _load(tmp_path / ".github" / "workflows" / "plan.yml")
    assert plan["env"]["OYSTEHR_PROJECT_API_URL"] == emulator.api_url
    step = next(s for s in plan["jobs"]["plan"]["steps"] if s.get("id") == "plan")
    assert list(step["env"]) == [
        "CLINIC_CLIENT_ID",
        "CLINIC_CLIENT_SECRET",
        "SANDBOX_CLIENT_ID",
        "SANDBOX_CLIENT_SECRET",
    ]
    assert _check_workflows(tmp_path).returncode == 0
    assert _validate(tmp_path).returncode == 0

    # The exports plan with no change, with the credentials the workflows would map.

    env = {
        "SANDBOX_CLIENT_ID": SANDBOX_CLIENT_ID,
        "SANDBOX_CLIENT_SECRET": SANDBOX_CLIENT_SECRET,
        "CLINIC_CLIENT_ID": CLINIC_CLIENT_ID,
        "CLINIC_CLIENT_SECRET": CLINIC_CLIENT_SECRET,
    }
    planned = subprocess.run(
        [sys.executable, "-m", "reconciler", "plan", *api],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**_clean_env(), **env},
    )
    # Clinic's two roles named Staff cannot be exported by name: they stay unmanaged.
    assert planned.returncode == 0, planned.stderr
    assert "Plan: 0 to change, 2 unchanged, 0 errors." in planned.stdout
    assert "not managed (left alone; prune deletes them): role Staff, role Staff" in planned.stdout


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("OYSTEHR_", "GITHUB_"))}


def test_init_without_credentials_for_an_export_is_one_line(tmp_path, emulator):
    result = _init(str(tmp_path), "--project-id", SANDBOX_ID, "--api-url", emulator.api_url)
    assert result.exit_code == 1
    assert result.output.startswith("Error: no credentials: set OYSTEHR_ACCESS_TOKEN")
    assert result.output.count("\n") == 1
    assert not (tmp_path / "projects").exists()


@pytest.mark.parametrize("bad", ["acme", "acme/reconciler", "acme/rec onciler@v1", "@v1"])
def test_a_bad_action_reference_is_one_line(tmp_path, bad):
    result = _init(str(tmp_path), "--action", bad)
    assert result.exit_code == 1
    assert result.output == (
        f"Error: --action {bad!r}: expected OWNER/REPO@SHA, like "
        "my-org/reconciler@<the 40-hex commit of a release>\n"
    )
    assert not tmp_path.joinpath("projects").exists()


def test_a_tag_is_accepted_with_a_warning_that_it_can_move(tmp_path):
    result = _init(str(tmp_path), "--action", "my-org/reconciler@v2.3.4")
    assert result.exit_code == 0
    assert result.stderr == (
        "Warning: --action my-org/reconciler@v2.3.4 is a tag or branch, which can be moved to "
        "other code that would then run with your write credentials; pin a commit: --action "
        "my-org/reconciler@<40-hex sha>\n"
    )
    text = (tmp_path / ".github" / "workflows" / "apply.yml").read_text(encoding="utf-8")
    assert text.count("uses: my-org/reconciler/.github/actions/reconciler@v2.3.4\n") == 5
    hook = yaml.safe_load((tmp_path / ".pre-commit-config.yaml").read_text())["repos"][0]
    assert (hook["repo"], hook["rev"]) == ("https://github.com/my-org/reconciler", "v2.3.4")


def test_a_commit_given_is_pinned_without_a_warning(tmp_path):
    result = _init(str(tmp_path), "--action", f"my-org/reconciler@{PIN}")
    assert result.exit_code == 0 and result.stderr == ""
    text = (tmp_path / ".github" / "workflows" / "apply.yml").read_text(encoding="utf-8")
    pinned = f"uses: my-org/reconciler/.github/actions/reconciler@{PIN} # v{__version__}\n"
    assert text.count(pinned) == 5


def test_without_a_release_init_asks_for_a_commit_and_writes_nothing(tmp_path, monkeypatch):
    from reconciler import release

    monkeypatch.setattr(release, "RELEASE_COMMIT", "")  # a checkout; release.yml fills it
    result = CliRunner().invoke(cli, ["init", str(tmp_path)], env=NO_CREDENTIALS)
    assert result.exit_code == 1
    assert result.output == (
        "Error: this reconciler is not a release, so it has no commit to pin the action to: "
        "give one with --action OWNER/REPO@SHA (the 40-hex commit of a release)\n"
    )
    assert _tree(tmp_path) == []


def test_a_release_pins_its_own_commit(tmp_path, monkeypatch):
    from reconciler import release

    monkeypatch.setattr(release, "RELEASE_COMMIT", "f" * 40)
    result = CliRunner().invoke(cli, ["init", str(tmp_path)], env=NO_CREDENTIALS)
    assert result.exit_code == 0, result.output
    text = (tmp_path / ".github" / "workflows" / "plan.yml").read_text(encoding="utf-8")
    assert f"uses: {CANONICAL_REPOSITORY}/.github/actions/reconciler@{'f' * 40} # v" in text
    assert f"rev: {'f' * 40}  # frozen: v{__version__}" in (
        tmp_path / ".pre-commit-config.yaml"
    ).read_text(encoding="utf-8")


def test_the_readme_shows_what_init_writes_and_cites_nothing_outside_the_repository():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Use it in your repository") : readme.index("## Benchmarks")]
    for path in TREE:
        assert path in section, path
    assert "reconciler init" in section and "gh secret set READ_" in section
    for rule in READ_ONLY_POLICY["rule"]:
        assert json.dumps(rule) in section
    assert "SPEC" not in readme and "../shared" not in readme


@pytest.mark.parametrize(
    ("name", "slug", "env"),
    [
        ("Patient Portal (staging)", "patient-portal-staging", "PATIENT_PORTAL_STAGING"),
        ("GitHub demo", "github-demo", "PROJECT_GITHUB_DEMO"),
        ("Actions", "actions", "PROJECT_ACTIONS"),
        ("Reconciler var", "reconciler-var", "PROJECT_RECONCILER_VAR"),
        ("2026 pilot", "project-fd9b1113", "PROJECT_FD9B1113"),
        ("", "project-fd9b1113", "PROJECT_FD9B1113"),
    ],
)
def test_slugs_and_credential_names(name, slug, env):
    from reconciler.init import slug_for, with_auth

    assert slug_for(name, SANDBOX_ID, set()) == slug
    text = with_auth(f"id: {SANDBOX_ID}\n", slug)
    assert yaml.safe_load(text)["auth"] == {
        "clientIdEnv": f"{env}_CLIENT_ID",
        "clientSecretEnv": f"{env}_CLIENT_SECRET",
    }


def test_two_projects_with_one_name_get_two_files():
    from reconciler.init import slug_for

    taken: set[str] = set()
    assert [slug_for("Clinic", pid, taken) for pid in ("a", "b", "c")] == [
        "clinic",
        "clinic-2",
        "clinic-3",
    ]


def _environment_urls(emulator) -> dict[str, str]:
    """What a shell holds after trying the emulator: its URLs in the environment."""
    return {"OYSTEHR_PROJECT_API_URL": emulator.api_url, "OYSTEHR_AUTH_URL": emulator.auth_url}


def test_urls_in_the_environment_read_the_projects_and_never_reach_ci(tmp_path, emulator):
    result = _init(
        str(tmp_path),
        "--project-id",
        SANDBOX_ID,
        **_environment_urls(emulator),
        OYSTEHR_CLIENT_ID=SANDBOX_CLIENT_ID,
        OYSTEHR_CLIENT_SECRET=SANDBOX_CLIENT_SECRET,
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "projects" / "sandbox.yaml").is_file()  # read through the emulator
    for name in ("plan", "apply", "drift"):
        env = _load(tmp_path / ".github" / "workflows" / f"{name}.yml")["env"]
        assert env["OYSTEHR_PROJECT_API_URL"] == "https://project-api.zapehr.com/v1"
        assert env["OYSTEHR_AUTH_URL"] == "https://auth.zapehr.com/oauth/token"
        assert "127.0.0.1" not in (tmp_path / ".github" / "workflows" / f"{name}.yml").read_text()
    assert (
        f"Note: OYSTEHR_PROJECT_API_URL={emulator.api_url} (from the environment) was used to "
        "read the Projects, not written into CI: the workflows use "
        "https://project-api.zapehr.com/v1 (pass --api-url to write another URL).\n"
        f"Note: OYSTEHR_AUTH_URL={emulator.auth_url} (from the environment) was used to read "
        "the Projects, not written into CI: the workflows use "
        "https://auth.zapehr.com/oauth/token (pass --auth-url to write another URL).\n"
    ) in result.output
    assert (
        "To plan from here, export SANDBOX_CLIENT_ID and SANDBOX_CLIENT_SECRET (an M2M client "
        f"of that Project: the file's auth block names them); then `cd {tmp_path} && "
        "reconciler plan` shows no change.\n"
    ) in result.output
    assert SANDBOX_CLIENT_SECRET not in result.output


def test_urls_in_the_environment_are_named_even_without_a_project_to_read(tmp_path):
    result = _init(str(tmp_path), OYSTEHR_PROJECT_API_URL="http://user:pw@127.0.0.1:8000/v1")
    assert result.exit_code == 0, result.output
    assert (
        "Note: OYSTEHR_PROJECT_API_URL=http://127.0.0.1:8000/v1 (from the environment) is not "
        "written into CI: the workflows use https://project-api.zapehr.com/v1 (pass --api-url "
        "to write another URL).\n"
    ) in result.output
    assert result.output.count("Note:") == 1  # the auth URL was the default
    assert "pw" not in result.output
    # The production URLs in the environment say nothing.
    quiet = _init(
        str(tmp_path / "again"),
        OYSTEHR_PROJECT_API_URL="https://project-api.zapehr.com/v1/",
        OYSTEHR_AUTH_URL="https://auth.zapehr.com/oauth/token",
    )
    assert "Note:" not in quiet.output


def test_url_flags_are_written_into_the_workflows(tmp_path, emulator):
    api = ["--api-url", emulator.api_url, "--auth-url", emulator.auth_url]
    result = _init(str(tmp_path), *api, OYSTEHR_PROJECT_API_URL="http://127.0.0.1:1/v1")
    assert result.exit_code == 0, result.output
    env = _load(tmp_path / ".github" / "workflows" / "apply.yml")["env"]
    assert (env["OYSTEHR_PROJECT_API_URL"], env["OYSTEHR_AUTH_URL"]) == (
        emulator.api_url,
        emulator.auth_url,
    )
    assert "Note:" not in result.output


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "ftp://example.com/v1",
            "Error: --api-url 'ftp://example.com/v1' must start with https:// (or http:// for "
            "loopback), like https://project-api.zapehr.com/v1\n",
        ),
        (
            'https://example.com/v1"${{ secrets.X }}',
            "Error: --api-url 'https://example.com/v1\"${{ secrets.X }}': only a plain URL can go "
            "into a workflow\n",
        ),
    ],
)
def test_a_url_flag_that_cannot_go_into_a_workflow_is_one_line(tmp_path, url, message):
    result = _init(str(tmp_path), "--api-url", url)
    assert (result.exit_code, result.output) == (1, message)
    assert not (tmp_path / "projects").exists()


def test_init_quiet_prints_only_the_files(tmp_path, emulator):
    result = _init(str(tmp_path), "-q", **_environment_urls(emulator))
    assert result.exit_code == 0
    assert result.output == "".join(f"wrote   {p}\n" for p in _written_order())


def _written_order() -> list[str]:
    return [
        "projects/example.yaml",
        "schemas/project.schema.json",
        "schemas/fragment.schema.json",
        ".github/workflows/plan.yml",
        ".github/workflows/apply.yml",
        ".github/workflows/drift.yml",
        ".pre-commit-config.yaml",
    ]


def test_init_verbose_logs_its_requests_without_credentials(tmp_path, emulator):
    result = _init(
        str(tmp_path),
        *("-v", "--no-color", "--project-id", SANDBOX_ID),
        **_environment_urls(emulator),
        OYSTEHR_ACCESS_TOKEN=DEV_TOKEN,
    )
    assert result.exit_code == 0, result.output
    assert "GET " in result.stderr and "/v1/project" in result.stderr
    assert DEV_TOKEN not in result.output + result.stderr


def test_init_says_when_the_credentials_to_plan_are_already_set(tmp_path, emulator):
    result = _init(
        str(tmp_path),
        "--project-id",
        SANDBOX_ID,
        "--project-id",
        CLINIC_ID,
        **_environment_urls(emulator),
        OYSTEHR_ACCESS_TOKEN=DEV_TOKEN,
        SANDBOX_CLIENT_ID=SANDBOX_CLIENT_ID,
        SANDBOX_CLIENT_SECRET=SANDBOX_CLIENT_SECRET,
    )
    assert (
        "To plan from here, export CLINIC_CLIENT_ID and CLINIC_CLIENT_SECRET (an M2M client of "
        "each Project: the files' auth blocks name them)"
    ) in result.output
    both = _init(
        str(tmp_path / "again"),
        "--project-id",
        SANDBOX_ID,
        *("--api-url", emulator.api_url, "--auth-url", emulator.auth_url),
        OYSTEHR_ACCESS_TOKEN=DEV_TOKEN,
        SANDBOX_CLIENT_ID=SANDBOX_CLIENT_ID,
        SANDBOX_CLIENT_SECRET=SANDBOX_CLIENT_SECRET,
    )
    assert (
        "SANDBOX_CLIENT_ID and SANDBOX_CLIENT_SECRET are set here: "
        f"`cd {tmp_path / 'again'} && reconciler plan --api-url {emulator.api_url} "
        f"--auth-url {emulator.auth_url}` shows no change.\n"
    ) in both.output
