"""Apply a Plan through the client: refusals first, then the smallest writes.

`refusals()` holds every reason not to write a plan at all, and runs before any
write; a saved plan is verified before it is shown (``verify.py``: forged or stale,
nothing is written). `apply_plan()` then writes every changed
Project at once, each one level at a time (``levels.py``): creates, updates and
renames of roles, then applications, then M2M clients, then secrets, then
buckets; the settings PATCH; deletes in reverse. The writes of a level run
concurrently, within the run's request budget. Each answer is compared with what
was asked for. A Project's first failure stops it: no new write of it starts, the
writes in flight finish and are reported, the rest are skipped; other Projects go
on. Outcomes are reported in plan order whatever order the answers come in.

A Project's secret values are its `SecretWriter`'s (``secretwrites.py``): all in
hand before any write, compared, rotated and stored. A function's code is uploaded
from the private copies checked before any write (``uploads.py``). A delete of a kind
with a `delete_guard` (a bucket) is `blocked` unless apply is given that option; the
Project's other writes still happen.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any

from reconciler.client import ProjectApi
from reconciler.credentials import ClientCredentials, resolve_credentials
from reconciler.differ import unconverged
from reconciler.errors import ReconcilerError, RefusedError, UncertainWriteError
from reconciler.escape import credential_variables, plural
from reconciler.includes import RepositoryRoots
from reconciler.kinds import BY_NAME, M2M, ROLE, Kind
from reconciler.levels import LEVELS, SETTINGS, Level
from reconciler.objects import is_ref
from reconciler.plan import COMPARE, UNCHANGED, ObjectChange, Plan, ProjectPlan
from reconciler.render import (
    APPLIED,
    BLOCKED,
    FAILED,
    SKIPPED,
    UNKNOWN,
    ObjectOutcome,
    Outcome,
)
from reconciler.schedule import Countdown, Pool, Stopper, Tasks, TasksState
from reconciler.secretvalues import ValueInputs
from reconciler.secretwrites import SecretWriter
from reconciler.uploads import upload_code
from reconciler.urls import same_url
from reconciler.zambdas import CODE, show_code
from reconciler.zips import PrivateCopies

if TYPE_CHECKING:
    from reconciler.fleet import PlanReads

IN_FLIGHT_MESSAGE = (
    "the {what} was in flight when the apply was interrupted; plan again to see whether it "
    "was applied"
)


def refusals(
    plan: Plan,
    *,
    api_url: str | None = None,
    max_changes: int | None = None,
    saved: bool = False,
) -> None:
    """Every reason to write nothing at all, checked before any request that writes.

    A saved plan with errors is refused whole: it is not what a reviewer could approve.
    A fresh plan's errors only fail their own Projects.
    """
    if saved and plan.errors:
        named = "; ".join(f"{p.file} ({p.project_id}): {p.error}" for p in plan.errors)
        raise RefusedError(f"the plan has errors, nothing was applied: {named}")
    if api_url is not None and not same_url(plan.api_url, api_url):
        raise RefusedError(
            f"the plan was made for {plan.api_url}, not {api_url}; nothing was applied"
        )
    # A value compared at apply may be written: counted as a write.
    writes = sum(
        sum(len(_levels_of(change)) for change in p.objects) + (1 if p.patch else 0)
        for p in plan.to_apply
    )
    if max_changes is not None and writes > max_changes:
        raise RefusedError(
            f"the plan makes {plural(writes, 'write')} (settings PATCHes and object writes) "
            f"in {plural(len(plan.to_apply), 'Project')}, more than --max-changes "
            f"{max_changes}; nothing was applied"
        )


def apply_plan(
    plan: Plan,
    api: ProjectApi,
    env: Mapping[str, str],
    *,
    pool: Pool | None = None,
    stopper: Stopper | None = None,
    progress: Callable[[int, int], None] | None = None,
    code: PrivateCopies | None = None,
    roots: RepositoryRoots | None = None,
    values: ValueInputs | None = None,
    allow: frozenset[str] = frozenset(),
    reads: Mapping[str, PlanReads] | None = None,
) -> list[Outcome]:
    """Write every changed Project (and compare the secret values of those that have
    some); one outcome per Project in the plan, in plan order.

    A saved plan is verified first (``verify.py``): what it applies is what the files
    and the live values give, and it refuses, before any write, if any of it changed
    since the plan. `code` holds the checked copies of the zips the plan uploads
    (``uploads.code_copies``, with the same `roots`).
    `values` gives the files' literal secret values and the rotations
    asked for; `allow` the options given that allow guarded deletes
    (`--allow-bucket-deletes`). `reads`: what this run's plan read that the checks
    before any write need (``fleet.PlanReads``, by file), so it is not read again.
    """
    pool = pool or Pool(api.budget.concurrency)
    to_write = plan.to_apply
    context = WriteContext(
        values or ValueInputs(),
        allow,
        tuple(credential_variables(p.auth for p in plan.projects)),
        reads or {},
    )

    writing = Countdown()  # the Projects whose writes have started

    def one_done() -> None:
        finished, _ = writing.finish()
        if progress:
            progress(finished, len(to_write))

    writers = [
        ProjectWriter(
            p,
            api,
            env,
            pool,
            order,
            stopper=stopper,
            on_done=one_done,
            code=code,
            roots=roots,
            context=context,
        )
        for order, p in enumerate(to_write)
    ]
    try:
        for writer in writers:
            if stopper is not None and stopper.stopped:
                break
            writing.start()
            writer.start()
    except KeyboardInterrupt:
        # Interrupted while Projects were still being started: those started get the
        # grace below, the rest are reported not started.
        if stopper is None:
            api.abort()
            raise
        stopper.stop()
    writing.close()

    def abandon() -> None:
        # A client's new secret exists only in memory until it is stored: let a store
        # in flight finish before cutting anything.
        for writer in writers:
            writer.secrets.wait_for_stores()
        for writer in writers:
            writer.freeze()
        api.abort()

    pool.wait(writing.done, stopper=stopper, abandon=abandon)
    by_id = {w.project.project_id: w.outcome() for w in writers}
    outcomes = []
    for project in plan.projects:
        if project.has_work:
            outcomes.append(by_id[project.project_id])
        elif project.status == UNCHANGED:
            outcomes.append(_outcome(project, UNCHANGED))
        else:
            outcomes.append(_outcome(project, FAILED, project.error))
    return outcomes


WriteStep = Callable[["ProjectWriter", Any, ObjectChange], None]
SETTINGS_INDEX = -1  # the settings PATCH's place among a Project's writes (before any object)
# The checks a Project's writes wait for (keys before any write's): /m2m/me, then the
# M2M clients whose id or rotation a secret needs.
ME_CHECK, CLIENT_CHECK = (-2,), (-1,)


@dataclass(frozen=True)
class WriteContext:
    """What every Project's writer shares: the secret values beside the plan, the
    options allowing guarded deletes, the credential variables of the run (no
    secret may copy one), and what this run's plan read for the checks before any write."""

    values: ValueInputs
    allow: frozenset[str] = frozenset()
    credentials: tuple[str, ...] = ()
    reads: Mapping[str, PlanReads] = field(default_factory=dict)


