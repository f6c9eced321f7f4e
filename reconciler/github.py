"""The GitHub half of the GitOps workflow: one sticky PR comment, one drift issue.

The workflows in `.github/workflows/` call these commands instead of carrying
the logic in `actions/github-script` steps, so the parts that decide "update or
create", "which comment is ours" and "open, update or close the drift issue"
are ordinary Python, tested against a local fake of the GitHub REST API
(`tests/test_github.py`).

    reconciler github comment --pr 12 --body-file plan.md
    reconciler github drift-issue --exit-code 2 --report-file drift.md

The token comes from `GITHUB_TOKEN` (the job's `github.token`), the API base from
`GITHUB_API_URL` (set by the runner, so GitHub Enterprise Server works too), the
repository from `GITHUB_REPOSITORY`. The token never appears in any output.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from functools import wraps
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import httpx

from reconciler import __version__
from reconciler.errors import (
    ApiError,
    ConfigError,
    CredentialsError,
    ReconcilerError,
    TransportError,
)

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://api.github.com"
PLAN_MARKER = "<!-- reconciler-plan -->"
DRIFT_LABEL = "drift"
DRIFT_TITLE = "Drift detected in Oystehr Project settings"

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
    line of defence for whatever else a workflow hands in (and our footer).
    """
    if marker and marker not in body:
        body = f"{marker}\n{body}"
    if len(body) <= limit:
        return body
    keep = limit - len(TRUNCATED_NOTICE)
    if marker and marker not in body[:keep]:
        # The marker sat in the cut-off tail: put it first so the comment stays findable.
        keep -= len(marker) + 1
        return f"{marker}\n{body[:keep]}{TRUNCATED_NOTICE}"
    return body[:keep] + TRUNCATED_NOTICE


def upsert_comment(api: GitHubApi, repo: str, pr: int, body: str, marker: str) -> tuple[str, int]:
    """Update the PR's comment that holds `marker`, or create it. Returns (action, id).

    Only the first (oldest) comment holding the marker is ever touched, so a
    pull request never gets a second one from us.
    """
    body = fit_body(body, marker)
    existing = next(
        (
            comment
            for comment in api.paginate(
                f"/repos/{repo}/issues/{pr}/comments", params={"per_page": 100}
            )
            if marker in (comment.get("body") or "")
        ),
        None,
    )
    if existing is None:
        created = api.request("POST", f"/repos/{repo}/issues/{pr}/comments", json={"body": body})
        return "created", created["id"]
    api.request("PATCH", f"/repos/{repo}/issues/comments/{existing['id']}", json={"body": body})
    return "updated", existing["id"]


def find_drift_issue(api: GitHubApi, repo: str, label: str) -> dict[str, Any] | None:
    """The oldest open issue with `label` (pull requests share the endpoint: skipped)."""
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
    return next((issue for issue in issues if "pull_request" not in issue), None)


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
) -> str:
    """Make the drift issue match a drift run that exited 0 or 2; return what was done."""
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M UTC")
    issue = find_drift_issue(api, repo, label)
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
@_one_line_errors
def comment(repo: str, pr: int | None, body_file: str, marker: str) -> None:
    """Create or update the ONE pull request comment that holds the marker.

    Every push to a pull request updates the same comment instead of adding
    another. Prints "created comment ID" or "updated comment ID".

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
        action, comment_id = upsert_comment(api, repo, number, body, marker)
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
@_one_line_errors
def drift_issue(repo: str, exit_code: int, report_file: str, label: str, title: str) -> None:
    """Open, update or close the ONE open drift issue to match a drift run.

    \b
    Exit code 2 (drift): update the open issue with the label, or open one.
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
        )
    click.echo(done)
