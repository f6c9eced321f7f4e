"""The merge guard: what `apply.yml` applies is what people reviewed and merged.

It decides from git history and the Actions record, never from comments (any
branch workflow posts as `github-actions[bot]`, and any writer can edit a bot
comment) nor from deployments (any branch workflow with `deployments: write` can
create a "successful production deployment"):

1. **Base**: the `head_sha` of the newest run of `apply.yml` on `main` whose step
   "Apply that plan" concluded `success` (a superseded run skips that step). It must
   be an ancestor of HEAD. No such run stops the run unless the repository variable
   `RECONCILER_GUARD_BOOTSTRAP` is `true`; a failed lookup always stops it.
2. **Commits**: every commit of `git rev-list --first-parent base..HEAD` is the merge
   commit of a pull request into `main` (a merge, a squash, or a rebase merge),
   approved by someone other than its author at its final head commit, unless
   `RECONCILER_GUARD_APPROVALS=0`.
3. **Entries**: every change of the plan is explained by the project files: its
   Project's effective value for that setting, or that object's declaration (its
   fields, `renamedFrom`, the kind's `prune`), differs between base and HEAD, or the
   Project is new since base. A value written with `${NAME}` is also explained when a
   workflow changed (that is where `RECONCILER_VAR_` values live); a function's `code`
   when a file its `sourceInputs` globs match changed. Anything else would revert a
   change made by hand, so the run stops and lists it.
4. `workflow_dispatch` runs the guard too; its `override` input skips it only for an
   actor listed in `RECONCILER_GUARD_OVERRIDERS`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reconciler.errors import ApiError, ConfigError, ReconcilerError
from reconciler.escape import plural
from reconciler.github.api import GitHubApi, segment
from reconciler.github.explain import Changes, Entry, explain, plan_entries
from reconciler.github.history import GitError, Repository
from reconciler.github.revision import load_revision
from reconciler.plan import Plan

APPLY_WORKFLOW = "apply.yml"
APPLY_STEP = "Apply that plan"
BRANCH = "main"
# How long `commits/{sha}/pulls` may lag behind a push before it lists the pull request.
PULLS_WAIT_SECONDS = 30.0
# Runs of apply.yml looked at, newest first, for the last one that applied.
MAX_RUNS = 300
BOOTSTRAP, APPROVALS, OVERRIDERS = (
    "RECONCILER_GUARD_BOOTSTRAP",
    "RECONCILER_GUARD_APPROVALS",
    "RECONCILER_GUARD_OVERRIDERS",
)
# Runs of apply.yml that may have applied: never a pull request's (a fork's branch may
# be called main too).
APPLY_EVENTS = ("push", "workflow_dispatch")

# Whose review counts (the review's author_association): the repository's people.
TRUSTED_ASSOCIATIONS = ("OWNER", "MEMBER", "COLLABORATOR")

_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_LOGIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\[bot\])?")


# `git rev-list --first-parent --parents base..HEAD`: (commit, its parents), newest first.
History = Sequence[tuple[str, tuple[str, ...]]]


class GuardLookupError(ReconcilerError):
    """GitHub could not be asked, or answered something unusable: never "no base"."""


# Settings ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GuardSettings:
    """The repository variables that reach the guard as environment variables."""

    bootstrap: bool = False
    approvals: bool = True
    overriders: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> GuardSettings:
        bootstrap = (env.get(BOOTSTRAP) or "").strip().lower()
        if bootstrap not in ("", "true", "false"):
            raise ConfigError(f"{BOOTSTRAP} must be true or false (it is {bootstrap!r})")
        approvals = (env.get(APPROVALS) or "").strip()
        if approvals not in ("", "0", "1"):
            raise ConfigError(
                f"{APPROVALS} must be 0 (approvals not required) or 1 (it is {approvals!r})"
            )
        overriders = tuple(
            login.strip() for login in (env.get(OVERRIDERS) or "").split(",") if login.strip()
        )
        for login in overriders:
            if not _LOGIN.fullmatch(login):
                raise ConfigError(f"{OVERRIDERS}: {login!r} is not a GitHub login")
        return cls(bootstrap == "true", approvals != "0", overriders)

    def may_override(self, actor: str) -> bool:
        return any(actor.lower() == login.lower() for login in self.overriders)


# 1. The base: the last apply, from the Actions record ---------------------------------


@dataclass(frozen=True)
class Base:
    """The commit the last successful apply applied, and the run that did it."""

    sha: str
    run_id: int
    run_url: str


def find_base(
    api: GitHubApi,
    repo: str,
    *,
    workflow: str = APPLY_WORKFLOW,
    branch: str = BRANCH,
    step: str = APPLY_STEP,
    limit: int = MAX_RUNS,
) -> Base | None:
    """The newest run of `workflow` on `branch` whose step `step` concluded success, or
    None when none of the newest `limit` runs has one. GitHub's errors propagate."""
    runs = api.paginate(
        f"/repos/{repo}/actions/workflows/{segment(workflow)}/runs",
        params={"branch": branch, "per_page": 100},
        key="workflow_runs",
    )
    for count, run in enumerate(runs):
        if count >= limit:
            break
        if not _applied_from(run, repo, branch):
            continue
        jobs = api.paginate(
            f"/repos/{repo}/actions/runs/{run['id']}/jobs",
            params={"filter": "all", "per_page": 100},
            key="jobs",
        )
        if any(_step_succeeded(job, step) for job in jobs):
            return Base(run["head_sha"], run["id"], str(run.get("html_url") or ""))
    return None


