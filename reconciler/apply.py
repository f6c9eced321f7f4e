"""Apply a Plan through the client: refusals first, then the smallest writes.

`refusals()` and `_refuse_stale()` hold every reason not to write, in one
place, and run before any write. `apply_plan()` then writes every changed
Project at once, each one level at a time (``levels.py``): creates, updates and
renames of roles, then applications, then M2M clients; the settings PATCH;
deletes, M2M clients first. The writes of a level run concurrently, within the
run's request budget. Each answer is compared with what was asked for. A
Project's first failure stops it: no new write of it starts, the writes in
flight finish and are reported, the rest are skipped; other Projects go on.
Outcomes are reported in plan order whatever order the answers come in.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import Any

from reconciler.client import ClientCredentials, ProjectApi, resolve_credentials, same_url
from reconciler.errors import ApiError, ReconcilerError, RefusedError, UncertainWriteError
from reconciler.escape import plural
from reconciler.kinds import BY_NAME, M2M, ROLE, Kind
from reconciler.levels import LEVELS, SETTINGS, Level
from reconciler.objects import is_ref, object_fingerprint
from reconciler.plan import (
    CHANGED,
    UNCHANGED,
    ObjectChange,
    Plan,
    ProjectPlan,
    fingerprint,
    normalise_live,
    unconverged,
)
from reconciler.render import APPLIED, FAILED, SKIPPED, UNKNOWN, ObjectOutcome, Outcome
from reconciler.schedule import Pool, Stopper, Tasks, TasksState

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
    writes = sum(len(p.objects) + (1 if p.patch else 0) for p in plan.changed)
    if max_changes is not None and writes > max_changes:
        raise RefusedError(
            f"the plan makes {plural(writes, 'write')} (settings PATCHes and object writes) "
            f"in {plural(len(plan.changed), 'Project')}, more than --max-changes "
            f"{max_changes}; nothing was applied"
        )


def apply_plan(
    plan: Plan,
    api: ProjectApi,
    env: Mapping[str, str],
    *,
    pool: Pool | None = None,
    verify_fresh: bool = False,
    stopper: Stopper | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Outcome]:
    """Write every changed Project; one outcome per Project in the plan, in plan order.

    With `verify_fresh` (a saved plan), what each changed Project's plan writes is read
    once first and the whole apply is refused, before any write, if any of it changed
    since the plan.
    """
    pool = pool or Pool(api.budget.concurrency)
    changed = plan.changed
    failures: dict[str, str] = {}
    if verify_fresh:
        failures = _refuse_stale(changed, api, env, pool)
    to_write = [p for p in changed if p.project_id not in failures]

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
        ProjectWriter(p, api, env, pool, order, stopper=stopper, on_done=one_done)
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
        for writer in writers:
            writer.freeze()
        api.abort()

    pool.wait(done, stopper=stopper, abandon=abandon)
    by_id = {w.project.project_id: w.outcome() for w in writers}
    outcomes = []
    for project in plan.projects:
        if project.status == CHANGED:
            if project.project_id in failures:
                outcomes.append(_outcome(project, FAILED, failures[project.project_id]))
            else:
                outcomes.append(by_id[project.project_id])
        elif project.status == UNCHANGED:
            outcomes.append(_outcome(project, UNCHANGED))
        else:
            outcomes.append(_outcome(project, FAILED, project.error))
    return outcomes


WriteStep = Callable[["ProjectWriter", Any, ObjectChange], None]
SETTINGS_INDEX = -1  # the settings PATCH's place among a Project's writes (before any object)


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
    ) -> None:
        self.project = project
        self.api = api
        self.env = env
        self.stopper = stopper
        self.on_done = on_done
        self.changes = list(project.objects)
        self.created: dict[str, str] = {}  # role name -> id, for refs
        self.credentials: Any = None
        self.tasks = Tasks(
            pool, order, self._next_level, errors=ReconcilerError, skip="all", stopper=stopper
        )
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
            ]
            if taken:
                self.rounds.append((number, level, taken))
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
        except ReconcilerError as exc:
            self._error = str(exc)
            self._finish()
            return
        deletes = [c for c in self.changes if c.kind == M2M.name and c.action == "delete"]
        if deletes and isinstance(self.credentials, ClientCredentials):
            # Plan and apply may run as different clients: check /m2m/me again first.
            self.tasks.spawn((-1,), partial(self._refuse_deleting_self, deletes))
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
            if failed is not None:
                status, message = FAILED, str(failed)
            elif any(k in state.running for k in keys) and self._frozen:
                status, message = UNKNOWN, IN_FLIGHT_MESSAGE.format(what="write")
            elif keys and all(k in state.finished for k in keys):
                status, message = APPLIED, None
            elif failure is not None or self._error is not None:
                status, message = SKIPPED, "not started: an earlier write failed"
            else:
                status, message = SKIPPED, "not started: interrupted"
            results.append(_object_outcome(change, status, message))
        if self._error is not None:
            return _outcome(project, FAILED, self._error, objects=results)
        if failure is not None:
            key, error = failure
            return _outcome(project, FAILED, self._where(key) + str(error), objects=results)
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
        return _outcome(project, APPLIED, objects=results)

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
            if kind is ROLE:
                with self._lock:
                    self.created[change.name] = answer["id"]
        else:
            answer = self.api.update_object(kind, pid, credentials, change.id, body)
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
    "delete": ProjectWriter._delete_object,
}


def _fields(change: ObjectChange) -> frozenset[str]:
    return frozenset(c.field for c in change.changes)


class ConvergenceError(ReconcilerError):
    """The API's answer to a write is not what was asked for."""


