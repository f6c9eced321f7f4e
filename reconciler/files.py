"""Read project files: YAML with FILE:LINE:COL for everything, ${VAR}, schema, duplicate ids.

Every later command starts here and stops before any request when a file has a
problem, so the loader reports *every* problem in *every* file, each as one
:class:`Problem` with a 1-based line and column, and never raises for bad
input. Only a missing path or an empty selection raises (``ConfigError``).

How a file is read, and why:

- Bytes first, then UTF-8, so an invalid byte is reported at its line and
  column instead of as a decoding traceback; control characters are found by
  one regex before the parser sees them.
- ``yaml.compose`` (libyaml's ``CParser`` when available) gives nodes that
  carry their position; the Python values are built here from the nodes. That
  is where locations are recorded, duplicate keys are caught (PyYAML's
  constructor silently keeps the last one) and ``${VAR}`` is substituted.
- Plain scalars resolve by the YAML 1.2 core schema, as editors do: ``yes``,
  ``no``, ``on`` and ``off`` are strings (``name: NO`` stays ``"NO"``), dates
  are strings, and only ``true``/``false`` are booleans.
- Anchors and aliases are refused: a project file is a handful of keys, and
  refusing them rules out alias bombs and self-referencing documents.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import BaseResolver

from reconciler import kinds, schema
from reconciler.errors import ConfigError
from reconciler.escape import credential_variables

PROJECT_SUFFIXES = (".yaml", ".yml")

Path = tuple[Any, ...]
Location = tuple[int, int]


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with one file, at a 1-based line and column."""

    file: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"

    def to_dict(self) -> dict:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "message": self.message,
        }


@dataclass
class ProjectFile:
    """One project file after substitution: its data and where each part of it stands.

    ``locations`` maps a key path such as ``("defaultPatientRole", "id")`` to the
    line and column of its *value*; ``key_locations`` to those of the key itself.
    The empty path is the top-level mapping.
    """

    path: str
    data: dict
    locations: dict[Path, Location] = field(default_factory=dict)
    key_locations: dict[Path, Location] = field(default_factory=dict)
    # (path, VAR, value) for each value ${VAR} took from the environment.
    substituted: list[tuple[Path, str, str]] = field(default_factory=list)

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

    def location(self, *keys: Any) -> Location:
        """The value's line and column, or the nearest enclosing one that is known."""
        return _nearest(self.locations, keys)

    def key_location(self, *keys: Any) -> Location:
        """The key's line and column (falls back to the nearest known value)."""
        if keys in self.key_locations:
            return self.key_locations[keys]
        return self.location(*keys)

    def problem(self, message: str, *keys: Any) -> Problem:
        """A problem located at a value of this file, for checks made after loading."""
        line, column = self.location(*keys)
        return Problem(self.path, line, column, message)


@dataclass
class LoadResult:
    """What :func:`load_projects` found: the valid files and every problem."""

    projects: list[ProjectFile]
    problems: list[Problem]
    files_read: int


def load_projects(paths: Sequence[str], env: Mapping[str, str] | None = None) -> LoadResult:
    """Find, read, substitute and validate every project file under ``paths``.

    Raises ConfigError for a path that does not exist and when no project file
    is found; everything else wrong is a Problem in the result.
    """
    env = os.environ if env is None else env
    files, problems = find_project_files(paths)
    loaded: list[ProjectFile] = []
    failed: set[str] = set()
    for path in files:
        project, file_problems = load_project_file(path, env)
        if project is not None:
            loaded.append(project)
        if file_problems:
            failed.add(path)
            problems.extend(file_problems)

    for problem in _duplicate_ids(loaded) + credential_problems(loaded, env):
        failed.add(problem.file)
        problems.append(problem)

    projects = [project for project in loaded if project.path not in failed]
    return LoadResult(
        projects=sorted(projects, key=lambda project: project.path),
        problems=sorted(set(problems)),
        files_read=len(files),
    )


