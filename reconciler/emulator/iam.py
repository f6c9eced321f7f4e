"""The quirks of roles, applications and M2M clients (SPEC section 9), as `Hooks`.

- A role's `memberCount` counts the seed's `members` (Users and Developers)
  plus the M2M clients holding it; a role is not deleted while anything holds
  it or while it is a default role of its Project; GET answers a role created
  without a policy with `{"rule": []}`.
- An application gets a clientId, a connection name and a secret of its own.
- An M2M client gets a clientId, a secret and a `profile`; its `roles` are
  role ids of its Project, kept in `m2m_role` and answered as `[{id, name}]`;
  created through the API without `accessPolicy` it needs a non-empty `roles`
  (`m2m_create_rule`; a seeded client may have neither, and may do anything).
- GET /m2m/v2/list pages with an opaque cursor (`page_m2m`).
"""

from __future__ import annotations

import base64
import json
import secrets
import sqlite3
import string
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from reconciler.emulator.objects import Document, Hooks, Invalid, without_none

# Ids derived from a clientId, so a test can know a seeded client's id in advance.
_ID_NAMESPACE = uuid.UUID("5b0e8f4e-4f0b-4f3e-9a61-6c1d2f7e8a90")
_ALNUM = string.ascii_letters + string.digits


def seed_m2m_id(client_id: str) -> str:
    """The id a seeded M2M client gets when its seed entry gives none."""
    return str(uuid.uuid5(_ID_NAMESPACE, "m2m:" + client_id))


def default_profile(m2m_id: str) -> str:
    """The `profile` of an M2M client that was given none: a FHIR Device reference."""
    return f"Device/{uuid.uuid5(_ID_NAMESPACE, 'device:' + m2m_id)}"


def new_client_id() -> str:
    """A fresh clientId: 32 letters and digits, as Oystehr's (Auth0's) look."""
    return "".join(secrets.choice(_ALNUM) for _ in range(32))


# Users and Developers (the seed's members) plus the M2M clients holding role t.
MEMBER_COUNT = "t.member_count + (SELECT count(*) FROM m2m_role m WHERE m.role_id = t.id)"


def new_secret() -> str:
    """A fresh client secret."""
    return secrets.token_urlsafe(48)


def check_role_ids(
    conn: sqlite3.Connection, project_id: str, role_ids: Iterable[str], field: str = "roles"
) -> None:
    """Invalid unless every id is a role of this Project (`field` names them in the 400)."""
    for role_id in role_ids:
        row = conn.execute(
            "SELECT 1 FROM role WHERE id = ? AND project_id = ?", (role_id, project_id)
        ).fetchone()
        if row is None:
            raise Invalid(f"{field}: {role_id!r} is not a role of this Project")


class RoleHooks(Hooks):
    def finish(
        self, conn: sqlite3.Connection, doc: Document, hidden: Mapping[str, Any]
    ) -> Document:
        # The SDK's Role type always has a policy; a role created without one has no rules.
        doc.setdefault("accessPolicy", {"rule": []})
        return doc

    def deleting(self, conn: sqlite3.Connection, project_id: str, doc: Document) -> None:
        held = conn.execute(
            f"SELECT {MEMBER_COUNT} FROM role t WHERE id = ?", (doc["id"],)
        ).fetchone()[0]
        if held:
            raise Invalid(
                f"role {doc['name']!r} is held by {held} users, developers or M2M "
                "clients: take it from them first"
            )
        patient, sso = conn.execute(
            "SELECT default_patient_role_id, default_sso_user_role_id FROM project WHERE id = ?",
            (project_id,),
        ).fetchone()
        for default, what in ((patient, "patient role"), (sso, "SSO user role")):
            if default == doc["id"]:
                raise Invalid(
                    f"role {doc['name']!r} is the Project's default {what}: set another one first"
                )


class ApplicationHooks(Hooks):
    def columns(
        self, project_id: str, object_id: str | None, now: float
    ) -> dict[str, Callable[[], Any]]:
        return {
            "client_id": new_client_id,
            "connection_name": lambda: f"oystehr-{project_id[:8]}-{(object_id or '')[:8]}",
            "secret": new_secret,
        }


def m2m_create_rule(fields: Mapping[str, Any]) -> str | None:
    if "accessPolicy" in fields or fields.get("roles"):
        return None
    return "roles must name at least one role when accessPolicy is absent"


