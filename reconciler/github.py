"""The GitHub half of the GitOps workflow: one sticky PR comment, one drift issue.

The workflows in `.github/workflows/` call these commands instead of carrying
the logic in `actions/github-script` steps, so the parts that decide "update or
create", "which comment is ours" and "open, update or close the drift issue"
are ordinary Python, tested against a local fake of the GitHub REST API
(`tests/test_github.py`).

    reconciler github comment --pr 12 --body-file plan.md
    reconciler github drift-issue --exit-code 2 --report-file drift.md
    reconciler github guard --plan-file plan.json      # apply.yml: what merges was reviewed
    reconciler github check-tip --branch main          # apply.yml: superseded, not applied

Only a comment or issue written by the token's own identity is ever edited
(`github-actions[bot]` for a job's GITHUB_TOKEN, matched by login because that
token cannot call GET /user): anyone can post the marker, nobody else's text
is taken over.

The token comes from `GITHUB_TOKEN` (the job's `github.token`), the API base from
`GITHUB_API_URL` (set by the runner, so GitHub Enterprise Server works too), the
repository from `GITHUB_REPOSITORY`. The token never appears in any output.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from dataclasses import field as dc_field
from datetime import datetime, timezone
from functools import wraps
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import httpx

from reconciler import __version__
from reconciler.digest import (
    Entry,
    describe_entry,
    digest_entries,
    entries_outside,
    find_digest_comment,
    parse_digest,
)
from reconciler.errors import (
    ApiError,
    ConfigError,
    CredentialsError,
    ReconcilerError,
    TransportError,
)
from reconciler.escape import term
from reconciler.render import md_escape

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://api.github.com"
PLAN_MARKER = "<!-- reconciler-plan -->"
DRIFT_LABEL = "drift"
DRIFT_TITLE = "Drift detected in Oystehr Project settings"
# The login of a workflow's GITHUB_TOKEN: the only author whose comments we edit.
DEFAULT_AUTHOR = "github-actions[bot]"
PRODUCTION = "production"
# How long `commits/{sha}/pulls` may lag behind a push before it lists the merged PR.
PULLS_WAIT_SECONDS = 30.0
# Deployments looked at for the last successful one (newest first).
MAX_DEPLOYMENTS = 100
# `github check-tip` exit code for "this run's commit is no longer the branch tip".
EXIT_SUPERSEDED = 3

# GitHub rejects comment and issue bodies longer than this many characters.
GITHUB_BODY_LIMIT = 65_536
TRUNCATED_NOTICE = (
    "\n\n---\n**Truncated:** this text exceeded GitHub's 65,536-character limit; "
    "the full output is in the workflow run.\n"
)

# Drift exit codes (SPEC section 4).
DRIFT_NONE = 0
DRIFT_FOUND = 2


class GitHubApi:
    """A minimal GitHub REST client: the handful of issue endpoints the workflows use.

    `transport` is swappable like httpx's own, so a test may hand in a mock; the
    tests here use a real local server instead.
    """

    def __init__(
        self,
        token: str,
        base_url: str = DEFAULT_API_URL,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._token = token
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(
            base_url=self.base_url,
            timeout=timeout,
            transport=transport,
            headers={
                "Authorization": f"Bearer {token}",
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": "2022-11-28",
                "User-Agent": f"reconciler/{__version__}",
            },
        )

    def __enter__(self) -> GitHubApi:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        """Send one request and return its JSON, or raise ApiError/TransportError."""
        return self._send(method, url, **kwargs)[1]

    def paginate(self, url: str, params: dict[str, Any] | None = None) -> Iterator[Any]:
        """Yield every item of a list endpoint, following `Link: <…>; rel="next"`."""
        next_url: str | None = url
        while next_url is not None:
            response, items = self._send("GET", next_url, params=params)
            if not isinstance(items, list):
                raise TransportError(f"GitHub API GET {url}: expected a JSON list")
            yield from items
            # The next link already carries the query string.
            params = None
            next_url = response.links.get("next", {}).get("url")
            if next_url is not None:
                self._check_same_origin(next_url)

    def _send(self, method: str, url: str, **kwargs: Any) -> tuple[httpx.Response, Any]:
        """One request: (response, its JSON) on success, our errors otherwise."""
        where = f"GitHub API {method} {urlsplit(url).path or url}"
        try:
            response = self._client.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise TransportError(self._redact(f"{where}: {exc}")) from exc
        log.debug("%s -> %s", where, response.status_code)
        if response.is_success:
            try:
                return response, response.json()
            except ValueError as exc:
                raise TransportError(f"{where}: the answer is not JSON") from exc
        raise ApiError(
            self._redact(f"{where}: {response.status_code} {_error_message(response)}"),
            status=response.status_code,
        )

    def _check_same_origin(self, url: str) -> None:
        # The Authorization header goes with every request this client sends:
        # refuse to follow a pagination link to any other host.
        ours, theirs = urlsplit(self.base_url), urlsplit(url)
        if (ours.scheme, ours.netloc) != (theirs.scheme, theirs.netloc):
            raise TransportError(f"GitHub API: refusing to follow a page link to {theirs.netloc}")

    def _redact(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token else text


def _error_message(response: httpx.Response) -> str:
    """GitHub's own words: `message`, plus the `errors` detail of a 422."""
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase or "error"
    if not isinstance(body, dict):
        return response.reason_phrase or "error"
    message = str(body.get("message") or response.reason_phrase or "error")
    details = [
        str(error.get("message") or error.get("code"))
        for error in body.get("errors") or []
        if isinstance(error, dict) and (error.get("message") or error.get("code"))
    ]
    if details:
        message += f" ({'; '.join(details)})"
    if response.status_code == 403 and "not accessible by integration" in message:
        message += " - does the job grant the permission this needs?"
    return message


