"""The emulator's SQLite store: Projects, their objects, Developers and tokens.

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
raise NotFound (the API's 404); breaking the API's rules raises Invalid (400)
or Conflict (409). `kind` is a `Kind` of `kinds.py` or its name ("role",
"application", "m2m", "secret", "bucket", "zambda"); `key` is what the API's
path names it by (an id; a secret's or bucket's name; a function's id or name).

    store.get_project(pid)                   GET /v1/project (or None)
    store.set_project_fields(pid, {...})     a hand edit, read-only fields included
    store.delete_project(pid)                a Project that has gone away
    store.project_ids()                      every Project id, sorted

    store.list(kind, pid)                    GET {path}: the list items
    store.get(kind, pid, key)                GET {path}/{id}
    store.create(kind, pid, {...})           POST (or PUT): (document, created?)
    store.update(kind, pid, key, {...})      PATCH, or a hand edit of a hidden field
                                             (a role's `members`, a function's `status`)
    store.delete(kind, pid, key)             a role: Invalid while held or a default role
    store.rotate(kind, pid, key) -> secret   applications and M2M clients

    store.list_roles(pid) / get_role / add_role(pid, name, description=, access_policy=,
        role_id=, member_count=) / update_role / delete_role
    store.list_applications(pid) / get_application / add_application(pid, {...}, app_id=,
        client_id=) / update_application / delete_application / rotate_application_secret
    store.list_m2m(pid) / page_m2m(pid, limit=, cursor=, name=, m2m_id=, role_id=, sort=,
        order=) / get_m2m / create_m2m / update_m2m / delete_m2m / rotate_m2m_secret
    store.add_m2m_client(pid, client_id, secret, {...})  a known credential, as seeded
    store.m2m_page_size                      the largest page of /v1/m2m/v2/list

    store.start_upload(pid, key, filename) -> token    POST /v1/zambda/{id}/s3-upload
    store.finish_upload(token, data)         the PUT to /_emulator/upload/{token}
    store.zambda_code(pid, key)              the bytes last uploaded (or None)

    store.add_developer(token, [pids])       another Developer token
    store.caller(token, pid)                 who a token is: access, M2M id, policies
    store.clock                              time.time; a test may move it on

A seeded M2M client's id is `seed_m2m_id(clientId)` unless its seed gives one.
"""

from __future__ import annotations

import hmac
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from typing import Any

from reconciler.emulator import iam, objects, projects, zambdas
from reconciler.emulator.iam import seed_m2m_id
from reconciler.emulator.kinds import APPLICATION, KINDS, KINDS_BY_NAME, M2M, ROLE, ZAMBDA
from reconciler.emulator.objects import Conflict, Document, Invalid, Kind, NotFound, StoreError
from reconciler.emulator.schema import prepare
from reconciler.emulator.seed import Seed
from reconciler.errors import ConfigError

__all__ = ["Access", "Caller", "Conflict", "Invalid", "NotFound", "Store", "StoreError"]

