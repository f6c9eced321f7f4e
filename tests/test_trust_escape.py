"""Issue 10: no value from a file or the API reaches a terminal, a CI log or a PR comment
raw (ANSI, controls, bidi, workflow commands), and one long value cannot push the other
Projects out of a comment. End to end against a real emulator whose live names are hostile.
"""

from __future__ import annotations

import copy
import io
import json
import re

import gfm
import pytest
from click.testing import CliRunner
from e2e import ALPHA, BETA, DEV_TOKEN, GAMMA, SEED, live, run, write

from reconciler.cli import cli
from reconciler.differ import LiveObjects, diff
from reconciler.emulator import serve
from reconciler.escape import add_secrets, markdown, md_escape, redact, set_secrets, shorten, term
from reconciler.files import Problem
from reconciler.plan import Plan, ProjectPlan, checksum
from reconciler.planfile import plan_from_document, read_plan_file
from reconciler.render import (
    ObjectOutcome,
    Outcome,
    render_apply_markdown,
    render_json,
    render_markdown,
    render_problems_markdown,
)

PID = "fd9b1113-4bd2-4dad-8631-a95ba035dfda"

EVIL = "Evil\n::error title=Apply OK::all good\x1b[2J\x1b]0;pwned\x07\u202egnp.exe\x9b31m"
# Anything a terminal or the GitHub runner would act on.
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def assert_inert(text: str) -> None:
    assert not RAW.search(text), repr(RAW.search(text))
    for line in text.splitlines():
        assert not line.lstrip().startswith(("::", "##[")), line


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("a\x1b[2Jb", "a\\x1b[2Jb"),
        ("line\nnext\r", "line\\nnext\\r"),
        ("\u202eexe.txt", "\\u202eexe.txt"),
        ("\u2066x\u2069\u200e\u200f\u061c", "\\u2066x\\u2069\\u200e\\u200f\\u061c"),
        ("c1\x9b31m\x85", "c1\\x9b31m\\x85"),
        ("::error::boom", "\\x3a:error::boom"),
        ("  ::warning::x", "  \\x3a:warning::x"),
        ("##[error]x", "\\x23#[error]x"),
        ("a::b", "a::b"),
        ("Ünïcödé ✓ 🟡", "Ünïcödé ✓ 🟡"),
    ],
)
def test_term_makes_every_control_visible(raw, shown):
    assert term(raw) == shown


def test_markdown_shortens_one_value_and_puts_it_in_a_code_span():
    assert shorten("x" * 200) == "x" * 200
    assert shorten("x" * 70_000) == "x" * 200 + "… (70,000 characters; the JSON plan has it whole)"
    assert markdown("x" * 70_000) == (
        f"`{'x' * 200}`… (70,000 characters; the JSON plan has it whole)"
    )
    assert markdown("<b>|`\x1b") == "``<b>\\|`\\x1b``"
    assert markdown("<b>|`\x1b", table=False) == "``<b>|`\\x1b``"
    assert markdown("`x") == "`` `x ``" and markdown(" x ") == "`  x  `"
    assert markdown("") == "*(empty)*"


@pytest.fixture
def evil_emu():
    seed = copy.deepcopy(SEED)
    seed["projects"][0]["name"] = EVIL
    seed["projects"][1]["name"] = "B" * 70_000
    with serve(seed) as running:
        yield running


def files(repo):
    write(repo, "projects/alpha.yaml", f"id: {ALPHA}\ndescription: changed\n")
    write(repo, "projects/beta.yaml", f"id: {BETA}\ndescription: changed too\n")
    write(repo, "projects/gamma.yaml", f"id: {GAMMA}\ndescription: also changed\n")


