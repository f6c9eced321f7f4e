"""Secret values: held so that they are never shown, and where a secret's value comes from.

A project file's ``secrets:`` maps a name to where its value comes from::

    ENVIRONMENT: {value: staging}                                  # a literal
    STRIPE_KEY: {valueFrom: {env: "${ENV}_STRIPE_KEY"}}            # RECONCILER_SECRET_…
    AUTH0_CLIENT: {valueFrom: {m2mClient: Zambdas Admin, field: clientId}}
    AUTH0_SECRET: {valueFrom: {m2mClient: Zambdas Admin, field: clientSecret}}

- :class:`SecretValue` holds a value: its ``str`` and ``repr`` are ``<secret>``, it
  refuses to be pickled or serialised to JSON, it has no hash, and two compare with
  :func:`hmac.compare_digest`. Only :meth:`SecretValue.reveal` gives the text, at the
  moment a request body is built.
- :class:`Source` is where a value comes from, as the plan file says it (``literal``,
  ``env RECONCILER_SECRET_X``, ``m2m NAME clientId``): the plan holds that, never a
  value or a hash of one.
- :func:`secret_action` decides what a plan does with one declared secret from what
  it knows (whether it exists, the values it could read, whether the M2M client it
  names is new or rotated on request): ``create``, ``update``, ``compare`` (exists,
  value compared at apply) or nothing.

Pure: no I/O (the environment comes in as a mapping).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.escape import add_secrets

SHOWN = "<secret>"
ENV_PREFIX = "RECONCILER_SECRET_"
LITERAL, ENV, M2M_CLIENT = "literal", "env", "m2m"
CLIENT_ID, CLIENT_SECRET = "clientId", "clientSecret"
CLIENT_FIELDS = (CLIENT_ID, CLIENT_SECRET)
COMPARE = "compare"
# Values this long or longer join the run's redaction set as soon as they are read (the
# rule credentials follow; shorter ones would garble every output they appear in).
REDACTED_FROM_CHARS = 8
# A message holding this many characters of a value in a row quotes it (a server's error
# that echoes what it was sent, whole or cut short).
QUOTED_CHARS = 4
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class SecretValue:
    """A secret's value. Shown as ``<secret>`` everywhere; never pickled, serialised or
    hashed; compared in constant time."""

    __slots__ = ("_text",)

    def __init__(self, text: str) -> None:
        if not isinstance(text, str):
            raise TypeError("a secret value is a string")
        self._text = text

    def reveal(self) -> str:
        """The value itself: only for the request body that writes it."""
        return self._text

    def redact(self) -> SecretValue:
        """Keep this value out of all output from now on (8 characters or more)."""
        if len(self._text) >= REDACTED_FROM_CHARS:
            add_secrets([self._text])
        return self

    def quoted_in(self, text: str) -> bool:
        """Whether `text` quotes this value, whole or in part: any QUOTED_CHARS of it in a
        row (all of it, when shorter). A message that does is never shown."""
        value = self._text
        if len(value) <= QUOTED_CHARS:
            return bool(value) and value in text
        return any(
            value[at : at + QUOTED_CHARS] in text for at in range(len(value) - QUOTED_CHARS + 1)
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretValue):
            return NotImplemented
        import hmac  # here: `validate` (which never compares values) starts without it

        return hmac.compare_digest(_bytes(self._text), _bytes(other._text))

    __hash__ = None  # type: ignore[assignment]  # a hash of a value is a hint at it

    def __repr__(self) -> str:
        return SHOWN

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return SHOWN

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("a secret value is never pickled")

    def __copy__(self) -> SecretValue:
        return self

    def __deepcopy__(self, memo: Any) -> SecretValue:
        return self


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


@dataclass(frozen=True)
class Source:
    """Where a secret's value comes from: a literal in the file, an environment variable
    (always ``RECONCILER_SECRET_…``), or an M2M client's ``clientId``/``clientSecret``."""

    kind: str  # literal | env | m2m
    variable: str | None = None  # env: the variable read, RECONCILER_SECRET_NAME
    client: str | None = None  # m2m: the client's name
    field: str | None = None  # m2m: clientId | clientSecret
    shared: bool = False  # env: other Projects of the run may read the same variable

    @property
    def text(self) -> str:
        """How plans say it: `literal`, `env RECONCILER_SECRET_X`, `m2m NAME clientId`."""
        if self.kind == ENV:
            return f"{ENV} {self.variable}"
        if self.kind == M2M_CLIENT:
            return f"{M2M_CLIENT} {self.client} {self.field}"
        return LITERAL

    @property
    def rotates(self) -> bool:
        """Whether writing it means rotating its M2M client (a secret cannot be read back)."""
        return self.kind == M2M_CLIENT and self.field == CLIENT_SECRET

    @classmethod
    def of(cls, fields: Any) -> Source | None:
        """The source a (valid) declaration gives; None for a shape the schema refuses."""
        if not isinstance(fields, Mapping):
            return None
        if "value" in fields:
            return cls(LITERAL)
        found = fields.get("valueFrom")
        if not isinstance(found, Mapping):
            return None
        if isinstance(found.get("env"), str):
            return cls(ENV, ENV_PREFIX + found["env"], shared=found.get("shared") is True)
        if isinstance(found.get("m2mClient"), str) and found.get("field") in CLIENT_FIELDS:
            return cls(M2M_CLIENT, client=found["m2mClient"], field=found["field"])
        return None

    @classmethod
    def parse(cls, text: Any) -> Source:
        """A plan file's `valueSource`; ValueError says why it is not one."""
        if text == LITERAL:
            return cls(LITERAL)
        if isinstance(text, str) and text.startswith(f"{ENV} {ENV_PREFIX}"):
            variable = text[len(ENV) + 1 :]
            if ENV_NAME.fullmatch(variable[len(ENV_PREFIX) :]):
                return cls(ENV, variable)
        if isinstance(text, str) and text.startswith(f"{M2M_CLIENT} "):
            client, _, field = text[len(M2M_CLIENT) + 1 :].rpartition(" ")
            if client.strip() and field in CLIENT_FIELDS:
                return cls(M2M_CLIENT, client=client, field=field)
        raise ValueError(
            "expected literal, env RECONCILER_SECRET_NAME or m2m CLIENT clientId|clientSecret"
        )


