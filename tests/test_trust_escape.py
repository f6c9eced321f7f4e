"""Issue 10: no value from a file or the API reaches a terminal, a CI log or a PR comment
raw (ANSI, controls, bidi, workflow commands), and one long value cannot push the other
Projects out of a comment. End to end against a real emulator whose live names are hostile.
"""

from __future__ import annotations

import copy
import json
import re

import pytest
from click.testing import CliRunner
from e2e import ALPHA, BETA, GAMMA, SEED, run, write

from reconciler.cli import cli
from reconciler.emulator import serve
from reconciler.escape import add_secrets, markdown, redact, set_secrets, shorten, term

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


def test_markdown_shortens_one_value_and_escapes_it():
    assert shorten("x" * 200) == "x" * 200
    assert shorten("x" * 70_000) == "x" * 200 + "… (70,000 characters; the JSON plan has it whole)"
    assert markdown("<b>|`\x1b") == "&lt;b&gt;\\|&#96;\\\\x1b"


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
    assert "B" * 200 + "… (70,000 characters; the JSON plan has it whole)" in text
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
