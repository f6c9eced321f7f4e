"""`reconciler github …`: the commands the workflows call, parsing and wiring only.

reconciler github comment --pr 12 --body-file plan.md
reconciler github drift-issue --exit-code 2 --report-file drift.md
reconciler github guard --plan-file plan.json      # apply.yml: what merges was reviewed
reconciler github check-tip --branch main          # apply.yml: superseded, not applied
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

import click

from reconciler.credentials import check_credentials
from reconciler.errors import ConfigError, ReconcilerError
from reconciler.escape import markdown, md_escape, term
from reconciler.github.api import TOKEN_VARIABLE, api_from_env, branch_tip
from reconciler.github.comments import (
    DEFAULT_AUTHOR,
    DRIFT_FOUND,
    DRIFT_LABEL,
    DRIFT_NONE,
    DRIFT_TITLE,
    PLAN_MARKER,
    pr_from_event,
    read_event,
    run_link,
    sync_drift_issue,
    upsert_comment,
)
from reconciler.github.guard import (
    APPLY_WORKFLOW,
    BRANCH,
    PULLS_WAIT_SECONDS,
    GuardLookupError,
    GuardRun,
    GuardSettings,
    Item,
    Verdict,
    triage,
)

# `github check-tip` exit code for "this run's commit is no longer the branch tip".
EXIT_SUPERSEDED = 3
_REPO = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc


def _one_line_errors(fn: Callable[..., None]) -> Callable[..., None]:
    """Turn our errors into click's `Error: …` line and exit 1, escaped and redacted.

    `main()` does the same for every command; doing it here too keeps that
    behaviour when the group is invoked directly (CliRunner, other entry points).
    """

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except ReconcilerError as exc:
            raise click.ClickException(term(str(exc))) from None

    return wrapper


def _repo(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not _REPO.fullmatch(value or ""):
        raise click.BadParameter(f"{value!r} is not OWNER/NAME")
    return value


author_option = click.option(
    "--author",
    default=DEFAULT_AUTHOR,
    show_default=True,
    help="Login of the token's identity: only its comments and issues are ours to edit.",
)

repo_option = click.option(
    "--repo",
    envvar="GITHUB_REPOSITORY",
    required=True,
    metavar="OWNER/NAME",
    callback=_repo,
    help="The repository (env GITHUB_REPOSITORY, set in every workflow run).",
)


@click.group()
def github() -> None:
    """Talk to GitHub for the workflows: the plan comment, the drift issue, the guard.

    Needs GITHUB_TOKEN; GITHUB_API_URL and GITHUB_REPOSITORY are read when set
    (GitHub Actions sets both).

    \b
      reconciler github comment --pr 12 --body-file plan.md
      reconciler github drift-issue --exit-code 2 --report-file drift.md
      reconciler github guard --plan-file plan.json
    """
    # A credential like the others: refused at start, by name, before anything runs.
    try:
        check_credentials([TOKEN_VARIABLE], os.environ)
    except ReconcilerError as exc:
        raise click.ClickException(str(exc)) from None


@github.command()
@repo_option
@click.option(
    "--pr",
    type=click.IntRange(min=1),
    default=None,
    help="Pull request number (default: from the pull_request event of this run).",
)
@click.option(
    "--body-file",
    required=True,
    type=click.Path(dir_okay=False, path_type=str),
    help="Markdown to post, e.g. the output of `reconciler plan --format markdown`.",
)
@click.option(
    "--marker",
    default=PLAN_MARKER,
    show_default=True,
    help="Hidden text that identifies our comment; added to the body if missing.",
)
@author_option
@_one_line_errors
def comment(repo: str, pr: int | None, body_file: str, marker: str, author: str) -> None:
    """Create or update the ONE pull request comment that holds the marker.

    Every push to a pull request updates the same comment instead of adding
    another. Only a comment by --author is updated: a marker in anyone else's
    comment is ignored. Prints "created comment ID" or "updated comment ID".

    \b
      reconciler plan --format markdown --out plan.json > plan.md
      reconciler github comment --pr 12 --body-file plan.md
    """
    if not marker.strip():
        raise ConfigError("--marker must not be empty")
    number = pr or pr_from_event()
    if number is None:
        raise ConfigError("--pr is required outside a pull_request event")
    body = _read_text(body_file)
    with api_from_env(os.environ) as api:
        action, comment_id = upsert_comment(api, repo, number, body, marker, author)
    click.echo(f"{action} comment {comment_id}")


@github.command("drift-issue")
@repo_option
@click.option(
    "--exit-code",
    "exit_code",
    type=int,
    required=True,
    help="Exit code of `reconciler drift`: 0 in sync, 2 drift, anything else failed.",
)
@click.option(
    "--report-file",
    required=True,
    type=click.Path(dir_okay=False, path_type=str),
    help="Markdown of `reconciler drift --format markdown`.",
)
@click.option("--label", default=DRIFT_LABEL, show_default=True, help="Label of the drift issue.")
@click.option("--title", default=DRIFT_TITLE, show_default=True, help="Title of a new drift issue.")
@author_option
@_one_line_errors
def drift_issue(
    repo: str, exit_code: int, report_file: str, label: str, title: str, author: str
) -> None:
    """Open, update or close the ONE open drift issue to match a drift run.

    \b
    Exit code 2 (drift): update the open issue with the label (opened by
    --author; anyone else's is left alone), or open one.
    Exit code 0 (in sync): close it with a comment, if there is one.
    Anything else: the drift run failed, so leave issues alone and exit 1.

    \b
      reconciler drift --format markdown > drift.md; code=$?
      reconciler github drift-issue --exit-code $code --report-file drift.md
    """
    if exit_code not in (DRIFT_NONE, DRIFT_FOUND):
        click.echo(
            f"reconciler drift exited {exit_code}: the check itself failed; "
            "leaving drift issues as they are.",
            err=True,
        )
        raise SystemExit(1)
    report = _read_text(report_file) if exit_code == DRIFT_FOUND else ""
    with api_from_env(os.environ) as api:
        done = sync_drift_issue(
            api,
            repo,
            exit_code=exit_code,
            report=report,
            label=label,
            title=title,
            footer=run_link(),
            author=author,
        )
    click.echo(done)


@github.command()
@repo_option
@click.argument("paths", nargs=-1, type=click.Path(path_type=str))
@click.option(
    "--plan-file",
    required=True,
    type=click.Path(dir_okay=False, path_type=str),
    help="The merge-time plan (`reconciler plan --out plan.json`).",
)
@click.option(
    "--sha",
    envvar="GITHUB_SHA",
    default=None,
    help="The commit this run is for (env GITHUB_SHA); it must be the checkout's HEAD.",
)
@click.option(
    "--event",
    envvar="GITHUB_EVENT_NAME",
    default="push",
    show_default=True,
    help="The event of the run (env GITHUB_EVENT_NAME).",
)
@click.option("--actor", envvar="GITHUB_ACTOR", default="", help="Who started the run.")
@click.option(
    "--workflow",
    default=APPLY_WORKFLOW,
    show_default=True,
    help='The workflow whose "Apply that plan" step marks the last apply.',
)
@click.option("--branch", default=BRANCH, show_default=True, help="The branch applied from.")
@click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=PULLS_WAIT_SECONDS,
    show_default=True,
    help="Seconds to wait for GitHub to link a pushed commit to its pull request.",
)
@_one_line_errors
def guard(
    repo: str,
    paths: tuple[str, ...],
    plan_file: str,
    sha: str | None,
    event: str,
    actor: str,
    workflow: str,
    branch: str,
    wait: float,
) -> None:
    """Stop an apply whose plan holds a change no reviewed merge explains.

    \b
    Decides from git history and the Actions record, never from comments:
    - base: the commit of the newest --workflow run on --branch whose step
      "Apply that plan" succeeded; it must be an ancestor of HEAD
    - every first-parent commit since: the merge of a pull request into
      --branch, approved by someone other than its author at its last commit
    - every change of the plan: its setting or object differs in the project
      files (PATHS, default projects) between base and HEAD
    Exit 0 when all hold or the plan is empty; 1 otherwise, with the reasons.
    Repository variables (as env): RECONCILER_GUARD_BOOTSTRAP=true lets the
    first apply through, RECONCILER_GUARD_APPROVALS=0 drops approvals,
    RECONCILER_GUARD_OVERRIDERS lists who may skip it (workflow_dispatch with
    the override input). Writes the verdict to the job summary.

    \b
      reconciler plan --out plan.json
      reconciler github guard --plan-file plan.json
    """
    from reconciler.github.history import Repository
    from reconciler.planfile import read_plan_file

    settings = GuardSettings.from_env(os.environ)
    the_plan = read_plan_file(plan_file)
    inputs = read_event().get("inputs")
    override = isinstance(inputs, dict) and inputs.get("override") in (True, "true")
    triggering = os.environ.get("GITHUB_TRIGGERING_ACTOR", "")
    actors = tuple(dict.fromkeys(a for a in (actor, triggering) if a))
    entries, verdict, notes = triage(
        the_plan, settings, event=event, actors=actors, override=override, workflow=workflow
    )
    if verdict is None:
        repository = Repository.around(".")
        head = repository.commit("HEAD")
        if head is None:
            raise ConfigError("the repository has no commit at HEAD")
        if sha and repository.commit(sha) != head:
            raise ConfigError(
                f"this checkout is at {head[:12]}, not at the run's commit {sha[:12]}: "
                "the guard checks what was checked out"
            )
        if the_plan.commit != head:
            made = (
                f"at commit {the_plan.commit[:12]}"
                if the_plan.commit
                else "from files not committed unchanged at HEAD (it records a filesHash)"
            )
            raise ConfigError(
                f"{plan_file}: the plan was made {made}, and this checkout is at {head[:12]}: "
                "the guard explains a plan made at the commit it checks; plan again here"
            )
        with api_from_env(os.environ) as api:
            run = GuardRun(
                api=api,
                repo=repo,
                repository=repository,
                head=head,
                paths=[repository.relative(p) for p in paths or ("projects",)],
                env=os.environ,
                settings=settings,
                workflow=workflow,
                branch=branch,
                wait=wait,
            )
            try:
                verdict = run.check(entries)
            except GuardLookupError as exc:
                append_step_summary(_summary(Verdict(False, [*notes, str(exc)])))
                raise
        verdict.lines[:0] = notes
    for line in verdict.lines:
        click.echo(f"  - {term(line)}" if isinstance(line, Item) else f"guard: {term(line)}")
    if verdict.ask:
        click.echo(term(verdict.ask))
    append_step_summary(_summary(verdict))
    if not verdict.passed:
        raise SystemExit(1)


def _summary(verdict: Verdict) -> str:
    """The verdict as markdown for the job summary: every value escaped."""
    outcome = "passed" if verdict.passed else "refused, nothing will be applied"
    paragraphs = [f"### reconciler guard: {outcome}"]
    for line in verdict.lines:
        paragraphs.append(
            f"- {markdown(line, 400, table=False)}"
            if isinstance(line, Item)
            else md_escape(term(line))
        )
    if verdict.ask:
        paragraphs.append(md_escape(term(verdict.ask)))
    return "\n\n".join(paragraphs) + "\n"


@github.command("check-tip")
@repo_option
@click.option("--branch", default="main", show_default=True, help="The branch applied from.")
@click.option("--sha", envvar="GITHUB_SHA", required=True, help="This run's commit (GITHUB_SHA).")
@_one_line_errors
def check_tip(repo: str, branch: str, sha: str) -> None:
    """Exit 0 when --sha is still the tip of --branch, 3 (superseded) when it moved on.

    An apply job that waited for approval may find main moved on: applying
    its older plan would revert the newer merges, so it stops, and the newer
    run (which planned from the newer main) applies instead.

    \b
      reconciler github check-tip --branch main
    """
    with api_from_env(os.environ) as api:
        tip = branch_tip(api, repo, branch)
    if tip == sha:
        click.echo(f"{term(sha[:12])} is the tip of {term(branch)}: going ahead.")
        return
    line = (
        f"Superseded: {branch} moved on to {tip[:12]} since this run's commit {sha[:12]}; "
        "nothing was applied here (the newer run applies)."
    )
    click.echo(f"::notice title=reconciler::{term(line)}")
    append_step_summary(f"**reconciler:** {md_escape(term(line))}\n")
    raise SystemExit(EXIT_SUPERSEDED)


def append_step_summary(markdown_text: str) -> None:
    """Append to the GitHub Actions job summary when there is one."""
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if not path:
        return
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(markdown_text + "\n")
    except OSError as exc:
        click.echo(f"Warning: could not write GITHUB_STEP_SUMMARY ({exc.strerror})", err=True)
