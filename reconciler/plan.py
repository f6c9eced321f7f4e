"""Plans as plain data: Change, ObjectChange, ProjectPlan and Plan, and
diff(desired, live).

Pure: no I/O. The live settings (and the lists and objects a file manages) come
in as the API returned them; the desired ones as the project file holds them
after ${VAR} substitution. Live is normalised to the file's shape (roles as
{id, name} or None), role names in the file are resolved through the roles as
they will be after the plan (``objects.RoleIndex``; the role list only when
needed), DeepDiff says which managed keys differ, and ``objects.plan_kind`` does
the same for each kind of object. A key absent from the file is unmanaged: it
never enters the diff, the patch or the fingerprint.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from reconciler import __version__, objects
from reconciler.kinds import BY_KEY, BY_NAME, M2M
from reconciler.objects import sha256_of
from reconciler.secretvalues import SecretValue

FORMAT_VERSION = 3

# The keys a project file can manage, in canonical order (the order of export and of changes).
MANAGED_KEYS = (
    "name",
    "description",
    "signupEnabled",
    "defaultPatientRole",
    "defaultSSOUserRole",
    "fhirVersion",
)
# Role fields: the file's key -> the key PATCH takes (GET returns {id, name}, PATCH takes an id).
ROLE_FIELDS = {
    "defaultPatientRole": "defaultPatientRoleId",
    "defaultSSOUserRole": "defaultSSOUserRoleId",
}
# Asserted, never written.
IMMUTABLE_KEYS = ("fhirVersion",)

UNCHANGED, CHANGED, ERROR = "unchanged", "changed", "error"
COMPARE = "compare"
VALUE_SOURCE = "valueSource"  # a secret's plan-file key: where its value comes from
# Terraform's words for what happens to objects (a `compare` is not counted).
OBJECT_COUNTS = {"create": "add", "update": "change", "rename": "change", "delete": "destroy"}


@dataclass(frozen=True)
class Change:
    """One managed key whose live value differs from the file's.

    `source` is where the desired value is written, "FILE:LINE" (the file as the user
    sees it: the project file, or a fragment it includes), or None.
    """

    field: str
    before: Any
    after: Any
    source: str | None = None

    def to_dict(self) -> dict:
        return {
            "field": self.field,
            "before": self.before,
            "after": self.after,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Change:
        return cls(doc["field"], doc["before"], doc["after"], doc.get("source"))


@dataclass(frozen=True)
class ObjectChange:
    """One object to create, update, rename or delete (SPEC section 9), with its API body.

    `changes` hold the file's view (roles as {id, name}, an id not yet known as a ref);
    `body` holds exactly what the write sends, derived from them. `source` is where the
    object is declared ("FILE:LINE" of its name; for a delete, of the `prune` entry).
    A secret (a concealed kind) has no field changes and an empty body: its
    `valueSource` (one of `extras`, :attr:`value_source`) says where its value comes from
    (`literal`, `env RECONCILER_SECRET_X`, `m2m NAME clientId`), and its action may be
    `compare` (it exists; its value is compared, and written if it differs, at apply).
    """

    kind: str
    name: str
    id: str | None
    action: str
    changes: tuple[Change, ...] = ()
    body: Mapping[str, Any] = field(default_factory=dict)
    live_fingerprint: str | None = None
    source: str | None = None
    # The plan-file keys its kind adds (`Kind.plan_keys`: a function's `zip`, a
    # secret's `valueSource`).
    extras: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "name": self.name,
            "id": self.id,
            "action": self.action,
            "changes": [change.to_dict() for change in self.changes],
            "body": dict(self.body),
            "liveFingerprint": self.live_fingerprint,
            "source": self.source,
            **self.extras,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ObjectChange:
        kind = BY_NAME.get(doc["kind"])
        return cls(
            kind=doc["kind"],
            name=doc["name"],
            id=doc.get("id"),
            action=doc["action"],
            changes=tuple(Change.from_dict(c) for c in doc["changes"]),
            body=dict(doc.get("body") or {}),
            live_fingerprint=doc.get("liveFingerprint"),
            source=doc.get("source"),
            extras={key: doc.get(key) for key in (kind.plan_keys if kind else ())},
        )

    def change_of(self, field_name: str) -> Change | None:
        return next((c for c in self.changes if c.field == field_name), None)

    @property
    def value_source(self) -> str | None:
        """Where a secret's value comes from (its `valueSource`), or None."""
        return self.extras.get(VALUE_SOURCE)

    @property
    def changes_anything(self) -> bool:
        """Whether it is a change (a `compare` is not: its value may already be right)."""
        return self.action != COMPARE

    @property
    def renamed_from(self) -> str | None:
        if self.action != "rename":
            return None
        return next((c.before for c in self.changes if c.field == "name"), None)


