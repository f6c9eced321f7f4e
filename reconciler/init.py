"""`reconciler init`: scaffold a settings repository that uses reconciler safely.

    reconciler init                              # an example project file
    reconciler init --project-id ID --project-id ID2
    reconciler init --action my-org/reconciler@3d3c42e5aac5ba805825da76410c181273ba90b1

Writes `projects/` (an example, unless it holds project files already),
`schemas/project.schema.json` and `schemas/fragment.schema.json`, the three workflows
(`plan`, `apply`, `drift`) using the composite action remotely, and
`.pre-commit-config.yaml`, both pinned to a commit (`@<sha> # vX.Y.Z`,
`rev: <sha>  # frozen: vX.Y.Z`). An existing file is skipped and named, never
overwritten. The workflows get the production API and auth URLs unless
`--api-url`/`--auth-url` are given as flags: URLs in the environment
(`OYSTEHR_PROJECT_API_URL`, say, left over from trying the emulator) only read
the Projects of `--project-id` and are never written into CI. The workflows
come from the same templates as this repository's own
(`reconciler/data/init/workflows/`), so the security posture is one source: the
read credential set as repository secrets `READ_<NAME>` for plan and drift, the
write set as secrets `<NAME>` of the `production` environment for apply only.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import click
import yaml

from reconciler import __version__, release
from reconciler.errors import ConfigError, ReconcilerError
from reconciler.escape import term, without_userinfo
from reconciler.options import api_options
from reconciler.release import RELEASE_REPOSITORY
from reconciler.slugs import env_prefix, slug_for
from reconciler.urls import DEFAULT_API_URL, DEFAULT_AUTH_URL, check_url

# The repository that publishes reconciler and its action (tags v<version>).
CANONICAL_REPOSITORY = RELEASE_REPOSITORY
LOCAL_ACTION = "./.github/actions/reconciler"
ACTION_PATH = ".github/actions/reconciler"
WORKFLOWS = ("plan", "apply", "drift")
# Credentials a file without an `auth` block uses (an M2M client: the CI identity).
DEFAULT_AUTH_NAMES = ("OYSTEHR_CLIENT_ID", "OYSTEHR_CLIENT_SECRET")
READ_PREFIX = "READ_"

# What the READ_ clients may do: read the Project, its roles, applications and M2M
# clients, list its secrets (names only), buckets and Zambda functions. Nothing else: a
# plan or drift run can never write, nor read a secret's value, with them.
READ_ONLY_POLICY: dict[str, Any] = {
    "rule": [
        {"resource": ["Project:Settings"], "action": ["Project:GetProjectInfo"], "effect": "Allow"},
        {
            "resource": ["IAM:Role"],
            "action": ["IAM:ListAllRoles", "IAM:GetRole"],
            "effect": "Allow",
        },
        {
            "resource": ["App:Application"],
            "action": ["App:ListAllApplications", "App:GetApplication"],
            "effect": "Allow",
        },
        {
            "resource": ["IAM:M2MClient"],
            "action": ["App:ListAllM2MClients", "App:GetM2MClient"],
            "effect": "Allow",
        },
        # Secrets by name only: never Zambda:GetSecret, which reads a value (an M2M
        # client's secret among them) and would give it to any branch's workflow.
        {"resource": ["Zambda:Secret"], "action": ["Zambda:ListAllSecrets"], "effect": "Allow"},
        {"resource": ["Z3:BucketName"], "action": ["Z3:ListBuckets"], "effect": "Allow"},
        {
            "resource": ["Zambda:Function"],
            "action": ["Zambda:ListAllFunctions", "Zambda:GetFunction"],
            "effect": "Allow",
        },
    ]
}

_ACTION_REF = re.compile(r"([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+)@([A-Za-z0-9_./-]+)")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_PLACEHOLDER_LINE = re.compile(r"^( *)# @(READ|WRITE)_CREDENTIALS@\n", re.MULTILINE)
_SECRETS_LINE = re.compile(r"^( *)# @SECRET_VALUES@\n", re.MULTILINE)
_SOURCE_INPUTS_LINE = re.compile(r"^( *)# @SOURCE_INPUTS@\n", re.MULTILINE)
_ARTIFACT_LINE = re.compile(r"^( *)path: @ARTIFACT_PATHS@\n", re.MULTILINE)


def _documents(files: Iterable[Path]) -> Iterator[dict[str, Any]]:
    """Each file's YAML mapping; a file that does not read or parse, or holds no
    mapping, is skipped (validate reports it)."""
    for path in files:
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        if isinstance(doc, dict):
            yield doc


@dataclass(frozen=True)
class ZambdaFiles:
    """What the workflows need to know of the project files' Zambda functions: the globs
    their zips are built from (`sourceInputs`: a change there plans and applies) and
    where the zips are (they travel with the plan artifact to the apply job)."""

    inputs: tuple[str, ...] = ()
    zips: tuple[str, ...] = ()  # globs: each zip folder's *.zip

    @classmethod
    def found_in(cls, files: Iterable[Path]) -> ZambdaFiles:
        """From the files' `zambdas` (a file that does not parse is skipped here:
        validate reports it)."""
        from reconciler.zambdas import path_problem, zip_path

        inputs: list[str] = []
        zips: list[str] = []
        for doc in _documents(files):
            functions = doc.get("zambdas")
            for fields in functions.values() if isinstance(functions, dict) else ():
                if not isinstance(fields, dict):
                    continue
                source = fields.get("source")
                if isinstance(source, str) and not path_problem(source, zip_file=True):
                    folder = posixpath.dirname(zip_path(source))
                    zips.append(f"{folder}/*.zip" if folder else "*.zip")
                globs = fields.get("sourceInputs")
                for glob in globs if isinstance(globs, list) else ():
                    if isinstance(glob, str) and not path_problem(glob):
                        inputs.append(glob)
        return cls(tuple(dict.fromkeys(inputs)), tuple(sorted(set(zips))))


@dataclass(frozen=True)
class ActionRef:
    """Where the composite action comes from: OWNER/REPO at REF, or this checkout."""

    owner_repo: str | None
    ref: str

    @classmethod
    def parse(cls, text: str) -> ActionRef:
        match = _ACTION_REF.fullmatch(text.strip())
        if match is None:
            raise ConfigError(
                f"--action {text!r}: expected OWNER/REPO@SHA, like "
                "my-org/reconciler@<the 40-hex commit of a release>"
            )
        return cls(f"{match[1]}/{match[2]}", match[3])

    @classmethod
    def default(cls) -> ActionRef:
        """This release's own commit; a checkout (no release) has none to offer."""
        commit = release.RELEASE_COMMIT
        if not commit:
            raise ConfigError(
                "this reconciler is not a release, so it has no commit to pin the action "
                "to: give one with --action OWNER/REPO@SHA (the 40-hex commit of a release)"
            )
        return cls(CANONICAL_REPOSITORY, commit)

    @property
    def pinned(self) -> bool:
        """A full commit: the code it names can never change under the workflows."""
        return bool(_COMMIT.fullmatch(self.ref))

    @property
    def uses(self) -> str:
        if self.owner_repo is None:
            return LOCAL_ACTION
        pin = f" # v{__version__}" if self.pinned else ""
        return f"{self.owner_repo}/{ACTION_PATH}@{self.ref}{pin}"

    def mutable_warning(self) -> str | None:
        """What to say about a tag or branch, which can be moved to other code."""
        if self.owner_repo is None or self.pinned:
            return None
        return (
            f"Warning: --action {self.owner_repo}@{self.ref} is a tag or branch, which can be "
            "moved to other code that would then run with your write credentials; pin a "
            f"commit: --action {self.owner_repo}@<40-hex sha>"
        )


