"""Read project files: find them, read each (and the fragments it includes), substitute
``${VAR}``, validate, and check what needs every file at once (duplicate ids,
credentials in substituted values).

Every later command starts here and stops before any request when a file has a
problem, so the loader reports *every* problem in *every* file, each as one
:class:`Problem` with a 1-based line and column where its text is (in a fragment,
naming the files that include it), and never raises for bad input. Only a
missing path or an empty selection raises (``ConfigError``).

The concerns live in their own modules: ``yamlread`` (YAML with locations),
``substitution`` (``${NAME}`` and the credential check), ``includes`` (the
reader, fragments and the merge). Each Project is loaded and validated whole
before the next one is read, so a caller may hand it on as soon as it is valid.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from reconciler import kinds, schema
from reconciler.errors import ConfigError
from reconciler.escape import credential_variables
from reconciler.includes import (
    SUFFIXES,
    Includes,
    Layer,
    Owner,
    Reader,
    grouped,
    located,
    owner_of,
)
from reconciler.secretvalues import ENV, Source, credential_named, declared_sources, from_env
from reconciler.substitution import (
    BUILT_IN,
    MIN_COMPARED_CHARS,
    VARIABLE_PREFIX,
    Rules,
    Variables,
    leaked_credential,
    substitute,
)
from reconciler.yamlread import (
    Builder,
    Location,
    Path,
    Problem,
    nearest,
    plain_value,
    read_document,
    top_level,
)

__all__ = [
    "MIN_COMPARED_CHARS",
    "PROJECT_SUFFIXES",
    "VARIABLE_PREFIX",
    "LoadResult",
    "Problem",
    "ProjectFile",
    "load_projects",
    "substitute",
]

PROJECT_SUFFIXES = SUFFIXES
RULES = Rules.of(kinds.KINDS)


@dataclass
class ProjectFile:
    """One Project's effective document (after includes and substitution) and where each
    part of it is written.

    ``locations`` maps a key path such as ``("defaultPatientRole", "id")`` to the
    line and column of its *value* in the project file; ``key_locations`` to those
    of the key itself. The empty path is the top-level mapping. A Project that
    includes fragments also has ``owners``: the file (layer) each part was taken
    from; :meth:`where` and :meth:`problem` follow them.
    """

    path: str
    data: dict
    locations: dict[Path, Location] = field(default_factory=dict)
    key_locations: dict[Path, Location] = field(default_factory=dict)
    # (path, final value, [(variable, its value)]) for each string a variable went into.
    substituted: list[tuple[Path, str, list[tuple[str, str]]]] = field(default_factory=list)
    owners: dict[Path, Owner] = field(default_factory=dict)
    fragments: tuple[str, ...] = ()  # every fragment it includes, as the user sees its path
    warnings: list[Problem] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.data["id"]

    @property
    def stem(self) -> str:
        name = os.path.basename(self.path)
        for suffix in PROJECT_SUFFIXES:
            if name.endswith(suffix):
                return name[: -len(suffix)]
        return name

    @property
    def auth(self) -> dict | None:
        return self.data.get("auth")

    def where(self, *keys: Any, key: bool = False) -> tuple[str, Location, str]:
        """(file, (line, column), include chain) of a value (``key``: of its key), or of
        the nearest enclosing one that is known."""
        if self.owners:
            layer, there = owner_of(self.owners, keys)
            file, chain, values, names = (
                layer.file,
                layer.chain,
                layer.locations,
                layer.key_locations,
            )
        else:
            there, file, chain = keys, self.path, ""
            values, names = self.locations, self.key_locations
        if key and there in names:
            return file, names[there], chain
        return file, nearest(values, there)[1] or (1, 1), chain

    def location(self, *keys: Any) -> Location:
        """The value's line and column, or the nearest enclosing one that is known."""
        return self.where(*keys)[1]

    def key_location(self, *keys: Any) -> Location:
        """The key's line and column (falls back to the nearest known value)."""
        return self.where(*keys, key=True)[1]

    def problem(self, message: str, *keys: Any, key: bool = False) -> Problem:
        """A problem located where the value (or key) is written, for checks made after
        loading; in a fragment it names the file that includes it."""
        file, where, chain = self.where(*keys, key=key)
        return located(file, where, message, chain)

    def locate(self, *keys: Any) -> str:
        """``FILE:LINE:COL`` for a plan-time error: a setting at its value, an object
        (kind, name) at its name."""
        file, (line, column), _ = self.where(*keys, key=len(keys) > 1)
        return f"{file}:{line}:{column}"

    def source(self, *keys: Any) -> str | None:
        """``FILE:LINE`` where a desired value is written (its key's line), for plans."""
        file, (line, _), _ = self.where(*keys, key=True)
        return f"{file}:{line}"

    def sources_of(self, *keys: Any) -> list[str]:
        """``FILE:LINE`` of the key in every file that wrote a part of its value (a kind
        merged from a fragment and the project file names both), the winner last."""
        if not self.owners:
            return [self.source(*keys)]
        winner = owner_of(self.owners, keys)[0]
        layers = [
            layer
            for path, (layer, _) in self.owners.items()
            if path[: len(keys)] == keys and layer is not winner
        ]
        return [
            f"{layer.file}:{layer.key_at(keys)[0]}" for layer in dict.fromkeys([*layers, winner])
        ]


