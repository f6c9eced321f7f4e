"""`apply --plan` verifies what it shows and what it writes.

A plan file's checksum proves that it is intact, not who wrote it, and the checks of
``planfile.py`` only that it is a document `plan` could have written. It could still
say one thing and do another: show ``- m2m tmp-test-client`` and delete another client
by its id, show a rule removed while its body grants ``Allow * on *``, or label the
production Project "SANDBOX (projects/sandbox.yaml)". So before anything is shown or
written, a saved plan is checked against what it was made from:

1. **The files** (:func:`load_plan_files`, before any request): `commit` must be HEAD
   and the files the plan read unchanged there, or, for a plan of uncommitted files,
   they must hash as `filesHash` says (``provenance.py``). Each Project's `file` must
   load, hold that Project's id and give its `auth`.
2. **What is live** (:func:`verify_saved_plan`): what each changed Project's plan
   writes is read once, all at once within the run's request budget: `GET /project`,
   one `GET` per entry with an id (an object it updates, renames or deletes), the
   list of each kind it has an entry without an id in (a name it creates must still
   be free) or of a kind with no GET of its fields (secrets, buckets: each entry by
   name), the M2M list when a secret's value comes from a client, and the role list
   when role references must resolve. What moved since
   the plan was made (its fingerprints, a name taken, an object gone, a reference
   that no longer resolves) makes it stale.
3. **The planning code**: every entry of the plan — settings changes and object
   changes, with their `before`, `after`, `body` and `source`, the Project's `name` —
   must be what ``differ.diff`` computes again from the files' effective document and
   those live values, restricted to the objects the plan names (its `focus`). It is
   the same code `plan` ran, so whatever a kind adds to its entries is verified with
   it. `liveFingerprint` is left aside (it only dates the read); a kind whose plan
   defers a decision to apply says what may match (``Kind.verify_saved``). The
   settings changes must be exactly the recomputed ones; an object write the
   recomputation finds beyond the plan's (a live object created since, in a kind it
   prunes) is not added: apply never writes more than the plan shows.

A difference is ``not a valid plan file: REASON`` naming the Project and the entry; a
stale plan stays "stale plan". Either way nothing is written. What apply then shows
and writes is the recomputed plan: Projects named as they are live, files as verified.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, NoReturn

from reconciler import provenance
from reconciler.answers import describe_json
from reconciler.client import ProjectApi
from reconciler.credentials import resolve_credentials
from reconciler.differ import LiveObjects, diff, needs_role_lookup, normalise_live
from reconciler.errors import ApiError, ConfigError, PlanFileError, ReconcilerError, RefusedError
from reconciler.escape import plural, redact_values
from reconciler.files import PROJECT_SUFFIXES, ProjectFile, load_projects
from reconciler.fleet import PlanReads
from reconciler.kinds import BY_NAME, M2M, ROLE, Kind, policy_rules
from reconciler.objects import desired_objects, managed_kinds, object_fingerprint
from reconciler.plan import (
    ERROR,
    ROLE_FIELDS,
    Change,
    ObjectChange,
    Plan,
    ProjectPlan,
    fingerprint,
)
from reconciler.schedule import Pool, Tasks
from reconciler.secretvalues import Source

# Compared everywhere but here: a hash of what plan read, checked as staleness instead.
TIMING_KEYS = frozenset({"liveFingerprint"})


# --- 1. the files ----------------------------------------------------------------------


def load_plan_files(
    plan: Plan, path: str, env: Mapping[str, str], root: str | None = None
) -> dict[str, ProjectFile]:
    """The project files the plan was made from, by Project id, after checking that they
    are those files: HEAD is the plan's commit and they are unchanged there (or they hash
    as its filesHash), and each Project's `file` holds that Project and its `auth`.

    With a commit, only the files of the Projects apply works on are loaded (50 changed
    of 1,000 load 50): HEAD and those files' state at it say all there is to know. A
    filesHash covers every file the plan read, so without a commit every file is loaded.

    Labels are paths as `plan` showed them, so they are read from the current folder (the
    repository root in the workflows). Raises PlanFileError or ConfigError, before any
    request."""
    if not plan.projects:
        return {}
    base = provenance.plan_root(plan.projects[0].file, root)
    indexed = list(enumerate(plan.projects))
    if plan.commit is not None:
        indexed = [(index, project) for index, project in indexed if project.has_work]
    labels = list(dict.fromkeys(project.file for _, project in indexed))
    for index, project in indexed:
        if not project.file.endswith(PROJECT_SUFFIXES) or not os.path.isfile(project.file):
            _invalid(
                path,
                f"projects[{index}].file: {project.file} is not a project file here (apply "
                "--plan reads the files the plan was made from, from the folder it was made in)",
            )
    if plan.commit is not None:
        here = provenance.head(base)
        if here != plan.commit:
            at = f"HEAD is {here}" if here else f"{base} is not at a git commit"
            _invalid(
                path,
                f"it was made at commit {plan.commit}, and {at}; check out that commit, "
                "or make a new plan",
            )
    if not labels:
        return {}
    result = load_projects(labels, env, root=root)
    if result.problems:
        more = len(result.problems) - 1
        also = f" (and {plural(more, 'more problem')}: `reconciler validate` lists them)"
        raise ConfigError(
            f"the project files the plan was made from do not load here: {result.problems[0]}"
            + (also if more else "")
            + "; nothing was applied"
        )
    by_label = {project.path: project for project in result.projects}
    files = {}
    for index, project in indexed:
        loaded = by_label.get(project.file)
        if loaded is None:  # the loader shows the path otherwise (`./x.yaml` as `x.yaml`)
            _invalid(path, f"projects[{index}].file: {project.file} is not how plan names it")
        elif loaded.id != project.project_id:
            _invalid(
                path,
                f"projects[{index}].file: {project.file} is the file of Project {loaded.id}, "
                f"not {project.project_id}",
            )
        elif (loaded.auth or None) != (project.auth or None):
            _invalid(path, f"projects[{index}].auth: not the auth {project.file} gives")
        files[project.project_id] = loaded
    read = provenance.files_read((p.path, p.fragments) for p in result.projects)
    if plan.commit is not None:
        changed = provenance.uncommitted(read, base)
        if changed:
            _invalid(
                path,
                f"it was made from the files of commit {plan.commit}, and "
                f"{', '.join(changed)} {'differs' if len(changed) == 1 else 'differ'} from "
                "that commit here (uncommitted changes)",
            )
    elif provenance.files_hash(read, base) != plan.files_hash:
        _invalid(
            path,
            f"the files it was made from changed since (filesHash does not match "
            f"{', '.join(read)})",
        )
    return files


def _invalid(path: str, reason: str) -> NoReturn:
    raise PlanFileError(f"{path}: not a valid plan file: {reason}")


# --- 2. what is live -------------------------------------------------------------------


class _Stale(ReconcilerError):
    """What changed live since the plan was made."""


class _Forged(ReconcilerError):
    """An entry of the plan that the files and the live values do not give."""


@dataclass
class _Check:
    """One changed Project's verification: what it reads, then the recomputation."""

    project: ProjectPlan
    file: ProjectFile
    api: ProjectApi
    rotate: frozenset[str] = frozenset()  # M2M clients whose rotation --rotate asks for
    credentials: Any = None
    tasks: Tasks | None = None
    live: dict[str, Any] | None = None
    objects: dict[str, dict] = field(default_factory=dict)  # id -> GET answer
    lists: dict[str, list[dict]] = field(default_factory=dict)  # kind name -> list
    roles: list[dict] | None = None
    roles_asked: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    # What the planning code reads beside the files (a function's zip, hashed from the
    # private copy apply uploads): kind name -> object name -> what `Kind.read_local` gave.
    copies: Any = None
    roots: Any = None
    local: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def focus(self) -> dict[str, set[str]]:
        """The objects the plan names, by kind: all that the recomputation plans."""
        focus: dict[str, set[str]] = {}
        for change in self.project.objects:
            focus.setdefault(change.kind, set()).add(change.name)
        return focus

    def reads(self) -> list[tuple[tuple, Any]]:
        """The reads, keyed in plan order (a one-at-a-time run's order).

        A kind with no GET of its fields (a secret's would answer its value; a bucket
        has none) is read as its list, once: what the plan creates must be free, what
        it changes or deletes still there as the plan saw it. Secrets whose values come
        from M2M clients read the client list too (which clients exist live)."""
        reads: list[tuple[tuple, Any]] = [((0,), self._read_project)]
        listed: dict[str, set[str]] = {}  # kind name -> the names it creates
        for index, change in enumerate(self.project.objects):
            if change.id is None or not BY_NAME[change.kind].item_get:
                names = listed.setdefault(change.kind, set())
                if change.action == "create":
                    names.add(change.name)
            else:
                reads.append(((1, index), partial(self._read_object, change)))
        if _clients_named(self.project) and M2M.name not in listed:
            listed[M2M.name] = set()
        for index, (kind_name, names) in enumerate(listed.items()):
            reads.append(((2, index), partial(self._read_list, BY_NAME[kind_name], names)))
        if ROLE.name not in listed and _resolves_roles(self.file.data, self.focus):
            self.roles_asked = True
            reads.append(((3,), self._read_roles))
        for index, (kind_name, names) in enumerate(sorted(self.focus.items())):
            kind = BY_NAME[kind_name]
            if kind.read_local is None:
                continue
            self.local[kind_name] = {}
            declared = desired_objects(self.file.data, kind)
            reads += [
                ((4, index, name), partial(self._read_local, kind, name, declared[name]))
                for name in sorted(names)
                if name in declared
            ]
        return reads

    def _read_local(self, kind: Kind, name: str, fields: Mapping[str, Any]) -> None:
        root = self.roots.of(self.file.path) if self.roots is not None else "."
        read = kind.read_local(root, fields, self.copies)
        if read is not None:
            with self.lock:
                self.local[kind.name][name] = read

    def _read_project(self) -> None:
        self.live = self.api.get_project(self.project.project_id, self.credentials)
        live = normalise_live(self.live)
        if fingerprint(live, self.project.managed_keys) != self.project.live_fingerprint:
            raise _Stale("settings")
        if needs_role_lookup(self.file.data, live):
            with self.lock:
                ask = not self.roles_asked and ROLE.name not in self._listed_kinds()
                self.roles_asked = True
            if ask and self.tasks is not None:
                self.tasks.spawn((3,), self._read_roles)

    def _listed_kinds(self) -> set[str]:
        return {change.kind for change in self.project.objects if change.id is None}

    def _read_object(self, change: ObjectChange) -> None:
        kind = BY_NAME[change.kind]
        try:
            answer = self.api.get_object(kind, self.project.project_id, self.credentials, change.id)
        except ApiError as exc:
            if exc.status == 404:
                raise _Stale(f"{kind.name} {change.name!r} is gone") from None
            raise
        self.objects[str(change.id)] = answer
        _unchanged(kind, change, answer)

    def _read_list(self, kind: Kind, creates: set[str]) -> None:
        items = self.api.list_objects(kind, self.project.project_id, self.credentials)
        self.lists[kind.name] = items
        # A name the plan creates must still be free, or apply would make a second one.
        taken = sorted(creates & {str(item.get("name")) for item in items})
        if taken:
            raise _Stale(f"{kind.name} {', '.join(map(repr, taken))} exists now")
        if kind.item_get:
            return
        # Its entries with an id (the object's name): still there, as the plan saw them.
        live = {str(item.get(kind.key_field)): item for item in items}
        for change in self.project.objects:
            if change.kind != kind.name or change.id is None:
                continue
            found = live.get(str(change.id))
            if found is None:
                raise _Stale(f"{kind.name} {change.name!r} is gone")
            _unchanged(kind, change, found)

    def _read_roles(self) -> None:
        self.roles = self.api.list_objects(ROLE, self.project.project_id, self.credentials)

    def kept_for_apply(self) -> PlanReads:
        """What apply's checks would read again: the M2M list, and the clients read."""
        m2m_ids = {str(c.id) for c in self.project.objects if c.kind == M2M.name and c.id}
        return PlanReads(
            clients=list(self.lists[M2M.name]),
            details={i: answer for i, answer in self.objects.items() if i in m2m_ids},
        )

    # --- 3. the planning code ----------------------------------------------------------

    def recomputed(self) -> ProjectPlan:
        """The plan of the objects the saved plan names (and the settings), computed
        again from the files and what was read, by the code `plan` runs."""
        focus = self.focus
        # A list read for another kind's sake (the M2M clients secrets' values come from).
        lists = {name: items for name, items in self.lists.items() if name not in focus}
        for kind_name in focus:
            items = list(self.lists.get(kind_name, ()))
            known = {str(item.get("id")) for item in items}
            for change in self.project.objects:
                got = self.objects.get(str(change.id))
                if change.kind == kind_name and got is not None and str(change.id) not in known:
                    items.append(got)
                    known.add(str(change.id))
            lists[kind_name] = items
        file = self.file
        return diff(
            file.path,
            file.data,
            self.live or {},
            auth=file.auth,
            locate=file.locate,
            live_objects=LiveObjects(
                lists=lists,
                details=self.objects,
                roles=self.lists.get(ROLE.name, self.roles),
                local=self.local,
                rotate=self.rotate,
            ),
            source=file.source,
            focus=focus,
        )

    def verified(self) -> ProjectPlan:
        """The plan to show and apply for this Project, or _Forged naming the first entry
        the files and the live values do not give."""
        saved, mine = self.project, self.recomputed()
        where = f"{saved.file} ({saved.project_id})"
        if mine.status == ERROR:
            # The same files gave no error when the plan was made: something live moved
            # (a role an object names was deleted, say).
            raise _Stale(f"now {mine.error}")
        if mine.name != saved.name:
            raise _Forged(
                f"{where}: the Project is named {describe_json(mine.name)} live, not "
                f"{describe_json(saved.name)} as the plan says"
            )
        for key, ours, theirs in (
            ("managedKeys", list(mine.managed_keys), list(saved.managed_keys)),
            ("prune", list(mine.prune), list(saved.prune)),
        ):
            if ours != theirs:
                raise _Forged(
                    f"{where}: {key} is {describe_json(theirs)} in the plan; the files give "
                    f"{describe_json(ours)}"
                )
        reason = changes_difference(saved.changes, mine.changes)
        if reason is None and _shown(mine.patch) != saved.patch:
            reason = f"patch is {describe_json(saved.patch)}; the changes give {_shown(mine.patch)}"
        if reason:
            raise _Forged(f"{where}: {reason}")
        ours_by_name = {(change.kind, change.name): change for change in mine.objects}
        chosen = []
        for change in saved.objects:
            what = f"{where}: {change.kind} {change.name!r}"
            reason = self._identity(change)
            if reason:
                raise _Forged(f"{what}: {reason}")
            kind = BY_NAME[change.kind]
            ours = ours_by_name.get((change.kind, change.name))
            if kind.verify_saved is not None:
                try:
                    chosen.append(kind.verify_saved(change, ours))
                except ValueError as exc:
                    raise _Forged(f"{what}: {exc}") from None
                continue
            reason = entry_difference(change, ours)
            if reason:
                raise _Forged(f"{what}: {reason}")
            chosen.append(replace(ours, live_fingerprint=change.live_fingerprint))
        return replace(
            mine,
            objects=tuple(chosen),
            live_fingerprint=saved.live_fingerprint,
            not_managed=(),
            kept=(),
        )

    def _identity(self, change: ObjectChange) -> str | None:
        """The object a write names by id must be, live, the one the plan names."""
        got = self.objects.get(str(change.id))
        if got is None:
            return None
        expected = change.renamed_from if change.action == "rename" else change.name
        live_name = got.get("name")
        if live_name == expected:
            return None
        return (
            f"the plan would {change.action} the {change.kind} with id {change.id}, which is "
            f"{describe_json(live_name)} live, not {describe_json(expected)}"
        )