TOKEN_LIFETIME_S = 86400
DEFAULT_M2M_PAGE_SIZE = 100


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
        self.clock: Callable[[], float] = time.time
        self._lock = threading.Lock()
        target = path if path is not None else ":memory:"
        try:
            # isolation_level=None: we issue BEGIN IMMEDIATE / COMMIT ourselves.
            self._conn = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise ConfigError(f"{path}: cannot open database file ({exc})") from exc
        try:
            prepare(self._conn, in_file=path is not None)
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise ConfigError(f"{path}: not an emulator database ({exc})") from exc

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
        now = self.clock()
        try:
            with self._write() as conn:
                # Replacing a Project replaces its objects too; the Project row itself
                # is replaced in place so that Developer memberships naming it survive.
                for table in ("zambda_upload_status", *(k.table.name for k in reversed(KINDS))):
                    conn.executemany(f"DELETE FROM {table} WHERE project_id = ?", project_ids)
                projects.insert(conn, seed.projects)
                for kind in KINDS:  # roles first: the others name them
                    seeded = (
                        (project.id, item.fields, item.id, item.columns)
                        for project in seed.projects
                        for item in project.of(kind.name)
                    )
                    objects.insert_many(conn, kind, seeded, now)
                conn.executemany(
                    "INSERT INTO zambda_upload_status VALUES (?, ?, ?)",
                    (
                        (project.id, name, status)
                        for project in seed.projects
                        for name, status in project.zambda_upload_status.items()
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
        now = self.clock()
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
                (token, self.clock()),
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
    ) -> Document:
        """Add (or replace) a client credential, as the seed does; return the M2M client.

        fields: name, description, roles (ids), accessPolicy, jwksUrl, profile,
        id. Without roles and accessPolicy the client may do anything in its
        Project, like a seeded one.
        """
        fields = dict(fields or {})
        m2m_id = fields.pop("id", None) or seed_m2m_id(client_id)
        fields.setdefault("name", client_id)
        unrestricted = not fields.get("roles") and fields.get("accessPolicy") is None
        credentials = {
            "client_id": client_id,
            "client_secret": client_secret,
            "unrestricted": unrestricted,
        }
        with self._write() as conn:
            projects.require(conn, project_id)
            conn.execute("DELETE FROM m2m_client WHERE client_id = ?", (client_id,))
            iam.check_role_ids(conn, project_id, fields.get("roles", ()))
            rowid = objects.insert(
                conn, M2M, project_id, fields, object_id=m2m_id, columns=credentials
            )
            return objects.read(conn, M2M, rowid)

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

    def get_project(self, project_id: str) -> Document | None:
        """The Project as GET /v1/project returns it, or None."""
        with self._read() as conn:
            return projects.read(conn, project_id)

    def patch_project(self, project_id: str, changes: Mapping[str, Any]) -> Document:
        """Apply an already type-checked PATCH in one transaction; return the updated Project.

        Role ids must belong to this Project (Invalid otherwise); a missing
        Project raises NotFound. Only the given columns are written, so
        concurrent PATCHes of different fields cannot undo each other.
        """
        with self._write() as conn:
            projects.require(conn, project_id)
            return projects.update(conn, project_id, changes)

    def set_project_fields(self, project_id: str, fields: Mapping[str, Any]) -> Document:
        """A hand edit for tests: set any field, read-only ones included; return the Project.

        Keys are the API's names: name, description, signupEnabled, sandbox,
        fhirVersion, defaultPatientRoleId / defaultSSOUserRoleId (an id or
        None), or defaultPatientRole / defaultSSOUserRole (a role name or id,
        resolved like the seed's, or None).
        """
        with self._write() as conn:
            projects.require(conn, project_id)
            return projects.update(conn, project_id, projects.hand_edit(conn, project_id, fields))

    def delete_project(self, project_id: str) -> None:
        """Remove a Project with its objects (memberships naming it stay)."""
        with self._write() as conn:
            conn.execute("DELETE FROM project WHERE id = ?", (project_id,))

    # -- every kind --------------------------------------------------------

    def list(self, kind: Kind | str, project_id: str) -> list[Document]:
        """The Project's objects of this kind as GET {path} lists them, oldest first."""
        with self._read() as conn:
            return objects.list_items(conn, _kind(kind), project_id)

    def get(self, kind: Kind | str, project_id: str, key: str) -> Document:
        """One object as GET {path}/{id} answers it; NotFound if not this Project's."""
        kind = _kind(kind)
        with self._read() as conn:
            return objects.read(conn, kind, objects.find(conn, kind, project_id, key))

    def create(
        self,
        kind: Kind | str,
        project_id: str,
        fields: Mapping[str, Any],
        *,
        object_id: str | None = None,
        columns: Mapping[str, Any] | None = None,
    ) -> tuple[Document, bool]:
        """Create an object from checked write fields: (its document, False if it replaced one)."""
        kind = _kind(kind)
        with self._write() as conn:
            projects.require(conn, project_id)
            return objects.create(
                conn,
                kind,
                project_id,
                fields,
                object_id=object_id,
                columns=columns,
                now=self.clock(),
            )

    def update(
        self, kind: Kind | str, project_id: str, key: str, fields: Mapping[str, Any]
    ) -> Document:
        """Set the given fields (checked write fields, or hidden ones as a hand edit)."""
        with self._write() as conn:
            return objects.update(conn, _kind(kind), project_id, key, fields)

    def delete(self, kind: Kind | str, project_id: str, key: str) -> None:
        """Delete an object; NotFound if not this Project's, Invalid if the kind refuses."""
        with self._write() as conn:
            objects.delete(conn, _kind(kind), project_id, key)

    def rotate(self, kind: Kind | str, project_id: str, key: str) -> str:
        """A new secret for an application or M2M client (the old one stops working)."""
        kind = _kind(kind)
        column = {"application": "secret", "m2m": "client_secret"}[kind.name]
        secret = iam.new_secret()
        with self._write() as conn:
            objects.set_column(conn, kind, project_id, key, column, secret)
        return secret

    # -- M2M clients -----------------------------------------------------

    def page_m2m(self, project_id: str, *, limit: int, **query: Any) -> tuple[list[Document], Any]:
        """One page of GET /v1/m2m/v2/list: (items, next cursor or None); see `iam.page_m2m`."""
        with self._read() as conn:
            return iam.page_m2m(conn, project_id, limit=limit, **query)

    def list_m2m(self, project_id: str) -> list[Document]:
        """Every M2M client of the Project as GET /v1/m2m/v2/list items, oldest first."""
        items, _ = self.page_m2m(project_id, limit=1 << 30)
        return items

    # -- Zambda Function code ------------------------------------------------

    def start_upload(self, project_id: str, key: str, filename: str) -> str:
        """A single-use token for the function's code upload (POST .../s3-upload)."""
        with self._write() as conn:
            rowid = objects.find(conn, ZAMBDA, project_id, key)
            row = conn.execute("SELECT id FROM zambda WHERE rowid = ?", (rowid,)).fetchone()
            return zambdas.start_upload(conn, row[0], filename, self.clock())

    def finish_upload(self, token: str, data: bytes) -> str:
        """Store code PUT to a signed URL (zambdas.Denied if unknown, used or expired)."""
        with self._write() as conn:
            return zambdas.finish_upload(conn, token, data, self.clock())

    def zambda_code(self, project_id: str, key: str) -> bytes | None:
        """The bytes last uploaded for a function, or None."""
        with self._read() as conn:
            rowid = objects.find(conn, ZAMBDA, project_id, key)
            return conn.execute("SELECT code FROM zambda WHERE rowid = ?", (rowid,)).fetchone()[0]

    # -- the section 9 names (tests and the demo use them) ------------------

    def list_roles(self, project_id: str) -> list[Document]:
        return self.list(ROLE, project_id)

    def get_role(self, project_id: str, role_id: str) -> Document:
        return self.get(ROLE, project_id, role_id)

    def add_role(
        self,
        project_id: str,
        name: str,
        *,
        description: str | None = None,
        access_policy: Mapping[str, Any] | None = None,
        role_id: str | None = None,
        member_count: int = 0,
    ) -> Document:
        fields = objects.without_none(
            name=name, description=description, accessPolicy=access_policy
        )
        columns = {"member_count": member_count}
        return self.create(ROLE, project_id, fields, object_id=role_id, columns=columns)[0]

    def update_role(self, project_id: str, role_id: str, fields: Mapping[str, Any]) -> Document:
        return self.update(ROLE, project_id, role_id, fields)

    def delete_role(self, project_id: str, role_id: str) -> None:
        self.delete(ROLE, project_id, role_id)

    def list_applications(self, project_id: str) -> list[Document]:
        return self.list(APPLICATION, project_id)

    def get_application(self, project_id: str, app_id: str) -> Document:
        return self.get(APPLICATION, project_id, app_id)

    def add_application(
        self,
        project_id: str,
        fields: Mapping[str, Any],
        *,
        app_id: str | None = None,
        client_id: str | None = None,
    ) -> Document:
        columns = {"client_id": client_id} if client_id else None
        return self.create(APPLICATION, project_id, fields, object_id=app_id, columns=columns)[0]

    def update_application(
        self, project_id: str, app_id: str, fields: Mapping[str, Any]
    ) -> Document:
        return self.update(APPLICATION, project_id, app_id, fields)

    def delete_application(self, project_id: str, app_id: str) -> None:
        self.delete(APPLICATION, project_id, app_id)

    def rotate_application_secret(self, project_id: str, app_id: str) -> str:
        return self.rotate(APPLICATION, project_id, app_id)

    def get_m2m(self, project_id: str, m2m_id: str) -> Document:
        return self.get(M2M, project_id, m2m_id)

    def create_m2m(self, project_id: str, fields: Mapping[str, Any]) -> Document:
        return self.create(M2M, project_id, fields)[0]

    def update_m2m(self, project_id: str, m2m_id: str, fields: Mapping[str, Any]) -> Document:
        return self.update(M2M, project_id, m2m_id, fields)

    def delete_m2m(self, project_id: str, m2m_id: str) -> None:
        self.delete(M2M, project_id, m2m_id)

    def rotate_m2m_secret(self, project_id: str, m2m_id: str) -> str:
        return self.rotate(M2M, project_id, m2m_id)


def _kind(kind: Kind | str) -> Kind:
    return kind if isinstance(kind, Kind) else KINDS_BY_NAME[kind]
