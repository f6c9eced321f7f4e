"""Many Projects at once: choosing them (--project, --shard), running them concurrently
(--concurrency), stopping cleanly on Ctrl-C or SIGTERM, and reading their live state
into a Plan.

Each Project's own requests stay in order inside one worker; an error in one
Project becomes that Project's status and never stops the others.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from reconciler import objects
from reconciler.client import ClientCredentials, Credentials, ProjectApi, resolve_credentials
from reconciler.errors import ConfigError, ReconcilerError
from reconciler.files import ProjectFile
from reconciler.kinds import M2M, ROLE
from reconciler.plan import (
    LiveObjects,
    Plan,
    ProjectPlan,
    diff,
    needs_role_lookup,
    normalise_live,
    now_utc,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'I/N' -> (I, N), 1-based; None when no shard was asked for."""
    if text is None:
        return None
    try:
        index_text, count_text = text.split("/")
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise ConfigError(f"--shard must look like I/N (e.g. 2/4), not {text!r}") from None
    if count < 1 or not 1 <= index <= count:
        raise ConfigError(f"--shard {text}: need 1 <= I <= N")
    return index, count


def shard_of(project_id: str, count: int) -> int:
    """The 1-based shard a Project id falls in: int(sha256(id), 16) % N + 1."""
    return int(hashlib.sha256(project_id.encode()).hexdigest(), 16) % count + 1


def select(
    projects: Sequence[ProjectFile],
    filters: Iterable[str] = (),
    shard: tuple[int, int] | None = None,
) -> list[ProjectFile]:
    """The Projects a run covers. A --project value matching no file is an error."""
    filters = list(filters)
    chosen = list(projects)
    if filters:
        unmatched = [f for f in filters if not any(f in (p.id, p.stem) for p in projects)]
        if unmatched:
            raise ConfigError(
                "--project matches no project file (by id or file stem): " + ", ".join(unmatched)
            )
        chosen = [p for p in chosen if p.id in filters or p.stem in filters]
    if shard:
        index, count = shard
        chosen = [p for p in chosen if shard_of(p.id, count) == index]
    return chosen


GRACE_SECONDS = 1.0


class Stopper:
    """Set when the user interrupts (Ctrl-C, or SIGTERM, which the CLI turns into the
    same KeyboardInterrupt): no new work starts; work in flight gets `grace` seconds to
    finish, then is abandoned (SPEC section 5: the run ends within 2 s)."""

    def __init__(self, grace: float = GRACE_SECONDS) -> None:
        self.event = threading.Event()
        self.grace = grace

    def stop(self) -> None:
        if not self.event.is_set():
            print(
                "Stopping: no new Projects will start; waiting up to "
                f"{self.grace:g} s for those in flight.",
                file=sys.stderr,
            )
        self.event.set()

    @property
    def stopped(self) -> bool:
        return self.event.is_set()


class InFlight:
    """The result of an item whose work was abandoned while it ran: what it did is unknown."""

    def __repr__(self) -> str:
        return "IN_FLIGHT"


IN_FLIGHT = InFlight()


