"""One exception tree for everything reconciler reports to a user.

    ReconcilerError                 anything cli.py turns into "Error: ..." and exit 1
     +-- ConfigError                bad input we can see offline: paths, flags, plan files
     |    +-- PlanFileError         a file given to `apply --plan` that is not a usable plan
     +-- CredentialsError           a Project's credentials are missing from the environment
     +-- ApiError                   the Project API answered with an error (status, code, message)
     |    +-- AuthError             401/403, or the token endpoint refused the client
     +-- TransportError             the API could not be reached, or answered non-JSON
     |    +-- UncertainWriteError   a create that may or may not have run (never retried blindly)
     +-- ShapeError                 a JSON document (an API answer, a plan file) of the wrong shape
     +-- ResolveError               a role name or id in a file that the live Project cannot satisfy
     +-- ImmutableFieldError        a file asks to change fhirVersion
     +-- RefusedError               apply refused before writing anything

Messages never hold a secret: the client redacts tokens and client secrets before
an exception is built.
"""

from __future__ import annotations


class ReconcilerError(Exception):
    """Base of every error reconciler reports as one line."""


class ConfigError(ReconcilerError):
    """Bad input that can be seen without the network."""


class PlanFileError(ConfigError):
    """A saved plan that cannot be read or trusted."""


class CredentialsError(ReconcilerError):
    """The environment lacks the credentials a Project needs."""


class ApiError(ReconcilerError):
    """The API answered with an error status."""

    def __init__(self, message: str, *, status: int | None = None, code: int | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


class AuthError(ApiError):
    """Authentication or authorisation failed."""


class TransportError(ReconcilerError):
    """The API could not be reached or did not answer in JSON."""


class UncertainWriteError(TransportError):
    """A non-idempotent write (a create) failed in a way that says nothing of whether it ran."""


class ShapeError(ReconcilerError):
    """A JSON document from outside (an API answer, a plan file) is not of the expected shape."""


class ResolveError(ReconcilerError):
    """A role in a file does not match the live Project's roles."""


class ImmutableFieldError(ReconcilerError):
    """The file asks to change a field the API never lets change."""


class RefusedError(ReconcilerError):
    """apply refused before any write."""
