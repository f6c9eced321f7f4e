"""What each command does, between the parsing (cli.py) and the library.

Each function takes what `cli.py` parsed, calls the library (files, fleet, apply,
export, render), writes the output and returns the exit code, which is an API
(SPEC section 4): 0 ok, 1 any error, 2 only "there are changes" (plan
--detailed-exitcode) or "there is drift". Our errors are raised as
ReconcilerError and become one `Error: …` line in `cli.py`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import click

from reconciler.errors import ConfigError, RefusedError
from reconciler.escape import plural, term

if TYPE_CHECKING:
    from reconciler.plan import Plan

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CHANGES = 2


class Run:
    """What every API command shares: options, environment, output settings, the client
    and the pool of workers its requests run on."""

    def __init__(self, options: dict) -> None:
        self.options = options
        self.env = os.environ
        self.verbose = options.get("verbose", False)
        self.quiet = options.get("quiet", False)
        self.concurrency = options.get("concurrency", 8)
        self.auths: list = []  # the auth blocks of the Projects in this run
        self._api = None
        self._pool = None
        self.reading = False  # whether a Project's reads have started
        self.colour = (
            not options.get("no_color") and not os.environ.get("NO_COLOR") and sys.stdout.isatty()
        )
        if self.verbose:
            import logging

            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(message)s"))
            logger = logging.getLogger("reconciler")
            logger.addHandler(handler)
            logger.setLevel(logging.DEBUG)

    def api(self):
        """The run's one client, so tokens are fetched once per M2M client per run, and
        one request budget (--concurrency) covers every request of the run."""
        if self._api is None:
            from reconciler.client import ProjectApi

            self.credentials_ready(self.auths)
            self._api = ProjectApi(
                self.options["api_url"],
                auth_url=self.options["auth_url"],
                timeout=self.options["timeout"],
                retries=self.options["retries"],
                max_connections=self.concurrency,
            )
            context = click.get_current_context(silent=True)
            if context is not None:
                context.call_on_close(self.close)
        return self._api

    def pool(self):
        """The run's workers: as many threads as requests may be in flight."""
        if self._pool is None:
            from reconciler.schedule import Pool

            self._pool = Pool(self.concurrency)
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        if self._api is not None:
            if self.verbose:
                click.echo(term(self._api.budget.summary().capitalize() + "."), err=True)
            self._api.close()

    def credentials_ready(self, auths: Sequence) -> None:
        """Before any request that uses them: credentials unfit for a header are refused
        by name, and every credential value is kept out of all output."""
        from reconciler.client import check_credentials

        names = self.redact_credentials(auths)
        check_credentials([name for name in names if name != "GITHUB_TOKEN"], self.env)

    def redact_credentials(self, auths: Sequence | None = None) -> list[str]:
        """Keep the value of every credential variable the Projects name (the run's, by
        default) out of all output; returns their names."""
        from reconciler.escape import add_secrets, credential_variables

        names = credential_variables(self.auths if auths is None else auths)
        add_secrets(self.env.get(name) for name in names)
        return names

    def load(self, paths: Sequence[str], fmt: str = "text", start: Callable | None = None):
        """Validate every file, calling `start(project)` with each chosen Project as soon
        as its file is valid; any problem stops here, before any write and any output (as
        markdown on stdout too for `--format markdown`, so the pull request comment says
        where)."""
        from reconciler.files import load_projects
        from reconciler.fleet import check_filters, chosen, parse_shard

        shard = parse_shard(self.options.get("shard"))
        filters = list(self.options.get("project_filters", ()))

        def valid(project) -> None:
            self.auths.append(project.auth)
            if start is not None and chosen(project, filters, shard):
                start(project)

        result = load_projects(
            paths or ("projects",), self.env, root=self.options.get("root"), on_valid=valid
        )
        for warning in result.warnings:
            click.echo(term(warning), err=True)
        if result.problems:
            for problem in result.problems:
                click.echo(term(problem), err=True)
            if fmt == "markdown":
                from reconciler.render import render_problems_markdown

                render_problems_markdown(result.problems, sys.stdout)
            count = len(result.problems)
            done = "nothing was written" if self.reading else "nothing was read or written"
            raise ConfigError(f"{plural(count, 'problem')} in the project files; {done}")
        check_filters(result.projects, filters)
        return [project for project in result.projects if chosen(project, filters, shard)]

    def read_plan(self, paths: Sequence[str], fmt: str = "text") -> Plan:
        """Plan while loading: a Project's reads start as soon as its file is valid."""
        from reconciler.client import auth_key
        from reconciler.fleet import Planner

        planner = None
        refused: list[Exception] = []
        ready: set[tuple] = set()  # the auth blocks whose credentials are checked

        def start(project) -> None:
            nonlocal planner
            if refused:
                return
            try:
                if auth_key(project.auth) not in ready:
                    self.credentials_ready([project.auth])
                    ready.add(auth_key(project.auth))
                if planner is None:
                    planner = Planner(
                        self.api(), self.env, self.pool(), progress=self.progress("Reading")
                    )
            except ConfigError as exc:
                refused.append(exc)
                return
            self.reading = True
            planner.add(project)

        try:
            projects = self.load(paths, fmt, start)
            if refused:
                self.credentials_ready(self.auths)  # names every offending variable
                raise refused[0]
        except BaseException:
            if planner is not None:
                self.api().abort()  # what was read for a run that stops is not wanted
            raise
        if planner is None:
            from reconciler.fleet import plan_projects

            return plan_projects([], self.api(), self.env, pool=self.pool())
        return planner.plan(projects)

    def progress(self, verb: str):
        """A progress line on stderr, only on a terminal and only for longer runs."""
        if self.quiet or not sys.stderr.isatty():
            return None

        def show(done: int, total: int) -> None:
            if total < 20:
                return
            click.echo(f"\r{verb} {done}/{total} Projects…", nl=False, err=True)
            if done == total:
                click.echo("", err=True)

        return show

    def show_plan(self, the_plan: Plan, fmt: str, *, drift: bool = False) -> None:
        """The plan (or drift report) on stdout, and its markdown in the job summary."""
        from reconciler.render import (
            STEP_SUMMARY_LIMIT,
            render_json,
            render_markdown,
            render_text,
        )

        if fmt == "json":
            render_json(the_plan, sys.stdout)
        elif fmt == "markdown":
            render_markdown(the_plan, sys.stdout, drift=drift)
        else:
            render_text(the_plan, sys.stdout, colour=self.colour, drift=drift, verbose=self.verbose)
        # The job summary holds the whole plan, where a comment may have to summarise.
        self.step_summary(
            lambda fh: render_markdown(the_plan, fh, drift=drift, limit=STEP_SUMMARY_LIMIT)
        )

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


