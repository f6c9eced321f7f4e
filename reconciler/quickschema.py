"""A quick yes to "is this document valid?", so a valid file never pays for jsonschema.

`reconciler validate` runs in a pre-commit hook on every commit, and jsonschema (with
referencing, attrs and rpds) takes longer to import than the rest of the command
together. Most files are valid, and saying so takes a few lines per keyword: this
module checks the JSON Schema 2020-12 keywords the project schemas use, exactly as
jsonschema does (the same regex search, the same bool/number distinction, the same
UUID check), and answers

- True: valid (no error jsonschema would report);
- False: invalid (jsonschema then says why: only it words the problems);
- None: the schema uses a keyword or format it does not know (ask jsonschema).

A test compares its answer with jsonschema's on every fixture and on thousands of
mutated documents. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

# Keywords that never make a document invalid.
_ANNOTATIONS = frozenset(
    {
        "$schema",
        "$id",
        "$comment",
        "$defs",
        "title",
        "description",
        "examples",
        "default",
        "readOnly",
        "writeOnly",
        "deprecated",
        "patternErrorMessage",
    }
)


class _Unknown(Exception):
    """A keyword or format this module does not check."""


Check = Callable[[Any], bool]


def conforms(schema: Any, instance: Any) -> bool | None:
    """True when `instance` is valid against `schema` (references already inlined),
    False when it is not, None when only jsonschema can tell."""
    try:
        return _compiled(schema)(instance)
    except _Unknown:
        return None


# Each schema is turned once into nested checks (a function per schema node, its
# keywords' values bound in), so a document is not checked by walking the schema's
# dicts again for every value of every file: a third of reading a big file did that.
_COMPILED: dict[int, tuple[Any, Check]] = {}


def _compiled(schema: Any) -> Check:
    known = _COMPILED.get(id(schema))
    if known is None or known[0] is not schema:
        known = _COMPILED[id(schema)] = (schema, _compile(schema))
    return known[1]


def _compile(schema: Any) -> Check:
    """The check of one schema node. A keyword it does not know fails only when a value
    reaches it (as before: the rest of the schema still answers)."""
    if schema is True:
        return _always
    if schema is False:
        return _never
    if not isinstance(schema, Mapping):
        return _unknown(schema)
    checks = [
        _KEYWORDS.get(keyword, _unknown_keyword)(value, schema)
        for keyword, value in schema.items()
        if keyword not in _ANNOTATIONS and not keyword.startswith("x-")
    ]
    return checks[0] if len(checks) == 1 else _every(checks)


def _every(checks: list[Check]) -> Check:
    """A check that passes when each of `checks` does.

    Here and below, loops rather than all() over a generator: these run for every value
    of every file, and building a generator costs more than most checks do (loops halve
    the time of the big benchmark file's check)."""

    def check(instance: Any) -> bool:
        for one in checks:  # noqa: SIM110
            if not one(instance):
                return False
        return True

    return check


def _always(instance: Any) -> bool:
    return True


def _never(instance: Any) -> bool:
    return False


def _unknown(what: Any) -> Check:
    def check(instance: Any) -> bool:
        raise _Unknown(what)

    return check


def _unknown_keyword(value: Any, schema: Mapping) -> Check:
    return _unknown(value)


def _is_type(instance: Any, name: str) -> bool:
    if name == "object":
        return isinstance(instance, dict)
    if name == "array":
        return isinstance(instance, list)
    if name == "string":
        return isinstance(instance, str)
    if name == "boolean":
        return isinstance(instance, bool)
    if name == "null":
        return instance is None
    if isinstance(instance, bool):
        return False
    if name == "number":
        return isinstance(instance, (int, float))
    if name == "integer":
        return isinstance(instance, int) or (isinstance(instance, float) and instance.is_integer())
    raise _Unknown(name)


def _equal(a: Any, b: Any) -> bool:
    """JSON equality: true is not 1, and containers compare item by item."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _uuid(instance: Any) -> bool:
    """jsonschema's check (``UUID(instance)`` parses, hyphens where they belong), with
    uuid.UUID's parsing written out: importing uuid costs more than this whole module."""
    if not isinstance(instance, str):
        return True
    digits = instance.replace("urn:", "").replace("uuid:", "").strip("{}").replace("-", "")
    if len(digits) != 32:
        return False
    try:
        int(digits, 16)
    except ValueError:
        return False
    return all(instance[position] == "-" for position in (8, 13, 18, 23))


_FORMATS = {"uuid": _uuid}

# The types a Python class tells apart alone (not "integer" and "number", which a
# boolean is not, and which "integer" also counts 1.0 as).
_CLASSES: dict[str, type] = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
}


def _type(value: Any, schema: Mapping) -> Check:
    names = value if isinstance(value, list) else [value]
    if all(name in _CLASSES for name in names):
        classes = tuple(_CLASSES[name] for name in names)
        return lambda instance: isinstance(instance, classes)
    return lambda instance: any(_is_type(instance, name) for name in names)


def _properties(value: Mapping, schema: Mapping) -> Check:
    subs = {key: _compile(sub) for key, sub in value.items()}

    def check(instance: Any) -> bool:
        if isinstance(instance, dict):
            for key, item in instance.items():
                if key in subs and not subs[key](item):
                    return False
        return True

    return check


