"""Field types of the API's write fields, and the check of a request body against them.

Each kind's fields (`kinds.py`) map a name to one of the types below; the
types say what @oystehr/sdk 4.2's `*CreateParams` / `*UpdateParams` allow.
None of them allows `null`: a field is given or omitted. The seed checks its
objects with the same tables.

    values, problems = check_fields(body, ROLE.fields, required=("name",))
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FieldType:
    """What a field's value must be.

    needs: the phrase of `"{field} must be {needs}"`. problem: for a value with
    inner structure, a function naming what is wrong inside it (the 400 then
    says `"{field}: {problem}"`), or None when it is well formed.
    """

    needs: str
    fits: Callable[[Any], bool] = lambda value: True
    problem: Callable[[Any], str | None] | None = None

    def check(self, key: str, value: Any) -> str | None:
        """The problem with this field's value (one phrase), or None."""
        if not self.fits(value):
            return f"{key} must be {self.needs}"
        inner = self.problem(value) if self.problem else None
        return f"{key}: {inner}" if inner else None


def _is_text(value: Any) -> bool:
    return isinstance(value, str)


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) and item for item in value)


def one_of(*choices: str) -> FieldType:
    """A string from a fixed list."""
    return FieldType(f"one of {', '.join(choices)}", lambda value: value in choices)


def whole(low: int, high: int | None = None) -> FieldType:
    """A whole number from low to high (JSON true/false is not a number)."""
    needs = f"a whole number from {low} to {high}" if high else f"a whole number >= {low}"
    return FieldType(needs, lambda v: _is_whole(v) and v >= low and (high is None or v <= high))


def pattern(regex: str, needs: str) -> FieldType:
    """A string that matches a regular expression whole."""
    compiled = re.compile(regex)
    return FieldType(needs, lambda v: isinstance(v, str) and compiled.fullmatch(v) is not None)


def policy_problem(value: Any) -> str | None:
    """What is wrong with an accessPolicy's shape (one phrase), or None if it is well formed.

    {"rule": [{"resource": str|[str], "action": str|[str], "effect": "Allow"|"Deny",
               "condition"?: object|[object]|str|[str]}]}
    """
    if not isinstance(value, Mapping):
        return "must be an object with a 'rule' list"
    unknown = sorted(str(key) for key in value if key != "rule")
    if unknown:
        return f"unknown field {unknown[0]!r} (an access policy has only 'rule')"
    rules = value.get("rule")
    if not isinstance(rules, list):
        return "rule must be a list"
    for i, rule in enumerate(rules):
        if not isinstance(rule, Mapping):
            return f"rule[{i}] must be an object"
        unknown = sorted(str(key) for key in rule if key not in _RULE_KEYS)
        if unknown:
            return f"rule[{i}]: unknown field {unknown[0]!r}"
        for key in ("resource", "action"):
            if key not in rule:
                return f"rule[{i}].{key} is required"
            item = rule[key]
            strings = item if isinstance(item, list) else [item]
            if not strings or not all(isinstance(s, str) and s for s in strings):
                return f"rule[{i}].{key} must be a non-empty string or a list of them"
        if rule.get("effect") not in ("Allow", "Deny"):
            return f"rule[{i}].effect must be Allow or Deny"
        if "condition" in rule:
            condition = rule["condition"]
            items = condition if isinstance(condition, list) else [condition]
            if not all(isinstance(c, (str, Mapping)) for c in items):
                return f"rule[{i}].condition must be an object, a string or a list of them"
    return None


_RULE_KEYS = {"resource", "action", "effect", "condition"}

# EventBridge Scheduler's three forms: cron(6 fields), rate(N unit), at(timestamp).
_SCHEDULE_EXPRESSION = re.compile(r"(cron\((\S+ ){5}\S+\)|rate\(\d+ \w+\)|at\(\S+\))")
_RETRY_KEYS = ("maximumEventAge", "maximumRetry")


