"""The command line: parsing and wiring only. Each command's logic is in
`commands.py` (which returns the exit code) or its own module.

Exit codes are an API (SPEC section 4): 0 ok, 1 any error or usage error,
2 only "there are changes" (plan --detailed-exitcode) or "there is drift".
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import threading
from collections.abc import Callable

import click

from reconciler import __version__
from reconciler.commands import EXIT_ERROR, EXIT_OK
from reconciler.errors import ReconcilerError
from reconciler.escape import CREDENTIAL_VARIABLES, set_secrets, term
from reconciler.options import (
    api_options,
    fleet_options,
    format_option,
    paths_argument,
    root_option,
    rotate_option,
    stack,
)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


# Commands whose modules are imported only when they run (start-up time: `--help`,
# `--version` and `validate` should not pay for httpx): name -> (module, attribute, the
# first line of its help, shown by `--help`; a test holds it equal to the command's).
LAZY_COMMANDS = {
    "github": (
        "reconciler.github",
        "github",
        "Talk to GitHub for the workflows: the plan comment, the drift issue, the guard.",
    ),
    "init": (
        "reconciler.init",
        "init",
        "Set up a settings repository: project files, schemas, workflows, pre-commit.",
    ),
}


class ReconcilerGroup(click.Group):
    """Exit codes as SPEC section 4 wants them: usage errors exit 1 (never 2, which means
    "changes"), and our errors print one `Error: ...` line and exit 1, never a traceback.

    The commands of LAZY_COMMANDS are loaded when they are run (or asked for by name)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY_COMMANDS and name not in self.commands:
            import importlib

            module, attribute, _ = LAZY_COMMANDS[name]
            self.add_command(getattr(importlib.import_module(module), attribute), name)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list, without importing the lazy commands for their help line."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            if name in LAZY_COMMANDS and name not in self.commands:
                placeholder = click.Command(name, help=LAZY_COMMANDS[name][2])
                rows.append((name, placeholder.get_short_help_str(limit)))
                continue
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def main(self, *args, **kwargs):  # type: ignore[override]
        kwargs["standalone_mode"] = False
        # Known before anything can print: every credential value is redacted from output.
        set_secrets(os.environ.get(name) for name in CREDENTIAL_VARIABLES)
        previous = None
        if threading.current_thread() is threading.main_thread():
            # SIGTERM (CI cancelling a job) stops like Ctrl-C: apply finishes the writes in
            # flight, starts no more, and reports what was and was not applied.
            previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            code = super().main(*args, **kwargs)
        except (click.exceptions.Abort, KeyboardInterrupt):
            # click turns Ctrl-C (and our SIGTERM) into Abort; either way, stop with exit 1.
            click.echo("Interrupted; nothing more was started.", err=True)
            code = EXIT_ERROR
        except click.exceptions.ClickException as exc:
            exc.show()
            code = EXIT_ERROR
        except ReconcilerError as exc:
            click.echo(f"Error: {term(exc)}", err=True)
            code = EXIT_ERROR
        except Exception as exc:  # a bug: still one line, still redacted, never a traceback
            click.echo(
                f"Error: unexpected {type(exc).__name__}: {term(exc)} (a bug in reconciler; "
                "please report it)",
                err=True,
            )
            code = EXIT_ERROR
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        sys.exit(code if isinstance(code, int) else EXIT_OK)


@click.group(cls=ReconcilerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="reconciler")
def cli() -> None:
    """GitOps for Oystehr Projects: the whole Project as YAML in Git.

    Settings, roles, applications, M2M clients, secrets, buckets and Zambda
    functions: one YAML file per Project under projects/ (sharing fragments
    through include:), validated offline, planned against the live API, applied
    as the smallest writes in dependency order.

    \b
      reconciler validate projects
      reconciler plan --format markdown
      reconciler apply --yes
    """


