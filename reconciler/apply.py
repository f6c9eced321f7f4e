"""Apply a Plan through the client: refusals first, then the smallest PATCHes.

`refusals()` and `check_saved_plan()` hold every reason not to write, in one
place, and run before any PATCH. `apply_plan()` then writes each changed
Project, checks that the API's answer is what was asked for, and keeps going
across Projects when one fails.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from reconciler.client import ProjectApi, resolve_credentials, same_url
from reconciler.errors import ReconcilerError, RefusedError
from reconciler.escape import plural
from reconciler.fleet import IN_FLIGHT, Stopper, run_each
from reconciler.plan import (
    CHANGED,
    UNCHANGED,
    Plan,
    ProjectPlan,
    fingerprint,
    normalise_live,
    unconverged,
)
from reconciler.render import APPLIED, FAILED, SKIPPED, UNKNOWN, Outcome

IN_FLIGHT_MESSAGE = (
    "the PATCH was in flight when the apply was interrupted; plan again to see whether it "
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
    if max_changes is not None and len(plan.changed) > max_changes:
        raise RefusedError(
            f"the plan changes {plural(len(plan.changed), 'Project')}, more than --max-changes "
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

    def write(project: ProjectPlan) -> Outcome:
        try:
            credentials = resolve_credentials(project.auth, env)
            answer = api.patch_project(project.project_id, credentials, project.patch)
            missed = unconverged(project, answer)
            if missed:
                return _outcome(
                    project,
                    FAILED,
                    "did not converge: the API answered with other values for " + ", ".join(missed),
                )
            return _outcome(project, APPLIED)
        except ReconcilerError as exc:
            return _outcome(project, FAILED, str(exc))

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
                outcomes.append(_outcome(project, UNKNOWN, IN_FLIGHT_MESSAGE))
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


def _refuse_stale(
    changed: Sequence[ProjectPlan], api: ProjectApi, env: Mapping[str, str], *, concurrency: int
) -> dict[str, str]:
    """Re-read each changed Project once. Stale ones refuse the whole apply; ones that
    cannot be read fail on their own (returned), so the others still apply."""

    def check(project: ProjectPlan) -> tuple[str, str | None]:
        try:
            credentials = resolve_credentials(project.auth, env)
            live = normalise_live(api.get_project(project.project_id, credentials))
        except ReconcilerError as exc:
            return "unreadable", str(exc)
        if fingerprint(live, project.managed_keys) != project.live_fingerprint:
            return "stale", None
        return "fresh", None

    results = run_each(changed, check, concurrency=concurrency, abandon=api.abort)
    stale = [p for p, r in zip(changed, results, strict=True) if r and r[0] == "stale"]
    if stale:
        named = ", ".join(f"{p.file} ({p.project_id})" for p in stale)
        raise RefusedError(
            f"stale plan: live settings changed since the plan was made for {named}; "
            "nothing was applied. Make a new plan and review it."
        )
    return {
        p.project_id: r[1]
        for p, r in zip(changed, results, strict=True)
        if r and r[0] == "unreadable"
    }


def _outcome(project: ProjectPlan, status: str, error: Any = None) -> Outcome:
    return Outcome(project.file, project.project_id, status, error, project.name)
