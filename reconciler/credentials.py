"""A Project's credentials: which environment variables hold them, checked before use.

A run resolves them from the variables a file's `auth` block names (or the global
OYSTEHR_* ones); the values never appear in a repr, a message or a log.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from reconciler.errors import ConfigError, CredentialsError


@dataclass(frozen=True)
class AccessToken:
    """A bearer token given directly (a Developer token, or one minted elsewhere)."""

    token: str = field(repr=False)
    source: str = "OYSTEHR_ACCESS_TOKEN"


@dataclass(frozen=True)
class ClientCredentials:
    """An M2M client: exchanged for a token once per (auth URL, client id) per run."""

    client_id: str = field(repr=False)
    client_secret: str = field(repr=False)
    source: str = "OYSTEHR_CLIENT_ID"  # the variable holding the id: messages name it


Credentials = AccessToken | ClientCredentials

GLOBAL_CREDENTIALS = ("OYSTEHR_ACCESS_TOKEN", "OYSTEHR_CLIENT_ID", "OYSTEHR_CLIENT_SECRET")
_UNSAFE_IN_CREDENTIAL = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")


def check_credentials(names: Iterable[str], env: Mapping[str, str]) -> None:
    """Refuse, naming the variable (never its value), a credential holding whitespace or
    a control character: a pasted newline would otherwise travel into a header."""
    bad = [name for name in names if _UNSAFE_IN_CREDENTIAL.search(env.get(name) or "")]
    if bad:
        raise ConfigError(
            f"{', '.join(bad)} {'holds' if len(bad) == 1 else 'hold'} whitespace or a control "
            "character (a pasted newline?); set the value alone"
        )


def resolve_credentials(auth: Mapping[str, str] | None, env: Mapping[str, str]) -> Credentials:
    """The credentials a Project's file points at; a name the file gives must be set.

    Without an `auth` block: OYSTEHR_ACCESS_TOKEN, else OYSTEHR_CLIENT_ID + OYSTEHR_CLIENT_SECRET.
    """
    if auth:
        missing = [name for name in auth.values() if not env.get(name)]
        if missing:
            names = ", ".join(missing)
            raise CredentialsError(
                f"auth names environment variable(s) that are not set: {names} (export the "
                "Project's credentials under those names; in CI the workflows map them from "
                "the secrets `reconciler init` lists)"
            )
        check_credentials(auth.values(), env)
        if "accessTokenEnv" in auth:
            return AccessToken(env[auth["accessTokenEnv"]], source=auth["accessTokenEnv"])
        return ClientCredentials(
            env[auth["clientIdEnv"]], env[auth["clientSecretEnv"]], source=auth["clientIdEnv"]
        )
    check_credentials(GLOBAL_CREDENTIALS, env)
    if env.get("OYSTEHR_ACCESS_TOKEN"):
        return AccessToken(env["OYSTEHR_ACCESS_TOKEN"])
    client_id, secret = env.get("OYSTEHR_CLIENT_ID"), env.get("OYSTEHR_CLIENT_SECRET")
    if client_id and secret:
        return ClientCredentials(client_id, secret)
    if client_id or secret:
        have, lack = (
            ("OYSTEHR_CLIENT_ID", "OYSTEHR_CLIENT_SECRET")
            if client_id
            else ("OYSTEHR_CLIENT_SECRET", "OYSTEHR_CLIENT_ID")
        )
        raise CredentialsError(f"{have} is set but {lack} is not: an M2M client needs both")
    raise CredentialsError(
        "no credentials: set OYSTEHR_ACCESS_TOKEN, or OYSTEHR_CLIENT_ID and "
        "OYSTEHR_CLIENT_SECRET, or name variables in the file's auth block"
    )


def auth_key(auth: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    """An auth block as a key: the Projects naming the same variables (or none) share
    their credentials, which a run resolves and checks once, not once per Project."""
    return tuple(sorted((auth or {}).items()))