LOCAL = ActionRef(None, "")

# A URL that goes into a workflow's YAML and GitHub's expressions stays plain.
_WORKFLOW_URL = re.compile(r"[A-Za-z0-9._~:/?#\[\]@!&'()*+,;=%-]+")


@dataclass(frozen=True)
class Url:
    """One of the two URLs: what the workflows get, and what this run reads with."""

    option: str  # --api-url
    variable: str  # OYSTEHR_PROJECT_API_URL
    default: str
    value: str  # what this run reads with (flag, environment or default)
    from_flag: bool

    @property
    def written(self) -> str:
        """What the workflows get: the flag's value, else the production default."""
        if not self.from_flag:
            return self.default
        url = check_url(self.value, self.option)
        if not _WORKFLOW_URL.fullmatch(url):
            raise ConfigError(f"{self.option} {url!r}: only a plain URL can go into a workflow")
        return url

    def note(self, read_projects: bool) -> str | None:
        """Said when the environment held another URL than the one the workflows get."""
        if self.from_flag or self.value.rstrip("/") == self.default.rstrip("/"):
            return None
        shown = term(without_userinfo(self.value))
        used = "was used to read the Projects, not" if read_projects else "is not"
        return (
            f"Note: {self.variable}={shown} (from the environment) {used} written into CI: "
            f"the workflows use {self.default} (pass {self.option} to write another URL)."
        )


