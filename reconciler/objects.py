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
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reconciler.kinds import KINDS, ROLE, Kind
from reconciler.secretvalues import SecretValue, Source, secret_action

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
    """Whether a managed object names roles (an M2M client's `roles`, a function's
    `executionRole`), which then resolve through the role list."""
    return any(
        fields.get(name)
        for kind in KINDS
        if kind.role_fields
        for fields in desired_objects(desired, kind).values()
        for name in kind.role_fields
    )


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
    kind: Kind,
    declared: Mapping[str, Mapping[str, Any]],
    live: Sequence[Mapping],
    only: Collection[str] | None = None,
) -> Matching:
    """Pair each declared object with its live one; names are identity, `renamedFrom` moves.

    `only` matches just the declared objects it names (a saved plan's entries, verified
    at apply); the others still claim their names, so no live object they hold is taken
    for one to delete."""
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
        if only is not None and name not in only:
            continue
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
    if not matching.kind.item_get:
        return []
    return [
        str(m.live["id"])
        for m in matching.matches
        if m.live is not None and m.error is None and matching.kind.needs_get(m.managed)
    ]


def live_clients(
    m2m: Matching | None, listed: Sequence[Mapping[str, Any]]
) -> tuple[dict[str, str], frozenset[str]]:
    """The live M2M clients a secret's value may come from: name -> id (a declared
    client by its name after the plan, renamed or not), and the names two live clients
    share (which name no one client)."""
    by_name: dict[str, list[str]] = {}
    for item in listed:
        by_name.setdefault(str(item.get("name")), []).append(str(item.get("id")))
    for m in m2m.matches if m2m else ():
        if m.live is not None and m.error is None:
            by_name[m.name] = [str(m.live["id"])]
    clients = {name: ids[0] for name, ids in by_name.items() if len(ids) == 1}
    return clients, frozenset(name for name, ids in by_name.items() if len(ids) > 1)


def clients_named(desired: Mapping[str, Any], kind: Kind) -> dict[str, Source]:
    """The M2M clients a concealed kind's values come from: {secret name: its source}."""
    if not kind.concealed:
        return {}
    found = {name: Source.of(fields) for name, fields in desired_objects(desired, kind).items()}
    return {name: s for name, s in found.items() if s is not None and s.client is not None}


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
                raise no_role_named(what, role_name, self.names())
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


def no_role_named(what: str, name: Any, names: Sequence[str]) -> ValueError:
    """The error for a role name that resolves nowhere: the closest name, then them all."""
    available = ", ".join(names) or "(none)"
    return ValueError(
        f"{what}: no role named {name!r} in this Project{did_you_mean(name, names)} "
        f"(roles: {available})"
    )


