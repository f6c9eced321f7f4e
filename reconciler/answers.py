"""What a server answers, treated as untrusted input: its JSON read within bounds,
its shape checked, a kind's list read page by page within bounds.

The shape checks serve every JSON document from outside (plan files too). Each returns
the value when it has the shape, and raises ShapeError("WHAT: expected …, got …")
otherwise, so a caller checks and uses in one line:

    project = expect_object(answer, "GET /project", required=("id",))
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from reconciler.errors import ShapeError, TransportError

if TYPE_CHECKING:
    from reconciler.wire import Answer

# A kind's list longer than this is an error, never an endless read (a server whose
# cursor never ends, or a list no Project really holds).
MAX_PAGES = 1_000
MAX_OBJECTS = 100_000
# ... nor one whose pages hold more JSON values than this in all (a page of fat objects
# behind a cursor that never ends grew a plan past 20 GB before the page bound).
MAX_LIST_VALUES = 4_000_000


def expect_project(value: Any, what: str) -> dict[str, Any]:
    """A Project as GET/PATCH /project answers it: an object whose known fields have
    their types, roles as {id, name} objects or absent/null."""
    project = expect_object(value, what)
    for key, types in _PROJECT_TYPES.items():
        if key in project:
            expect(project[key], types, f"{what}: {key}")
    for key in ("defaultPatientRole", "defaultSSOUserRole"):
        role = project.get(key)
        if role is not None:
            expect_object(role, f"{what}: {key}", required=("id",))
            expect(role["id"], str, f"{what}: {key}.id")
            expect(role.get("name"), (str, type(None)), f"{what}: {key}.name")
    return project


_PROJECT_TYPES: dict[str, type | tuple[type, ...]] = {
    "id": str,
    "name": str,
    "description": (str, type(None)),
    "signupEnabled": bool,
    "sandbox": bool,
    "fhirVersion": str,
}


_TYPE_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer"}
_TYPE_NAMES |= {bool: "a boolean", float: "a number", type(None): "null"}


def expect(value: Any, types: type | tuple[type, ...], what: str, *, quoted: bool = True) -> Any:
    """`value` when it is one of `types` (a boolean is never taken for an integer). Not
    `quoted`, a message names only the type of what it got (an answer that may hold
    secret values)."""
    if isinstance(value, types) and (value.__class__ is not bool or _admits_bool(types)):
        return value
    wanted = types if isinstance(types, tuple) else (types,)
    names = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in wanted)
    got = describe_json(value) if quoted else _TYPE_NAMES.get(type(value), "something else")
    raise ShapeError(f"{what}: expected {names}, got {got}")


def _admits_bool(types: type | tuple[type, ...]) -> bool:
    return types is bool or (isinstance(types, tuple) and bool in types)


def expect_object(
    value: Any,
    what: str,
    *,
    required: tuple[str, ...] = (),
    only: tuple[str, ...] | None = None,
    quoted: bool = True,
) -> dict[str, Any]:
    """`value` when it is an object holding every `required` key (and, with `only`, no
    other key)."""
    expect(value, dict, what, quoted=quoted)
    if only is not None:
        unknown = [key for key in value if key not in only]
        if unknown:
            raise ShapeError(f"{what}: unknown key {describe_json(unknown[0])}")
    missing = [key for key in required if key not in value]
    if missing:
        raise ShapeError(f"{what}: missing key {missing[0]!r}")
    return value


def expect_list_of_objects(value: Any, what: str, *, quoted: bool = True) -> list[dict[str, Any]]:
    """`value` when it is a list whose every item is an object."""
    for index, item in enumerate(expect(value, list, what, quoted=quoted)):
        expect(item, dict, f"{what}[{index}]", quoted=quoted)
    return value


def describe_json(value: Any, limit: int = 80) -> str:
    """A JSON value as a message shows it, shortened: the document may hold anything."""
    text = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def expect_api_object(value: Any, what: str, key: str = "id", *, quoted: bool = True) -> dict:
    """An API object: a JSON object with a string id (or the field that addresses it)."""
    found = expect_object(value, what, required=(key,), quoted=quoted)[key]
    expect(found, str, f"{what}.{key}", quoted=quoted)
    return value


def expect_api_objects(
    value: Any, what: str, key: str = "id", *, quoted: bool = True
) -> list[dict]:
    """An API list: objects each with a string id (or `key`) and a string name."""
    for index, item in enumerate(expect_list_of_objects(value, what, quoted=quoted)):
        expect_api_object(item, f"{what}[{index}]", key, quoted=quoted)
        expect(item.get("name"), str, f"{what}[{index}].name", quoted=quoted)
    return value


# An answer nested deeper than this is refused (ours are a few levels deep): past it the
# code that compares and shows values would recurse until Python gives up.
MAX_ANSWER_DEPTH = 64
# ... or holding more values than this: 10 MB of `[],` would take 200 MB once parsed.
MAX_ANSWER_VALUES = 1_000_000
_LONE_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class NotJson(TransportError):
    """A 2xx answer whose body is not JSON."""


class UnusableJson(ShapeError):
    """An answer in JSON that no code past the client may see: nested deeper than
    MAX_ANSWER_DEPTH, or holding a string that is not Unicode (a lone surrogate)."""


def json_or_none(response: Answer) -> Any:
    """The answer's JSON; None when it is not JSON (a number of thousands of digits
    included); UnusableJson for JSON the run must not carry on with."""
    raw = response.content
    if json_values(raw) > MAX_ANSWER_VALUES:  # before parsing: each costs memory once parsed
        raise UnusableJson(f"holding more than {MAX_ANSWER_VALUES:,} values")
    try:
        doc = json.loads(raw)
    except RecursionError:
        raise UnusableJson(f"nested deeper than {MAX_ANSWER_DEPTH} levels") from None
    except ValueError:  # JSONDecodeError, UnicodeDecodeError, int digits over the limit
        return None
    if raw.count(b"[") + raw.count(b"{") > MAX_ANSWER_DEPTH and _deeper_than(doc, MAX_ANSWER_DEPTH):
        raise UnusableJson(f"nested deeper than {MAX_ANSWER_DEPTH} levels")
    if _LONE_SURROGATE_ESCAPE.search(raw):  # "\\ud83d\\ude00" is fine; a lone half is not
        try:
            json.dumps(doc, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise UnusableJson("holding a string that is not Unicode (a lone surrogate)") from None
    return doc


def json_values(raw: bytes) -> int:
    """About how many values a JSON text holds (its commas and opening brackets, strings
    not set apart: an overcount), in C: what parsing it would cost in memory."""
    return raw.count(b",") + raw.count(b"[") + raw.count(b"{")


class PageItems(list):
    """A page's objects, and how many JSON values its answer held (what Pages bounds)."""

    def __init__(self, items: list[dict], values: int = 0) -> None:
        super().__init__(items)
        self.values = values


