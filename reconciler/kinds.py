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
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from reconciler import zambdas
from reconciler.errors import ShapeError

if TYPE_CHECKING:
    from reconciler.plan import ObjectChange

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
    return sorted(map(_role_id, as_list(value)), key=_canonical)


def _role_id(value: Any) -> Any:
    """One role reference as its id (or a ref to a role this plan creates)."""
    return value.get("id") if isinstance(value, Mapping) and "id" in value else value


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
    # The field of a live object that addresses it in `item_path`, and that a plan calls
    # its `id` (secrets and buckets are addressed by their name).
    key_field: str = "id"
    # What a live key must look like before it goes into `item_path` (a regex, fully
    # matched), and how a message says it: a name-keyed kind's documented characters.
    key_pattern: str | None = None
    key_rule: str = ""
    # Whether `GET item_path` answers the object's fields. A bucket has no such GET; a
    # secret's answers its value, which is read only as a value (`concealed`).
    item_get: bool = True
    # Created with `PUT item_path` naming it, with no body (idempotent), not a POST.
    create_put: bool = False
    # Whether the API renames in place (`renamedFrom`); neither secrets nor buckets do.
    renames: bool = True
    # The apply option without which a delete of this kind is `blocked`, not done (a
    # bucket's delete destroys every object in it), and what a plan's delete line adds.
    delete_guard: str | None = None
    delete_note: str = ""
    # The object holds a value that is never shown, stored or hashed (a secret's): the
    # file says where it comes from (`secretvalues.Source`), the plan compares it with
    # hmac and writes `valueSource`, never a field change.
    concealed: bool = False
    # The API's name of a field where it differs from the file's: a function's
    # `executionRole` (a role name or {id}) is sent and read as `executionRoleId`.
    api_names: Mapping[str, str] = field(default_factory=dict)
    # What an absent live value compares as: the API's default (a function's memory).
    live_defaults: Mapping[str, Any] = field(default_factory=dict)
    # Fields plan reads from the file but never compares or sends (a function's
    # `source`, the zip its code comes from, and `sourceInputs`, what it is built from).
    local_fields: tuple[str, ...] = ()
    # Fields compared and shown but never in a write's body (a function's `code`): a
    # later phase writes them. Each maps to the file's field it is read from (`source`:
    # where a plan says it is written); plan takes the desired value from what it read
    # beside the file (`read_local`), `live_values[field](live object)` the live one.
    pseudo_fields: Mapping[str, str] = field(default_factory=dict)
    live_values: Mapping[str, Callable[[Mapping[str, Any]], Any]] = field(default_factory=dict)
    # How a field's value reads in a plan where JSON would not say what it is
    # (`code`: `3f2a9c01…`, or `new`).
    shown: Mapping[str, Callable[[Any], str]] = field(default_factory=dict)
    # Rules between an object's fields that the schema cannot say (a cron function
    # needs a schedule): check(name, fields) -> [(path below the object, message)].
    check: Callable[[str, Mapping[str, Any]], list[tuple[tuple[Any, ...], str]]] | None = None
    # Plan-file keys an entry of this kind holds beside the engine's (a function's `zip`):
    # `plan_extras(changes, local)` computes them in plan, from the changes and what plan
    # read beside the file; `plan_problem(entry)` says why a saved entry's are not what
    # plan could have written, or None.
    plan_keys: tuple[str, ...] = ()
    plan_extras: Callable[[list, Mapping[str, Any]], dict[str, Any]] | None = None
    plan_problem: Callable[[Mapping[str, Any]], str | None] | None = None
    # What plan reads beside the file for each declared object (a function's code hash,
    # from its zip): read_local(repository root, fields, copies) -> {pseudo-field: value,
    # plan key: value} | {"error": message, "at": path below the object} | None. Plan's
    # reader runs it (fleet.py); validate never does. `copies` is an apply's
    # `zips.PrivateCopies` (None in a plan): the bytes read become what apply uploads.
    read_local: Callable[[str, Mapping[str, Any], Any], Mapping[str, Any] | None] | None = None
    # The field of the API's answer that says what state apply left the object in (a
    # function's `status`: reported, not waited for) and the states that are failures.
    status_field: str | None = None
    failed_statuses: tuple[str, ...] = ()

    @property
    def compared_fields(self) -> tuple[str, ...]:
        """Every field a change may hold, in canonical order: written ones, then pseudo."""
        return (*self.write_fields, *self.pseudo_fields)  # a mapping's keys, in order

    def api_name(self, field_name: str) -> str:
        return self.api_names.get(field_name, field_name)

    # How `apply --plan` verifies a saved entry of this kind (``verify.py``):
    # verify_saved(saved, recomputed) gets the plan file's ObjectChange and the one the
    # planning code computes again from the files and what apply read live (None when
    # it plans nothing for that object), and returns the ObjectChange to show and apply,
    # or raises ValueError(REASON) when the saved one is not what they give. None (the
    # default): the two must be equal, redacted as the plan file was and timing aside
    # (liveFingerprint), and the recomputed one is applied. A kind whose plan defers a
    # decision to apply (a secret's `compare`: its value is compared only then) accepts
    # here what that decision may turn out to be, and nothing else.
    verify_saved: Callable[[ObjectChange, ObjectChange | None], ObjectChange] | None = None

    def key_problem(self, key: Any) -> str | None:
        """Why a live object's key (its id; a secret's or bucket's name) may not go into a
        request path, or None: a dot-segment or nothing (which a server or proxy folds
        into another path however it is encoded), or a name outside the characters the
        API documents for the kind (`key_pattern`)."""
        text = str(key)
        if text in ("", ".", ".."):
            return f"its {self.key_field} {text!r} cannot address it in a request path"
        if self.key_pattern is not None and not re.fullmatch(self.key_pattern, text):
            return (
                f"its live name is not a {self.name} name the API allows ({self.key_rule}): "
                "it is never put in a request path; rename or delete it by hand"
            )
        return None

    def path_of(self, object_id: str) -> str:
        # An id comes from the API or a plan file: never let it change the path.
        why = self.key_problem(object_id)
        if why:
            raise ShapeError(f"{self.name} {str(object_id)!r}: {why}")
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
        return any(
            name not in self.list_fields and name not in self.local_fields for name in managed
        )

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
    `(not shown: literal)`, `(not shown: env RECONCILER_SECRET_NAME)` (the variable
    read, as plans name it), `(not shown: m2m NAME FIELD)`."""
    from reconciler.secretvalues import ENV_PREFIX

    if field_name == "value":
        return "(not shown: literal)"
    if field_name != "valueFrom":
        return None
    if isinstance(value, Mapping) and "env" in value:
        return f"(not shown: env {ENV_PREFIX}{value['env']})"
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


def _verify_saved_secret(saved: ObjectChange, ours: ObjectChange | None) -> ObjectChange:
    from reconciler.secretvalues import verify_saved_value

    return verify_saved_value(saved, ours)


SECRET = Kind(
    name="secret",
    key="secrets",
    list_path="/secret",
    item_path="/secret/{id}",
    create_path="/secret",
    # What a file gives (one of them); the API writes {name, value}.
    write_fields=("name", "value", "valueFrom"),
    list_fields=frozenset({"name"}),
    read_only=(),
    # A new secret's row shows where its value comes from (never the value).
    summary_fields=("valueSource",),
    key_field="name",
    key_pattern=r"[A-Za-z0-9_-]+",
    key_rule="letters, digits, '-' and '_'",
    item_get=False,
    renames=False,
    conceal=conceal_secret,
    concealed=True,
    plan_keys=("valueSource",),  # where its value comes from: never the value
    phases=(Phase("value"),),  # one POST /secret per secret: create or replace
    verify_saved=_verify_saved_secret,  # a value compared at apply: compared again then
)

BUCKET = Kind(
    name="bucket",
    key="buckets",
    list_path="/z3",
    item_path="/z3/{id}",
    create_path="/z3/{id}",
    write_fields=("name",),
    list_fields=frozenset({"name"}),
    read_only=("id", "creationDate"),
    summary_fields=(),  # a bucket is its name
    key_field="name",
    key_pattern=r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]",
    key_rule="3 to 63 of a-z, 0-9, '.' and '-'",
    item_get=False,
    create_put=True,
    renames=False,
    substitute_names=True,
    delete_guard="--allow-bucket-deletes",
    delete_note=" (and every object in it)",
)


_ZAMBDA_FIELDS = (
    "name",
    "runtime",
    "triggerMethod",
    "schedule",
    "memorySize",
    "timeoutInSeconds",
    "executionRole",
)

ZAMBDA = Kind(
    name="zambda",
    key="zambdas",
    list_path="/zambda",
    item_path="/zambda/{id}",
    create_path="/zambda",
    write_fields=_ZAMBDA_FIELDS,
    # The list carries every compared field: a plan of N functions is one GET /zambda.
    list_fields=frozenset({*_ZAMBDA_FIELDS, zambdas.CODE}),
    read_only=("id", "status", "fileInfo"),
    required_on_create=("runtime",),
    role_fields=("executionRole",),
    summary_fields=("runtime", "triggerMethod", zambdas.CODE),
    normalisers={"executionRole": _role_id},
    phases=(
        Phase("write", includes=zambdas.config_changes),
        Phase(zambdas.CODE, includes=zambdas.code_changes),
    ),
    api_names={"executionRole": "executionRoleId"},
    live_defaults=zambdas.DEFAULTS,
    local_fields=("source", "sourceInputs"),
    pseudo_fields={zambdas.CODE: "source"},
    live_values={zambdas.CODE: zambdas.live_code},
    shown={zambdas.CODE: zambdas.show_code},
    check=zambdas.check_function,
    plan_keys=(zambdas.ZIP,),
    plan_extras=zambdas.plan_extras,
    plan_problem=zambdas.plan_entry_problem,
    read_local=zambdas.read_code,
    status_field="status",
    failed_statuses=zambdas.FAILED_STATUSES,
)

# The write order: create/update/rename in this order, delete in reverse.
KINDS: tuple[Kind, ...] = (ROLE, APPLICATION, M2M, SECRET, BUCKET, ZAMBDA)
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
        if isinstance(objects, Mapping) and kind.renames:  # else the schema refuses it
            problems += _rename_problems(kind, objects)
            if kind.role_fields:
                problems += _null_role_problems(kind, objects)
            if kind.check is not None:
                problems += [
                    ((kind.key, name, *path), message, False)
                    for name, fields in objects.items()
                    if isinstance(fields, Mapping)
                    for path, message in kind.check(str(name), fields)
                ]
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