def run_each(
    items: Sequence[T],
    work: Callable[[T], R],
    *,
    concurrency: int,
    stopper: Stopper | None = None,
    progress: Callable[[int, int], None] | None = None,
    abandon: Callable[[], None] | None = None,
) -> list[R | None | InFlight]:
    """work(item) for every item, `concurrency` at a time; results in item order.

    On an interrupt: without a stopper, `abandon()` is called and the KeyboardInterrupt
    goes on. With one, no new item starts, the items in flight get the stopper's grace
    to finish (a second interrupt ends it), then `abandon()` is called (it should cut
    their requests) and run_each returns: items never started get None, items still
    running get IN_FLIGHT. Workers are daemon threads, so a request that never returns
    cannot keep the process alive.
    """
    results: list[R | None | InFlight] = [None] * len(items)
    if not items:
        return results
    todo: queue.SimpleQueue[int | None] = queue.SimpleQueue()
    wake: queue.SimpleQueue[int] = queue.SimpleQueue()
    # Workers record outcomes here, not only in a queue: an interrupt landing while the
    # main thread takes an item off a queue must not lose a write that was answered.
    outcomes: dict[int, tuple[Any, BaseException | None]] = {}
    lock = threading.Lock()

    def worker() -> None:
        while (index := todo.get()) is not None:
            try:
                outcome: tuple[Any, BaseException | None] = (work(items[index]), None)
            except BaseException as exc:  # handed to the main thread, raised there
                outcome = (None, exc)
            with lock:
                outcomes[index] = outcome
            wake.put(index)

    workers = min(concurrency, len(items))
    for _ in range(workers):
        threading.Thread(target=worker, name="reconciler-worker", daemon=True).start()
    running: set[int] = set()
    next_index = 0
    give_up_at: float | None = None

    def refill() -> None:
        nonlocal next_index
        while (
            next_index < len(items)
            and len(running) < concurrency
            and not (stopper and stopper.stopped)
        ):
            running.add(next_index)
            todo.put(next_index)
            next_index += 1

    def collect() -> None:
        """Take in every finished item (idempotent: safe to repeat after an interrupt)."""
        with lock:
            ready = [(index, outcomes[index]) for index in running if index in outcomes]
        for index, (result, error) in ready:
            if error is not None:
                raise error
            results[index] = result
            running.discard(index)
        if ready and progress:
            progress(next_index - len(running), len(items))

    try:
        refill()
        while running:
            try:
                wait = 0.5 if give_up_at is None else give_up_at - time.monotonic()
                if wait <= 0:
                    break
                with contextlib.suppress(queue.Empty):
                    wake.get(timeout=wait)
                collect()
                refill()
            except KeyboardInterrupt:
                if stopper is None:
                    if abandon:
                        abandon()
                    raise
                if give_up_at is not None:
                    break  # interrupted twice: abandon now
                stopper.stop()
                give_up_at = time.monotonic() + stopper.grace
    finally:
        for _ in range(workers):
            todo.put(None)  # idle workers end; busy ones end with their request
    collect()
    if running:
        log.debug("abandoning %d item(s) in flight", len(running))
        if abandon:
            abandon()
        for index in running:
            results[index] = IN_FLIGHT
    return results


def plan_projects(
    projects: Sequence[ProjectFile],
    api: ProjectApi,
    env: Mapping[str, str],
    *,
    concurrency: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> Plan:
    """Read each Project's live settings (and roles only where needed) and diff them."""

    def plan_one(project: ProjectFile) -> ProjectPlan:
        try:
            credentials = resolve_credentials(project.auth, env)
            live = api.get_project(project.id, credentials)
            if not isinstance(live, dict):
                raise ConfigError("GET /project did not answer with an object")
            live_objects = read_objects(api, project.id, credentials, project.data, live)
            return diff(
                project.path,
                project.data,
                live,
                auth=project.auth,
                locate=project.locate,
                live_objects=live_objects,
                source=project.source,
            )
        except ReconcilerError as exc:
            return ProjectPlan.failed(project.path, project.id, str(exc), project.auth)

    plans = run_each(
        projects, plan_one, concurrency=concurrency, progress=progress, abandon=api.abort
    )
    return Plan(
        api_url=api.api_url,
        projects=tuple(p for p in plans if isinstance(p, ProjectPlan)),
        created_at=now_utc(),
    )


def read_objects(
    api: ProjectApi,
    project_id: str,
    credentials: Credentials,
    desired: Mapping,
    live: Mapping,
) -> LiveObjects:
    """The reads a plan needs beyond GET /project, and no more (SPEC sections 3 and 9):
    each managed kind's list; the role list when a role reference must be resolved; one
    GET per managed live object whose compared fields the list does not carry; /m2m/me
    only when pruning M2M clients under M2M credentials."""
    kinds = objects.managed_kinds(desired)
    lists = {kind.name: api.list_objects(kind, project_id, credentials) for kind in kinds}
    roles = lists.get(ROLE.name)
    if roles is None and (
        needs_role_lookup(desired, normalise_live(live))
        or (M2M in kinds and objects.names_roles(desired))
    ):
        roles = api.list_objects(ROLE, project_id, credentials)
    details = {}
    for kind in kinds:
        matching = objects.match(kind, objects.desired_objects(desired, kind), lists[kind.name])
        for object_id in objects.objects_to_read(matching):
            details[object_id] = api.get_object(kind, project_id, credentials, object_id)
    me = None
    pruning_m2m = M2M in kinds and M2M.key in (desired.get("prune") or ())
    if pruning_m2m and isinstance(credentials, ClientCredentials):
        me = str(api.m2m_me(project_id, credentials).get("id"))
    return LiveObjects(lists=lists, details=details, roles=roles, me=me)
