"""``${NAME}`` substitution: where it applies, what a name reads, and the credential check.

A name reads, in order: the project file's ``vars`` (strings), the built-in
``PROJECT_ID`` (the file's ``id``), then the environment variable
``RECONCILER_VAR_NAME`` (never ``NAME`` itself: a CI job's credentials cannot be
written into a setting). ``${NAME:-default}`` takes the default when the value is
unset or empty, as the shell does; ``$${`` is a literal ``${``.

Substitution applies to string values, never to keys, except the object names of
kinds that say so (``Kind.substitute_names``); never in ``include``, ``id``,
``vars`` or ``renamedFrom``. A substituted value that holds a credential the run
can see is an error naming the variables, never the value: the check runs on the
final value, so a credential split across two variables (or a variable and the
text around it) is caught too.

Pure: the environment comes in as a mapping.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reconciler.schema import quote

VARIABLE_PREFIX = "RECONCILER_VAR_"
BUILT_IN = "PROJECT_ID"
# Substituted values shorter than this are not compared with credentials: too many
# ordinary words would match a short one.
MIN_COMPARED_CHARS = 8
# Top-level keys whose values are never substituted, and the object field that is not.
NOT_SUBSTITUTED = ("include", "id", "vars")
RENAMED_FROM = "renamedFrom"

# One scan finds the three things a "$" can start: "$${" (a literal "${"),
# "${NAME}" / "${NAME:-default}", and a "${" that is neither (groups unmatched).
# A default may not hold "${": nesting is not supported and must not leave one behind.
_REFERENCE = re.compile(r"\$\$\{|\$\{(?:([A-Za-z_][A-Za-z0-9_]*)(?:(:-)((?:(?!\$\{)[^}])*))?\})?")

Path = tuple[Any, ...]
# (label, value) for each variable whose value went into a string: the label names it
# as a message should (RECONCILER_VAR_X, vars.X, PROJECT_ID).
Reads = list[tuple[str, str]]


@dataclass(frozen=True)
class Rules:
    """Where substitution applies in a document: every string value but those under
    ``include``/``id``/``vars`` and an object's ``renamedFrom``; object names only for
    the kinds in ``named``."""

    objects: frozenset[str] = frozenset()  # the file keys of the object kinds
    named: frozenset[str] = frozenset()  # kinds whose object names are substituted
    concealed: frozenset[str] = frozenset()  # kinds whose `value` is never shown

    @classmethod
    def of(cls, kinds: Iterable[Any]) -> Rules:
        kinds = tuple(kinds)
        return cls(
            frozenset(kind.key for kind in kinds),
            frozenset(kind.key for kind in kinds if kind.substitute_names),
            frozenset(kind.key for kind in kinds if kind.concealed),
        )

    def quotes(self, path: Path) -> bool:
        """Whether a message about the value at ``path`` may quote it: never a concealed
        kind's ``value`` (a secret's literal is never shown, not even in a problem)."""
        return not (len(path) == 3 and path[2] == "value" and path[0] in self.concealed)

    def in_value(self, path: Path) -> bool:
        if not path:
            return True
        if path[0] in NOT_SUBSTITUTED:
            return False
        return not (len(path) == 3 and path[2] == RENAMED_FROM and path[0] in self.objects)

    def in_keys(self, path: Path) -> bool:
        """Whether the keys of the mapping at ``path`` (a kind's object names) are."""
        return len(path) == 1 and path[0] in self.named


@dataclass
class Variables:
    """What ``${NAME}`` reads for one Project, and which names its files used."""

    env: Mapping[str, str]
    declared: Mapping[str, Any] = field(default_factory=dict)  # the file's vars
    project_id: str | None = None
    used: set[str] = field(default_factory=set)

    def lookup(self, name: str) -> tuple[str | None, str]:
        """(value or None when unset, the label a message names it by)."""
        if name == BUILT_IN and isinstance(self.project_id, str):
            return self.project_id, BUILT_IN  # vars may not redefine it
        if name in self.declared:
            value = self.declared[name]
            # A var that is not a string is the schema's problem: do not add another.
            return (value if isinstance(value, str) else ""), f"vars.{name}"
        return self.env.get(VARIABLE_PREFIX + name), VARIABLE_PREFIX + name

    def expand(self, text: str, *, quoted: bool = True) -> tuple[str, list[str], Reads]:
        """``text`` with every reference replaced; the problems (unset variables,
        malformed references, quoting the reference unless not ``quoted``); the (label,
        value) of each variable read (defaults are not reads)."""
        if "${" not in text:
            return text, [], []
        problems: list[str] = []
        reads: Reads = []

        def replace(match: re.Match[str]) -> str:
            found = match.group()
            if found == "$${":
                return "${"
            name, has_default, default = match.groups()
            if name is None:
                end = text.find("}", match.start())
                shown = text[match.start() : end + 1] if end != -1 else text[match.start() :]
                problems.append(
                    f"invalid reference{f' {quote(shown)}' if quoted else ''}: write "
                    "${NAME} or ${NAME:-default}, or $${ for a literal ${"
                )
                return found
            self.used.add(name)
            value, label = self.lookup(name)
            if has_default and not value:
                return default
            if value is None:
                also = f" ({name} is set but is not read)" if name in self.env else ""
                problems.append(f"{label} is not set{also}")
                return found
            reads.append((label, value))
            return value

        return _REFERENCE.sub(replace, text), problems, reads


def substitute(value: str, env: Mapping[str, str]) -> tuple[str, list[str]]:
    """``value`` with ``${VAR}`` read from ``RECONCILER_VAR_VAR`` only, and the problems."""
    expanded, problems, _ = Variables(env).expand(value)
    return expanded, problems


def as_written(value: Any) -> Any:
    """A value as a file writes it: every literal ``${`` as ``$${``, so that reading the
    file back (and substituting) gives the value again."""
    if isinstance(value, str):
        return value.replace("${", "$${")
    if isinstance(value, Mapping):
        return {key: as_written(item) for key, item in value.items()}
    if isinstance(value, list):
        return [as_written(item) for item in value]
    return value


def references(text: str) -> list[str]:
    """The names a string refers to (``$${`` is not a reference)."""
    return [match.group(1) for match in _REFERENCE.finditer(text) if match.group(1)]


def leaked_credential(
    value: str, reads: Sequence[tuple[str, str]], credentials: Sequence[tuple[str, str]]
) -> str | None:
    """Why a substituted value may not be used, or None: it holds a credential's value.

    ``credentials`` are (variable, value) pairs of 8 characters or more. The final value
    is what counts, so ``${A}${B}`` holding a credential in halves is caught."""
    for name, credential in credentials:
        if credential not in value:
            continue
        alone = [label for label, read in reads if credential in read]
        if len(alone) == 1:
            return f"{alone[0]} holds the value of {name}"
        labels = " and ".join(dict.fromkeys(label for label, _ in reads))
        return f"the value made with {labels} holds the value of {name}"
    return None