def verify_saved_plan(
    plan: Plan,
    path: str,
    files: Mapping[str, ProjectFile],
    api: ProjectApi,
    env: Mapping[str, str],
    pool: Pool,
    *,
    copies: Any = None,
    roots: Any = None,
    rotate: Collection[tuple[str, str]] = (),
    kept: dict[str, PlanReads] | None = None,
) -> Plan:
    """The plan to show and apply: each Project apply works on (changed, or with secret
    values to compare) recomputed from its files and what apply read live, once it holds
    exactly the saved entries. `copies` and `roots` give what the planning code reads
    beside the files (a function's zip: the private copy apply uploads, under each
    Project's repository root); `rotate` the (Project id, secret name) pairs given to
    --rotate. `kept`, given, is filled with what apply's checks before any write would
    read again (``fleet.PlanReads`` by file: the M2M list read here with the same
    credentials). A forged entry refuses the whole apply (PlanFileError), so does a stale one
    (RefusedError); a Project that cannot be read fails on its own (an error in the plan
    returned: nothing is written to it), so the others still apply."""
    changed = plan.to_apply
    done = threading.Event()
    remaining = [len(changed)]
    lock = threading.Lock()

    def checked(tasks: Tasks) -> None:
        with lock:
            remaining[0] -= 1
            if remaining[0] == 0:
                done.set()

    checks = []
    for order, project in enumerate(changed):
        check = _Check(
            project,
            files[project.project_id],
            api,
            _rotating(project, rotate),
            copies=copies,
            roots=roots,
        )
        check.tasks = Tasks(pool, order, checked, errors=ReconcilerError)
        checks.append(check)
        try:
            check.credentials = resolve_credentials(project.auth, env)
        except ReconcilerError as exc:
            check.tasks.failures[(0,)] = exc
            checked(check.tasks)
            continue
        check.tasks.spawn_all(check.reads())
    if not changed:
        done.set()
    pool.wait(done, abandon=api.abort)

    forged, stale = [], []
    verified: dict[str, ProjectPlan] = {}
    for check in checks:
        project = check.project
        failure = check.tasks.first_failure if check.tasks else None
        if failure is not None:
            if isinstance(failure[1], _Stale):
                stale.append(f"{project.file} ({project.project_id}): {failure[1]}")
            else:
                verified[project.project_id] = ProjectPlan.failed(
                    project.file, project.project_id, str(failure[1]), project.auth
                )
            continue
        try:
            verified[project.project_id] = check.verified()
        except _Forged as exc:
            forged.append(str(exc))
            continue
        except _Stale as exc:
            stale.append(f"{project.file} ({project.project_id}): {exc}")
            continue
        if kept is not None and M2M.name in check.lists:
            kept[project.file] = check.kept_for_apply()
    if forged:
        _invalid(path, "; ".join(forged) + "; nothing was applied")
    if stale:
        raise RefusedError(
            f"stale plan: live values changed since the plan was made: {', '.join(stale)}; "
            "nothing was applied. Make a new plan and review it."
        )
    projects = tuple(
        verified.get(p.project_id) or replace(p, name=None, not_managed=(), kept=())
        for p in plan.projects
    )
    return replace(plan, projects=projects)


