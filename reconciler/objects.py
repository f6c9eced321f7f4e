"""One differ for every kind of object: match by name, compare managed fields, prune.

Pure: the live lists and objects come in as the API returned them; out come
:class:`~reconciler.plan.ObjectChange` values and the problems that make a
Project's plan an error. Which reads a plan needs is decided here too
(:func:`lists_needed`, :func:`objects_to_read`), so the reading code in
``fleet.py`` stays a loop over kinds.

Role references (the settings' default roles, an M2M client's `roles`) resolve
through a :class:`RoleIndex`: the roles as they will be after the plan, where a
role the plan creates has no id yet and is written ``{"ref": {"kind": "role",
"name": …}}`` wherever an id would go.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reconciler.kinds import KINDS, M2M, ROLE, Kind

CREATE, UPDATE, RENAME, DELETE = "create", "update", "rename", "delete"


def role_ref(name: str) -> dict[str, Any]:
    """Where an id would go, for a role this plan creates (resolved at apply)."""
    return {"ref": {"kind": ROLE.name, "name": name}}


def is_ref(value: Any) -> bool:
    return isinstance(value, Mapping) and set(value) == {"ref"}


def sha256_of(value: Any) -> str:
    import hashlib  # here, not at the top: a plan's reads need not wait for it (warm_up)

    return "sha256:" + hashlib.sha256(_COMPACT.encode(value).encode()).hexdigest()


# One encoder for every call (json.dumps with options builds a new one each time).
_COMPACT = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


# --- which reads a plan needs ------------------------------------------------------------


def managed_kinds(desired: Mapping[str, Any]) -> tuple[Kind, ...]:
    """The kinds a file manages, in write order; an absent kind is never read."""
    return tuple(kind for kind in KINDS if isinstance(desired.get(kind.key), Mapping))


def desired_objects(desired: Mapping[str, Any], kind: Kind) -> dict[str, dict[str, Any]]:
    """A kind's objects as name -> fields (an object written as null manages only its name)."""
    return {name: dict(fields or {}) for name, fields in (desired.get(kind.key) or {}).items()}


def names_roles(desired: Mapping[str, Any]) -> bool:
    """Whether a managed M2M client gives roles (which then resolve through the role list)."""
    return any(fields.get("roles") for fields in desired_objects(desired, M2M).values())


@dataclass(frozen=True)
class Match:
    """A declared object and the live one it is (by its name, or by its old name)."""

    name: str
    fields: Mapping[str, Any]  # the file's fields, without renamedFrom
    live: Mapping[str, Any] | None  # the list's entry, None when the plan creates it
    renamed_from: str | None = None
    error: str | None = None

    @property
    def managed(self) -> tuple[str, ...]:
        return tuple(self.fields)


@dataclass(frozen=True)
class Matching:
    kind: Kind
    matches: tuple[Match, ...]
    unclaimed: tuple[Mapping[str, Any], ...]  # live objects the file does not name


def match(
    kind: Kind, declared: Mapping[str, Mapping[str, Any]], live: Sequence[Mapping]
) -> Matching:
    """Pair each declared object with its live one; names are identity, `renamedFrom` moves."""
    by_name: dict[str, list[Mapping[str, Any]]] = {}
    for item in live:
        by_name.setdefault(item.get("name"), []).append(item)
    claimed: set[str] = set()
    matches = []
    for name, raw in declared.items():
        fields = {k: v for k, v in raw.items() if k != "renamedFrom"}
        old = raw.get("renamedFrom")
        claimed.add(name)
        if old:
            claimed.add(old)
        now, before = by_name.get(name, []), by_name.get(old, []) if old else []
        error = None
        for label, found in ((name, now), (old, before)):
            if len(found) > 1:
                ids = ", ".join(sorted(str(item.get("id")) for item in found))
                error = (
                    f"{kind.name} {label!r}: {len(found)} live {kind.key} have that name ({ids}); "
                    "rename or delete one by hand first"
                )
        if error is None and now and before:
            error = (
                f"{kind.name} {name!r} is renamedFrom {old!r}, but both names are live; "
                "remove renamedFrom, or delete one of them"
            )
        if error:
            matches.append(Match(name, fields, None, error=error))
        elif now:
            matches.append(Match(name, fields, now[0]))
        elif before:
            matches.append(Match(name, fields, before[0], renamed_from=old))
        else:
            matches.append(Match(name, fields, None))
    unclaimed = tuple(item for item in live if item.get("name") not in claimed)
    return Matching(kind, tuple(matches), unclaimed)


