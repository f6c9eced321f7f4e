"""Read a saved plan for `apply --plan`, treating the file as untrusted (SPEC section 4).

The checksum proves the file was not edited by accident; it proves nothing about
who wrote it, since anyone can recompute it. So before any request the document
must also be one that `plan` could have written: known keys and types at every
level, known statuses, a `patch` that is exactly what its `changes` derive, each
changed field a writable key the file manages, and `projectId` and `auth` that
obey the project-file rules, and a `commit` or a `filesHash` saying which files it
was made from. Anything else is ``PlanFileError("…: not a valid plan file: REASON")``.
Whether the plan is what those files and the live values give is checked next, by
``verify.py``.

One function per level (`_check_document`, `_check_project`, `_check_change`),
each given `where` (a path like ``projects[2].changes[0]``) for its REASON, over
small shape helpers (`client.expect`, `client.expect_object`,
`client.expect_list_of_objects`, `_expect_sha256`, `_expect_file_rules`) that a later
format (version 2, with per-Project objects) can reuse level by level.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from itertools import accumulate
from typing import Any

from reconciler import schema
from reconciler.answers import describe_json, expect, expect_list_of_objects, expect_object
from reconciler.errors import PlanFileError, RefusedError, ShapeError
from reconciler.kinds import BY_KEY, BY_NAME, ROLE, Kind
from reconciler.objects import body_of, is_ref
from reconciler.plan import (
    CHANGED,
    COMPARE,
    ERROR,
    FORMAT_VERSION,
    IMMUTABLE_KEYS,
    MANAGED_KEYS,
    OBJECT_COUNTS,
    ROLE_FIELDS,
    UNCHANGED,
    VALUE_SOURCE,
    Plan,
    checksum,
)
from reconciler.secretvalues import Source

TOP_LEVEL_KEYS = (
    "formatVersion",
    "tool",
    "createdAt",
    "apiUrl",
    "commit",
    "filesHash",
    "summary",
    "objectSummary",
    "projects",
    "checksum",
)
PROJECT_KEYS = (
    "file",
    "projectId",
    "name",
    "status",
    "changes",
    "patch",
    "auth",
    "managedKeys",
    "liveFingerprint",
    "error",
    "prune",
    "objects",
    "notManaged",
    "kept",
)
OBJECT_KEYS = ("kind", "name", "id", "action", "changes", "body", "liveFingerprint")
ACTIONS = ("create", "update", "rename", "delete")
# A concealed kind's (a secret's) entries: where its value comes from (VALUE_SOURCE),
# never a value; its action may be `compare` (value compared at apply), and it changes
# no field.
CONCEALED_ACTIONS = ("create", "update", "compare", "delete")
CHANGE_KEYS = ("field", "before", "after")
# Where a desired value is written ("FILE:LINE" or null): on every change and object of a
# plan this version writes; a plan made before it has none.
SOURCE = "source"
STATUSES = (CHANGED, UNCHANGED, ERROR)
ANY_ID = "00000000-0000-4000-8000-000000000000"  # stands for the id where a check needs one
WRITABLE_KEYS = tuple(key for key in MANAGED_KEYS if key not in IMMUTABLE_KEYS)

_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # a git commit (SHA-1 or SHA-256)
# A plan file larger or deeper than this is refused before it is parsed.
MAX_PLAN_BYTES = 64 * 2**20
MAX_PLAN_DEPTH = 64
# A real plan spends about 13 bytes on each value (a comma or an opening bracket): this
# bounds the memory a file of tiny values (`"a",` or `[],`) would take once parsed.
MAX_PLAN_VALUES = MAX_PLAN_BYTES // 8


def read_plan_file(path: str) -> Plan:
    """Load a saved plan, refusing anything that is not an intact, consistent plan."""
    return plan_from_document(read_plan_json(path), path)


def read_plan_json(path: str) -> Any:
    """A plan file's JSON, bounded: over 64 MB, nested deeper than 64 levels, or holding
    more than 8 million values, it is refused before it is parsed (one line, never a
    RecursionError, a huge read or gigabytes of parsed values)."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            raw = b"" if size > MAX_PLAN_BYTES else fh.read(MAX_PLAN_BYTES + 1)
    except OSError as exc:
        raise PlanFileError(f"cannot read plan file {path}: {exc.strerror}") from None
    size = max(size, len(raw))
    if size > MAX_PLAN_BYTES:
        raise PlanFileError(
            f"{path}: not a valid plan file: {size / 2**20:,.1f} MB, over the "
            f"{MAX_PLAN_BYTES // 2**20} MB a plan file may hold"
        )
    punctuation = _punctuation(raw)
    values = punctuation.count(b",") + punctuation.count(b"[") + punctuation.count(b"{")
    if values > MAX_PLAN_VALUES:
        # Each costs memory once parsed: 60 MB of `"a",` or `[],` would take gigabytes.
        raise PlanFileError(
            f"{path}: not a valid plan file: about {values:,} values, over the "
            f"{MAX_PLAN_VALUES:,} a plan file may hold"
        )
    if _depth(punctuation) > MAX_PLAN_DEPTH:
        raise PlanFileError(
            f"{path}: not a valid plan file: nested deeper than {MAX_PLAN_DEPTH} levels"
        )
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise PlanFileError(f"{path}: not a valid plan file: not JSON ({exc})") from None
    except RecursionError:  # cannot happen below the depth cap; never a traceback anyway
        raise PlanFileError(f"{path}: not a valid plan file: nested too deeply") from None