@cli.command()
@paths_argument
@root_option
@format_option(
    ["text", "json"], 'text: one FILE:LINE:COL line per problem; json: {"problems": [...]}.'
)
def validate(paths: tuple[str, ...], root: str | None, fmt: str) -> None:
    """Check project files offline: YAML, duplicate keys, ${VAR}, includes, schema, ids.

    Prints every problem as FILE:LINE:COL: message and exits 1 if there is any;
    a problem in an included fragment is located in the fragment and names the
    files that include it. Warns (stderr) about unused vars and fragments no
    Project includes. No network, no credentials.

    \b
      reconciler validate                  # everything under projects/
      reconciler validate projects/prod.yaml --format json
    """
    from reconciler import commands

    raise SystemExit(commands.validate(paths, fmt, root))


def _plan_command(fn: Callable) -> Callable:
    return stack(paths_argument, root_option, api_options, fleet_options)(fn)


@cli.command()
@_plan_command
@format_option(
    ["text", "markdown", "json"],
    "text for a terminal, markdown for a PR comment, json for machines.",
)
@click.option(
    "--out",
    "-o",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Also save the plan as JSON, for `apply --plan`.",
)
@click.option(
    "--detailed-exitcode",
    is_flag=True,
    help="Exit 2 when the plan succeeded and apply has something to do (changes, or "
    "secret values to compare).",
)
@rotate_option
def plan(paths, fmt, out, detailed_exitcode, **options) -> None:
    """Show what apply would change: files vs the live Projects.

    Validates every file (any problem stops the run before any output or
    write), reads each Project as soon as its file is valid (and the lists and
    objects its file manages, no more), and prints the changes. Secret values
    are never shown: credentials that may not read them (plan's) say `value
    compared at apply`. Exit 0 ok, 1 any error, 2 with --detailed-exitcode
    when something would change or a secret's value is compared at apply.

    \b
      reconciler plan
      reconciler plan --format markdown --out plan.json
      reconciler plan --project sandbox --detailed-exitcode
    """
    from reconciler import commands

    raise SystemExit(commands.plan(commands.Run(options), paths, fmt, out, detailed_exitcode))


@cli.command()
@_plan_command
@format_option(
    ["text", "markdown", "json"], "text for a terminal, markdown for an issue, json for machines."
)
def drift(paths, fmt, **options) -> None:
    """Report Projects whose live settings or objects no longer match their files.

    The plan's read-only comparison, read live -> file, for the settings and
    the roles, applications, M2M clients, secrets, buckets and Zambda functions
    the files manage. A secret whose value these credentials may not read is
    not drift: the next apply compares it. Exit 0 no drift, 2 drift, 1 any
    error (an error wins over drift; the report still prints).

    \b
      reconciler drift --format markdown > drift.md
    """
    from reconciler import commands

    raise SystemExit(commands.drift(commands.Run(options), paths, fmt))


