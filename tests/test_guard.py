"""`reconciler github guard`: a real git repository, a real plan against the emulator, and
a local fake of GitHub (`tests/fake_github.py`).

Each test builds the history a repository would have (commits, pull requests merged
as merges, squashes or rebases, direct pushes), records the apply.yml runs GitHub
would hold, changes the live Project by hand where the story needs it, plans with
`reconciler plan --out`, and runs the guard on that plan exactly as apply.yml does.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from e2e import A_ADMIN, ALPHA, BETA, DEV_TOKEN, hand_edit, run
from fake_github import BOT, TOKEN, FakeGitHub, fake_github, github_env

from reconciler.cli import cli

__all__ = ["fake_github"]  # the fixture

ALPHA_FILE = f"""\
id: {ALPHA}
name: Alpha Clinic
description: Alpha production
signupEnabled: false
"""
BETA_FILE = f"""\
id: {BETA}
name: Beta Sandbox
description: Beta sandbox
"""


class GitRepo:
    """A git repository in a folder, with `main` and pull requests merged into it, each
    registered with the fake GitHub the way GitHub would link it."""

    def __init__(self, root: Path, fake: FakeGitHub) -> None:
        self.root = root
        self.fake = fake
        self.git("init", "-q", "-b", "main")

    def git(self, *args: str) -> str:
        done = subprocess.run(
            ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com", *args],
            cwd=self.root,
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.strip()

    @property
    def head(self) -> str:
        return self.git("rev-parse", "HEAD")

    def write(self, files: dict[str, str | None]) -> None:
        for name, text in files.items():
            path = self.root / name
            if text is None:
                path.unlink()
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
        self.git("add", "-A")

    def commit(self, files: dict[str, str | None], message: str = "change") -> str:
        self.write(files)
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.head

    def push(self, files: dict[str, str | None]) -> str:
        """A commit pushed straight to main."""
        sha = self.commit(files, "pushed straight to main")
        self.fake.main = sha
        return sha

    def pull_request(
        self,
        *commits: dict[str, str | None],
        author: str = "alice",
        approver: str | None = "bob",
        how: str = "merge",
        lag: int = 0,
    ) -> tuple[int, str]:
        """A pull request with these commits, approved by `approver`, merged by `how`
        (merge, squash or rebase). Returns its number and the merge commit."""
        branch = f"change-{len(self.fake.pulls) + 1}"
        self.git("switch", "-q", "-c", branch, "main")
        shas = [self.commit(files, f"{branch} {i}") for i, files in enumerate(commits)]
        number = self.fake.add_pull(shas[-1], author=author)
        if approver:
            self.fake.approve(number, approver)
        self.git("switch", "-q", "main")
        rebased: list[str] = []
        if how == "merge":
            self.git("merge", "-q", "--no-ff", "-m", f"Merge pull request #{number}", branch)
        elif how == "squash":
            self.git("merge", "-q", "--squash", branch)
            self.git("commit", "-q", "-m", f"Squashed #{number}")
        else:  # rebase: each commit replayed onto main; the last is the merge commit
            for sha in shas:
                self.git("cherry-pick", "--allow-empty", "--keep-redundant-commits", sha)
                rebased.append(self.head)
        self.fake.merge(number, self.head, also=tuple(rebased[:-1]), lag=lag)
        return number, self.head


@pytest.fixture
def repo(tmp_path: Path, fake_github: FakeGitHub, monkeypatch: pytest.MonkeyPatch) -> GitRepo:
    """A repository whose main holds Alpha's file, applied (the base): in sync with live."""
    root = tmp_path / "settings"
    root.mkdir()
    monkeypatch.chdir(root)
    git_repo = GitRepo(root, fake_github)
    git_repo.commit({"projects/alpha.yaml": ALPHA_FILE, "README.md": "settings\n"}, "initial")
    fake_github.main = git_repo.head
    fake_github.record_apply(git_repo.head)
    return git_repo


def plan(emu, repo: GitRepo) -> Path:
    """`reconciler plan --out plan.json` at the repository's HEAD, as apply.yml plans."""
    out = repo.root.parent / "plan.json"
    result = run(["plan", "--out", str(out)], emu)
    assert result.exit_code == 0, result.output
    return out