_NOT_PUNCTUATION = bytes(b for b in range(256) if b not in b"[]{},")
_BRACKET_STEP = [0] * 256
for _byte in b"[{":
    _BRACKET_STEP[_byte] = 1
for _byte in b"]}":
    _BRACKET_STEP[_byte] = -1


def nesting_depth(raw: bytes) -> int:
    """How deep the arrays and objects of a JSON text nest, without parsing it."""
    return _depth(_punctuation(raw))


def _punctuation(raw: bytes, chunk: int = 2**20) -> bytes:
    """The brackets and commas of a JSON text outside its strings, without parsing it:
    escapes dropped (`\\\\` before `\\"`, as a JSON reader pairs them), then strings (a
    chunk at a time, carrying whether a string is open, so a file of tiny strings never
    becomes millions of pieces at once), then everything else. Linear, mostly in C."""
    unescaped = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    inside, kept = 0, []
    for start in range(0, len(unescaped), chunk):
        pieces = unescaped[start : start + chunk].split(b'"')
        kept.append(b"".join(pieces[inside::2]).translate(None, _NOT_PUNCTUATION))
        inside = (inside + len(pieces) - 1) % 2
    return b"".join(kept)


def _depth(punctuation: bytes) -> int:
    return max(accumulate(map(_BRACKET_STEP.__getitem__, punctuation)), default=0)


def plan_from_document(doc: Any, path: str = "the plan") -> Plan:
    """A parsed plan document as a Plan, after the checksum and every consistency check."""
    try:
        if not isinstance(doc, dict) or "projects" not in doc or "checksum" not in doc:
            raise ShapeError("not a reconciler plan (no projects or checksum)")
        version = doc.get("formatVersion")
        if version != FORMAT_VERSION or isinstance(version, bool):
            raise PlanFileError(
                f"{path}: plan format {describe_json(version, 20)} is not "
                f"{FORMAT_VERSION}; make the plan again with this version of reconciler"
            )
        expect(doc["checksum"], str, "checksum")
        if checksum(doc) != doc["checksum"]:
            raise RefusedError(
                f"{path}: checksum does not match the content; the plan was edited after it "
                "was made. Nothing was applied."
            )
        check_plan_document(doc)
    except ShapeError as exc:
        raise PlanFileError(f"{path}: not a valid plan file: {exc}") from None
    return Plan.from_dict(doc)


def check_plan_document(doc: Mapping[str, Any]) -> None:
    """Raise ShapeError(REASON) unless `doc` is a plan `plan --out` could have written."""
    _check_document(doc)