def _applied_from(run: Any, repo: str, branch: str) -> bool:
    """A run that may have applied: of `branch` of this repository, pushed or dispatched."""
    if not isinstance(run, dict) or not isinstance(run.get("id"), int):
        raise GuardLookupError("GitHub API: a workflow run without an id")
    if not (isinstance(run.get("head_sha"), str) and _SHA.fullmatch(run["head_sha"])):
        raise GuardLookupError(f"GitHub API: workflow run {run['id']} has no commit sha")
    head_repository = run.get("head_repository")
    from_here = (
        not isinstance(head_repository, dict)
        or str(head_repository.get("full_name", "")).lower() == repo.lower()
    )
    return run.get("head_branch") == branch and run.get("event") in APPLY_EVENTS and from_here


def _step_succeeded(job: Any, step: str) -> bool:
    steps = job.get("steps") if isinstance(job, dict) else None
    return any(
        isinstance(s, dict) and s.get("name") == step and s.get("conclusion") == "success"
        for s in steps or ()
    )


# 2. Every commit since: the merge of an approved pull request --------------------------


@dataclass(frozen=True)
class Pull:
    """A merged pull request, as `commits/{sha}/pulls` describes it."""

    number: int
    author: str
    head_sha: str
    merge_commit_sha: str

    @classmethod
    def of(cls, item: Any, repo: str, branch: str) -> Pull | None:
        """The pull request, when it was merged into `branch` of `repo`; else None."""
        if not isinstance(item, dict) or not item.get("merged_at"):
            return None
        base, head, user = (
            item.get(k) if isinstance(item.get(k), dict) else {} for k in ("base", "head", "user")
        )
        base_repo = base.get("repo") if isinstance(base.get("repo"), dict) else {}
        if base.get("ref") != branch or (
            base_repo and str(base_repo.get("full_name", "")).lower() != repo.lower()
        ):
            return None
        number, login = item.get("number"), user.get("login")
        head_sha, merged = head.get("sha"), item.get("merge_commit_sha")
        if not (isinstance(number, int) and isinstance(login, str)):
            return None
        if not (isinstance(head_sha, str) and isinstance(merged, str)):
            return None
        return cls(number, login, head_sha, merged)


@dataclass(frozen=True)
class CommitCheck:
    """One first-parent commit since the base, and what the guard found for it."""

    sha: str
    pull: Pull | None
    approvers: tuple[str, ...] = ()
    problem: str | None = None