def guard(
    repo: GitRepo,
    plan_file: Path,
    *extra: str,
    event: str = "push",
    inputs: dict[str, Any] | None = None,
    **env: str | None,
):
    """`reconciler github guard --plan-file plan.json` as apply.yml's plan job runs it.
    Returns (exit code, stdout lines, the job summary)."""
    summary = repo.root.parent / "summary.md"
    summary.write_text("", encoding="utf-8")
    event_file = repo.root.parent / "event.json"
    event_file.write_text(json.dumps({"inputs": inputs} if inputs else {}), encoding="utf-8")
    step = {
        "GITHUB_SHA": repo.head,
        "GITHUB_EVENT_NAME": event,
        "GITHUB_EVENT_PATH": str(event_file),
        "GITHUB_ACTOR": "alice",
        "GITHUB_STEP_SUMMARY": str(summary),
    }
    step_env = github_env(repo.fake, **{**step, **env})
    args = ["github", "guard", "--plan-file", str(plan_file), "--wait", "0", *extra]
    result = CliRunner().invoke(cli, args, env=step_env)
    assert TOKEN not in result.output
    return result.exit_code, result.output.splitlines(), summary.read_text(encoding="utf-8")


def short(sha: str) -> str:
    return sha[:12]


# An approved, merged change passes; the files alone decide ---------------------------


def test_an_approved_merged_file_change_passes_with_no_comment_at_all(emu, repo, fake_github):
    base = repo.head
    number, merged = repo.pull_request(
        {"projects/alpha.yaml": ALPHA_FILE.replace("signupEnabled: false", "signupEnabled: true")}
    )
    code, lines, summary = guard(repo, plan(emu, repo))
    assert code == 0, lines
    run = fake_github.runs[0]["id"]
    assert lines == [
        f"guard: base {short(base)}: the last apply (apply.yml run {run}).",
        f"guard: 1 commit since, each the merge of a pull request into main approved by "
        f"someone other than its author: #{number}.",
        f"guard: passed: the change of the plan is explained by the project files changed "
        f"since {short(base)}.",
    ]
    assert summary.startswith("### reconciler guard: passed\n")
    # Nothing about comments or deployments was ever asked.
    assert not fake_github.asked("/comments") and not fake_github.asked("/deployments")
    assert merged == repo.head


def test_a_drift_revert_is_refused_even_when_a_bot_comment_covers_it(emu, repo, fake_github):
    base = repo.head
    # Someone changes the live Project by hand...
    hand_edit(emu, ALPHA, {"description": "changed by hand"})
    # ...then an unrelated, approved pull request merges. A branch workflow has posted
    # a "plan comment" as github-actions[bot] claiming the revert was reviewed.
    number, _ = repo.pull_request({"README.md": "settings, documented\n"})
    fake_github.add_comment(
        number,
        '<!-- reconciler-plan -->\n<!-- reconciler-digest v1 sha256:00 covers "description" -->\n'
        "### reconciler plan: 0 to change",
        BOT,
    )
    code, lines, summary = guard(repo, plan(emu, repo))
    assert code == 1
    assert lines[-3:] == [
        f"guard: refused: the change of the plan is not explained by the project files "
        f"changed since {short(base)}: applying it would revert a change made by hand in "
        "Oystehr:",
        '  - Alpha Clinic (projects/alpha.yaml): ~ description: "changed by hand" -> '
        '"Alpha production" (not changed in the files)',
        "Nothing was applied. Open a pull request that touches these settings or objects (to "
        "keep a live value, write it into the file), and merge it once approved.",
    ]
    assert summary.startswith("### reconciler guard: refused, nothing will be applied\n")
    assert "changed by hand" in summary
    assert not fake_github.asked("/comments")


def test_a_drift_revert_beside_a_reviewed_change_is_refused_alone(emu, repo, fake_github):
    hand_edit(emu, ALPHA, {"description": "changed by hand"})
    repo.pull_request({"projects/alpha.yaml": ALPHA_FILE.replace("Alpha Clinic", "Alpha")})
    code, lines, _ = guard(repo, plan(emu, repo))
    assert code == 1
    refused = [line for line in lines if line.startswith("  - ")]
    assert refused == [
        '  - Alpha Clinic (projects/alpha.yaml): ~ description: "changed by hand" -> '
        '"Alpha production" (not changed in the files)'
    ]
    assert "guard: refused: 1 of the 2 changes of the plan" in lines[-3]


def test_the_pull_request_that_writes_the_live_value_into_the_file_passes(emu, repo):
    hand_edit(emu, ALPHA, {"description": "changed by hand"})
    repo.pull_request({"README.md": "unrelated\n"})
    assert guard(repo, plan(emu, repo))[0] == 1
    # Keep the hand edit: write it into the file. Now nothing is left to revert.
    repo.pull_request(
        {"projects/alpha.yaml": ALPHA_FILE.replace("Alpha production", "changed by hand")}
    )
    code, lines, _ = guard(repo, plan(emu, repo))
    assert (code, lines[-1]) == (0, "guard: the plan changes nothing; nothing to check.")


