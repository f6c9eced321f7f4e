"""Options shared by several commands, each defined once (as pip-tools does).

`connection_options` is what any command that talks to the API takes;
`api_options` adds the output options; `fleet_options` the Project selection of
plan, apply and drift.
"""

from __future__ import annotations

from collections.abc import Callable

import click

from reconciler.urls import DEFAULT_API_URL, DEFAULT_AUTH_URL


def stack(*decorators: Callable) -> Callable:
    """Apply several click decorators as one, so each option is defined once."""

    def wrap(fn: Callable) -> Callable:
        for decorator in reversed(decorators):
            fn = decorator(fn)
        return fn

    return wrap


def format_option(choices: list[str], help: str, default: str = "text") -> Callable:
    return click.option(
        "--format", "fmt", type=click.Choice(choices), default=default, show_default=True, help=help
    )


paths_argument = click.argument("paths", nargs=-1, type=click.Path(path_type=str))

root_option = click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=str),
    default=None,
    help="Repository root that included fragments must lie in "
    "(default: git's top level, else the parent of projects/).",
)

connection_options = stack(
    click.option(
        "--api-url",
        envvar="OYSTEHR_PROJECT_API_URL",
        default=DEFAULT_API_URL,
        show_default=True,
        help="Project API base URL (env OYSTEHR_PROJECT_API_URL).",
    ),
    click.option(
        "--auth-url",
        envvar="OYSTEHR_AUTH_URL",
        default=DEFAULT_AUTH_URL,
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
)

api_options = stack(
    connection_options,
    click.option("--no-color", is_flag=True, help="No colour (also NO_COLOR)."),
    click.option(
        "-v",
        "--verbose",
        is_flag=True,
        help="Log each request to stderr, and where the request limit ended.",
    ),
    click.option("-q", "--quiet", is_flag=True, help="Print only the result."),
)

fleet_options = stack(
    click.option(
        "--concurrency",
        type=click.IntRange(min=1, max=256),
        default=8,
        show_default=True,
        help="Requests in flight at once, for the whole run (token requests included).",
    ),
    click.option(
        "--project",
        "project_filters",
        multiple=True,
        metavar="ID_OR_STEM",
        help="Only this Project (exact id or file stem); repeatable. All files still validate.",
    ),
    click.option(
        "--shard",
        metavar="I/N",
        default=None,
        help="Only shard I of N (1-based), split by sha256 of the Project id.",
    ),
)

rotate_option = click.option(
    "--rotate",
    multiple=True,
    metavar="PROJECT_ID:SECRET_NAME",
    help="Rotate the existing M2M client whose clientSecret this secret holds, and store "
    "its new secret in every secret naming it; repeatable. Breaks every other holder of "
    "the old secret. Never the client the run authenticates as.",
)