def check_commits(
    api: GitHubApi,
    repo: str,
    shas: Sequence[str],
    *,
    branch: str = BRANCH,
    approvals: bool = True,
    wait: float = PULLS_WAIT_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
    merges: Collection[str] = (),
) -> list[CommitCheck]:
    """Each commit (newest first) with its pull request, approvers and problem, if any.
    `merges`: the commits among them with two parents (a rebase merge has none).

    GitHub links a pushed commit to its pull request a little after the push, so the
    commits not yet linked are asked again for up to `wait` seconds."""
    position = {sha: index for index, sha in enumerate(shas)}
    found: dict[str, Pull] = {}
    deadline = time.monotonic() + wait
    pending = list(shas)
    while True:
        for sha in pending:
            pulls = [
                pull
                for item in api.paginate(
                    f"/repos/{repo}/commits/{segment(sha)}/pulls", params={"per_page": 100}
                )
                if (pull := Pull.of(item, repo, branch)) is not None
            ]
            pull = _merged_by(sha, pulls, position, merges)
            if pull is not None:
                found[sha] = pull
        pending = [sha for sha in pending if sha not in found]
        remaining = deadline - time.monotonic()
        if not pending or remaining <= 0:
            break
        sleep(min(2.0, remaining))
    _keep_whole_rebases(shas, found)
    reviews: dict[int, tuple[str, ...]] = {}
    checks = []
    for sha in shas:
        pull = found.get(sha)
        if pull is None:
            problem = f"is not the merge of a pull request into {branch} (a direct push?)"
            checks.append(CommitCheck(sha, None, (), problem))
            continue
        if not approvals:
            checks.append(CommitCheck(sha, pull))
            continue
        if pull.number not in reviews:
            reviews[pull.number] = approvers(api, repo, pull)
        problem = None
        if not reviews[pull.number]:
            problem = (
                f"merges pull request #{pull.number} by {pull.author}, which no one else "
                f"approved at its final commit {pull.head_sha[:12]}"
            )
        checks.append(CommitCheck(sha, pull, reviews[pull.number], problem))
    return checks


def _merged_by(
    sha: str, pulls: Sequence[Pull], position: Mapping[str, int], merges: Collection[str]
) -> Pull | None:
    """The pull request `sha` merged: the one whose merge commit it is; or, for a commit
    of a rebase merge, the pull request listed for it whose merge commit (its last
    commit) comes later in the same range and is no true merge (a rebase merge's
    commits each have one parent: a commit before a merge commit is no part of it)."""
    for pull in pulls:
        if pull.merge_commit_sha == sha:
            return pull
    if sha in merges:
        return None
    for pull in pulls:
        last = pull.merge_commit_sha
        if position.get(last, len(position)) < position[sha] and last not in merges:
            return pull
    return None


def _keep_whole_rebases(shas: Sequence[str], found: dict[str, Pull]) -> None:
    """Drop a commit taken as part of a rebase merge unless every commit between it and
    that merge's last commit belongs to the same pull request: a rebase merge puts its
    commits on the branch one after another, so a commit pushed straight to the branch
    before an unrelated one is not one of them, whatever GitHub lists for it."""
    for index, sha in enumerate(shas):
        pull = found.get(sha)
        if pull is None or pull.merge_commit_sha == sha:
            continue
        last = shas.index(pull.merge_commit_sha)  # newer: earlier in the list
        between = shas[last + 1 : index]
        if any(found.get(other) is None or found[other].number != pull.number for other in between):
            del found[sha]


def approvers(api: GitHubApi, repo: str, pull: Pull) -> tuple[str, ...]:
    """Who approved `pull` at its final head commit, its author and bots aside, each by
    their latest review that approved, asked for changes or was dismissed. Only people
    of the repository count (its owner, its organisation's members, its collaborators),
    as for a protected branch: anyone may submit an approving review on a public
    repository, the author's second account too."""
    latest: dict[str, tuple[str, str]] = {}
    for review in api.paginate(
        f"/repos/{repo}/pulls/{pull.number}/reviews", params={"per_page": 100}
    ):
        if not isinstance(review, dict):
            continue
        user = review.get("user") if isinstance(review.get("user"), dict) else {}
        login, state = user.get("login"), review.get("state")
        if not isinstance(login, str) or state not in (
            "APPROVED",
            "CHANGES_REQUESTED",
            "DISMISSED",
        ):
            continue
        if login.lower() == pull.author.lower() or _is_bot(user):
            continue
        if review.get("author_association") not in TRUSTED_ASSOCIATIONS:
            continue  # on a public repository any account may approve: a second account
        latest[login.lower()] = (state, str(review.get("commit_id") or ""))
    return tuple(
        sorted(
            login
            for login, (state, commit) in latest.items()
            if state == "APPROVED" and commit == pull.head_sha
        )
    )


def _is_bot(user: Mapping[str, Any]) -> bool:
    # A workflow's GITHUB_TOKEN may be allowed to approve pull requests: never a person.
    return user.get("type") == "Bot" or str(user.get("login", "")).endswith("[bot]")


# The verdict ------------------------------------------------------------------------