class M2MHooks(Hooks):
    def check(
        self,
        conn: sqlite3.Connection,
        project_id: str,
        doc: Document,
        fields: Mapping[str, Any],
        rowid: int | None,
    ) -> None:
        check_role_ids(conn, project_id, fields.get("roles", ()))

    def columns(
        self, project_id: str, object_id: str | None, now: float
    ) -> dict[str, Callable[[], Any]]:
        return {
            "client_id": new_client_id,
            "client_secret": new_secret,
            "profile": lambda: default_profile(object_id or ""),
        }

    def written(
        self,
        conn: sqlite3.Connection,
        m2m_id: str | None,
        fields: Mapping[str, Any],
        created: bool,
    ) -> None:
        if "roles" in fields:
            conn.execute("DELETE FROM m2m_role WHERE m2m_id = ?", (m2m_id,))
            conn.executemany(
                "INSERT OR IGNORE INTO m2m_role VALUES (?, ?)",
                ((m2m_id, role_id) for role_id in fields["roles"]),
            )
        if not created and ("roles" in fields or "accessPolicy" in fields):
            # Given a policy or roles once, a client is held to them from then on.
            conn.execute("UPDATE m2m_client SET unrestricted = 0 WHERE id = ?", (m2m_id,))

    def finish(
        self, conn: sqlite3.Connection, doc: Document, hidden: Mapping[str, Any]
    ) -> Document:
        roles = [
            {"id": rid, "name": rname}
            for rid, rname in conn.execute(
                "SELECT r.id, r.name FROM m2m_role m JOIN role r ON r.id = m.role_id "
                "WHERE m.m2m_id = ? ORDER BY r.rowid",
                (doc["id"],),
            )
        ]
        # The API's order: roles come after profile, before accessPolicy and jwksUrl.
        later = {key: doc.pop(key) for key in ("accessPolicy", "jwksUrl") if key in doc}
        return {**doc, "roles": roles, **later}


# -- GET /m2m/v2/list ------------------------------------------------------------

M2M_SORTS = {"createdAt": "rowid", "name": "name", "id": "id"}


def page_m2m(
    conn: sqlite3.Connection,
    project_id: str,
    *,
    limit: int,
    cursor: str | None = None,
    name: str | None = None,
    m2m_id: str | None = None,
    role_id: str | None = None,
    profile: str | None = None,
    sort: str = "createdAt",
    order: str = "asc",
) -> tuple[list[Document], str | None]:
    """One page of GET /v1/m2m/v2/list: the items and the next cursor (None at the end).

    name matches as a case-insensitive substring; the cursor is opaque and
    belongs to one sort and order (Invalid otherwise).
    """
    column = M2M_SORTS[sort]
    where, params = ["project_id = ?"], [project_id]
    for value, clause in (
        (name, "instr(lower(name), lower(?)) > 0"),
        (m2m_id, "id = ?"),
        (profile, "profile = ?"),
        (role_id, "id IN (SELECT m2m_id FROM m2m_role WHERE role_id = ?)"),
    ):
        if value is not None:
            where.append(clause)
            params.append(value)
    if cursor is not None:
        key, rowid = _read_cursor(cursor, sort, order)
        where.append(f"({column}, rowid) {'>' if order == 'asc' else '<'} (?, ?)")
        params += [key, rowid]
    direction = "ASC" if order == "asc" else "DESC"
    rows = conn.execute(
        f"SELECT rowid, {column}, id, name, description FROM m2m_client "
        f"WHERE {' AND '.join(where)} "
        f"ORDER BY {column} {direction}, rowid {direction} LIMIT ?",
        (*params, limit + 1),
    ).fetchall()
    items = [without_none(id=i, name=n, description=d) for _, _, i, n, d in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        rowid, key = rows[limit - 1][:2]
        next_cursor = _write_cursor(sort, order, key, rowid)
    return items, next_cursor


def _write_cursor(sort: str, order: str, key: Any, rowid: int) -> str:
    raw = json.dumps([sort, order, key, rowid], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _read_cursor(cursor: str, sort: str, order: str) -> tuple[Any, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        got_sort, got_order, key, rowid = json.loads(raw)
    except (ValueError, TypeError):
        raise Invalid("cursor is not one this API gave out") from None
    if (got_sort, got_order) != (sort, order) or not isinstance(rowid, int):
        raise Invalid("cursor belongs to another sort or sortOrder")
    return key, rowid