ADMIN_ROLE = """\
roles:
  Admin:
    description: Administrators
    accessPolicy: {rule: [{resource: "FHIR:*", action: "FHIR:Read", effect: Allow}]}
"""


def _edit_role(emu, body: dict[str, Any]) -> None:
    """Someone changes Alpha's Admin role outside reconciler."""
    headers = {"authorization": f"Bearer {DEV_TOKEN}", "x-oystehr-project-id": ALPHA}
    httpx.patch(f"{emu.api_url}/iam/role/{A_ADMIN}", headers=headers, json=body).raise_for_status()


def test_a_reviewed_field_does_not_carry_a_hand_edit_of_another(emu, repo, fake_github):
    repo.pull_request({"projects/alpha.yaml": ALPHA_FILE + ADMIN_ROLE})
    _edit_role(  # what that merge's apply wrote
        emu,
        {
            "description": "Administrators",
            "accessPolicy": {
                "rule": [{"resource": "FHIR:*", "action": "FHIR:Read", "effect": "Allow"}]
            },
        },
    )
    fake_github.record_apply(repo.head)
    # By hand: Admin may now do anything. Then a pull request renames its description.
    _edit_role(
        emu, {"accessPolicy": {"rule": [{"resource": "*", "action": "*", "effect": "Allow"}]}}
    )
    repo.pull_request(
        {"projects/alpha.yaml": ALPHA_FILE + ADMIN_ROLE.replace("Administrators", "Admins")}
    )
    code, lines, _ = guard(repo, plan(emu, repo))
    assert code == 1
    assert lines[-2] == (
        "  - Alpha Clinic (projects/alpha.yaml): ~ role Admin (description, accessPolicy) "
        "(accessPolicy not changed in the files)"
    )


def test_a_new_project_is_explained_whole(emu, repo):
    hand_edit(emu, BETA, {"description": "anything"})
    repo.pull_request({"projects/beta.yaml": BETA_FILE})
    code, lines, _ = guard(repo, plan(emu, repo))
    assert code == 0, lines
    assert lines[-1].startswith("guard: passed: the change of the plan is explained")


def test_a_moved_file_is_not_a_new_project(emu, repo):
    hand_edit(emu, ALPHA, {"description": "changed by hand"})
    repo.pull_request({"projects/alpha.yaml": None, "projects/clinics/alpha.yaml": ALPHA_FILE})
    code, lines, _ = guard(repo, plan(emu, repo))
    assert code == 1
    assert lines[-2].startswith("  - Alpha Clinic (projects/clinics/alpha.yaml): ~ description")


def test_squash_and_rebase_merges_pass(emu, repo, fake_github):
    first, _ = repo.pull_request(
        {"projects/alpha.yaml": ALPHA_FILE.replace("signupEnabled: false", "signupEnabled: true")},
        how="squash",
    )
    second, _ = repo.pull_request(
        {"README.md": "one\n"},
        {"projects/beta.yaml": BETA_FILE},
        {"README.md": "two\n"},
        how="rebase",
    )
    code, lines, _ = guard(repo, plan(emu, repo))
    assert code == 0, lines
    assert lines[1] == (
        "guard: 4 commits since, each the merge of a pull request into main approved by "
        f"someone other than its author: #{second}, #{first}."
    )


# Commits that were not reviewed --------------------------------------------------------


def test_an_unapproved_pull_request_is_refused_naming_its_commit(emu, repo, fake_github):
    number, merged = repo.pull_request(
        {"projects/alpha.yaml": ALPHA_FILE.replace("signupEnabled: false", "signupEnabled: true")},
        approver=None,
    )
    code, lines, _ = guard(repo, plan(emu, repo))
    assert code == 1
    assert lines[1:4] == [
        "guard: refused: the commit on main since the last apply is not the merge of an "
        "approved pull request:",
        f"  - commit {short(merged)} merges pull request #{number} by alice, which no one "
        f"else approved at its final commit {short(fake_github.pulls[number]['head']['sha'])}",
        "guard: the change of the plan is explained by the project files changed since "
        f"{short(fake_github.runs[0]['head_sha'])}.",
    ]
    assert lines[-1] == (
        "Nothing was applied. For a commit that was not reviewed, a person listed in "
        "RECONCILER_GUARD_OVERRIDERS can run apply.yml by hand with override after checking "
        "the plan."
    )