def fit_body(body: str, marker: str | None = None, limit: int = GITHUB_BODY_LIMIT) -> str:
    """Return `body` holding `marker` and no longer than GitHub accepts.

    reconciler's own markdown is capped well below the limit; this is the last
    line of defence for whatever else a workflow hands in (and our footer). The
    marker and the plan digest (which the merge-time guard reads) are never cut.
    """
    if marker and marker not in body:
        body = f"{marker}\n{body}"
    if len(body) <= limit:
        return body
    keep = limit - len(TRUNCATED_NOTICE)
    pinned = [text for text in (marker, find_digest_comment(body)) if text]
    if all(text in body[:keep] for text in pinned):
        return body[:keep] + TRUNCATED_NOTICE
    # Something that must stay sat in the cut-off tail: put it first.
    for text in pinned:
        body = body.replace(text, "", 1)
    head = "".join(f"{text}\n" for text in pinned)
    return f"{head}{body[: keep - len(head)]}{TRUNCATED_NOTICE}"


def _by(item: dict[str, Any], author: str) -> bool:
    """Written by `author` (GitHub logins are case-insensitive)."""
    user = item.get("user")
    login = user.get("login") if isinstance(user, dict) else None
    return isinstance(login, str) and login.lower() == author.lower()


def find_own_comment(
    api: GitHubApi, repo: str, number: int, marker: str, author: str
) -> dict[str, Any] | None:
    """The oldest comment on issue/PR `number` by `author` that holds `marker`."""
    comments = api.paginate(f"/repos/{repo}/issues/{number}/comments", params={"per_page": 100})
    return next(
        (c for c in comments if _by(c, author) and marker in (c.get("body") or "")),
        None,
    )


def upsert_comment(
    api: GitHubApi,
    repo: str,
    pr: int,
    body: str,
    marker: str,
    author: str = DEFAULT_AUTHOR,
) -> tuple[str, int]:
    """Update the PR's comment by `author` that holds `marker`, or create it.
    Returns (action, id).

    Only the first (oldest) such comment is ever touched, so a pull request never
    gets a second one from us; a marker in anyone else's comment is ignored.
    """
    body = fit_body(body, marker)
    existing = find_own_comment(api, repo, pr, marker, author)
    if existing is None:
        created = api.request("POST", f"/repos/{repo}/issues/{pr}/comments", json={"body": body})
        return "created", created["id"]
    api.request("PATCH", f"/repos/{repo}/issues/comments/{existing['id']}", json={"body": body})
    return "updated", existing["id"]


def find_drift_issue(
    api: GitHubApi, repo: str, label: str, author: str = DEFAULT_AUTHOR
) -> dict[str, Any] | None:
    """The oldest open issue with `label` opened by `author` (pull requests share the
    endpoint: skipped; anyone else's issue with the label is left alone)."""
    issues = api.paginate(
        f"/repos/{repo}/issues",
        params={
            "state": "open",
            "labels": label,
            "sort": "created",
            "direction": "asc",
            "per_page": 100,
        },
    )
    return next(
        (issue for issue in issues if "pull_request" not in issue and _by(issue, author)),
        None,
    )