@dataclass
class Verdict:
    """What the guard decided: sentences a person reads, each followed by its items
    (an :class:`Item`: a commit or a change it names), and what to do about it."""

    passed: bool
    lines: list[str] = field(default_factory=list)
    ask: str | None = None


class Item(str):
    """A commit or a change listed under the sentence before it."""


OVERRIDE_HINT = (
    f"a person listed in {OVERRIDERS} can run {APPLY_WORKFLOW} by hand with override after "
    "checking the plan"
)


def triage(
    plan: Plan,
    settings: GuardSettings,
    *,
    event: str = "push",
    actors: Sequence[str] = (),
    override: bool = False,
    workflow: str = APPLY_WORKFLOW,
) -> tuple[list[Entry], Verdict | None, list[str]]:
    """What needs no lookup: the plan's entries, a verdict already (an empty plan, an
    allowed override), and notes for the verdict to come."""
    entries = plan_entries(plan)
    if not entries:
        return entries, Verdict(True, ["the plan changes nothing; nothing to check."]), []
    if not (event == "workflow_dispatch" and override):
        return entries, None, []
    allowed = [a for a in actors if settings.may_override(a)]
    if actors and len(allowed) == len(actors):
        who = " and ".join(dict.fromkeys(actors))
        line = (
            f"skipped: {who} ran {workflow} by hand with override, and is listed in "
            f"{OVERRIDERS}: the plan is applied unchecked."
        )
        return entries, Verdict(True, [line]), []
    refused = [a for a in actors if a not in allowed] or ["an unknown actor"]
    note = f"override asked by {' and '.join(refused)}, not listed in {OVERRIDERS}: the guard runs."
    return entries, None, [note]


