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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from reconciler import objects
from reconciler.answers import Pages
from reconciler.client import ProjectApi
from reconciler.credentials import (
    AccessToken,
    ClientCredentials,
    Credentials,
    auth_key,
    resolve_credentials,
)
from reconciler.errors import AuthError, ConfigError, ReconcilerError
from reconciler.files import ProjectFile
from reconciler.kinds import KINDS, M2M, ROLE, Kind
from reconciler.logs import debug
from reconciler.schedule import Countdown, Pool, Tasks
from reconciler.secretvalues import CLIENT_ID, ENV, LITERAL, SecretValue, Source, from_env, literal

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


@dataclass
class PlanReads:
    """What one Project's plan read that its apply checks before any write, for an apply
    in the same run (the same credentials), so that it is not read again: /m2m/me's id
    (read when pruning M2M clients under M2M credentials), and the live M2M clients
    secrets' values come from (the M2M list, and the `GET /m2m/{id}` answers of those
    read)."""

    me: str | None = None
    clients: list[dict] = field(default_factory=list)
    details: dict[str, dict] = field(default_factory=dict)


class ValueReads:
    """Whether each credential of the run may read secret values, learned from its first
    read: plan credentials never may (the read-only policy has no `Zambda:GetSecret`),
    a person's or apply's usually may. The first read of a credential goes alone; a 403
    is remembered for the run, so each credential is refused at most once and every
    later secret of it is `compare` (its value compared at apply) without a request."""

    def __init__(self) -> None:
        self._allowed: dict[Any, bool] = {}
        self._locks: dict[Any, threading.Lock] = {}
        self._guard = threading.Lock()

    def read(self, credentials: Credentials, read: Callable[[], SecretValue]) -> SecretValue | None:
        """`read()`'s value, or None when these credentials may not read values."""
        who = _identity(credentials)
        with self._guard:
            lock = self._locks.setdefault(who, threading.Lock())
        with lock:  # held across the first read only: the others wait for its answer
            known = self._allowed.get(who)
            if known is False:
                return None
            if known is None:
                try:
                    value = read()
                except AuthError as exc:
                    if exc.status != 403:
                        raise
                    self._allowed[who] = False
                    why = "these credentials may not read secret values: compared at apply"
                    debug(__name__, why)
                    return None
                self._allowed[who] = True
                return value
        try:
            return read()
        except AuthError as exc:
            if exc.status != 403:
                raise
            return None


def _identity(credentials: Credentials) -> Any:
    """Which credential this is, in memory only (a token is never printed)."""
    if isinstance(credentials, AccessToken):
        return ("token", credentials.token)
    return ("client", credentials.client_id)


class Planner:
    """Plans Projects as they are added: each Project's reads go to the pool at once, and
    :meth:`plan` assembles the plans in the order asked for once every one is in.

    Projects added earlier have priority on the pool, so they finish first and the
    reads held in memory stay bounded however many Projects a run holds. `rotate` holds
    the (Project id, secret name) pairs given to --rotate.
    """

    def __init__(
        self,
        api: ProjectApi,
        env: Mapping[str, str],
        pool: Pool,
        *,
        progress: Callable[[int, int], None] | None = None,
        root: str | None = None,
        copies: Any = None,
        rotate: frozenset[tuple[str, str]] = frozenset(),
    ) -> None:
        self.api = api
        self.copies = copies  # an apply's zips.PrivateCopies: what plan reads, it uploads
        self.env = env
        self.pool = pool
        self.progress = progress
        from reconciler.includes import RepositoryRoots

        self.roots = RepositoryRoots(root)  # where a Project's paths (a function's zip) start
        self.rotate = rotate
        self.value_reads = ValueReads()
        self.projects = Countdown()
        self.reads: dict[str, PlanReads] = {}  # a Project's file -> what apply needs again
        self._plans: dict[str, ProjectPlan] = {}
        self._credentials: dict[tuple[tuple[str, str], ...], Credentials] = {}
        self._lock = threading.Lock()

    def add(self, project: ProjectFile) -> None:
        """Start reading a Project (from the thread that loads the files)."""
        ProjectReader(project, self, self.projects.start()).start()

    def credentials(self, auth: Mapping[str, str] | None) -> Credentials:
        """The credentials an auth block (or its absence) points at, looked up in the
        environment once per run, not once per Project (a thousand Projects share one)."""
        key = auth_key(auth)
        if key not in self._credentials:
            self._credentials[key] = resolve_credentials(auth, self.env)
        return self._credentials[key]

    def finished(
        self, project: ProjectFile, plan: ProjectPlan, reads: PlanReads | None = None
    ) -> None:
        with self._lock:
            self._plans[project.path] = plan
            if reads is not None:
                self.reads[project.path] = reads
        done, total = self.projects.finish()
        if self.progress:
            self.progress(done, total)

    def plan(self, projects: Sequence[ProjectFile]) -> Plan:
        """Wait for every Project added (an interrupt abandons their reads), then the
        plan of `projects`, in that order."""
        self.projects.close()
        # On a thread of its own: an interrupt never lands in the middle of an import.
        threading.Thread(target=warm_up, name="warm-up", daemon=True).start()
        self.pool.wait(self.projects.done, abandon=self.api.abort)
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
    root: str | None = None,
    rotate: frozenset[tuple[str, str]] = frozenset(),
) -> Plan:
    """Read each Project's live settings (and the lists and objects its file manages, and
    roles only where needed) and diff them."""
    pool = pool or Pool(api.budget.concurrency)
    planner = Planner(api, env, pool, progress=progress, root=root, rotate=rotate)
    for project in projects:
        planner.add(project)
    return planner.plan(projects)