class ProjectWriter:
    """Writes one Project's plan, a level at a time (``levels.py``), the writes of a
    level concurrently; stops at its first failure or when the run is interrupted."""

    def __init__(
        self,
        project: ProjectPlan,
        api: ProjectApi,
        env: Mapping[str, str],
        pool: Pool,
        order: int,
        *,
        stopper: Stopper | None = None,
        on_done: Callable[[], None] = lambda: None,
        code: PrivateCopies | None = None,
        roots: RepositoryRoots | None = None,
        context: WriteContext | None = None,
    ) -> None:
        self.project = project
        self.code_roots = roots or RepositoryRoots()
        self.api = api
        self.env = env
        self.stopper = stopper
        self.on_done = on_done
        self.context = context or WriteContext(ValueInputs())
        self.code = code
        self.changes = list(project.objects)
        self.created: dict[str, str] = {}  # role name -> id, for refs
        self.ids: dict[tuple[str, str], str] = {}  # (kind, name) -> id of what it created
        # (kind, name) -> the clientId a create answered with (an M2M client's: a
        # secret's value may be it).
        self.client_ids: dict[tuple[str, str], str] = {}
        # (kind, name) -> the state the API's last answer gave it (a function's status),
        # and what a later phase did (a function's code uploaded).
        self.states: dict[tuple[str, str], str] = {}
        self.uploaded: set[tuple[str, str]] = set()
        self.credentials: Any = None
        self.tasks = Tasks(
            pool, order, self._next_level, errors=ReconcilerError, skip="all", stopper=stopper
        )
        # Deletes that need an option apply was not given: blocked, never started.
        self.blocked = {
            index
            for index, change in enumerate(self.changes)
            if change.action == "delete"
            and (guard := BY_NAME[change.kind].delete_guard) is not None
            and guard not in self.context.allow
        }
        # The rounds this Project needs: (level number, level, indexes of its changes).
        self.rounds: list[tuple[int, Level, list[int]]] = []
        for number, level in enumerate(LEVELS):
            if level.name == SETTINGS:
                if project.patch:
                    self.rounds.append((number, level, [SETTINGS_INDEX]))
                continue
            taken = [
                index
                for index, change in enumerate(self.changes)
                if level.takes(change.kind, change.action, _fields(change))
                and index not in self.blocked
            ]
            if taken:
                self.rounds.append((number, level, taken))
        self.planned = self.context.reads.get(project.file)
        self.secrets = SecretWriter(
            project,
            api,
            env,
            self.context.values,
            self.context.credentials,
            self._made,
            planned=self.planned,
        )
        self._round = -1
        self._lock = threading.Lock()
        self._error: str | None = None  # a failure before any write (credentials, /m2m/me)
        self._started = False
        self._finished = False
        self._frozen: TasksState | None = None

    def start(self) -> None:
        self._started = True
        try:
            self.credentials = resolve_credentials(self.project.auth, self.env)
            clients = self.secrets.take_values()
        except ReconcilerError as exc:
            self._error = str(exc)
            self._finish()
            return
        checks = []
        deletes = [c for c in self.changes if c.kind == M2M.name and c.action == "delete"]
        if deletes and isinstance(self.credentials, ClientCredentials):
            # A saved plan may have been made as another client: check /m2m/me first.
            checks.append((ME_CHECK, partial(self._refuse_deleting_self, deletes)))
        if clients:
            checks.append(
                (CLIENT_CHECK, partial(self.secrets.read_clients, self.credentials, clients))
            )
        if checks:
            self.tasks.spawn_all(checks)
        else:
            self._next_level(self.tasks)

    def _next_level(self, tasks: Tasks) -> None:
        """The level before has ended: the next one with writes, or the end."""
        stopped = self.stopper is not None and self.stopper.stopped
        if tasks.failures or stopped or self._round + 1 >= len(self.rounds):
            self._finish()
            return
        self._round += 1
        number, level, indexes = self.rounds[self._round]
        if level.name == SETTINGS:
            tasks.spawn((number, SETTINGS_INDEX), self._patch_settings)
            return
        step = PHASE_WRITERS[level.phase.name]
        tasks.spawn_all(
            ((number, index), partial(step, self, self.credentials, self.changes[index]))
            for index in indexes
        )

    def _finish(self) -> None:
        with self._lock:
            if self._finished:
                return
            self._finished = True
        self.on_done()

    def freeze(self) -> None:
        """The run gives up on what is in flight: keep the state as it is now (the
        requests about to be cut would otherwise turn into failures)."""
        self._frozen = self.tasks.snapshot()

    def outcome(self) -> Outcome:
        """What was done: every write in plan order as applied, failed, skipped, or (its
        answer abandoned when the run was interrupted) unknown."""
        project = self.project
        if not self._started:
            return _outcome(project, SKIPPED, "not started: the apply was interrupted")
        state = self._frozen or self.tasks.snapshot()
        failure = state.first_failure
        in_flight = sorted(state.running) if self._frozen else []
        results = []
        for index, change in enumerate(self.changes):
            keys = [(number, index) for number, _, indexes in self.rounds if index in indexes]
            failed = next((state.failures[k] for k in keys if k in state.failures), None)
            detail = None
            if failed is not None:
                status, message = FAILED, str(failed)
            elif any(k in state.running for k in keys) and self._frozen:
                status, message = UNKNOWN, IN_FLIGHT_MESSAGE.format(what="write")
            elif keys and all(k in state.finished for k in keys):
                status, message, detail = self._finished_state(change)
            elif failure is not None:
                status, message = SKIPPED, "not started: an earlier write failed"
            elif self._error is not None:
                status, message = SKIPPED, "not started: the Project failed before any write"
            else:
                status, message = SKIPPED, "not started: interrupted"
            if index in self.blocked:
                status, message = BLOCKED, _blocked_message(change)
            elif status == APPLIED and change.name in self.secrets.compared:
                written = self.secrets.compared[change.name]
                change = replace(change, action="update" if written else COMPARE)
            results.append(_object_outcome(change, status, message, detail))
        if self._error is not None:
            return _outcome(project, FAILED, self._error, objects=results)
        if failure is not None:
            key, error = failure
            return _outcome(project, FAILED, self._where(key) + str(error), objects=results)
        in_bad_state = [r for r in results if r.status == FAILED]
        if in_bad_state and not self._frozen:
            named = "; ".join(f"{r.kind} {r.name!r}: {r.error}" for r in in_bad_state)
            return _outcome(project, FAILED, named, objects=results)
        if in_flight:
            what = self._where(in_flight[0], write=True) or "PATCH"
            if len(in_flight) > 1:
                what += f" (and {len(in_flight) - 1} more)"
            message = IN_FLIGHT_MESSAGE.format(what=what)
            return _outcome(project, UNKNOWN, message, objects=results)
        written = [key for key in state.finished if len(key) == 2]  # not the /m2m/me check
        if len(written) < sum(len(indexes) for _, _, indexes in self.rounds):
            # Interrupted between levels: what was written is applied, the rest was not begun.
            if not written:
                return _outcome(
                    project, SKIPPED, "not started: the apply was interrupted", objects=results
                )
            message = (
                f"interrupted after {plural(len(written), 'write')}; "
                "the rest were not started: plan again to see them"
            )
            return _outcome(project, SKIPPED, message, objects=results)
        if self.blocked:
            guards = sorted(
                {BY_NAME[self.changes[i].kind].delete_guard or "" for i in self.blocked}
            )
            message = (
                f"{plural(len(self.blocked), 'delete')} blocked: apply deletes them only when "
                f"given {' and '.join(guards)}; everything else was applied"
            )
            return _outcome(project, BLOCKED, message, objects=results)
        if not project.patch and all(r.action == COMPARE for r in results):
            return _outcome(project, UNCHANGED, objects=results)  # every value was right
        return _outcome(project, APPLIED, objects=results)

    def _finished_state(self, change: ObjectChange) -> tuple[str, str | None, str | None]:
        """(status, error, detail) of an object whose writes all succeeded: failed when
        the API's last answer put it in a state its kind calls a failure (a function
        whose code Oystehr could not deploy), else applied, saying what that state is
        (apply never waits for a function to become Active)."""
        kind = BY_NAME[change.kind]
        key = (change.kind, change.name)
        with self._lock:
            state, uploaded = self.states.get(key), key in self.uploaded
        words = ["code uploaded"] if uploaded else []
        if state is not None and state in kind.failed_statuses:
            return FAILED, f"its {kind.status_field} is {state} after apply", None
        if state is not None:
            words.append(f"{kind.status_field} {state}")
        return APPLIED, None, "; ".join(words) or None

    def _record_state(self, kind: Kind, name: str, answer: Mapping[str, Any]) -> None:
        state = answer.get(kind.status_field) if kind.status_field else None
        if isinstance(state, str):
            with self._lock:
                self.states[(kind.name, name)] = state

    def _where(self, key: tuple, *, write: bool = False) -> str:
        """ "role 'Staff': " for the key of an object's write ("write of role 'Staff'"
        with `write`); "" for the settings PATCH and the checks before any write."""
        if len(key) < 2 or key[1] < 0:
            return ""
        change = self.changes[key[1]]
        return (
            f"write of {change.kind} {change.name!r}"
            if write
            else f"{change.kind} {change.name!r}: "
        )

    def _refuse_deleting_self(self, deletes: Sequence[ObjectChange]) -> None:
        me = self.planned.me if self.planned is not None else None
        if me is None:
            me = self.api.m2m_me(self.project.project_id, self.credentials).get("id")
        for change in deletes:
            if change.id == me:
                raise RefusedError(
                    f"m2m {change.name!r} is the client this apply runs as; it is never "
                    "deleted. Nothing was written to this Project."
                )

    def _made(self, kind: str, name: str) -> tuple[str | None, str | None]:
        """The id and the clientId this apply's create of an object answered with."""
        with self._lock:
            return self.ids.get((kind, name)), self.client_ids.get((kind, name))

    def _write_secret(self, credentials: Any, change: ObjectChange) -> None:
        self.secrets.write(credentials, change)

    def _write_object(self, credentials: Any, change: ObjectChange) -> None:
        kind = BY_NAME[change.kind]
        body = self._resolve(change.body)
        pid = self.project.project_id
        if change.action == "create":
            answer = self._create(kind, credentials, body, change.name)
            with self._lock:
                self.ids[(kind.name, change.name)] = answer["id"]
                if kind is ROLE:
                    self.created[change.name] = answer["id"]
                if isinstance(answer.get("clientId"), str):
                    self.client_ids[(kind.name, change.name)] = answer["clientId"]
        else:
            answer = self.api.update_object(kind, pid, credentials, change.id, body)
        self._record_state(kind, change.name, answer)
        missed = [
            name
            for name, value in body.items()
            if not kind.same(name, answer.get(name), value)
            and not (name == "name" and answer.get(name) is None)
        ]
        if missed and not _fields_absent(answer, missed):
            raise ConvergenceError(
                "did not converge: the API answered with other values for " + ", ".join(missed)
            )

    def _create(self, kind: Kind, credentials: Any, body: Mapping[str, Any], name: str) -> dict:
        """POST; when the answer is lost, the list says whether the create happened."""
        pid = self.project.project_id
        for attempt in range(self.api.retries + 1):
            try:
                return self.api.create_object(kind, pid, credentials, body)
            except UncertainWriteError:
                found = [
                    o for o in self.api.list_objects(kind, pid, credentials) if o["name"] == name
                ]
                if len(found) == 1:
                    return self.api.get_object(kind, pid, credentials, found[0]["id"])
                if found or attempt == self.api.retries:
                    raise
        raise AssertionError("unreachable")

    def _patch_settings(self) -> None:
        project = self.project
        patch = self._resolve(project.patch)
        answer = self.api.patch_project(project.project_id, self.credentials, patch)
        resolved = replace(
            project,
            changes=tuple(replace(c, after=self._resolve(c.after)) for c in project.changes),
        )
        missed = unconverged(resolved, answer)
        if missed:
            raise ConvergenceError(
                "did not converge: the API answered with other values for " + ", ".join(missed)
            )

    def _upload_code(self, credentials: Any, change: ObjectChange) -> None:
        """The `code` phase (``uploads.py``), then a check that the function's code is
        the one uploaded ("did not converge" otherwise)."""
        kind = BY_NAME[change.kind]
        code_hash = change.change_of(CODE).after
        object_id = change.id or self._made(kind.name, change.name)[0]
        if object_id is None:
            raise RefusedError(f"{kind.name} {change.name!r} was to be created first, but was not")
        answer = upload_code(
            self.api, credentials, self.project, object_id, change, self.code, self.code_roots
        )
        live = kind.live_values[CODE](answer)
        if live != code_hash:
            raise ConvergenceError(
                f"did not converge: after the upload its code is {show_code(live)}, "
                f"not {show_code(code_hash)}"
            )
        with self._lock:
            self.uploaded.add((kind.name, change.name))
        self._record_state(kind, change.name, answer)

    def _delete_object(self, credentials: Any, change: ObjectChange) -> None:
        kind = BY_NAME[change.kind]
        self.api.delete_object(kind, self.project.project_id, credentials, change.id)

    def _resolve(self, value: Any) -> Any:
        """Refs to roles this plan created, replaced by their new ids."""
        if is_ref(value):
            name = value["ref"]["name"]
            with self._lock:
                role_id = self.created.get(name)
            if role_id is None:
                raise RefusedError(f"role {name!r} was to be created first, but was not")
            return role_id
        if isinstance(value, dict):
            return {key: self._resolve(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self._resolve(item) for item in value]
        return value


# The writer of each phase a kind may declare (kinds.Phase): a later kind's phase
# registers its own here (see levels.py).
PHASE_WRITERS: dict[str, WriteStep] = {
    "write": ProjectWriter._write_object,
    "value": ProjectWriter._write_secret,
    CODE: ProjectWriter._upload_code,
    "delete": ProjectWriter._delete_object,
}


def _blocked_message(change: ObjectChange) -> str:
    kind = BY_NAME[change.kind]
    return (
        f"not deleted: deleting a {kind.name} destroys every object in it; apply deletes it "
        f"only when given {kind.delete_guard}"
    )


def _fields(change: ObjectChange) -> frozenset[str]:
    return frozenset(c.field for c in change.changes)


def _levels_of(change: ObjectChange) -> list[Level]:
    """The levels that write an object change: one write each (an upload with its PUT
    is one), for --max-changes."""
    return [level for level in LEVELS if level.takes(change.kind, change.action, _fields(change))]


class ConvergenceError(ReconcilerError):
    """The API's answer to a write is not what was asked for."""


def _fields_absent(answer: Mapping[str, Any], names: Sequence[str]) -> bool:
    """An answer that leaves a field out says nothing about it (a PATCH may answer with
    the list's shape); only a field it holds with another value did not converge."""
    return all(name not in answer for name in names)


def _outcome(
    project: ProjectPlan, status: str, error: Any = None, objects: Sequence = ()
) -> Outcome:
    return Outcome(project.file, project.project_id, status, error, project.name, tuple(objects))


def _object_outcome(
    change: ObjectChange, status: str, error: str | None = None, detail: str | None = None
) -> ObjectOutcome:
    return ObjectOutcome(change.kind, change.name, change.action, status, error, detail)
