"""Start-up stays light: `--version`, `--help` and `validate` of valid files never import
the HTTP client, DeepDiff, jsonschema or the emulator (a pre-commit hook runs validate on
every commit); the commands loaded lazily still show their help."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from reconciler.cli import LAZY_COMMANDS, cli

ID = "fd9b1113-4bd2-4dad-8631-a95ba035dfda"
HEAVY = ("httpx", "deepdiff", "jsonschema", "reconciler.emulator", "reconciler.client")


def loaded_after(code: str) -> list[str]:
    script = (
        "import sys\n"
        f"{code}\n"
        f"heavy = {HEAVY!r}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m in heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    return eval(result.stdout)


def test_importing_the_cli_imports_no_heavy_dependency():
    assert loaded_after("import reconciler.cli") == []


def test_help_and_validate_of_a_valid_file_import_no_heavy_dependency(tmp_path):
    (tmp_path / "one.yaml").write_text(f"id: {ID}\nname: One\n", encoding="utf-8")
    code = (
        "from click.testing import CliRunner\n"
        "from reconciler.cli import cli\n"
        "assert CliRunner().invoke(cli, ['--help']).exit_code == 0\n"
        f"result = CliRunner().invoke(cli, ['validate', {str(tmp_path / 'one.yaml')!r}])\n"
        "assert result.exit_code == 0, result.output\n"
    )
    assert loaded_after(code) == []


def test_an_invalid_file_still_gets_jsonschema_s_findings(tmp_path):
    (tmp_path / "one.yaml").write_text(f"id: {ID}\nsignupEnabled: yes\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["validate", str(tmp_path / "one.yaml")])
    assert result.exit_code == 1
    assert "signupEnabled: expected a boolean, got string 'yes'" in result.stdout


def test_the_lazy_commands_help_lines_are_their_own():
    runner = CliRunner()
    listed = runner.invoke(cli, ["--help"]).stdout
    for name, (_, _, summary) in LAZY_COMMANDS.items():
        command = cli.get_command(None, name)
        assert command.help.split("\n")[0] == summary
        assert f"  {name} " in listed
        assert runner.invoke(cli, [name, "--help"]).exit_code == 0
