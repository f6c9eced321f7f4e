"""The generic object layer: one way to list, read, create, update and delete any kind.

A `Kind` (declared in `kinds.py`) says where its API lives, which fields it
takes and what each verb needs; its `Table` says how its objects sit in
SQLite. Every function here runs inside a transaction the Store opened, takes
the Project id, and never sees another Project's rows: an object of another
Project is NotFound, exactly like one that does not exist (the API's 404).

Objects are addressed by SQLite's rowid inside the store; the API's `{id}`
is an id, a name, or either (`Table.key`). A kind's quirks are `Hooks`:

    check     refuse a create or update (Invalid -> 400, Conflict -> 409)
    columns   the extra columns of a new row (a clientId, a creation date, ...)
    written   after a write (M2M roles live in their own table)
    finish    complete a document (a default policy, roles, fileInfo)
    deleting  refuse a delete (a role that is held)
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.emulator.bodies import FieldType

Document = dict[str, Any]


class StoreError(Exception):
    """Base of the store's refusals; the app maps them to HTTP statuses."""


class NotFound(StoreError, LookupError):
    """No such object (or Project) here: 404."""


class Invalid(StoreError, ValueError):
    """The request breaks the API's rules (e.g. names a role the Project lacks): 400."""


class Conflict(StoreError):
    """The request clashes with an existing object (a Zambda name in use): 409."""


@dataclass(frozen=True)
class Table:
    """How a kind's objects are stored.

    columns: document field -> column, in the order a document shows them.
    json: the fields stored as JSON text. blob: a JSON column holding every
    other write field (applications). hidden: fields the store writes but no
    document shows (passed to `Hooks.finish`). computed: list-only fields, as
    SQL over the row `t`. key: what the path's `{id}` names: "id", "name" or
    "id|name" (an id, else a name).
    """

    name: str
    columns: Mapping[str, str]
    json: frozenset[str] = frozenset()
    blob: str | None = None
    hidden: Mapping[str, str] = field(default_factory=dict)
    computed: Mapping[str, str] = field(default_factory=dict)
    key: str = "id"


class Hooks:
    """A kind's quirks; the default has none."""

    def check(
        self,
        conn: sqlite3.Connection,
        project_id: str,
        doc: Document,
        fields: Mapping[str, Any],
        rowid: int | None,
    ) -> None:
        """Refuse the write of `fields` (doc: the object as it would be; rowid None: a create)."""

    def columns(
        self, project_id: str, object_id: str | None, now: float
    ) -> dict[str, Callable[[], Any]]:
        """How to make the extra column values of a new row; made only for the columns that
        neither the fields nor the caller (a seed) give."""
        return {}

    def written(
        self,
        conn: sqlite3.Connection,
        object_id: str | None,
        fields: Mapping[str, Any],
        created: bool,
    ) -> None:
        """After a create or update of the object with this id (for `joined` fields)."""

    def finish(
        self, conn: sqlite3.Connection, doc: Document, hidden: Mapping[str, Any]
    ) -> Document:
        """The document as the API answers it."""
        return doc

    def deleting(self, conn: sqlite3.Connection, project_id: str, doc: Document) -> None:
        """Refuse the delete of this object (raise Invalid)."""