def urls(options: dict[str, Any], context: click.Context) -> tuple[Url, Url]:
    """The API and auth URLs of this run, knowing which came as flags."""

    def one(name: str, option: str, variable: str, default: str) -> Url:
        source = context.get_parameter_source(name)
        flag = source == click.core.ParameterSource.COMMANDLINE
        return Url(option, variable, default, options[name], flag)

    return (
        one("api_url", "--api-url", "OYSTEHR_PROJECT_API_URL", DEFAULT_API_URL),
        one("auth_url", "--auth-url", "OYSTEHR_AUTH_URL", DEFAULT_AUTH_URL),
    )


def _template(name: str) -> str:
    return resources.files("reconciler").joinpath(f"data/init/{name}").read_text(encoding="utf-8")


def credential_names(project_files: Iterable[Path]) -> list[str]:
    """The environment variable names the files' `auth` blocks use, in file order.

    A file without `auth` uses the default M2M names; a file that does not parse is
    skipped here (validate reports it)."""
    names: list[str] = []
    for doc in _documents(project_files):
        auth = doc.get("auth")
        if isinstance(auth, dict):
            found = [
                auth[key]
                for key in ("accessTokenEnv", "clientIdEnv", "clientSecretEnv")
                if isinstance(auth.get(key), str)
            ]
        else:
            found = list(DEFAULT_AUTH_NAMES)
        names += [name for name in found if name not in names]
    return names


def secret_variables(project_files: Iterable[Path]) -> list[str]:
    """The `RECONCILER_SECRET_…` variables the files' secrets read (`valueFrom.env`, after
    the files' own vars and includes), in file order; a name that needs a variable only
    the workflows give (`RECONCILER_VAR_…`) is left out, as is a file that does not load."""
    from reconciler.files import load_project_file
    from reconciler.secretvalues import ENV, ENV_NAME, ENV_PREFIX, declared_sources

    names: list[str] = []
    for path in project_files:
        project, _ = load_project_file(str(path), env={})
        for source in declared_sources(project.data if project else {}).values():
            variable = source.variable or ""
            complete = ENV_NAME.fullmatch(variable.removeprefix(ENV_PREFIX))
            if source.kind == ENV and complete and variable not in names:
                names.append(variable)
    return names


