"""Every command has --help text, and --version works."""

import pytest
from click.testing import CliRunner

from reconciler import __version__
from reconciler.cli import cli


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"reconciler, version {__version__}"


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_every_command_has_help(name):
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert len(cli.commands[name].help or "") > 20
