"""The write fields of roles, applications and M2M clients, and the check of a request body.

The field lists and types are @oystehr/sdk 4.2's `*CreateParams` /
`*UpdateParams`. None of them allows `null`: a field is given or omitted.
The seed checks its objects with the same tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reconciler.emulator.policy import policy_problem

NAME = "name"  # a non-empty string
TEXT = "text"  # any string
FLAG = "flag"  # true or false
TEXTS = "texts"  # a list of strings
POLICY = "policy"  # an access policy
IDS = "ids"  # a list of role ids (strings); the store checks they are the Project's

ROLE_FIELDS = {"name": NAME, "description": TEXT, "accessPolicy": POLICY}

APPLICATION_FIELDS = {
    "name": NAME,
    "description": TEXT,
    "loginRedirectUri": TEXT,
    "logoUri": TEXT,
    "allowedCallbackUrls": TEXTS,
    "allowedLogoutUrls": TEXTS,
    "allowedWebOriginsUrls": TEXTS,
    "allowedCORSOriginsUrls": TEXTS,
    "loginWithEmailEnabled": FLAG,
    "passwordlessSMS": FLAG,
    "mfaEnabled": FLAG,
    "shouldSendInviteEmail": FLAG,
    "refreshTokenEnabled": FLAG,
}

# `profile` is in the SDK's create and update params, so the API takes it.
M2M_FIELDS = {
    "name": NAME,
    "description": TEXT,
    "accessPolicy": POLICY,
    "roles": IDS,
    "jwksUrl": TEXT,
    "profile": TEXT,
}

_READ_ONLY = {"id", "clientId", "connectionName", "memberCount", "secret"}

_NEEDS = {
    NAME: "a non-empty string",
    TEXT: "a string",
    FLAG: "true or false",
    TEXTS: "a list of strings",
    IDS: "a list of role ids (strings)",
}


def check_fields(
    body: Any, fields: Mapping[str, str], required: tuple[str, ...] = ()
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
        elif kind == POLICY:
            problem = policy_problem(value)
            if problem:
                problems.append(f"accessPolicy: {problem}")
            else:
                values[key] = value
        elif _fits(kind, value):
            values[key] = list(dict.fromkeys(value)) if kind == IDS else value
        else:
            problems.append(f"{key} must be {_NEEDS[kind]}")
    return values, problems


def _fits(kind: str, value: Any) -> bool:
    if kind == NAME:
        return isinstance(value, str) and bool(value.strip())
    if kind == TEXT:
        return isinstance(value, str)
    if kind == FLAG:
        return isinstance(value, bool)
    return isinstance(value, list) and all(isinstance(item, str) and item for item in value)
