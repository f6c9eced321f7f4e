"""The emulator's SQLite store: Projects, roles, M2M clients, Developers and tokens.

One connection, guarded by one lock, serves every server thread. For an
in-memory database that is the only correct choice (each `:memory:` connection
is its own database, and shared-cache URIs trade lost updates for
SQLITE_LOCKED errors); for a file it is also the fastest, because every query
here takes microseconds and the lock is never held across a sleep or a socket
write. Every write runs in `BEGIN IMMEDIATE ... COMMIT`, so a PATCH reads,
checks and writes as one transaction even if another process opens the same
`--db` file.

Methods a test or the demo may call directly (all thread-safe). Documents are
what the API answers; `fields` use the API's names. Objects of another Project
raise NotFound (the API's 404); breaking the API's rules raises Invalid (400).

    store.get_project(pid)                   GET /v1/project (or None)
    store.set_project_fields(pid, {...})     a hand edit, read-only fields included
    store.delete_project(pid)                a Project that has gone away
    store.project_ids()                      every Project id, sorted

    store.list_roles(pid)                    GET /v1/iam/role: [{id,name,memberCount}]
    store.get_role(pid, rid)                 {id,name,description?,accessPolicy}
    store.add_role(pid, name, description=, access_policy=, role_id=, member_count=)
    store.update_role(pid, rid, {...})       name, description, accessPolicy, and
                                             `members` (Users/Developers holding it)
    store.delete_role(pid, rid)              Invalid while held or a default role

    store.list_applications(pid)             [{id,name,clientId,description?}]
    store.get_application(pid, aid)          every write field, clientId, connectionName
    store.add_application(pid, {...}, app_id=, client_id=)
    store.update_application(pid, aid, {...})
    store.delete_application(pid, aid)
    store.rotate_application_secret(pid, aid) -> the new secret

    store.list_m2m(pid)                      every client: [{id,name,description?}]
    store.page_m2m(pid, limit=, cursor=, name=, m2m_id=, role_id=, sort=, order=)
    store.get_m2m(pid, mid)                  {id,name,description?,clientId,profile,
                                              roles:[{id,name}],accessPolicy?,jwksUrl?}
    store.create_m2m(pid, {...})             as POST /v1/m2m (fresh clientId and secret)
    store.add_m2m_client(pid, client_id, secret, {...})  a known credential, as seeded
    store.update_m2m(pid, mid, {...})        roles as ids
    store.delete_m2m(pid, mid)
    store.rotate_m2m_secret(pid, mid) -> the new secret (the old one stops working)
    store.m2m_page_size                      the largest page of /v1/m2m/v2/list

    store.add_developer(token, [pids])       another Developer token
    store.caller(token, pid)                 who a token is: access, M2M id, policies

A seeded M2M client's id is `seed_m2m_id(clientId)` unless its seed gives one.
"""

from __future__ import annotations

import base64
import hmac
import json
import secrets
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from typing import Any

from reconciler.emulator.bodies import APPLICATION_FIELDS, FLAG, TEXTS
from reconciler.emulator.seed import (
    Seed,
    default_profile,
    new_client_id,
    resolve_role,
    seed_m2m_id,
)
from reconciler.errors import ConfigError

TOKEN_LIFETIME_S = 86400
SCHEMA_VERSION = 2
DEFAULT_M2M_PAGE_SIZE = 100

