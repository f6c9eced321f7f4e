"""The emulator's SQLite store: Projects, roles, M2M clients, Developers and tokens.

One connection, guarded by one lock, serves every server thread. For an
in-memory database that is the only correct choice (each `:memory:` connection
is its own database, and shared-cache URIs trade lost updates for
SQLITE_LOCKED errors); for a file it is also the fastest, because every query
here takes microseconds and the lock is never held across a sleep or a socket
write. Every write runs in `BEGIN IMMEDIATE ... COMMIT`, so a PATCH reads,
checks and writes as one transaction even if another process opens the same
`--db` file.

Methods a test may call directly (all thread-safe):

    store.set_project_fields(pid, {...})   a hand edit, bypassing the API's rules
    store.add_role(pid, name, ...)         a role, as POST /v1/iam/role does
    store.add_m2m_client(pid, id, secret)  another client credential
    store.add_developer(token, [pids])     another Developer token
    store.delete_project(pid)              a Project that has gone away
    store.get_project(pid)                 the GET /v1/project document (or None)
    store.list_roles(pid)                  the GET /v1/iam/role document
    store.project_ids()                    every Project id, sorted
"""

from __future__ import annotations

import hmac
import json
import secrets
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from enum import Enum
from typing import Any

from reconciler.emulator.seed import Seed, resolve_role
from reconciler.errors import ConfigError

TOKEN_LIFETIME_S = 86400
SCHEMA_VERSION = 1

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
CREATE TABLE IF NOT EXISTS role (
    id            TEXT PRIMARY KEY,
    project_id    TEXT NOT NULL REFERENCES project(id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    description   TEXT,
    access_policy TEXT,
    member_count  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS role_by_project ON role(project_id);
CREATE TABLE IF NOT EXISTS m2m_client (
    client_id     TEXT PRIMARY KEY,
    client_secret TEXT NOT NULL,
    project_id    TEXT NOT NULL REFERENCES project(id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS client_by_project ON m2m_client(project_id);
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


class Access(Enum):
    """What a bearer token may do with one Project id."""

    OK = "ok"
    UNKNOWN_TOKEN = "unknown token"
    FORBIDDEN = "forbidden"
    NO_SUCH_PROJECT = "no such project"


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
        if tables[0] and version != SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"schema version {version}, expected {SCHEMA_VERSION}")
        conn.executescript(_SCHEMA)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

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
                # Replacing a Project replaces its roles and clients too; the
                # Project row itself is replaced in place so that Developer
                # memberships naming it survive.
                conn.executemany("DELETE FROM role WHERE project_id = ?", project_ids)
                conn.executemany("DELETE FROM m2m_client WHERE project_id = ?", project_ids)
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
                conn.executemany(
                    "INSERT INTO m2m_client VALUES (?, ?, ?)",
                    (
                        (c.client_id, c.client_secret, p.id)
                        for p in seed.projects
                        for c in p.clients
                    ),
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
        except sqlite3.IntegrityError as exc:
            raise ConfigError(
                f"{seed.source}: a role id or clientId is already used by another Project "
                f"in the database ({exc})"
            ) from exc

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

    def access(self, token: str, project_id: str) -> Access:
        """May this bearer token act on this Project? One lock, at most three lookups."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT c.project_id FROM access_token t "
                "JOIN m2m_client c ON c.client_id = t.client_id "
                "WHERE t.token = ? AND t.expires_at > ?",
                (token, time.time()),
            ).fetchone()
            if row is not None:
                # An M2M client's own Project always exists (ON DELETE CASCADE).
                return Access.OK if row[0] == project_id else Access.FORBIDDEN
            row = conn.execute(
                "SELECT EXISTS(SELECT 1 FROM developer WHERE access_token = :token), "
                "EXISTS(SELECT 1 FROM developer_project "
                "       WHERE access_token = :token AND project_id = :project), "
                "EXISTS(SELECT 1 FROM project WHERE id = :project)",
                {"token": token, "project": project_id},
            ).fetchone()
        is_developer, is_member, exists = row
        if not is_developer:
            return Access.UNKNOWN_TOKEN
        if not is_member:
            return Access.FORBIDDEN
        return Access.OK if exists else Access.NO_SUCH_PROJECT

    def add_m2m_client(self, project_id: str, client_id: str, client_secret: str) -> None:
        """Add (or move and re-key) an M2M client of a Project."""
        with self._write() as conn:
            self._require_project(conn, project_id)
            conn.execute(
                "INSERT OR REPLACE INTO m2m_client VALUES (?, ?, ?)",
                (client_id, client_secret, project_id),
            )

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
        """The Project's roles as GET /v1/iam/role returns them, oldest first."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT id, name, member_count FROM role WHERE project_id = ? ORDER BY rowid",
                (project_id,),
            ).fetchall()
        return [{"id": rid, "name": name, "memberCount": count} for rid, name, count in rows]

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
        """Create a role (a fresh UUID unless role_id is given) and return it."""
        role_id = role_id or str(uuid.uuid4())
        with self._write() as conn:
            self._require_project(conn, project_id)
            conn.execute(
                "INSERT INTO role VALUES (?, ?, ?, ?, ?, ?)",
                (role_id, project_id, name, description, _json(access_policy), member_count),
            )
        role: dict[str, Any] = {"id": role_id, "name": name}
        if description is not None:
            role["description"] = description
        if access_policy is not None:
            role["accessPolicy"] = access_policy
        role["memberCount"] = member_count
        return role


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
