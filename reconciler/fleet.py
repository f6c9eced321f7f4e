"""Many Projects at once: choosing them (--project, --shard) and reading their live
state into a Plan, every read as soon as what it depends on is known.

A Project's `GET /project` and the lists of the kinds it manages start together
(a paged list page after page; different kinds in parallel); each object's `GET`
starts as soon as its kind's list is read; the role list only when a reference
needs it. The reads go to the run's pool (schedule.py), which with the client's
budget decides when each is sent. Projects start as their files are loaded
(:class:`Planner`), and the plan is assembled in file order whatever order the
answers come in. An error in one Project becomes that Project's status and never
stops the others; within a Project, the error reported is the one a
one-read-at-a-time run would meet first.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from reconciler import objects
from reconciler.client import (
    ClientCredentials,
    Credentials,
    Pages,
    ProjectApi,
    auth_key,
    resolve_credentials,
)
from reconciler.errors import ConfigError, ReconcilerError
from reconciler.files import ProjectFile
from reconciler.kinds import M2M, ROLE, Kind
from reconciler.schedule import Pool, Tasks

if TYPE_CHECKING:
    from reconciler.plan import Plan, ProjectPlan


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
    import hashlib  # here, not at the top: start-up (--shard is rare)

    return int(hashlib.sha256(project_id.encode()).hexdigest(), 16) % count + 1


def select(
    projects: Sequence[ProjectFile],
    filters: Iterable[str] = (),
    shard: tuple[int, int] | None = None,
) -> list[ProjectFile]:
    """The Projects a run covers. A --project value matching no file is an error."""
    filters = list(filters)
    check_filters(projects, filters)
    return [p for p in projects if chosen(p, filters, shard)]


def chosen(project: ProjectFile, filters: Sequence[str], shard: tuple[int, int] | None) -> bool:
    """Whether one Project is in the run (decided as its file is loaded)."""
    if filters and project.id not in filters and project.stem not in filters:
        return False
    return not shard or shard_of(project.id, shard[1]) == shard[0]


def check_filters(projects: Sequence[ProjectFile], filters: Sequence[str]) -> None:
    unmatched = [f for f in filters if not any(f in (p.id, p.stem) for p in projects)]
    if unmatched:
        raise ConfigError(
            "--project matches no project file (by id or file stem): " + ", ".join(unmatched)
        )


class Planner:
    """Plans Projects as they are added: each Project's reads go to the pool at once, and
    :meth:`plan` assembles the plans in the order asked for once every one is in.

    Projects added earlier have priority on the pool, so they finish first and the
    reads held in memory stay bounded however many Projects a run holds.
    """

    def __init__(
        self,
        api: ProjectApi,
        env: Mapping[str, str],
        pool: Pool,
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.api = api
        self.env = env
        self.pool = pool
        self.progress = progress
        self.done = threading.Event()
        self._plans: dict[str, ProjectPlan] = {}
        self._credentials: dict[tuple[tuple[str, str], ...], Credentials] = {}
        self._lock = threading.Lock()
        self._added = 0
        self._finished = 0
        self._closed = False

    def add(self, project: ProjectFile) -> None:
        """Start reading a Project (from the thread that loads the files)."""
        with self._lock:
            self._added += 1
            order = self._added
        ProjectReader(project, self, order).start()

    def close(self) -> None:
        """No more Projects will be added."""
        with self._lock:
            self._closed = True
            if self._finished == self._added:
                self.done.set()

    def credentials(self, auth: Mapping[str, str] | None) -> Credentials:
        """The credentials an auth block (or its absence) points at, looked up in the
        environment once per run, not once per Project (a thousand Projects share one)."""
        key = auth_key(auth)
        if key not in self._credentials:
            self._credentials[key] = resolve_credentials(auth, self.env)
        return self._credentials[key]

    def finished(self, project: ProjectFile, plan: ProjectPlan) -> None:
        with self._lock:
            self._plans[project.path] = plan
            self._finished += 1
            done, total = self._finished, self._added
            if self._closed and done == total:
                self.done.set()
        if self.progress:
            self.progress(done, total)

    def plan(self, projects: Sequence[ProjectFile]) -> Plan:
        """Wait for every Project added (an interrupt abandons their reads), then the
        plan of `projects`, in that order."""
        self.close()
        # On a thread of its own: an interrupt never lands in the middle of an import.
        threading.Thread(target=warm_up, name="warm-up", daemon=True).start()
        self.pool.wait(self.done, abandon=self.api.abort)
        from reconciler.plan import Plan, now_utc

        return Plan(
            api_url=self.api.api_url,
            projects=tuple(self._plans[p.path] for p in projects),
            created_at=now_utc(),
        )


def plan_projects(
    projects: Sequence[ProjectFile],
    api: ProjectApi,
    env: Mapping[str, str],
    *,
    pool: Pool | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Plan:
    """Read each Project's live settings (and the lists and objects its file manages, and
    roles only where needed) and diff them."""
    pool = pool or Pool(api.budget.concurrency)
    planner = Planner(api, env, pool, progress=progress)
    for project in projects:
        planner.add(project)
    return planner.plan(projects)


class ProjectReader:
    """The reads one Project's plan needs, and no more (SPEC sections 3 and 9), each
    started as soon as what it depends on is known; then the diff.

    Keys order the reads as a one-at-a-time run makes them: the Project, each managed
    kind's list (page after page), the role list when a reference needs it, one GET per
    managed live object whose compared fields its list does not carry, and /m2m/me
    only when pruning M2M clients under M2M credentials.
    """

    def __init__(self, project: ProjectFile, planner: Planner, order: int) -> None:
        self.project = project
        self.planner = planner
        self.api = planner.api
        self.desired = project.data
        self.kinds = objects.managed_kinds(self.desired)
        self.tasks = Tasks(planner.pool, order, self._diff, errors=ReconcilerError)
        self.live: dict[str, Any] | None = None
        self.lists: dict[str, list[dict]] = {}
        self.details: dict[str, dict] = {}
        self.roles: list[dict] | None = None
        self.me: str | None = None
        self._role_list_asked = False
        self._lock = threading.Lock()

    def start(self) -> None:
        project = self.project
        try:
            self.credentials = self.planner.credentials(project.auth)
        except ReconcilerError as exc:
            self.planner.finished(project, self._failed(str(exc)))
            return
        kinds = self.kinds
        reads = [((0,), self._read_project)]
        for index, kind in enumerate(kinds):
            pages = Pages(f"GET {self.api.api_url}{kind.list_path}")
            reads.append(((1, index, 0), partial(self._read_page, kind, index, pages, None)))
        if ROLE not in kinds and M2M in kinds and objects.names_roles(self.desired):
            self._role_list_asked = True
            reads.append(((2,), self._read_roles))
        pruning_m2m = M2M in kinds and M2M.key in (self.desired.get("prune") or ())
        if pruning_m2m and isinstance(self.credentials, ClientCredentials):
            reads.append(((4,), self._read_me))
        self.tasks.spawn_all(reads)

    def _read_project(self) -> None:
        live = self.api.get_project(self.project.id, self.credentials)
        if not isinstance(live, dict):
            raise ConfigError("GET /project did not answer with an object")
        self.live = live
        from reconciler.plan import needs_role_lookup, normalise_live

        if ROLE not in self.kinds and needs_role_lookup(self.desired, normalise_live(live)):
            with self._lock:
                ask, self._role_list_asked = not self._role_list_asked, True
            if ask:
                self.tasks.spawn((2,), self._read_roles)

    def _read_page(self, kind: Kind, index: int, pages: Pages, cursor: str | None) -> None:
        items, cursor = self.api.list_page(kind, self.project.id, self.credentials, cursor)
        if pages.add(items, cursor):
            next_page = partial(self._read_page, kind, index, pages, cursor)
            self.tasks.spawn((1, index, pages.pages), next_page)
            return
        self.lists[kind.name] = pages.items
        matching = objects.match(kind, objects.desired_objects(self.desired, kind), pages.items)
        self.tasks.spawn_all(
            ((3, index, number), partial(self._read_object, kind, object_id))
            for number, object_id in enumerate(objects.objects_to_read(matching))
        )

    def _read_object(self, kind: Kind, object_id: str) -> None:
        self.details[object_id] = self.api.get_object(
            kind, self.project.id, self.credentials, object_id
        )

    def _read_roles(self) -> None:
        self.roles = self.api.list_objects(ROLE, self.project.id, self.credentials)

    def _read_me(self) -> None:
        self.me = str(self.api.m2m_me(self.project.id, self.credentials).get("id"))

    def _diff(self, tasks: Tasks) -> None:
        """Every read is in (or one failed): the Project's plan."""
        from reconciler.plan import LiveObjects, diff

        project = self.project
        failure = tasks.first_failure
        if failure is not None:
            plan = self._failed(str(failure[1]))
        else:
            live_objects = LiveObjects(
                lists=self.lists,
                details=self.details,
                roles=self.lists.get(ROLE.name, self.roles),
                me=self.me,
            )
            try:
                plan = diff(
                    project.path,
                    self.desired,
                    self.live or {},
                    auth=project.auth,
                    locate=project.locate,
                    live_objects=live_objects,
                    source=project.source,
                )
            except ReconcilerError as exc:
                plan = self._failed(str(exc))
        self.planner.finished(project, plan)
        # The tasks hold this reader (their on_idle): without that cycle, what it read is
        # freed now, not by the cyclic collector, which a command runs without (cli.main).
        del self.tasks

    def _failed(self, message: str) -> ProjectPlan:
        from reconciler.plan import ProjectPlan

        project = self.project
        return ProjectPlan.failed(project.path, project.id, message, project.auth)


def warm_up() -> None:
    """Import what comes after the reads (the differ, the renderers) while the first
    answers are awaited: the main thread is idle then, and the run's last answer is
    followed only by the diff and the output."""
    import hashlib  # noqa: F401  (the plan's fingerprints)

    import reconciler.plan
    import reconciler.render  # noqa: F401