# One function per level ------------------------------------------------------------


def _check_document(doc: Mapping[str, Any]) -> None:
    expect_object(doc, "the document", required=TOP_LEVEL_KEYS, only=TOP_LEVEL_KEYS)
    _expect_sha256(doc["checksum"], "checksum")
    for key in ("tool", "createdAt", "apiUrl"):
        expect(doc[key], str, key)
    # Where the plan comes from: the commit of the files it read, or (uncommitted) their hash.
    commit, files_hash = doc["commit"], doc["filesHash"]
    if commit is not None and (not isinstance(commit, str) or not _COMMIT.fullmatch(commit)):
        raise ShapeError(
            f"commit: expected a git commit (40 hex digits), got {describe_json(commit)}"
        )
    if files_hash is not None:
        _expect_sha256(files_hash, "filesHash")
    if (commit is None) == (files_hash is None):
        raise ShapeError("a plan records either commit or filesHash (and only one)")
    projects = expect_list_of_objects(doc["projects"], "projects")
    ids: set[str] = set()
    for index, project in enumerate(projects):
        where = f"projects[{index}]"
        _check_project(project, where)
        if project["projectId"] in ids:
            raise ShapeError(f"{where}.projectId: {project['projectId']} is planned twice")
        ids.add(project["projectId"])
    summary = expect(doc["summary"], dict, "summary")
    counted = {CHANGED: 0, UNCHANGED: 0, "errors": 0}
    for project in projects:
        counted["errors" if project["status"] == ERROR else project["status"]] += 1
    if summary != counted:
        raise ShapeError(
            f"summary {describe_json(summary)} does not count the projects "
            f"({describe_json(counted)})"
        )
    objects_counted = {"add": 0, "change": 0, "destroy": 0}
    for project in projects:
        for change in project["objects"]:
            if change["action"] in OBJECT_COUNTS:
                objects_counted[OBJECT_COUNTS[change["action"]]] += 1
    if doc["objectSummary"] != objects_counted:
        raise ShapeError(
            f"objectSummary {describe_json(doc['objectSummary'])} does not count the objects "
            f"({describe_json(objects_counted)})"
        )


