"""What is particular to Zambda functions (SPEC section 14), as the hooks their `Kind`
declares: the SDK's rules between fields, the form of `source`, the code identity as
the plan holds it and shows it, and the live function's code and status.

A function's code is the pseudo-field ``code``: its value is the *code hash* (64 hex
digits: the SHA-256 over the zip's entries, sorted by name, of `name NUL sha256(bytes)`;
``zips.py`` computes it), compared with the live ``fileInfo.name``, which apply sets
to ``<code hash>.zip``. It is never part of a write's body: the ``code`` phase of
apply uploads it after the function's configuration is written.

Pure, but for :func:`read_code`, which plan calls to hash a function's zip.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from typing import Any

from reconciler.escape import has_controls

CODE = "code"
ZIP = "zip"  # the plan file's key for the zip's repository-relative path
RUNTIMES = ("nodejs20.x", "nodejs22.x", "python3.13", "python3.12", "java21", "dotnet8", "ruby3.3")
TRIGGERS = ("http_auth", "http_open", "subscription", "cron")
HTTP_TRIGGERS = ("http_auth", "http_open")
HTTP_TIMEOUT_MAX = 27
# What an absent live value compares as: the API's defaults.
DEFAULTS = {"memorySize": 1024, "timeoutInSeconds": 27}
# After apply: a function in this state is reported failed (others as they are).
FAILED_STATUSES = ("Failed",)

_CODE_HASH = re.compile(r"[0-9a-f]{64}")
_ZIP_NAME = re.compile(r"([0-9a-f]{64})\.zip")


def is_code_hash(value: Any) -> bool:
    return isinstance(value, str) and bool(_CODE_HASH.fullmatch(value))


def file_name(code_hash: str) -> str:
    """The name apply uploads a function's code under (and plan compares with)."""
    return f"{code_hash}.zip"


def live_code(live: Mapping[str, Any]) -> str | None:
    """A live function's code as the plan compares it: the code hash its `fileInfo.name`
    carries; the file name itself when it is not one of ours (code uploaded by another
    tool: it differs from any code hash, so the plan uploads); None when it has none."""
    info = live.get("fileInfo")
    name = info.get("name") if isinstance(info, Mapping) else None
    if not isinstance(name, str) or not name:
        return None
    ours = _ZIP_NAME.fullmatch(name)
    return ours[1] if ours else name


def show_code(value: Any) -> str:
    """A code value as a person reads it: `3f2a9c01…`, `new` (no code yet), or a file
    name another tool uploaded."""
    if value is None:
        return "new"
    if is_code_hash(value):
        return value[:8] + "…"
    return str(value)


def config_changes(action: str, fields: frozenset[str]) -> bool:
    """The first phase: creates, renames and updates of anything but the code."""
    return action != "delete" and (action != "update" or bool(fields - {CODE}))


def code_changes(action: str, fields: frozenset[str]) -> bool:
    """The second phase: the code upload, after every function's configuration."""
    return action != "delete" and CODE in fields


def plan_extras(changes: list[Mapping[str, Any]], local: Mapping[str, Any]) -> dict[str, Any]:
    """What a function's plan entry holds beside the engine's keys: `zip`, the zip's
    repository-relative path, when its code changes (else null)."""
    changing = any(change["field"] == CODE for change in changes)
    return {ZIP: local.get(ZIP) if changing else None}


# --- validation (what the schema cannot say) -----------------------------------------