@pytest.mark.parametrize(
    "approval",
    [
        "by its author",
        "at an older commit",
        "then changes requested",
        "dismissed",
        "by a bot",
        "by an account outside the repository",
    ],
)
def test_approvals_that_do_not_count(emu, repo, fake_github, approval):
    signup = ALPHA_FILE.replace("signupEnabled: false", "signupEnabled: true")
    number, _ = repo.pull_request(
        {"projects/alpha.yaml": signup},
        {"projects/alpha.yaml": signup.replace("Alpha production", "Alpha")},
        approver=None,
    )
    head = fake_github.pulls[number]["head"]["sha"]
    if approval == "by its author":
        fake_github.approve(number, "alice")
    elif approval == "at an older commit":  # then the author pushed again
        fake_github.approve(number, "bob", commit=repo.git("rev-parse", f"{head}~1"))
    elif approval == "then changes requested":
        fake_github.approve(number, "bob")
        fake_github.approve(number, "bob", state="CHANGES_REQUESTED")
    elif approval == "dismissed":
        fake_github.approve(number, "bob", state="DISMISSED")
    elif approval == "by a bot":  # a branch workflow's GITHUB_TOKEN may approve
        fake_github.approve(number, "github-actions[bot]")
    else:  # on a public repository anyone may approve: the author's second account
        fake_github.approve(number, "alice-alt", association="NONE")
        fake_github.approve(number, "mallory", association="CONTRIBUTOR")
    code, lines, _ = guard(repo, plan(emu, repo))
    assert code == 1
    assert any(f"merges pull request #{number} by alice, which no one else" in x for x in lines)
    fake_github.approve(number, "carol")  # a second person, at the final commit
    assert guard(repo, plan(emu, repo))[0] == 0


def test_approvals_off_says_so_and_still_needs_pull_requests(emu, repo, fake_github):
    number, _ = repo.pull_request(
        {"projects/alpha.yaml": ALPHA_FILE.replace("signupEnabled: false", "signupEnabled: true")},
        approver=None,
    )
    code, lines, summary = guard(repo, plan(emu, repo), RECONCILER_GUARD_APPROVALS="0")
    assert code == 0, lines
    assert lines[1:3] == [
        "guard: approvals are not required (RECONCILER_GUARD_APPROVALS=0).",
        f"guard: 1 commit since, each the merge of a pull request into main: #{number}.",
    ]
    assert "approvals are not required" in summary
    assert not fake_github.asked("/reviews")
    repo.push({"projects/alpha.yaml": ALPHA_FILE.replace("Alpha production", "pushed")})
    code, lines, _ = guard(repo, plan(emu, repo), RECONCILER_GUARD_APPROVALS="0")
    assert code == 1
    assert lines[2:5] == [
        "guard: refused: 1 of the 2 commits on main since the last apply is not the merge of a "
        "pull request:",
        f"  - commit {short(repo.head)} is not the merge of a pull request into main (a direct "
        "push?)",
        "guard: the change of the plan is explained by the project files changed since "
        f"{short(fake_github.runs[0]['head_sha'])}.",
    ]


def test_a_direct_push_is_refused_after_waiting_for_the_link(emu, repo, fake_github):
    pushed = repo.push(
        {"projects/alpha.yaml": ALPHA_FILE.replace("signupEnabled: false", "signupEnabled: true")}
    )
    code, lines, _ = guard(repo, plan(emu, repo), "--wait", "0.3")
    assert code == 1
    assert lines[1] == (
        "guard: refused: the commit on main since the last apply is not the merge of an "
        "approved pull request:"
    )
    assert (
        f"  - commit {short(pushed)} is not the merge of a pull request into main (a direct "
        "push?)" in lines
    )
    # Asked again while GitHub might still be linking the commit to its pull request.
    assert len(fake_github.asked(f"/commits/{pushed}/pulls")) >= 2


