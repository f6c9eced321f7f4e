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
from typing import TYPE_CHECKING, Any

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
        self.loaded: list = []  # the files of the Projects in this run's plan
        self.plan_reads: dict = {}  # what apply would read again (fleet.PlanReads by file)
        self.rotate = parse_rotations(options.get("rotate") or ())
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
        from reconciler.credentials import check_credentials

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

    def read_plan(self, paths: Sequence[str], fmt: str = "text", copies: Any = None) -> Plan:
        """Plan while loading: a Project's reads start as soon as its file is valid.
        `copies` (an apply's): the zips plan hashes are kept as what apply uploads."""
        from reconciler.credentials import auth_key
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
                        self.api(),
                        self.env,
                        self.pool(),
                        progress=self.progress("Reading"),
                        root=self.options.get("root"),
                        copies=copies,
                        rotate=self.rotate,
                    )
            except ConfigError as exc:
                refused.append(exc)
                return
            self.reading = True
            planner.add(project)

        try:
            projects = self.loaded = self.load(paths, fmt, start)
            if refused:
                self.credentials_ready(self.auths)  # names every offending variable
                raise refused[0]
            check_rotations(self.rotate, projects)
        except BaseException:
            if planner is not None:
                self.api().abort()  # what was read for a run that stops is not wanted
            raise
        if planner is None:
            from reconciler.fleet import plan_projects

            return plan_projects([], self.api(), self.env, pool=self.pool())
        the_plan = planner.plan(projects)
        self.plan_reads = planner.reads
        return the_plan

    def with_provenance(self, the_plan: Plan, paths: Sequence[str]) -> Plan:
        """The plan with the files it was made from: the git commit they are committed
        at, or (uncommitted) their hash, so that `apply --plan` can load them again."""
        from dataclasses import replace

        from reconciler import provenance

        first = self.loaded[0].path if self.loaded else (paths or ("projects",))[0]
        root = provenance.plan_root(first, self.options.get("root"))
        files = provenance.files_read((p.path, p.fragments) for p in self.loaded)
        commit, files_hash = provenance.record(files, root)
        return replace(the_plan, commit=commit, files_hash=files_hash)

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
    """Exit 2 (with --detailed-exitcode) when apply has anything to do: changes, or
    secret values to compare (which apply sets back if they were changed by hand)."""
    the_plan = run.read_plan(paths, fmt)
    if out or fmt == "json":  # the plan file: what apply --plan checks against the files
        the_plan = run.with_provenance(the_plan, paths)
    if out:
        write_plan_file(the_plan, out)
    run.show_plan(the_plan, fmt)
    if the_plan.errors:
        return EXIT_ERROR
    return EXIT_CHANGES if detailed and the_plan.to_apply else EXIT_OK


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
    allow: frozenset[str] = frozenset(),
) -> int:
    """Plan (or read and verify a saved plan), refuse or ask, write, report."""
    from reconciler.apply import apply_plan, refusals
    from reconciler.includes import RepositoryRoots
    from reconciler.planfile import read_plan_file
    from reconciler.render import (
        BLOCKED,
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
    from reconciler.secretvalues import ValueInputs
    from reconciler.uploads import code_copies
    from reconciler.zips import PrivateCopies

    options = run.options
    # The zips apply uploads: private copies (relative to each Project's repository root,
    # as plan found them), each checked against the plan's code hash before any write.
    copies = PrivateCopies()
    click.get_current_context().call_on_close(copies.close)
    roots = RepositoryRoots(options.get("root"))
    if plan_file:
        from reconciler.verify import load_plan_files, verify_saved_plan

        saved = read_plan_file(plan_file)
        run.auths = [p.auth for p in saved.projects]
        run.redact_credentials()  # before the plan is shown
        refusals(saved, api_url=options["api_url"], max_changes=max_changes, saved=True)
        check_planned_rotations(run.rotate, saved)
        files = load_plan_files(saved, plan_file, run.env, options.get("root"))
        code_copies(saved, roots, copies)  # the plan job built them; apply never builds
        # What is shown and written is what the files, those zips and the live values give.
        the_plan = verify_saved_plan(
            saved,
            plan_file,
            files,
            run.api(),
            run.env,
            run.pool(),
            copies=copies,
            roots=roots,
            rotate=run.rotate,
            kept=run.plan_reads,
        )
        literals = file_literals(files.values())
    else:
        the_plan = run.read_plan(paths, copies=copies)  # keeps the bytes it hashes
        refusals(the_plan, max_changes=max_changes)
        literals = file_literals(run.loaded)
    code = code_copies(the_plan, roots, copies)
    show = sys.stderr if fmt == "json" else sys.stdout
    render_text(the_plan, show, colour=run.colour and show is sys.stdout)
    if the_plan.to_apply and not yes:
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
        stopper=Stopper(),
        progress=run.progress("Applying"),
        code=code,
        roots=roots,
        values=ValueInputs(literals, run.rotate),
        allow=allow,
        reads=run.plan_reads,  # what this run read already, by plan or by verification
    )
    if fmt == "json":
        render_apply_json(outcomes, sys.stdout)
    else:
        render_apply_text(outcomes, sys.stdout, colour=run.colour)
    run.step_summary(lambda fh: render_apply_markdown(outcomes, fh, limit=STEP_SUMMARY_LIMIT))
    failed = any(o.status in (FAILED, UNKNOWN, SKIPPED, BLOCKED) for o in outcomes)
    return EXIT_ERROR if failed else EXIT_OK