@dataclass(frozen=True)
class Kind:
    """One kind of object of the Project API, as data.

    title: how messages name it ("M2M client 1234 not found"). path: its
    collection, e.g. /v1/iam/role. fields: the write fields and their types;
    required: those a create needs. actions: verb -> the access-policy action
    it needs (or (action, resource) where the resource differs from
    `resource`); the verbs are those of `VERBS`. listed: the fields of a list
    item (None: the whole document). created: the fields a create answers
    (None: the whole document). defaults: write fields a create fills in.
    replace: a create of an existing key replaces it (secrets, buckets).
    joined: write fields a hook stores (M2M roles), not a column. create_rule:
    what is wrong with a create body beyond its fields' types (one phrase).
    """

    name: str
    title: str
    path: str
    fields: Mapping[str, FieldType]
    resource: str
    actions: Mapping[str, str | tuple[str, str]]
    table: Table
    required: tuple[str, ...] = ("name",)
    listed: tuple[str, ...] | None = None
    created: tuple[str, ...] | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    replace: bool = False
    joined: frozenset[str] = frozenset()
    hooks: Hooks = field(default_factory=Hooks)
    create_rule: Callable[[Mapping[str, Any]], str | None] | None = None

    def endpoints(self) -> list[tuple[str, str, str, str, str]]:
        """(method, path template, verb, action, resource) of every endpoint, literal paths
        before `{id}` ones (so /m2m/me is not read as the id "me")."""
        found = []
        for verb, need in self.actions.items():
            method, suffix = VERBS[verb]
            action, resource = need if isinstance(need, tuple) else (need, self.resource)
            found.append((method, self.path + suffix, verb, action, resource))
        return sorted(found, key=lambda e: "{id}" in e[1])


# verb -> (method, suffix of the kind's path)
VERBS: dict[str, tuple[str, str]] = {
    "list": ("GET", ""),
    "create": ("POST", ""),
    "put": ("PUT", "/{id}"),
    "get": ("GET", "/{id}"),
    "update": ("PATCH", "/{id}"),
    "delete": ("DELETE", "/{id}"),
    "rotate-secret": ("POST", "/{id}/rotate-secret"),
    "s3-upload": ("POST", "/{id}/s3-upload"),
    "me": ("GET", "/me"),
    "v2/list": ("GET", "/v2/list"),
}


# -- reads ---------------------------------------------------------------------


def find(conn: sqlite3.Connection, kind: Kind, project_id: str, key: str) -> int:
    """The rowid of this Project's object named by `key`, or NotFound."""
    table = kind.table
    for column in table.key.split("|"):
        row = conn.execute(
            f"SELECT rowid FROM {table.name} WHERE {column} = ? AND project_id = ?",
            (key, project_id),
        ).fetchone()
        if row is not None:
            return row[0]
    raise NotFound(f"{kind.title} {key} not found")


def read(conn: sqlite3.Connection, kind: Kind, rowid: int) -> Document:
    """The document of one row, as GET {path}/{id} answers it."""
    docs = _select(conn, kind, "t.rowid = ?", (rowid,))
    return docs[0]


def list_items(conn: sqlite3.Connection, kind: Kind, project_id: str) -> list[Document]:
    """Every object of the Project as GET {path} lists it, oldest first."""
    docs = _select(conn, kind, "t.project_id = ?", (project_id,), computed=True)
    if kind.listed is None:
        return docs
    return [{key: doc[key] for key in kind.listed if key in doc} for doc in docs]


def _select(
    conn: sqlite3.Connection,
    kind: Kind,
    where: str,
    params: tuple[Any, ...],
    computed: bool = False,
) -> list[Document]:
    table = kind.table
    shown = list(table.columns.items())
    extra = list(table.computed.items()) if computed else []
    hidden = list(table.hidden.items())
    # Column names and expressions come from the declarations, never from a request.
    selected = [f"t.{column}" for _, column in shown] + [sql for _, sql in extra]
    selected += [f"t.{column}" for _, column in hidden]
    if table.blob:
        selected.append(f"t.{table.blob}")
    rows = conn.execute(
        f"SELECT {', '.join(selected)} FROM {table.name} t WHERE {where} ORDER BY t.rowid",
        params,
    ).fetchall()
    docs = []
    for row in rows:
        values = iter(row)
        doc: Document = {}
        for key, _ in shown + extra:
            value = next(values)
            if value is not None:
                doc[key] = json.loads(value) if key in table.json else value
        secret = {key: next(values) for key, _ in hidden}
        if table.blob:
            stored = json.loads(next(values))
            doc.update((key, stored[key]) for key in kind.fields if key in stored)
        docs.append(kind.hooks.finish(conn, doc, secret))
    return docs


