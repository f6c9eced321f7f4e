"""`reconciler render` and `reconciler compare`: a Project's effective document (its
file with every fragment merged in and ``${...}`` substituted: what plan compares),
shown, and two of them diffed, offline.

- :func:`effective_document` is the document in canonical order: top-level keys in
  the schema's order, objects by name, fields in each kind's order, ``include``
  and ``vars`` consumed, and values a kind never shows (a secret's value) replaced
  by where they come from (``Kind.conceal``). As YAML, a literal ``${`` is written
  ``$${``, so the output reads back as the same document.
- :func:`differences` compares two documents by path, ignoring ``id``, ``auth``,
  ``vars`` and ``include``: settings by value, objects by kind and name, fields as
  the kind compares them (policies as sets of rules), ``prune`` as a set.

The pure functions take documents; :func:`render` and :func:`compare` load the
files, write the output and return the exit code (as ``plan``'s: 0, 1, and 2 with
``--detailed-exitcode`` when the two differ).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

import click
import yaml

from reconciler.errors import ConfigError
from reconciler.escape import plural, term
from reconciler.kinds import BY_KEY, Kind, policy_rules
from reconciler.render import format_value
from reconciler.schema import field_name, load_schema
from reconciler.substitution import as_written

if TYPE_CHECKING:
    from reconciler.files import ProjectFile

EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2
# What a document says about the Project itself, not about its configuration.
NOT_COMPARED = ("id", "auth", "vars", "include")
CONSUMED = ("include", "vars")  # applied to the document, so not part of it


# --- the effective document ------------------------------------------------------------


def effective_document(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` in canonical order, as render shows it (see the module docstring)."""
    document: dict[str, Any] = {}
    for key in _in_order(data, [*load_schema()["properties"], *BY_KEY]):
        if key in CONSUMED:
            continue
        value, kind = data[key], BY_KEY.get(key)
        if kind is not None and isinstance(value, Mapping):
            value = {name: _object(kind, value[name]) for name in sorted(value)}
        document[key] = value
    return document


def _in_order(keys: Iterable[str], order: Sequence[str]) -> list[str]:
    """``keys`` in ``order``; keys it does not know after, by name."""
    return sorted(keys, key=lambda key: (order.index(key) if key in order else len(order), key))


def _field_order(kind: Kind) -> list[str]:
    return ["renamedFrom", *kind.write_fields, *kind.local_fields]


def _object(kind: Kind, fields: Any) -> Any:
    if not isinstance(fields, Mapping):
        return fields
    shown = {}
    for name in _in_order(fields, _field_order(kind)):
        hidden = kind.conceal(name, fields[name]) if kind.conceal else None
        shown[name] = fields[name] if hidden is None else hidden
    return shown


def sources(project: ProjectFile, document: Mapping[str, Any]) -> dict[str, str]:
    """``"path.in.document": "FILE:LINE"`` for every key of ``document`` reached through
    mappings only (settings, their parts, objects and their fields)."""
    found: dict[str, str] = {}

    def walk(value: Any, path: tuple[str, ...]) -> None:
        if path:
            found[field_name(path)] = project.source(*path)
        if isinstance(value, Mapping):
            for key, item in value.items():
                walk(item, (*path, key))

    walk(document, ())
    return found


def render_yaml(project: ProjectFile, fh: TextIO) -> None:
    """One Project's effective document as YAML, each top-level key under a comment
    naming where it is written (every file, for a kind merged from several)."""
    document = effective_document(project.data)
    fh.write(f"# {term(project.path)}: the effective document (includes merged, vars applied)\n")
    for key, value in document.items():
        fh.write(f"# from {term(', '.join(project.sources_of(key)))}\n")
        # Collections inside a value in flow style (a policy rule per line); a scalar
        # setting as `key: value`, never as a one-key flow mapping.
        flow = None if isinstance(value, (dict, list)) else False
        text = yaml.safe_dump(
            {key: as_written(value)},
            sort_keys=False,
            allow_unicode=True,
            width=100,
            default_flow_style=flow,
        )
        for line in text.splitlines():
            fh.write(term(line) + "\n")


def render_json(projects: Sequence[ProjectFile], fh: TextIO) -> None:
    """``{"file", "document", "sources"}`` for one Project; a list of them for several."""
    docs = []
    for project in projects:
        document = effective_document(project.data)
        docs.append(
            {"file": project.path, "document": document, "sources": sources(project, document)}
        )
    json.dump(docs[0] if len(docs) == 1 else docs, fh, indent=2, ensure_ascii=True)
    fh.write("\n")