def did_you_mean(name: Any, names: Iterable[str]) -> str:
    """`; did you mean 'X'?` for the closest of `names` to a misspelt one, or ''."""
    import difflib  # here, not at the top: only a misspelt name needs it

    close = difflib.get_close_matches(str(name), list(names), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


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


Problem = tuple[Any, ...]  # (object name, message, *the path of the field it is about)


@dataclass(frozen=True)
class KnownValues:
    """What a plan knows about the values of a concealed kind's objects (secrets): the
    desired values it has and the live ones it could read, by name (never shown), and
    about the M2M clients they may come from."""

    desired: Mapping[str, SecretValue] = field(default_factory=dict)
    live: Mapping[str, SecretValue] = field(default_factory=dict)
    rotate: frozenset[str] = frozenset()  # clients whose rotation was asked for (--rotate)
    new_clients: frozenset[str] = frozenset()  # M2M clients this plan creates
    live_clients: Mapping[str, str] = field(default_factory=dict)  # name -> id (one each)
    shared_names: frozenset[str] = frozenset()  # names two live M2M clients have
    me: str | None = None  # the id of the M2M client the run authenticates as, if known


PlannedKind = tuple[list[dict[str, Any]], list[str], list[str], list[Problem]]


def plan_kind(
    matching: Matching,
    details: Mapping[str, Mapping[str, Any]],
    index: RoleIndex,
    *,
    prune: bool,
    me: str | None = None,
    local: Mapping[str, Mapping[str, Any]] | None = None,
    values: KnownValues | None = None,
) -> PlannedKind:
    """(object changes as dicts, names not managed, names kept, problems) for one kind;
    a problem is (object name, message, *the path below the object it is about).

    `details` holds the GET answers by id; `me` is the calling M2M client's id, which
    prune never deletes. `local` holds, by object name, what plan read beside the file
    for a pseudo-field (a function's `code` and `zip`), or the `error` reading it met;
    `values` what the plan knows of a concealed kind's values (secrets).
    """
    kind = matching.kind
    if kind.concealed:
        return plan_values(matching, values or KnownValues(), prune=prune)
    local = local or {}
    changes: list[dict[str, Any]] = []
    problems: list[Problem] = []
    for m in matching.matches:
        if m.error:
            problems.append((m.name, m.error))
            continue
        read = local.get(m.name, {})
        if "error" in read:
            problems.append((m.name, f"{kind.name} {m.name!r}: {read['error']}", *read["at"]))
            continue
        try:
            desired = _resolved(kind, m.name, m.fields, index)
        except ValueError as exc:
            problems.append((m.name, str(exc)))
            continue
        desired.update((name, read[name]) for name in kind.pseudo_fields if name in read)
        if m.live is None:
            why = kind.create_problem(m.fields)
            if why:
                problems.append((m.name, f"{kind.name} {m.name!r}: {why}"))
                continue
            after = {"name": m.name, **desired}
            changes.append(_object_change(kind, m.name, None, CREATE, {}, after, read))
            continue
        why = kind.key_problem(m.live.get(kind.key_field))
        if why:
            problems.append((m.name, f"{kind.name} {m.name!r}: {why}"))
            continue
        live = {**m.live, **details.get(str(m.live["id"]), {})}
        before: dict[str, Any] = {"name": live.get("name")}
        after = {"name": m.name}
        for name, value in desired.items():
            live_value = _live_value(kind, name, live, index)
            if not _same(kind, name, live_value, value):
                before[name], after[name] = live_value, value
        if len(after) == 1 and not m.renamed_from:
            continue  # in sync
        action = RENAME if m.renamed_from else UPDATE
        if not m.renamed_from:
            before.pop("name"), after.pop("name")
        changes.append(_object_change(kind, m.name, live, action, before, after, read))
    return _with_unclaimed(matching, changes, problems, prune=prune, me=me)


def _with_unclaimed(
    matching: Matching,
    changes: list[dict[str, Any]],
    problems: list[Problem],
    *,
    prune: bool,
    me: str | None,
) -> PlannedKind:
    """The live objects the file does not name: deleted with prune (but the calling
    client, kept), else listed as not managed."""
    not_managed, kept = [], []
    for item in matching.unclaimed:
        name = str(item.get("name"))
        if not prune:
            not_managed.append(name)
        elif me is not None and str(item.get("id")) == me:
            kept.append(name)
        elif why := matching.kind.key_problem(item.get(matching.kind.key_field)):
            problems.append((name, f"{matching.kind.name} {name!r}: {why}"))
        else:
            changes.append(_object_change(matching.kind, name, item, DELETE, {}, {}))
    return changes, not_managed, kept, problems


def plan_values(matching: Matching, known: KnownValues, *, prune: bool) -> PlannedKind:
    """One concealed kind (secrets): each declared object's action from what the plan
    knows of its value (`secretvalues.secret_action`); its entry carries `valueSource`,
    never a value or a hash of one, and no field changes."""
    kind = matching.kind
    changes: list[dict[str, Any]] = []
    problems: list[Problem] = []
    for m in matching.matches:
        source = Source.of(m.fields)
        if m.error or source is None:
            problems.append((m.name, m.error or f"{kind.name} {m.name!r}: no value source"))
            continue
        why = _client_problem(kind, m.name, source, known)
        if why:
            problems.append((m.name, why))
            continue
        new_client = source.client in known.new_clients
        rotate = source.client in known.rotate
        action = secret_action(
            source,
            m.live is not None,
            known.desired.get(m.name),
            known.live.get(m.name),
            new_client=new_client,
            rotate=rotate,
        )
        if action == CREATE and source.rotates and not new_client and not rotate:
            problems.append(
                (
                    m.name,
                    f"{kind.name} {m.name!r}: its value is a new secret of M2M client "
                    f"{source.client!r}, which exists: rotating it breaks every other holder "
                    "of its current secret, so it is rotated only on request: --rotate "
                    f"PROJECT_ID:{m.name}",
                )
            )
            continue
        if action is not None:
            change = _object_change(kind, m.name, m.live, action, {}, {})
            changes.append({**change, "valueSource": source.text})
    return _with_unclaimed(matching, changes, problems, prune=prune, me=None)


def _client_problem(kind: Kind, name: str, source: Source, known: KnownValues) -> str | None:
    """Why the M2M client a value comes from cannot give it, or None."""
    client = source.client
    if client is None:
        return None
    what = f"{kind.name} {name!r}: valueFrom.m2mClient {client!r}"
    if client in known.shared_names:
        return f"{what}: two live M2M clients have that name; rename one by hand first"
    if client not in known.new_clients and client not in known.live_clients:
        named = ", ".join(sorted(known.live_clients)) or "(none)"
        hint = did_you_mean(client, sorted({*known.new_clients, *known.live_clients}))
        return f"{what} is neither declared in m2mClients nor live{hint} (M2M clients: {named})"
    rotating = source.rotates and client in known.rotate
    if rotating and known.me is not None and known.live_clients.get(client) == known.me:
        return f"{what} is the client this run authenticates as: it is never rotated"
    return None


def _resolved(
    kind: Kind, object_name: str, fields: Mapping[str, Any], index: RoleIndex
) -> dict[str, Any]:
    """The file's fields with role references as {id, name} (a list of them: sorted)."""
    desired = {}
    for name in kind.write_fields:
        if name == "name" or name not in fields:
            continue
        value = fields[name]
        if name in kind.role_fields:
            what = f"{kind.name} {object_name!r}: {name}"
            if isinstance(value, list):
                roles = [index.resolve(role, what) for role in value]
                value = sorted(roles, key=lambda r: (str(r["name"]), json.dumps(r["id"])))
            else:
                value = index.resolve(value, what)
        desired[name] = value
    return desired


def _live_value(
    kind: Kind, name: str, live: Mapping[str, Any], index: RoleIndex | None = None
) -> Any:
    """A field's live value as the file writes it: role lists as sorted [{id, name}], a
    role id as {id, name} (named from the role list when it was read), a pseudo-field
    derived from the object, an absent value as the API's default."""
    if name in kind.live_values:
        return kind.live_values[name](live)
    value = live.get(kind.api_name(name))
    if value is None and name in kind.live_defaults:
        return kind.live_defaults[name]
    if name in kind.role_fields and name in kind.api_names:  # one role, read as its id
        if value is None:
            return None
        named = [r for r in (index.live if index else None) or () if r.get("id") == value]
        return {"id": value, "name": named[0].get("name") if len(named) == 1 else None}
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
    local: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One object change as the plan file holds it; `live` is None for a create."""
    fields = [f for f in kind.compared_fields if f in after or f in before]
    changes = [
        {"field": f, "before": before.get(f) if action != CREATE else None, "after": after.get(f)}
        for f in fields
        if action != DELETE
    ]
    change = {
        "kind": kind.name,
        "name": name,
        "id": None if live is None else str(live[kind.key_field]),
        "action": action,
        "changes": changes,
        "body": body_of(kind, changes),
        "liveFingerprint": None if live is None else object_fingerprint(kind, changes, live),
    }
    if kind.plan_extras is not None:
        change.update(kind.plan_extras(changes, local or {}))
    for key in kind.plan_keys:  # every entry of the kind holds them (null: nothing to say)
        change.setdefault(key, None)
    return change


def object_fingerprint(kind: Kind, changes: Sequence[Mapping[str, Any]], live: Mapping) -> str:
    """sha256 over the live name and the live values of the fields a change writes, as they
    compare: what a saved plan's apply re-reads (one GET) to refuse a stale object."""
    values = {"name": live.get("name")}
    for change in changes:
        name = change["field"]
        if name != "name":
            values[name] = kind.normalise(name, _live_value(kind, name, live))
    return sha256_of(values)


def body_of(kind: Kind, changes: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The API body a list of changes derives, in the API's names: role references as
    ids (or refs); pseudo-fields (a function's code) are written by a later phase."""
    body = {}
    for change in changes:
        name, value = change["field"], change["after"]
        if name in kind.pseudo_fields:
            continue
        if name in kind.role_fields:
            value = (
                [role["id"] for role in value or ()]
                if isinstance(value, list)
                else (value or {}).get("id")
            )
        body[kind.api_name(name)] = value
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