def declared_sources(desired: Mapping[str, Any], key: str = "secrets") -> dict[str, Source]:
    """Each declared secret's source, by name (shapes the schema refuses are left out)."""
    objects = desired.get(key)
    if not isinstance(objects, Mapping):
        return {}
    found = {name: Source.of(fields) for name, fields in objects.items()}
    return {name: source for name, source in found.items() if source is not None}


def literal(desired: Mapping[str, Any], name: str, key: str = "secrets") -> SecretValue | None:
    """A secret's literal value in a (substituted) document, or None."""
    fields = (desired.get(key) or {}).get(name)
    value = fields.get("value") if isinstance(fields, Mapping) else None
    return SecretValue(value) if isinstance(value, str) else None


def from_env(source: Source, env: Mapping[str, str]) -> SecretValue | None:
    """An env source's value when its variable is set and not empty (GitHub gives an
    unset secret as an empty string), joining the redaction set as it is read."""
    text = env.get(source.variable or "")
    return SecretValue(text).redact() if text else None


def credential_named(
    value: SecretValue, names: Iterable[str], env: Mapping[str, str]
) -> str | None:
    """The credential variable whose value `value` equals, or None: a secret must never
    copy a credential into Oystehr."""
    for name in names:
        text = env.get(name)
        if text and value == SecretValue(text):
            return name
    return None


def secret_action(
    source: Source,
    exists: bool,
    desired: SecretValue | None,
    live: SecretValue | None,
    *,
    new_client: bool = False,
    rotate: bool = False,
) -> str | None:
    """What a plan does with one declared secret, or None when nothing is to be done.

    `desired`/`live`: the values the plan has (None: it does not). `new_client`: the
    M2M client it names is created by this plan; `rotate`: its rotation was asked for.
    A client's secret cannot be read back: it is written only when the client is
    rotated, which happens only for a new client or on request.
    """
    if source.rotates:
        if new_client or rotate:
            return "update" if exists else "create"
        return None if exists else "create"
    if not exists:
        return "create"
    if source.field == CLIENT_ID and new_client:
        return "update"  # a new client's id is new
    if desired is not None and live is not None:
        return None if desired == live else "update"
    return COMPARE


def verify_saved_value(saved: Any, ours: Any) -> Any:
    """How `apply --plan` verifies a secret's saved entry (``Kind.verify_saved``) against
    the one planned again from the files and what apply read (`ours`; None: nothing to
    do). Apply reads no value to verify, so a value the plan compared (`compare`) or
    found different (`update`, when its maker's credentials could read it) is planned
    again as `compare`: apply then reads it and writes it only if it differs. Anything
    else must be the same: action, id, where the value comes from, where it is declared.
    Returns the entry to apply; ValueError says what differs."""
    from dataclasses import replace

    rotates = saved.value_source is not None and Source.parse(saved.value_source).rotates
    if ours is None:
        if rotates:
            raise ValueError(
                "its value is a new secret of an M2M client that exists: apply rotates it "
                f"only when given --rotate PROJECT_ID:{saved.name}"
            )
        raise ValueError(f"the plan would {saved.action} it; the files and what is live do not")
    for key, what in (("value_source", "its value comes from"), ("source", "it is declared at")):
        if getattr(saved, key) != getattr(ours, key):
            raise ValueError(
                f"the plan says {what} {getattr(saved, key)}; the files say {getattr(ours, key)}"
            )
    deferred = ("update", COMPARE)
    same = saved.action == ours.action and saved.id == ours.id
    if not same and not (saved.action in deferred and ours.action in deferred and not rotates):
        raise ValueError(
            f"the plan would {saved.action} it; the files and what is live {ours.action} it"
        )
    action = ours.action if same else COMPARE
    return replace(ours, action=action, live_fingerprint=saved.live_fingerprint)


@dataclass(frozen=True)
class ValueInputs:
    """What apply needs beside a plan to write secret values: the files' literal values
    (by Project id, then secret name) and the rotations asked for with --rotate
    ((Project id, secret name) pairs)."""

    literals: Mapping[str, Mapping[str, SecretValue]] = field(default_factory=dict)
    rotate: frozenset[tuple[str, str]] = frozenset()

    def literal(self, project_id: str, name: str) -> SecretValue | None:
        return (self.literals.get(project_id) or {}).get(name)


def parse_rotate(text: str) -> tuple[str, str]:
    """`PROJECT_ID:SECRET_NAME` -> (project id, secret name); ValueError says why not."""
    project_id, colon, name = text.partition(":")
    if not colon or not project_id.strip() or not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ValueError(
            f"--rotate {text!r}: expected PROJECT_ID:SECRET_NAME (the secret whose value is "
            "an M2M client's clientSecret)"
        )
    return project_id.strip(), name
