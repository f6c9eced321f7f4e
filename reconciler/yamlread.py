"""Read one YAML file with FILE:LINE:COL for everything in it.

Every later command starts from here and stops before any request when a file
has a problem, so reading reports *every* problem as one :class:`Problem` with a
1-based line and column, and never raises for bad input.

How a file is read, and why:

- Bytes first, then UTF-8, so an invalid byte is reported at its line and
  column instead of as a decoding traceback; control characters are found by
  one regex before the parser sees them.
- ``yaml.compose`` (libyaml's ``CParser`` when available) gives nodes that
  carry their position; the Python values are built here from the nodes
  (:class:`Builder`). That is where locations are recorded, duplicate keys are
  caught (PyYAML's constructor silently keeps the last one) and ``${VAR}`` is
  substituted. Composing is done once per file; building once per Project that
  reads it (a fragment is substituted with each including Project's values).
- Plain scalars resolve by the YAML 1.2 core schema, as editors do: ``yes``,
  ``no``, ``on`` and ``off`` are strings (``name: NO`` stays ``"NO"``), dates
  are strings, and only ``true``/``false`` are booleans.
- Anchors and aliases are refused: a project file is a handful of keys, and
  refusing them rules out alias bombs and self-referencing documents.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import BaseResolver

from reconciler import schema
from reconciler.substitution import Rules, Variables

Path = tuple[Any, ...]
Location = tuple[int, int]


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with one file, at a 1-based line and column.

    A problem in a fragment names the files that include it: ``message`` ends with
    ``(included from …)`` and ``included_from`` holds each include chain.
    """

    file: str
    line: int
    column: int
    message: str
    included_from: tuple[str, ...] = field(default=(), compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"

    def to_dict(self) -> dict:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "message": self.message,
        }


def read_document(
    raw: bytes | str, path: str, what: str
) -> tuple[MappingNode | None, list[Problem]]:
    """The composed top-level mapping of one file, or None and why. ``what`` names the
    kind of file in messages ("a project file", "a fragment")."""
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
        return None, [_yaml_problem(error, text, path, what)]
    except yaml.YAMLError as error:  # no position: the reader's own complaints
        return None, [Problem(path, 1, 1, f"invalid YAML: {error}")]
    except RecursionError:
        return None, [Problem(path, 1, 1, "invalid YAML: nested too deeply")]

    if root is None:
        if what == "a project file":
            message = "empty file: a project file is a mapping of settings with at least an id"
        else:
            message = f"empty file: {what} is a mapping of settings"
        return None, [Problem(path, 1, 1, message)]
    if not isinstance(root, MappingNode):
        line, column = _mark(root)
        kind = "a list" if isinstance(root, SequenceNode) else "a single value"
        message = f"the document is {kind}: {what} is a mapping of settings (key: value)"
        return None, [Problem(path, line, column, message)]
    return root, []


def top_level(root: MappingNode, key: str) -> Node | None:
    """The node of a top-level key's first occurrence, without building the document."""
    for key_node, value_node in root.value:
        if isinstance(key_node, ScalarNode) and key_node.tag == _STR and key_node.value == key:
            return value_node
    return None


def plain_value(node: Node | None, path: str) -> Any:
    """A node's value, built without substitution and without recording anything."""
    if node is None:
        return None
    return Builder(path).build(node, ())


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

    def resolve(self, kind: type, value: str, implicit: tuple[bool, bool]) -> str:
        """BaseResolver.resolve without what this resolver never has (path resolvers,
        resolvers for any first character): libyaml calls it for every node."""
        if kind is ScalarNode:
            if implicit[0]:
                for tag, regexp in self.yaml_implicit_resolvers.get(value[:1], ()):
                    if regexp.match(value):
                        return tag
            return _STR
        return _SEQ if kind is SequenceNode else _MAP

    # Path resolvers (tags by position) are never used: nothing to track per node.
    def descend_resolver(self, current_node: Node | None, current_index: Any) -> None:
        pass

    def ascend_resolver(self) -> None:
        pass


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


_NO_RULES = Rules()