def sync_drift_issue(
    api: GitHubApi,
    repo: str,
    *,
    exit_code: int,
    report: str,
    label: str = DRIFT_LABEL,
    title: str = DRIFT_TITLE,
    now: datetime | None = None,
    footer: str = "",
    author: str = DEFAULT_AUTHOR,
) -> str:
    """Make the drift issue match a drift run that exited 0 or 2; return what was done."""
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M UTC")
    issue = find_drift_issue(api, repo, label, author)
    if exit_code == DRIFT_NONE:
        if issue is None:
            return "no drift and no open drift issue: nothing to do"
        number = issue["number"]
        api.request(
            "POST",
            f"/repos/{repo}/issues/{number}/comments",
            json={"body": f"No drift as of {stamp}; closing.{footer}"},
        )
        api.request(
            "PATCH",
            f"/repos/{repo}/issues/{number}",
            json={"state": "closed", "state_reason": "completed"},
        )
        return f"closed issue #{number}"
    if exit_code != DRIFT_FOUND:
        raise ValueError(f"not a drift outcome: {exit_code}")
    body = fit_body(f"{report.rstrip()}\n\n_Last checked {stamp}._{footer}\n")
    if issue is None:
        created = api.request(
            "POST", f"/repos/{repo}/issues", json={"title": title, "body": body, "labels": [label]}
        )
        return f"created issue #{created['number']}"
    number = issue["number"]
    api.request("PATCH", f"/repos/{repo}/issues/{number}", json={"body": body})
    return f"updated issue #{number}"


# The reviewed-plan guard -------------------------------------------------------


@dataclass
class GuardResult:
    """What the guard found: the base deployment, the pull requests, what is outside."""

    entries: list[Entry]
    base_sha: str | None = None
    pulls: list[int] = dc_field(default_factory=list)
    unreviewed: list[int] = dc_field(default_factory=list)  # merged PRs with no digest of ours
    outside: list[Entry] = dc_field(default_factory=list)
    refused: str | None = None  # why, when the guard stops the run

    @property
    def passed(self) -> bool:
        return self.refused is None


def deployed_base(
    api: GitHubApi, repo: str, environment: str, head: str
) -> tuple[str | None, list[str]]:
    """The commit of the last deployment to `environment` that applied, and main's commits
    after it up to `head` (just `head` when nothing was deployed yet).

    A deployment whose job succeeded after main had already moved past its commit was
    superseded (`check-tip`: it applied nothing), so it is not the base: the pull
    requests it carried still count as not yet applied."""
    deployments = api.paginate(
        f"/repos/{repo}/deployments", params={"environment": environment, "per_page": 30}
    )
    for count, deployment in enumerate(deployments):
        if count >= MAX_DEPLOYMENTS:
            break
        statuses = api.request(
            "GET", f"/repos/{repo}/deployments/{deployment['id']}/statuses", params={"per_page": 1}
        )
        if not (isinstance(statuses, list) and statuses and statuses[0].get("state") == "success"):
            continue
        sha = str(deployment["sha"])
        commits = _commits_after(api, repo, sha, head)
        finished = _time(statuses[0].get("created_at"))
        moved = _time(((commits[0].get("commit") or {}).get("committer") or {}).get("date"))
        if commits and finished and moved and moved < finished:
            log.debug("deployment of %s was superseded: main had moved on", sha)
            continue
        return sha, [str(c["sha"]) for c in commits]
    return None, [head]


def _commits_after(api: GitHubApi, repo: str, base: str, head: str) -> list[dict[str, Any]]:
    if base == head:
        return []
    compare = api.request("GET", f"/repos/{repo}/compare/{base}...{head}")
    commits = compare.get("commits") if isinstance(compare, dict) else None
    return [c for c in commits or [] if isinstance(c, dict) and "sha" in c]