def objects_to_read(matching: Matching) -> list[str]:
    """Ids of the live objects whose managed fields the list does not carry (one GET each)."""
    return [
        str(m.live["id"])
        for m in matching.matches
        if m.live is not None and m.error is None and matching.kind.needs_get(m.managed)
    ]


# --- role references ---------------------------------------------------------------------


@dataclass
class RoleIndex:
    """The Project's roles as they will be after the plan: name -> id (or a ref)."""

    live: Sequence[Mapping[str, Any]] | None  # the role list, None when it was not read
    planned: dict[str, Any] = field(default_factory=dict)  # declared name -> live id or ref
    renamed: dict[str, str] = field(default_factory=dict)  # live id -> its name after the plan

    def names(self) -> list[str]:
        after = {self.renamed.get(str(r.get("id")), r.get("name")) for r in self.live or ()}
        return sorted({str(n) for n in after | set(self.planned)})

    def available(self) -> str:
        return ", ".join(self.names()) or "(none)"

    def resolve(self, value: Any, what: str) -> dict[str, Any]:
        """{id, name} for a file's role value; ValueError says why it means nothing."""
        role_id, role_name = (
            (None, value)
            if isinstance(value, str)
            else (
                value.get("id"),
                value.get("name"),
            )
        )
        if role_id is None:
            if role_name in self.planned:
                return {"id": self.planned[role_name], "name": role_name}
            named = [
                r
                for r in self.live or ()
                if r.get("name") == role_name and str(r.get("id")) not in self.renamed
            ]
            if not named:
                raise ValueError(
                    f"{what}: no role named {role_name!r} in this Project "
                    f"(roles: {self.available()})"
                )
            if len(named) > 1:
                ids = ", ".join(sorted(str(r.get("id")) for r in named))
                raise ValueError(
                    f"{what}: {len(named)} roles are named {role_name!r} ({ids}); "
                    "give the role as {id: ...}"
                )
            found = named[0]
        else:
            found = next((r for r in self.live or () if r.get("id") == role_id), None)
            if found is None:
                raise ValueError(
                    f"{what}: no role with id {role_id} in this Project (roles: {self.available()})"
                )
        found_id = str(found["id"])
        name = self.renamed.get(found_id, found.get("name"))
        if role_name is not None and name != role_name:
            raise ValueError(f"{what}: role {found_id} is named {name!r}, not {role_name!r}")
        return {"id": found_id, "name": name}


def role_index(roles: Matching | None, live_roles: Sequence[Mapping] | None) -> RoleIndex:
    """The index a plan resolves role references through."""
    index = RoleIndex(live=live_roles)
    for m in roles.matches if roles else ():
        if m.live is not None:
            index.planned[m.name] = str(m.live["id"])
            index.renamed[str(m.live["id"])] = m.name
        elif m.error is None:
            index.planned[m.name] = role_ref(m.name)
    return index


# --- the diff --------------------------------------------------------------------------


def plan_kind(
    matching: Matching,
    details: Mapping[str, Mapping[str, Any]],
    index: RoleIndex,
    *,
    prune: bool,
    me: str | None = None,
) -> tuple[list[dict[str, Any]], list[str], list[str], list[tuple[str, str]]]:
    """(object changes as dicts, names not managed, names kept, (name, problem) pairs)
    for one kind.

    `details` holds the GET answers by id; `me` is the calling M2M client's id, which
    prune never deletes.
    """
    kind = matching.kind
    changes: list[dict[str, Any]] = []
    problems: list[tuple[str, str]] = []  # (object name, message)
    for m in matching.matches:
        if m.error:
            problems.append((m.name, m.error))
            continue
        try:
            desired = _resolved(kind, m.name, m.fields, index)
        except ValueError as exc:
            problems.append((m.name, str(exc)))
            continue
        if m.live is None:
            why = kind.create_problem(m.fields)
            if why:
                problems.append((m.name, f"{kind.name} {m.name!r}: {why}"))
                continue
            changes.append(
                _object_change(kind, m.name, None, CREATE, {}, {"name": m.name, **desired})
            )
            continue
        live = {**m.live, **details.get(str(m.live["id"]), {})}
        before: dict[str, Any] = {"name": live.get("name")}
        after: dict[str, Any] = {"name": m.name}
        for name, value in desired.items():
            live_value = _live_value(kind, name, live.get(name))
            if not _same(kind, name, live_value, value):
                before[name], after[name] = live_value, value
        if len(after) == 1 and not m.renamed_from:
            continue  # in sync
        action = RENAME if m.renamed_from else UPDATE
        if not m.renamed_from:
            before.pop("name"), after.pop("name")
        changes.append(_object_change(kind, m.name, live, action, before, after))
    not_managed, kept = [], []
    for item in matching.unclaimed:
        name = str(item.get("name"))
        if not prune:
            not_managed.append(name)
        elif me is not None and str(item.get("id")) == me:
            kept.append(name)
        else:
            changes.append(_object_change(kind, name, item, DELETE, {}, {}))
    return changes, not_managed, kept, problems


