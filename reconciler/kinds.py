"""The kinds of object a project file manages beside its settings, as data.

A :class:`Kind` says everything the one differ (``objects.py``), the one
applier (``apply.py``), the client and the renderers need to know about a type
of object: its file key, its API paths, which fields its list carries, which
fields it writes, which are read-only, which must be given on create, which
hold role references, and how a value is normalised for comparison.
``KINDS`` is the write order (creates and updates in this order, deletes in
reverse), so adding a kind is a declaration here plus its schema and tests.

Pure: no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

Normaliser = Callable[[Any], Any]


def as_list(value: Any) -> list[Any]:
    """A string or object where a list may stand: a list of one."""
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def normalise_policy(policy: Any) -> dict[str, Any]:
    """An access policy for comparison: `resource`/`action` (and `condition`) as lists,
    sorted, so that `"FHIR:Read"` and `["FHIR:Read"]` are the same rule. Absent is empty."""
    if not isinstance(policy, Mapping):
        return {"rule": []}
    rules = []
    for rule in as_list(policy.get("rule")):
        if not isinstance(rule, Mapping):
            rules.append(rule)
            continue
        normal = dict(rule)
        for key in ("resource", "action"):
            if key in normal:
                normal[key] = _sorted(as_list(normal[key]), str)
        if "condition" in normal:
            normal["condition"] = _sorted(as_list(normal["condition"]), _canonical)
        rules.append(normal)
    return {"rule": _sorted(rules, _canonical)}


def _sorted(values: list[Any], key: Callable[[Any], Any]) -> list[Any]:
    # A list of one is in order: no key to compute (a rule's JSON, for most policies).
    return sorted(values, key=key) if len(values) > 1 else values


def policy_rules(policy: Any) -> list[str]:
    """Each rule of a policy as one line a person reads, for showing rules added and
    removed: `Allow FHIR:Read, FHIR:Update on FHIR:Patient:*` (`when …` for a condition)."""
    return [_rule_line(rule) for rule in normalise_policy(policy)["rule"]]


def _rule_line(rule: Any) -> str:
    if not isinstance(rule, Mapping) or set(rule) - {"effect", "action", "resource", "condition"}:
        return _canonical(rule)
    text = (
        f"{rule.get('effect')} {', '.join(map(str, rule.get('action', [])))} "
        f"on {', '.join(map(str, rule.get('resource', [])))}"
    )
    if "condition" in rule:
        text += f" when {_canonical(rule['condition'])}"
    return text


def _canonical(value: Any) -> str:
    return _CANONICAL.encode(value)


# One encoder for every call: json.dumps with options builds a new one each time, which
# costs more than encoding a rule (a big plan sorts thousands of them).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(", ", ": "), ensure_ascii=False)


def _identity(value: Any) -> Any:
    return value


def _id_set(value: Any) -> list[Any]:
    """Role references as a set of ids (or refs to roles this plan creates)."""
    ids = [r.get("id") if isinstance(r, Mapping) and "id" in r else r for r in as_list(value)]
    return sorted(ids, key=_canonical)


def _not_a_delete(action: str, fields: frozenset[str]) -> bool:
    return action != "delete"


@dataclass(frozen=True)
class Phase:
    """One round of a kind's writes at apply, a dependency level of its own (see
    ``levels.py``). `includes(action, fields)` says which object changes it writes
    (`fields`: the names of the fields the change sets); the applier writes them
    with the writer registered under `name` (``apply.PHASE_WRITERS``)."""

    name: str
    includes: Callable[[str, frozenset[str]], bool] = _not_a_delete


# Creates, updates and renames, in one round: what most kinds need.
WRITE = Phase("write")


@dataclass(frozen=True)
class Kind:
    """One type of object: its file key, its API, and how its fields compare."""

    name: str  # "role": the plan file's `kind`, and how output names it
    key: str  # "roles": the project file's key and the `prune` word
    list_path: str
    item_path: str  # with {id}
    create_path: str
    write_fields: tuple[str, ...]  # canonical order (export, changes)
    list_fields: frozenset[str]  # what the list carries besides id
    read_only: tuple[str, ...]  # refused in a file (the schema says so; a test holds them equal)
    required_on_create: tuple[str, ...] = ()
    required_one_of_on_create: tuple[str, ...] = ()  # at least one of these, non-empty
    role_fields: tuple[str, ...] = ()  # fields that hold role references
    policy_fields: tuple[str, ...] = ()
    # What a plan's table of new objects shows beside each name (its other fields
    # follow in one column): the fields a reviewer reads first.
    summary_fields: tuple[str, ...] = ()
    paged: bool = False  # the list is {data, metadata: {nextCursor}}
    normalisers: Mapping[str, Normaliser] = field(default_factory=dict)
    # Object names take ${NAME} like values do (bucket names: `${PROJECT_ID}-notes`).
    substitute_names: bool = False
    # Values `render` and `compare` never show (a secret's): conceal(field, value) says
    # what is shown instead, or None for a field shown as it is (see `conceal_secret`).
    conceal: Callable[[str, Any], str | None] | None = None
    # Its rounds of writes at apply, in order (a Zambda function: configuration, then code).
    phases: tuple[Phase, ...] = (WRITE,)

    def path_of(self, object_id: str) -> str:
        # An id comes from the API or a plan file: never let it change the path.
        return self.item_path.format(id=quote(str(object_id), safe=""))

    def normalise(self, field_name: str, value: Any) -> Any:
        """A field's value as it compares: policies as sets of rules, role lists as id sets."""
        return self.normalisers.get(field_name, _identity)(value)

    def same(self, field_name: str, a: Any, b: Any) -> bool:
        """Whether two values of a field compare equal. Equal values are, without
        normalising them (an answer usually holds what was sent)."""
        return a == b or self.normalise(field_name, a) == self.normalise(field_name, b)

    def needs_get(self, managed: Iterable[str]) -> bool:
        """Whether comparing these managed fields needs the object itself, not just the list."""
        return any(name not in self.list_fields for name in managed)

    def create_problem(self, desired: Mapping[str, Any]) -> str | None:
        """Why the API would refuse to create this object, or None."""
        missing = [name for name in self.required_on_create if name not in desired]
        if missing:
            return f"creating it needs {' and '.join(missing)}"
        one_of = self.required_one_of_on_create
        if one_of and not any(desired.get(name) not in (None, [], {}) for name in one_of):
            return f"creating it needs {' or '.join(one_of)} (non-empty)"
        return None