@pytest.mark.parametrize(
    "then", ["a merge commit", "another pull request between", "the push is a merge"]
)
def test_a_direct_push_is_no_part_of_a_rebase_merge_whatever_github_lists(
    emu, repo, fake_github, then
):
    """A commit is taken as part of a rebase merge when GitHub lists a pull request for it
    whose merge commit comes later. A commit pushed straight to main may be listed for a
    pull request (it was on that pull request's branch first): it is part of that
    pull request's rebase merge only when the merge is one (no merge commit) and every
    commit between them is that pull request's too."""
    signup = {
        "projects/alpha.yaml": ALPHA_FILE.replace("signupEnabled: false", "signupEnabled: true")
    }
    if then == "the push is a merge":  # a side branch merged by hand and pushed
        repo.git("switch", "-q", "-c", "side", "main")
        repo.commit(signup)
        repo.git("switch", "-q", "main")
        repo.git("merge", "-q", "--no-ff", "-m", "merged by hand", "side")
        pushed = fake_github.main = repo.head
    else:
        pushed = repo.push(signup)
    if then == "another pull request between":
        repo.pull_request({"README.md": "unrelated\n"}, how="squash")
    number, _ = repo.pull_request(
        {"projects/beta.yaml": BETA_FILE}, how=("merge" if then == "a merge commit" else "squash")
    )
    fake_github.commit_pulls.setdefault(pushed, []).append(number)  # as GitHub may list it
    code, lines, _ = guard(repo, plan(emu, repo))
    assert code == 1, lines
    assert (
        f"  - commit {short(pushed)} is not the merge of a pull request into main (a direct "
        "push?)" in lines
    )


def test_the_guard_waits_for_github_to_link_the_merge_commit(emu, repo, fake_github):
    _, merged = repo.pull_request(
        {"projects/alpha.yaml": ALPHA_FILE.replace("signupEnabled: false", "signupEnabled: true")},
        lag=2,
    )
    code, lines, _ = guard(repo, plan(emu, repo), "--wait", "10")
    assert code == 0, lines
    assert len(fake_github.asked(f"/commits/{merged}/pulls")) == 3


# The base ---------------------------------------------------------------------------


def test_a_superseded_run_is_never_the_base(emu, repo, fake_github):
    base = repo.head
    first, one = repo.pull_request(
        {"projects/alpha.yaml": ALPHA_FILE.replace("signupEnabled: false", "signupEnabled: true")}
    )
    fake_github.record_apply(one, applied=False)  # approved late: main had moved on
    second, _ = repo.pull_request({"projects/beta.yaml": BETA_FILE})
    code, lines, _ = guard(repo, plan(emu, repo))
    assert code == 0, lines
    assert lines[0].startswith(f"guard: base {short(base)}: the last apply")
    assert lines[1].endswith(f": #{second}, #{first}.")


def test_a_base_off_mains_own_history_is_refused(emu, repo, fake_github):
    """A pull request's own commits are ancestors of main through its merge's second
    parent. A run of apply.yml "on main" for one of them (a tag named main and a workflow
    changed on the pull request's branch can make one) moved the base back to a commit
    no apply applied: a later hand edit of a field that commit predates read as
    explained, and its revert passed."""
    described = ALPHA_FILE.replace("Alpha production", "Alpha, described")
    number, merged = repo.pull_request({"README.md": "first\n"}, {"projects/alpha.yaml": described})
    fake_github.record_apply(merged)
    assert run(["apply", "--yes"], emu).exit_code == 0
    before_it = repo.git("rev-parse", f"{fake_github.pulls[number]['head']['sha']}~1")
    hand_edit(emu, ALPHA, {"description": "changed by hand"})
    repo.pull_request({"README.md": "unrelated\n"})
    fake_github.record_apply(before_it)  # "applied on main", newest
    code, lines, _ = guard(repo, plan(emu, repo))
    assert code == 1, lines
    assert lines[0] == (
        f"guard: refused: the last apply's commit {short(before_it)} (run "
        f"{fake_github.runs[0]['id']}) is not one main pointed at (it is no first-parent "
        f"ancestor of {short(repo.head)}): a run on main applies main's own commits, so that "
        "run is not what it seems."
    )


def test_a_base_that_is_not_an_ancestor_is_refused(emu, repo, fake_github):
    repo.git("commit", "-q", "--amend", "-m", "initial, rewritten")  # a force-push of main
    fake_github.main = repo.head
    hand_edit(emu, ALPHA, {"description": "changed by hand"})
    code, lines, summary = guard(repo, plan(emu, repo))
    old = fake_github.runs[0]
    assert code == 1
    assert lines == [
        f"guard: refused: history was rewritten since the last apply: its commit "
        f"{short(old['head_sha'])} (run {old['id']}) is not an ancestor of {short(repo.head)}.",
        "Nothing was applied; a person listed in RECONCILER_GUARD_OVERRIDERS can run apply.yml "
        "by hand with override after checking the plan.",
    ]
    assert "history was rewritten" in summary