_SCHEMA = """
CREATE TABLE IF NOT EXISTS project (
    id                       TEXT PRIMARY KEY,
    name                     TEXT NOT NULL,
    description              TEXT NOT NULL,
    signup_enabled           INTEGER NOT NULL,
    sandbox                  INTEGER NOT NULL,
    fhir_version             TEXT NOT NULL,
    default_patient_role_id  TEXT,
    default_sso_user_role_id TEXT
);
-- member_count: the Users and Developers holding the role (the seed's
-- `members`); the M2M clients holding it are counted from m2m_role.
CREATE TABLE IF NOT EXISTS role (
    id            TEXT PRIMARY KEY,
    project_id    TEXT NOT NULL REFERENCES project(id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    description   TEXT,
    access_policy TEXT,
    member_count  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS role_by_project ON role(project_id);
-- unrestricted: a seeded client given neither roles nor a policy, which may
-- do anything in its Project (as before access policies were enforced).
CREATE TABLE IF NOT EXISTS m2m_client (
    client_id     TEXT PRIMARY KEY,
    client_secret TEXT NOT NULL,
    project_id    TEXT NOT NULL REFERENCES project(id) ON DELETE CASCADE,
    id            TEXT NOT NULL UNIQUE,
    name          TEXT NOT NULL,
    description   TEXT,
    access_policy TEXT,
    jwks_url      TEXT,
    profile       TEXT NOT NULL,
    unrestricted  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS client_by_project ON m2m_client(project_id);
CREATE TABLE IF NOT EXISTS m2m_role (
    m2m_id  TEXT NOT NULL REFERENCES m2m_client(id) ON DELETE CASCADE,
    role_id TEXT NOT NULL REFERENCES role(id) ON DELETE CASCADE,
    PRIMARY KEY (m2m_id, role_id)
);
CREATE INDEX IF NOT EXISTS m2m_role_by_role ON m2m_role(role_id);
-- fields: the JSON object of the write fields (name, allowedCallbackUrls, ...).
CREATE TABLE IF NOT EXISTS application (
    id              TEXT PRIMARY KEY,
    project_id      TEXT NOT NULL REFERENCES project(id) ON DELETE CASCADE,
    client_id       TEXT NOT NULL UNIQUE,
    connection_name TEXT NOT NULL,
    secret          TEXT NOT NULL,
    fields          TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS application_by_project ON application(project_id);
-- Issued M2M tokens. No foreign key: a token outlives a re-seed of its client
-- as long as the seed keeps the client id, just as a real token would.
CREATE TABLE IF NOT EXISTS access_token (
    token      TEXT PRIMARY KEY,
    client_id  TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS developer (
    access_token TEXT PRIMARY KEY
);
-- Membership may name a Project that does not exist (or no longer does):
-- that Developer then gets 404 for it, not 403.
CREATE TABLE IF NOT EXISTS developer_project (
    access_token TEXT NOT NULL REFERENCES developer(access_token) ON DELETE CASCADE,
    project_id   TEXT NOT NULL,
    PRIMARY KEY (access_token, project_id)
);
CREATE TABLE IF NOT EXISTS setting (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

# Version 1 kept only (client_id, client_secret, project_id) per M2M client.
_MIGRATE_FROM_1 = """
ALTER TABLE m2m_client RENAME TO m2m_client_v1;
DROP INDEX IF EXISTS client_by_project;
"""

# API field name -> column, for the fields a PATCH (or a hand edit) may set.
_COLUMNS = {
    "name": "name",
    "description": "description",
    "signupEnabled": "signup_enabled",
    "sandbox": "sandbox",
    "fhirVersion": "fhir_version",
    "defaultPatientRoleId": "default_patient_role_id",
    "defaultSSOUserRoleId": "default_sso_user_role_id",
}
_ROLE_ID_FIELDS = ("defaultPatientRoleId", "defaultSSOUserRoleId")

_PROJECT_QUERY = """
SELECT p.id, p.name, p.description, p.signup_enabled, p.sandbox, p.fhir_version,
       p.default_patient_role_id, pr.name, p.default_sso_user_role_id, sr.name
FROM project p
LEFT JOIN role pr ON pr.id = p.default_patient_role_id
LEFT JOIN role sr ON sr.id = p.default_sso_user_role_id
WHERE p.id = ?
"""


class StoreError(Exception):
    """Base of the store's refusals; the app maps them to HTTP statuses."""


class NotFound(StoreError, LookupError):
    """The Project does not exist."""


class Invalid(StoreError, ValueError):
    """The request names something the Project does not have (e.g. a role id)."""


@dataclass(frozen=True)
class Caller:
    """Who a bearer token is, for one Project: its access and the policies that bind it.

    `policies` is None for a caller not held to access policies (a Developer,
    or a seeded M2M client given neither roles nor a policy); otherwise the
    client's own policy and its roles' policies.
    """

    access: Access
    project_id: str | None
    m2m_id: str | None = None
    policies: tuple[Mapping[str, Any], ...] | None = None


class Access(Enum):
    """What a bearer token may do with one Project id."""

    OK = "ok"
    UNKNOWN_TOKEN = "unknown token"
    FORBIDDEN = "forbidden"
    NO_SUCH_PROJECT = "no such project"
    NO_PROJECT_HEADER = "a Developer token without a Project id"