def _additional(value: Any, schema: Mapping) -> Check:
    if "patternProperties" in schema:
        unknown = _unknown("patternProperties")
        return lambda instance: not isinstance(instance, dict) or unknown(instance)
    known = frozenset(schema.get("properties", {}))
    if value is False:  # the usual case: no key but those named
        return lambda instance: not isinstance(instance, dict) or known.issuperset(instance)
    sub = _compile(value)

    def check(instance: Any) -> bool:
        if isinstance(instance, dict):
            for key, item in instance.items():
                if key not in known and not sub(item):
                    return False
        return True

    return check


def _required(value: list, schema: Mapping) -> Check:
    return lambda instance: not isinstance(instance, dict) or all(k in instance for k in value)


def _pattern_check(value: str, schema: Mapping) -> Check:
    search = re.compile(value).search
    return lambda instance: not isinstance(instance, str) or search(instance) is not None


def _bound(at_least: bool) -> Callable[[float, Mapping], Check]:
    """minimum and maximum: a bound on a number's value (values of other types,
    booleans included, pass)."""

    def make(value: float, schema: Mapping) -> Check:
        if at_least:
            return lambda instance: not _is_number(instance) or instance >= value
        return lambda instance: not _is_number(instance) or instance <= value

    return make


def _is_number(instance: Any) -> bool:
    return isinstance(instance, (int, float)) and not isinstance(instance, bool)


def _items(value: Any, schema: Mapping) -> Check:
    if "prefixItems" in schema:
        return _unknown("prefixItems")
    sub = _compile(value)

    def check(instance: Any) -> bool:
        if isinstance(instance, list):
            for item in instance:
                if not sub(item):
                    return False
        return True

    return check


def _unique_items(value: bool, schema: Mapping) -> Check:
    def check(instance: Any) -> bool:
        if not value or not isinstance(instance, list):
            return True
        return not any(_equal(a, b) for i, a in enumerate(instance) for b in instance[i + 1 :])

    return check


def _enum(value: list, schema: Mapping) -> Check:
    if all(isinstance(choice, str) for choice in value):  # only a string equals a string
        choices = frozenset(value)
        return lambda instance: isinstance(instance, str) and instance in choices
    return lambda instance: any(_equal(choice, instance) for choice in value)


def _const(value: Any, schema: Mapping) -> Check:
    return lambda instance: _equal(value, instance)


def _any_of(value: list, schema: Mapping) -> Check:
    subs = [_compile(sub) for sub in value]
    return lambda instance: any(sub(instance) for sub in subs)


def _all_of(value: list, schema: Mapping) -> Check:
    subs = [_compile(sub) for sub in value]
    return lambda instance: all(sub(instance) for sub in subs)


def _one_of(value: list, schema: Mapping) -> Check:
    subs = [_compile(sub) for sub in value]
    return lambda instance: sum(1 for sub in subs if sub(instance)) == 1


def _not(value: Any, schema: Mapping) -> Check:
    sub = _compile(value)
    return lambda instance: not sub(instance)


def _dependent_required(value: Mapping, schema: Mapping) -> Check:
    def check(instance: Any) -> bool:
        if not isinstance(instance, dict):
            return True
        return all(
            all(needed in instance for needed in needs)
            for key, needs in value.items()
            if key in instance
        )

    return check


def _dependent_schemas(value: Mapping, schema: Mapping) -> Check:
    subs = [(key, _compile(sub)) for key, sub in value.items()]
    return lambda instance: (
        not isinstance(instance, dict) or all(sub(instance) for key, sub in subs if key in instance)
    )


def _property_names(value: Any, schema: Mapping) -> Check:
    sub = _compile(value)
    return lambda instance: not isinstance(instance, dict) or all(sub(key) for key in instance)


def _format(value: str, schema: Mapping) -> Check:
    return _FORMATS.get(value) or _unknown(value)


def _size(kind: type, at_least: bool) -> Callable[[int, Mapping], Check]:
    """minLength, maxItems, minProperties…: a bound on the size of a string, list or
    object (values of other types pass)."""

    def make(value: int, schema: Mapping) -> Check:
        if at_least:
            return lambda instance: not isinstance(instance, kind) or len(instance) >= value
        return lambda instance: not isinstance(instance, kind) or len(instance) <= value

    return make


_KEYWORDS: dict[str, Callable[[Any, Mapping], Check]] = {
    "type": _type,
    "properties": _properties,
    "additionalProperties": _additional,
    "required": _required,
    "pattern": _pattern_check,
    "minLength": _size(str, at_least=True),
    "maxLength": _size(str, at_least=False),
    "minimum": _bound(at_least=True),
    "maximum": _bound(at_least=False),
    "items": _items,
    "minItems": _size(list, at_least=True),
    "maxItems": _size(list, at_least=False),
    "uniqueItems": _unique_items,
    "minProperties": _size(dict, at_least=True),
    "maxProperties": _size(dict, at_least=False),
    "enum": _enum,
    "const": _const,
    "anyOf": _any_of,
    "allOf": _all_of,
    "oneOf": _one_of,
    "not": _not,
    "dependentRequired": _dependent_required,
    "dependentSchemas": _dependent_schemas,
    "propertyNames": _property_names,
    "format": _format,
}