def test_a_forged_deployment_and_forged_runs_are_not_a_base(emu, repo, fake_github):
    fake_github.runs.clear()
    head = repo.push({"projects/alpha.yaml": ALPHA_FILE.replace("Alpha production", "forged")})
    # What a branch workflow can create: a "successful production deployment" of HEAD,
    fake_github.deploy(head)
    # a run of its own apply.yml on its branch, and a pull_request run from a fork's "main".
    fake_github.record_apply(head, branch="attack")
    fake_github.record_apply(head, event="pull_request")
    fake_github.record_apply(head, head_repository="mallory/settings")
    fake_github.record_apply(head, step="Apply that plan (not really)")
    code, lines, _ = guard(repo, plan(emu, repo))
    assert code == 1
    assert lines[0] == (
        'guard: refused: no run of apply.yml on main has applied a plan yet (no "Apply that '
        'plan" step succeeded).'
    )
    assert not fake_github.asked("/deployments")


def test_no_base_passes_only_with_the_bootstrap_variable(emu, repo, fake_github):
    fake_github.runs.clear()
    hand_edit(emu, ALPHA, {"description": "first apply"})
    planned = plan(emu, repo)
    code, lines, _ = guard(repo, planned)
    assert code == 1
    assert lines == [
        'guard: refused: no run of apply.yml on main has applied a plan yet (no "Apply that '
        'plan" step succeeded).',
        "For the first apply of a new repository, set the repository variable "
        "RECONCILER_GUARD_BOOTSTRAP to true, and delete it once that apply has run.",
    ]
    code, lines, summary = guard(repo, planned, RECONCILER_GUARD_BOOTSTRAP="true")
    assert code == 0
    assert lines == [
        'guard: bootstrap: no run of apply.yml on main has applied a plan yet (no "Apply that '
        'plan" step succeeded), and RECONCILER_GUARD_BOOTSTRAP is true: this first apply goes '
        "ahead unchecked. Delete the variable once it has run."
    ]
    assert "RECONCILER\\_GUARD\\_BOOTSTRAP is true" in summary
    # Once an apply exists, the variable changes nothing (and says so).
    fake_github.record_apply(repo.head)
    code, lines, _ = guard(repo, planned, RECONCILER_GUARD_BOOTSTRAP="true")
    assert code == 1
    assert lines[0] == (
        "guard: RECONCILER_GUARD_BOOTSTRAP is true, but an earlier apply exists: it changes "
        "nothing now; delete the variable."
    )


@pytest.mark.parametrize(
    ("where", "status", "said"),
    [
        ("/actions/workflows/", 503, "503 Service Unavailable"),
        ("/actions/runs/", 403, "403 Resource not accessible by integration"),
        ("/commits/", 502, "502 Bad Gateway"),
        ("/reviews", 500, "500 Internal Server Error"),
    ],
)
def test_a_failed_lookup_stops_the_run_and_is_never_no_base(
    emu, repo, fake_github, where, status, said
):
    repo.pull_request({"projects/beta.yaml": BETA_FILE.replace("Beta sandbox", "new")})
    fake_github.fail_paths.append((where, status, {"message": said.split(" ", 1)[1]}))
    code, lines, summary = guard(repo, plan(emu, repo), RECONCILER_GUARD_BOOTSTRAP="true")
    assert code == 1
    assert len(lines) == 1 and lines[0].startswith("Error: guard: cannot ")
    assert said in lines[0]
    hint = " (the plan job needs actions: read, and apply.yml must exist)"
    assert (", so nothing is applied until it can" + (hint if status == 403 else "") + ": ") in (
        lines[0]
    )
    assert summary.startswith("### reconciler guard: refused, nothing will be applied")


def test_an_unreachable_github_stops_the_run(emu, repo, fake_github):
    repo.pull_request({"projects/beta.yaml": BETA_FILE.replace("Beta sandbox", "new")})
    planned = plan(emu, repo)
    code, lines, _ = guard(repo, planned, GITHUB_API_URL="http://127.0.0.1:9")
    assert code == 1 and lines[0].startswith("Error: guard: cannot find the last apply")


def test_a_shallow_checkout_is_told_to_fetch_the_history(
    emu, repo, fake_github, tmp_path, monkeypatch
):
    repo.pull_request({"projects/beta.yaml": BETA_FILE.replace("Beta sandbox", "new")})
    shallow = tmp_path / "shallow"
    subprocess.run(
        ["git", "clone", "-q", "--depth", "1", f"file://{repo.root}", str(shallow)], check=True
    )
    planned = plan(emu, repo)
    clone = GitRepo.__new__(GitRepo)
    clone.root, clone.fake = shallow, fake_github
    monkeypatch.chdir(shallow)
    code, lines, _ = guard(clone, planned)
    assert code == 1
    assert lines == [
        f"Error: guard: this checkout is shallow and lacks the last applied commit "
        f"{short(fake_github.runs[0]['head_sha'])}: check out with fetch-depth: 0"
    ]