class Builder:
    """Turns composed nodes into Python values, recording where each one stands.

    With ``variables`` it substitutes ``${NAME}`` where ``rules`` say (values, and the
    object names of some kinds); without, every string stays as written.
    """

    def __init__(
        self, path: str, variables: Variables | None = None, rules: Rules = _NO_RULES
    ) -> None:
        self.path = path
        self.variables = variables
        self.rules = rules
        self.locations: dict[Path, Location] = {}
        self.key_locations: dict[Path, Location] = {}
        self.problems: list[Problem] = []
        self.reported: set[Path] = set()  # paths whose schema findings would repeat a problem
        self.written: dict[Path, str] = {}  # the file's text where ${VAR} put in another value
        # (path, final value, reads) of each string a variable's value went into.
        self.substituted: list[tuple[Path, str, list[tuple[str, str]]]] = []
        self._seen: set[int] = set()

    def build(self, node: Node, path: Path) -> Any:
        seen = id(node)
        if seen in self._seen:
            # compose() hands back the anchored node itself for every *alias, so its
            # mark is the anchor's: point at the key that holds the alias instead.
            self.locations[path] = self.key_locations.get(path, _mark(node))
            self._report(path, "aliases (*name) are not supported in project files: write it out")
            return None
        self.locations[path] = _mark(node)
        self._seen.add(seen)
        if isinstance(node, ScalarNode):  # most nodes
            return self._scalar(node, path)
        if isinstance(node, MappingNode):
            return self._mapping(node, path) if node.tag == _MAP else self._bad_tag(node, path)
        if node.tag != _SEQ:  # a SequenceNode, the third kind
            return self._bad_tag(node, path)
        return [self.build(item, (*path, index)) for index, item in enumerate(node.value)]

    def _mapping(self, node: MappingNode, path: Path) -> dict:
        result: dict[str, Any] = {}
        names = self.variables is not None and self.rules.in_keys(path)
        for key_node, value_node in node.value:
            key = self._key(key_node, path)
            if key is None:
                continue
            where = _mark(key_node)
            if names:
                key = self._substituted(key, (*path, key), where)
            at = (*path, key)
            if key in result:
                first = self.key_locations[at][0]
                inside = f" in {schema.field_name(path)}" if path else ""
                message = f"duplicate key '{key}'{inside}: already set at line {first}"
                self.problems.append(Problem(self.path, *where, message))
                continue
            self.key_locations[at] = where
            result[key] = self.build(value_node, at)
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
            shown = schema.quote(text) if self.rules.quotes(path) else "the value"
            self._report(path, f"{shown} is not a valid {_short_tag(tag)}")
            return None
        return self._bad_tag(node, path)

    def _string(self, text: str, path: Path) -> str:
        if "${" not in text:
            return text  # nothing to substitute: most strings
        if self.variables is None or not self.rules.in_value(path):
            if self.variables is None:
                self.reported.add(path)  # unsubstituted: its type and form are unknown
            return text
        value, problems, reads = self.variables.expand(text, quoted=self.rules.quotes(path))
        if reads:
            self.substituted.append((path, value, reads))
        if value != text:
            self.written[path] = text
        for message in problems:
            self._report(path, f"{schema.field_name(path)}: {message}" if path else message)
        return value

    def _substituted(self, text: str, path: Path, where: Location) -> str:
        """An object name of a kind whose names take ``${NAME}``."""
        value, problems, reads = self.variables.expand(text)  # type: ignore[union-attr]
        if reads:
            self.substituted.append(((*path[:-1], value), value, reads))
        for message in problems:
            self.problems.append(
                Problem(self.path, *where, f"{schema.field_name(path)}: {message}")
            )
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
    mark = node.start_mark
    return mark.line + 1, mark.column + 1


def nearest(locations: Mapping[Path, Any], keys: Path) -> tuple[Path, Any]:
    """The longest prefix of ``keys`` that ``locations`` knows, and what it holds there."""
    for end in range(len(keys), -1, -1):
        if keys[:end] in locations:
            return keys[:end], locations[keys[:end]]
    return (), None


def _yaml_problem(error: yaml.MarkedYAMLError, text: str, path: str, what: str) -> Problem:
    """PyYAML's complaint as one line at the place it points to."""
    mark = error.problem_mark or error.context_mark
    line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    if error.problem == "but found another document":
        message = f"a second YAML document starts here: {what} holds exactly one"
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
    if problem.startswith(("did not find expected key", "expected <block end>")):
        return _MISALIGNED  # a key indented more or less than the keys beside it
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
    return _MISALIGNED


_MISALIGNED = " (check this line's indentation: it must line up with the keys it belongs with)"


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
