"""Every command has --help text, and --version works."""

import click
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


# A long option has the same short flag wherever it appears.
SHORT = {"--out": "-o", "--output": "-o", "--quiet": "-q", "--verbose": "-v", "--yes": "-y"}


def _command(group: click.Group, name: str) -> click.Command:
    """A command by name, loading it if the group loads it lazily."""
    command = group.get_command(click.Context(group), name)
    assert command is not None, name
    return command


def _commands(group: click.Group = cli, prefix: str = ""):
    for name in group.list_commands(click.Context(group)):
        command = _command(group, name)
        if isinstance(command, click.Group):
            yield from _commands(command, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", command


@pytest.mark.parametrize(("name", "command"), list(_commands()), ids=lambda v: str(v))
def test_short_flags_are_the_same_everywhere(name, command):
    for param in command.params:
        for long in param.opts:
            if long in SHORT:
                assert SHORT[long] in param.opts, f"{name} {long}"


@pytest.mark.parametrize("name", ["plan", "apply", "drift", "export", "init"])
def test_every_command_that_talks_to_the_api_has_v_q_and_no_color(name):
    opts = {opt for param in _command(cli, name).params for opt in param.opts}
    assert {"-v", "--verbose", "-q", "--quiet", "--no-color", "--api-url", "--auth-url"} <= opts


# How help texts name each kind (lower case, singular: "roles" contains "role").
KIND_WORDS = {"m2m": "m2m client", "zambda": "zambda function"}


@pytest.mark.parametrize("args", [[], ["apply"], ["export"], ["drift"]], ids=" ".join)
def test_help_that_says_what_is_managed_names_every_kind(args):
    from reconciler.kinds import KINDS

    result = CliRunner().invoke(cli, [*args, "--help"], terminal_width=200)
    assert result.exit_code == 0
    text = " ".join(result.output.lower().split())
    for kind in KINDS:
        assert KIND_WORDS.get(kind.name, kind.name) in text, (args, kind.name)


def test_export_include_lists_every_word_it_takes():
    from reconciler.export import INCLUDE_WORDS

    result = CliRunner().invoke(cli, ["export", "--help"], terminal_width=200)
    assert ",".join(INCLUDE_WORDS) in result.output