# workflow_dispatch --------------------------------------------------------------------


def test_workflow_dispatch_is_guarded_unless_an_allowed_actor_overrides(emu, repo, fake_github):
    hand_edit(emu, ALPHA, {"description": "changed by hand"})
    planned = plan(emu, repo)
    by_hand, lines, _ = guard(repo, planned, event="workflow_dispatch")
    assert by_hand == 1 and lines[-2].endswith("(not changed in the files)")

    asked, lines, _ = guard(
        repo,
        planned,
        event="workflow_dispatch",
        inputs={"override": True},
        RECONCILER_GUARD_OVERRIDERS="bob, carol",
    )
    assert asked == 1
    assert lines[0] == (
        "guard: override asked by alice, not listed in RECONCILER_GUARD_OVERRIDERS: the guard runs."
    )

    fake_github.requests.clear()
    allowed, lines, summary = guard(
        repo,
        planned,
        event="workflow_dispatch",
        inputs={"override": True},
        RECONCILER_GUARD_OVERRIDERS="bob,Alice",
    )
    assert allowed == 0
    assert lines == [
        "guard: skipped: alice ran apply.yml by hand with override, and is listed in "
        "RECONCILER_GUARD_OVERRIDERS: the plan is applied unchecked."
    ]
    assert "alice ran apply.yml by hand with override" in summary
    assert fake_github.requests == []

    # A re-run by someone not listed is not an override, whoever started the run.
    rerun, lines, _ = guard(
        repo,
        planned,
        event="workflow_dispatch",
        inputs={"override": True},
        RECONCILER_GUARD_OVERRIDERS="alice",
        GITHUB_TRIGGERING_ACTOR="mallory",
    )
    assert rerun == 1
    assert lines[0].startswith("guard: override asked by mallory, not listed")
    # On a push the input does not exist.
    pushed, _, _ = guard(
        repo, planned, inputs={"override": True}, RECONCILER_GUARD_OVERRIDERS="alice"
    )
    assert pushed == 1


# Values from the workflows, and bad input -----------------------------------------------


def test_a_variable_value_is_explained_by_a_workflow_change(emu, repo, fake_github):
    repo.pull_request(
        {"projects/alpha.yaml": ALPHA_FILE.replace("Alpha production", "${DESCRIPTION}")},
        {".github/workflows/apply.yml": "env: {RECONCILER_VAR_DESCRIPTION: Alpha production}\n"},
    )
    fake_github.record_apply(repo.head)
    # The workflow's value changes; the project file does not.
    number, _ = repo.pull_request(
        {".github/workflows/apply.yml": "env: {RECONCILER_VAR_DESCRIPTION: Alpha, renamed}\n"}
    )
    env = {"RECONCILER_VAR_DESCRIPTION": "Alpha, renamed"}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        planned = plan(emu, repo)
        code, lines, _ = guard(repo, planned, **env)
        assert code == 0, lines
        # Without the workflow change, the same value is a revert of a hand edit.
        repo.git("reset", "-q", "--hard", "HEAD~1")
        repo.pull_request({"README.md": "unrelated\n"})
        code, lines, _ = guard(repo, plan(emu, repo), **env)
        assert code == 1
        assert lines[-2].endswith('-> "Alpha, renamed" (not changed in the files)')


def test_a_project_whose_files_fail_to_load_at_base_is_refused_whole(emu, repo, fake_github):
    broken = repo.commit({"projects/beta.yaml": BETA_FILE + "unknown: key\n"}, "broken")
    fake_github.record_apply(broken)
    repo.pull_request({"projects/beta.yaml": BETA_FILE.replace("Beta sandbox", "fixed")})
    code, lines, _ = guard(repo, plan(emu, repo))
    assert code == 1
    assert lines[-2] == (
        '  - Beta Sandbox (projects/beta.yaml): ~ description: "Beta sandbox" -> "fixed" '
        f"(its files did not load at {short(broken)}, so every change is refused: "
        "projects/beta.yaml:4:1: unknown key 'unknown')"
    )


def test_a_symbolic_link_at_base_is_refused(emu, repo, fake_github):
    (repo.root / "elsewhere").mkdir()
    (repo.root / "elsewhere" / "beta.yaml").write_text(BETA_FILE, encoding="utf-8")
    (repo.root / "projects" / "beta.yaml").symlink_to("../elsewhere/beta.yaml")
    linked = repo.commit({}, "a link")
    fake_github.record_apply(linked)
    repo.pull_request(
        {"projects/beta.yaml": None},
        {"projects/beta.yaml": BETA_FILE.replace("Beta sandbox", "a file now")},
    )
    code, lines, _ = guard(repo, plan(emu, repo))
    assert code == 1
    assert "refused: a symbolic link; a project file is a file" in lines[-2]