# --- differences ------------------------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    """One path whose value differs: ``~`` in both, ``-`` only in A, ``+`` only in B.
    ``shown`` False: the values are never shown (only that they differ)."""

    mark: str
    path: tuple[str, ...]
    a: Any = None
    b: Any = None
    shown: bool = True
    rules: tuple[tuple[str, str], ...] = ()  # a policy: ("-" | "+", rule)
    object: bool = False  # a whole object only one side declares

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"change": self.mark, "path": field_name(self.path)}
        if self.object:
            pass
        elif self.shown:
            doc.update(a=self.a, b=self.b)
        else:
            doc["note"] = "differs (values are not shown)"
        return doc

    def lines(self) -> list[str]:
        path = field_name(self.path)
        if self.object:
            return [f"{self.mark} {path}"]
        if not self.shown:
            return [f"{self.mark} {path}: differs (not shown)"]
        if self.rules:
            return [f"~ {path}"] + [f"    {mark} rule {rule}" for mark, rule in self.rules]
        if self.mark == "~":
            return [f"~ {path}: {format_value(self.a)} -> {format_value(self.b)}"]
        value = self.a if self.mark == "-" else self.b
        return [f"{self.mark} {path}: {format_value(value)}"]


def differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[Difference]:
    """What differs between two documents, path by path (see the module docstring)."""
    found: list[Difference] = []
    order = [*load_schema()["properties"], *BY_KEY]
    for key in _in_order(set(a) | set(b), order):
        if key in NOT_COMPARED:
            continue
        in_a, in_b, kind = key in a, key in b, BY_KEY.get(key)
        if in_a and in_b and kind and isinstance(a[key], Mapping) and isinstance(b[key], Mapping):
            found += _kind_differences(kind, a[key], b[key])
        elif key == "prune" and isinstance(a.get(key), list) and isinstance(b.get(key), list):
            if set(map(str, a[key])) != set(map(str, b[key])):
                found.append(Difference("~", (key,), sorted(a[key]), sorted(b[key])))
        elif in_a and in_b:
            if a[key] != b[key]:
                found.append(Difference("~", (key,), a[key], b[key]))
        else:
            found.append(Difference("-" if in_a else "+", (key,), a.get(key), b.get(key)))
    return found


def _kind_differences(kind: Kind, a: Mapping[str, Any], b: Mapping[str, Any]) -> list[Difference]:
    found = []
    for name in sorted(set(a) | set(b)):
        if name not in b or name not in a:
            found.append(Difference("-" if name not in b else "+", (kind.key, name), object=True))
            continue
        fields_a, fields_b = a[name] or {}, b[name] or {}
        if not isinstance(fields_a, Mapping) or not isinstance(fields_b, Mapping):
            continue  # not a valid document: validation says so
        for field in _in_order(set(fields_a) | set(fields_b), _field_order(kind)):
            path = (kind.key, name, field)
            value_a, value_b = fields_a.get(field), fields_b.get(field)
            shown = not kind.conceal or kind.conceal(field, value_a or value_b) is None
            if field not in fields_a or field not in fields_b:
                mark = "-" if field not in fields_b else "+"
                found.append(Difference(mark, path, value_a, value_b, shown=shown))
            elif kind.normalise(field, value_a) == kind.normalise(field, value_b):
                continue
            elif not shown:
                found.append(Difference("~", path, shown=False))
            elif field in kind.policy_fields:
                old, new = set(policy_rules(value_a)), set(policy_rules(value_b))
                rules = [("-", r) for r in sorted(old - new)] + [
                    ("+", r) for r in sorted(new - old)
                ]
                found.append(Difference("~", path, value_a, value_b, rules=tuple(rules)))
            else:
                found.append(Difference("~", path, value_a, value_b))
    return found


# --- the commands ------------------------------------------------------------------------


def render(paths: Sequence[str], fmt: str, root: str | None) -> int:
    """Print each Project's effective document; validation problems stop it (exit 1)."""
    projects = _load(paths, root, substitute=True)
    if fmt == "json":
        render_json(projects, sys.stdout)
        return EXIT_OK
    for index, project in enumerate(projects):
        if index:
            sys.stdout.write("---\n")
        render_yaml(project, sys.stdout)
    return EXIT_OK


def compare(a: str, b: str, *, raw: bool, fmt: str, detailed: bool, root: str | None) -> int:
    """Print what differs between two Projects' effective documents."""
    first, second = (_one(path, root, substitute=not raw) for path in (a, b))
    found = differences(first.data, second.data)
    if fmt == "json":
        doc = {
            "a": first.path,
            "b": second.path,
            "raw": raw,
            "differences": [difference.to_dict() for difference in found],
        }
        json.dump(doc, sys.stdout, indent=2, ensure_ascii=True)
        sys.stdout.write("\n")
    else:
        before = " (before substitution)" if raw else ""
        click.echo(f"--- {term(first.path)}{before}")
        click.echo(f"+++ {term(second.path)}{before}")
        for difference in found:
            for line in difference.lines():
                click.echo(term(line))
        what = plural(len(found), "difference") if found else "no differences"
        click.echo(f"Compare: {what} (id, auth and vars aside).")
    return EXIT_CHANGES if detailed and found else EXIT_OK


def _one(path: str, root: str | None, *, substitute: bool) -> ProjectFile:
    if os.path.isdir(path):
        raise ConfigError(f"compare takes two project files; {path} is a folder")
    [project] = _load([path], root, substitute=substitute)
    return project


def _load(paths: Sequence[str], root: str | None, *, substitute: bool) -> list[ProjectFile]:
    from reconciler.files import load_projects

    result = load_projects(paths or ("projects",), root=root, substitute_values=substitute)
    for warning in result.warnings:
        click.echo(term(warning), err=True)
    if result.problems:
        for problem in result.problems:
            click.echo(term(problem), err=True)
        count = plural(len(result.problems), "problem")
        raise ConfigError(f"{count} in the project files; run `reconciler validate` for details")
    return result.projects