def test_hostile_live_names_reach_no_output_raw(repo, evil_emu, tmp_path):
    files(repo)
    summary = tmp_path / "summary.md"
    env = {"GITHUB_STEP_SUMMARY": str(summary)}
    for fmt in ("text", "markdown", "json"):
        result = run(["plan", "--format", fmt, "--out", "plan.json"], evil_emu, env)
        assert result.exit_code == 0, result.output
        assert_inert(result.stdout + result.stderr)
    assert (
        "~ Evil\\n::error title=Apply OK::all good\\x1b[2J\\x1b]0;pwned\\x07\\u202e"
        in run(["plan"], evil_emu).stdout
    )
    # The JSON plan is data: it keeps the value whole.
    doc = json.loads((repo / "plan.json").read_text())
    assert doc["projects"][0]["name"] == EVIL
    applied = run(["apply", "--plan", "plan.json", "--yes"], evil_emu, env)
    assert applied.exit_code == 0, applied.output
    assert applied.stdout.rstrip().endswith("Apply: 3 applied, 0 unchanged, 0 failed.")
    assert_inert(applied.stdout + applied.stderr)
    assert_inert(summary.read_text())


def test_one_huge_name_does_not_push_the_others_out_of_the_comment(repo, evil_emu):
    files(repo)
    result = run(["plan", "--format", "markdown"], evil_emu)
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert len(text) < 65_000
    assert "Truncated" not in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "🟡" in line]
    assert len(rows) == 3
    assert "B" * 200 + "`… (70,000 characters; the JSON plan has it whole)" in text
    assert "B" * 201 not in text


def test_a_file_name_cannot_start_a_workflow_command(repo):
    write(repo, "projects/::error title=x::boom.yaml", "id: nope\n")
    result = CliRunner().invoke(cli, ["validate"])
    assert result.exit_code == 1
    assert result.stdout.startswith("projects/::error")  # mid-line: inert
    write(repo, "::warning::x.yaml", "id: nope\n")
    result = CliRunner().invoke(cli, ["validate", "::warning::x.yaml"])
    assert result.exit_code == 1
    assert result.stdout.startswith("\\x3a:warning::x.yaml:1:5: id: 'nope' is not a valid UUID")
    assert_inert(result.stdout + result.stderr)


def test_redaction_covers_the_repr_and_json_forms():
    set_secrets(["abc-token\r", "short", None, "ab"])
    try:
        assert redact("Invalid header value b'Bearer abc-token\\r'") == (
            "Invalid header value b'Bearer ***'"
        )
        assert redact('{"token": "abc-token\\r"}') == '{"token": "***"}'
        assert redact("abc-token\r and short") == "*** and ***"
        assert redact("ab stays: too brief to be a secret") == "ab stays: too brief to be a secret"
        add_secrets(["ünï-cödé-secret"])
        assert term("x ünï-cödé-secret \\xfc") == "x *** \\xfc"
    finally:
        set_secrets([])


def test_a_header_the_transport_cannot_send_never_quotes_the_value(emulator):
    import httpx

    from reconciler.transport import PooledTransport

    with httpx.Client(transport=PooledTransport()) as client, pytest.raises(httpx.HTTPError) as err:
        client.get(emulator.api_url + "/version", headers={"authorization": "Bearer abc\rdef"})
    assert "abc" not in str(err.value)


# Markdown can't ping or link ------------------------------------------------------------

# Values GitHub would act on outside a code span, and values that try to escape one.
HOSTILE = [
    pytest.param("@octocat", id="mention"),
    pytest.param("@org/security-team", id="team-mention"),
    pytest.param("https://evil.example/x?a=1", id="url"),
    pytest.param("www.evil.example", id="www"),
    pytest.param("admin@example.com", id="email"),
    pytest.param("#123", id="issue"),
    pytest.param("GH-1", id="gh-ref"),
    pytest.param("owner/repo#1", id="cross-repo"),
    pytest.param("a`b``c", id="backticks"),
    pytest.param("`@octocat`", id="backtick-fenced"),
    pytest.param(" padded @x ", id="spaces"),
    pytest.param("a|b \\| c", id="pipes"),
    pytest.param("<img src=x onerror=alert(1)> </details>", id="html"),
    pytest.param("[click](https://evil.example) ![i](x.png)", id="link"),
    pytest.param("**bold** _it_ :tada: ~~gone~~", id="markup"),
]


