"""The emulator's SQLite schema, and opening a database: a new one, or one an older
emulator wrote (version 1 kept only credentials per M2M client).

Version 2 tables added later (secrets, buckets, Zambda Functions) are created
on open (`IF NOT EXISTS`), so a version 2 file of any age opens as it is.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

from reconciler.emulator.iam import seed_m2m_id
from reconciler.emulator.kinds import M2M
from reconciler.emulator.objects import create

SCHEMA_VERSION = 2

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
-- Project secrets (Zambda environment): POST /secret creates or replaces by name.
CREATE TABLE IF NOT EXISTS secret (
    project_id TEXT NOT NULL REFERENCES project(id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    value      TEXT NOT NULL,
    PRIMARY KEY (project_id, name)
);
CREATE TABLE IF NOT EXISTS bucket (
    id            TEXT PRIMARY KEY,
    project_id    TEXT NOT NULL REFERENCES project(id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    creation_date TEXT NOT NULL,
    UNIQUE (project_id, name)
);
-- code and file_*: the zip last PUT to a signed URL, and its fileInfo.
CREATE TABLE IF NOT EXISTS zambda (
    id                TEXT PRIMARY KEY,
    project_id        TEXT NOT NULL REFERENCES project(id) ON DELETE CASCADE,
    name              TEXT NOT NULL,
    runtime           TEXT NOT NULL,
    status            TEXT NOT NULL,
    trigger_method    TEXT NOT NULL,
    schedule          TEXT,
    memory_size       INTEGER,
    timeout_s         INTEGER,
    execution_role_id TEXT REFERENCES role(id) ON DELETE SET NULL,
    file_name         TEXT,
    file_size         INTEGER,
    file_modified     TEXT,
    code              BLOB,
    UNIQUE (project_id, name)
);
-- Signed upload URLs not used yet: only the token's sha256 is kept.
CREATE TABLE IF NOT EXISTS zambda_upload (
    token_hash TEXT PRIMARY KEY,
    zambda_id  TEXT NOT NULL REFERENCES zambda(id) ON DELETE CASCADE,
    filename   TEXT NOT NULL,
    expires_at REAL NOT NULL
);
-- The seed's zambdaStatusAfterUpload: the status a code upload leaves a function
-- of that name in (name '*': any other function), instead of Active.
CREATE TABLE IF NOT EXISTS zambda_upload_status (
    project_id TEXT NOT NULL REFERENCES project(id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    status     TEXT NOT NULL,
    PRIMARY KEY (project_id, name)
);
"""

# Version 1 kept only (client_id, client_secret, project_id) per M2M client.
_MIGRATE_FROM_1 = """
ALTER TABLE m2m_client RENAME TO m2m_client_v1;
DROP INDEX IF EXISTS client_by_project;
"""


def prepare(conn: sqlite3.Connection, in_file: bool) -> None:
    """Set the connection up and bring the schema to SCHEMA_VERSION (one transaction).

    sqlite3.DatabaseError for a file that is not an emulator database.
    """
    conn.execute("PRAGMA foreign_keys = ON")
    if in_file:
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


def _migrate_clients_from_1(conn: sqlite3.Connection) -> None:
    """Give version 1's bare credentials the fields of an M2M client (full access, as before)."""
    rows = conn.execute("SELECT client_id, client_secret, project_id FROM m2m_client_v1").fetchall()
    for client_id, secret, project_id in rows:
        credentials = {"client_id": client_id, "client_secret": secret, "unrestricted": 1}
        fields = {"name": client_id}
        create(conn, M2M, project_id, fields, object_id=seed_m2m_id(client_id), columns=credentials)
    conn.execute("DROP TABLE m2m_client_v1")


def _statements(script: str) -> Iterator[str]:
    """The SQL statements of a script, one by one (comments may hold semicolons)."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            yield statement
            statement = ""
