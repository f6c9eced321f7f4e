"""Apply a Plan through the client: refusals first, then the smallest writes.

`refusals()` and `_refuse_stale()` hold every reason not to write, in one
place, and run before any write. `apply_plan()` then writes each changed
Project in dependency order (SPEC section 9): creates, updates and renames of
roles, applications and M2M clients; the settings PATCH; deletes, M2M clients
first. Each answer is compared with what was asked for; a Project stops at its
first failure (its remaining writes are reported skipped) and the others go on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from reconciler.client import ClientCredentials, ProjectApi, resolve_credentials, same_url
from reconciler.errors import ApiError, ReconcilerError, RefusedError, UncertainWriteError
from reconciler.escape import plural
from reconciler.fleet import IN_FLIGHT, Stopper, run_each
from reconciler.kinds import BY_NAME, M2M, ROLE, Kind
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
    concurrency: int = 8,
    verify_fresh: bool = False,
    stopper: Stopper | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Outcome]:
    """PATCH every changed Project; one outcome per Project in the plan, in plan order.

    With `verify_fresh` (a saved plan), each changed Project is read once first and the
    whole apply is refused, before any PATCH, if any of them changed since the plan.
    """
    changed = plan.changed
    failures: dict[str, str] = {}
    if verify_fresh:
        failures = _refuse_stale(changed, api, env, concurrency=concurrency)
    to_write = [p for p in changed if p.project_id not in failures]

    writers = {p.project_id: ProjectWriter(p, api, env) for p in to_write}

    def write(project: ProjectPlan) -> Outcome:
        return writers[project.project_id].run()

    written = run_each(
        to_write,
        write,
        concurrency=concurrency,
        stopper=stopper,
        progress=progress,
        abandon=api.abort,
    )
    by_id = {p.project_id: o for p, o in zip(to_write, written, strict=True)}
    outcomes = []
    for project in plan.projects:
        if project.status == CHANGED:
            result = by_id.get(project.project_id)
            if project.project_id in failures:
                outcomes.append(_outcome(project, FAILED, failures[project.project_id]))
            elif result is IN_FLIGHT:
                outcomes.append(writers[project.project_id].interrupted())
            elif isinstance(result, Outcome):
                outcomes.append(result)
            else:
                outcomes.append(
                    _outcome(project, SKIPPED, "not started: the apply was interrupted")
                )
        elif project.status == UNCHANGED:
            outcomes.append(_outcome(project, UNCHANGED))
        else:
            outcomes.append(_outcome(project, FAILED, project.error))
    return outcomes


class ProjectWriter:
    """Writes one Project's plan in order, stopping at its first failure."""

    def __init__(self, project: ProjectPlan, api: ProjectApi, env: Mapping[str, str]) -> None:
        self.project = project
        self.api = api
        self.env = env
        self.created: dict[str, str] = {}  # role name -> id, for refs
        self.results: list[ObjectOutcome] = []
        self.current: ObjectChange | None = None  # the object write in flight, if any

    def interrupted(self) -> Outcome:
        """The outcome when the run was interrupted while this Project was being written:
        what was written, the write in flight as unknown, the rest skipped."""
        done = {(o.kind, o.name) for o in self.results}
        results = list(self.results)
        what = "PATCH"
        for change in self.project.objects:
            if (change.kind, change.name) in done:
                continue
            if change is self.current:
                what = f"write of {change.kind} {change.name!r}"
                message = IN_FLIGHT_MESSAGE.format(what="write")
                results.append(_object_outcome(change, UNKNOWN, message))
            else:
                results.append(_object_outcome(change, SKIPPED, "not started: interrupted"))
        return _outcome(self.project, UNKNOWN, IN_FLIGHT_MESSAGE.format(what=what), objects=results)

    def run(self) -> Outcome:
        project = self.project
        writes = [o for o in project.objects if o.action != "delete"]
        deletes = [o for o in project.objects if o.action == "delete"]
        try:
            credentials = resolve_credentials(project.auth, self.env)
            self._refuse_deleting_self(credentials, deletes)
        except ReconcilerError as exc:
            return self._stopped(str(exc), project.objects)
        for index, change in enumerate(writes):
            error = self._guarded(lambda c=change: self._write_object(credentials, c), change)
            if error:
                return self._stopped(error, writes[index + 1 :] + deletes, failed=change)
        if project.patch:
            error = self._guarded(lambda: self._patch_settings(credentials))
            if error:
                return self._stopped(error, deletes)
        for index, change in enumerate(deletes):
            error = self._guarded(lambda c=change: self._delete_object(credentials, c), change)
            if error:
                return self._stopped(error, deletes[index + 1 :], failed=change)
        return _outcome(project, APPLIED, objects=self.results)

    def _guarded(self, step: Callable[[], None], change: ObjectChange | None = None) -> str | None:
        self.current = change
        try:
            step()
        except ReconcilerError as exc:
            return str(exc)
        finally:
            self.current = None
        return None

    def _stopped(
        self,
        error: str,
        rest: Sequence[ObjectChange],
        *,
        failed: ObjectChange | None = None,
    ) -> Outcome:
        results = list(self.results)
        if failed is not None:
            results.append(_object_outcome(failed, FAILED, error))
        results += [
            _object_outcome(c, SKIPPED, "not started: an earlier write failed") for c in rest
        ]
        where = f"{failed.kind} {failed.name!r}: " if failed else ""
        return _outcome(self.project, FAILED, where + error, objects=results)

    def _refuse_deleting_self(self, credentials: Any, deletes: Sequence[ObjectChange]) -> None:
        """Plan and apply may run as different clients: check /m2m/me again before writing."""
        m2m_deletes = [c for c in deletes if c.kind == M2M.name]
        if not m2m_deletes or not isinstance(credentials, ClientCredentials):
            return
        me = self.api.m2m_me(self.project.project_id, credentials)
        for change in m2m_deletes:
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
                self.created[change.name] = answer["id"]
        else:
            answer = self.api.update_object(kind, pid, credentials, change.id, body)
        missed = [
            name
            for name, value in body.items()
            if kind.normalise(name, answer.get(name)) != kind.normalise(name, value)
            and not (name == "name" and answer.get(name) is None)
        ]
        if missed and not _fields_absent(answer, missed):
            raise ConvergenceError(
                "did not converge: the API answered with other values for " + ", ".join(missed)
            )
        self.results.append(_object_outcome(change, APPLIED))

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

    def _patch_settings(self, credentials: Any) -> None:
        project = self.project
        patch = self._resolve(project.patch)
        answer = self.api.patch_project(project.project_id, credentials, patch)
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
        self.results.append(_object_outcome(change, APPLIED))

    def _resolve(self, value: Any) -> Any:
        """Refs to roles this plan created, replaced by their new ids."""
        if is_ref(value):
            name = value["ref"]["name"]
            if name not in self.created:
                raise RefusedError(f"role {name!r} was to be created first, but was not")
            return self.created[name]
        if isinstance(value, dict):
            return {key: self._resolve(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self._resolve(item) for item in value]
        return value


class ConvergenceError(ReconcilerError):
    """The API's answer to a write is not what was asked for."""


def _fields_absent(answer: Mapping[str, Any], names: Sequence[str]) -> bool:
    """An answer that leaves a field out says nothing about it (a PATCH may answer with
    the list's shape); only a field it holds with another value did not converge."""
    return all(name not in answer for name in names)


def _refuse_stale(
    changed: Sequence[ProjectPlan], api: ProjectApi, env: Mapping[str, str], *, concurrency: int
) -> dict[str, str]:
    """Re-read what each changed Project's plan writes, once: its settings when they change
    (GET /project), each object it updates, renames or deletes (one GET each), and the list
    of each kind it creates in (a name it creates must still be free). Stale ones refuse
    the whole apply; ones that cannot be read fail on their own (returned), so the others
    still apply."""

    def check(project: ProjectPlan) -> tuple[str, str | None]:
        try:
            credentials = resolve_credentials(project.auth, env)
            if project.changes:
                live = normalise_live(api.get_project(project.project_id, credentials))
                if fingerprint(live, project.managed_keys) != project.live_fingerprint:
                    return "stale", "settings"
            creates: dict[str, set[str]] = {}
            for change in project.objects:
                if change.id is None:
                    creates.setdefault(change.kind, set()).add(change.name)
                    continue
                kind = BY_NAME[change.kind]
                try:
                    live_object = api.get_object(kind, project.project_id, credentials, change.id)
                except ApiError as exc:
                    if exc.status == 404:
                        return "stale", f"{kind.name} {change.name!r} is gone"
                    raise
                changes = [c.to_dict() for c in change.changes]
                if object_fingerprint(kind, changes, live_object) != change.live_fingerprint:
                    return "stale", f"{kind.name} {change.name!r}"
            # A name the plan creates must still be free, or apply would make a second one.
            for kind_name, names in creates.items():
                kind = BY_NAME[kind_name]
                live_names = {
                    o["name"] for o in api.list_objects(kind, project.project_id, credentials)
                }
                taken = sorted(names & live_names)
                if taken:
                    return "stale", f"{kind.name} {', '.join(map(repr, taken))} exists now"
        except ReconcilerError as exc:
            return "unreadable", str(exc)
        return "fresh", None

    results = run_each(changed, check, concurrency=concurrency, abandon=api.abort)
    stale = [
        (p, r[1])
        for p, r in zip(changed, results, strict=True)
        if isinstance(r, tuple) and r[0] == "stale"
    ]
    if stale:
        named = ", ".join(f"{p.file} ({p.project_id}): {what}" for p, what in stale)
        raise RefusedError(
            f"stale plan: live values changed since the plan was made: {named}; "
            "nothing was applied. Make a new plan and review it."
        )
    return {
        p.project_id: r[1]
        for p, r in zip(changed, results, strict=True)
        if isinstance(r, tuple) and r[0] == "unreadable"
    }


def _outcome(
    project: ProjectPlan, status: str, error: Any = None, objects: Sequence = ()
) -> Outcome:
    return Outcome(project.file, project.project_id, status, error, project.name, tuple(objects))


def _object_outcome(change: ObjectChange, status: str, error: str | None = None) -> ObjectOutcome:
    return ObjectOutcome(change.kind, change.name, change.action, status, error)