def project_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def render_workflow(
    name: str,
    action: ActionRef,
    names: Sequence[str],
    *,
    api_url: str = DEFAULT_API_URL,
    auth_url: str = DEFAULT_AUTH_URL,
    secrets: Sequence[str] = (),
    build: str = "",
    zambdas: ZambdaFiles = ZambdaFiles(),
) -> str:
    """One workflow from its template: the action, the API, the credential mappings, for
    Zambda functions the build command, the paths their zips are built from, and the
    zips the plan artifact carries; in apply's apply step, the `RECONCILER_SECRET_…`
    values from the production environment's secrets of the same names."""
    text = _template(f"workflows/{name}.yml")

    def secret_values(match: re.Match[str]) -> str:
        lines = [f"{n}: ${{{{ secrets.{n} }}}}" for n in secrets]
        lines.insert(0, "# valueFrom.env values: secrets of the production environment.")
        return "".join(f"{match[1]}{line}\n" for line in lines)

    def source_inputs(match: re.Match[str]) -> str:
        return "".join(f"{match[1]}- {json.dumps(glob)}\n" for glob in zambdas.inputs)

    def artifact(match: re.Match[str]) -> str:
        indent = match[1]
        if not zambdas.zips:
            return f"{indent}path: plan.json\n"
        lines = [f"{indent}path: |", f"{indent}  plan.json"]
        lines += [f"{indent}  {glob}" for glob in zambdas.zips]
        if any(part.startswith(".") for glob in zambdas.zips for part in glob.split("/")):
            lines.append(f"{indent}include-hidden-files: true # the zips' folder is hidden")
        return "".join(line + "\n" for line in lines)

    text = _SECRETS_LINE.sub(secret_values, text)
    text = _SOURCE_INPUTS_LINE.sub(source_inputs, text)
    text = _ARTIFACT_LINE.sub(artifact, text)

    def credentials(match: re.Match[str]) -> str:
        indent, which = match[1], match[2]
        if which == "READ":
            lines = [f"{n}: ${{{{ secrets.{READ_PREFIX}{n} }}}}" for n in names]
            lines.insert(0, f"# Read-only: repository secrets {READ_PREFIX}<NAME>.")
        else:
            lines = [f"{n}: ${{{{ secrets.{n} }}}}" for n in names]
            lines.insert(0, "# Write: secrets of the production environment.")
        return "".join(f"{indent}{line}\n" for line in lines)

    text = _PLACEHOLDER_LINE.sub(credentials, text)
    return (
        text.replace("@ACTION@", action.uses)
        .replace("@WRITE_NAMES@", " ".join(names))
        .replace("@API_URL@", api_url)
        .replace("@AUTH_URL@", auth_url)
        .replace("@BUILD@", json.dumps(build))
    )


def render_pre_commit(action: ActionRef) -> str:
    owner_repo = action.owner_repo or CANONICAL_REPOSITORY
    ref = action.ref or f"v{__version__}"
    if action.pinned:  # pre-commit autoupdate --freeze writes the same form
        ref += f"  # frozen: v{__version__}"
    return (
        _template("pre-commit-config.yaml")
        .replace("@REPO_URL@", f"https://github.com/{owner_repo}")
        .replace("@REF@", ref)
    )


def with_auth(text: str, slug: str) -> str:
    """An exported file with an `auth` block naming <SLUG>_CLIENT_ID / _SECRET."""
    from reconciler.export import with_auth_lines

    env = env_prefix(slug)
    auth = [
        "# The environment variables that hold this Project's credentials (names, never values).",
        "auth:",
        f"  clientIdEnv: {env}_CLIENT_ID",
        f"  clientSecretEnv: {env}_CLIENT_SECRET",
    ]
    return with_auth_lines(text, auth)


class Scaffold:
    """Writes files under a folder, never over an existing one; remembers which was which."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.written: list[str] = []
        self.skipped: list[str] = []

    def write(self, relative: str, text: str) -> bool:
        """Write a new file; False (and named as skipped) when it exists."""
        path = self.root / relative
        if path.exists() or path.is_symlink():
            self.skipped.append(relative)
            return False
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "x", encoding="utf-8") as fh:
                fh.write(text)
        except FileExistsError:
            self.skipped.append(relative)
            return False
        except OSError as exc:
            raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
        self.written.append(relative)
        return True


def policy_text() -> str:
    """The read-only access policy as JSON, one rule a line."""
    rules = ",\n".join(f"    {json.dumps(rule)}" for rule in READ_ONLY_POLICY["rule"])
    return f'{{\n  "rule": [\n{rules}\n  ]\n}}'


def next_steps(names: Sequence[str], secrets: Sequence[str] = ()) -> str:
    """What to create on GitHub (and in Oystehr) for the workflows to run."""
    read = "\n".join(f"     gh secret set {READ_PREFIX}{n}" for n in names)
    write = "\n".join(f"     gh secret set {n} --env production" for n in [*names, *secrets])
    policy = "\n".join(f"   {line}" for line in policy_text().splitlines())
    return f"""
