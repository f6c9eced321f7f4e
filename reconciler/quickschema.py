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
from collections.abc import Mapping
from functools import cache
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


def conforms(schema: Any, instance: Any) -> bool | None:
    """True when `instance` is valid against `schema` (references already inlined),
    False when it is not, None when only jsonschema can tell."""
    try:
        return _valid(schema, instance)
    except _Unknown:
        return None


def _valid(schema: Any, instance: Any) -> bool:
    if schema is True:
        return True
    if schema is False:
        return False
    if not isinstance(schema, Mapping):
        raise _Unknown(schema)
    for keyword, value in schema.items():
        if keyword in _ANNOTATIONS or keyword.startswith("x-"):
            continue
        check = _KEYWORDS.get(keyword)
        if check is None:
            raise _Unknown(keyword)
        if not check(value, instance, schema):
            return False
    return True


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


@cache
def _pattern(text: str) -> re.Pattern[str]:
    return re.compile(text)


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


def _type(value: Any, instance: Any, schema: Mapping) -> bool:
    names = value if isinstance(value, list) else [value]
    return any(_is_type(instance, name) for name in names)


def _properties(value: Mapping, instance: Any, schema: Mapping) -> bool:
    if not isinstance(instance, dict):
        return True
    return all(_valid(sub, instance[key]) for key, sub in value.items() if key in instance)


def _additional(value: Any, instance: Any, schema: Mapping) -> bool:
    if not isinstance(instance, dict):
        return True
    if "patternProperties" in schema:
        raise _Unknown("patternProperties")
    known = schema.get("properties", {})
    return all(_valid(value, item) for key, item in instance.items() if key not in known)


def _required(value: list, instance: Any, schema: Mapping) -> bool:
    return not isinstance(instance, dict) or all(key in instance for key in value)


def _pattern_check(value: str, instance: Any, schema: Mapping) -> bool:
    return not isinstance(instance, str) or _pattern(value).search(instance) is not None


def _min_length(value: int, instance: Any, schema: Mapping) -> bool:
    return not isinstance(instance, str) or len(instance) >= value


def _max_length(value: int, instance: Any, schema: Mapping) -> bool:
    return not isinstance(instance, str) or len(instance) <= value


def _minimum(value: float, instance: Any, schema: Mapping) -> bool:
    return not _is_number(instance) or instance >= value


def _maximum(value: float, instance: Any, schema: Mapping) -> bool:
    return not _is_number(instance) or instance <= value


def _is_number(instance: Any) -> bool:
    return isinstance(instance, (int, float)) and not isinstance(instance, bool)


def _items(value: Any, instance: Any, schema: Mapping) -> bool:
    if "prefixItems" in schema:
        raise _Unknown("prefixItems")
    return not isinstance(instance, list) or all(_valid(value, item) for item in instance)


def _min_items(value: int, instance: Any, schema: Mapping) -> bool:
    return not isinstance(instance, list) or len(instance) >= value


def _max_items(value: int, instance: Any, schema: Mapping) -> bool:
    return not isinstance(instance, list) or len(instance) <= value


def _unique_items(value: bool, instance: Any, schema: Mapping) -> bool:
    if not value or not isinstance(instance, list):
        return True
    return not any(_equal(a, b) for i, a in enumerate(instance) for b in instance[i + 1 :])


def _min_properties(value: int, instance: Any, schema: Mapping) -> bool:
    return not isinstance(instance, dict) or len(instance) >= value


def _max_properties(value: int, instance: Any, schema: Mapping) -> bool:
    return not isinstance(instance, dict) or len(instance) <= value


def _enum(value: list, instance: Any, schema: Mapping) -> bool:
    return any(_equal(choice, instance) for choice in value)


def _const(value: Any, instance: Any, schema: Mapping) -> bool:
    return _equal(value, instance)


def _any_of(value: list, instance: Any, schema: Mapping) -> bool:
    return any(_valid(sub, instance) for sub in value)


def _all_of(value: list, instance: Any, schema: Mapping) -> bool:
    return all(_valid(sub, instance) for sub in value)


def _one_of(value: list, instance: Any, schema: Mapping) -> bool:
    return sum(1 for sub in value if _valid(sub, instance)) == 1


def _not(value: Any, instance: Any, schema: Mapping) -> bool:
    return not _valid(value, instance)


def _dependent_required(value: Mapping, instance: Any, schema: Mapping) -> bool:
    if not isinstance(instance, dict):
        return True
    return all(
        all(needed in instance for needed in needs)
        for key, needs in value.items()
        if key in instance
    )


def _dependent_schemas(value: Mapping, instance: Any, schema: Mapping) -> bool:
    if not isinstance(instance, dict):
        return True
    return all(_valid(sub, instance) for key, sub in value.items() if key in instance)


def _property_names(value: Any, instance: Any, schema: Mapping) -> bool:
    return not isinstance(instance, dict) or all(_valid(value, key) for key in instance)


def _format(value: str, instance: Any, schema: Mapping) -> bool:
    check = _FORMATS.get(value)
    if check is None:
        raise _Unknown(value)
    return check(instance)


_KEYWORDS = {
    "type": _type,
    "properties": _properties,
    "additionalProperties": _additional,
    "required": _required,
    "pattern": _pattern_check,
    "minLength": _min_length,
    "maxLength": _max_length,
    "minimum": _minimum,
    "maximum": _maximum,
    "items": _items,
    "minItems": _min_items,
    "maxItems": _max_items,
    "uniqueItems": _unique_items,
    "minProperties": _min_properties,
    "maxProperties": _max_properties,
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