def _check_project(project: Mapping[str, Any], where: str) -> None:
    expect_object(project, where, required=PROJECT_KEYS, only=PROJECT_KEYS)
    expect(project["file"], str, f"{where}.file")
    expect(project["name"], (str, type(None)), f"{where}.name")
    project_id = expect(project["projectId"], str, f"{where}.projectId")
    auth = project["auth"]
    expect(auth, (dict, type(None)), f"{where}.auth")
    # projectId and auth obey the project-file rules: the file's schema says them.
    _expect_file_rules({"id": project_id}, where, rename=("id", "projectId"))
    if auth is not None:
        _expect_file_rules({"id": ANY_ID, "auth": auth}, where)
    status = project["status"]
    if status not in STATUSES:
        raise ShapeError(
            f"{where}.status: {describe_json(status)} is not one of {', '.join(STATUSES)}"
        )
    managed = expect(project["managedKeys"], list, f"{where}.managedKeys")
    for key in managed:
        if key not in MANAGED_KEYS:
            raise ShapeError(
                f"{where}.managedKeys: {describe_json(key)} is not a key a file can manage"
            )
    if len(set(managed)) != len(managed):
        raise ShapeError(f"{where}.managedKeys: a key is listed twice")
    error = project["error"]
    if status == ERROR:
        expect(error, str, f"{where}.error")
    elif error is not None:
        raise ShapeError(f"{where}.error: a {status} Project has no error")
    fingerprint = project["liveFingerprint"]
    if status == CHANGED or fingerprint is not None:
        _expect_sha256(fingerprint, f"{where}.liveFingerprint")

    changes = expect_list_of_objects(project["changes"], f"{where}.changes")
    patch = expect(project["patch"], dict, f"{where}.patch")
    prune = expect(project["prune"], list, f"{where}.prune")
    for word in prune:
        if word not in BY_KEY:
            raise ShapeError(f"{where}.prune: {describe_json(word)} is not a kind")
    for key in ("notManaged", "kept"):
        for index, item in enumerate(expect_list_of_objects(project[key], f"{where}.{key}")):
            at = f"{where}.{key}[{index}]"
            expect_object(item, at, required=("kind", "name"), only=("kind", "name"))
            if item["kind"] not in BY_NAME:
                raise ShapeError(f"{at}.kind: {describe_json(item['kind'])} is not a kind")
            expect(item["name"], str, f"{at}.name")
    objects = expect_list_of_objects(project["objects"], f"{where}.objects")
    changing = [o for o in objects if not isinstance(o, dict) or o.get("action") != COMPARE]
    compares = len(objects) - len(changing)
    if status != CHANGED and (changes or patch or changing):
        raise ShapeError(f"{where}: a Project that is {status} has no changes and no patch")
    if status == ERROR and compares:
        raise ShapeError(f"{where}: a Project that is error compares no value")
    if status == CHANGED and not changes and not changing:
        raise ShapeError(f"{where}: a changed Project has at least one change")
    created_roles = set()
    seen: set[tuple[str, str]] = set()
    for index, change in enumerate(objects):
        at = f"{where}.objects[{index}]"
        _check_object(change, at, prune)
        if (change["kind"], change["name"]) in seen:
            raise ShapeError(f"{at}: {change['kind']} {change['name']!r} is planned twice")
        seen.add((change["kind"], change["name"]))
        if change["kind"] == ROLE.name and change["action"] == "create":
            created_roles.add(change["name"])
    for index, change in enumerate(objects):
        _check_refs(change["body"], created_roles, f"{where}.objects[{index}].body")
    derived: dict[str, Any] = {}
    for index, change in enumerate(changes):
        field = _check_change(change, f"{where}.changes[{index}]", managed, created_roles)
        if ROLE_FIELDS.get(field, field) in derived:
            raise ShapeError(f"{where}.changes[{index}].field: {field} changes twice")
        derived[ROLE_FIELDS.get(field, field)] = _patch_value(field, change["after"])
    _expect_derived(patch, derived, f"{where}.patch")