@dataclass
class LoadResult:
    """What :func:`load_projects` found: the valid files, every problem, the warnings."""

    projects: list[ProjectFile]
    problems: list[Problem]
    files_read: int
    warnings: list[Problem] = field(default_factory=list)
    fragments: dict[str, str] = field(default_factory=dict)  # real path -> as shown
    root: str | None = None  # the repository root, when an include needed it


def load_projects(
    paths: Sequence[str],
    env: Mapping[str, str] | None = None,
    *,
    root: str | None = None,
    relative_to: str | None = None,
    substitute_values: bool = True,
    on_valid: Callable[[ProjectFile], None] | None = None,
) -> LoadResult:
    """Find, read, substitute and validate every project file under ``paths``.

    ``root`` is the repository root fragments must lie in (default: found from the
    first path); ``relative_to`` is the folder paths are shown relative to (default:
    the current one). Without ``substitute_values``, every ``${...}`` stays as written
    (``compare --raw``). Raises ConfigError for a path that does not exist and when no
    project file is found; everything else wrong is a Problem in the result.
    ``on_valid`` is called with each file that is valid on its own, as soon as it is,
    while no file has had a problem (a plan starts reading that Project while later
    files load); problems across files (duplicate ids, credentials) are known only in
    the result.
    """
    env = os.environ if env is None else env
    cwd = os.path.abspath(relative_to) if relative_to else os.getcwd()
    found, problems = _find(paths, cwd)
    folders = [path for path in paths if os.path.isdir(path)]
    named = {display_path(path, cwd) for path in paths if path not in folders}
    reader = Reader(root, start=paths[0] if paths else ".", projects=folders)
    includes = Includes(reader, lambda path: display_path(path, cwd))
    loaded: list[ProjectFile] = []
    failed: set[str] = set()
    for shown, disk in found:
        project, file_problems = load_project_file(
            disk, env, includes=includes, shown=shown, substitute_values=substitute_values
        )
        if project is not None:
            loaded.append(project)
            if on_valid is not None and not file_problems and not problems:
                on_valid(project)
        if file_problems:
            failed.add(shown)
            problems.extend(_fragment_hint(problem, shown, named) for problem in file_problems)

    credentials = _credentials(loaded, env)
    secret_problems = _secret_env_problems(loaded, env)
    by_id: dict[str, list[ProjectFile]] = {}
    for project in loaded:
        project_id = project.data.get("id")
        if isinstance(project_id, str) and project_id:
            by_id.setdefault(project_id, []).append(project)
    for project in loaded:
        same = (
            by_id.get(project.data.get("id"), []) if isinstance(project.data.get("id"), str) else []
        )
        found_here = _duplicate_id(project, same) + _leaks(project, credentials)
        found_here += secret_problems.get(project.path, [])
        if found_here:
            failed.add(project.path)
            problems.extend(found_here)

    projects = [project for project in loaded if project.path not in failed]
    return LoadResult(
        projects=sorted(projects, key=lambda project: project.path),
        problems=grouped(problems),
        files_read=len(found),
        warnings=sorted({w for project in loaded for w in project.warnings}),
        fragments=dict(includes.fragments),
        root=reader.root if includes.fragments else None,
    )


