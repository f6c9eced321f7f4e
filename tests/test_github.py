"""`reconciler github comment`, `drift-issue`, `guard` and `check-tip` against a local
fake of GitHub's REST API.

The fake holds comments, issues, a linear `main`, pull requests merged into it
and deployments in memory, and pages lists two items at a time, so following
`Link: rel="next"` is exercised on every listing.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from click.testing import CliRunner

from reconciler import __version__
from reconciler.cli import cli, main
from reconciler.digest import digest_comment
from reconciler.github import GITHUB_BODY_LIMIT, PLAN_MARKER, TRUNCATED_NOTICE, fit_body

TOKEN = "ghs_secretTOKEN0123456789"
REPO = "acme/settings"
PAGE_SIZE = 2
BOT = {"login": "github-actions[bot]"}
HUMAN = {"login": "alice"}


@dataclass
class FakeGitHub:
    """In-memory issues and comments behind the endpoints reconciler uses."""

    url: str = ""
    issues: dict[int, dict[str, Any]] = field(default_factory=dict)
    comments: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    fail_with: tuple[int, dict[str, Any]] | None = None
    # main's commits, oldest first; the merged pull request of each merge commit;
    # deployments to production, newest first, each with its statuses (newest first).
    main: list[str] = field(default_factory=lambda: ["c0"])
    pulls_of: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    deployments: list[dict[str, Any]] = field(default_factory=list)
    # commits/{sha}/pulls answers [] this many more times for a new merge commit.
    link_lag: dict[str, int] = field(default_factory=dict)
    # A clock in minutes: each commit and deployment status gets the next tick.
    dates: dict[str, str] = field(default_factory=lambda: {"c0": "2026-11-28T12:00:00Z"})
    minute: int = 0
    _next_id: int = 1000
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def new_id(self) -> int:
        self._next_id += 1
        return self._next_id

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

    def tick(self) -> str:
        self.minute += 1
        return f"2026-11-28T{12 + self.minute // 60:02d}:{self.minute % 60:02d}:00Z"

    def merge_pull(self, plan_comment: str | None, *, lag: int = 0) -> int:
        """A pull request (with our plan comment) merged as a new commit on main."""
        number = self.add_issue(labels=[], pull_request=True)
        if plan_comment is not None:
            self.add_comment(number, plan_comment, BOT)
        sha = self.push()
        self.pulls_of[sha] = [{"number": number, "merged_at": self.dates[sha]}]
        self.link_lag[sha] = lag
        return number

    def push(self) -> str:
        """A commit pushed straight to main, no pull request."""
        sha = f"c{len(self.main)}"
        self.main.append(sha)
        self.dates[sha] = self.tick()
        return sha

    def deploy(self, sha: str, *states: str) -> dict[str, Any]:
        """A deployment of `sha` to production whose statuses went through `states`."""
        deployment = {"id": self.new_id(), "sha": sha, "environment": "production", "statuses": []}
        self.deployments.insert(0, deployment)
        for state in states:
            self.set_state(deployment, state)
        return deployment

    def set_state(self, deployment: dict[str, Any], state: str) -> None:
        deployment["statuses"].insert(0, {"state": state, "created_at": self.tick()})

    # The HTTP side ---------------------------------------------------------

    def handle_repo(self, method: str, path: str, query: dict[str, str]) -> Any:
        """Deployments, compare, commits/{sha}/pulls and refs: GET only."""
        rest = path[len(f"/repos/{REPO}") :]
        if method != "GET":
            return None
        if rest == "/deployments":
            found = [d for d in self.deployments if d["environment"] == query.get("environment")]
            return self.page(path, query, [{k: d[k] for k in ("id", "sha")} for d in found])
        if match := re.fullmatch(r"/deployments/(\d+)/statuses", rest):
            deployment = next(d for d in self.deployments if d["id"] == int(match[1]))
            return 200, deployment["statuses"][: int(query.get("per_page", "30"))], {}
        if match := re.fullmatch(r"/compare/(\w+)\.\.\.(\w+)", rest):
            base, head = self.main.index(match[1]), self.main.index(match[2])
            commits = [
                {"sha": sha, "commit": {"committer": {"date": self.dates[sha]}}}
                for sha in self.main[base + 1 : head + 1]
            ]
            return 200, {"commits": commits}, {}
        if match := re.fullmatch(r"/commits/(\w+)/pulls", rest):
            if self.link_lag.get(match[1], 0) > 0:
                self.link_lag[match[1]] -= 1
                return self.page(path, query, [])
            return self.page(path, query, self.pulls_of.get(match[1], []))
        if match := re.fullmatch(r"/git/ref/heads/(\w+)", rest):
            return 200, {"ref": f"refs/heads/{match[1]}", "object": {"sha": self.main[-1]}}, {}
        return None

    def handle(self, method: str, target: str, body: Any) -> tuple[int, Any, dict[str, str]]:
        with self._lock:
            self.requests.append(f"{method} {target}")
            if self.fail_with is not None:
                status, payload = self.fail_with
                return status, payload, {}
            parts = urlsplit(target)
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
        self, path: str, query: dict[str, str], items: list[dict[str, Any]]
    ) -> tuple[int, Any, dict[str, str]]:
        page = int(query.get("page", "1"))
        start = (page - 1) * PAGE_SIZE
        headers = {}
        if start + PAGE_SIZE < len(items):
            following = {**query, "page": str(page + 1)}
            link = f"{self.url}{path}?" + "&".join(f"{k}={v}" for k, v in following.items())
            headers["Link"] = f'<{link}>; rel="next"'
        return 200, items[start : start + PAGE_SIZE], headers

    def comment_by_id(self, comment_id: int) -> dict[str, Any] | None:
        for comments in self.comments.values():
            for comment in comments:
                if comment["id"] == comment_id:
                    return comment
        return None


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


def _env(fake: FakeGitHub | None, **extra: str | None) -> dict[str, str | None]:
    # Unset what a GitHub Actions runner would leak into the test run.
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
        "GITHUB_STEP_SUMMARY": None,
    }
    env.update(extra)
    return env


def _invoke(fake: FakeGitHub | None, args: list[str], **env: str | None):
    return CliRunner().invoke(cli, ["github", *args], env=_env(fake, **env))


def _comment(fake, tmp_path, text: str, pr: int = 7, **env: str | None):
    body = tmp_path / "plan.md"
    body.write_text(text, encoding="utf-8")
    return _invoke(fake, ["comment", "--pr", str(pr), "--body-file", str(body)], **env)


def _drift(fake, tmp_path, code: int, report: str = "", **env: str | None):
    path = tmp_path / "drift.md"
    path.write_text(report, encoding="utf-8")
    args = ["drift-issue", "--exit-code", str(code), "--report-file", str(path)]
    return _invoke(fake, args, **env)


# The sticky plan comment ------------------------------------------------------


def test_comment_is_created_once_then_updated_in_place(fake_github, tmp_path):
    pr = fake_github.add_issue(labels=[], pull_request=True)
    for text in ("LGTM", "needs a plan", "ping"):
        fake_github.add_comment(pr, text)

    first = _comment(fake_github, tmp_path, f"{PLAN_MARKER}\nPlan: 1 to change", pr)
    assert first.exit_code == 0, first.output
    (ours,) = fake_github.marked(pr)
    assert first.output == f"created comment {ours['id']}\n"

    fake_github.requests.clear()
    second = _comment(fake_github, tmp_path, f"{PLAN_MARKER}\nPlan: 2 to change", pr)
    assert second.exit_code == 0, second.output
    assert second.output == f"updated comment {ours['id']}\n"
    # Ours is the 4th comment: it is only found by following the link to page 2.
    assert [r.split("?")[0] for r in fake_github.requests] == [
        f"GET /repos/{REPO}/issues/{pr}/comments",
        f"GET /repos/{REPO}/issues/{pr}/comments",
        f"PATCH /repos/{REPO}/issues/comments/{ours['id']}",
    ]
    assert "page=2" in fake_github.requests[1]
    assert fake_github.marked(pr) == [ours]
    assert ours["body"] == f"{PLAN_MARKER}\nPlan: 2 to change"
    others = [c["body"] for c in fake_github.comments[pr] if c is not ours]
    assert others == ["LGTM", "needs a plan", "ping"]


def test_comment_adds_the_marker_when_the_body_lacks_it(fake_github, tmp_path):
    pr = fake_github.add_issue(labels=[], pull_request=True)
    assert _comment(fake_github, tmp_path, "plan failed: see the log", pr).exit_code == 0
    assert _comment(fake_github, tmp_path, "still failing", pr).exit_code == 0
    (ours,) = fake_github.marked(pr)
    assert ours["body"] == f"{PLAN_MARKER}\nstill failing"


def test_comment_marker_is_configurable(fake_github, tmp_path):
    pr = fake_github.add_issue(labels=[], pull_request=True)
    fake_github.add_comment(pr, f"{PLAN_MARKER}\nthe production plan", BOT)
    body = tmp_path / "sandbox.md"
    body.write_text("the sandbox plan", encoding="utf-8")
    args = ["comment", "--pr", str(pr), "--body-file", str(body), "--marker", "<!-- sandbox -->"]
    assert _invoke(fake_github, args).output.startswith("created comment")
    assert len(fake_github.marked(pr)) == 1
    assert len(fake_github.marked(pr, "<!-- sandbox -->")) == 1


def test_comment_sends_the_github_headers(fake_github, tmp_path):
    pr = fake_github.add_issue(labels=[], pull_request=True)
    assert _comment(fake_github, tmp_path, "hi", pr).exit_code == 0
    headers = fake_github.headers[-1]
    assert headers["Accept"] == "application/vnd.github+json"
    assert headers["X-GitHub-Api-Version"] == "2022-11-28"
    assert headers["User-Agent"] == f"reconciler/{__version__}"


def test_comment_too_long_is_truncated_and_keeps_the_marker(fake_github, tmp_path):
    pr = fake_github.add_issue(labels=[], pull_request=True)
    result = _comment(fake_github, tmp_path, f"{PLAN_MARKER}\n" + "x" * 70_000, pr)
    assert result.exit_code == 0, result.output
    (ours,) = fake_github.marked(pr)
    assert len(ours["body"]) == GITHUB_BODY_LIMIT
    assert ours["body"].startswith(PLAN_MARKER)
    assert ours["body"].endswith(TRUNCATED_NOTICE)


def test_fit_body_moves_a_marker_that_would_be_cut_off():
    body = "x" * 70_000 + PLAN_MARKER
    fitted = fit_body(body, PLAN_MARKER)
    assert len(fitted) <= GITHUB_BODY_LIMIT
    assert fitted.startswith(f"{PLAN_MARKER}\n")
    assert fit_body("short", PLAN_MARKER) == f"{PLAN_MARKER}\nshort"
    assert fit_body(f"a {PLAN_MARKER} b", PLAN_MARKER) == f"a {PLAN_MARKER} b"


def test_comment_takes_the_pr_from_the_event(fake_github, tmp_path):
    pr = fake_github.add_issue(labels=[], pull_request=True)
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"pull_request": {"number": pr}}), encoding="utf-8")
    body = tmp_path / "plan.md"
    body.write_text("plan", encoding="utf-8")
    result = _invoke(
        fake_github, ["comment", "--body-file", str(body)], GITHUB_EVENT_PATH=str(event)
    )
    assert result.exit_code == 0, result.output
    assert len(fake_github.marked(pr)) == 1


def test_comment_without_a_pr_is_one_line_error(fake_github, tmp_path):
    result = _invoke(fake_github, ["comment", "--body-file", str(tmp_path / "plan.md")])
    assert result.exit_code == 1
    assert result.output == "Error: --pr is required outside a pull_request event\n"
    assert fake_github.requests == []


# The drift issue ----------------------------------------------------------------


def test_drift_issue_is_created_updated_then_closed(fake_github, tmp_path):
    unrelated = fake_github.add_issue(labels=["bug"], title="Something else")

    created = _drift(fake_github, tmp_path, 2, "## Drift\n- SANDBOX: signupEnabled")
    assert created.exit_code == 0, created.output
    (issue,) = fake_github.open_drift_issues()
    assert created.output == f"created issue #{issue['number']}\n"
    assert issue["title"] == "Drift detected in Oystehr Project settings"
    assert issue["body"].startswith("## Drift\n- SANDBOX: signupEnabled\n\n_Last checked ")

    updated = _drift(
        fake_github,
        tmp_path,
        2,
        "## Drift\n- SANDBOX: name",
        GITHUB_SERVER_URL="https://github.com",
        GITHUB_RUN_ID="42",
    )
    assert updated.exit_code == 0, updated.output
    assert updated.output == f"updated issue #{issue['number']}\n"
    assert fake_github.open_drift_issues() == [issue]
    assert issue["body"].startswith("## Drift\n- SANDBOX: name\n")
    assert f"(https://github.com/{REPO}/actions/runs/42)" in issue["body"]

    closed = _drift(fake_github, tmp_path, 0)
    assert closed.exit_code == 0, closed.output
    assert closed.output == f"closed issue #{issue['number']}\n"
    assert issue["state"] == "closed"
    (note,) = fake_github.comments[issue["number"]]
    assert re.fullmatch(r"No drift as of \d{4}-\d\d-\d\d \d\d:\d\d UTC; closing\.", note["body"])
    assert fake_github.issues[unrelated]["state"] == "open"

    fake_github.requests.clear()
    again = _drift(fake_github, tmp_path, 0)
    assert again.exit_code == 0
    assert again.output == "no drift and no open drift issue: nothing to do\n"
    assert all(request.startswith("GET ") for request in fake_github.requests)


def test_drift_issue_found_on_a_later_page_and_never_duplicated(fake_github, tmp_path):
    # Pull requests come back from the issues endpoint too: they fill page 1.
    for _ in range(3):
        fake_github.add_issue(labels=["drift"], pull_request=True)
    existing = fake_github.add_issue(labels=["drift"], title="Drift (opened by hand)")

    result = _drift(fake_github, tmp_path, 2, "report")
    assert result.output == f"updated issue #{existing}\n"
    assert [i["number"] for i in fake_github.open_drift_issues()] == [existing]
    assert all(
        "report" not in i["body"] for i in fake_github.issues.values() if i.get("pull_request")
    )


def test_drift_issue_with_another_label(fake_github, tmp_path):
    report = tmp_path / "drift.md"
    report.write_text("report", encoding="utf-8")
    args = ["drift-issue", "--exit-code", "2", "--report-file", str(report)]
    result = _invoke(fake_github, [*args, "--label", "oystehr-drift", "--title", "Prod drift"])
    assert result.exit_code == 0, result.output
    (issue,) = fake_github.issues.values()
    assert issue["labels"] == [{"name": "oystehr-drift"}] and issue["title"] == "Prod drift"


@pytest.mark.parametrize("code", [1, 3, 130])
def test_failed_drift_run_touches_no_issue_and_exits_1(fake_github, tmp_path, code):
    number = fake_github.add_issue(labels=["drift"], body="old report")
    result = _drift(fake_github, tmp_path, code, "partial report")
    assert result.exit_code == 1
    assert f"reconciler drift exited {code}" in result.output
    assert fake_github.requests == []
    assert fake_github.issues[number]["body"] == "old report"


# Errors: one line, exit 1, never the token -------------------------------------


def test_api_error_is_one_line_with_githubs_message(fake_github, tmp_path):
    fake_github.fail_with = (403, {"message": "Resource not accessible by integration"})
    result = _drift(fake_github, tmp_path, 2, "report")
    assert result.exit_code == 1
    assert result.output == (
        f"Error: GitHub API GET /repos/{REPO}/issues: 403 Resource not accessible by "
        "integration - does the job grant the permission this needs?\n"
    )


def test_validation_error_details_are_shown(fake_github, tmp_path):
    fake_github.add_issue(labels=[], pull_request=True)
    fake_github.fail_with = (
        422,
        {
            "message": "Validation Failed",
            "errors": [{"code": "custom", "message": "body is too long"}],
        },
    )
    result = _comment(fake_github, tmp_path, "plan", 1)
    assert result.exit_code == 1
    assert result.output.endswith("422 Validation Failed (body is too long)\n")


def test_bad_token_is_never_echoed(fake_github, tmp_path):
    wrong = "ghs_wrongTOKENthatMustNotLeak"
    result = _comment(fake_github, tmp_path, "plan", 1, GITHUB_TOKEN=wrong)
    assert result.exit_code == 1
    assert (
        result.output
        == f"Error: GitHub API GET /repos/{REPO}/issues/1/comments: 401 Bad credentials\n"
    )
    assert wrong not in result.output and TOKEN not in result.output


def test_missing_token(fake_github, tmp_path):
    result = _comment(fake_github, tmp_path, "plan", 1, GITHUB_TOKEN=None)
    assert result.exit_code == 1
    assert result.output.startswith("Error: GITHUB_TOKEN is not set")
    assert fake_github.requests == []


def test_unreachable_api_is_one_line(tmp_path):
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = _comment(None, tmp_path, "plan", 1, GITHUB_API_URL=f"http://127.0.0.1:{port}")
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: GitHub API GET /repos/{REPO}/issues/1/comments: ")
    assert result.output.count("\n") == 1 and TOKEN not in result.output


def test_errors_through_the_console_script_entry_point(fake_github, tmp_path, monkeypatch, capsys):
    for name, value in _env(fake_github).items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    fake_github.fail_with = (404, {"message": "Not Found"})
    report = tmp_path / "drift.md"
    report.write_text("report", encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        main(["github", "drift-issue", "--exit-code", "2", "--report-file", str(report)])
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"Error: GitHub API GET /repos/{REPO}/issues: 404 Not Found\n"


# Only our own comment and issue are ever edited ---------------------------------


def test_someone_elses_marker_comment_is_left_alone_and_ours_is_created(fake_github, tmp_path):
    pr = fake_github.add_issue(labels=[], pull_request=True)
    theirs = fake_github.add_comment(pr, f"{PLAN_MARKER}\nall fine, merge it", HUMAN)

    first = _comment(fake_github, tmp_path, f"{PLAN_MARKER}\nPlan: 1 to change", pr)
    assert first.exit_code == 0, first.output
    ours = [c for c in fake_github.marked(pr) if c["user"] == BOT]
    assert first.output == f"created comment {ours[0]['id']}\n" and len(ours) == 1
    second = _comment(fake_github, tmp_path, f"{PLAN_MARKER}\nPlan: 2 to change", pr)
    assert second.output == f"updated comment {ours[0]['id']}\n"
    assert fake_github.comment_by_id(theirs)["body"] == f"{PLAN_MARKER}\nall fine, merge it"
    assert ours[0]["body"] == f"{PLAN_MARKER}\nPlan: 2 to change"
    assert not any(
        r.startswith(f"PATCH /repos/{REPO}/issues/comments/{theirs}") for r in fake_github.requests
    )


def test_author_option_names_the_tokens_identity(fake_github, tmp_path):
    pr = fake_github.add_issue(labels=[], pull_request=True)
    app = {"login": "Settings-Bot[bot]"}
    mine = fake_github.add_comment(pr, f"{PLAN_MARKER}\nold", app)
    body = tmp_path / "plan.md"
    body.write_text("new", encoding="utf-8")
    args = ["comment", "--pr", str(pr), "--body-file", str(body), "--author", "settings-bot[bot]"]
    assert _invoke(fake_github, args).output == f"updated comment {mine}\n"
    assert fake_github.comment_by_id(mine)["body"] == f"{PLAN_MARKER}\nnew"


def test_someone_elses_drift_issue_is_left_alone_and_ours_is_created(fake_github, tmp_path):
    theirs = fake_github.add_issue(labels=["drift"], body="I track drift here", user=HUMAN)
    created = _drift(fake_github, tmp_path, 2, "## Drift")
    assert created.exit_code == 0, created.output
    ours = [i for i in fake_github.open_drift_issues() if i["user"] == BOT]
    assert created.output == f"created issue #{ours[0]['number']}\n" and len(ours) == 1
    assert _drift(fake_github, tmp_path, 0).output == f"closed issue #{ours[0]['number']}\n"
    assert fake_github.issues[theirs]["state"] == "open"
    assert fake_github.issues[theirs]["body"] == "I track drift here"
    assert fake_github.comments[theirs] == []


def test_fit_body_never_cuts_the_digest(tmp_path):
    digest = digest_comment(_plan_doc(("signupEnabled", True)))
    fitted = fit_body(f"{PLAN_MARKER}\n" + "x" * 70_000 + f"\n{digest}\n", PLAN_MARKER)
    assert len(fitted) <= GITHUB_BODY_LIMIT
    assert fitted.startswith(f"{PLAN_MARKER}\n{digest}\n")
    kept = fit_body(f"{PLAN_MARKER}\n{digest}\n" + "x" * 70_000, PLAN_MARKER)
    assert kept.startswith(f"{PLAN_MARKER}\n{digest}\nxxx") and len(kept) == GITHUB_BODY_LIMIT


# The reviewed-plan guard ---------------------------------------------------------

SANDBOX = "fd9b1113-4bd2-4dad-8631-a95ba035dfda"


def _plan_doc(*changes: tuple[str, Any], project_id: str = SANDBOX) -> dict[str, Any]:
    """A plan document as `plan --out` writes it (the parts the digest reads)."""
    return {
        "formatVersion": 1,
        "projects": [
            {
                "projectId": project_id,
                "status": "changed" if changes else "unchanged",
                "changes": [{"field": f, "before": "?", "after": a} for f, a in changes],
            }
        ],
    }


def _plan_comment(*changes: tuple[str, Any]) -> str:
    return f"{PLAN_MARKER}\n{digest_comment(_plan_doc(*changes))}\n### reconciler plan"


def _guard(fake, tmp_path, doc, sha, *extra: str, **env: str | None):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(doc), encoding="utf-8")
    summary = tmp_path / "summary.md"
    summary.write_text("", encoding="utf-8")
    args = ["guard", "--plan-file", str(plan), "--wait", "0", *extra]
    env = {
        "GITHUB_SHA": sha,
        "GITHUB_EVENT_NAME": "push",
        "GITHUB_STEP_SUMMARY": str(summary),
        **env,
    }
    result = _invoke(fake, args, **env)
    return result, summary.read_text(encoding="utf-8")


def test_guard_passes_when_the_merged_pull_requests_reviewed_every_change(fake_github, tmp_path):
    fake_github.deploy("c0", "waiting", "in_progress", "success")
    pr = fake_github.merge_pull(_plan_comment(("signupEnabled", True), ("name", "Sandbox")))
    result, summary = _guard(fake_github, tmp_path, _plan_doc(("signupEnabled", True)), "c1")
    assert result.exit_code == 0, result.output
    assert result.output == (
        f"guard: all 1 changes of the plan were reviewed on #{pr} (merged since c0).\n"
    )
    assert summary.startswith("**reconciler guard:** all 1 changes")
    assert f"GET /repos/{REPO}/compare/c0...c1" in [r.split("?")[0] for r in fake_github.requests]


def test_guard_refuses_a_change_no_one_reviewed_and_lists_it(fake_github, tmp_path):
    fake_github.deploy("c0", "success")
    pr = fake_github.merge_pull(_plan_comment(("signupEnabled", True)))
    # Between the pull request's plan and the merge, the file's value moved on elsewhere:
    doc = _plan_doc(("signupEnabled", True), ("description", "edited after review"))
    result, summary = _guard(fake_github, tmp_path, doc, "c1")
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"guard: refused: 1 of the 2 changes of this plan were in no plan reviewed on #{pr}.",
        f'  - {SANDBOX}: description = "edited after review"',
        "Open a new pull request (any change under projects/) so its plan comment shows these "
        "changes for review, or have a person run this workflow by hand (workflow_dispatch "
        "applies what main says without this check).",
    ]
    assert summary.startswith("### reconciler guard: refused, nothing was applied")
    assert f'| {SANDBOX}: description = "edited after review" |' in summary


def test_guard_ignores_a_digest_in_someone_elses_comment(fake_github, tmp_path):
    fake_github.deploy("c0", "success")
    pr = fake_github.merge_pull(None)
    fake_github.add_comment(pr, _plan_comment(("signupEnabled", True)), HUMAN)
    result, _ = _guard(fake_github, tmp_path, _plan_doc(("signupEnabled", True)), "c1")
    assert result.exit_code == 1
    assert f"(no plan comment of ours on #{pr})" in result.output


def test_two_merges_back_to_back_the_second_run_covers_both(fake_github, tmp_path):
    fake_github.deploy("c0", "success")
    first = fake_github.merge_pull(_plan_comment(("signupEnabled", True)))
    run1, _ = _guard(fake_github, tmp_path, _plan_doc(("signupEnabled", True)), "c1")
    assert run1.exit_code == 0, run1.output
    # Run 1's apply job waits for a reviewer while the second pull request merges.
    fake_github.deploy("c1", "waiting")
    second = fake_github.merge_pull(_plan_comment(("name", "Sandbox 2")))
    both = _plan_doc(("signupEnabled", True), ("name", "Sandbox 2"))
    run2, _ = _guard(fake_github, tmp_path, both, "c2")
    assert run2.exit_code == 0, run2.output
    assert f"reviewed on #{first}, #{second} (merged since c0)" in run2.output


def test_a_superseded_deployment_is_not_the_base(fake_github, tmp_path):
    """Three merges while approvals lag: run 1 is approved after main moved on, so its job
    succeeds as superseded (nothing applied); run 3 must still count pull request 1."""
    fake_github.deploy("c0", "success")
    prs = [fake_github.merge_pull(_plan_comment(("signupEnabled", True)))]
    run1 = fake_github.deploy("c1", "waiting")
    prs.append(fake_github.merge_pull(_plan_comment(("name", "Sandbox 2"))))
    fake_github.set_state(run1, "success")  # approved now: check-tip says superseded
    fake_github.deploy("c2", "waiting")  # run 2 waits for its reviewer
    prs.append(fake_github.merge_pull(_plan_comment(("description", "three"))))
    doc = _plan_doc(("signupEnabled", True), ("name", "Sandbox 2"), ("description", "three"))
    run3, _ = _guard(fake_github, tmp_path, doc, "c3")
    assert run3.exit_code == 0, run3.output
    assert f"reviewed on #{prs[0]}, #{prs[1]}, #{prs[2]} (merged since c0)" in run3.output


def test_a_deployment_that_finished_before_main_moved_on_is_the_base(fake_github, tmp_path):
    fake_github.deploy("c0", "success")
    fake_github.merge_pull(_plan_comment(("signupEnabled", True)))
    fake_github.deploy("c1", "waiting", "in_progress", "success")  # applied, c1 the tip
    second = fake_github.merge_pull(_plan_comment(("name", "Sandbox 2")))
    result, _ = _guard(fake_github, tmp_path, _plan_doc(("name", "Sandbox 2")), "c2")
    assert result.exit_code == 0, result.output
    assert f"reviewed on #{second} (merged since c1)" in result.output
    # Pull request 1 was deployed: a plan showing its change again is not covered now.
    again, _ = _guard(fake_github, tmp_path, _plan_doc(("signupEnabled", True)), "c2")
    assert again.exit_code == 1 and f"reviewed on #{second}." in again.output


def test_a_direct_push_stops(fake_github, tmp_path):
    fake_github.deploy("c0", "success")
    sha = fake_github.push()
    result, _ = _guard(fake_github, tmp_path, _plan_doc(("signupEnabled", True)), sha)
    assert result.exit_code == 1
    assert result.output.startswith(
        "guard: refused: no merged pull request leads to c1: a direct push is never applied"
    )
    assert f"  - {SANDBOX}: signupEnabled = true" in result.output


def test_an_empty_plan_never_stops_and_asks_nothing(fake_github, tmp_path):
    sha = fake_github.push()
    result, _ = _guard(fake_github, tmp_path, _plan_doc(), sha)
    assert result.exit_code == 0
    assert result.output == "guard: the plan changes nothing; nothing to check.\n"
    assert fake_github.requests == []


def test_a_person_dispatching_by_hand_skips_the_guard_a_bot_does_not(fake_github, tmp_path):
    sha = fake_github.push()
    doc = _plan_doc(("signupEnabled", True))
    by_hand, summary = _guard(
        fake_github, tmp_path, doc, sha, GITHUB_EVENT_NAME="workflow_dispatch", GITHUB_ACTOR="alice"
    )
    assert by_hand.exit_code == 0 and fake_github.requests == []
    assert by_hand.output.startswith("guard: started by hand by alice (workflow_dispatch)")
    assert "started by hand by alice" in summary
    by_bot, _ = _guard(
        fake_github,
        tmp_path,
        doc,
        sha,
        GITHUB_EVENT_NAME="workflow_dispatch",
        GITHUB_ACTOR="renovate[bot]",
    )
    assert by_bot.exit_code == 1


def test_guard_waits_for_github_to_link_the_merge_commit(fake_github, tmp_path):
    fake_github.deploy("c0", "success")
    fake_github.merge_pull(_plan_comment(("signupEnabled", True)), lag=1)
    doc = _plan_doc(("signupEnabled", True))
    result, _ = _guard(fake_github, tmp_path, doc, "c1", "--wait", "0.5")
    assert result.exit_code == 0, result.output
    pulls = [r for r in fake_github.requests if r.startswith(f"GET /repos/{REPO}/commits/c1/")]
    assert len(pulls) == 2


def test_guard_before_any_deployment_reads_the_pushed_commits_pull_request(fake_github, tmp_path):
    fake_github.deploy("c0", "failure")
    fake_github.merge_pull(_plan_comment(("signupEnabled", True)))
    result, _ = _guard(fake_github, tmp_path, _plan_doc(("signupEnabled", True)), "c1")
    assert result.exit_code == 0, result.output
    assert "(merged (no earlier deployment))" in result.output
    assert not any("/compare/" in r for r in fake_github.requests)


def test_guard_with_a_broken_plan_file_is_one_line(fake_github, tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text("[1, 2", encoding="utf-8")
    result = _invoke(fake_github, ["guard", "--plan-file", str(plan), "--sha", "c0"])
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {plan}: not a plan file: ")
    assert result.output.count("\n") == 1 and fake_github.requests == []


# Superseded, not applied ----------------------------------------------------------


def test_check_tip(fake_github, tmp_path):
    tip = fake_github.push()
    current = _invoke(fake_github, ["check-tip", "--sha", tip])
    assert (current.exit_code, current.output) == (0, f"{tip} is the tip of main: going ahead.\n")
    fake_github.push()
    old = _invoke(fake_github, ["check-tip", "--sha", tip])
    assert old.exit_code == 3
    assert old.output == (
        "::notice title=reconciler::Superseded: main moved on to c2 since this run's commit c1; "
        "nothing was applied here (the newer run applies).\n"
    )
