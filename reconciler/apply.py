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

Secrets (SPEC section 13): before any write of a Project, every value it writes
is in hand (a literal from its file, a `RECONCILER_SECRET_…` variable, an M2M
client's id), or it fails with nothing written. A `compare` reads the live value
and writes only when it differs. A client secret is made by rotating the client
(one this plan creates, or one --rotate names; never the run's own), once per
client, and stored in every secret naming it; an interrupt waits for such a store
to finish. A delete of a kind with a `delete_guard` (a bucket) is `blocked`
unless apply is given that option; the Project's other writes still happen.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from reconciler.client import ClientCredentials, ProjectApi, resolve_credentials, same_url
from reconciler.differ import unconverged
from reconciler.errors import (
    ApiError,
    ReconcilerError,
    RefusedError,
    ShapeError,
    UncertainWriteError,
)
from reconciler.escape import credential_variables, plural
from reconciler.includes import RepositoryRoots
from reconciler.kinds import BY_NAME, M2M, ROLE, Kind
from reconciler.levels import LEVELS, SETTINGS, Level
from reconciler.objects import is_ref
from reconciler.plan import (
    COMPARE,
    UNCHANGED,
    ObjectChange,
    Plan,
    ProjectPlan,
)
from reconciler.render import (
    APPLIED,
    BLOCKED,
    FAILED,
    SKIPPED,
    UNKNOWN,
    ObjectOutcome,
    Outcome,
)
from reconciler.schedule import Pool, Stopper, Tasks, TasksState
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
from reconciler.zambdas import CODE, ZIP, file_name, show_code
from reconciler.zips import PrivateCopies, ZipError

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


def code_copies(
    plan: Plan, roots: RepositoryRoots, copies: PrivateCopies | None = None
) -> PrivateCopies | None:
    """Private copies of the zips the plan uploads (in `copies`, which may hold some
    already: what this run's plan read), each checked against the code hash the plan
    holds; None when it uploads none. Any zip that is missing, unsafe or holds other code
    refuses the whole apply, naming each, before any write: apply uploads exactly the
    code that was planned, and never builds."""
    uploads = [
        (project, change)
        for project in plan.changed
        for change in project.objects
        if change.extras.get(ZIP) and change.change_of(CODE) is not None
    ]
    if not uploads:
        return None
    from concurrent.futures import ThreadPoolExecutor

    copies = copies if copies is not None else PrivateCopies()

    def check(project: ProjectPlan, change: ObjectChange) -> str | None:
        try:
            root = roots.of(project.file)
            copies.check(root, change.extras[ZIP], change.change_of(CODE).after)
        except ZipError as exc:
            return f"{project.file}: {change.kind} {change.name!r}: {exc}"
        return None

    # Reading and hashing is mostly I/O and C code (zlib, hashlib): a few threads help.
    with ThreadPoolExecutor(max_workers=min(8, len(uploads))) as pool:
        problems = [why for why in pool.map(lambda pair: check(*pair), uploads) if why]
    if problems:
        raise RefusedError("; ".join(problems) + "; nothing was applied")
    return copies


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
) -> list[Outcome]:
    """Write every changed Project (and compare the secret values of those that have
    some); one outcome per Project in the plan, in plan order.

    A saved plan is verified first (``verify.py``): what it applies is what the files
    and the live values give, and it refuses, before any write, if any of it changed
    since the plan. `code` holds the checked copies of the zips the plan uploads
    (:func:`code_copies`, with the same `roots`).
    `values` gives the files' literal secret values and the rotations
    asked for; `allow` the options given that allow guarded deletes
    (`--allow-bucket-deletes`).
    """
    pool = pool or Pool(api.budget.concurrency)
    to_write = plan.to_apply
    context = WriteContext(
        values or ValueInputs(),
        allow,
        tuple(credential_variables(p.auth for p in plan.projects)),
    )

    done = threading.Event()
    counts = {"started": 0, "finished": 0, "all started": False}
    lock = threading.Lock()

    def settled() -> None:
        if counts["all started"] and counts["finished"] == counts["started"]:
            done.set()

    def one_done() -> None:
        with lock:
            counts["finished"] += 1
            finished = counts["finished"]
            settled()
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
            with lock:
                counts["started"] += 1
            writer.start()
    except KeyboardInterrupt:
        # Interrupted while Projects were still being started: those started get the
        # grace below, the rest are reported not started.
        if stopper is None:
            api.abort()
            raise
        stopper.stop()
    with lock:
        counts["all started"] = True
        settled()

    def abandon() -> None:
        # A client's new secret exists only in memory until it is stored: let a store
        # in flight finish before cutting anything.
        for writer in writers:
            writer.wait_for_stores()
        for writer in writers:
            writer.freeze()
        api.abort()

    pool.wait(done, stopper=stopper, abandon=abandon)
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
# A rotated client's new secret exists only in memory until stored: its store is tried
# at least this many more times, and an interrupt waits this long for it to finish.
STORE_RETRIES = 3
STORE_GRACE_SECONDS = 120.0


@dataclass(frozen=True)
class WriteContext:
    """What every Project's writer shares: the secret values beside the plan, the
    options allowing guarded deletes, and the credential variables of the run (no
    secret may copy one)."""

    values: ValueInputs
    allow: frozenset[str] = frozenset()
    credentials: tuple[str, ...] = ()


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
        # Secret values: the ones in hand, the M2M clients they come from (name -> live
        # id), each rotated client's new secret, and what each compare found.
        self.values: dict[str, SecretValue] = {}
        self.clients: dict[str, str] = {}
        self.rotated: dict[str, SecretValue] = {}
        self.compared: dict[str, bool] = {}  # secret name -> whether a value was written
        self._rotation_locks: dict[str, threading.Lock] = {}
        self._rotation_failed: set[str] = set()
        self._storing = threading.Condition()
        self._stores_in_flight = 0
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
            clients = self._take_values()
        except ReconcilerError as exc:
            self._error = str(exc)
            self._finish()
            return
        checks = []
        deletes = [c for c in self.changes if c.kind == M2M.name and c.action == "delete"]
        if deletes and isinstance(self.credentials, ClientCredentials):
            # Plan and apply may run as different clients: check /m2m/me again first.
            checks.append((ME_CHECK, partial(self._refuse_deleting_self, deletes)))
        if clients:
            checks.append((CLIENT_CHECK, partial(self._read_clients, clients)))
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
            elif status == APPLIED and change.name in self.compared:
                change = replace(change, action="update" if self.compared[change.name] else COMPARE)
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
        me = self.api.m2m_me(self.project.project_id, self.credentials)
        for change in deletes:
            if change.id == me.get("id"):
                raise RefusedError(
                    f"m2m {change.name!r} is the client this apply runs as; it is never "
                    "deleted. Nothing was written to this Project."
                )

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
        """The `code` phase: s3-upload, then a PUT of the checked private copy's bytes
        (hashed again) to the signed URL, then a read that checks the function's code is
        the one uploaded ("did not converge" otherwise)."""
        kind = BY_NAME[change.kind]
        code_hash = change.change_of(CODE).after
        pid = self.project.project_id
        with self._lock:
            object_id = change.id or self.ids.get((kind.name, change.name))
        if object_id is None:
            raise RefusedError(f"{kind.name} {change.name!r} was to be created first, but was not")
        if self.code is None:
            raise RefusedError("its zip was not checked before the apply; nothing was uploaded")
        root = self.code_roots.of(self.project.file)
        with self.code.bytes_of(root, change.extras[ZIP], code_hash) as data:
            url = self.api.start_upload(kind, pid, credentials, object_id, file_name(code_hash))
            self.api.put_upload(url, data)
        answer = self.api.get_object(kind, pid, credentials, object_id)
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

    # Secret values ----------------------------------------------------------------------

    def _take_values(self) -> dict[str, bool]:
        """Every value this Project's secrets need that is in hand before any request
        (literals, RECONCILER_SECRET_ variables); a missing one, or one equal to a
        credential, refuses the Project with nothing written. Returns the live M2M
        clients to read first: name -> whether its rotation must not be the run's own."""
        pid = self.project.project_id
        new = {c.name for c in self.changes if c.kind == M2M.name and c.action == "create"}
        asked = {name for project_id, name in self.context.values.rotate if project_id == pid}
        missing: list[str] = []
        problems: list[str] = []
        clients: dict[str, bool] = {}
        for change in self.changes:
            if change.value_source is None or change.action == "delete":
                continue
            source = Source.parse(change.value_source)
            if source.kind == LITERAL:
                value = self.context.values.literal(pid, change.name)
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
        credential = credential_named(value, self.context.credentials, self.env)
        if credential is not None:
            raise RefusedError(
                f"secret {name!r}: its value ({source.text}) is the value of {credential}, a "
                "credential; it is never copied into Oystehr. Nothing was written to this "
                "Project."
            )
        self.values[name] = value

    def _read_clients(self, clients: dict[str, bool]) -> None:
        """The live M2M clients secrets' values come from: their ids (the list), the
        clientId of each whose id is a value, and, under M2M credentials, that none to
        rotate is the client this apply runs as (`GET /m2m/{id}`)."""
        pid = self.project.project_id
        listed = self.api.list_objects(M2M, pid, self.credentials)
        for name, rotated in sorted(clients.items()):
            found = [str(item["id"]) for item in listed if item.get("name") == name]
            if len(found) != 1:
                how = "is not live" if not found else f"is the name of {len(found)} live clients"
                raise RefusedError(
                    f"M2M client {name!r} {how}: a secret's value comes from it. Nothing was "
                    "written to this Project."
                )
            self.clients[name] = found[0]
            ids = [c for c in self.changes if _client_field(c, name) == CLIENT_ID]
            self_check = rotated and isinstance(self.credentials, ClientCredentials)
            if not ids and not self_check:
                continue
            detail = self.api.get_object(M2M, pid, self.credentials, found[0])
            client_id = detail.get("clientId")
            if self_check and client_id == self.credentials.client_id:
                raise RefusedError(
                    f"M2M client {name!r} is the client this apply runs as; it is never "
                    "rotated. Nothing was written to this Project."
                )
            for change in ids:
                if not isinstance(client_id, str):
                    raise ShapeError(f"GET /m2m/{{id}} of M2M client {name!r} has no clientId")
                source = Source.parse(change.value_source)
                self._keep_value(change.name, SecretValue(client_id).redact(), source)

    def _write_secret(self, credentials: Any, change: ObjectChange) -> None:
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
        with self._lock:  # a new M2M client's id, from its create's answer
            client_id = self.client_ids.get((M2M.name, source.client or ""))
        if not isinstance(client_id, str):
            raise RefusedError(f"M2M client {source.client!r} was to be created first, but was not")
        value = SecretValue(client_id).redact()
        self._keep_value(change.name, value, source)
        return value

    def _client_id(self, client: str) -> str:
        """The live id of an M2M client: created by this apply, or read before any write."""
        with self._lock:
            made = self.ids.get((M2M.name, client))
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


# The writer of each phase a kind may declare (kinds.Phase): a later kind's phase
# registers its own here (see levels.py).
PHASE_WRITERS: dict[str, WriteStep] = {
    "write": ProjectWriter._write_object,
    "value": ProjectWriter._write_secret,
    CODE: ProjectWriter._upload_code,
    "delete": ProjectWriter._delete_object,
}


def _client_field(change: ObjectChange, client: str) -> str | None:
    """The field of `client` a secret's value is (clientId, clientSecret), or None."""
    if change.value_source is None or change.action == "delete":
        return None
    source = Source.parse(change.value_source)
    return source.field if source.client == client else None


def _blocked_message(change: ObjectChange) -> str:
    kind = BY_NAME[change.kind]
    return (
        f"not deleted: deleting a {kind.name} destroys every object in it; apply deletes it "
        f"only when given {kind.delete_guard}"
    )


class RotationError(ReconcilerError):
    """An M2M client's rotation may have happened, or its new secret was not stored."""


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