@cli.command()
@_plan_command
@click.option(
    "--plan",
    "plan_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Apply this saved plan (from `plan --out`) instead of planning PATHS.",
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask; needed when there is no terminal.")
@click.option(
    "--max-changes",
    type=click.IntRange(min=0),
    default=None,
    help="Refuse, before any write, a plan of more than N writes (PATCHes and object writes).",
)
@format_option(
    ["text", "json"],
    "Format of the result: per Project applied, unchanged, failed, unknown, skipped or blocked.",
)
@rotate_option
@click.option(
    "--allow-bucket-deletes",
    is_flag=True,
    envvar="RECONCILER_ALLOW_BUCKET_DELETES",
    help="Delete the buckets prune would delete, and every object in them (without it, "
    "those deletes are blocked and apply exits 1 after the other writes). Also "
    "RECONCILER_ALLOW_BUCKET_DELETES=true (apply.yml's dispatch input).",
)
def apply(paths, plan_file, yes, max_changes, fmt, allow_bucket_deletes, **options) -> None:
    """Plan, show the plan, then write what changed.

    Per Project: roles, applications, M2M clients, secrets, buckets, Zambda
    functions (creates, updates, renames; then functions' code), then the
    settings PATCH, then deletes. Every secret value it writes must be in
    hand first (RECONCILER_SECRET_… set), and a value compared at apply is
    written only if it differs. Asks `Apply? [y/N]` on a terminal; --yes
    skips the question; without a terminal and without --yes it refuses and
    writes nothing. With --plan it applies a reviewed plan, run where it was
    made (the repository root): it refuses before any write if the file is
    not a consistent plan, has errors, was made for another API or at another
    commit, is not what the project files and the live Projects give (re-read
    once, planned again), or anything it changes
    changed since (stale); what it shows and writes is what it verified.
    Exit 0 all applied (or nothing to do), 1 anything failed, refused,
    blocked or interrupted.

    \b
      reconciler apply --yes
      reconciler plan --out plan.json && reconciler apply --plan plan.json --yes
    """
    from reconciler import commands

    if plan_file and paths:
        raise click.UsageError("give either --plan or PATHS, not both")
    if plan_file and (options.get("project_filters") or options.get("shard")):
        raise click.UsageError("--project and --shard choose among PATHS, not in a saved plan")
    run = commands.Run(options)
    allow = frozenset({"--allow-bucket-deletes"} if allow_bucket_deletes else ())
    raise SystemExit(commands.apply(run, paths, plan_file, yes, max_changes, fmt, allow))


@cli.command()
@click.option("--project-id", required=True, help="The Project to export.")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write here instead of stdout.",
)
@click.option("--force", is_flag=True, help="Overwrite --output if it exists.")
@click.option(
    "--include",
    default=None,
    metavar="WORDS",
    help=(
        "Only these, comma-separated: settings,roles,applications,m2mClients,secrets,"
        "buckets,zambdas (default: all)."
    ),
)
@api_options
def export(project_id, output, force, include, **options) -> None:
    """Write a project file from a live Project (bring it under management).

    Settings, then every role (with its policy), application, M2M client (with
    role names), secret (as valueFrom: {env: SLUG_NAME}: a value is never read),
    bucket and Zambda function (its configuration, not its code); never prune.
    Uses OYSTEHR_ACCESS_TOKEN, or OYSTEHR_CLIENT_ID + OYSTEHR_CLIENT_SECRET.
    Planning the exported file shows no change. Over the project file of the
    same Project, --output keeps its leading comments and auth block; a file
    with include is never overwritten.

    \b
      reconciler export --project-id fd9b1113-... --output projects/sandbox.yaml
      reconciler export --project-id fd9b1113-... --include settings,roles
    """
    from reconciler import commands

    raise SystemExit(commands.export(commands.Run(options), project_id, output, force, include))


@cli.command()
def demo() -> None:
    """Show the whole job on an embedded emulator: validate to drift.

    Starts an emulator on a free port with bundled example Projects, copies
    the example project files, their shared base and a Zambda function's
    source to a temporary folder and runs the real commands there: validate,
    render, compare, build the function's zip, plan, apply, drift, then drift
    again after a change made by hand. Touches nothing else; needs no account.

    \b
      reconciler demo
    """
    from reconciler.demo import run_demo

    raise SystemExit(run_demo())


@cli.command()
@click.option(
    "--fragment", is_flag=True, help="The schema of a fragment (a file project files include)."
)
def schema(fragment: bool) -> None:
    """Print the JSON Schema of a project file (JSON Schema 2020-12).

    \b
      reconciler schema > schemas/project.schema.json
      reconciler schema --fragment > schemas/fragment.schema.json
    """
    from reconciler.schema import fragment_schema_text, schema_text

    click.echo(fragment_schema_text() if fragment else schema_text(), nl=False)


@cli.command()
@paths_argument
@root_option
@format_option(
    ["yaml", "json"],
    'yaml with a source comment per key; json: {"file", "document", "sources"}.',
    default="yaml",
)
def render(paths: tuple[str, ...], root: str | None, fmt: str) -> None:
    """Print each Project's effective document: what plan compares.

    Its file with every included fragment merged in and ${...} substituted, keys
    in the schema's order, objects by name, each top-level key under a comment
    naming the file and line it comes from. Secret values are never shown.
    Offline: no network, no credentials.

    \b
      reconciler render projects/staging.yaml
      reconciler render projects/staging.yaml --format json
    """
    from reconciler import effective

    raise SystemExit(effective.render(paths, fmt, root))