def _hostile_plan(value: str) -> Plan:
    """`value` as every kind of value a comment shows: the Project's name, a file path,
    objects to create, change and delete, field values, a setting, and an error."""
    roles = [{"id": f"r{i}", "name": name} for i, name in enumerate((value, f"{value} (old)"))]
    live = {"id": PID, "name": value, "description": value, "fhirVersion": "r4"}
    apps = [{"id": "a1", "name": value, "description": "before"}]
    desired = {
        "id": PID,
        "description": f"not {value}",
        "roles": {f"new {value}": {"description": value}, value: {}},
        "applications": {value: {"description": value, "allowedCallbackUrls": [value]}},
        "prune": ["roles"],
    }
    objects = LiveObjects(
        lists={"role": roles, "application": apps},
        details={"a1": apps[0]},
        roles=roles,
    )
    changed = diff(f"projects/{value}.yaml", desired, live, roles, live_objects=objects)
    assert changed.status == "changed", changed.error
    failed = ProjectPlan.failed(f"projects/{value}-2.yaml", value, f"answered 400: {value}")
    return Plan(api_url=value, projects=(changed, failed), created_at=value, tool=value)


def _comments(value: str) -> dict[str, str]:
    plan = _hostile_plan(value)
    outcomes = [
        Outcome(
            f"projects/{value}.yaml",
            PID,
            "failed",
            error=value,
            name=value,
            objects=(
                ObjectOutcome("role", value, "create", "applied"),
                ObjectOutcome("m2m", value, "update", "failed", error=value),
            ),
        )
    ]
    problems = [Problem(f"projects/{value}.yaml", 1, 1, f"unknown key {value!r}")]
    comments = {}
    for name, render, kwargs in (
        ("plan", render_markdown, {}),
        ("plan summarised", render_markdown, {"limit": _whole(plan) - 1}),
        ("drift", render_markdown, {"drift": True}),
        ("apply", render_apply_markdown, {}),
        ("problems", render_problems_markdown, {}),
    ):
        fh = io.StringIO()
        render(
            outcomes if name == "apply" else problems if name == "problems" else plan, fh, **kwargs
        )
        comments[name] = fh.getvalue()
    return comments


def _whole(plan: Plan) -> int:
    fh = io.StringIO()
    render_markdown(plan, fh)
    return len(fh.getvalue())


@pytest.mark.parametrize("value", HOSTILE)
def test_no_value_in_a_comment_can_mention_link_or_reference(value):
    plain = {name: gfm.render(text) for name, text in _comments("v" * len(value)).items()}
    for name, text in _comments(value).items():
        page = gfm.render(text)
        assert page.pings() == [], (name, page.pings())
        assert any(value in code for code in page.codes), name  # whole, exactly as it is
        if name != "plan summarised":  # (its sizes differ, so may its summaries)
            # No markup, HTML, link or broken table: the same elements as a plain value.
            assert page.tags == plain[name].tags, name
            assert _shape(page) == _shape(plain[name]), name
    assert "Summarised" in _comments(value)["plan summarised"]


def _shape(page: gfm.Rendered) -> list[list[int]]:
    """Each table's cells per row."""
    return [[len(row) for row in table] for table in page.tables]


def test_our_own_text_quoting_a_value_is_neutralised():
    text = md_escape("merged by @octocat in owner/repo#12 (GH-3), see https://x.example or www.y.z")
    page = gfm.render(text)
    assert page.pings() == []
    assert "".join(page.outside).replace("\u2060", "").strip() == (
        "merged by @octocat in owner/repo#12 (GH-3), see https://x.example or www.y.z"
    )