def _time(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None


def merged_pulls(
    api: GitHubApi,
    repo: str,
    shas: list[str],
    head: str,
    *,
    wait: float = PULLS_WAIT_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
) -> list[int]:
    """The merged pull requests of the commits `shas` and `head`. GitHub links a pushed
    commit to its pull request a little after the push, so the head commit is asked
    again for up to `wait` seconds."""
    numbers = {n for sha in shas if sha != head for n in _merged_pulls_of(api, repo, sha)}
    deadline = time.monotonic() + wait
    while not (at_head := _merged_pulls_of(api, repo, head)) and time.monotonic() < deadline:
        sleep(min(2.0, max(0.0, deadline - time.monotonic())))
    return sorted(numbers | at_head)


def _merged_pulls_of(api: GitHubApi, repo: str, sha: str) -> set[int]:
    pulls = api.paginate(f"/repos/{repo}/commits/{sha}/pulls", params={"per_page": 100})
    return {p["number"] for p in pulls if p.get("merged_at") and isinstance(p.get("number"), int)}


def reviewed_entries(
    api: GitHubApi, repo: str, pulls: list[int], author: str, marker: str = PLAN_MARKER
) -> tuple[list[Entry], list[int]]:
    """The union of the digests in our plan comments on `pulls`, and the pulls with none."""
    union: list[Entry] = []
    missing: list[int] = []
    for number in pulls:
        comment = find_own_comment(api, repo, number, marker, author)
        entries = parse_digest(comment.get("body")) if comment else None
        if entries is None:
            missing.append(number)
        else:
            union += entries
    return union, missing


def guard_plan(
    api: GitHubApi,
    repo: str,
    plan_doc: dict[str, Any],
    head: str,
    *,
    environment: str = PRODUCTION,
    author: str = DEFAULT_AUTHOR,
    wait: float = PULLS_WAIT_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
) -> GuardResult:
    """Check that every change of the merge-time plan was in a reviewed plan comment of
    a pull request merged since the last successful deployment to `environment`."""
    result = GuardResult(entries=digest_entries(plan_doc))
    if not result.entries:
        return result  # an empty plan never stops
    result.base_sha, shas = deployed_base(api, repo, environment, head)
    result.pulls = merged_pulls(api, repo, shas, head, wait=wait, sleep=sleep)
    if not result.pulls:
        result.outside = result.entries
        result.refused = (
            f"no merged pull request leads to {head[:12]}: a direct push is never applied "
            "unreviewed"
        )
        return result
    union, result.unreviewed = reviewed_entries(api, repo, result.pulls, author)
    result.outside = entries_outside(result.entries, union)
    if result.outside:
        result.refused = (
            f"{len(result.outside)} of the {len(result.entries)} changes of this plan were "
            f"in no plan reviewed on {_pull_list(result.pulls)}"
        )
    return result


def _pull_list(pulls: list[int]) -> str:
    return ", ".join(f"#{n}" for n in pulls) or "no pull request"


GUARD_ASK = (
    "Open a new pull request (any change under projects/) so its plan comment shows these "
    "changes for review, or have a person run this workflow by hand (workflow_dispatch "
    "applies what main says without this check)."
)


def guard_report(result: GuardResult) -> tuple[list[str], str]:
    """(lines for the log, markdown for the job summary)."""
    since = f"since {result.base_sha[:12]}" if result.base_sha else "(no earlier deployment)"
    if result.passed:
        if not result.entries:
            line = "guard: the plan changes nothing; nothing to check."
        else:
            line = (
                f"guard: all {len(result.entries)} changes of the plan were reviewed on "
                f"{_pull_list(result.pulls)} (merged {since})."
            )
        return [line], f"**reconciler guard:** {md_escape(line[7:])}\n"
    lines = [f"guard: refused: {result.refused}."]
    lines += [f"  - {describe_entry(entry)}" for entry in result.outside]
    if result.unreviewed:
        lines.append(f"  (no plan comment of ours on {_pull_list(result.unreviewed)})")
    lines.append(GUARD_ASK)
    md = [
        f"### reconciler guard: refused, nothing was applied\n\n{md_escape(result.refused or '')} "
        f"(pull requests merged {since}).\n",
        "| Not reviewed |",
        "| --- |",
        *(f"| {md_escape(describe_entry(entry))} |" for entry in result.outside),
        "",
        md_escape(GUARD_ASK),
    ]
    return lines, "\n".join(md) + "\n"


def branch_tip(api: GitHubApi, repo: str, branch: str) -> str:
    ref = api.request("GET", f"/repos/{repo}/git/ref/heads/{branch}")
    sha = (ref.get("object") or {}).get("sha") if isinstance(ref, dict) else None
    if not isinstance(sha, str):
        raise TransportError(f"GitHub API: refs/heads/{branch} has no commit")
    return sha


def run_link() -> str:
    """A markdown link to the current workflow run, or "" outside GitHub Actions."""
    server, repo, run_id = (
        os.environ.get(name) for name in ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_RUN_ID")
    )
    if not (server and repo and run_id):
        return ""
    return f" ([workflow run]({server}/{repo}/actions/runs/{run_id}))"


def pr_from_event() -> int | None:
    """The pull request number of the event that started this run, if there is one."""
    path = os.environ.get("GITHUB_EVENT_PATH")
    if not path:
        return None
    try:
        event = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    number = (event.get("pull_request") or {}).get("number") or event.get("number")
    return number if isinstance(number, int) else None


def _api_from_env() -> GitHubApi:
    token = os.environ.get("GITHUB_TOKEN", "")
    if not token:
        raise CredentialsError(
            "GITHUB_TOKEN is not set (in a workflow: env: GITHUB_TOKEN: ${{ github.token }})"
        )
    return GitHubApi(token, os.environ.get("GITHUB_API_URL") or DEFAULT_API_URL)


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc


def _one_line_errors(fn: Callable[..., None]) -> Callable[..., None]:
    """Turn our errors into click's `Error: …` line and exit 1.

    `main()` does the same for every command; doing it here too keeps that
    behaviour when the group is invoked directly (CliRunner, other entry points).
    """

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except ReconcilerError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper


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
    help="The repository (env GITHUB_REPOSITORY, set in every workflow run).",
)