@dataclass(frozen=True)
class ProjectPlan:
    """What would happen to one Project: unchanged, changed (with the PATCH) or error."""

    file: str
    project_id: str
    status: str
    changes: tuple[Change, ...] = ()
    patch: Mapping[str, Any] = field(default_factory=dict)
    auth: Mapping[str, str] | None = None
    live_fingerprint: str | None = None
    managed_keys: tuple[str, ...] = ()
    name: str | None = None
    error: str | None = None
    objects: tuple[ObjectChange, ...] = ()
    prune: tuple[str, ...] = ()
    not_managed: tuple[tuple[str, str], ...] = ()  # (kind, name) left alone without prune
    kept: tuple[tuple[str, str], ...] = ()  # (kind, name) prune keeps: the calling client

    @classmethod
    def failed(
        cls, file: str, project_id: str, error: str, auth: Mapping[str, str] | None = None
    ) -> ProjectPlan:
        return cls(file=file, project_id=project_id, status=ERROR, auth=auth, error=error)

    @property
    def compares(self) -> tuple[ObjectChange, ...]:
        """The secrets whose value apply compares (and writes if it differs)."""
        return tuple(change for change in self.objects if not change.changes_anything)

    @property
    def has_work(self) -> bool:
        """Whether apply has anything to do here: changes, or values to compare. A
        Project whose only entries are compares is `unchanged` (nothing is known to
        differ), yet apply compares them and sets back a value changed by hand."""
        return self.status == CHANGED or (self.status == UNCHANGED and bool(self.objects))

    def to_dict(self) -> dict:
        return {
            "file": self.file,
            "projectId": self.project_id,
            "name": self.name,
            "status": self.status,
            "changes": [change.to_dict() for change in self.changes],
            "patch": dict(self.patch),
            "auth": dict(self.auth) if self.auth else None,
            "managedKeys": list(self.managed_keys),
            "liveFingerprint": self.live_fingerprint,
            "error": self.error,
            "prune": list(self.prune),
            "objects": [change.to_dict() for change in self.objects],
            "notManaged": [{"kind": k, "name": n} for k, n in self.not_managed],
            "kept": [{"kind": k, "name": n} for k, n in self.kept],
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ProjectPlan:
        return cls(
            file=doc["file"],
            project_id=doc["projectId"],
            status=doc["status"],
            changes=tuple(Change.from_dict(c) for c in doc.get("changes") or ()),
            patch=dict(doc.get("patch") or {}),
            auth=doc.get("auth"),
            live_fingerprint=doc.get("liveFingerprint"),
            managed_keys=tuple(doc.get("managedKeys") or ()),
            name=doc.get("name"),
            error=doc.get("error"),
            objects=tuple(ObjectChange.from_dict(o) for o in doc.get("objects") or ()),
            prune=tuple(doc.get("prune") or ()),
            not_managed=tuple((o["kind"], o["name"]) for o in doc.get("notManaged") or ()),
            kept=tuple((o["kind"], o["name"]) for o in doc.get("kept") or ()),
        )


@dataclass(frozen=True)
class Plan:
    """Every Project's plan, in file order, for one API.

    `commit` is the git HEAD the plan was made at, when every file it read is committed
    there; otherwise `files_hash` is the hash of those files (``provenance.py``).
    `apply --plan` loads the same files and checks the plan against them.
    """

    api_url: str
    projects: tuple[ProjectPlan, ...]
    created_at: str = ""
    tool: str = f"reconciler {__version__}"
    commit: str | None = None
    files_hash: str | None = None

    @property
    def summary(self) -> dict[str, int]:
        counts = {CHANGED: 0, UNCHANGED: 0, "errors": 0}
        for project in self.projects:
            counts["errors" if project.status == ERROR else project.status] += 1
        return counts

    @property
    def object_summary(self) -> dict[str, int]:
        """Objects as Terraform counts them: to add, to change (updates, renames), to destroy."""
        counts = {"add": 0, "change": 0, "destroy": 0}
        for project in self.projects:
            for change in project.objects:
                if change.action in OBJECT_COUNTS:
                    counts[OBJECT_COUNTS[change.action]] += 1
        return counts

    @property
    def compared(self) -> int:
        """How many secret values apply compares (not counted as changes)."""
        return sum(len(project.compares) for project in self.projects)

    @property
    def manages_objects(self) -> bool:
        return any(p.objects or p.not_managed or p.kept for p in self.projects)

    @property
    def changed(self) -> list[ProjectPlan]:
        return [p for p in self.projects if p.status == CHANGED]

    @property
    def to_apply(self) -> list[ProjectPlan]:
        """The Projects apply works on: the changed ones and those with values to compare."""
        return [p for p in self.projects if p.has_work]

    @property
    def errors(self) -> list[ProjectPlan]:
        return [p for p in self.projects if p.status == ERROR]

    def to_dict(self) -> dict:
        """The plan file of SPEC section 4, checksum included."""
        doc = {
            "formatVersion": FORMAT_VERSION,
            "tool": self.tool,
            "createdAt": self.created_at,
            "apiUrl": self.api_url,
            "commit": self.commit,
            "filesHash": self.files_hash,
            "summary": self.summary,
            "objectSummary": self.object_summary,
            "projects": [project.to_dict() for project in self.projects],
        }
        doc["checksum"] = checksum(doc)
        return doc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Plan:
        return cls(
            api_url=doc["apiUrl"],
            projects=tuple(ProjectPlan.from_dict(p) for p in doc["projects"]),
            created_at=doc.get("createdAt", ""),
            tool=doc.get("tool", ""),
            commit=doc.get("commit"),
            files_hash=doc.get("filesHash"),
        )


def now_utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def checksum(doc: Mapping[str, Any]) -> str:
    """sha256 over the plan document without its "checksum" key."""
    return sha256_of({k: v for k, v in doc.items() if k != "checksum"})


def fingerprint(live: Mapping[str, Any], keys: Iterable[str]) -> str:
    """sha256 over the normalised live values of the keys a file manages."""
    return sha256_of({key: live.get(key) for key in keys})


def normalise_live(project: Mapping[str, Any]) -> dict[str, Any]:
    """The API's Project in the file's shape: every managed key, roles as {id, name} or None."""
    live: dict[str, Any] = {}
    for key in MANAGED_KEYS:
        value = project.get(key)
        if key in ROLE_FIELDS:
            value = {"id": value.get("id"), "name": value.get("name")} if value else None
        live[key] = value
    return live


def managed_keys(desired: Mapping[str, Any]) -> tuple[str, ...]:
    """The keys the file manages, in canonical order (id and auth are not settings)."""
    return tuple(key for key in MANAGED_KEYS if key in desired)


def _role_request(value: Any) -> tuple[str | None, str | None]:
    """(id, name) asked for by a file's role value; a bare string is always a name."""
    if isinstance(value, str):
        return None, value
    return value.get("id"), value.get("name")


def role_needs_lookup(desired: Any, live: Mapping[str, Any] | None) -> bool:
    """Whether a file's role value can only be checked against the Project's role list.

    A name the live role already has, or an id the live role already has, needs no
    look-up; null never does.
    """
    if desired is None:
        return False
    role_id, role_name = _role_request(desired)
    if live is None:
        return True
    if role_id is not None:
        return role_id != live["id"]
    return role_name != live["name"]


def needs_role_lookup(desired: Mapping[str, Any], live: Mapping[str, Any]) -> bool:
    return any(role_needs_lookup(desired[key], live[key]) for key in ROLE_FIELDS if key in desired)


def resolve_role(
    key: str,
    desired: Any,
    live: Mapping[str, Any] | None,
    roles: Sequence[Mapping[str, Any]] | None,
) -> dict[str, Any] | None:
    """The {id, name} a file's role value means, or None; ValueError says why it means nothing."""
    if desired is None:
        return None
    role_id, role_name = _role_request(desired)
    if live is not None and not role_needs_lookup(desired, live):
        if role_name is not None and live["name"] != role_name:
            raise ValueError(f"{key}: role {role_id} is named {live['name']!r}, not {role_name!r}")
        return {"id": live["id"], "name": live["name"]}
    names = sorted({str(r.get("name")) for r in roles or ()})
    available = ", ".join(names) or "(none)"
    if role_id is not None:
        match = [r for r in roles or () if r.get("id") == role_id]
        if not match:
            raise ValueError(
                f"{key}: no role with id {role_id} in this Project (roles: {available})"
            )
        found = match[0]
        if role_name is not None and found.get("name") != role_name:
            raise ValueError(
                f"{key}: role {role_id} is named {found.get('name')!r}, not {role_name!r}"
            )
        return {"id": found["id"], "name": found.get("name")}
    named = [r for r in roles or () if r.get("name") == role_name]
    if not named:
        raise objects.no_role_named(key, role_name, names)
    if len(named) > 1:
        ids = ", ".join(sorted(r["id"] for r in named))
        raise ValueError(
            f"{key}: {len(named)} roles are named {role_name!r} ({ids}); "
            "give the role as {id: ...}"
        )
    return {"id": named[0]["id"], "name": named[0].get("name")}


@dataclass(frozen=True)
class LiveObjects:
    """What a plan read of a Project's objects: each managed kind's list (by kind name),
    the GET answers by id, the role list when references needed it, and the calling
    M2M client's id when prune must keep it; and, by kind and object name, what it read
    beside the file (a function's code hash and zip path, or why it could not)."""

    lists: Mapping[str, Sequence[Mapping[str, Any]]] = field(default_factory=dict)
    details: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    roles: Sequence[Mapping[str, Any]] | None = None
    me: str | None = None
    local: Mapping[str, Mapping[str, Mapping[str, Any]]] = field(default_factory=dict)
    # Secrets: the desired values the plan has and the live ones it read (never shown),
    # and the M2M clients whose rotation was asked for (--rotate), by name.
    values: Mapping[str, SecretValue] = field(default_factory=dict)
    live_values: Mapping[str, SecretValue] = field(default_factory=dict)
    rotate: frozenset[str] = frozenset()


def diff(
    file: str,
    desired: Mapping[str, Any],
    live_project: Mapping[str, Any],
    roles: Sequence[Mapping[str, Any]] | None = None,
    *,
    auth: Mapping[str, str] | None = None,
    locate: Any = None,
    live_objects: LiveObjects | None = None,
    source: Callable[..., str | None] | None = None,
    focus: Mapping[str, Collection[str]] | None = None,
) -> ProjectPlan:
    """Compare a file's settings and objects with the live Project and say what to write.

    `desired` is the file's document (id, auth and unmanaged keys are ignored);
    `roles` is the Project's role list when role fields needed a look-up;
    `live_objects` what was read of the kinds the file manages;
    `locate(*keys)` may return "FILE:LINE:COL" to prefix error messages;
    `source(*keys)` may return "FILE:LINE", where a desired value is written.

    `focus` (kind name -> object names) plans only those objects: what `apply --plan`
    recomputes to verify a saved plan's entries (``verify.py``) from the objects it
    re-read. Only the kinds it names are planned, only the declared objects it names
    are matched (every declared object still claims its names), and a delete comes only
    from the live objects `live_objects` holds; role references resolve as in a whole
    plan when `roles` (the role list) is given.
    """
    source = source or _no_source
    project_id = str(desired.get("id"))
    live = normalise_live(live_project)
    keys = managed_keys(desired)
    live_print = fingerprint(live, keys)
    live_objects = live_objects or LiveObjects(roles=roles)
    roles = live_objects.roles if live_objects.roles is not None else roles
    problems: list[str] = []

    def fail(message: str, *where_keys: Any) -> None:
        where = locate(*where_keys) if locate and where_keys else None
        problems.append(f"{where}: {message}" if where else message)

    kinds = objects.managed_kinds(desired)
    if focus is not None:
        kinds = tuple(kind for kind in kinds if kind.name in focus)
    matchings = {
        kind.name: objects.match(
            kind,
            objects.desired_objects(desired, kind),
            live_objects.lists.get(kind.name, ()),
            only=None if focus is None else focus[kind.name],
        )
        for kind in kinds
    }
    role_matching = matchings.get(objects.ROLE.name)
    if focus is not None and roles is not None and objects.ROLE in objects.managed_kinds(desired):
        # Every declared role, as a whole plan resolves references through them.
        declared_roles = objects.desired_objects(desired, objects.ROLE)
        role_matching = objects.match(objects.ROLE, declared_roles, roles)
    index = objects.role_index(role_matching, roles)
    prune = tuple(word for word in desired.get("prune") or () if isinstance(word, str))

    wanted: dict[str, Any] = {}
    for key in keys:
        value = desired[key]
        if key in ROLE_FIELDS:
            try:
                if roles is None or value is None:
                    value = resolve_role(key, value, live[key], roles)
                else:
                    value = index.resolve(value, key)
            except ValueError as exc:
                fail(str(exc), key)
                continue
        elif key in IMMUTABLE_KEYS and value != live[key]:
            fail(f"{key} is immutable: live {live[key]}, desired {value}", key)
            continue
        wanted[key] = value

    changes = tuple(
        Change(key, live[key], wanted[key], source(key))
        for key in keys
        if key in wanted and _setting_differs(key, live[key], wanted[key])
    )
    patch = {ROLE_FIELDS.get(c.field, c.field): _patch_value(c.field, c.after) for c in changes}

    object_changes: list[ObjectChange] = []
    not_managed: list[tuple[str, str]] = []
    kept: list[tuple[str, str]] = []
    values = _known_values(matchings.get(M2M.name), live_objects)
    for kind in kinds:
        planned, unnamed, keep, kind_problems = objects.plan_kind(
            matchings[kind.name],
            live_objects.details,
            index,
            prune=kind.key in prune,
            me=live_objects.me if kind.name == "m2m" else None,
            values=values,
            local=live_objects.local.get(kind.name),
        )
        for object_name, message, *below in kind_problems:
            fail(message, kind.key, object_name, *below)
        object_changes += [
            ObjectChange.from_dict(_with_sources(kind.key, change, prune, source))
            for change in planned
        ]
        not_managed += [(kind.name, name) for name in unnamed]
        kept += [(kind.name, name) for name in keep]
    for message in _prune_problems(object_changes, live, wanted, roles, desired, live_objects):
        fail(message, "prune")

    common = dict(
        file=file,
        project_id=project_id,
        auth=auth,
        name=live.get("name"),
        live_fingerprint=live_print,
        managed_keys=keys,
        prune=prune,
    )
    if problems:
        return ProjectPlan(status=ERROR, error="; ".join(problems), **common)
    changing = changes or any(change.changes_anything for change in object_changes)
    return ProjectPlan(
        status=CHANGED if changing else UNCHANGED,
        changes=changes,
        patch=patch,
        objects=tuple(_in_write_order(object_changes)),
        not_managed=tuple(not_managed),
        kept=tuple(kept),
        **common,
    )


def _no_source(*keys: Any) -> None:
    return None


def _known_values(m2m: objects.Matching | None, live: LiveObjects) -> objects.KnownValues:
    """What the secrets' planning knows: the values read, and the M2M clients their
    values may come from (live ones by name, the ones this plan creates)."""
    clients, shared = objects.live_clients(m2m, live.lists.get(M2M.name, ()))
    new = {m.name for m in m2m.matches if m.live is None and m.error is None} if m2m else set()
    return objects.KnownValues(
        desired=live.values,
        live=live.live_values,
        rotate=live.rotate,
        new_clients=frozenset(new),
        live_clients=clients,
        shared_names=shared,
        me=live.me,
    )


def _with_sources(
    key: str, change: dict[str, Any], prune: Sequence[str], source: Callable[..., str | None]
) -> dict[str, Any]:
    """An object change with where each desired value is written: the object at its
    name, each field at its own line (a rename's new name at `renamedFrom`), a delete
    at the `prune` entry that allows it."""
    name = change["name"]
    if change["action"] == objects.DELETE:
        return {**change, "source": source("prune", prune.index(key)) if key in prune else None}

    written = BY_KEY[key].pseudo_fields if key in BY_KEY else {}

    def field_source(field_name: str) -> str | None:
        if field_name != "name":
            return source(key, name, written.get(field_name, field_name))
        renamed = change["action"] == objects.RENAME
        return source(key, name, "renamedFrom") if renamed else source(key, name)

    fields = [{**c, "source": field_source(c["field"])} for c in change["changes"]]
    return {**change, "changes": fields, "source": source(key, name)}


def _setting_differs(key: str, live: Any, wanted: Any) -> bool:
    """Role fields compare by id (a rename alone sends no settings write)."""
    if key in ROLE_FIELDS:
        return (live or {}).get("id") != (wanted or {}).get("id")
    return bool(_changed_keys({key: live}, {key: wanted}))


def _in_write_order(changes: Sequence[ObjectChange]) -> list[ObjectChange]:
    """Creates, updates and renames in kind order; deletes last, in reverse kind order;
    by name within a kind (the order is the same whatever order the reads came in)."""
    if not changes:
        return []
    from reconciler.kinds import KINDS

    order = [kind.name for kind in KINDS]
    writes = [c for c in changes if c.action != "delete"]
    deletes = [c for c in changes if c.action == "delete"]
    writes.sort(key=lambda c: (order.index(c.kind), c.name))
    deletes.sort(key=lambda c: (-order.index(c.kind), c.name))
    return writes + deletes


def _prune_problems(
    changes: Sequence[ObjectChange],
    live: Mapping[str, Any],
    wanted: Mapping[str, Any],
    roles: Sequence[Mapping[str, Any]] | None,
    desired: Mapping[str, Any],
    live_objects: LiveObjects,
) -> list[str]:
    """Roles prune may not delete: a default role after the plan, or one still held."""

    deletes = [c.to_dict() for c in changes if c.kind == "role" and c.action == "delete"]
    if not deletes:
        return []
    defaults_after = {
        key: (wanted[key] if key in wanted else live[key] or {}) for key in ROLE_FIELDS
    }
    defaults_after = {k: (v or {}).get("id") for k, v in defaults_after.items()}
    m2m_after: dict[str, set[str]] = {}
    released: dict[str, int] = {}
    by_name = {c.name: c for c in changes if c.kind == "m2m"}
    for item in live_objects.lists.get("m2m", ()):
        detail = live_objects.details.get(str(item.get("id")), {})
        held = {str(r.get("id")) for r in detail.get("roles") or () if isinstance(r, Mapping)}
        name = str(item.get("name"))
        if name not in objects.desired_objects(desired, BY_NAME["m2m"]):
            continue
        change = by_name.get(name)
        after = held
        for field_change in change.changes if change else ():
            if field_change.field == "roles":
                after = {str(r["id"]) for r in field_change.after or ()}
        m2m_after[name] = after
        for role_id in held - after:
            released[role_id] = released.get(role_id, 0) + 1
    return objects.role_delete_problems(deletes, roles or (), defaults_after, m2m_after, released)


def _changed_keys(live: Mapping[str, Any], wanted: Mapping[str, Any]) -> set[str]:
    """The root keys DeepDiff finds different (DeepDiff is only imported when something is)."""
    if live == wanted:
        return set()
    from deepdiff import DeepDiff

    return {str(key) for key in DeepDiff(dict(live), dict(wanted)).affected_root_keys}


def _patch_value(key: str, value: Any) -> Any:
    if key in ROLE_FIELDS:
        return value["id"] if value else None
    return value


def unconverged(plan: ProjectPlan, live_project: Mapping[str, Any]) -> list[str]:
    """The changed keys whose value in the API's answer to a PATCH is not the one asked for."""
    live = normalise_live(live_project)
    missed = []
    for change in plan.changes:
        got, want = live.get(change.field), change.after
        if change.field in ROLE_FIELDS:
            got, want = (got or {}).get("id"), (want or {}).get("id")
        if got != want:
            missed.append(change.field)
    return missed