def find_project_files(paths: Sequence[str]) -> tuple[list[str], list[Problem]]:
    """Files named directly, plus ``*.yaml``/``*.yml`` found recursively in folders.

    Hidden folders (``.git``, editors' backups) are skipped. The same file named
    twice is read once. Paths are as a user reads them: relative to the current
    folder when under it. An unreadable folder is a problem, not an exception.
    """
    cwd = os.getcwd()
    found: dict[str, str] = {}  # real path -> displayed path
    problems: list[Problem] = []

    def add(path: str, root: str, root_name: str) -> None:
        real = os.path.realpath(path)
        if not real.startswith(os.path.realpath(root).rstrip(os.sep) + os.sep):
            # A link out of the folder (to /etc/shadow, say): never read, never echoed.
            message = f"refused: a link to a file outside {root_name}; a project file lives in it"
            problems.append(Problem(display_path(path, cwd), 1, 1, message))
            return
        found.setdefault(real, display_path(path, cwd))

    def unreadable(error: OSError) -> None:
        name = display_path(error.filename or "", cwd)
        problems.append(Problem(name, 1, 1, f"cannot read folder: {_reason(error)}"))

    for raw in paths:
        if not os.path.lexists(raw):
            raise ConfigError(f"no such file or directory: {raw}{_start_here(paths)}")
        if not os.path.isdir(raw):
            add(raw, os.path.dirname(os.path.abspath(raw)), "its folder")
            continue
        for folder, subfolders, names in os.walk(raw, onerror=unreadable):
            subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
            for name in sorted(names):
                if name.endswith(PROJECT_SUFFIXES):
                    add(os.path.join(folder, name), raw, display_path(raw, cwd))

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
    if absolute.startswith(cwd.rstrip(os.sep) + os.sep):
        return os.path.relpath(absolute, cwd)
    return os.path.normpath(path)