def _unchanged(kind: Kind, change: ObjectChange, live: Mapping[str, Any]) -> None:
    """_Stale unless the live object is as the plan saw it (its `liveFingerprint`)."""
    changes = [c.to_dict() for c in change.changes]
    if object_fingerprint(kind, changes, live) != change.live_fingerprint:
        raise _Stale(f"{kind.name} {change.name!r}")


def _clients_named(project: ProjectPlan) -> set[str]:
    """The M2M clients the plan's secret entries take their values from."""
    names = set()
    for change in project.objects:
        if change.value_source is not None:
            try:
                client = Source.parse(change.value_source).client
            except ValueError:
                continue  # the plan-file check says so
            if client is not None:
                names.add(client)
    return names


def _rotating(project: ProjectPlan, rotate: Collection[tuple[str, str]]) -> frozenset[str]:
    """The M2M clients whose rotation --rotate asks for in this Project."""
    asked = {name for project_id, name in rotate if project_id == project.project_id}
    clients = set()
    for change in project.objects:
        if change.name in asked and change.value_source is not None:
            source = Source.parse(change.value_source)
            if source.rotates and source.client is not None:
                clients.add(source.client)
    return frozenset(clients)


def _resolves_roles(desired: Mapping[str, Any], focus: Mapping[str, Collection[str]]) -> bool:
    """Whether planning these objects (`focus`: kind name -> names) and the settings
    resolves role references through the Project's role list whatever is live: one of
    the objects names roles, or the file declares roles and a default role (a declared
    role's id is known only from the list). Otherwise only a default role whose name
    differs from live needs the list (:func:`needs_role_lookup`, after GET /project)."""
    kinds = managed_kinds(desired)
    if ROLE in kinds and any(desired.get(key) is not None for key in ROLE_FIELDS):
        return True
    for kind in kinds:
        declared = desired_objects(desired, kind)
        for name in focus.get(kind.name, ()):
            fields = declared.get(name) or {}
            if any(fields.get(role_field) for role_field in kind.role_fields):
                return True
    return False


