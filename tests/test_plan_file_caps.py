"""Plan files are bounded: over 64 MB, or nested deeper than 64 levels, a plan file is
refused before it is parsed, with one line and no traceback, by `apply --plan` and by
`github guard` alike (SPEC section 10). So is one holding more than 8 million values,
which would take gigabytes once parsed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from e2e import run

from reconciler.cli import cli
from reconciler.planfile import MAX_PLAN_DEPTH, _punctuation, nesting_depth, read_plan_json

MB = 2**20


def _big(path: Path) -> Path:
    """A 66 MB JSON document: a plan-shaped head, then one long string."""
    head = b'{"formatVersion": 2, "projects": [], "pad": "'
    with open(path, "wb") as fh:
        fh.write(head + b"x" * (66 * MB - len(head) - 2) + b'"}')
    return path


def _deep(path: Path, depth: int, opener: str) -> Path:
    """`[[[…1…]]]` or `{"a": {"a": …1…}}`, `depth` levels."""
    inner, closer = ("[", "]") if opener == "[" else ('{"a": ', "}")
    path.write_text(inner * depth + "1" + closer * depth, encoding="utf-8")
    return path


def _apply(emu, plan: Path):
    return run(["apply", "--plan", str(plan), "--yes"], emu)


def _guard(plan: Path):
    env = {"GITHUB_TOKEN": None, "GITHUB_REPOSITORY": "acme/settings", "GITHUB_SHA": None}
    return CliRunner().invoke(cli, ["github", "guard", "--plan-file", str(plan)], env=env)


@pytest.mark.parametrize("command", ["apply", "guard"])
def test_a_plan_file_over_64_mb_is_refused_before_it_is_read(emu, tmp_path, command):
    plan = _big(tmp_path / "plan.json")
    before = emu.stats()
    result = _apply(emu, plan) if command == "apply" else _guard(plan)
    assert result.exit_code == 1
    assert result.output == (
        f"Error: {plan}: not a valid plan file: 66.0 MB, over the 64 MB a plan file may hold\n"
    )
    assert emu.stats() == before  # not one request


@pytest.mark.parametrize("command", ["apply", "guard"])
@pytest.mark.parametrize("opener", ["[", "{"])
def test_a_plan_file_nested_5000_deep_is_refused_before_it_is_parsed(
    emu, tmp_path, command, opener
):
    plan = _deep(tmp_path / "plan.json", 5_000, opener)
    result = _apply(emu, plan) if command == "apply" else _guard(plan)
    assert result.exit_code == 1
    assert result.output == (
        f"Error: {plan}: not a valid plan file: nested deeper than 64 levels\n"
    )


def test_a_device_that_never_ends_is_read_no_further_than_the_cap(emu):
    result = _apply(emu, Path("/dev/zero"))
    assert result.exit_code == 1
    assert result.output == (
        "Error: /dev/zero: not a valid plan file: 64.0 MB, over the 64 MB a plan file may hold\n"
    )


def test_millions_of_tiny_values_are_refused_before_they_are_parsed(emu, tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_bytes(b"[" + b'"a",' * 9_000_000 + b'"a"]')  # 36 MB: gigabytes once parsed
    result = _apply(emu, plan)
    assert result.exit_code == 1
    assert result.output == (
        f"Error: {plan}: not a valid plan file: about 9,000,001 values, over the 8,388,608 a "
        "plan file may hold\n"
    )


def test_strings_that_cross_the_scan_chunks_are_still_strings():
    text = b'["a[[[", "b]]", {"c": "[{"}, [1]]'
    for chunk in range(1, len(text) + 1):
        assert _punctuation(text, chunk) == b"[,,{},[]]", chunk


def test_64_levels_are_read_and_65_are_refused(tmp_path):
    at_cap = tmp_path / "64.json"
    at_cap.write_text("[" * 64 + "]" * 64, encoding="utf-8")
    assert nesting_depth(at_cap.read_bytes()) == MAX_PLAN_DEPTH
    assert read_plan_json(str(at_cap)) == json.loads(at_cap.read_text())
    over = tmp_path / "65.json"
    over.write_text('{"a": ' * 65 + "1" + "}" * 65, encoding="utf-8")
    with pytest.raises(Exception, match="nested deeper than 64 levels"):
        read_plan_json(str(over))


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ("{}", 1),
        ('{"a": [1, {"b": []}]}', 4),
        ('["[[[[", "]]", "\\"[[", "\\\\", [[]]]', 3),  # brackets in strings do not count
        ('{"k\\\\": "\\\\\\"{{{"}', 1),  # escaped backslashes before an escaped quote
        ("", 0),
    ],
)
def test_nesting_depth_counts_only_brackets_outside_strings(text, depth):
    assert nesting_depth(text.encode()) == depth