def test_hostile_live_names_cannot_ping_from_a_pr_comment(repo):
    """End to end: a Project, its roles and an application named to ping and link."""
    seed = copy.deepcopy(SEED)
    alpha = seed["projects"][0]
    alpha["name"] = "@org/security-team see #123"
    alpha["roles"] += [{"name": "https://evil.example/@admin"}, {"name": "GH-1 owner/repo#2"}]
    alpha["applications"] = [
        {"name": "www.evil.example", "allowedCallbackUrls": ["https://evil.example/cb"]}
    ]
    write(
        repo,
        "projects/alpha.yaml",
        f"""\
        id: {ALPHA}
        description: ping @octocat
        roles:
          Patient: {{}}
          Admin: {{}}
          "@new-role": {{description: "admin@example.com"}}
        applications:
          www.evil.example: {{description: "#7"}}
        prune: [roles]
        """,
    )
    with serve(seed) as emu:
        for command in ("plan", "drift"):
            result = run([command, "--format", "markdown"], emu)
            assert result.exit_code in (0, 2), result.output
            page = gfm.render(result.stdout)
            assert page.pings() == []
            for shown in (
                "@org/security-team see #123",
                "https://evil.example/@admin",
                "GH-1 owner/repo#2",
                "@new-role",
                "admin@example.com",
                "www.evil.example",
            ):
                assert shown in page.codes or f'"{shown}"' in page.codes, (command, shown)


# Redaction before serialising -----------------------------------------------------------


def test_a_credential_in_a_live_value_is_redacted_everywhere_and_the_plan_file_verifies(
    repo, tmp_path
):
    seed = copy.deepcopy(SEED)
    seed["projects"][0]["description"] = f"the token is {DEV_TOKEN}!"
    write(repo, "projects/alpha.yaml", f"id: {ALPHA}\ndescription: rotated\n")
    summary = tmp_path / "summary.md"
    env = {"GITHUB_STEP_SUMMARY": str(summary)}
    with serve(seed) as emu:
        for fmt, shown in (
            ("text", 'description: "the token is ***!" -> "rotated"'),
            ("markdown", '| `description` | `"the token is ***!"` | `"rotated"` |'),
            ("json", '"before": "the token is ***!"'),
        ):
            result = run(["plan", "--format", fmt, "--out", "plan.json"], emu, env)
            assert result.exit_code == 0, result.output
            assert shown in result.stdout, fmt
            assert DEV_TOKEN not in result.output
            saved = (repo / "plan.json").read_text()
            assert DEV_TOKEN not in saved and '"before": "the token is ***!"' in saved
        assert DEV_TOKEN not in summary.read_text()
        # The checksum was made over the redacted values: the plan file verifies.
        plan = read_plan_file("plan.json")
        assert plan.projects[0].changes[0].before == "the token is ***!"
        applied = run(["apply", "--plan", "plan.json", "--yes"], emu)
        assert applied.exit_code == 0, applied.output
        assert DEV_TOKEN not in applied.output
        assert live(emu, ALPHA)["description"] == "rotated"


def test_redaction_works_on_values_and_leaves_hashes_whole():
    plan = Plan(
        api_url="http://api/v1",
        projects=(
            diff("p.yaml", {"id": PID, "description": "x"}, {"id": PID, "description": "k3y-abc"}),
        ),
        commit="0123456789abcdef0123456789abcdef01234567",
    )
    doc = plan.to_dict()
    set_secrets(["k3y-abc", doc["checksum"][7:15], doc["projects"][0]["liveFingerprint"][7:15]])
    try:
        fh = io.StringIO()
        render_json(plan, fh)
    finally:
        set_secrets([])
    saved = json.loads(fh.getvalue())
    assert saved["projects"][0]["changes"][0]["before"] == "***"
    # Hashes are never redacted (a run of hex digits is no credential, and cutting one
    # would break it); the checksum covers the redacted document.
    assert saved["projects"][0]["liveFingerprint"] == doc["projects"][0]["liveFingerprint"]
    assert saved["checksum"] == checksum(saved)
    assert plan_from_document(saved).projects[0].changes[0].before == "***"