def _check_object(change: Mapping[str, Any], where: str, prune: list[str]) -> None:
    """One object write: a known kind and action, an id where one is needed, only writable
    fields changed, a body exactly derived from the changes, deletes only in prune kinds."""
    expect_object(change, where, required=("kind",))
    kind = BY_NAME.get(change["kind"]) if isinstance(change["kind"], str) else None
    if kind is None:
        raise ShapeError(f"{where}.kind: {describe_json(change['kind'])} is not a kind")
    # A kind's own keys (a function's `zip`) are on its entries, and only on them.
    keys = (*OBJECT_KEYS, *kind.plan_keys)
    expect_object(change, where, required=keys, only=(*keys, SOURCE))
    _expect_source(change, where)
    name = expect(change["name"], str, f"{where}.name")
    if not name.strip():
        raise ShapeError(f"{where}.name: an object's name must not be empty")
    _expect_object_name(kind, name, f"{where}.name")
    action = change["action"]
    actions = CONCEALED_ACTIONS if kind.concealed else ACTIONS
    if action not in actions or (action == "rename" and not kind.renames):
        allowed = tuple(a for a in actions if a != "rename" or kind.renames)
        raise ShapeError(
            f"{where}.action: {describe_json(action)} is not one of {allowed} for a {kind.name}"
        )
    if action == "create":
        if change["id"] is not None or change["liveFingerprint"] is not None:
            raise ShapeError(f"{where}: a create has no id and no liveFingerprint")
    else:
        object_id = expect(change["id"], str, f"{where}.id")
        if kind.key_field == "name":  # addressed by its name: the id is the name
            if object_id != name:
                raise ShapeError(f"{where}.id: a {kind.name} is addressed by its name")
        else:
            _expect_file_rules({"id": object_id}, where)
        _expect_sha256(change["liveFingerprint"], f"{where}.liveFingerprint")
    if action == "delete" and kind.key not in prune:
        raise ShapeError(f"{where}: deletes a {kind.name} though prune does not list {kind.key}")
    if kind.concealed:
        _check_concealed(change, where)
        return
    changes = expect_list_of_objects(change["changes"], f"{where}.changes")
    fields = []
    for index, field_change in enumerate(changes):
        at = f"{where}.changes[{index}]"
        expect_object(field_change, at, required=CHANGE_KEYS, only=(*CHANGE_KEYS, SOURCE))
        _expect_source(field_change, at)
        field = field_change["field"]
        if field not in kind.compared_fields or field in fields:
            raise ShapeError(f"{at}.field: {describe_json(field)} is not a writable field once")
        fields.append(field)
        _check_object_value(kind, field, field_change["after"], f"{at}.after")
        if kind.normalise(field, field_change["before"]) == kind.normalise(
            field, field_change["after"]
        ) and not (action == "create" and field_change["after"] is None):
            raise ShapeError(f"{at}: before and after are the same")
    by_field = {c["field"]: c for c in changes}
    if action == "delete" and changes:
        raise ShapeError(f"{where}: a delete changes no field")
    if action == "create" and by_field.get("name", {}).get("after") != name:
        raise ShapeError(f"{where}: a create sets its name")
    if action == "rename" and by_field.get("name", {}).get("after") != name:
        raise ShapeError(f"{where}: a rename changes name to the object's name")
    if action == "update" and ("name" in by_field or not changes):
        raise ShapeError(f"{where}: an update changes at least one field, never the name")
    body = expect(change["body"], dict, f"{where}.body")
    _expect_derived(body, body_of(kind, changes), f"{where}.body")
    if kind.plan_problem is not None:
        why = kind.plan_problem(change)
        if why:
            raise ShapeError(f"{where}: {why}")


def _check_concealed(change: Mapping[str, Any], where: str) -> None:
    """A secret's entry: no field changes and an empty body (its value is never in a
    plan), and where the value comes from (null for a delete)."""
    if change["changes"] != [] or change["body"] != {}:
        raise ShapeError(f"{where}: a secret's entry changes no field and has an empty body")
    if change["action"] == "delete":
        if change[VALUE_SOURCE] is not None:
            raise ShapeError(f"{where}: a delete's {VALUE_SOURCE} is null")
        return
    try:
        Source.parse(change[VALUE_SOURCE])
    except ValueError as exc:
        raise ShapeError(
            f"{where}.{VALUE_SOURCE}: {describe_json(change[VALUE_SOURCE])}: {exc}"
        ) from None


def _expect_object_name(kind: Kind, name: str, where: str) -> None:
    """A name the kind allows (a bucket's as S3 allows, a secret's of letters, digits,
    `-` and `_`): a name becomes a path segment."""
    found = [
        f
        for f in schema.check({"id": ANY_ID, kind.key: {name: None}})
        if f.at_key and f.path == (kind.key, name)
    ]
    if found:
        raise ShapeError(f"{where}: {found[0].message}")


def _check_object_value(kind: Kind, field: str, value: Any, where: str) -> None:
    """An object field's value as the plan holds it: the file's rules (its schema), with
    role references as [{id, name}] where the id may be a ref to a role this plan creates."""
    if field == "name":
        if not isinstance(value, str) or not value.strip():
            raise ShapeError(f"{where}: a name is a non-empty string")
        return
    if field in kind.pseudo_fields:
        return  # the kind's plan_problem checks them, with the keys they come with
    if field in kind.role_fields:
        one = not isinstance(value, list) and field in kind.api_names
        for index, role in enumerate([value] if one else expect(value, list, where)):
            at = where if one else f"{where}[{index}]"
            expect_object(role, at, required=("id", "name"), only=("id", "name"))
            expect(role["name"], (str, type(None)), f"{at}.name")
            if not is_ref(role["id"]):
                _expect_file_rules({"id": expect(role["id"], str, f"{at}.id")}, at)
        return
    findings = schema.check({"id": ANY_ID, kind.key: {"x": {field: value}}})
    if findings:
        raise ShapeError(f"{where}: {findings[0].message}")