def conceal_secret(field_name: str, value: Any) -> str | None:
    """A secret's value as `render` shows it: where it comes from, never what it is —
    `(not shown: literal)`, `(not shown: env NAME)`, `(not shown: m2m NAME FIELD)`."""
    if field_name == "value":
        return "(not shown: literal)"
    if field_name != "valueFrom":
        return None
    if isinstance(value, Mapping) and "env" in value:
        return f"(not shown: env {value['env']})"
    if isinstance(value, Mapping) and "m2mClient" in value:
        return f"(not shown: m2m {value['m2mClient']} {value.get('field')})"
    return "(not shown)"


_POLICY = {"accessPolicy": normalise_policy}

ROLE = Kind(
    name="role",
    key="roles",
    list_path="/iam/role",
    item_path="/iam/role/{id}",
    create_path="/iam/role",
    write_fields=("name", "description", "accessPolicy"),
    list_fields=frozenset({"name"}),
    read_only=("id", "memberCount"),
    policy_fields=("accessPolicy",),
    summary_fields=("description", "accessPolicy"),
    normalisers=_POLICY,
)

APPLICATION = Kind(
    name="application",
    key="applications",
    list_path="/application",
    item_path="/application/{id}",
    create_path="/application",
    write_fields=(
        "name",
        "description",
        "allowedCallbackUrls",
        "loginRedirectUri",
        "logoUri",
        "allowedLogoutUrls",
        "allowedWebOriginsUrls",
        "allowedCORSOriginsUrls",
        "loginWithEmailEnabled",
        "passwordlessSMS",
        "mfaEnabled",
        "shouldSendInviteEmail",
        "refreshTokenEnabled",
    ),
    list_fields=frozenset({"name"}),
    read_only=("id", "clientId", "connectionName"),
    required_on_create=("allowedCallbackUrls",),
    summary_fields=("description", "allowedCallbackUrls", "loginWithEmailEnabled", "mfaEnabled"),
)