MISSING_ID = "missing required key 'id'"


def _fragment_hint(problem: Problem, shown: str, named: Collection[str]) -> Problem:
    """A file named directly, outside any `projects` folder, that has no `id` is likely a
    fragment (`base/common.yaml`): say how fragments are checked."""
    folders = os.path.dirname(os.path.abspath(shown)).split(os.sep)
    if problem.message != MISSING_ID or shown not in named or "projects" in folders:
        return problem
    return replace(
        problem,
        message=f"{MISSING_ID} (a fragment? fragments are checked through the project "
        "files that include them: `reconciler validate`)",
    )


def _find(paths: Sequence[str], cwd: str) -> tuple[list[tuple[str, str]], list[Problem]]:
    """(shown, path) of each project file. Hidden folders (``.git``, editors' backups) are
    skipped; the same file named twice is read once; an unreadable folder is a problem,
    not an exception."""
    found: dict[str, tuple[str, str]] = {}  # real path -> (shown, path)
    problems: list[Problem] = []

    def add(path: str, real: str, real_root: str, root_name: str) -> None:
        if not real.startswith(real_root.rstrip(os.sep) + os.sep):
            # A link out of the folder (to /etc/shadow, say): never read, never echoed.
            message = f"refused: a link to a file outside {root_name}; a project file lives in it"
            problems.append(Problem(display_path(path, cwd), 1, 1, message))
            return
        found.setdefault(real, (display_path(path, cwd), path))

    def unreadable(error: OSError) -> None:
        name = display_path(error.filename or "", cwd)
        problems.append(Problem(name, 1, 1, f"cannot read folder: {_reason(error)}"))

    for raw in paths:
        if not os.path.lexists(raw):
            raise ConfigError(f"no such file or directory: {raw}{_start_here(paths)}")
        if not os.path.isdir(raw):
            folder = os.path.realpath(os.path.dirname(os.path.abspath(raw)))
            add(raw, os.path.realpath(raw), folder, "its folder")
            continue
        # The real path of each folder once, not of each file (a stat per part of the
        # path: most of finding 1,000 files): a file that is not a link is really
        # where its folder really is.
        shown, real_root = display_path(raw, cwd), os.path.realpath(raw)
        for folder, subfolders, names in os.walk(raw, onerror=unreadable):
            subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
            real_folder = os.path.realpath(folder)
            for name in sorted(names):
                if name.endswith(PROJECT_SUFFIXES):
                    path = os.path.join(folder, name)
                    link = os.path.islink(path)
                    real = os.path.realpath(path) if link else os.path.join(real_folder, name)
                    add(path, real, real_root, shown)

    if not found and not problems:
        raise ConfigError(f"no project files found in: {', '.join(paths)}{_start_here(paths)}")
    return sorted(found.values()), problems


def _start_here(paths: Sequence[str]) -> str:
    """For the default folder: how to get one (a fresh repository has none)."""
    if [os.path.normpath(path) for path in paths] != ["projects"]:
        return ""
    return (
        " (run `reconciler init` to start a settings repository here, or give the "
        "project files' paths)"
    )


def display_path(path: str, cwd: str | None = None) -> str:
    """``path`` relative to the current folder when it is under it, else as given."""
    cwd = cwd or os.getcwd()
    absolute = os.path.abspath(path)
    under = cwd.rstrip(os.sep) + os.sep
    if absolute.startswith(under):
        return absolute[len(under) :]  # what os.path.relpath says, without its work
    return os.path.normpath(path)


def load_project_file(
    path: str,
    env: Mapping[str, str] | None = None,
    *,
    includes: Includes | None = None,
    shown: str | None = None,
    substitute_values: bool = True,
) -> tuple[ProjectFile | None, list[Problem]]:
    """Read one file. The ProjectFile is None when there is no mapping to speak of."""
    shown = shown or path
    includes = includes or Includes(Reader(start=path), display_path)
    try:
        raw = includes.reader.read(path)
    except OSError as error:
        return None, [Problem(shown, 1, 1, f"cannot read file: {_reason(error)}")]
    env = os.environ if env is None else env
    return parse_project(
        raw, shown, env, includes=includes, disk=path, substitute_values=substitute_values
    )


