"""diff(desired, live): what a project file would change in its live Project, as a
:class:`~reconciler.plan.ProjectPlan`.

Pure: no I/O. The live settings (and the lists and objects a file manages) come
in as the API returned them; the desired ones as the project file holds them
after ${VAR} substitution. Live is normalised to the file's shape (roles as
{id, name} or None), role names in the file are resolved through the roles as
they will be after the plan (``objects.RoleIndex``; the role list only when
needed), DeepDiff says which managed keys differ, and ``objects.plan_kind`` does
the same for each kind of object. A key absent from the file is unmanaged: it
never enters the diff, the patch or the fingerprint.

The same normalisation serves the reads (`needs_role_lookup`: whether the role list
is needed) and apply (`unconverged`: whether a PATCH's answer is what was asked for).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reconciler import objects
from reconciler.kinds import BY_KEY, KINDS, M2M
from reconciler.plan import (
    CHANGED,
    ERROR,
    IMMUTABLE_KEYS,
    MANAGED_KEYS,
    ROLE_FIELDS,
    UNCHANGED,
    Change,
    ObjectChange,
    ProjectPlan,
    fingerprint,
)
from reconciler.secretvalues import SecretValue


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
    by_name = {c.name: c for c in changes if c.kind == M2M.name}
    declared = set(objects.desired_objects(desired, M2M))
    for item in live_objects.lists.get(M2M.name, ()):
        detail = live_objects.details.get(str(item.get("id")), {})
        held = {str(r.get("id")) for r in detail.get("roles") or () if isinstance(r, Mapping)}
        name = str(item.get("name"))
        if name not in declared:
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