# -- writes --------------------------------------------------------------------


def create(
    conn: sqlite3.Connection,
    kind: Kind,
    project_id: str,
    fields: Mapping[str, Any],
    *,
    object_id: str | None = None,
    columns: Mapping[str, Any] | None = None,
    now: float = 0.0,
) -> tuple[Document, bool]:
    """Create an object from checked write fields; (its document, True).

    A kind that `replace`s answers (the replaced document, False) for a key
    that exists. object_id: the id to give it (default: a new UUID, for kinds
    with ids). columns: extra column values (the seed's clientId, say). now:
    the store's clock (a bucket's creationDate).
    """
    table = kind.table
    if kind.replace:
        try:
            rowid = find(conn, kind, project_id, fields[table.key])
        except NotFound:
            pass
        else:
            return update(conn, kind, project_id, rowid, fields), False
    fields = {**kind.defaults, **fields}
    if "id" in table.columns:
        object_id = object_id or str(uuid.uuid4())
    kind.hooks.check(conn, project_id, dict(fields), fields, None)
    rowid = insert(conn, kind, project_id, fields, object_id=object_id, columns=columns, now=now)
    return read(conn, kind, rowid), True


def insert(
    conn: sqlite3.Connection,
    kind: Kind,
    project_id: str,
    fields: Mapping[str, Any],
    *,
    object_id: str | None = None,
    columns: Mapping[str, Any] | None = None,
    now: float = 0.0,
) -> int:
    """Store a new object as given (no defaults, no checks: `create` does those, and the
    seed did them already); its rowid."""
    values = _row(kind, project_id, fields, object_id, columns, now)
    cursor = conn.execute(_insert_sql(kind, values), tuple(values.values()))
    assert cursor.lastrowid is not None
    kind.hooks.written(conn, object_id, fields, True)
    return cursor.lastrowid


def insert_many(
    conn: sqlite3.Connection,
    kind: Kind,
    items: Iterable[tuple[str, Mapping[str, Any], str | None, Mapping[str, Any]]],
    now: float = 0.0,
) -> None:
    """`insert` for many objects (project id, fields, object id, columns) at once: a seed
    of 10,000 Projects loads in one statement per kind and shape."""
    # Consecutive rows of one shape go in one statement: rowids keep the seed's order.
    batches: list[tuple[tuple[str, ...], list[tuple[Any, ...]]]] = []
    hooked = []
    for project_id, fields, object_id, columns in items:
        values = _row(kind, project_id, fields, object_id, columns, now)
        names = tuple(values)
        if not batches or batches[-1][0] != names:
            batches.append((names, []))
        batches[-1][1].append(tuple(values.values()))
        if kind.joined and not kind.joined.isdisjoint(fields):
            hooked.append((object_id, fields))
    for names, rows in batches:
        conn.executemany(_insert_sql(kind, dict.fromkeys(names)), rows)
    for object_id, fields in hooked:
        kind.hooks.written(conn, object_id, fields, True)


def _row(
    kind: Kind,
    project_id: str,
    fields: Mapping[str, Any],
    object_id: str | None,
    columns: Mapping[str, Any] | None,
    now: float,
) -> dict[str, Any]:
    """A new row's column values: the fields', the caller's, then the hook's defaults."""
    stored, rest = _split(kind, fields)
    values = {"project_id": project_id}
    own = _names(kind)[0]
    for key, value in stored.items():
        values[own[key]] = _encode(kind, key, value)
    if columns:
        values.update(columns)
    if object_id is not None:
        values["id"] = object_id
    for column, make in kind.hooks.columns(project_id, object_id, now).items():
        if column not in values:
            values[column] = make()
    if kind.table.blob:
        values[kind.table.blob] = json.dumps(rest, separators=(",", ":"))
    return values