def _resolved(
    kind: Kind, object_name: str, fields: Mapping[str, Any], index: RoleIndex
) -> dict[str, Any]:
    """The file's fields with role references as sorted [{id, name}] lists."""
    desired = {}
    for name in kind.write_fields:
        if name == "name" or name not in fields:
            continue
        value = fields[name]
        if name in kind.role_fields:
            what = f"{kind.name} {object_name!r}: {name}"
            roles = [index.resolve(role, what) for role in value or ()]
            value = sorted(roles, key=lambda r: (str(r["name"]), json.dumps(r["id"])))
        desired[name] = value
    return desired


def _live_value(kind: Kind, name: str, value: Any) -> Any:
    if name in kind.role_fields:
        roles = [
            {"id": r.get("id"), "name": r.get("name")}
            for r in value or ()
            if isinstance(r, Mapping)
        ]
        return sorted(roles, key=lambda r: (str(r["name"]), str(r["id"])))
    return value


def _same(kind: Kind, name: str, live: Any, desired: Any) -> bool:
    if live == desired:  # equal values are, without normalising them
        return True
    a, b = kind.normalise(name, live), kind.normalise(name, desired)
    if a == b:
        return True
    if name in kind.policy_fields:
        from deepdiff import DeepDiff

        return not DeepDiff(a, b, ignore_order=True)
    return False


def _object_change(
    kind: Kind,
    name: str,
    live: Mapping[str, Any] | None,
    action: str,
    before: Mapping[str, Any],
    after: Mapping[str, Any],
) -> dict[str, Any]:
    """One object change as the plan file holds it; `live` is None for a create."""
    fields = [f for f in kind.write_fields if f in after or f in before]
    changes = [
        {"field": f, "before": before.get(f) if action != CREATE else None, "after": after.get(f)}
        for f in fields
        if action != DELETE
    ]
    return {
        "kind": kind.name,
        "name": name,
        "id": None if live is None else str(live["id"]),
        "action": action,
        "changes": changes,
        "body": body_of(kind, changes),
        "liveFingerprint": None if live is None else object_fingerprint(kind, changes, live),
    }


def object_fingerprint(kind: Kind, changes: Sequence[Mapping[str, Any]], live: Mapping) -> str:
    """sha256 over the live name and the live values of the fields a change writes, as they
    compare: what a saved plan's apply re-reads (one GET) to refuse a stale object."""
    values = {"name": live.get("name")}
    for change in changes:
        name = change["field"]
        if name != "name":
            values[name] = kind.normalise(name, _live_value(kind, name, live.get(name)))
    return sha256_of(values)


def body_of(kind: Kind, changes: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The API body a list of changes derives: role references as ids (or refs)."""
    body = {}
    for change in changes:
        value = change["after"]
        if change["field"] in kind.role_fields:
            value = [role["id"] for role in value or ()]
        body[change["field"]] = value
    return body


def role_delete_problems(
    deletes: Sequence[Mapping[str, Any]],
    live_roles: Sequence[Mapping[str, Any]],
    defaults_after: Mapping[str, Any],
    m2m_after: Mapping[str, set[str]],
    m2m_released: Mapping[str, int],
) -> list[str]:
    """Roles prune may not delete: still a default role, or still held.

    `defaults_after` maps the settings' role keys to the role id they hold after the
    plan; `m2m_after` maps each managed M2M client to the role ids it holds after the
    plan; `m2m_released` counts, per role id, the managed clients this plan takes it from.
    """
    counts = {str(r.get("id")): r.get("memberCount") or 0 for r in live_roles}
    problems = []
    for delete in deletes:
        role_id, name = delete["id"], delete["name"]
        keys = [key for key, held in defaults_after.items() if held == role_id]
        holders = sorted(client for client, ids in m2m_after.items() if role_id in ids)
        held = counts.get(role_id, 0) - m2m_released.get(role_id, 0)
        if keys:
            problems.append(f"role {name!r} cannot be pruned: it is still the {' and '.join(keys)}")
        elif holders:
            problems.append(
                f"role {name!r} cannot be pruned: M2M client(s) {', '.join(holders)} still hold it"
            )
        elif held > 0:
            problems.append(
                f"role {name!r} cannot be pruned: held by {held} user(s), developer(s) or "
                "M2M client(s)"
            )
    return problems
