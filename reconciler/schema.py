"""The JSON Schema of a project file, and its errors translated for people.

The schema (``reconciler/data/project.schema.json``, copied to
``schemas/project.schema.json`` for editors) is the single description of a
project file. jsonschema's own messages are written for schema authors
("'abc' does not match '^[0-9a-f]{8}-...'"); :func:`check` turns each error
into one line a user can act on ("id: 'abc' is not a valid UUID ...").

Custom messages live in the schema itself, next to the rule they explain, in a
vendor keyword ``x-errorMessages`` (``{keyword: template}``; ``{field}`` and
``{value}`` are filled in). ``x-redactValue`` marks values that must never be
echoed: a client secret pasted where an env var *name* belongs would otherwise
end up in CI logs. A property whose schema is ``"not": {}`` is a key that is
known but refused (read-only keys, the API's write names): it is reported at
the key, like an unknown key.

Pure: data in, findings out. ``files.py`` maps a finding's path to a line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from reconciler.quickschema import conforms

if TYPE_CHECKING:  # imported when a document has problems (start-up time of validate)
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError

SCHEMA_RESOURCE = "data/project.schema.json"
FRAGMENT_RESOURCE = "data/fragment.schema.json"
# A fragment holds any key a project file may, except what is one Project's alone.
FRAGMENT_REFUSED = {
    "id": "a fragment is shared by the Projects that include it; id belongs in each project file",
    "auth": "credentials are per Project; write auth in each project file",
    "vars": "vars are per Project; set them in each project file that includes this",
}

Path = tuple[Any, ...]

# What a JSON type is called in a message ("expected a boolean, got string 'yes'").
_TYPE_WORDS = {
    "string": "a string",
    "boolean": "a boolean",
    "object": "a mapping",
    "array": "a list",
    "integer": "an integer",
    "number": "a number",
    "null": "null",
}

_MAX_VALUE_CHARS = 60


@dataclass(frozen=True)
class Finding:
    """One schema problem: where in the document, and what to tell the user.

    ``at_key`` says the problem is the key itself (unknown or refused key), so
    it belongs at the key's line rather than at its value's.
    """

    path: Path
    message: str
    at_key: bool = False


def schema_text() -> str:
    """The packaged schema file's text, exactly as shipped."""
    return _packaged(SCHEMA_RESOURCE)


def fragment_schema_text() -> str:
    """The packaged fragment schema's text (what editors check ``base/*.yaml`` with)."""
    return _packaged(FRAGMENT_RESOURCE)


def _packaged(name: str) -> str:
    # A plain open, not importlib.resources: its import costs validate's start-up.
    with open(os.path.join(os.path.dirname(__file__), name), encoding="utf-8") as fh:
        return fh.read()


def fragment_schema(project: Mapping[str, Any]) -> dict:
    """The fragment schema, derived from the project schema: no required id, and id,
    auth and vars refused with the reason. (A test holds the shipped file equal to it.)"""
    document = json.loads(json.dumps(project))
    document["$id"] = "urn:reconciler:schema:fragment:v1"
    document["title"] = "Oystehr Project fragment"
    document["description"] = (
        "A fragment: settings and objects shared by the project files that include it "
        "(include: [../base/clinic.yaml]). It holds any key a project file may, except id, "
        "auth and vars; the including file's keys win, objects merge field by field, prune "
        "lists are united. ${NAME} is substituted with each including Project's vars."
    )
    document.pop("required", None)
    for key, why in FRAGMENT_REFUSED.items():
        document["properties"][key] = {
            "not": {},
            "description": f"Not allowed in a fragment: {why}.",
            "x-errorMessages": {"not": f"{{field}} is not allowed in a fragment: {why}"},
        }
    return document


@cache
def load_schema() -> dict:
    """The schema as a dict (parsed once per process)."""
    return json.loads(schema_text())


@cache
def validator() -> Draft202012Validator:
    """One compiled validator, built on first use and reused for every file.

    It validates against the schema with its ``$ref``s inlined: the schema is
    not recursive, and resolving a reference for every value of every file
    costs more than a third of validation time (validate must beat
    check-jsonschema on 1,000 files).
    """
    from jsonschema import Draft202012Validator

    return Draft202012Validator(inlined(), format_checker=Draft202012Validator.FORMAT_CHECKER)


@cache
def inlined() -> dict:
    """The schema with its ``$ref``s inlined (what both validators check against)."""
    schema = load_schema()
    return inline_refs(schema, schema.get("$defs", {}))