def _fields_absent(answer: Mapping[str, Any], names: Sequence[str]) -> bool:
    """An answer that leaves a field out says nothing about it (a PATCH may answer with
    the list's shape); only a field it holds with another value did not converge."""
    return all(name not in answer for name in names)


def _refuse_stale(
    changed: Sequence[ProjectPlan], api: ProjectApi, env: Mapping[str, str], pool: Pool
) -> dict[str, str]:
    """Re-read what each changed Project's plan writes, once: its settings when they change
    (GET /project), each object it updates, renames or deletes (one GET each), and the list
    of each kind it creates in (a name it creates must still be free), all at once within
    the run's budget. Stale ones refuse the whole apply; ones that cannot be read fail on
    their own (returned), so the others still apply."""
    done = threading.Event()
    remaining = [len(changed)]
    lock = threading.Lock()
    checks = []

    def checked(tasks: Tasks) -> None:
        with lock:
            remaining[0] -= 1
            if remaining[0] == 0:
                done.set()

    for order, project in enumerate(changed):
        tasks = Tasks(pool, order, checked, errors=ReconcilerError)
        checks.append(tasks)
        try:
            credentials = resolve_credentials(project.auth, env)
        except ReconcilerError as exc:
            tasks.failures[(0,)] = exc
            checked(tasks)
            continue
        tasks.spawn_all(_freshness_reads(project, api, credentials))
    if not changed:
        done.set()
    pool.wait(done, abandon=api.abort)

    stale, unreadable = [], {}
    for project, tasks in zip(changed, checks, strict=True):
        failure = tasks.first_failure
        if failure is None:
            continue
        if isinstance(failure[1], _Stale):
            stale.append((project, str(failure[1])))
        else:
            unreadable[project.project_id] = str(failure[1])
    if stale:
        named = ", ".join(f"{p.file} ({p.project_id}): {what}" for p, what in stale)
        raise RefusedError(
            f"stale plan: live values changed since the plan was made: {named}; "
            "nothing was applied. Make a new plan and review it."
        )
    return unreadable


class _Stale(ReconcilerError):
    """What changed live since the plan was made."""


def _freshness_reads(project: ProjectPlan, api: ProjectApi, credentials: Any) -> list:
    """The reads that say whether a Project's plan is still fresh, keyed in plan order;
    each raises _Stale naming what changed."""
    pid = project.project_id
    reads = []

    def settings() -> None:
        live = normalise_live(api.get_project(pid, credentials))
        if fingerprint(live, project.managed_keys) != project.live_fingerprint:
            raise _Stale("settings")

    def one(change: ObjectChange) -> None:
        kind = BY_NAME[change.kind]
        try:
            live_object = api.get_object(kind, pid, credentials, change.id)
        except ApiError as exc:
            if exc.status == 404:
                raise _Stale(f"{kind.name} {change.name!r} is gone") from None
            raise
        changes = [c.to_dict() for c in change.changes]
        if object_fingerprint(kind, changes, live_object) != change.live_fingerprint:
            raise _Stale(f"{kind.name} {change.name!r}")

    def names_free(kind: Kind, names: set[str]) -> None:
        # A name the plan creates must still be free, or apply would make a second one.
        taken = sorted(names & {o["name"] for o in api.list_objects(kind, pid, credentials)})
        if taken:
            raise _Stale(f"{kind.name} {', '.join(map(repr, taken))} exists now")

    if project.changes:
        reads.append(((0,), settings))
    creates: dict[str, set[str]] = {}
    for index, change in enumerate(project.objects):
        if change.id is None:
            creates.setdefault(change.kind, set()).add(change.name)
        else:
            reads.append(((1, index), partial(one, change)))
    for index, (kind_name, names) in enumerate(creates.items()):
        reads.append(((2, index), partial(names_free, BY_NAME[kind_name], names)))
    return reads


def _outcome(
    project: ProjectPlan, status: str, error: Any = None, objects: Sequence = ()
) -> Outcome:
    return Outcome(project.file, project.project_id, status, error, project.name, tuple(objects))


def _object_outcome(change: ObjectChange, status: str, error: str | None = None) -> ObjectOutcome:
    return ObjectOutcome(change.kind, change.name, change.action, status, error)