def check_function(name: str, fields: Mapping[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    """The SDK's rules between a function's fields, and the form of its `source`:
    (path below the function, message) pairs."""
    problems: list[tuple[tuple[Any, ...], str]] = []
    where = f"zambdas.{name}"
    trigger = fields.get("triggerMethod")
    if trigger == "cron" and "schedule" not in fields:
        problems.append(
            (
                ("triggerMethod",),
                f"{where}: a cron function needs a schedule "
                '(schedule: {expression: "cron(*/5 * * * ? *)"})',
            )
        )
    timeout = fields.get("timeoutInSeconds")
    if trigger in HTTP_TRIGGERS and _whole(timeout) and timeout > HTTP_TIMEOUT_MAX:
        problems.append(
            (
                ("timeoutInSeconds",),
                f"{where}.timeoutInSeconds: at most {HTTP_TIMEOUT_MAX} for an {trigger} "
                f"function (not {timeout}): an HTTP call cannot wait longer",
            )
        )
    source = fields.get("source")
    if isinstance(source, str):
        why = path_problem(source, zip_file=True)
        if why:
            problems.append((("source",), f"{where}.source: {why}"))
    inputs = fields.get("sourceInputs")
    if isinstance(inputs, list):
        if "source" not in fields:
            problems.append(
                (("sourceInputs",), f"{where}.sourceInputs: given without source (the zip)")
            )
        for index, glob in enumerate(inputs):
            why = path_problem(glob) if isinstance(glob, str) else None
            if why:
                problems.append((("sourceInputs", index), f"{where}.sourceInputs: {why}"))
    return problems


def path_problem(path: str, *, zip_file: bool = False) -> str | None:
    """Why a path (or glob) written in a file cannot name a file in the repository, or
    None: it must be relative to the repository root, stay inside it, avoid `.git/`,
    and (a zip) end in `.zip`."""
    if not path.strip():
        return "must not be empty"
    if "\\" in path or "\x00" in path:
        return f"{path!r}: write paths with / between folders"
    if has_controls(path):
        # init writes these paths into the workflows: a newline would start a new step.
        return f"{path!r} holds a control, line-break or bidi character"
    if path.startswith("/") or re.match(r"[A-Za-z]:", path):
        return f"{path!r} is absolute: write it relative to the repository root"
    parts = path.split("/")
    if ".." in parts:
        return f"{path!r} leaves the repository (..): write it relative to the repository root"
    normal = posixpath.normpath(path)
    if normal == ".git" or normal.startswith(".git/"):
        return f"{path!r} is under .git/, which is git's, not the repository's files"
    if zip_file and (not path.endswith(".zip") or posixpath.basename(normal) == ".zip"):
        return f"{path!r} must name a zip file (a name ending in .zip)"
    return None


def zip_path(source: str) -> str:
    """The repository-relative path a valid `source` names, as a plan file holds it."""
    return posixpath.normpath(source)


def read_code(root: str, fields: Mapping[str, Any], copies: Any = None) -> dict[str, Any] | None:
    """What plan reads beside the file for a function (the only I/O here, run by plan's
    reader, never by validate): its `code` hash and `zip` path, or the `error` that
    makes the Project's plan fail; None for a function without `source`. In an apply,
    `copies` keeps the bytes it hashed: they are what is uploaded."""
    source = fields.get("source")
    if not isinstance(source, str):
        return None
    from reconciler import zips  # plan only: validate never opens a zip

    path = zip_path(source)
    try:
        code = copies.take(root, path) if copies is not None else zips.read_code(root, path).hash
    except zips.ZipError as exc:
        return {"error": f"source: {exc}", "at": ("source",)}
    return {CODE: code, ZIP: path}


def plan_entry_problem(entry: Mapping[str, Any]) -> str | None:
    """Why a function's entry in a plan file is not one plan could have written (its
    `zip` and its `code` change), or None. The engine has checked the rest."""
    code = [c for c in entry.get("changes") or () if c.get("field") == CODE]
    zip_value = entry.get(ZIP)
    if not code:
        return None if zip_value is None else "zip is given, though the code does not change"
    change = code[0]
    if not is_code_hash(change.get("after")):
        return "the code change's after is not a code hash (64 hex digits)"
    before = change.get("before")
    if before is not None and (not isinstance(before, str) or not before):
        return "the code change's before is not a code hash, a file name or null"
    if entry.get("action") == "create" and before is not None:
        return "a create's code has no before"
    if not isinstance(zip_value, str):
        return "zip: the code changes, so zip names the zip file"
    why = path_problem(zip_value, zip_file=True)
    if why or zip_path(zip_value) != zip_value:
        return f"zip: {why or 'not a normal path'}"
    return None


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