def schedule_problem(value: Any) -> str | None:
    """What is wrong with a Zambda schedule (one phrase), or None.

    {"expression": "cron(*/5 * * * ? *)", "start"?: str, "end"?: str,
     "retryPolicy"?: {"maximumEventAge"?: int >= 0, "maximumRetry"?: int >= 0}}
    """
    if not isinstance(value, Mapping):
        return "must be an object with an 'expression'"
    unknown = sorted(
        str(k) for k in value if k not in ("expression", "start", "end", "retryPolicy")
    )
    if unknown:
        return f"unknown field {unknown[0]!r}"
    expression = value.get("expression")
    if not isinstance(expression, str) or not _SCHEDULE_EXPRESSION.fullmatch(expression):
        return "expression must be cron(m h dom mon dow y), rate(N unit) or at(time)"
    for key in ("start", "end"):
        if key in value and not isinstance(value[key], str):
            return f"{key} must be a string (a date and time)"
    retry = value.get("retryPolicy", {})
    if not isinstance(retry, Mapping):
        return "retryPolicy must be an object"
    unknown = sorted(str(k) for k in retry if k not in _RETRY_KEYS)
    if unknown:
        return f"retryPolicy: unknown field {unknown[0]!r}"
    for key in _RETRY_KEYS:
        if key in retry and not (_is_whole(retry[key]) and retry[key] >= 0):
            return f"retryPolicy.{key} must be a whole number >= 0"
    return None


NAME = FieldType("a non-empty string", lambda v: isinstance(v, str) and bool(v.strip()))
TEXT = FieldType("a string", _is_text)
FLAG = FieldType("true or false", lambda v: isinstance(v, bool))
TEXTS = FieldType("a list of strings", _strings)
IDS = FieldType("a list of role ids (strings)", _strings)  # the store checks they are the Project's
ROLE_ID = FieldType("a role id (a string)", lambda v: isinstance(v, str) and bool(v))
POLICY = FieldType("an access policy", problem=policy_problem)
SCHEDULE = FieldType("a schedule", problem=schedule_problem)
# Secret and Zambda Function names: "letters, numbers, dashes, and underscores" (SDK).
KEY_NAME = pattern(r"[A-Za-z0-9_-]+", "letters, digits, '-' and '_' only")
# S3's rules for a bucket name: 3-63 characters of a-z, 0-9, '.' and '-', starting and
# ending with a letter or digit, no '..', not an IP address, none of S3's reserved
# prefixes (xn--, sthree-) and suffixes (-s3alias, --ol-s3).
BUCKET_NAME = pattern(
    r"(?!xn--|sthree-)(?!\d+\.\d+\.\d+\.\d+$)(?!.*\.\.)(?!.*(-s3alias|--ol-s3)$)"
    r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]",
    "3 to 63 characters of a-z, 0-9, '.' and '-' that start and end with a letter or "
    "digit, as S3 allows",
)


def check_fields(
    body: Any, fields: Mapping[str, FieldType], required: tuple[str, ...] = ()
) -> tuple[dict[str, Any], list[str]]:
    """The accepted values of a body and the problems found (each a short phrase)."""
    if not isinstance(body, Mapping):
        return {}, ["request body must be a JSON object"]
    values: dict[str, Any] = {}
    problems = [f"{key} is required" for key in required if key not in body]
    for key, value in body.items():
        kind = fields.get(key)
        if kind is None:
            read_only = " (read-only)" if key in _READ_ONLY else ""
            problems.append(f"unknown field {key!r}{read_only}")
        elif value is None:
            problems.append(f"{key} must not be null (omit it to leave it unset)")
        elif (problem := kind.check(key, value)) is not None:
            problems.append(problem)
        else:
            values[key] = list(dict.fromkeys(value)) if kind is IDS else value
    return values, problems


# Fields every kind answers and none writes: named "(read-only)" in a 400.
_READ_ONLY = {
    "id",
    "clientId",
    "connectionName",
    "memberCount",
    "secret",
    "status",
    "fileInfo",
    "creationDate",
}