class ProjectReader:
    """The reads one Project's plan needs, and no more (SPEC sections 3 and 9), each
    started as soon as what it depends on is known; then the diff.

    Keys order the reads as a one-at-a-time run makes them: the Project, each managed
    kind's list (page after page), the role list when a reference needs it, one GET per
    managed live object whose compared fields its list does not carry, /m2m/me only
    when pruning M2M clients under M2M credentials, then what is read beside the file
    (each function's zip, hashed on the pool while the requests are in flight), then
    secret values.

    Secrets: the M2M list too when a secret's value comes from a client the file does
    not manage, and `GET /m2m/{id}` of a client whose `clientId` is a value (or whose
    rotation was asked for under M2M credentials: it must not be the run's own). Once
    those and the secret list are in, `GET /secret/{name}` of each live secret whose
    desired value the plan has, if the credentials may read values (:class:`ValueReads`).
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
        self.local: dict[str, dict[str, Mapping[str, Any]]] = {}
        self._role_list_asked = False
        self._lock = threading.Lock()
        # Secrets: their sources, what the value reads wait for, the values known.
        self.client_sources = {
            name: source
            for kind in KINDS
            if kind.concealed
            for name, source in objects.clients_named(self.desired, kind).items()
        }
        self.values: dict[str, SecretValue] = {}
        self.live_values: dict[str, SecretValue] = {}
        rotated = [self.client_sources.get(n) for pid, n in planner.rotate if pid == project.id]
        self.rotating = {source.client for source in rotated if source and source.rotates}
        self._waiting: set[Any] = set()
        self._clients: dict[str, str] = {}  # live M2M client name -> id
        self._client_ids: set[str] = set()  # the clients read for secrets

    def start(self) -> None:
        project = self.project
        try:
            self.credentials = self.planner.credentials(project.auth)
        except ReconcilerError as exc:
            self.planner.finished(project, self._failed(str(exc)))
            return
        kinds = self.kinds
        reads = [((0,), self._read_project)]
        listed = list(kinds)
        if self.client_sources and M2M not in kinds:
            listed.append(M2M)  # the clients secrets' values come from
        concealed = [kind for kind in kinds if kind.concealed]
        self._waiting = {("list", kind.name) for kind in concealed}
        if concealed and self.client_sources:
            self._waiting.add(("list", M2M.name))
        for index, kind in enumerate(listed):
            pages = Pages(f"GET {self.api.api_url}{kind.list_path}")
            reads.append(((1, index, 0), partial(self._read_page, kind, index, pages, None)))
        if ROLE not in kinds and objects.names_roles(self.desired):
            self._role_list_asked = True
            reads.append(((2,), self._read_roles))
        pruning_m2m = M2M in kinds and M2M.key in (self.desired.get("prune") or ())
        if pruning_m2m and isinstance(self.credentials, ClientCredentials):
            reads.append(((4,), self._read_me))
        for index, kind in enumerate(kinds):
            if kind.read_local is None:
                continue
            self.local[kind.name] = {}
            declared = objects.desired_objects(self.desired, kind)
            reads += [
                ((5, index, number), partial(self._read_local, kind, name, fields))
                for number, (name, fields) in enumerate(declared.items())
            ]
        self.tasks.spawn_all(reads)

    def _read_project(self) -> None:
        live = self.api.get_project(self.project.id, self.credentials)
        if not isinstance(live, dict):
            raise ConfigError("GET /project did not answer with an object")
        self.live = live
        from reconciler.differ import needs_role_lookup, normalise_live

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
        ids = objects.objects_to_read(matching)
        if kind.name == M2M.name:  # and the clients secrets' values come from
            ids += [i for i in self._clients_to_read(matching, pages.items) if i not in ids]
        with self._lock:
            self._waiting.update(("client", i) for i in self._client_ids & set(ids))
        self.tasks.spawn_all(
            ((3, index, number), partial(self._read_object, kind, object_id))
            for number, object_id in enumerate(ids)
        )
        self._ready(("list", kind.name))

    def _read_object(self, kind: Kind, object_id: str) -> None:
        self.details[object_id] = self.api.get_object(
            kind, self.project.id, self.credentials, object_id
        )
        self._ready(("client", object_id))

    # Secret values ---------------------------------------------------------------------

    def _clients_to_read(self, matching: objects.Matching, listed: Sequence[dict]) -> list[str]:
        """The live M2M clients to GET for secrets: each whose clientId is a value, and
        each to rotate under M2M credentials (to be sure it is not the run's own)."""
        self._clients, _ = objects.live_clients(matching, listed)
        wanted = {
            source.client
            for source in self.client_sources.values()
            if source.field == CLIENT_ID
            or (source.client in self.rotating and isinstance(self.credentials, ClientCredentials))
        }
        self._client_ids = {self._clients[name] for name in wanted if name in self._clients}
        return sorted(self._client_ids)

    def _ready(self, what: Any) -> None:
        """One thing the value reads wait for is in; the last one starts them."""
        with self._lock:
            if what not in self._waiting:
                return
            self._waiting.discard(what)
            if self._waiting:
                return
        self._read_values()

    def _read_values(self) -> None:
        """The desired value of each live secret the plan can know now, and a read of its
        live value to compare it with."""
        reads = []
        for kind in objects.managed_kinds(self.desired):
            if not kind.concealed:
                continue
            live = {str(item.get("name")) for item in self.lists.get(kind.name, ())}
            for name, fields in sorted(objects.desired_objects(self.desired, kind).items()):
                value = self._desired_value(kind, name, Source.of(fields))
                if value is None or name not in live:
                    continue
                self.values[name] = value
                reads.append(((6, kind.name, name), partial(self._read_value, kind, name)))
        self.tasks.spawn_all(reads)

    def _desired_value(self, kind: Kind, name: str, source: Source | None) -> SecretValue | None:
        if source is None or source.rotates:
            return None  # a client's secret cannot be read back: never compared
        if source.kind == LITERAL:
            return literal(self.desired, name, kind.key)
        if source.kind == ENV:
            return from_env(source, self.planner.env)
        detail = self.details.get(self._clients.get(source.client or "", ""), {})
        client_id = detail.get("clientId")
        return SecretValue(client_id).redact() if isinstance(client_id, str) else None

    def _read_value(self, kind: Kind, name: str) -> None:
        value = self.planner.value_reads.read(
            self.credentials,
            lambda: self.api.read_value(kind, self.project.id, self.credentials, name),
        )
        if value is not None:
            self.live_values[name] = value

    def _read_local(self, kind: Kind, name: str, fields: Mapping[str, Any]) -> None:
        root = self.planner.roots.of(self.project.path)
        read = kind.read_local(root, fields, self.planner.copies)
        if read is not None:
            with self._lock:
                self.local[kind.name][name] = read

    def _read_roles(self) -> None:
        self.roles = self.api.list_objects(ROLE, self.project.id, self.credentials)

    def _read_me(self) -> None:
        self.me = str(self.api.m2m_me(self.project.id, self.credentials).get("id"))

    def _diff(self, tasks: Tasks) -> None:
        """Every read is in (or one failed): the Project's plan."""
        from reconciler.differ import LiveObjects, diff

        project = self.project
        failure = tasks.first_failure
        if failure is not None:
            plan = self._failed(str(failure[1]))
        else:
            live_objects = LiveObjects(
                lists=self.lists,
                details=self.details,
                roles=self.lists.get(ROLE.name, self.roles),
                me=self.me or self._own_client(),
                local=self.local,
                values=self.values,
                live_values=self.live_values,
                rotate=frozenset(self.rotating),
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
        self.planner.finished(project, plan, self._kept_for_apply())
        # The tasks hold this reader (their on_idle): without that cycle, what it read is
        # freed now, not by the cyclic collector, which a command runs without (cli.main).
        del self.tasks

    def _kept_for_apply(self) -> PlanReads | None:
        """What an apply of this plan would read again before any write, if anything."""
        if self.me is None and not self.client_sources:
            return None
        return PlanReads(
            me=self.me,
            # The whole list: a client this plan renames is found under its live name.
            clients=list(self.lists.get(M2M.name, ())),
            details={i: self.details[i] for i in self._client_ids if i in self.details},
        )

    def _own_client(self) -> str | None:
        """The id of a client read here that is the one the run authenticates as."""
        if not isinstance(self.credentials, ClientCredentials):
            return None
        for client_id in sorted(self._client_ids):
            if self.details.get(client_id, {}).get("clientId") == self.credentials.client_id:
                return client_id
        return None

    def _failed(self, message: str) -> ProjectPlan:
        from reconciler.plan import ProjectPlan

        project = self.project
        return ProjectPlan.failed(project.path, project.id, message, project.auth)


def warm_up() -> None:
    """Import what comes after the reads (the differ, the renderers) while the first
    answers are awaited: the main thread is idle then, and the run's last answer is
    followed only by the diff and the output."""
    import hashlib  # noqa: F401  (the plan's fingerprints)

    import reconciler.differ
    import reconciler.render  # noqa: F401