def validate(paths: Sequence[str], fmt: str, root: str | None = None) -> int:
    """Every problem as FILE:LINE:COL: message (or JSON); warnings and the summary on
    stderr."""
    from reconciler.files import load_projects, unincluded_fragments

    result = load_projects(paths or ("projects",), root=root)
    for warning in result.warnings + unincluded_fragments(result):
        click.echo(term(warning), err=True)
    if fmt == "json":
        doc = {"problems": [problem.to_dict() for problem in result.problems]}
        click.echo(json.dumps(doc, indent=2))
    else:
        for problem in result.problems:
            click.echo(term(problem))
    files = plural(result.files_read, "file")
    if result.fragments:
        files += f" and {plural(len(result.fragments), 'fragment')}"
    if result.problems:
        failing = len({problem.file for problem in result.problems})
        click.echo(
            f"{plural(len(result.problems), 'problem')} in {plural(failing, 'file')} "
            f"({files} checked).",
            err=True,
        )
        return EXIT_ERROR
    click.echo(f"{files} valid.", err=True)
    return EXIT_OK


def plan(run: Run, paths: Sequence[str], fmt: str, out: str | None, detailed: bool) -> int:
    the_plan = run.read_plan(paths, fmt)
    if out:
        write_plan_file(the_plan, out)
    run.show_plan(the_plan, fmt)
    if the_plan.errors:
        return EXIT_ERROR
    return EXIT_CHANGES if detailed and the_plan.changed else EXIT_OK


def drift(run: Run, paths: Sequence[str], fmt: str) -> int:
    the_plan = run.read_plan(paths)
    run.show_plan(the_plan, fmt, drift=True)
    if the_plan.errors:
        return EXIT_ERROR
    return EXIT_CHANGES if the_plan.changed else EXIT_OK


def apply(
    run: Run,
    paths: Sequence[str],
    plan_file: str | None,
    yes: bool,
    max_changes: int | None,
    fmt: str,
) -> int:
    """Plan (or read a saved plan), refuse or ask, write, report."""
    from reconciler.apply import apply_plan, refusals
    from reconciler.planfile import read_plan_file
    from reconciler.render import (
        FAILED,
        SKIPPED,
        STEP_SUMMARY_LIMIT,
        UNKNOWN,
        render_apply_json,
        render_apply_markdown,
        render_apply_text,
        render_text,
    )
    from reconciler.schedule import Stopper

    options = run.options
    if plan_file:
        the_plan = read_plan_file(plan_file)
        run.auths = [p.auth for p in the_plan.projects]
        run.redact_credentials()  # before the plan is shown
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
        pool=run.pool(),
        verify_fresh=bool(plan_file),
        stopper=Stopper(),
        progress=run.progress("Applying"),
    )
    if fmt == "json":
        render_apply_json(outcomes, sys.stdout)
    else:
        render_apply_text(outcomes, sys.stdout, colour=run.colour)
    run.step_summary(lambda fh: render_apply_markdown(outcomes, fh, limit=STEP_SUMMARY_LIMIT))
    failed = any(o.status in (FAILED, UNKNOWN, SKIPPED) for o in outcomes)
    return EXIT_ERROR if failed else EXIT_OK


def export(run: Run, project_id: str, output: str | None, force: bool, include: str | None) -> int:
    """A project file from the live Project, on stdout or in --output."""
    from pathlib import Path

    from reconciler.client import resolve_credentials
    from reconciler.export import export_project, parse_include, schema_ref_for
    from reconciler.files import has_include

    target = Path(output) if output else None
    if target and target.is_file() and has_include(output):
        raise ConfigError(
            f"{output} includes fragments: export writes a standalone file and would drop "
            "them; export to another file and copy what you need"
        )
    if target and target.exists() and not force:
        raise ConfigError(f"{output} exists; pass --force to overwrite it")
    words = parse_include(include)
    credentials = resolve_credentials(None, run.env)
    text = export_project(
        run.api(), credentials, project_id, schema_ref=schema_ref_for(target), include=words
    )
    if target is None:
        click.echo(text, nl=False)
        return EXIT_OK
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {output}: {exc.strerror}") from None
    if not run.quiet:
        click.echo(f"Wrote {output}.", err=True)
    return EXIT_OK


def write_plan_file(the_plan: Plan, out: str) -> None:
    from reconciler.render import render_json

    try:
        with open(out, "w", encoding="utf-8") as fh:
            render_json(the_plan, fh)
    except OSError as exc:
        raise ConfigError(f"cannot write plan file {out}: {exc.strerror}") from None
