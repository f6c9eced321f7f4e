"""Access policies (SPEC sections 6 and 9): their shape, and whether they allow a request.

    {"rule": [{"resource": "IAM:Role", "action": ["IAM:ListAllRoles", "IAM:GetRole"],
               "effect": "Allow", "condition"?: ...}]}

`resource` and `action` are a string or a list of strings; `*` matches any
run of characters, so `*` matches everything and `App:*` every App action.
A request is allowed when some rule allows it and no rule denies it (`Deny`
wins). Conditions are not evaluated: a rule with one applies as if it had
none (the Project API's own actions carry no conditions in practice).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

# Which action on which resource each endpoint needs, as @oystehr/sdk documents it.
ENDPOINT_ACTIONS: dict[tuple[str, str], tuple[str, str]] = {
    ("GET", "/v1/project"): ("Project:GetProjectInfo", "Project:Settings"),
    ("PATCH", "/v1/project"): ("Project:UpdateProjectInfo", "Project:Settings"),
    ("GET", "/v1/iam/role"): ("IAM:ListAllRoles", "IAM:Role"),
    ("POST", "/v1/iam/role"): ("IAM:CreateRole", "IAM:Role"),
    ("GET", "/v1/iam/role/{id}"): ("IAM:GetRole", "IAM:Role"),
    ("PATCH", "/v1/iam/role/{id}"): ("IAM:UpdateRole", "IAM:Role"),
    ("DELETE", "/v1/iam/role/{id}"): ("IAM:DeleteRole", "IAM:Role"),
    ("GET", "/v1/application"): ("App:ListAllApplications", "App:Application"),
    ("POST", "/v1/application"): ("App:CreateApplication", "App:Application"),
    ("GET", "/v1/application/{id}"): ("App:GetApplication", "App:Application"),
    ("PATCH", "/v1/application/{id}"): ("App:UpdateApplication", "App:Application"),
    ("DELETE", "/v1/application/{id}"): ("App:DeleteApplication", "App:Application"),
    ("POST", "/v1/application/{id}/rotate-secret"): (
        "App:RotateApplicationSecret",
        "App:Application",
    ),
    ("GET", "/v1/m2m"): ("App:ListAllM2MClients", "IAM:M2MClient"),
    ("GET", "/v1/m2m/v2/list"): ("App:ListAllM2MClients", "IAM:M2MClient"),
    ("POST", "/v1/m2m"): ("App:CreateM2MClient", "IAM:M2MClient"),
    ("GET", "/v1/m2m/me"): ("App:GetM2MClient", "IAM:M2MClient"),
    ("GET", "/v1/m2m/{id}"): ("App:GetM2MClient", "IAM:M2MClient"),
    ("PATCH", "/v1/m2m/{id}"): ("App:UpdateM2MClient", "IAM:M2MClient"),
    ("DELETE", "/v1/m2m/{id}"): ("App:DeleteM2MClient", "IAM:M2MClient"),
    ("POST", "/v1/m2m/{id}/rotate-secret"): ("App:RotateM2MClientSecret", "IAM:M2MClient"),
}

_RULE_KEYS = {"resource", "action", "effect", "condition"}


def policy_problem(value: Any) -> str | None:
    """What is wrong with an accessPolicy's shape (one phrase), or None if it is well formed."""
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


def allows(policies: Iterable[Mapping[str, Any]], action: str, resource: str) -> bool:
    """Do these (well-formed) policies together allow `action` on `resource`? Deny wins."""
    allowed = False
    for policy in policies:
        for rule in policy.get("rule", ()):
            if _matches(rule["action"], action) and _matches(rule["resource"], resource):
                if rule["effect"] == "Deny":
                    return False
                allowed = True
    return allowed


def _matches(patterns: str | list[str], value: str) -> bool:
    if isinstance(patterns, str):
        patterns = [patterns]
    return any(_pattern(p).fullmatch(value) for p in patterns)


@lru_cache(maxsize=1024)
def _pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")))