@cli.command()
@click.argument("a", type=click.Path(path_type=str))
@click.argument("b", type=click.Path(path_type=str))
@root_option
@click.option("--raw", is_flag=True, help="Compare before ${...} substitution.")
@format_option(["text", "json"], "text: one line per difference; json for machines.")
@click.option("--detailed-exitcode", is_flag=True, help="Exit 2 when the two Projects differ.")
def compare(a, b, root, raw, fmt, detailed_exitcode) -> None:
    """Show what differs between two Projects' effective documents, offline.

    What promoting A's configuration to B would change: settings, objects and
    their fields (policies as rules), prune; id, auth and vars aside. `-` is
    only in A, `+` only in B, `~` in both with another value. Secret values are
    never shown, only that they differ. Exit 0 (1 on a problem; with
    --detailed-exitcode, 2 when they differ).

    \b
      reconciler compare projects/staging.yaml projects/production.yaml
      reconciler compare projects/staging.yaml projects/production.yaml --raw
    """
    from reconciler import effective

    raise SystemExit(
        effective.compare(a, b, raw=raw, fmt=fmt, detailed=detailed_exitcode, root=root)
    )


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    help="Port; 0 picks a free one.",
)
@click.option(
    "--db",
    type=click.Path(dir_okay=False),
    default=None,
    help="SQLite file that survives restarts (default: in memory).",
)
@click.option(
    "--seed",
    type=click.Path(dir_okay=False),
    default=None,
    help="YAML of Projects (with their objects) and Developers to load; 'demo': the demo's.",
)
@click.option("--quiet", "-q", is_flag=True, help="No request log on stderr.")
@click.option(
    "--latency-ms",
    type=click.IntRange(min=0),
    default=0,
    help="Added to every /v1 and /oauth request.",
)
@click.option(
    "--error-rate",
    type=click.FloatRange(0.0, 1.0),
    default=0.0,
    help="Share of /v1 and /oauth requests answered 503.",
)
@click.option(
    "--rate-limit-every",
    type=click.IntRange(min=0),
    default=0,
    help="Every Nth /v1 or /oauth request answers 429 with Retry-After: 1.",
)
@click.option(
    "--rate-limit-rps",
    type=click.FloatRange(min=0.0),
    default=0.0,
    help="A token bucket per access token: R requests a second (burst R), else 429 with "
    "Retry-After.",
)
@click.option("--fault-seed", type=int, default=None, help="Seed that makes faults repeatable.")
@click.option(
    "--m2m-page-size",
    type=click.IntRange(min=1),
    default=None,
    help="Largest page of GET /v1/m2m/v2/list (default: the seed's m2mPageSize, else 100).",
)
def emulator(**options) -> None:
    """Run a local Oystehr Project Service (the emulator).

    The first line on stdout is its base URL, so --port 0 works in scripts.
    Each request is logged on stderr (-q: none). Ctrl-C (or SIGTERM) stops it.

    \b
      reconciler emulator --port 0 --seed seed.yaml --latency-ms 20
    """
    from reconciler.emulator import run_cli

    gc.enable()  # a server runs for hours: its cycles must be collected (see main)
    run_cli(**options)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script and of `python -m reconciler`."""
    # A command runs for a moment, and most of what it builds (every file's values and
    # locations, every answer, the plan) lives until it ends: the cyclic collector would
    # walk all of it again and again to free next to nothing (3 % of a big plan's
    # instructions), then once more at exit (a tenth of its wall time). So it is off,
    # and at exit everything alive is frozen out of those last collections. The
    # emulator, a server, turns it back on.
    gc.disable()
    try:
        cli.main(args=argv, prog_name="reconciler")
    finally:
        gc.freeze()
