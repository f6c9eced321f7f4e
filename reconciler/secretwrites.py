"""The secret values of a Project's apply (SPEC section 13), for its ProjectWriter.

Before any write of a Project, every value it writes is in hand (a literal from its
file, a `RECONCILER_SECRET_…` variable, an M2M client's id), or it fails with nothing
written. A `compare` reads the live value and writes only when it differs. A client
secret is made by rotating the client (one this plan creates, or one --rotate names;
never the run's own), once per client, and stored in every secret naming it; an
interrupt waits for such a store to finish.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from reconciler.client import ProjectApi
from reconciler.credentials import ClientCredentials
from reconciler.errors import (
    ApiError,
    ReconcilerError,
    RefusedError,
    ShapeError,
    UncertainWriteError,
)
from reconciler.kinds import BY_NAME, M2M
from reconciler.plan import COMPARE, ObjectChange, ProjectPlan
from reconciler.secretvalues import (
    CLIENT_ID,
    ENV,
    LITERAL,
    SecretValue,
    Source,
    ValueInputs,
    credential_named,
    from_env,
)

if TYPE_CHECKING:
    from reconciler.fleet import PlanReads

# A rotated client's new secret exists only in memory until stored: its store is tried
# at least this many more times, and an interrupt waits this long for it to finish.
STORE_RETRIES = 3
STORE_GRACE_SECONDS = 120.0


class RotationError(ReconcilerError):
    """An M2M client's rotation may have happened, or its new secret was not stored."""