@dataclass
class GuardRun:
    """The checks that look things up: GitHub's record, and git at the checkout."""

    api: GitHubApi
    repo: str
    repository: Repository
    head: str
    paths: Sequence[str]
    env: Mapping[str, str]
    settings: GuardSettings = field(default_factory=GuardSettings)
    workflow: str = APPLY_WORKFLOW
    branch: str = BRANCH
    wait: float = PULLS_WAIT_SECONDS
    sleep: Callable[[float], None] = time.sleep

    def check(self, entries: list[Entry]) -> Verdict:
        try:
            base = find_base(self.api, self.repo, workflow=self.workflow, branch=self.branch)
        except ReconcilerError as exc:
            hint = ""
            if isinstance(exc, ApiError) and exc.status in (403, 404):
                hint = f" (the plan job needs actions: read, and {self.workflow} must exist)"
            raise GuardLookupError(
                f"guard: cannot find the last apply ({self.workflow} runs on {self.branch}), so "
                f"nothing is applied until it can{hint}: {exc}"
            ) from None
        if base is None:
            return self._no_base()
        notes = []
        if self.settings.bootstrap:
            notes.append(
                f"{BOOTSTRAP} is true, but an earlier apply exists: it changes nothing now; "
                "delete the variable."
            )
        if not self._descends_from(base):
            ask = f"Nothing was applied; {OVERRIDE_HINT}."
            return Verdict(False, [*notes, self._rewritten(base)], ask=ask)
        history = self.repository.first_parent_history(base.sha, self.head)
        if not _on_branch(base, history):
            ask = f"Nothing was applied; {OVERRIDE_HINT}."
            return Verdict(False, [*notes, self._off_branch(base)], ask=ask)
        verdict = self._since(base, history, entries)
        verdict.lines[:0] = notes
        return verdict

    def _no_base(self) -> Verdict:
        none = (
            f'no run of {self.workflow} on {self.branch} has applied a plan yet (no "{APPLY_STEP}" '
            "step succeeded)"
        )
        if self.settings.bootstrap:
            return Verdict(
                True,
                [
                    f"bootstrap: {none}, and {BOOTSTRAP} is true: this first apply goes ahead "
                    "unchecked. Delete the variable once it has run."
                ],
            )
        return Verdict(
            False,
            [f"refused: {none}."],
            ask=(
                f"For the first apply of a new repository, set the repository variable {BOOTSTRAP} "
                "to true, and delete it once that apply has run."
            ),
        )

    def _descends_from(self, base: Base) -> bool:
        if self.repository.commit(base.sha) is None:
            if self.repository.is_shallow():
                raise GitError(
                    f"guard: this checkout is shallow and lacks the last applied commit "
                    f"{base.sha[:12]}: check out with fetch-depth: 0"
                )
            return False  # gone from the history: rewritten
        return self.repository.is_ancestor(base.sha, self.head)

    def _off_branch(self, base: Base) -> str:
        return (
            f"refused: the last apply's commit {base.sha[:12]} (run {base.run_id}) is not one "
            f"{self.branch} pointed at (it is no first-parent ancestor of {self.head[:12]}): "
            f"a run on {self.branch} applies {self.branch}'s own commits, so that run is not "
            "what it seems."
        )

    def _rewritten(self, base: Base) -> str:
        return (
            f"refused: history was rewritten since the last apply: its commit {base.sha[:12]} "
            f"(run {base.run_id}) is not an ancestor of {self.head[:12]}."
        )

    def _since(self, base: Base, history: History, entries: list[Entry]) -> Verdict:
        shas = [sha for sha, _ in history]
        merges = {sha for sha, parents in history if len(parents) > 1}
        try:
            checks = check_commits(
                self.api,
                self.repo,
                shas,
                branch=self.branch,
                approvals=self.settings.approvals,
                wait=self.wait,
                sleep=self.sleep,
                merges=merges,
            )
        except ReconcilerError as exc:
            raise GuardLookupError(
                f"guard: cannot look up the pull requests merged since {base.sha[:12]}, so "
                f"nothing is applied until it can: {exc}"
            ) from None
        lines = [f"base {base.sha[:12]}: the last apply ({self.workflow} run {base.run_id})."]
        if not self.settings.approvals:
            lines.append(f"approvals are not required ({APPROVALS}=0).")
        failed = [c for c in checks if c.problem]
        if failed:
            some, verb = _some(len(failed), len(checks), "commit")
            approved = "an approved" if self.settings.approvals else "a"
            lines.append(
                f"refused: {some} on {self.branch} since the last apply {verb} not the merge of "
                f"{approved} pull request:"
            )
            lines += [Item(f"commit {c.sha[:12]} {c.problem}") for c in failed]
        elif checks:
            pulls = ", ".join(dict.fromkeys(f"#{c.pull.number}" for c in checks if c.pull))
            approved = " approved by someone other than its author" * self.settings.approvals
            lines.append(
                f"{plural(len(checks), 'commit')} since, each the merge of a pull request into "
                f"{self.branch}{approved}: {pulls}."
            )
        else:
            lines.append(f"no commit on {self.branch} since.")
        head = load_revision(self.repository, self.head, self.paths, self.env)
        then = load_revision(self.repository, base.sha, self.paths, self.env)
        changed = Changes(tuple(self.repository.changed_paths(base.sha, self.head)))
        outside = [(e, why) for e, why in explain(entries, then, head, changed) if why]
        if outside:
            some, verb = _some(len(outside), len(entries), "change")
            lines.append(
                f"refused: {some} of the plan {verb} not explained by the project files changed "
                f"since {base.sha[:12]}: applying {'it' if len(outside) == 1 else 'them'} would "
                "revert a change made by hand in Oystehr:"
            )
            lines += [Item(f"{entry} ({why})") for entry, why in outside]
        else:
            each = "the change" if len(entries) == 1 else f"each of the {len(entries)} changes"
            lines.append(
                f"{each} of the plan is explained by the project files changed since "
                f"{base.sha[:12]}."
            )
        if not (failed or outside):
            lines[-1] = f"passed: {lines[-1]}"
            return Verdict(True, lines)
        ask = "Nothing was applied."
        if outside:
            ask += (
                " Open a pull request that touches these settings or objects (to keep a live "
                "value, write it into the file), and merge it once approved."
            )
        if failed:
            ask += f" For a commit that was not reviewed, {OVERRIDE_HINT}."
        return Verdict(False, lines, ask)


def _on_branch(base: Base, history: History) -> bool:
    """Whether the base is one of the commits the branch itself pointed at (its
    first-parent history), as every run that applied on it was: a pull request's own
    commits are ancestors too, through the second parent of its merge, and a run
    that looks like it applied one (a tag named like the branch, a workflow changed
    on a branch) would move the base to a commit no apply ever applied."""
    return not history or history[-1][1][:1] == (base.sha,)


def _some(count: int, total: int, noun: str) -> tuple[str, str]:
    """`the change` / `the 3 changes` / `1 of the 3 changes`, and its verb."""
    if count == total:
        return (f"the {noun}", "is") if total == 1 else (f"the {total} {noun}s", "are")
    return f"{count} of the {total} {noun}s", "is" if count == 1 else "are"