def _check_refs(value: Any, created_roles: set[str], where: str) -> None:
    """A {"ref": …} must name a role this Project's plan creates."""
    if is_ref(value):
        ref = expect(value["ref"], dict, f"{where}.ref")
        if ref != {"kind": ROLE.name, "name": ref.get("name")} or ref["name"] not in (
            created_roles
        ):
            raise ShapeError(f"{where}: {describe_json(value)} is not a role this plan creates")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_refs(item, created_roles, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_refs(item, created_roles, f"{where}[{index}]")


def _check_change(
    change: Mapping[str, Any], where: str, managed: list[str], created_roles: set[str]
) -> str:
    """One change: a writable, managed field, with before and after of that field's shape."""
    expect_object(change, where, required=CHANGE_KEYS, only=(*CHANGE_KEYS, SOURCE))
    _expect_source(change, where)
    field = change["field"]
    if field not in WRITABLE_KEYS:
        raise ShapeError(f"{where}.field: {describe_json(field)} is not a writable key")
    if field not in managed:
        raise ShapeError(f"{where}.field: {field} is not in managedKeys")
    _check_value(field, change["after"], f"{where}.after", created_roles)
    if change["before"] is not None:  # a live value the Project did not have is null
        _check_value(field, change["before"], f"{where}.before", set())
    if change["before"] == change["after"]:
        raise ShapeError(f"{where}: before and after are the same")
    return field


def _check_value(field: str, value: Any, where: str, created_roles: set[str]) -> None:
    """A value of `field` as a plan holds it: roles as {id, name} or null; the other
    fields as the project file's schema has them."""
    if field in ROLE_FIELDS:
        if value is None:
            return
        expect_object(value, where, required=("id", "name"), only=("id", "name"))
        expect(value["name"], (str, type(None)), f"{where}.name")
        if is_ref(value["id"]):
            _check_refs(value["id"], created_roles, f"{where}.id")
            return
        _expect_file_rules({"id": expect(value["id"], str, f"{where}.id")}, where)
        return
    _expect_file_rules(
        {"id": ANY_ID, field: value}, where.rpartition(".")[0], rename=(field, "after")
    )


def _expect_derived(patch: Mapping[str, Any], derived: Mapping[str, Any], where: str) -> None:
    """The patch holds exactly what the changes derive: no key more, none less, same values."""
    for key in patch:
        if key not in derived:
            raise ShapeError(f"{where}: {describe_json(key)} is not derived from any change")
    for key, value in derived.items():
        if key not in patch:
            raise ShapeError(f"{where}: {key} is missing, though a change derives it")
        if patch[key] != value or type(patch[key]) is not type(value):
            raise ShapeError(
                f"{where}.{key}: {describe_json(patch[key])} is not what its change derives "
                f"({describe_json(value)})"
            )


def _patch_value(field: str, after: Any) -> Any:
    if field in ROLE_FIELDS:
        return after["id"] if after else None
    return after


def _expect_source(change: Mapping[str, Any], where: str) -> None:
    expect(change.get(SOURCE), (str, type(None)), f"{where}.{SOURCE}")


def _expect_sha256(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise ShapeError(
            f"{where}: expected 'sha256:' and 64 hex digits, got {describe_json(value)}"
        )
    return value


def _expect_file_rules(
    document: dict[str, Any], where: str, rename: tuple[str, str] | None = None
) -> None:
    """Values that must obey the project file's rules (its schema): a lowercase UUID id,
    an auth block of valid, allowed variable names, a setting of the right type. The
    schema's message names the file's key; `rename` gives the plan's name for it."""
    findings = schema.check(document)
    if findings:
        message = findings[0].message
        if rename and message.startswith(rename[0]):
            message = rename[1] + message[len(rename[0]) :]
        raise ShapeError(f"{where}.{message}")