# --- what differs ------------------------------------------------------------------------


def _shown(value: Any) -> Any:
    """A recomputed value as the plan file holds it: credential values redacted."""
    return redact_values(value)


def _described(kind: Kind | None, name: str, value: Any) -> str:
    """A value in a reason: a policy as its rules (as the plan shows them), else JSON."""
    if kind is not None and name in kind.policy_fields:
        return "[" + "; ".join(policy_rules(value)) + "]"
    return describe_json(value, 200)


def changes_difference(
    saved: Sequence[Change], recomputed: Sequence[Change], kind: Kind | None = None
) -> str | None:
    """The first way a plan's field changes (of an object of `kind`; the settings' without
    one) differ from the recomputed ones, or None."""
    ours = {change.field: _shown(change.to_dict()) for change in recomputed}
    for change in saved:
        theirs = change.to_dict()
        mine = ours.pop(change.field, None)
        if mine is None:
            return (
                f"{change.field}: the plan changes it; the files and what is live leave it as it is"
            )
        for key, says in (("before", "live it is"), ("after", "the files give")):
            if theirs[key] != mine[key]:
                return (
                    f"{change.field}: {key} is {_described(kind, change.field, theirs[key])} in "
                    f"the plan; {says} {_described(kind, change.field, mine[key])}"
                )
        if theirs["source"] != mine["source"]:
            return (
                f"{change.field}: the plan says it comes from {describe_json(theirs['source'])}; "
                f"it comes from {describe_json(mine['source'])}"
            )
    for name, mine in ours.items():
        return (
            f"{name}: the plan leaves it as it is; the files change it to "
            f"{_described(kind, name, mine['after'])}"
        )
    return None


def entry_difference(saved: ObjectChange, recomputed: ObjectChange | None) -> str | None:
    """The first way a plan's object entry differs from the recomputed one (the kinds'
    default for ``Kind.verify_saved``), or None when they are the same."""
    if recomputed is None:
        return f"the plan would {saved.action} it; the files and what is live change nothing"
    theirs = {k: v for k, v in saved.to_dict().items() if k not in TIMING_KEYS}
    mine = {k: v for k, v in _shown(recomputed.to_dict()).items() if k not in TIMING_KEYS}
    if theirs["action"] != mine["action"]:
        return (
            f"the plan would {theirs['action']} it; the files and what is live {mine['action']} it"
        )
    reason = changes_difference(saved.changes, recomputed.changes, BY_NAME[saved.kind])
    if reason:
        return reason
    for key in dict.fromkeys([*theirs, *mine]):
        if theirs.get(key) != mine.get(key):
            return (
                f"{key} is {describe_json(theirs.get(key), 200)} in the plan; the files and "
                f"what is live give {describe_json(mine.get(key), 200)}"
            )
    return None