Next (in your repository's Settings on GitHub, or with the gh CLI as shown):

1. Repository secrets for plan and drift: the credentials of a READ-ONLY M2M
   client (access policy in 3), under these names:
{read}

2. An environment named production (Settings > Environments > New environment):
   - Required reviewers: the people who approve each apply
   - Deployment branches and tags: Selected branches and tags, add main
   - Environment secrets for apply: an M2M client that may write, and the
     values of the files' valueFrom.env secrets (apply only; plan never reads them):
{write}
   Environments need a public repository or a paid plan. A private repository
   on GitHub Free has none: apply then fails with one line naming the empty
   secret. Do not put write credentials in repository secrets instead (any
   pull request branch could read them): apply from a trusted machine with
   `reconciler plan --out plan.json && reconciler apply --plan plan.json`.

3. In Oystehr, give the READ_ M2M clients this access policy (read only):
{policy}

4. Commit and push to main. Then open a pull request that changes a file under
   projects/: its plan appears as a comment; merging applies it once a
   reviewer approves the production deployment.
"""


@click.command()
@click.argument("directory", default=".", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--project-id",
    "project_ids",
    multiple=True,
    metavar="ID",
    help="Export this Project to projects/<slug>.yaml; repeatable. Without it: an example.",
)
@click.option(
    "--action",
    "action_ref",
    default=None,
    metavar="OWNER/REPO@SHA",
    help=(
        "The action the workflows use, pinned to a 40-hex commit (default: this release's "
        f"commit of {CANONICAL_REPOSITORY}). A tag or branch works, with a warning."
    ),
)
@click.option(
    "--build",
    default="",
    metavar="COMMAND",
    help=(
        "The command your repository builds its Zambda zips with (e.g. 'npm run build:zips'): "
        "the workflows run it in the plan job, never in the apply job."
    ),
)
@api_options
def init(
    directory: Path, project_ids: tuple[str, ...], action_ref: str | None, build: str, **options
) -> None:
    """Set up a settings repository: project files, schemas, workflows, pre-commit.

    The workflows follow the project files already under projects/ (and base/):
    the credential names of their auth blocks, the RECONCILER_SECRET_ variables
    their secrets read, the sourceInputs of their functions. Without such files
    it writes an example. Existing files are skipped and named, never
    overwritten (to write the workflows again, delete them first). With --project-id
    (needs OYSTEHR_ACCESS_TOKEN, or OYSTEHR_CLIENT_ID + OYSTEHR_CLIENT_SECRET)
    each Project is exported as it is now, so the first plan shows no change.
    The workflows get the production API and auth URLs unless --api-url and
    --auth-url are given as flags (the environment's URLs only read the
    Projects). Ends by printing the secrets and the environment to create;
    -q prints only the files written and skipped.

    \b
      reconciler init
      reconciler init my-settings --project-id fd9b1113-4bd2-4dad-8631-a95ba035dfda
    """
    api_url, auth_url = urls(options, click.get_current_context())
    try:
        action = ActionRef.parse(action_ref) if action_ref else ActionRef.default()
        if warning := action.mutable_warning():
            click.echo(warning, err=True)
        written = (api_url.written, auth_url.written)  # refused before anything is read
        scaffold = Scaffold(directory)
        exported = write_projects(scaffold, project_ids, options)
        names, secrets, zambdas = _write_rest(scaffold, action, *written, build)
    except ReconcilerError as exc:
        raise click.ClickException(str(exc)) from exc
    for relative in scaffold.written:
        click.echo(f"wrote   {relative}")
    for relative in scaffold.skipped:
        click.echo(f"skipped {relative} (exists; not overwritten)")
    if options["quiet"]:
        return
    for url in (api_url, auth_url):
        note = url.note(read_projects=bool(project_ids))
        if note:
            click.echo(note)
    if exported:
        flags = [f"{u.option} {u.value}" for u in (api_url, auth_url) if u.from_flag]
        click.echo(plan_here(exported, directory, flags))
    click.echo(next_steps(names, secrets), nl=False)
    if zambdas.zips and not build:
        click.echo(
            "\nThe project files name Zambda zips: give the workflows the command that builds "
            "them\n(the build input of the steps that say so, or init --build COMMAND).",
        )


def plan_here(exported: Sequence[Path], directory: Path, flags: Sequence[str]) -> str:
    """How to see the exports' first plan (no change) from this machine: the credentials
    their auth blocks name, which the environment may not hold yet."""
    import os
    import shlex

    names = credential_names(exported)
    missing = [name for name in names if not os.environ.get(name)]
    command = " ".join(["reconciler plan", *flags])
    if str(directory) not in ("", "."):
        command = f"cd {term(shlex.quote(str(directory)))} && {command}"
    if not missing:
        verb = "is" if len(names) == 1 else "are"
        return f"{_and(names)} {verb} set here: `{command}` shows no change."
    whose, where = (
        ("that Project", "the file's auth block names")
        if len(exported) == 1
        else ("each Project", "the files' auth blocks name")
    )
    return (
        f"To plan from here, export {_and(missing)} (an M2M client of {whose}: {where} "
        f"them); then `{command}` shows no change."
    )


def _and(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _write_rest(
    scaffold: Scaffold, action: ActionRef, api_url: str, auth_url: str, build: str = ""
) -> tuple[list[str], list[str], ZambdaFiles]:
    """The schemas, workflows and pre-commit config; what the workflows follow of the
    project files: their credential names, secret variables and Zambda files."""
    from reconciler.schema import fragment_schema_text, schema_text

    scaffold.write("schemas/project.schema.json", schema_text())
    scaffold.write("schemas/fragment.schema.json", fragment_schema_text())
    files = project_files(scaffold.root / "projects")
    names, secrets = credential_names(files), secret_variables(files)
    zambdas = ZambdaFiles.found_in(files + project_files(scaffold.root / "base"))
    for name in WORKFLOWS:
        text = render_workflow(
            name,
            action,
            names,
            api_url=api_url,
            auth_url=auth_url,
            secrets=secrets,
            build=build,
            zambdas=zambdas,
        )
        scaffold.write(f".github/workflows/{name}.yml", text)
    scaffold.write(".pre-commit-config.yaml", render_pre_commit(action))
    return names, secrets, zambdas


def write_projects(
    scaffold: Scaffold, project_ids: Sequence[str], options: dict[str, Any]
) -> list[Path]:
    """The example (only where `projects/` holds no project file yet: the workflows
    then follow the files there), or each Project's export with its `auth` block; the
    exports written."""
    if not project_ids:
        if not project_files(scaffold.root / "projects"):
            scaffold.write("projects/example.yaml", _template("example.yaml"))
        return []
    import os

    from reconciler.commands import Run
    from reconciler.credentials import resolve_credentials
    from reconciler.export import export_project

    run = Run(options)  # -v logs the requests; tokens and secrets stay out of the output
    api = run.api()
    credentials = resolve_credentials(None, os.environ)
    # Within this run only: a file left from an earlier run is skipped, not renamed.
    taken: set[str] = set()
    exported = []
    for project_id in dict.fromkeys(project_ids):
        text = export_project(
            api, credentials, project_id, schema_ref="../schemas/project.schema.json"
        )
        name = yaml.safe_load(text).get("name")
        relative = f"projects/{slug_for(name, project_id, taken)}.yaml"
        if scaffold.write(relative, with_auth(text, Path(relative).stem)):
            exported.append(scaffold.root / relative)
    return exported