def test_an_empty_plan_never_stops_and_asks_nothing(emu, repo, fake_github):
    fake_github.runs.clear()
    repo.push({"README.md": "pushed\n"})
    code, lines, _ = guard(repo, plan(emu, repo))
    assert (code, lines) == (0, ["guard: the plan changes nothing; nothing to check."])
    assert fake_github.requests == []
    # Nothing to check needs nothing: no token, not even a git repository.
    planned = plan(emu, repo)
    outside = repo.root.parent / "elsewhere"
    outside.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(outside)
        code, lines, _ = guard(repo, planned, GITHUB_TOKEN=None)
    assert (code, lines) == (0, ["guard: the plan changes nothing; nothing to check."])


def test_a_checkout_that_is_not_the_runs_commit_is_refused(emu, repo, fake_github):
    hand_edit(emu, ALPHA, {"description": "changed by hand"})
    planned = plan(emu, repo)
    code, lines, _ = guard(repo, planned, GITHUB_SHA="ab" * 20)
    assert (code, lines) == (
        1,
        [
            f"Error: this checkout is at {short(repo.head)}, not at the run's commit "
            "abababababab: the guard checks what was checked out"
        ],
    )


def test_a_plan_not_made_at_the_checked_out_commit_is_refused(emu, repo, fake_github):
    # A plan from an earlier commit: the guard would explain it with files it was not made
    # from (apply --plan refuses it too, later; the guard says so first).
    hand_edit(emu, ALPHA, {"description": "changed by hand"})
    planned = plan(emu, repo)
    made = repo.head
    repo.pull_request({"README.md": "settings, again\n"})
    code, lines, _ = guard(repo, planned)
    assert (code, lines) == (
        1,
        [
            f"Error: {planned}: the plan was made at commit {short(made)}, and this checkout "
            f"is at {short(repo.head)}: the guard explains a plan made at the commit it "
            "checks; plan again here"
        ],
    )
    # Nor from files that differ from any commit (a plan that records a filesHash).
    (repo.root / "projects" / "alpha.yaml").write_text(ALPHA_FILE + "# edited\n")
    code, lines, _ = guard(repo, plan(emu, repo))
    assert code == 1 and lines[0].endswith(
        "the plan was made from files not committed unchanged at HEAD (it records a "
        f"filesHash), and this checkout is at {short(repo.head)}: the guard explains a plan "
        "made at the commit it checks; plan again here"
    ), lines


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        ("RECONCILER_GUARD_BOOTSTRAP", "yes", "RECONCILER_GUARD_BOOTSTRAP must be true or false"),
        ("RECONCILER_GUARD_APPROVALS", "off", "RECONCILER_GUARD_APPROVALS must be 0"),
        ("RECONCILER_GUARD_OVERRIDERS", "alice;bob", "is not a GitHub login"),
    ],
)
def test_a_bad_variable_is_one_line(emu, repo, fake_github, name, value, said):
    code, lines, _ = guard(repo, plan(emu, repo), **{name: value})
    assert code == 1 and len(lines) == 1 and said in lines[0]
    assert fake_github.requests == []


def test_a_fragment_change_explains_the_changes_it_makes(emu, repo, fake_github):
    """Environments (`include:`): a change to a shared fragment explains what it changes in
    every Project that includes it, and nothing else."""
    including = f"id: {BETA}\nname: Beta Sandbox\ninclude: [../base/clinic.yaml]\n"
    repo.pull_request(
        {
            "base/clinic.yaml": "description: Beta sandbox\nsignupEnabled: true\n",
            "projects/beta.yaml": including,
        }
    )
    fake_github.record_apply(repo.head)  # in sync: Beta's live values are the fragment's
    hand_edit(emu, BETA, {"signupEnabled": False})
    repo.pull_request({"base/clinic.yaml": "description: from the fragment\nsignupEnabled: true\n"})
    code, lines, _ = guard(repo, plan(emu, repo))
    assert code == 1
    refused = [line for line in lines if line.startswith("  - ")]
    assert refused == [
        "  - Beta Sandbox (projects/beta.yaml): ~ signupEnabled: false -> true (not changed in "
        "the files)"
    ]
    hand_edit(emu, BETA, {"signupEnabled": True})  # put back by hand: only the review is left
    code, lines, _ = guard(repo, plan(emu, repo))
    assert code == 0, lines