M2M = Kind(
    name="m2m",
    key="m2mClients",
    list_path="/m2m/v2/list",
    item_path="/m2m/{id}",
    create_path="/m2m",
    write_fields=("name", "description", "roles", "accessPolicy", "jwksUrl"),
    list_fields=frozenset({"name"}),
    read_only=("id", "clientId", "profile"),
    required_one_of_on_create=("roles", "accessPolicy"),
    role_fields=("roles",),
    policy_fields=("accessPolicy",),
    summary_fields=("description", "roles", "accessPolicy"),
    paged=True,
    normalisers={**_POLICY, "roles": _id_set},
)

# The write order: create/update/rename in this order, delete in reverse.
KINDS: tuple[Kind, ...] = (ROLE, APPLICATION, M2M)
BY_KEY = {kind.key: kind for kind in KINDS}
BY_NAME = {kind.name: kind for kind in KINDS}
# Fields no kind may set from a file: the API's own, and secrets (never managed).
SECRET_FIELDS = ("secret", "clientSecret")


def check_objects(data: Mapping[str, Any]) -> list[tuple[tuple[Any, ...], str, bool]]:
    """What the schema cannot say about a file's kinds: `prune` and `renamedFrom` rules.

    Returns (path, message, at_key) triples; `files.py` turns them into located problems.
    Runs on any document, so it only looks at values of the right shape.
    """
    problems: list[tuple[tuple[Any, ...], str, bool]] = []
    prune = data.get("prune")
    if isinstance(prune, list):
        seen: set[str] = set()
        for index, word in enumerate(prune):
            if not isinstance(word, str) or word not in BY_KEY:
                continue  # the schema says it
            if word in seen:
                problems.append((("prune", index), f"prune: {word} is listed twice", False))
            elif word not in data:
                problems.append(
                    (
                        ("prune", index),
                        f"prune: {word} is not in this file, so there is nothing to keep; "
                        f"write `{word}: {{}}` to manage it as empty (deleting every live one)",
                        False,
                    )
                )
            seen.add(word)
    for kind in KINDS:
        objects = data.get(kind.key)
        if isinstance(objects, Mapping):
            problems += _rename_problems(kind, objects)
            if kind.role_fields:
                problems += _null_role_problems(kind, objects)
    return problems


def _rename_problems(kind: Kind, objects: Mapping[str, Any]) -> list:
    problems = []
    sources: dict[str, str] = {}
    for name, fields in objects.items():
        old = fields.get("renamedFrom") if isinstance(fields, Mapping) else None
        if not isinstance(old, str) or not old.strip():
            continue
        at = (kind.key, name, "renamedFrom")
        if old == name:
            problems.append((at, f"{kind.key}.{name}.renamedFrom names the object itself", False))
        elif old in objects:
            other = objects[old]
            if isinstance(other, Mapping) and other.get("renamedFrom"):
                message = (
                    f"{kind.key}.{name}.renamedFrom: {old!r} is itself renamed from "
                    f"{other['renamedFrom']!r}; renames do not chain: rename one step at a time"
                )
            else:
                message = (
                    f"{kind.key}.{name}.renamedFrom: {old!r} is declared in this file too; "
                    "an object cannot be both renamed and kept"
                )
            problems.append((at, message, False))
        elif old in sources:
            problems.append(
                (
                    at,
                    f"{kind.key}.{name}.renamedFrom: {sources[old]!r} is renamed from {old!r} "
                    "already; one object can be renamed into only one",
                    False,
                )
            )
        sources.setdefault(old, name)
    return problems


def _null_role_problems(kind: Kind, objects: Mapping[str, Any]) -> list:
    problems = []
    for name, fields in objects.items():
        if not isinstance(fields, Mapping):
            continue
        for role_field in kind.role_fields:
            values = fields.get(role_field)
            if isinstance(values, list):
                for index, value in enumerate(values):
                    if value is None:
                        problems.append(
                            (
                                (kind.key, name, role_field, index),
                                f"{kind.key}.{name}.{role_field}: a role must be a name or "
                                "{id: ...}, not null",
                                False,
                            )
                        )
    return problems
