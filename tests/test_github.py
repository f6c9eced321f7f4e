"""`reconciler github comment`, `drift-issue` and `check-tip` against a local fake of
GitHub's REST API (`tests/fake_github.py`). The merge guard: `tests/test_guard.py`.
"""

from __future__ import annotations

import json
import re
import socket

import pytest
from click.testing import CliRunner
from fake_github import BOT, HUMAN, REPO, TOKEN, FakeGitHub, fake_github, github_env

from reconciler import __version__
from reconciler.cli import cli, main
from reconciler.github.comments import (
    GITHUB_BODY_LIMIT,
    PLAN_MARKER,
    TRUNCATED_NOTICE,
    fit_body,
)

__all__ = ["fake_github"]  # the fixture


def _invoke(fake: FakeGitHub | None, args: list[str], **env: str | None):
    return CliRunner().invoke(cli, ["github", *args], env=github_env(fake, **env))


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


BAD_TOKENS = {
    "a newline": "ghs_secretTOKEN\n0123456789",
    "a space": "ghs_secretTOKEN 0123456789",
    "a tab": "\tghs_secretTOKEN0123456789",
    "a control character": "ghs_secretTOKEN\x1b[2J0123456789",
}


@pytest.mark.parametrize("what", list(BAD_TOKENS))
@pytest.mark.parametrize("command", ["comment", "drift-issue", "guard", "check-tip"])
def test_a_token_with_whitespace_or_a_control_character_is_refused_by_name(
    fake_github, tmp_path, what, command
):
    token = BAD_TOKENS[what]
    body = tmp_path / "body.md"
    body.write_text("plan", encoding="utf-8")
    plan = tmp_path / "plan.json"
    plan.write_text("{}", encoding="utf-8")
    args = {
        "comment": ["comment", "--pr", "1", "--body-file", str(body)],
        "drift-issue": ["drift-issue", "--exit-code", "2", "--report-file", str(body)],
        "guard": ["guard", "--plan-file", str(plan)],
        "check-tip": ["check-tip", "--sha", "c1" * 20],
    }[command]
    result = _invoke(fake_github, args, GITHUB_TOKEN=token)
    assert result.exit_code == 1
    assert result.output == (
        "Error: GITHUB_TOKEN holds whitespace or a control character (a pasted newline?); "
        "set the value alone\n"
    )
    assert fake_github.requests == []
    for form in (token, repr(token)[1:-1], json.dumps(token)[1:-1], "secretTOKEN"):
        assert form not in result.output


def test_no_form_of_the_token_is_ever_printed(fake_github, tmp_path):
    # A server (or a proxy) that echoes the token back in its error, in every form.
    echoed = f"{TOKEN} / {TOKEN!r} / {json.dumps(TOKEN)} / b'Bearer {TOKEN}'"
    fake_github.fail_with = (500, {"message": echoed})
    result = _drift(fake_github, tmp_path, 2, "report")
    assert result.exit_code == 1
    assert "secretTOKEN" not in result.output
    assert result.output.startswith(f"Error: GitHub API GET /repos/{REPO}/issues: 500 ***")


def test_unreachable_api_is_one_line(tmp_path):
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = _comment(None, tmp_path, "plan", 1, GITHUB_API_URL=f"http://127.0.0.1:{port}")
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: GitHub API GET /repos/{REPO}/issues/1/comments: ")
    assert result.output.count("\n") == 1 and TOKEN not in result.output


def test_errors_through_the_console_script_entry_point(fake_github, tmp_path, monkeypatch, capsys):
    for name, value in github_env(fake_github).items():
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


# Superseded, not applied ----------------------------------------------------------


def test_check_tip(fake_github, tmp_path):
    tip = fake_github.main = "c1" * 20
    current = _invoke(fake_github, ["check-tip", "--sha", tip])
    assert current.exit_code == 0
    assert current.output == f"{tip[:12]} is the tip of main: going ahead.\n"
    fake_github.main = "c2" * 20
    old = _invoke(fake_github, ["check-tip", "--sha", tip])
    assert old.exit_code == 3
    assert old.output == (
        "::notice title=reconciler::Superseded: main moved on to c2c2c2c2c2c2 since this run's "
        "commit c1c1c1c1c1c1; nothing was applied here (the newer run applies).\n"
    )