@click.group()
def github() -> None:
    """Talk to GitHub for the workflows: the sticky plan comment and the drift issue.

    Needs GITHUB_TOKEN; GITHUB_API_URL and GITHUB_REPOSITORY are read when set
    (GitHub Actions sets both).

    \b
      reconciler github comment --pr 12 --body-file plan.md
      reconciler github drift-issue --exit-code 2 --report-file drift.md
    """


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
    with _api_from_env() as api:
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
    with _api_from_env() as api:
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
@click.option(
    "--plan-file",
    required=True,
    type=click.Path(dir_okay=False, path_type=str),
    help="The merge-time plan (`reconciler plan --out plan.json`).",
)
@click.option(
    "--sha",
    envvar="GITHUB_SHA",
    required=True,
    help="The pushed commit (env GITHUB_SHA).",
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
    "--environment",
    default=PRODUCTION,
    show_default=True,
    help="The GitHub environment whose last successful deployment is the base.",
)
@click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=PULLS_WAIT_SECONDS,
    show_default=True,
    help="Seconds to wait for GitHub to link the pushed commit to its pull request.",
)
@author_option
@_one_line_errors
def guard(
    repo: str,
    plan_file: str,
    sha: str,
    event: str,
    actor: str,
    environment: str,
    wait: float,
    author: str,
) -> None:
    """Stop an apply whose plan holds changes no reviewed plan showed.

    Takes the pull requests merged since the last successful deployment to
    --environment (or just the pushed commit's, before the first one), reads
    the digest in each one's plan comment (only --author's), and checks that
    every change of the merge-time plan is in their union. Exit 0 when it is,
    when the plan is empty, or when a person started the run by hand
    (workflow_dispatch); exit 1, listing the changes outside, otherwise (a
    direct push with no pull request included). Writes the verdict to the job
    summary.

    \b
      reconciler plan --out plan.json
      reconciler github guard --plan-file plan.json
    """
    if event == "workflow_dispatch" and actor and not actor.lower().endswith("[bot]"):
        line = (
            f"guard: started by hand by {actor} (workflow_dispatch): the plan is applied "
            "as main says, without the reviewed-plan check."
        )
        click.echo(line)
        append_step_summary(f"**reconciler guard:** {md_escape(line[7:])}\n")
        return
    plan_doc = _read_plan_doc(plan_file)
    with _api_from_env() as api:
        result = guard_plan(
            api, repo, plan_doc, sha, environment=environment, author=author, wait=wait
        )
    lines, markdown = guard_report(result)
    for line in lines:
        click.echo(line)
    append_step_summary(markdown)
    if not result.passed:
        raise SystemExit(1)


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
    with _api_from_env() as api:
        tip = branch_tip(api, repo, branch)
    if tip == sha:
        click.echo(f"{sha[:12]} is the tip of {branch}: going ahead.")
        return
    line = (
        f"Superseded: {branch} moved on to {tip[:12]} since this run's commit {sha[:12]}; "
        "nothing was applied here (the newer run applies)."
    )
    click.echo(f"::notice title=reconciler::{term(line)}")
    append_step_summary(f"**reconciler:** {md_escape(line)}\n")
    raise SystemExit(EXIT_SUPERSEDED)


def _read_plan_doc(path: str) -> dict[str, Any]:
    try:
        doc = json.loads(_read_text(path))
    except ValueError as exc:
        raise ConfigError(f"{path}: not a plan file: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("projects"), list):
        raise ConfigError(f"{path}: not a plan file: no projects list")
    return doc


def append_step_summary(markdown: str) -> None:
    """Append to the GitHub Actions job summary when there is one."""
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if not path:
        return
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(markdown + "\n")
    except OSError as exc:
        click.echo(f"Warning: could not write GITHUB_STEP_SUMMARY ({exc.strerror})", err=True)
