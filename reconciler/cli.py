"""The command line: parse, call the library, render, choose the exit code.

Exit codes are an API (SPEC section 4): 0 ok, 1 any error or usage error,
2 only "there are changes" (plan --detailed-exitcode) or "there is drift".
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable

import click

from reconciler import __version__
from reconciler.errors import ConfigError, ReconcilerError, RefusedError
from reconciler.escape import CREDENTIAL_VARIABLES, plural, set_secrets, term

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


def format_option(choices: list[str], help: str) -> Callable:
    return click.option(
        "--format", "fmt", type=click.Choice(choices), default="text", show_default=True, help=help
    )


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
        help="Only this Project (exact id or file stem); repeatable. All files still validate.",
    ),
    click.option(
        "--shard",
        metavar="I/N",
        default=None,
        help="Only shard I of N (1-based), split by sha256 of the Project id.",
    ),
)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


class ReconcilerGroup(click.Group):
    """Exit codes as SPEC section 4 wants them: usage errors exit 1 (never 2, which means
    "changes"), and our errors print one `Error: ...` line and exit 1, never a traceback."""

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
    help='text: one FILE:LINE:COL line per problem; json: {"problems": [...]}.',
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
            click.echo(term(problem))
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


def _plan_command(fn: Callable) -> Callable:
    return _stack(paths_argument, api_options, fleet_options)(fn)


@cli.command()
@_plan_command
@format_option(
    ["text", "markdown", "json"],
    "text for a terminal, markdown for a PR comment, json for machines.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Also save the plan as JSON, for `apply --plan`.",
)
@click.option(
    "--detailed-exitcode",
    is_flag=True,
    help="Exit 2 when the plan succeeded and something would change.",
)
def plan(paths, fmt, out, detailed_exitcode, **options) -> None:
    """Show what apply would change: files vs the live Project settings.

    Validates every file first (any problem stops before a request), reads
    each Project once, and prints the changes. Exit 0 ok, 1 any error,
    2 with --detailed-exitcode when something would change.

    \b
      reconciler plan
      reconciler plan --format markdown --out plan.json
      reconciler plan --project sandbox --detailed-exitcode
    """
    run = Run(options)
    the_plan = run.read_plan(paths)
    if out:
        _write_plan_file(the_plan, out)
    run.show_plan(the_plan, fmt)
    if the_plan.errors:
        raise SystemExit(EXIT_ERROR)
    if detailed_exitcode and the_plan.changed:
        raise SystemExit(EXIT_CHANGES)


@cli.command()
@_plan_command
@format_option(
    ["text", "markdown", "json"], "text for a terminal, markdown for an issue, json for machines."
)
def drift(paths, fmt, **options) -> None:
    """Report Projects whose live settings no longer match their files (read-only).

    Exit 0 no drift, 2 drift, 1 any error (an error wins over drift; the
    report still prints).

    \b
      reconciler drift --format markdown > drift.md
    """
    run = Run(options)
    the_plan = run.read_plan(paths)
    run.show_plan(the_plan, fmt, drift=True)
    if the_plan.errors:
        raise SystemExit(EXIT_ERROR)
    if the_plan.changed:
        raise SystemExit(EXIT_CHANGES)


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
    help="Refuse, before any write, to change more than N Projects.",
)
@format_option(
    ["text", "json"],
    "Format of the result: per Project applied, unchanged, failed, unknown or skipped.",
)
def apply(paths, plan_file, yes, max_changes, fmt, **options) -> None:
    """Plan, show the plan, then PATCH what changed.

    Asks `Apply? [y/N]` on a terminal; --yes skips the question; without a
    terminal and without --yes it refuses and writes nothing. With --plan it
    applies a reviewed plan, refusing before any PATCH if the file was
    edited, has errors, was made for another API, or any changed Project was
    changed since (stale). Exit 0 all applied (or nothing to do), 1 anything
    failed, refused or interrupted.

    \b
      reconciler apply --yes
      reconciler plan --out plan.json && reconciler apply --plan plan.json --yes
    """
    from reconciler.apply import apply_plan, refusals
    from reconciler.fleet import Stopper
    from reconciler.planfile import read_plan_file
    from reconciler.render import (
        FAILED,
        SKIPPED,
        UNKNOWN,
        render_apply_json,
        render_apply_markdown,
        render_apply_text,
        render_text,
    )

    if plan_file and paths:
        raise click.UsageError("give either --plan or PATHS, not both")
    if plan_file and (options.get("project_filters") or options.get("shard")):
        raise click.UsageError("--project and --shard choose among PATHS, not in a saved plan")
    run = Run(options)
    if plan_file:
        the_plan = read_plan_file(plan_file)
        run.auths = [p.auth for p in the_plan.projects]
        refusals(the_plan, api_url=options["api_url"], max_changes=max_changes, saved=True)
    else:
        the_plan = run.read_plan(paths)
        refusals(the_plan, max_changes=max_changes)
    show = sys.stderr if fmt == "json" else sys.stdout
    render_text(the_plan, show, colour=run.colour and show is sys.stdout)
    if the_plan.changed and not yes:
        if not (sys.stdin.isatty() and show.isatty()):
            raise RefusedError(
                "refusing to apply without --yes: there is no terminal to ask on; "
                "nothing was applied"
            )
        if not click.confirm("Apply?", default=False, err=show is sys.stderr):
            raise RefusedError("not confirmed; nothing was applied")
    outcomes = apply_plan(
        the_plan,
        run.api(),
        run.env,
        concurrency=options.get("concurrency", 8),
        verify_fresh=bool(plan_file),
        stopper=Stopper(),
        progress=run.progress("Applying", len(the_plan.changed)),
    )
    if fmt == "json":
        render_apply_json(outcomes, sys.stdout)
    else:
        render_apply_text(outcomes, sys.stdout, colour=run.colour)
    run.step_summary(lambda fh: render_apply_markdown(outcomes, fh))
    if any(o.status in (FAILED, UNKNOWN, SKIPPED) for o in outcomes):
        raise SystemExit(EXIT_ERROR)


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
@api_options
def export(project_id, output, force, **options) -> None:
    """Write a project file from a Project's live settings (bring it under management).

    Uses OYSTEHR_ACCESS_TOKEN, or OYSTEHR_CLIENT_ID + OYSTEHR_CLIENT_SECRET.
    Planning the exported file shows no change.

    \b
      reconciler export --project-id fd9b1113-... --output projects/sandbox.yaml
    """
    from pathlib import Path

    from reconciler.client import resolve_credentials
    from reconciler.export import export_project, schema_ref_for

    target = Path(output) if output else None
    if target and target.exists() and not force:
        raise ConfigError(f"{output} exists; pass --force to overwrite it")
    run = Run(options)
    credentials = resolve_credentials(None, run.env)
    text = export_project(run.api(), credentials, project_id, schema_ref=schema_ref_for(target))
    if target is None:
        click.echo(text, nl=False)
        return
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {output}: {exc.strerror}") from None
    if not run.quiet:
        click.echo(f"Wrote {output}.", err=True)


@cli.command()
def demo() -> None:
    """Show the whole job on an embedded emulator: validate, plan, apply, drift.

    Starts an emulator on a free port with bundled example Projects, copies
    the example project files to a temporary folder and runs the real
    commands against it. Touches nothing else; needs no account.

    \b
      reconciler demo
    """
    from reconciler.demo import run_demo

    raise SystemExit(run_demo())


class Run:
    """What every API command shares: options, environment, output settings, the client."""

    def __init__(self, options: dict) -> None:
        self.options = options
        self.env = os.environ
        self.verbose = options.get("verbose", False)
        self.quiet = options.get("quiet", False)
        self.auths: list = []  # the auth blocks of the Projects in this run
        self._api = None
        self.colour = (
            not options.get("no_color") and not os.environ.get("NO_COLOR") and sys.stdout.isatty()
        )
        if self.verbose:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(message)s"))
            logger = logging.getLogger("reconciler")
            logger.addHandler(handler)
            logger.setLevel(logging.DEBUG)

    def api(self):
        """The run's one client, so tokens are fetched once per M2M client per run."""
        if self._api is None:
            from reconciler.client import ProjectApi, check_credentials
            from reconciler.escape import add_secrets, credential_variables

            # At start, before any request: credentials unfit for a header are refused by
            # name, and every credential value is kept out of all output.
            names = credential_variables(self.auths)
            check_credentials([name for name in names if name != "GITHUB_TOKEN"], self.env)
            add_secrets(self.env.get(name) for name in names)

            self._api = ProjectApi(
                self.options["api_url"],
                auth_url=self.options["auth_url"],
                timeout=self.options["timeout"],
                retries=self.options["retries"],
                max_connections=self.options.get("concurrency", 8),
            )
            click.get_current_context().call_on_close(self._api.close)
        return self._api

    def load(self, paths: tuple[str, ...]):
        """Validate every file; any problem stops here, before a request."""
        from reconciler.files import load_projects
        from reconciler.fleet import parse_shard, select

        shard = parse_shard(self.options.get("shard"))
        result = load_projects(paths or ("projects",), self.env)
        if result.problems:
            for problem in result.problems:
                click.echo(term(problem), err=True)
            count = len(result.problems)
            raise ConfigError(
                f"{_count(count, 'problem')} in the project files; nothing was read or written"
            )
        self.auths = [project.auth for project in result.projects]
        return select(result.projects, self.options.get("project_filters", ()), shard)

    def read_plan(self, paths: tuple[str, ...]):
        from reconciler.fleet import plan_projects

        projects = self.load(paths)
        return plan_projects(
            projects,
            self.api(),
            self.env,
            concurrency=self.options.get("concurrency", 8),
            progress=self.progress("Reading", len(projects)),
        )

    def progress(self, verb: str, total: int):
        """A progress line on stderr, only on a terminal and only for longer runs."""
        if self.quiet or total < 20 or not sys.stderr.isatty():
            return None

        def show(done: int, total: int) -> None:
            end = "\n" if done == total else ""
            click.echo(f"\r{verb} {done}/{total} Projects…", nl=False, err=True)
            if end:
                click.echo("", err=True)

        return show

    def show_plan(self, the_plan, fmt: str, *, drift: bool = False) -> None:
        """The plan (or drift report) on stdout, and its markdown in the job summary."""
        from reconciler.render import render_json, render_markdown, render_text

        if fmt == "json":
            render_json(the_plan, sys.stdout)
        elif fmt == "markdown":
            render_markdown(the_plan, sys.stdout, drift=drift)
        else:
            render_text(the_plan, sys.stdout, colour=self.colour, drift=drift, verbose=self.verbose)
        self.step_summary(lambda fh: render_markdown(the_plan, fh, drift=drift))

    def step_summary(self, write: Callable) -> None:
        """Append markdown to the GitHub Actions job summary when there is one."""
        path = os.environ.get("GITHUB_STEP_SUMMARY")
        if not path:
            return
        try:
            with open(path, "a", encoding="utf-8") as fh:
                write(fh)
                fh.write("\n")
        except OSError as exc:
            click.echo(f"Warning: could not write GITHUB_STEP_SUMMARY ({exc.strerror})", err=True)


def _write_plan_file(the_plan, out: str) -> None:
    from reconciler.render import render_json

    try:
        with open(out, "w", encoding="utf-8") as fh:
            render_json(the_plan, fh)
    except OSError as exc:
        raise ConfigError(f"cannot write plan file {out}: {exc.strerror}") from None


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
    help="YAML of Projects, roles, M2M clients and Developers to load.",
)
@click.option("--quiet", is_flag=True, help="No request log on stderr.")
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
@click.option("--fault-seed", type=int, default=None, help="Seed that makes faults repeatable.")
def emulator(**options) -> None:
    """Run a local Oystehr Project Service (the emulator).

    The first line on stdout is its base URL, so --port 0 works in scripts.

    \b
      reconciler emulator --port 0 --seed seed.yaml --latency-ms 20
    """
    from reconciler.emulator import run_cli

    run_cli(**options)


_count = plural


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script and of `python -m reconciler`."""
    cli.main(args=argv, prog_name="reconciler")


from reconciler.github import github  # noqa: E402

cli.add_command(github)