def export(run: Run, project_id: str, output: str | None, force: bool, include: str | None) -> int:
    """A project file from the live Project, on stdout or in --output. Over a project file
    for the same Project it keeps that file's leading comments and auth block (and reads
    with the credentials the block names); any other existing file needs --force."""
    from pathlib import Path

    from reconciler.credentials import resolve_credentials
    from reconciler.export import (
        existing_project,
        export_project,
        keep_from,
        parse_include,
        schema_ref_for,
    )
    from reconciler.files import has_include

    target = Path(output) if output else None
    if target and target.is_file() and has_include(output):
        raise ConfigError(
            f"{output} includes fragments: export writes a standalone file and would drop "
            "them; export to another file and copy what you need"
        )
    existing = None
    if target and target.exists():
        existing = existing_project(target) if target.is_file() else None
        if existing is None or existing.id != project_id:
            if not force:
                what = (
                    f"is the project file of {term(existing.id)}, not {project_id}"
                    if existing is not None
                    else f"exists and is not a project file for {project_id}"
                )
                raise ConfigError(f"{output} {what}; pass --force to overwrite it")
            existing = None
        elif existing.auth_problem:
            raise ConfigError(existing.auth_problem)
    words = parse_include(include)
    auth = existing.auth if existing else None
    run.auths = [auth]  # redacted from all output, like the globals
    credentials = resolve_credentials(auth, run.env)
    text = export_project(
        run.api(), credentials, project_id, schema_ref=schema_ref_for(target), include=words
    )
    if existing is not None:
        text = keep_from(existing, text)
    if target is None:
        click.echo(text, nl=False)
        return EXIT_OK
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {output}: {exc.strerror}") from None
    if not run.quiet:
        kept = [
            what
            for what, lines in (
                ("leading comments", existing and existing.leading),
                ("auth block", existing and existing.auth_lines),
            )
            if lines
        ]
        also = f" (kept its {' and '.join(kept)})" if kept else ""
        click.echo(f"Wrote {output}{also}.", err=True)
    return EXIT_OK


# Secret values: rotations asked for, and the literals apply writes -------------------


def parse_rotations(texts: Sequence[str]) -> frozenset[tuple[str, str]]:
    """--rotate PROJECT_ID:SECRET_NAME values, each checked for its form."""
    from reconciler.secretvalues import parse_rotate

    try:
        return frozenset(parse_rotate(text) for text in texts)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def check_rotations(rotate: frozenset[tuple[str, str]], projects: Sequence) -> None:
    """Each --rotate names a Project of this run and a secret of it whose value is an M2M
    client's clientSecret."""
    from reconciler.secretvalues import declared_sources

    by_id = {project.id: project for project in projects}
    for project_id, name in sorted(rotate):
        project = by_id.get(project_id)
        if project is None:
            raise ConfigError(f"--rotate {project_id}:{name}: no Project {project_id} in this run")
        source = declared_sources(project.data).get(name)
        if source is None or not source.rotates:
            raise ConfigError(
                f"--rotate {project_id}:{name}: {project.path} has no secret {name} whose value "
                "is an M2M client's clientSecret"
            )


def check_planned_rotations(rotate: frozenset[tuple[str, str]], the_plan: Plan) -> None:
    """With a saved plan, each --rotate names one of its secrets that rotates a client,
    and each rotation of a client the plan does not create is asked for with --rotate
    (the plan was made with it; apply is given it again)."""
    from reconciler.secretvalues import Source

    planned = {}
    for project in the_plan.projects:
        created = {c.name for c in project.objects if c.kind == "m2m" and c.action == "create"}
        for change in project.objects:
            source = Source.parse(change.value_source) if change.value_source else None
            if source is not None and source.rotates:
                planned[(project.project_id, change.name)] = (source.client, created)
    for project_id, name in sorted(rotate - set(planned)):
        raise ConfigError(
            f"--rotate {project_id}:{name}: the plan writes no secret {name} of Project "
            f"{project_id} from an M2M client's clientSecret; make the plan with --rotate"
        )
    asked = {(pid, planned[(pid, name)][0]) for pid, name in rotate}
    for (project_id, name), (client, created) in sorted(planned.items()):
        if client not in created and (project_id, client) not in asked:
            raise RefusedError(
                f"the plan rotates M2M client {client!r}, which exists (secret {name} of "
                f"Project {project_id}): apply does it only when given --rotate "
                f"{project_id}:{name}; nothing was applied"
            )


def file_literals(projects: Sequence) -> dict:
    """The literal secret values of the Projects' files: Project id -> name -> value."""
    from reconciler.secretvalues import LITERAL, declared_sources, literal

    found: dict = {}
    for project in projects:
        for name, source in declared_sources(project.data).items():
            value = literal(project.data, name) if source.kind == LITERAL else None
            if value is not None:
                found.setdefault(project.id, {})[name] = value
    return found


def write_plan_file(the_plan: Plan, out: str) -> None:
    from reconciler.render import render_json

    try:
        with open(out, "w", encoding="utf-8") as fh:
            render_json(the_plan, fh)
    except OSError as exc:
        raise ConfigError(f"cannot write plan file {out}: {exc.strerror}") from None