def error_json(response: Answer) -> Any:
    """An error answer's JSON, for its message: None when it is not usable JSON."""
    try:
        return json_or_none(response)
    except UnusableJson:
        return None


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether arrays and objects nest more than `limit` levels in a parsed value (one
    level at a time, never recursing)."""
    level, depth = [value], 0
    while level:
        depth += 1
        if depth > limit:
            return True
        below = []
        for item in level:
            if isinstance(item, (dict, list)):
                below.extend(item.values() if isinstance(item, dict) else item)
        level = [item for item in below if isinstance(item, (dict, list))]
    return False


class Pages:
    """A kind's list as it is read, page after page: at most MAX_PAGES pages and
    MAX_OBJECTS objects, and a cursor that repeats is an error, not a loop."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.items: list[dict] = []
        self.pages = 0
        self.values = 0
        self._cursors: set[str] = set()

    def add(self, items: list[dict], cursor: str | None) -> bool:
        """Take in a page (its answer's values counted when it is `PageItems`); True when
        there is a next one to read (at `cursor`)."""
        self.pages += 1
        self.items += items
        self.values += getattr(items, "values", 0)
        if len(self.items) > MAX_OBJECTS:
            raise ShapeError(
                f"{self.what}: more than {MAX_OBJECTS:,} objects; refusing to read further"
            )
        if self.values > MAX_LIST_VALUES:
            raise ShapeError(
                f"{self.what}: more than {MAX_LIST_VALUES:,} values in its pages; refusing to "
                "read further"
            )
        if not cursor:
            return False
        if cursor in self._cursors:
            raise ShapeError(f"{self.what}: nextCursor repeats; refusing to loop")
        if self.pages >= MAX_PAGES:
            raise ShapeError(
                f"{self.what}: more than {MAX_PAGES:,} pages; refusing to read further"
            )
        self._cursors.add(cursor)
        return True