def parse_project(
    raw: bytes | str,
    path: str,
    env: Mapping[str, str],
    *,
    includes: Includes | None = None,
    disk: str | None = None,
    substitute_values: bool = True,
) -> tuple[ProjectFile | None, list[Problem]]:
    """Parse, follow includes, substitute and validate one project file; ``path`` names
    it in problems, ``disk`` is where it is (for resolving its includes)."""
    root, problems = read_document(raw, path, "a project file")
    if root is None:
        return None, problems
    try:
        return _build_project(root, path, env, includes, disk or path, substitute_values)
    except RecursionError:
        return None, [Problem(path, 1, 1, "invalid YAML: nested too deeply")]


def _build_project(
    root: Any,
    path: str,
    env: Mapping[str, str],
    includes: Includes | None,
    disk: str,
    substitute_values: bool,
) -> tuple[ProjectFile, list[Problem]]:
    # id and vars are read first (unsubstituted): everything else may refer to them.
    declared = plain_value(top_level(root, "vars"), path)
    declared = declared if isinstance(declared, dict) else {}
    project_id = plain_value(top_level(root, "id"), path)
    variables = Variables(env, declared, project_id) if substitute_values else None
    builder = Builder(path, variables, RULES)
    own = Layer.built(builder, os.path.abspath(disk), builder.build(root, ()))
    problems = list(builder.problems)
    written, reported, substituted = own.written, own.reported, own.substituted
    project = ProjectFile(path, own.data, own.locations, own.key_locations, substituted)
    if "include" in own.data and isinstance(own.data["include"], list) and own.data["include"]:
        includes = includes or Includes(Reader(start=disk), display_path)
        effective, layers = includes.expand(own, variables, RULES, problems)
        project.data, project.owners = effective.data, effective.owners
        project.fragments = tuple(dict.fromkeys(layer.file for layer in layers))
        written, reported, substituted = {}, set(), []
        for layer in (own, *layers):
            mine = [p for p in layer.written if owner_of(effective.owners, p) == (layer, p)]
            written.update((p, layer.written[p]) for p in mine)
            reported |= {p for p in layer.reported if owner_of(effective.owners, p) == (layer, p)}
            substituted += [
                s for s in layer.substituted if owner_of(effective.owners, s[0]) == (layer, s[0])
            ]
        project.substituted = substituted

    if BUILT_IN in declared:
        message = (
            f"vars.{BUILT_IN}: {BUILT_IN} is built in (this file's id) and cannot be redefined"
        )
        problems.append(project.problem(message, "vars", BUILT_IN, key=True))
    if variables is not None and not problems:  # a fragment that did not read uses none
        for name in declared:
            if name not in variables.used and name != BUILT_IN:
                message = (
                    f"warning: vars.{name} is not used: no ${{{name}}} in this file or the "
                    "fragments it includes"
                )
                project.warnings.append(project.problem(message, "vars", name, key=True))

    findings = schema.check(project.data, written)
    findings += [schema.Finding(*problem) for problem in kinds.check_objects(project.data)]
    for finding in findings:
        if any(finding.path[:i] in reported for i in range(len(finding.path) + 1)):
            continue  # already said something about this value (e.g. an unset ${VAR})
        problems.append(project.problem(finding.message, *finding.path, key=finding.at_key))
    return project, problems


# --- checks across files --------------------------------------------------------------


def _credentials(projects: Sequence[ProjectFile], env: Mapping[str, str]) -> list[tuple[str, str]]:
    names = credential_variables(project.auth for project in projects)
    return [(name, env[name]) for name in names if len(env.get(name) or "") >= MIN_COMPARED_CHARS]


def _leaks(project: ProjectFile, credentials: Sequence[tuple[str, str]]) -> list[Problem]:
    """A problem for each substituted value that holds a credential the run can see (the
    variables any file's auth names, and the global ones), naming the variables, never
    the value: it would go into plans and PR comments. The final value is compared, so a
    credential split across two variables (or a variable and the text around it) is
    caught too."""
    problems = []
    for path, value, reads in project.substituted:
        why = leaked_credential(value, reads, credentials)
        if why:
            message = f"{why}, a credential: it would show in plans and PR comments"
            problems.append(project.problem(f"{schema.field_name(path)}: {message}", *path))
    return problems