class SecretWriter:
    """One Project's secret values: taken before any write, the M2M clients they come
    from read, each secret written (or compared), each rotation stored.

    `inputs` are the files' literal values and the rotations asked for; no value may be
    that of one of `credential_variables` (the run's credentials). `made(kind, name)` is
    the (id, clientId) the Project's writer's create of that object answered with, or
    (None, None) before it. `planned`: what this run's plan read of those clients (then
    they are not read again).
    """

    def __init__(
        self,
        project: ProjectPlan,
        api: ProjectApi,
        env: Mapping[str, str],
        inputs: ValueInputs,
        credential_variables: tuple[str, ...],
        made: Callable[[str, str], tuple[str | None, str | None]],
        *,
        planned: PlanReads | None = None,
    ) -> None:
        self.project = project
        self.api = api
        self.env = env
        self.inputs = inputs
        self.credential_variables = credential_variables
        self.made = made
        self.planned = planned
        self.changes = project.objects
        # The values in hand, the M2M clients they come from (name -> live id), each
        # rotated client's new secret, and what each compare found.
        self.values: dict[str, SecretValue] = {}
        self.clients: dict[str, str] = {}
        self.rotated: dict[str, SecretValue] = {}
        self.compared: dict[str, bool] = {}  # secret name -> whether a value was written
        self._lock = threading.Lock()
        self._rotation_locks: dict[str, threading.Lock] = {}
        self._rotation_failed: set[str] = set()
        self._storing = threading.Condition()
        self._stores_in_flight = 0

    def take_values(self) -> dict[str, bool]:
        """Every value this Project's secrets need that is in hand before any request
        (literals, RECONCILER_SECRET_ variables); a missing one, or one equal to a
        credential, refuses the Project with nothing written. Returns the live M2M
        clients to read first: name -> whether its rotation must not be the run's own."""
        pid = self.project.project_id
        new = {c.name for c in self.changes if c.kind == M2M.name and c.action == "create"}
        asked = {name for project_id, name in self.inputs.rotate if project_id == pid}
        missing: list[str] = []
        problems: list[str] = []
        clients: dict[str, bool] = {}
        for change in self.changes:
            if change.value_source is None or change.action == "delete":
                continue
            source = Source.parse(change.value_source)
            if source.kind == LITERAL:
                value = self.inputs.literal(pid, change.name)
                if value is None:
                    problems.append(
                        f"secret {change.name!r}: its file gives no literal value for it now; "
                        "make a new plan"
                    )
            elif source.kind == ENV:
                value = from_env(source, self.env)
                if value is None:
                    missing.append(f"{source.variable} (secret {change.name})")
            else:
                value = None
                if source.client not in new:
                    rotation = source.rotates
                    clients[source.client or ""] = clients.get(source.client or "") or rotation
                    if rotation and not self._rotation_asked(source.client, asked):
                        problems.append(
                            f"secret {change.name!r}: its value is a new secret of M2M client "
                            f"{source.client!r}, which exists; apply rotates it only when "
                            f"given --rotate {pid}:{change.name}"
                        )
            if value is not None:
                self._keep_value(change.name, value, source)
        if missing:
            problems.insert(
                0, f"apply needs every value it writes, and {', '.join(missing)} is not set"
            )
        if problems:
            raise RefusedError("; ".join(problems) + ". Nothing was written to this Project.")
        return clients

    def _rotation_asked(self, client: str | None, asked: set[str]) -> bool:
        """Whether --rotate names a secret of this plan whose value is that client's secret."""
        return any(
            c.name in asked and Source.parse(c.value_source).client == client
            for c in self.changes
            if c.value_source is not None and Source.parse(c.value_source).rotates
        )

    def _keep_value(self, name: str, value: SecretValue, source: Source) -> None:
        credential = credential_named(value, self.credential_variables, self.env)
        if credential is not None:
            raise RefusedError(
                f"secret {name!r}: its value ({source.text}) is the value of {credential}, a "
                "credential; it is never copied into Oystehr. Nothing was written to this "
                "Project."
            )
        self.values[name] = value

    def read_clients(self, credentials: Any, clients: dict[str, bool]) -> None:
        """The live M2M clients secrets' values come from: their ids (the list), the
        clientId of each whose id is a value, and, under M2M credentials, that none to
        rotate is the client this apply runs as (`GET /m2m/{id}`). What this run's plan
        read of them is not read again."""
        pid = self.project.project_id
        planned = self.planned
        if planned is not None:
            listed, details = planned.clients, planned.details
        else:
            listed, details = self.api.list_objects(M2M, pid, credentials), {}
        # A client this plan renames is live under its old name until its write.
        renamed = {
            c.name: c.renamed_from for c in self.changes if c.kind == M2M.name and c.renamed_from
        }
        for name, rotated in sorted(clients.items()):
            live_name = renamed.get(name, name)
            found = [str(item["id"]) for item in listed if item.get("name") == live_name]
            if len(found) != 1:
                how = "is not live" if not found else f"is the name of {len(found)} live clients"
                raise RefusedError(
                    f"M2M client {name!r} {how}: a secret's value comes from it. Nothing was "
                    "written to this Project."
                )
            self.clients[name] = found[0]
            ids = [c for c in self.changes if _client_field(c, name) == CLIENT_ID]
            self_check = rotated and isinstance(credentials, ClientCredentials)
            if not ids and not self_check:
                continue
            detail = details.get(found[0]) or self.api.get_object(M2M, pid, credentials, found[0])
            client_id = detail.get("clientId")
            if self_check and client_id == credentials.client_id:
                raise RefusedError(
                    f"M2M client {name!r} is the client this apply runs as; it is never "
                    "rotated. Nothing was written to this Project."
                )
            for change in ids:
                if not isinstance(client_id, str):
                    raise ShapeError(f"GET /m2m/{{id}} of M2M client {name!r} has no clientId")
                source = Source.parse(change.value_source)
                self._keep_value(change.name, SecretValue(client_id).redact(), source)

    def write(self, credentials: Any, change: ObjectChange) -> None:
        """One secret: `POST /secret` with its value (a compare reads it first and
        writes only if it differs; a client secret rotates the client first)."""
        kind = BY_NAME[change.kind]
        source = Source.parse(change.value_source)
        if source.rotates:
            self._rotate_and_store(credentials, change, source)
            return
        value = self._value(change, source)
        pid = self.project.project_id
        if change.action == COMPARE:
            try:
                live = self.api.read_value(kind, pid, credentials, change.name)
            except ApiError as exc:
                if exc.status != 404:
                    raise
                live = None  # gone since the plan: written again
            if live == value:
                self.compared[change.name] = False
                return
        self.api.write_value(kind, pid, credentials, change.name, value)
        if change.action == COMPARE:
            self.compared[change.name] = True

    def _value(self, change: ObjectChange, source: Source) -> SecretValue:
        if change.name in self.values:
            return self.values[change.name]
        # A new M2M client's id, from its create's answer.
        _, client_id = self.made(M2M.name, source.client or "")
        if not isinstance(client_id, str):
            raise RefusedError(f"M2M client {source.client!r} was to be created first, but was not")
        value = SecretValue(client_id).redact()
        self._keep_value(change.name, value, source)
        return value

    def _client_id(self, client: str) -> str:
        """The live id of an M2M client: created by this apply, or read before any write."""
        made, _ = self.made(M2M.name, client)
        found = made or self.clients.get(client)
        if not isinstance(found, str):
            raise RefusedError(f"M2M client {client!r} was to be created first, but was not")
        return found

    def _rotate_and_store(self, credentials: Any, change: ObjectChange, source: Source) -> None:
        """Rotate the client (once per client per run) and store its new secret here.
        From the rotation on, an interrupt waits for the store: the new secret is
        nowhere else."""
        client = source.client or ""
        pid = self.project.project_id
        recover = f"reconciler apply --rotate {pid}:{change.name}"
        with self._storing:
            self._stores_in_flight += 1
        try:
            with self._lock:
                lock = self._rotation_locks.setdefault(client, threading.Lock())
            with lock:
                if client in self._rotation_failed:
                    raise RefusedError(f"not stored: the rotation of M2M client {client!r} failed")
                value = self.rotated.get(client)
                if value is None:
                    client_id = self._client_id(client)
                    try:
                        value = self.api.rotate_secret(M2M, pid, credentials, client_id)
                    except UncertainWriteError as exc:
                        self._rotation_failed.add(client)
                        raise RotationError(
                            f"the rotation of M2M client {client!r} may have happened ({exc}): "
                            "if it did, its old secret no longer works. Rotate it again and "
                            f"store the new secret: {recover}"
                        ) from None
                    except ReconcilerError:
                        self._rotation_failed.add(client)
                        raise
                    self.rotated[client] = value
            kind = BY_NAME[change.kind]
            retries = max(self.api.retries, STORE_RETRIES)
            try:
                self.api.write_value(kind, pid, credentials, change.name, value, retries=retries)
            except ReconcilerError as exc:
                raise RotationError(
                    f"M2M client {client!r} was rotated, but its new secret could not be stored "
                    f"in secret {change.name!r} ({exc}): the client's old secret no longer "
                    f"works and the new one is lost. Rotate it again and store it: {recover}"
                ) from None
        finally:
            with self._storing:
                self._stores_in_flight -= 1
                self._storing.notify_all()

    def wait_for_stores(self, timeout: float = STORE_GRACE_SECONDS) -> None:
        """Block until no rotated client's secret is waiting to be stored."""
        with self._storing:
            if self._stores_in_flight:
                print(
                    "Waiting for a rotated M2M client's new secret to be stored: it exists "
                    "nowhere else.",
                    file=sys.stderr,
                )
            self._storing.wait_for(lambda: self._stores_in_flight == 0, timeout)


def _client_field(change: ObjectChange, client: str) -> str | None:
    """The field of `client` a secret's value is (clientId, clientSecret), or None."""
    if change.value_source is None or change.action == "delete":
        return None
    source = Source.parse(change.value_source)
    return source.field if source.client == client else None