def inline_refs(node: Any, defs: Mapping[str, Any]) -> Any:
    """``node`` with each ``{"$ref": "#/$defs/x", ...}`` replaced by ``$defs/x`` merged with
    its siblings (the siblings win: they only add descriptions here). ``$defs`` is dropped."""
    if isinstance(node, list):
        return [inline_refs(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    merged = {key: inline_refs(value, defs) for key, value in node.items() if key not in _INLINED}
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        merged = {**inline_refs(defs[ref.removeprefix("#/$defs/")], defs), **merged}
    return merged


_INLINED = ("$ref", "$defs")


def check(data: Mapping[str, Any], written: Mapping[Path, str] | None = None) -> list[Finding]:
    """Every schema problem in ``data`` (a project document), each translated once.

    ``written`` maps the paths of values that came from ``${VAR}`` to the text
    the file holds there: messages quote that text, never the environment's
    value, which may be a secret.
    """
    if conforms(inlined(), data):
        return []  # the usual case, without importing jsonschema (quickschema.py)
    findings: list[Finding] = []
    seen: set[tuple[Path, str]] = set()
    errors = list(validator().iter_errors(data))
    # A value of the wrong type: "exactly one of these keys" says nothing more about it.
    mistyped = {tuple(e.absolute_path) for e in errors if e.validator == "type"}
    for error in errors:
        if error.validator == "oneOf" and tuple(error.absolute_path) in mistyped:
            continue
        for finding in _translate(error, written or {}):
            # pattern and format both check a UUID and say the same thing: say it once.
            if (finding.path, finding.message) not in seen:
                seen.add((finding.path, finding.message))
                findings.append(finding)
    return findings


def field_name(path: Iterable[Any]) -> str:
    """``("defaultPatientRole", "id")`` -> ``defaultPatientRole.id``."""
    return ".".join(str(part) for part in path)


def describe(value: Any, *, redact: bool = False) -> str:
    """A value as a message shows it: ``string 'yes'``, ``integer 5``, ``null``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    kind = {str: "string", int: "integer", float: "number"}.get(type(value), type(value).__name__)
    return kind if redact else f"{kind} {quote(value)}"


def quote(value: Any) -> str:
    """A scalar in quotes, shortened so one long value cannot flood a line."""
    if not isinstance(value, str):
        return str(value)
    text = value if len(value) <= _MAX_VALUE_CHARS else value[: _MAX_VALUE_CHARS - 1] + "…"
    return "'" + text.replace("\n", "\\n") + "'"


def _translate(error: ValidationError, written: Mapping[Path, str]) -> list[Finding]:
    path: Path = tuple(error.absolute_path)
    field = field_name(path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    keyword = error.validator
    redact = bool(schema.get("x-redactValue"))
    shown = written.get(path, error.instance)  # what the message may quote

    if keyword == "additionalProperties":
        return _unknown_keys(error, path, field)
    if keyword == "required":
        where = f" in {field}" if path else ""
        return [
            Finding(path, f"missing required key '{key}'{where}")
            for key in error.validator_value
            if key not in error.instance
        ]
    if keyword == "dependentRequired":
        return [
            Finding(path, f"{field}: {key} needs {needed} as well")
            for key, needs in error.validator_value.items()
            if key in error.instance
            for needed in needs
            if needed not in error.instance
        ]

    template = schema.get("x-errorMessages", {}).get(keyword)
    if template is not None:
        if redact:
            value = describe(shown, redact=True)
        else:  # a string speaks for itself: 'r6'; anything else says what it is: integer 4
            value = quote(shown) if isinstance(shown, str) else describe(shown)
        # Plain replacement, not str.format: templates quote YAML like "{id: ...}".
        message = template.replace("{field}", field).replace("{value}", value)
    elif keyword == "type" and error.instance is None and schema.get("x-nullMeansOmit"):
        message = f"{field}: null is not a value here: omit the field to leave it unmanaged"
    elif keyword == "type":
        expected = error.validator_value
        words = [_TYPE_WORDS.get(name, name) for name in _as_list(expected)]
        message = f"{field}: expected {_or(words)}, got {describe(shown, redact=redact)}"
        if path in written:
            message += " (a value from ${...} is always a string)"
    elif keyword == "enum":
        choices = _or([quote(choice) for choice in error.validator_value])
        message = f"{field}: expected {choices}, got {describe(shown, redact=redact)}"
    else:
        # A rule with no message of its own: jsonschema's text, located and prefixed.
        message = f"{field}: {error.message}" if field else error.message
    if "propertyNames" in error.absolute_schema_path and isinstance(error.instance, str):
        # A bad name is a problem with that key (the message names the mapping).
        return [Finding((*path, error.instance), message, at_key=True)]
    # A refused key ("not": {}) is a problem with the key, like an unknown one.
    at_key = keyword == "not" and schema.get("not") == {} and bool(path)
    return [Finding(path, message, at_key=at_key)]


def _unknown_keys(error: ValidationError, path: Path, field: str) -> list[Finding]:
    properties = error.schema.get("properties", {})
    # Suggest only keys a user may write, never a refused one like sandbox.
    allowed = [key for key, sub in properties.items() if sub.get("not") != {}]
    findings = []
    for key in error.instance:
        if key in properties:
            continue
        where = f" in {field}" if field else ""
        import difflib

        close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        findings.append(Finding((*path, key), f"unknown key '{key}'{where}{hint}", at_key=True))
    return findings


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _or(words: list[str]) -> str:
    if len(words) <= 2:
        return " or ".join(words)
    return ", ".join(words[:-1]) + " or " + words[-1]
