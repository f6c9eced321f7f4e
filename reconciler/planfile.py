"""Read a saved plan for `apply --plan`, treating the file as untrusted (SPEC section 4).

The checksum proves the file was not edited by accident; it proves nothing about
who wrote it, since anyone can recompute it. So before any request the document
must also be one that `plan` could have written: known keys and types at every
level, known statuses, a `patch` that is exactly what its `changes` derive, each
changed field a writable key the file manages, and `projectId` and `auth` that
obey the project-file rules. Anything else is
``PlanFileError("…: not a valid plan file: REASON")``.

One function per level (`_check_document`, `_check_project`, `_check_change`),
each given `where` (a path like ``projects[2].changes[0]``) for its REASON, over
small shape helpers (`client.expect`, `client.expect_object`,
`client.expect_list_of_objects`, `_expect_sha256`, `_expect_file_rules`) that a later
format (version 2, with per-Project objects) can reuse level by level.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from reconciler import schema
from reconciler.client import describe_json, expect, expect_list_of_objects, expect_object
from reconciler.errors import PlanFileError, RefusedError, ShapeError
from reconciler.plan import (
    CHANGED,
    ERROR,
    FORMAT_VERSION,
    IMMUTABLE_KEYS,
    MANAGED_KEYS,
    ROLE_FIELDS,
    UNCHANGED,
    Plan,
    checksum,
)

TOP_LEVEL_KEYS = ("formatVersion", "tool", "createdAt", "apiUrl", "summary", "projects", "checksum")
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
)
CHANGE_KEYS = ("field", "before", "after")
STATUSES = (CHANGED, UNCHANGED, ERROR)
ANY_ID = "00000000-0000-4000-8000-000000000000"  # stands for the id where a check needs one
WRITABLE_KEYS = tuple(key for key in MANAGED_KEYS if key not in IMMUTABLE_KEYS)

_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")


def read_plan_file(path: str) -> Plan:
    """Load a saved plan, refusing anything that is not an intact, consistent plan."""
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except OSError as exc:
        raise PlanFileError(f"cannot read plan file {path}: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise PlanFileError(f"{path}: not a valid plan file: not JSON ({exc})") from None
    except RecursionError:
        raise PlanFileError(f"{path}: not a valid plan file: nested too deeply") from None
    return plan_from_document(doc, path)


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
    if status != CHANGED and (changes or patch):
        raise ShapeError(f"{where}: a Project that is {status} has no changes and no patch")
    if status == CHANGED and not changes:
        raise ShapeError(f"{where}: a changed Project has at least one change")
    derived: dict[str, Any] = {}
    for index, change in enumerate(changes):
        field = _check_change(change, f"{where}.changes[{index}]", managed)
        if ROLE_FIELDS.get(field, field) in derived:
            raise ShapeError(f"{where}.changes[{index}].field: {field} changes twice")
        derived[ROLE_FIELDS.get(field, field)] = _patch_value(field, change["after"])
    _expect_derived(patch, derived, f"{where}.patch")


def _check_change(change: Mapping[str, Any], where: str, managed: list[str]) -> str:
    """One change: a writable, managed field, with before and after of that field's shape."""
    expect_object(change, where, required=CHANGE_KEYS, only=CHANGE_KEYS)
    field = change["field"]
    if field not in WRITABLE_KEYS:
        raise ShapeError(f"{where}.field: {describe_json(field)} is not a writable key")
    if field not in managed:
        raise ShapeError(f"{where}.field: {field} is not in managedKeys")
    _check_value(field, change["after"], f"{where}.after")
    if change["before"] is not None:  # a live value the Project did not have is null
        _check_value(field, change["before"], f"{where}.before")
    if change["before"] == change["after"]:
        raise ShapeError(f"{where}: before and after are the same")
    return field


def _check_value(field: str, value: Any, where: str) -> None:
    """A value of `field` as a plan holds it: roles as {id, name} or null; the other
    fields as the project file's schema has them."""
    if field in ROLE_FIELDS:
        if value is None:
            return
        expect_object(value, where, required=("id", "name"), only=("id", "name"))
        expect(value["name"], (str, type(None)), f"{where}.name")
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
