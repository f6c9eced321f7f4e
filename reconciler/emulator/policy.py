"""Access policies (SPEC sections 6, 9, 13 and 14): whether they allow a request.

    {"rule": [{"resource": "IAM:Role", "action": ["IAM:ListAllRoles", "IAM:GetRole"],
               "effect": "Allow", "condition"?: ...}]}

`resource` and `action` are a string or a list of strings; `*` matches any
run of characters, so `*` matches everything and `App:*` every App action.
A request is allowed when some rule allows it and no rule denies it (`Deny`
wins). Conditions are not evaluated: a rule with one applies as if it had
none (the Project API's own actions carry no conditions in practice).

ENDPOINT_ACTIONS (from each kind's declaration in `kinds.py`) says which
action on which resource each endpoint needs; `bodies.policy_problem` checks
a policy's shape.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

from reconciler.emulator.bodies import policy_problem
from reconciler.emulator.kinds import ENDPOINT_ACTIONS

__all__ = ["ENDPOINT_ACTIONS", "allows", "policy_problem"]


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