def _insert_sql(kind: Kind, values: Mapping[str, Any]) -> str:
    # Column names come from the declarations and hooks, never from a request.
    names = ", ".join(values)
    return f"INSERT INTO {kind.table.name} ({names}) VALUES ({', '.join('?' * len(values))})"


def update(
    conn: sqlite3.Connection,
    kind: Kind,
    project_id: str,
    key: str | int,
    fields: Mapping[str, Any],
) -> Document:
    """Write the given fields (API names, already type-checked) of one object; its document.

    key: the API's `{id}`, or a rowid from `find`. Fields a document shows
    are checked by the kind's hook first; `hidden` fields are hand edits.
    """
    table = kind.table
    rowid = key if isinstance(key, int) else find(conn, kind, project_id, key)
    stored, rest = _split(kind, fields)  # unknown fields first
    doc = read(conn, kind, rowid)
    kind.hooks.check(conn, project_id, {**doc, **fields}, fields, rowid)
    if stored:
        assignments = ", ".join(f"{_column(kind, k)} = ?" for k in stored)
        values = [_encode(kind, k, v) for k, v in stored.items()]
        conn.execute(f"UPDATE {table.name} SET {assignments} WHERE rowid = ?", (*values, rowid))
    if table.blob and rest:
        current = json.loads(
            conn.execute(
                f"SELECT {table.blob} FROM {table.name} WHERE rowid = ?", (rowid,)
            ).fetchone()[0]
        )
        blob = json.dumps({**current, **rest}, separators=(",", ":"))
        conn.execute(f"UPDATE {table.name} SET {table.blob} = ? WHERE rowid = ?", (blob, rowid))
    kind.hooks.written(conn, doc.get("id"), fields, False)
    return read(conn, kind, rowid)


def delete(conn: sqlite3.Connection, kind: Kind, project_id: str, key: str) -> None:
    """Delete one object (NotFound if not this Project's; the kind's hook may refuse)."""
    rowid = find(conn, kind, project_id, key)
    kind.hooks.deleting(conn, project_id, read(conn, kind, rowid))
    conn.execute(f"DELETE FROM {kind.table.name} WHERE rowid = ?", (rowid,))


def set_column(
    conn: sqlite3.Connection, kind: Kind, project_id: str, key: str, column: str, value: Any
) -> None:
    """Set one column of one object (a rotated secret, say); NotFound if not this Project's."""
    rowid = find(conn, kind, project_id, key)
    conn.execute(f"UPDATE {kind.table.name} SET {column} = ? WHERE rowid = ?", (value, rowid))


def _split(kind: Kind, fields: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The fields stored in their own columns, and the write fields the blob holds.

    Invalid for a field the kind does not know (a hand edit's typo).
    """
    own, known = _names(kind)
    stored: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    for key, value in fields.items():
        if key in own:
            stored[key] = value
        elif key not in known:
            raise Invalid(f"unknown field {key!r}; known: {', '.join(sorted(known))}")
        elif key not in kind.joined:
            rest[key] = value
    if rest and not kind.table.blob:
        raise Invalid(f"unknown field {sorted(rest)[0]!r}")
    return stored, rest


def _names(kind: Kind) -> tuple[dict[str, str], set[str]]:
    """A kind's fields with a column of their own (-> column), and every field it knows."""
    found = _NAMES.get(kind.name)
    if found is None:
        own = {**kind.table.columns, **kind.table.hidden}
        found = _NAMES[kind.name] = (own, {*own, *kind.fields, *kind.joined})
    return found


_NAMES: dict[str, tuple[dict[str, str], set[str]]] = {}


def _column(kind: Kind, key: str) -> str:
    return _names(kind)[0][key]


def _encode(kind: Kind, key: str, value: Any) -> Any:
    if key in kind.table.json and value is not None:
        return json.dumps(value, separators=(",", ":"))
    return value


def without_none(**fields: Any) -> Document:
    """The fields that have a value: optional fields are absent, never null."""
    return {key: value for key, value in fields.items() if value is not None}