def load_project_file(
    path: str, env: Mapping[str, str] | None = None
) -> tuple[ProjectFile | None, list[Problem]]:
    """Read one file. The ProjectFile is None when there is no mapping to speak of."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as error:
        return None, [Problem(path, 1, 1, f"cannot read file: {_reason(error)}")]
    return parse_project(raw, path, os.environ if env is None else env)


def parse_project(
    raw: bytes | str, path: str, env: Mapping[str, str]
) -> tuple[ProjectFile | None, list[Problem]]:
    """Parse, substitute and validate one document; ``path`` only names it in problems."""
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            line, column = _byte_location(raw, error.start)
            byte = raw[error.start]
            message = f"invalid UTF-8: byte 0x{byte:02x} cannot be decoded (save the file as UTF-8)"
            return None, [Problem(path, line, column, message)]
    else:
        text = raw
    text = text.removeprefix("\ufeff")  # a BOM is invisible to the user: do not count it

    problems = [
        Problem(path, *_text_location(text, match.start()), _control_message(match.group()))
        for match in _NOT_PRINTABLE.finditer(text)
    ]
    if problems:
        return None, problems

    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as error:
        return None, [_yaml_problem(error, text, path)]
    except yaml.YAMLError as error:  # no position: the reader's own complaints
        return None, [Problem(path, 1, 1, f"invalid YAML: {error}")]
    except RecursionError:
        return None, [Problem(path, 1, 1, "invalid YAML: nested too deeply")]

    if root is None:
        message = "empty file: a project file is a mapping of settings with at least an id"
        return None, [Problem(path, 1, 1, message)]
    if not isinstance(root, MappingNode):
        line, column = _mark(root)
        kind = "a list" if isinstance(root, SequenceNode) else "a single value"
        message = f"the document is {kind}: a project file is a mapping of settings (key: value)"
        return None, [Problem(path, line, column, message)]

    builder = _Builder(path, env)
    try:
        data = builder.build(root, ())
    except RecursionError:
        return None, [Problem(path, 1, 1, "invalid YAML: nested too deeply")]
    project = ProjectFile(path, data, builder.locations, builder.key_locations, builder.substituted)
    problems = builder.problems
    findings = schema.check(data, builder.written)
    findings += [schema.Finding(*problem) for problem in kinds.check_objects(data)]
    for finding in findings:
        if any(finding.path[:i] in builder.reported for i in range(len(finding.path) + 1)):
            continue  # already said something about this value (e.g. an unset ${VAR})
        if finding.at_key:
            line, column = project.key_location(*finding.path)
        else:
            line, column = project.location(*finding.path)
        problems.append(Problem(path, line, column, finding.message))
    return project, problems


# --- ${VAR} substitution ----------------------------------------------------------

# One scan finds the three things a "$" can start: "$${" (a literal "${"),
# "${NAME}" / "${NAME:-default}", and a "${" that is neither (groups unmatched).
# A default may not hold "${": nesting is not supported and must not leave one behind.
_REFERENCE = re.compile(r"\$\$\{|\$\{(?:([A-Za-z_][A-Za-z0-9_]*)(?:(:-)((?:(?!\$\{)[^}])*))?\})?")


VARIABLE_PREFIX = "RECONCILER_VAR_"
# Substituted values shorter than this are not compared with credentials: too many
# ordinary words would match a short one.
MIN_COMPARED_CHARS = 8


def substitute(
    value: str, env: Mapping[str, str], read: list[tuple[str, str]] | None = None
) -> tuple[str, list[str]]:
    """Replace ``${VAR}`` / ``${VAR:-default}`` / ``$${`` in one string.

    ``${VAR}`` reads ``RECONCILER_VAR_VAR`` (never ``VAR`` itself: a CI job's credentials
    cannot be written into a setting). Returns the new string and the problems found
    (unset variables, malformed references); ``read`` collects ``(VAR, value)`` for each
    value taken from the environment (defaults are not). ``${VAR:-default}`` takes the
    default when the variable is unset or empty, as the shell does.
    """
    if "${" not in value:
        return value, []
    problems: list[str] = []

    def replace(match: re.Match[str]) -> str:
        text = match.group()
        if text == "$${":
            return "${"
        name, has_default, default = match.groups()
        if name is None:
            end = value.find("}", match.start())
            shown = value[match.start() : end + 1] if end != -1 else value[match.start() :]
            problems.append(
                f"invalid reference {schema.quote(shown)}: write ${{NAME}} or "
                "${NAME:-default}, or $${ for a literal ${"
            )
            return text
        current = env.get(VARIABLE_PREFIX + name)
        if has_default and not current:
            return default
        if current is None:
            also = f" ({name} is set but is not read)" if name in env else ""
            problems.append(f"{VARIABLE_PREFIX}{name} is not set{also}")
            return text
        if read is not None:
            read.append((name, current))
        return current

    return _REFERENCE.sub(replace, value), problems


def credential_problems(projects: Sequence[ProjectFile], env: Mapping[str, str]) -> list[Problem]:
    """A problem for each substituted value that holds a credential the run can see (the
    variables any file's auth names, and the global ones), naming the variable, never
    the value: it would go into plans and PR comments."""
    names = credential_variables(project.auth for project in projects)
    credentials = [
        (name, env[name]) for name in names if len(env.get(name) or "") >= MIN_COMPARED_CHARS
    ]
    problems = []
    for project in projects:
        for path, variable, value in project.substituted:
            for name, credential in credentials:
                if credential in value:
                    problems.append(
                        project.problem(
                            f"{schema.field_name(path)}: {VARIABLE_PREFIX}{variable} holds the "
                            f"value of {name}, a credential: it would show in plans and PR "
                            "comments",
                            *path,
                        )
                    )
                    break
    return problems


# --- YAML ----------------------------------------------------------------------------

_STR = "tag:yaml.org,2002:str"
_NULL = "tag:yaml.org,2002:null"
_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"


class _CoreResolver(BaseResolver):
    """Implicit types of the YAML 1.2 core schema (PyYAML only knows YAML 1.1's)."""


_CoreResolver.add_implicit_resolver(
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_CoreResolver.add_implicit_resolver(
    _NULL, re.compile(r"^(?:~|null|Null|NULL|)$"), list("~nN") + [""]
)
_CoreResolver.add_implicit_resolver(
    _INT, re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789")
)
_CoreResolver.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+.0123456789"),
)

try:  # libyaml: the composer runs in C, which is most of what makes validate fast
    from yaml.cyaml import CParser

    class _Loader(CParser, _CoreResolver):
        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            _CoreResolver.__init__(self)

except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml.composer import Composer
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _Loader(Reader, Scanner, Parser, Composer, _CoreResolver):  # type: ignore[no-redef]
        def __init__(self, stream: str) -> None:
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            Parser.__init__(self)
            Composer.__init__(self)
            _CoreResolver.__init__(self)


class _Builder:
    """Turns composed nodes into Python values, recording where each one stands."""

    def __init__(self, path: str, env: Mapping[str, str]) -> None:
        self.path = path
        self.env = env
        self.locations: dict[Path, Location] = {}
        self.key_locations: dict[Path, Location] = {}
        self.problems: list[Problem] = []
        self.reported: set[Path] = set()  # paths whose schema findings would repeat a problem
        self.written: dict[Path, str] = {}  # the file's text where ${VAR} put in another value
        self.substituted: list[tuple[Path, str, str]] = []
        self._seen: set[int] = set()

    def build(self, node: Node, path: Path) -> Any:
        if id(node) in self._seen:
            # compose() hands back the anchored node itself for every *alias, so its
            # mark is the anchor's: point at the key that holds the alias instead.
            self.locations[path] = self.key_locations.get(path, _mark(node))
            self._report(path, "aliases (*name) are not supported in project files: write it out")
            return None
        self.locations[path] = _mark(node)
        self._seen.add(id(node))
        if isinstance(node, MappingNode):
            return self._mapping(node, path) if node.tag == _MAP else self._bad_tag(node, path)
        if isinstance(node, SequenceNode):
            if node.tag != _SEQ:
                return self._bad_tag(node, path)
            return [self.build(item, (*path, index)) for index, item in enumerate(node.value)]
        return self._scalar(node, path)

    def _mapping(self, node: MappingNode, path: Path) -> dict:
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = self._key(key_node, path)
            if key is None:
                continue
            where = _mark(key_node)
            if key in result:
                first = self.key_locations[(*path, key)][0]
                inside = f" in {schema.field_name(path)}" if path else ""
                message = f"duplicate key '{key}'{inside}: already set at line {first}"
                self.problems.append(Problem(self.path, *where, message))
                continue
            self.key_locations[(*path, key)] = where
            result[key] = self.build(value_node, (*path, key))
        return result

    def _key(self, node: Node, path: Path) -> str | None:
        if isinstance(node, ScalarNode) and node.tag == _STR:
            return node.value
        kind = _KEY_KINDS.get(node.tag, "a tagged value") if isinstance(node, ScalarNode) else ""
        got = f"{kind} {node.value}" if kind in _KEY_KINDS.values() else kind or "a collection"
        message = f"a key must be a string, got {got} (quote it)"
        self.problems.append(Problem(self.path, *_mark(node), message))
        return None

    def _scalar(self, node: ScalarNode, path: Path) -> Any:
        text, tag = node.value, node.tag
        try:
            if tag == _STR:
                return self._string(text, path)
            if tag == _NULL:
                return None
            if tag == _BOOL:
                return {"true": True, "false": False}[text.lower()]
            if tag == _INT:
                return _to_int(text)
            if tag == _FLOAT:
                return _to_float(text)
        except (KeyError, ValueError):
            self._report(path, f"{schema.quote(text)} is not a valid {_short_tag(tag)}")
            return None
        return self._bad_tag(node, path)

    def _string(self, text: str, path: Path) -> str:
        read: list[tuple[str, str]] = []
        value, problems = substitute(text, self.env, read)
        self.substituted += [(path, name, current) for name, current in read]
        if value != text:
            self.written[path] = text
        field_prefix = f"{schema.field_name(path)}: " if path else ""
        for message in problems:
            self._report(path, field_prefix + message)
        return value

    def _bad_tag(self, node: Node, path: Path) -> None:
        self._report(path, f"unsupported YAML tag {_short_tag(node.tag)}")
        return None

    def _report(self, path: Path, message: str) -> None:
        self.problems.append(Problem(self.path, *self.locations[path], message))
        self.reported.add(path)


_KEY_KINDS = {_NULL: "null", _BOOL: "boolean", _INT: "integer", _FLOAT: "number"}


def _to_int(text: str) -> int:
    if text.startswith(("0o", "0x")):
        return int(text[2:], 8 if text[1] == "o" else 16)
    return int(text, 10)


def _to_float(text: str) -> float:
    lowered = text.lower()
    if lowered.endswith(".inf"):
        return -math.inf if lowered.startswith("-") else math.inf
    if lowered == ".nan":
        return math.nan
    return float(text)


def _short_tag(tag: str) -> str:
    return "!!" + tag.removeprefix("tag:yaml.org,2002:") if tag.startswith("tag:yaml.org") else tag


def _mark(node: Node) -> Location:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _nearest(locations: Mapping[Path, Location], keys: Path) -> Location:
    for end in range(len(keys), -1, -1):
        if keys[:end] in locations:
            return locations[keys[:end]]
    return 1, 1


def _yaml_problem(error: yaml.MarkedYAMLError, text: str, path: str) -> Problem:
    """PyYAML's complaint as one line at the place it points to."""
    mark = error.problem_mark or error.context_mark
    line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    if error.problem == "but found another document":
        message = "a second YAML document starts here: a project file holds exactly one"
        return Problem(path, line, column, message)
    lines = text.splitlines()
    if mark and mark.line < len(lines) and lines[mark.line][mark.column : mark.column + 1] == "\t":
        return Problem(path, line, column, "tab character: YAML indents with spaces, not tabs")
    message = f"invalid YAML: {error.problem or error.context}"
    if error.problem and error.context and error.context_mark:
        started = f"line {error.context_mark.line + 1}, column {error.context_mark.column + 1}"
        message += f" ({error.context} that started at {started})"
    return Problem(path, line, column, message + _yaml_hint(error, lines))


# A key glued to its value ("name:SANDBOX"): YAML reads it as one string.
_NO_SPACE_AFTER_COLON = re.compile(r"^\s*[\w-]+:(?![\s/])\S")


def _missing_space(index: int) -> str:
    return f" (a space missing after the colon on line {index + 1}? YAML needs key: value)"


def _yaml_hint(error: yaml.MarkedYAMLError, lines: list[str]) -> str:
    """What usually causes PyYAML's two most common complaints, as a hint to append."""
    problem, mark = error.problem or "", error.problem_mark
    if mark is None or mark.line >= len(lines):
        return ""
    if problem.startswith("could not find expected ':'") and error.context_mark:
        started = error.context_mark.line
        if started < len(lines) and _NO_SPACE_AFTER_COLON.match(lines[started]):
            return _missing_space(started)
        return " (every key needs a colon and a space after it: key: value)"
    if not problem.startswith("mapping values are not allowed"):
        return ""
    above = next((n for n in range(mark.line - 1, -1, -1) if lines[n].strip()), None)
    if above is not None and _NO_SPACE_AFTER_COLON.match(lines[above]):
        return _missing_space(above)
    if ": " in lines[mark.line][: mark.column]:  # this colon is inside a value
        key, _, value = lines[mark.line].partition(": ")
        value = value.partition(" #")[0].strip()
        if '"' in value or "\\" in value:
            return " (quote a value that holds ': ')"
        return f' (quote a value that holds ": ", like {key.strip()}: "{value}")'

    return " (check this line's indentation: it must line up with the keys it belongs with)"


# Characters YAML does not allow in a stream (YAML 1.1 section 5.1, as PyYAML enforces).
_NOT_PRINTABLE = re.compile(
    "[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"
)


def _control_message(char: str) -> str:
    return f"control character U+{ord(char):04X} is not allowed in a YAML file"


def _text_location(text: str, index: int) -> Location:
    line_start = text.rfind("\n", 0, index) + 1
    return text.count("\n", 0, index) + 1, index - line_start + 1


def _byte_location(raw: bytes, index: int) -> Location:
    line_start = raw.rfind(b"\n", 0, index) + 1
    # Count characters, not bytes, before the bad byte: that is the column an editor shows.
    column = len(raw[line_start:index].decode("utf-8", errors="replace")) + 1
    return raw.count(b"\n", 0, index) + 1, column


def _duplicate_ids(projects: list[ProjectFile]) -> list[Problem]:
    """A problem on each file whose id another file uses too, naming the others."""
    by_id: dict[str, list[ProjectFile]] = {}
    for project in projects:
        project_id = project.data.get("id")
        if isinstance(project_id, str) and project_id:
            by_id.setdefault(project_id, []).append(project)
    problems = []
    for project_id, group in by_id.items():
        for project in group:
            others = ", ".join(
                f"{other.path}:{other.location('id')[0]}" for other in group if other is not project
            )
            if others:
                problems.append(
                    project.problem(f"duplicate project id {project_id}: also in {others}", "id")
                )
    return problems


def _reason(error: OSError) -> str:
    return (error.strerror or str(error)).lower()
