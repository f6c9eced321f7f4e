"""The sticky plan comment and the drift issue.

Only a comment or issue written by the token's own identity is ever edited
(`github-actions[bot]` for a job's GITHUB_TOKEN, matched by login because that
token cannot call GET /user): anyone can post the marker, nobody else's text
is taken over. Nothing here decides whether anything is applied: the merge
guard (`guard.py`) never reads comments.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from reconciler.github.api import GitHubApi
from reconciler.render import PLAN_MARKER

__all__ = ["PLAN_MARKER"]

DRIFT_LABEL = "drift"
DRIFT_TITLE = "Drift detected in Oystehr Project settings"
# The login of a workflow's GITHUB_TOKEN: the only author whose comments we edit.
DEFAULT_AUTHOR = "github-actions[bot]"

# GitHub rejects comment and issue bodies longer than this many characters.
GITHUB_BODY_LIMIT = 65_536
TRUNCATED_NOTICE = (
    "\n\n---\n**Truncated:** this text exceeded GitHub's 65,536-character limit; "
    "the full output is in the workflow run.\n"
)

# Drift exit codes (SPEC section 4).
DRIFT_NONE = 0
DRIFT_FOUND = 2


def fit_body(body: str, marker: str | None = None, limit: int = GITHUB_BODY_LIMIT) -> str:
    """Return `body` holding `marker` and no longer than GitHub accepts.

    reconciler's own markdown is capped well below the limit; this is the last
    line of defence for whatever else a workflow hands in (and our footer). The
    marker is never cut.
    """
    if marker and marker not in body:
        body = f"{marker}\n{body}"
    if len(body) <= limit:
        return body
    keep = limit - len(TRUNCATED_NOTICE)
    if not marker or marker in body[:keep]:
        return body[:keep] + TRUNCATED_NOTICE
    # The marker sat in the cut-off tail: put it first.
    head = f"{marker}\n"
    rest = body.replace(marker, "", 1)
    return f"{head}{rest[: keep - len(head)]}{TRUNCATED_NOTICE}"


def by(item: dict[str, Any], author: str) -> bool:
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
        (c for c in comments if by(c, author) and marker in (c.get("body") or "")),
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
        (issue for issue in issues if "pull_request" not in issue and by(issue, author)),
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
    event = read_event()
    number = (event.get("pull_request") or {}).get("number") or event.get("number")
    return number if isinstance(number, int) else None


def read_event() -> dict[str, Any]:
    """The payload of the event that started this run (GITHUB_EVENT_PATH), or {}."""
    path = os.environ.get("GITHUB_EVENT_PATH")
    if not path:
        return {}
    try:
        event = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return event if isinstance(event, dict) else {}
