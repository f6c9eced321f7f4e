"""A local fake of the GitHub REST endpoints reconciler uses, over a real socket.

Issues and comments (the sticky plan comment, the drift issue), and what the merge
guard reads: the runs of a workflow with their jobs and steps, the pull requests of a
commit, the reviews of a pull request. Deployments are served too, so a test can
forge one and show that nothing reads it. Lists are paged two items at a time, so
following `Link: rel="next"` is exercised on every listing.

    fake.record_apply(sha)                 # an apply.yml run whose "Apply that plan" succeeded
    number = fake.add_pull(head_sha, author="alice")
    fake.approve(number, "bob")            # at the pull request's head commit
    fake.merge(number, merge_sha)
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from reconciler.github.comments import PLAN_MARKER

TOKEN = "ghs_secretTOKEN0123456789"
REPO = "acme/settings"
PAGE_SIZE = 2
BOT = {"login": "github-actions[bot]", "type": "Bot"}
HUMAN = {"login": "alice", "type": "User"}
APPLY_STEPS = ("Set up job", "Stop if main moved on", "Apply that plan", "Complete job")


@dataclass
class FakeGitHub:
    """In-memory issues, comments, workflow runs, pull requests and reviews."""

    url: str = ""
    issues: dict[int, dict[str, Any]] = field(default_factory=dict)
    comments: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    fail_with: tuple[int, dict[str, Any]] | None = None
    # (regex on the path, status, body): answers that path with an error.
    fail_paths: list[tuple[str, int, Any]] = field(default_factory=list)
    main: str = ""  # the commit refs/heads/main points at
    runs: list[dict[str, Any]] = field(default_factory=list)  # apply.yml runs, newest first
    pulls: dict[int, dict[str, Any]] = field(default_factory=dict)
    commit_pulls: dict[str, list[int]] = field(default_factory=dict)
    reviews: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    deployments: list[dict[str, Any]] = field(default_factory=list)
    # commits/{sha}/pulls answers [] this many more times for a new merge commit.
    link_lag: dict[str, int] = field(default_factory=dict)
    _next_id: int = 1000
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    # Issues and comments -------------------------------------------------------

    def add_issue(
        self,
        *,
        labels: list[str],
        pull_request: bool = False,
        user: dict[str, str] = BOT,
        **fields: Any,
    ) -> int:
        number = len(self.issues) + 1
        issue = {"number": number, "state": "open", "title": "", "body": "", "user": user}
        issue.update(fields)
        issue["labels"] = [{"name": name} for name in labels]
        if pull_request:
            issue["pull_request"] = {"url": f"{self.url}/repos/{REPO}/pulls/{number}"}
        self.issues[number] = issue
        self.comments.setdefault(number, [])
        return number

    def add_comment(self, number: int, body: str, user: dict[str, str] = HUMAN) -> int:
        comment = {"id": self.new_id(), "body": body, "user": user}
        self.comments.setdefault(number, []).append(comment)
        return comment["id"]

    def marked(self, number: int, marker: str = PLAN_MARKER) -> list[dict[str, Any]]:
        return [c for c in self.comments.get(number, []) if marker in c["body"]]

    def open_drift_issues(self) -> list[dict[str, Any]]:
        return [
            issue
            for issue in self.issues.values()
            if issue["state"] == "open"
            and "pull_request" not in issue
            and {"name": "drift"} in issue["labels"]
        ]

    # What the guard reads ------------------------------------------------------

    def record_apply(
        self,
        sha: str,
        *,
        applied: bool = True,
        branch: str = "main",
        event: str = "push",
        head_repository: str = REPO,
        step: str = "Apply that plan",
    ) -> dict[str, Any]:
        """A run of apply.yml for `sha`: its apply step succeeded, or was skipped."""
        run_id = self.new_id()
        steps = [
            {"name": name, "status": "completed", "conclusion": "success"} for name in APPLY_STEPS
        ]
        steps[2] = {"name": step, "status": "completed", "conclusion": "success"}
        if not applied:  # superseded: check-tip said main moved on, the apply step skipped
            steps[2]["conclusion"] = "skipped"
        run = {
            "id": run_id,
            "name": "apply",
            "path": ".github/workflows/apply.yml",
            "head_sha": sha,
            "head_branch": branch,
            "event": event,
            "status": "completed",
            "conclusion": "success",
            "html_url": f"https://github.com/{REPO}/actions/runs/{run_id}",
            "head_repository": {"full_name": head_repository},
            "jobs": [
                {"name": "plan", "steps": [{"name": "Set up job", "conclusion": "success"}]},
                {"name": "apply", "steps": steps},
            ],
        }
        self.runs.insert(0, run)
        return run

    def add_pull(self, head_sha: str, *, author: str = "alice", base: str = "main") -> int:
        number = self.add_issue(labels=[], pull_request=True, user={"login": author})
        self.pulls[number] = {
            "number": number,
            "state": "open",
            "user": {"login": author, "type": "User"},
            "head": {"sha": head_sha, "ref": f"change-{number}"},
            "base": {"ref": base, "repo": {"full_name": REPO}},
            "merged_at": None,
            "merge_commit_sha": None,
        }
        self.commit_pulls.setdefault(head_sha, []).append(number)
        return number

    def approve(
        self,
        number: int,
        login: str = "bob",
        *,
        commit: str | None = None,
        state: str = "APPROVED",
        association: str = "COLLABORATOR",
    ) -> None:
        review = {
            "id": self.new_id(),
            "user": {"login": login, "type": "Bot" if login.endswith("[bot]") else "User"},
            "state": state,
            "commit_id": commit or self.pulls[number]["head"]["sha"],
            "author_association": association,  # how GitHub says who reviewed
        }
        self.reviews.setdefault(number, []).append(review)

    def merge(self, number: int, merge_sha: str, *, also: tuple[str, ...] = (), lag: int = 0):
        """Pull request `number` merged as `merge_sha` (and `also`: the other commits of a
        rebase merge, each linked to it as GitHub does)."""
        pull = self.pulls[number]
        pull.update(state="closed", merged_at="2026-11-29T12:00:00Z", merge_commit_sha=merge_sha)
        for sha in (merge_sha, *also):
            self.commit_pulls.setdefault(sha, []).append(number)
        self.link_lag[merge_sha] = lag
        self.main = merge_sha

    def deploy(self, sha: str, state: str = "success") -> None:
        """A production deployment anyone with deployments: write can create."""
        self.deployments.insert(
            0, {"id": self.new_id(), "sha": sha, "environment": "production", "state": state}
        )

    # The HTTP side -------------------------------------------------------------

    def handle_repo(self, method: str, path: str, query: dict[str, str]) -> Any:
        rest = unquote(path[len(f"/repos/{REPO}") :])
        if method != "GET":
            return None
        if rest == "/actions/workflows/apply.yml/runs":
            runs = [
                r for r in self.runs if r["head_branch"] == query.get("branch", r["head_branch"])
            ]
            public = [{k: v for k, v in r.items() if k != "jobs"} for r in runs]
            return self.page(path, query, public, key="workflow_runs")
        if match := re.fullmatch(r"/actions/runs/(\d+)/jobs", rest):
            run = next((r for r in self.runs if r["id"] == int(match[1])), None)
            if run is None:
                return 404, {"message": "Not Found"}, {}
            return self.page(path, query, run["jobs"], key="jobs")
        if rest == "/deployments":
            return self.page(path, query, self.deployments)
        if match := re.fullmatch(r"/commits/([^/]+)/pulls", rest):
            if self.link_lag.get(match[1], 0) > 0:
                self.link_lag[match[1]] -= 1
                return self.page(path, query, [])
            numbers = self.commit_pulls.get(match[1], [])
            return self.page(path, query, [self.pulls[n] for n in numbers])
        if match := re.fullmatch(r"/pulls/(\d+)/reviews", rest):
            return self.page(path, query, self.reviews.get(int(match[1]), []))
        if match := re.fullmatch(r"/git/ref/heads/(.+)", rest):
            return 200, {"ref": f"refs/heads/{match[1]}", "object": {"sha": self.main}}, {}
        return None

    def handle(self, method: str, target: str, body: Any) -> tuple[int, Any, dict[str, str]]:
        with self._lock:
            self.requests.append(f"{method} {target}")
            if self.fail_with is not None:
                status, payload = self.fail_with
                return status, payload, {}
            parts = urlsplit(target)
            for pattern, status, payload in self.fail_paths:
                if re.search(pattern, parts.path):
                    return status, payload, {}
            query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
            prefix = f"/repos/{REPO}/issues"
            path = parts.path
            if (answer := self.handle_repo(method, path, query)) is not None:
                return answer
            if not path.startswith(prefix):
                return 404, {"message": "Not Found"}, {}
            rest = path[len(prefix) :]
            if match := re.fullmatch(r"/(\d+)/comments", rest):
                number = int(match[1])
                if number not in self.comments:
                    return 404, {"message": "Not Found"}, {}
                if method == "GET":
                    return self.page(path, query, self.comments[number])
                if method == "POST":
                    comment_id = self.add_comment(number, body["body"], BOT)
                    return 201, self.comment_by_id(comment_id), {}
            if (match := re.fullmatch(r"/comments/(\d+)", rest)) and method == "PATCH":
                comment = self.comment_by_id(int(match[1]))
                if comment is None:
                    return 404, {"message": "Not Found"}, {}
                comment["body"] = body["body"]
                return 200, comment, {}
            if rest == "" and method == "GET":
                wanted = set(filter(None, query.get("labels", "").split(",")))
                found = [
                    issue
                    for issue in sorted(self.issues.values(), key=lambda i: i["number"])
                    if issue["state"] == query.get("state", "open")
                    and wanted <= {label["name"] for label in issue["labels"]}
                ]
                if query.get("direction") != "asc":
                    found.reverse()
                return self.page(path, query, found)
            if rest == "" and method == "POST":
                number = self.add_issue(
                    labels=body.get("labels", []), title=body["title"], body=body["body"], user=BOT
                )
                return 201, self.issues[number], {}
            if (match := re.fullmatch(r"/(\d+)", rest)) and method == "PATCH":
                issue = self.issues.get(int(match[1]))
                if issue is None:
                    return 404, {"message": "Not Found"}, {}
                issue.update(body)
                return 200, issue, {}
            return 404, {"message": "Not Found"}, {}

    def page(
        self, path: str, query: dict[str, str], items: list[Any], key: str | None = None
    ) -> tuple[int, Any, dict[str, str]]:
        page = int(query.get("page", "1"))
        start = (page - 1) * PAGE_SIZE
        headers = {}
        if start + PAGE_SIZE < len(items):
            following = {**query, "page": str(page + 1)}
            link = f"{self.url}{path}?" + "&".join(f"{k}={v}" for k, v in following.items())
            headers["Link"] = f'<{link}>; rel="next"'
        chunk = items[start : start + PAGE_SIZE]
        return 200, ({"total_count": len(items), key: chunk} if key else chunk), headers

    def comment_by_id(self, comment_id: int) -> dict[str, Any] | None:
        for comments in self.comments.values():
            for comment in comments:
                if comment["id"] == comment_id:
                    return comment
        return None

    def asked(self, fragment: str) -> list[str]:
        """The requests whose target holds `fragment`."""
        return [r for r in self.requests if fragment in r]


def _handler_for(fake: FakeGitHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            fake.headers.append(dict(self.headers))
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self._reply(401, {"message": "Bad credentials"}, {})
                return
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            self._reply(*fake.handle(self.command, self.path, body))

        do_GET = do_POST = do_PATCH = _serve

        def _reply(self, status: int, payload: Any, headers: dict[str, str]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output quiet

    return Handler


@pytest.fixture
def fake_github() -> Iterator[FakeGitHub]:
    fake = FakeGitHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(fake))
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
    )
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_port}"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def github_env(fake: FakeGitHub | None, **extra: str | None) -> dict[str, str | None]:
    """The environment of a workflow step, minus what a real runner would leak in."""
    env: dict[str, str | None] = {
        "GITHUB_TOKEN": TOKEN,
        "GITHUB_API_URL": fake.url if fake else None,
        "GITHUB_REPOSITORY": REPO,
        "GITHUB_EVENT_PATH": None,
        "GITHUB_SERVER_URL": None,
        "GITHUB_RUN_ID": None,
        "GITHUB_SHA": None,
        "GITHUB_EVENT_NAME": None,
        "GITHUB_ACTOR": None,
        "GITHUB_TRIGGERING_ACTOR": None,
        "GITHUB_STEP_SUMMARY": None,
        "RECONCILER_GUARD_BOOTSTRAP": None,
        "RECONCILER_GUARD_APPROVALS": None,
        "RECONCILER_GUARD_OVERRIDERS": None,
    }
    env.update(extra)
    return env