def _secret_env_problems(
    projects: Sequence[ProjectFile], env: Mapping[str, str]
) -> dict[str, list[Problem]]:
    """Problems with the variables secrets read (`valueFrom.env`), by file: one variable
    read by two Projects without `shared: true` on each (a fragment shared by dev and
    production must not copy production's key into dev), and a value equal to any
    credential's (it would be copied into Oystehr). Names the variables, never a value."""
    names = credential_variables(project.auth for project in projects)
    readers: dict[str, list[tuple[ProjectFile, str, Source]]] = {}
    for project in projects:
        for name, source in declared_sources(project.data).items():
            if source.kind == ENV:
                readers.setdefault(source.variable or "", []).append((project, name, source))
    problems: dict[str, list[Problem]] = {}
    for variable, found in readers.items():
        for project, name, source in found:
            at = ("secrets", name, "valueFrom", "env")
            others = [
                _where_read(other, ("secrets", other_name, "valueFrom", "env"))
                for other, other_name, _ in found
                if other.path != project.path
            ]
            if others and not source.shared:
                where = ", ".join(others)
                message = (
                    f"secrets.{name}.valueFrom.env: {variable} is read by another Project "
                    f"of this run too ({where}); write `shared: true` beside env in each to "
                    "allow it (a fragment shared by environments must not copy one "
                    "Project's key into another)"
                )
                problems.setdefault(project.path, []).append(project.problem(message, *at))
            value = from_env(source, env)
            credential = credential_named(value, names, env) if value is not None else None
            if credential is not None:
                message = (
                    f"secrets.{name}.valueFrom.env: {variable} holds the value of {credential}, "
                    "a credential: it would be copied into Oystehr"
                )
                problems.setdefault(project.path, []).append(project.problem(message, *at))
    return problems


def _where_read(project: ProjectFile, keys: Path) -> str:
    """A Project's file, and where in what it includes a value is written if elsewhere."""
    source = project.source(*keys) or project.path
    return source if source.startswith(f"{project.path}:") else f"{project.path}, from {source}"


def _duplicate_id(project: ProjectFile, same_id: Sequence[ProjectFile]) -> list[Problem]:
    """A problem when other files (``same_id``: every file with this id) use this file's
    id too, naming the others."""
    others = ", ".join(
        f"{other.path}:{other.location('id')[0]}" for other in same_id if other is not project
    )
    if not others:
        return []
    return [project.problem(f"duplicate project id {project.id}: also in {others}", "id")]


def unincluded_fragments(result: LoadResult) -> list[Problem]:
    """A warning for each ``*.yaml``/``*.yml`` in a folder that holds fragments (and its
    subfolders; only the folder itself when it is the repository root) that no Project
    of this load includes: a fragment nobody includes is usually a forgotten one."""
    if not result.fragments:
        return []
    root = os.path.realpath(result.root or ".")
    known = set(result.fragments)
    warnings = []
    for folder in sorted({os.path.dirname(real) for real in known}):
        for name in _yaml_under(folder, recursive=folder != root):
            real = os.path.realpath(name)
            if real not in known:
                message = "warning: no project file checked here includes this fragment"
                warnings.append(Problem(display_path(name), 1, 1, message))
    return sorted(set(warnings))


def _yaml_under(folder: str, *, recursive: bool) -> list[str]:
    if not recursive:
        names = sorted(os.listdir(folder))
        return [os.path.join(folder, n) for n in names if n.endswith(PROJECT_SUFFIXES)]
    found = []
    for at, subfolders, names in os.walk(folder):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        found += [os.path.join(at, n) for n in sorted(names) if n.endswith(PROJECT_SUFFIXES)]
    return found


def has_include(path: str) -> bool:
    """Whether a file is a project file that includes fragments (export never
    overwrites one: it would drop what the fragments give)."""
    try:
        with open(path, "rb") as handle:
            root, _ = read_document(handle.read(), path, "a project file")
    except OSError:
        return False
    return root is not None and top_level(root, "include") is not None


def _reason(error: OSError) -> str:
    return (error.strerror or str(error)).lower()