class Store:
    """The emulator's state in SQLite: `Store()` in memory, `Store(path)` in a file."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        target = path if path is not None else ":memory:"
        try:
            # isolation_level=None: we issue BEGIN IMMEDIATE / COMMIT ourselves.
            self._conn = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise ConfigError(f"{path}: cannot open database file ({exc})") from exc
        try:
            self._prepare()
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise ConfigError(f"{path}: not an emulator database ({exc})") from exc

    def _prepare(self) -> None:
        conn = self._conn
        conn.execute("PRAGMA foreign_keys = ON")
        if self.path is not None:
            # WAL + NORMAL: a commit costs no fsync of the main file, and it
            # stays durable across a clean restart, which is all --db promises.
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA busy_timeout = 5000")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()
        if tables[0] and version not in (1, SCHEMA_VERSION):
            raise sqlite3.DatabaseError(f"schema version {version}, expected {SCHEMA_VERSION}")
        conn.execute("BEGIN IMMEDIATE")
        try:
            migrating = bool(tables[0]) and version == 1
            # executescript would COMMIT first: run the statements one by one.
            for statement in _statements((_MIGRATE_FROM_1 if migrating else "") + _SCHEMA):
                conn.execute(statement)
            if migrating:
                _migrate_clients_from_1(conn)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions ----------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    # -- seeding ---------------------------------------------------------

    def load_seed(self, seed: Seed) -> None:
        """Add or replace the seed's Projects and Developers; leave the rest (one transaction)."""
        project_ids = [(p.id,) for p in seed.projects]
        try:
            with self._write() as conn:
                # Replacing a Project replaces its roles, applications and
                # clients too; the Project row itself is replaced in place so
                # that Developer memberships naming it survive.
                for table in ("m2m_client", "application", "role"):
                    conn.executemany(f"DELETE FROM {table} WHERE project_id = ?", project_ids)
                conn.executemany(
                    "INSERT OR REPLACE INTO project VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        (
                            p.id,
                            p.name,
                            p.description,
                            p.signup_enabled,
                            p.sandbox,
                            p.fhir_version,
                            p.default_patient_role_id,
                            p.default_sso_user_role_id,
                        )
                        for p in seed.projects
                    ),
                )
                conn.executemany(
                    "INSERT INTO role VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        (r.id, p.id, r.name, r.description, _json(r.access_policy), r.member_count)
                        for p in seed.projects
                        for r in p.roles
                    ),
                )
                for project in seed.projects:
                    for app in project.applications:
                        _insert_application(conn, project.id, app.id, app.client_id, app.fields)
                    for c in project.clients:
                        _insert_m2m(
                            conn,
                            project.id,
                            c.client_id,
                            c.client_secret,
                            {
                                "id": c.id,
                                "name": c.name,
                                "description": c.description,
                                "accessPolicy": c.access_policy,
                                "jwksUrl": c.jwks_url,
                                "profile": c.profile,
                                "roles": list(c.role_ids),
                            },
                            unrestricted=not c.role_ids and c.access_policy is None,
                        )
                conn.executemany(
                    "INSERT OR REPLACE INTO developer VALUES (?)",
                    ((d.access_token,) for d in seed.developers),
                )
                conn.executemany(
                    "DELETE FROM developer_project WHERE access_token = ?",
                    ((d.access_token,) for d in seed.developers),
                )
                conn.executemany(
                    "INSERT OR IGNORE INTO developer_project VALUES (?, ?)",
                    ((d.access_token, pid) for d in seed.developers for pid in d.projects),
                )
                if seed.m2m_page_size is not None:
                    conn.execute(
                        "INSERT OR REPLACE INTO setting VALUES ('m2mPageSize', ?)",
                        (str(seed.m2m_page_size),),
                    )
        except sqlite3.IntegrityError as exc:
            raise ConfigError(
                f"{seed.source}: an id or clientId is already used by another Project "
                f"in the database ({exc})"
            ) from exc

    @property
    def m2m_page_size(self) -> int:
        """The largest page GET /v1/m2m/v2/list answers (the seed's m2mPageSize, default 100)."""
        with self._read() as conn:
            row = conn.execute("SELECT value FROM setting WHERE key = 'm2mPageSize'").fetchone()
        return int(row[0]) if row else DEFAULT_M2M_PAGE_SIZE

    # -- credentials -----------------------------------------------------

    def issue_token(self, client_id: str, client_secret: str) -> str | None:
        """A new access token for a valid M2M client, or None for bad credentials."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT client_secret FROM m2m_client WHERE client_id = ?", (client_id,)
            ).fetchone()
        # compare_digest even against a dummy: a wrong client id and a wrong
        # secret take the same time.
        expected = row[0] if row else secrets.token_hex(16)
        if not hmac.compare_digest(expected.encode(), client_secret.encode()) or row is None:
            return None
        token = secrets.token_urlsafe(32)
        now = time.time()
        with self._write() as conn:
            conn.execute("DELETE FROM access_token WHERE expires_at <= ?", (now,))
            conn.execute(
                "INSERT INTO access_token VALUES (?, ?, ?)",
                (token, client_id, now + TOKEN_LIFETIME_S),
            )
        return token

    def access(self, token: str, project_id: str | None) -> Access:
        """May this bearer token act on this Project? (See `caller` for its policies.)"""
        return self.caller(token, project_id).access

    def caller(self, token: str, project_id: str | None) -> Caller:
        """Who this bearer token is for this Project. One lock, at most three lookups.

        project_id None (no project header): an M2M token acts on its own
        Project, as the real API infers it; a Developer token gets
        Access.NO_PROJECT_HEADER.
        """
        with self._read() as conn:
            row = conn.execute(
                "SELECT c.project_id, c.id, c.access_policy, c.unrestricted FROM access_token t "
                "JOIN m2m_client c ON c.client_id = t.client_id "
                "WHERE t.token = ? AND t.expires_at > ?",
                (token, time.time()),
            ).fetchone()
            if row is not None:
                # An M2M client's own Project always exists (ON DELETE CASCADE).
                owner, m2m_id, own_policy, unrestricted = row
                if project_id is not None and owner != project_id:
                    return Caller(Access.FORBIDDEN, project_id, m2m_id)
                role_policies = [
                    policy
                    for (policy,) in conn.execute(
                        "SELECT r.access_policy FROM m2m_role m JOIN role r ON r.id = m.role_id "
                        "WHERE m.m2m_id = ?",
                        (m2m_id,),
                    )
                ]
                if unrestricted and own_policy is None and not role_policies:
                    return Caller(Access.OK, owner, m2m_id)
                policies = tuple(
                    json.loads(p) for p in (own_policy, *role_policies) if p is not None
                )
                return Caller(Access.OK, owner, m2m_id, policies)
            row = conn.execute(
                "SELECT EXISTS(SELECT 1 FROM developer WHERE access_token = :token), "
                "EXISTS(SELECT 1 FROM developer_project "
                "       WHERE access_token = :token AND project_id = :project), "
                "EXISTS(SELECT 1 FROM project WHERE id = :project)",
                {"token": token, "project": project_id},
            ).fetchone()
        is_developer, is_member, exists = row
        if not is_developer:
            return Caller(Access.UNKNOWN_TOKEN, project_id)
        if project_id is None:
            return Caller(Access.NO_PROJECT_HEADER, None)
        if not is_member:
            return Caller(Access.FORBIDDEN, project_id)
        return Caller(Access.OK if exists else Access.NO_SUCH_PROJECT, project_id)

    def add_m2m_client(
        self,
        project_id: str,
        client_id: str,
        client_secret: str,
        fields: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Add (or replace) a client credential, as the seed does; return the M2M client.

        fields: name, description, roles (ids), accessPolicy, jwksUrl, profile,
        id. Without roles and accessPolicy the client may do anything in its
        Project, like a seeded one.
        """
        fields = dict(fields or {})
        fields.setdefault("id", seed_m2m_id(client_id))
        fields.setdefault("name", client_id)
        unrestricted = not fields.get("roles") and fields.get("accessPolicy") is None
        with self._write() as conn:
            self._require_project(conn, project_id)
            conn.execute("DELETE FROM m2m_client WHERE client_id = ?", (client_id,))
            _check_role_ids(conn, project_id, fields.get("roles", ()))
            _insert_m2m(conn, project_id, client_id, client_secret, fields, unrestricted)
            return _m2m_document(conn, project_id, fields["id"])

    def add_developer(self, access_token: str, project_ids: Iterable[str]) -> None:
        """Add a Developer token, or replace the Projects an existing one belongs to."""
        with self._write() as conn:
            conn.execute("INSERT OR REPLACE INTO developer VALUES (?)", (access_token,))
            conn.execute("DELETE FROM developer_project WHERE access_token = ?", (access_token,))
            conn.executemany(
                "INSERT OR IGNORE INTO developer_project VALUES (?, ?)",
                ((access_token, pid) for pid in project_ids),
            )

    # -- projects --------------------------------------------------------

    def project_ids(self) -> list[str]:
        """Every Project id, sorted."""
        with self._read() as conn:
            return [row[0] for row in conn.execute("SELECT id FROM project ORDER BY id")]

    def get_project(self, project_id: str) -> dict[str, Any] | None:
        """The Project as GET /v1/project returns it, or None."""
        with self._read() as conn:
            row = conn.execute(_PROJECT_QUERY, (project_id,)).fetchone()
        return None if row is None else _project_document(row)

    def patch_project(self, project_id: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Apply an already type-checked PATCH in one transaction; return the updated Project.

        Role ids must belong to this Project (Invalid otherwise); a missing
        Project raises NotFound. Only the given columns are written, so
        concurrent PATCHes of different fields cannot undo each other.
        """
        with self._write() as conn:
            self._require_project(conn, project_id)
            return self._update(conn, project_id, changes)

    def set_project_fields(self, project_id: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        """A hand edit for tests: set any field, read-only ones included; return the Project.

        Keys are the API's names: name, description, signupEnabled, sandbox,
        fhirVersion, defaultPatientRoleId / defaultSSOUserRoleId (an id or
        None), or defaultPatientRole / defaultSSOUserRole (a role name or id,
        resolved like the seed's, or None).
        """
        with self._write() as conn:
            self._require_project(conn, project_id)
            changes: dict[str, Any] = {}
            for key, value in fields.items():
                if key in ("defaultPatientRole", "defaultSSOUserRole"):
                    roles = [
                        (rid, name)
                        for rid, name in conn.execute(
                            "SELECT id, name FROM role WHERE project_id = ? ORDER BY rowid",
                            (project_id,),
                        )
                    ]
                    try:
                        role_id = None if value is None else resolve_role(value, roles)
                    except ValueError as exc:
                        raise Invalid(f"{key}: {exc}") from exc
                    changes[key + "Id"] = role_id
                elif key in _COLUMNS:
                    changes[key] = value
                else:
                    raise Invalid(f"unknown field {key!r}; known: {', '.join(_COLUMNS)}")
            return self._update(conn, project_id, changes)

    def delete_project(self, project_id: str) -> None:
        """Remove a Project with its roles and clients (memberships naming it stay)."""
        with self._write() as conn:
            conn.execute("DELETE FROM project WHERE id = ?", (project_id,))

    @staticmethod
    def _require_project(conn: sqlite3.Connection, project_id: str) -> None:
        if conn.execute("SELECT 1 FROM project WHERE id = ?", (project_id,)).fetchone() is None:
            raise NotFound(f"Project {project_id} not found")

    @staticmethod
    def _update(
        conn: sqlite3.Connection, project_id: str, changes: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Check role ids belong to the Project, write the given columns, return the Project."""
        for field in _ROLE_ID_FIELDS:
            role_id = changes.get(field)
            if role_id is not None and not _role_belongs(conn, project_id, role_id):
                raise Invalid(f"{field}: {role_id!r} is not a role of this Project")
        if changes:
            # Column names come from _COLUMNS, never from the request.
            assignments = ", ".join(f"{_COLUMNS[key]} = ?" for key in changes)
            conn.execute(
                f"UPDATE project SET {assignments} WHERE id = ?", (*changes.values(), project_id)
            )
        return _project_document(conn.execute(_PROJECT_QUERY, (project_id,)).fetchone())

    # -- roles -----------------------------------------------------------

    def list_roles(self, project_id: str) -> list[dict[str, Any]]:
        """The Project's roles as GET /v1/iam/role returns them, oldest first.

        memberCount: the seeded `members` plus the M2M clients holding the role.
        """
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT id, name, {_MEMBER_COUNT} FROM role r WHERE project_id = ? ORDER BY rowid",
                (project_id,),
            ).fetchall()
        return [{"id": rid, "name": name, "memberCount": count} for rid, name, count in rows]

    def get_role(self, project_id: str, role_id: str) -> dict[str, Any]:
        """The role as GET /v1/iam/role/{id} returns it; NotFound if not this Project's."""
        with self._read() as conn:
            return _role_document(conn, project_id, role_id)

    def add_role(
        self,
        project_id: str,
        name: str,
        *,
        description: str | None = None,
        access_policy: Mapping[str, Any] | None = None,
        role_id: str | None = None,
        member_count: int = 0,
    ) -> dict[str, Any]:
        """Create a role (a fresh UUID unless role_id is given) and return it as the API does."""
        role_id = role_id or str(uuid.uuid4())
        with self._write() as conn:
            self._require_project(conn, project_id)
            conn.execute(
                "INSERT INTO role VALUES (?, ?, ?, ?, ?, ?)",
                (role_id, project_id, name, description, _json(access_policy), member_count),
            )
            return _role_document(conn, project_id, role_id)

    def update_role(
        self, project_id: str, role_id: str, fields: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Set name, description, accessPolicy (as PATCH does) or `members` (a hand edit)."""
        columns = {
            "name": "name",
            "description": "description",
            "accessPolicy": "access_policy",
            "members": "member_count",
        }
        return self._update_object("role", columns, project_id, role_id, fields, _role_document)

    def delete_role(self, project_id: str, role_id: str) -> None:
        """Delete a role; Invalid while anything holds it or it is a default role."""
        with self._write() as conn:
            role = _role_document(conn, project_id, role_id)
            held = conn.execute(
                f"SELECT {_MEMBER_COUNT} FROM role r WHERE id = ?", (role_id,)
            ).fetchone()[0]
            if held:
                raise Invalid(
                    f"role {role['name']!r} is held by {held} users, developers or M2M "
                    "clients: take it from them first"
                )
            patient, sso = conn.execute(
                "SELECT default_patient_role_id, default_sso_user_role_id FROM project "
                "WHERE id = ?",
                (project_id,),
            ).fetchone()
            for default, what in ((patient, "patient role"), (sso, "SSO user role")):
                if default == role_id:
                    raise Invalid(
                        f"role {role['name']!r} is the Project's default {what}: "
                        "set another one first"
                    )
            conn.execute("DELETE FROM role WHERE id = ?", (role_id,))

    # -- applications ----------------------------------------------------

    def list_applications(self, project_id: str) -> list[dict[str, Any]]:
        """The Project's applications as GET /v1/application returns them, oldest first."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT id, client_id, connection_name, fields FROM application "
                "WHERE project_id = ? ORDER BY rowid",
                (project_id,),
            ).fetchall()
        items = []
        for row in rows:
            doc = _application_document(row)
            item = {"id": doc["id"], "name": doc["name"], "clientId": doc["clientId"]}
            if "description" in doc:
                item["description"] = doc["description"]
            items.append(item)
        return items

    def get_application(self, project_id: str, app_id: str) -> dict[str, Any]:
        """The application as GET /v1/application/{id} returns it (every write field)."""
        with self._read() as conn:
            return _application_by_id(conn, project_id, app_id)

    def add_application(
        self,
        project_id: str,
        fields: Mapping[str, Any],
        *,
        app_id: str | None = None,
        client_id: str | None = None,
    ) -> dict[str, Any]:
        """Create an application from checked write fields (name and allowedCallbackUrls)."""
        app_id = app_id or str(uuid.uuid4())
        with self._write() as conn:
            self._require_project(conn, project_id)
            _insert_application(conn, project_id, app_id, client_id or new_client_id(), fields)
            return _application_by_id(conn, project_id, app_id)

    def update_application(
        self, project_id: str, app_id: str, fields: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Set any of the write fields (already checked); return the application."""
        with self._write() as conn:
            doc = _application_by_id(conn, project_id, app_id)
            unknown = sorted(set(fields) - set(APPLICATION_FIELDS))
            if unknown:
                raise Invalid(f"unknown field {unknown[0]!r}")
            stored = {key: doc[key] for key in APPLICATION_FIELDS if key in doc}
            conn.execute(
                "UPDATE application SET fields = ? WHERE id = ?",
                (_json({**stored, **fields}), app_id),
            )
            return _application_by_id(conn, project_id, app_id)

    def delete_application(self, project_id: str, app_id: str) -> None:
        """Delete an application; NotFound if not this Project's."""
        self._delete_object("application", project_id, app_id)

    def rotate_application_secret(self, project_id: str, app_id: str) -> str:
        """A new client secret for the application (the old one stops working)."""
        return self._rotate("application", "secret", project_id, app_id)

    # -- M2M clients -----------------------------------------------------

    def list_m2m(self, project_id: str) -> list[dict[str, Any]]:
        """Every M2M client of the Project as GET /v1/m2m/v2/list items, oldest first."""
        items, _ = self.page_m2m(project_id, limit=1 << 30)
        return items

    def page_m2m(
        self,
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
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of GET /v1/m2m/v2/list: the items and the next cursor (None at the end).

        name matches as a case-insensitive substring; the cursor is opaque and
        belongs to one sort and order (Invalid otherwise).
        """
        column = _M2M_SORTS[sort]
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
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT rowid, {column}, id, name, description FROM m2m_client "
                f"WHERE {' AND '.join(where)} "
                f"ORDER BY {column} {direction}, rowid {direction} LIMIT ?",
                (*params, limit + 1),
            ).fetchall()
        items = [_without_none(id=i, name=n, description=d) for _, _, i, n, d in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            rowid, key = rows[limit - 1][:2]
            next_cursor = _write_cursor(sort, order, key, rowid)
        return items, next_cursor

    def get_m2m(self, project_id: str, m2m_id: str) -> dict[str, Any]:
        """The M2M client as GET /v1/m2m/{id} returns it; NotFound if not this Project's."""
        with self._read() as conn:
            return _m2m_document(conn, project_id, m2m_id)

    def create_m2m(self, project_id: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Create an M2M client (fresh id, clientId and secret); the answer carries no secret."""
        fields = {**fields, "id": str(uuid.uuid4())}
        with self._write() as conn:
            self._require_project(conn, project_id)
            _check_role_ids(conn, project_id, fields.get("roles", ()))
            _insert_m2m(conn, project_id, new_client_id(), secrets.token_urlsafe(48), fields)
            return _m2m_document(conn, project_id, fields["id"])

    def update_m2m(self, project_id: str, m2m_id: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Set any of name, description, accessPolicy, roles (ids), jwksUrl, profile."""
        columns = {
            "name": "name",
            "description": "description",
            "accessPolicy": "access_policy",
            "jwksUrl": "jwks_url",
            "profile": "profile",
        }
        scalars = {key: value for key, value in fields.items() if key != "roles"}
        with self._write() as conn:
            _m2m_document(conn, project_id, m2m_id)  # NotFound first
            if "roles" in fields:
                _check_role_ids(conn, project_id, fields["roles"])
                conn.execute("DELETE FROM m2m_role WHERE m2m_id = ?", (m2m_id,))
                conn.executemany(
                    "INSERT OR IGNORE INTO m2m_role VALUES (?, ?)",
                    ((m2m_id, rid) for rid in fields["roles"]),
                )
            if "roles" in fields or "accessPolicy" in fields:
                # Given a policy or roles once, a client is held to them from then on.
                conn.execute("UPDATE m2m_client SET unrestricted = 0 WHERE id = ?", (m2m_id,))
            _set_columns(conn, "m2m_client", columns, m2m_id, scalars)
            return _m2m_document(conn, project_id, m2m_id)

    def delete_m2m(self, project_id: str, m2m_id: str) -> None:
        """Delete an M2M client: its tokens and its credentials stop working."""
        self._delete_object("m2m_client", project_id, m2m_id)

    def rotate_m2m_secret(self, project_id: str, m2m_id: str) -> str:
        """A new client secret: it works at /oauth/token from now on, the old one no longer."""
        return self._rotate("m2m_client", "client_secret", project_id, m2m_id)

    # -- shared by the kinds ---------------------------------------------

    def _update_object(
        self,
        table: str,
        columns: Mapping[str, str],
        project_id: str,
        object_id: str,
        fields: Mapping[str, Any],
        document: Any,
    ) -> dict[str, Any]:
        with self._write() as conn:
            document(conn, project_id, object_id)  # NotFound first
            _set_columns(conn, table, columns, object_id, fields)
            return document(conn, project_id, object_id)

    def _delete_object(self, table: str, project_id: str, object_id: str) -> None:
        with self._write() as conn:
            gone = conn.execute(
                f"DELETE FROM {table} WHERE id = ? AND project_id = ?", (object_id, project_id)
            )
            if gone.rowcount == 0:
                raise NotFound(f"{_KIND_NAMES[table]} {object_id} not found")

    def _rotate(self, table: str, column: str, project_id: str, object_id: str) -> str:
        secret = secrets.token_urlsafe(48)
        with self._write() as conn:
            done = conn.execute(
                f"UPDATE {table} SET {column} = ? WHERE id = ? AND project_id = ?",
                (secret, object_id, project_id),
            )
            if done.rowcount == 0:
                raise NotFound(f"{_KIND_NAMES[table]} {object_id} not found")
        return secret


_KIND_NAMES = {"role": "role", "application": "application", "m2m_client": "M2M client"}

# Users and Developers (the seed's members) plus the M2M clients holding role r.
_MEMBER_COUNT = "r.member_count + (SELECT count(*) FROM m2m_role m WHERE m.role_id = r.id)"

_M2M_SORTS = {"createdAt": "rowid", "name": "name", "id": "id"}

_APPLICATION_DEFAULTS: dict[str, Any] = {
    key: [] if kind == TEXTS else False
    for key, kind in APPLICATION_FIELDS.items()
    if kind in (TEXTS, FLAG)
}


def _set_columns(
    conn: sqlite3.Connection,
    table: str,
    columns: Mapping[str, str],
    object_id: str,
    fields: Mapping[str, Any],
) -> None:
    """Write the given fields (API names) of one row; Invalid for a field not in `columns`."""
    unknown = sorted(set(fields) - set(columns))
    if unknown:
        raise Invalid(f"unknown field {unknown[0]!r}; known: {', '.join(columns)}")
    if fields:
        # Column names come from `columns`, never from the request.
        assignments = ", ".join(f"{columns[key]} = ?" for key in fields)
        values = [_json(v) if isinstance(v, Mapping) else v for v in fields.values()]
        conn.execute(f"UPDATE {table} SET {assignments} WHERE id = ?", (*values, object_id))


def _check_role_ids(conn: sqlite3.Connection, project_id: str, role_ids: Iterable[str]) -> None:
    for role_id in role_ids:
        if not _role_belongs(conn, project_id, role_id):
            raise Invalid(f"roles: {role_id!r} is not a role of this Project")


def _insert_m2m(
    conn: sqlite3.Connection,
    project_id: str,
    client_id: str,
    client_secret: str,
    fields: Mapping[str, Any],
    unrestricted: bool = False,
) -> None:
    m2m_id = fields["id"]
    conn.execute(
        "INSERT INTO m2m_client (client_id, client_secret, project_id, id, name, description, "
        "access_policy, jwks_url, profile, unrestricted) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            client_id,
            client_secret,
            project_id,
            m2m_id,
            fields["name"],
            fields.get("description"),
            _json(fields.get("accessPolicy")),
            fields.get("jwksUrl"),
            fields.get("profile") or default_profile(m2m_id),
            unrestricted,
        ),
    )
    conn.executemany(
        "INSERT OR IGNORE INTO m2m_role VALUES (?, ?)",
        ((m2m_id, role_id) for role_id in fields.get("roles", ())),
    )


def _insert_application(
    conn: sqlite3.Connection,
    project_id: str,
    app_id: str,
    client_id: str,
    fields: Mapping[str, Any],
) -> None:
    conn.execute(
        "INSERT INTO application VALUES (?, ?, ?, ?, ?, ?)",
        (
            app_id,
            project_id,
            client_id,
            f"oystehr-{project_id[:8]}-{app_id[:8]}",
            secrets.token_urlsafe(48),
            _json({**_APPLICATION_DEFAULTS, **fields}),
        ),
    )


def _row(
    conn: sqlite3.Connection, table: str, columns: str, project_id: str, object_id: str
) -> tuple[Any, ...]:
    """One object's columns, or NotFound when this Project has no such object."""
    row = conn.execute(
        f"SELECT {columns} FROM {table} WHERE id = ? AND project_id = ?", (object_id, project_id)
    ).fetchone()
    if row is None:
        raise NotFound(f"{_KIND_NAMES[table]} {object_id} not found")
    return row


def _role_document(conn: sqlite3.Connection, project_id: str, role_id: str) -> dict[str, Any]:
    name, description, policy = _row(
        conn, "role", "name, description, access_policy", project_id, role_id
    )
    doc = _without_none(id=role_id, name=name, description=description)
    # The SDK's Role type always has a policy; a role created without one has no rules.
    doc["accessPolicy"] = json.loads(policy) if policy is not None else {"rule": []}
    return doc


def _application_by_id(conn: sqlite3.Connection, project_id: str, app_id: str) -> dict[str, Any]:
    columns = "id, client_id, connection_name, fields"
    return _application_document(_row(conn, "application", columns, project_id, app_id))


def _application_document(row: tuple[Any, ...]) -> dict[str, Any]:
    app_id, client_id, connection_name, fields = row
    stored = json.loads(fields)
    doc = {
        "id": app_id,
        "name": stored["name"],
        "clientId": client_id,
        "connectionName": connection_name,
    }
    doc.update((key, stored[key]) for key in APPLICATION_FIELDS if key in stored and key != "name")
    return doc


def _m2m_document(conn: sqlite3.Connection, project_id: str, m2m_id: str) -> dict[str, Any]:
    columns = "name, description, client_id, profile, access_policy, jwks_url"
    row = _row(conn, "m2m_client", columns, project_id, m2m_id)
    name, description, client_id, profile, policy, jwks_url = row
    roles = [
        {"id": rid, "name": rname}
        for rid, rname in conn.execute(
            "SELECT r.id, r.name FROM m2m_role m JOIN role r ON r.id = m.role_id "
            "WHERE m.m2m_id = ? ORDER BY r.rowid",
            (m2m_id,),
        )
    ]
    return _without_none(
        id=m2m_id,
        name=name,
        description=description,
        clientId=client_id,
        profile=profile,
        roles=roles,
        accessPolicy=None if policy is None else json.loads(policy),
        jwksUrl=jwks_url,
    )


def _migrate_clients_from_1(conn: sqlite3.Connection) -> None:
    """Give version 1's bare credentials the fields of an M2M client (full access, as before)."""
    rows = conn.execute("SELECT client_id, client_secret, project_id FROM m2m_client_v1").fetchall()
    for client_id, secret, project_id in rows:
        m2m_id = seed_m2m_id(client_id)
        fields = {"id": m2m_id, "name": client_id}
        _insert_m2m(conn, project_id, client_id, secret, fields, unrestricted=True)
    conn.execute("DROP TABLE m2m_client_v1")


def _statements(script: str) -> Iterator[str]:
    """The SQL statements of a script, one by one (comments may hold semicolons)."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            yield statement
            statement = ""


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


def _without_none(**fields: Any) -> dict[str, Any]:
    """The fields that have a value: optional fields are absent, never null."""
    return {key: value for key, value in fields.items() if value is not None}


def _role_belongs(conn: sqlite3.Connection, project_id: str, role_id: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM role WHERE id = ? AND project_id = ?", (role_id, project_id)
    ).fetchone()
    return row is not None


def _json(value: Mapping[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def _project_document(row: tuple[Any, ...]) -> dict[str, Any]:
    pid, name, description, signup, sandbox, fhir, patient_id, patient, sso_id, sso = row
    doc: dict[str, Any] = {
        "id": pid,
        "name": name,
        "description": description,
        "signupEnabled": bool(signup),
        "sandbox": bool(sandbox),
    }
    # A cleared role is absent, not null: that is what the real API returns.
    if patient_id is not None:
        doc["defaultPatientRole"] = {"id": patient_id, "name": patient}
    if sso_id is not None:
        doc["defaultSSOUserRole"] = {"id": sso_id, "name": sso}
    doc["fhirVersion"] = fhir
    return doc
