"""The command line: parse, call the library, render, choose the exit code.

Exit codes are an API (SPEC section 4): 0 ok, 1 any error or usage error,
2 only "there are changes" (plan --detailed-exitcode) or "there is drift".
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable

import click

from reconciler import __version__
from reconciler.errors import ReconcilerError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CHANGES = 2


def _stack(*decorators: Callable) -> Callable:
    """Apply several click decorators as one, so each option is defined once."""

    def wrap(fn: Callable) -> Callable:
        for decorator in reversed(decorators):
            fn = decorator(fn)
        return fn

    return wrap


paths_argument = click.argument("paths", nargs=-1, type=click.Path(path_type=str))

api_options = _stack(
    click.option(
        "--api-url",
        envvar="OYSTEHR_PROJECT_API_URL",
        default="https://project-api.zapehr.com/v1",
        show_default=True,
        help="Project API base URL (env OYSTEHR_PROJECT_API_URL).",
    ),
    click.option(
        "--auth-url",
        envvar="OYSTEHR_AUTH_URL",
        default="https://auth.zapehr.com/oauth/token",
        show_default=True,
        help="OAuth token endpoint (env OYSTEHR_AUTH_URL).",
    ),
    click.option(
        "--timeout",
        type=click.FloatRange(min=0.1),
        default=30.0,
        show_default=True,
        help="Seconds per request.",
    ),
    click.option(
        "--retries",
        type=click.IntRange(min=0),
        default=4,
        show_default=True,
        help="Retries on 408/5xx and connection errors (exponential backoff with jitter).",
    ),
    click.option("--no-color", is_flag=True, help="No colour (also NO_COLOR)."),
    click.option("-v", "--verbose", is_flag=True, help="Log each request to stderr."),
    click.option("-q", "--quiet", is_flag=True, help="Print only the result."),
)

fleet_options = _stack(
    click.option(
        "--concurrency",
        type=click.IntRange(min=1, max=256),
        default=8,
        show_default=True,
        help="Projects in flight at once.",
    ),
    click.option(
        "--project",
        "project_filters",
        multiple=True,
        metavar="ID_OR_STEM",
        help="Only this Project (exact id or file stem); repeatable. Every file is still validated.",
    ),
    click.option(
        "--shard",
        metavar="I/N",
        default=None,
        help="Only shard I of N (1-based), split by sha256 of the Project id.",
    ),
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="reconciler")
def cli() -> None:
    """GitOps for Oystehr Project settings.

    One YAML file per Project under projects/, validated offline, planned
    against the live API, applied as the smallest PATCH.

    \b
      reconciler validate projects
      reconciler plan --format markdown
      reconciler apply --yes
    """


@cli.command()
@paths_argument
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text: one FILE:LINE:COL line per problem; json: {\"problems\": [...]}.",
)
def validate(paths: tuple[str, ...], fmt: str) -> None:
    """Check project files offline: YAML, duplicate keys, ${VAR}, schema, duplicate ids.

    Prints every problem as FILE:LINE:COL: message and exits 1 if there is any.
    No network, no credentials.

    \b
      reconciler validate                  # everything under projects/
      reconciler validate projects/prod.yaml --format json
    """
    from reconciler.files import load_projects

    result = load_projects(paths or ("projects",))
    if fmt == "json":
        doc = {"problems": [problem.to_dict() for problem in result.problems]}
        click.echo(json.dumps(doc, indent=2))
    else:
        for problem in result.problems:
            click.echo(str(problem))
    files = result.files_read
    if result.problems:
        failing = len({problem.file for problem in result.problems})
        click.echo(
            f"{_count(len(result.problems), 'problem')} in {_count(failing, 'file')} "
            f"({_count(files, 'file')} checked).",
            err=True,
        )
        raise SystemExit(EXIT_ERROR)
    click.echo(f"{_count(files, 'file')} valid.", err=True)


@cli.command()
def schema() -> None:
    """Print the JSON Schema of a project file (JSON Schema 2020-12).

    \b
      reconciler schema > schemas/project.schema.json
    """
    from reconciler.schema import schema_text

    click.echo(schema_text(), nl=False)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port; 0 picks a free one.")
@click.option("--db", type=click.Path(dir_okay=False), default=None,
              help="SQLite file that survives restarts (default: in memory).")
@click.option("--seed", type=click.Path(dir_okay=False), default=None,
              help="YAML of Projects, roles, M2M clients and Developers to load.")
@click.option("--quiet", is_flag=True, help="No request log on stderr.")
@click.option("--latency-ms", type=click.IntRange(min=0), default=0,
              help="Added to every /v1 and /oauth request.")
@click.option("--error-rate", type=click.FloatRange(0.0, 1.0), default=0.0,
              help="Share of /v1 and /oauth requests answered 503.")
@click.option("--rate-limit-every", type=click.IntRange(min=0), default=0,
              help="Every Nth /v1 or /oauth request answers 429 with Retry-After: 1.")
@click.option("--fault-seed", type=int, default=None, help="Seed that makes faults repeatable.")
def emulator(**options) -> None:
    """Run a local Oystehr Project Service (the emulator).

    The first line on stdout is its base URL, so --port 0 works in scripts.

    \b
      reconciler emulator --port 0 --seed seed.yaml --latency-ms 20
    """
    from reconciler.emulator import run_cli

    run_cli(**options)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def main(argv: list[str] | None = None) -> None:
    """Entry point: usage errors exit 1 (never 2), ours print one line and exit 1."""
    if os.environ.get("NO_COLOR"):
        os.environ.setdefault("RECONCILER_NO_COLOR", "1")
    try:
        code = cli.main(args=argv, prog_name="reconciler", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        code = EXIT_ERROR
    except click.exceptions.ClickException as exc:
        exc.show()
        code = EXIT_ERROR
    except ReconcilerError as exc:
        click.echo(f"Error: {exc}", err=True)
        code = EXIT_ERROR
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        code = 130
    except SystemExit as exc:
        code = exc.code
    sys.exit(code if isinstance(code, int) else 0)
