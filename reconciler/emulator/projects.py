"""A Project's own settings in SQLite: GET /v1/project's document and PATCH's write.

Functions over a connection in a transaction the Store opened.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping
from typing import Any

from reconciler.emulator.iam import check_role_ids
from reconciler.emulator.objects import Document, Invalid, NotFound
from reconciler.emulator.seed import SeedProject, resolve_role

# API field name -> column, for the fields a PATCH (or a hand edit) may set.
COLUMNS = {
    "name": "name",
    "description": "description",
    "signupEnabled": "signup_enabled",
    "sandbox": "sandbox",
    "fhirVersion": "fhir_version",
    "defaultPatientRoleId": "default_patient_role_id",
    "defaultSSOUserRoleId": "default_sso_user_role_id",
}
_ROLE_ID_FIELDS = ("defaultPatientRoleId", "defaultSSOUserRoleId")

_QUERY = """
SELECT p.id, p.name, p.description, p.signup_enabled, p.sandbox, p.fhir_version,
       p.default_patient_role_id, pr.name, p.default_sso_user_role_id, sr.name
FROM project p
LEFT JOIN role pr ON pr.id = p.default_patient_role_id
LEFT JOIN role sr ON sr.id = p.default_sso_user_role_id
WHERE p.id = ?
"""


def insert(conn: sqlite3.Connection, seeded: Iterable[SeedProject]) -> None:
    """Add or replace the seed's Project rows (their objects are deleted first)."""
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
            for p in seeded
        ),
    )


def require(conn: sqlite3.Connection, project_id: str) -> None:
    """NotFound unless the Project exists."""
    if conn.execute("SELECT 1 FROM project WHERE id = ?", (project_id,)).fetchone() is None:
        raise NotFound(f"Project {project_id} not found")


def read(conn: sqlite3.Connection, project_id: str) -> Document | None:
    """The Project as GET /v1/project returns it, or None."""
    row = conn.execute(_QUERY, (project_id,)).fetchone()
    return None if row is None else _document(row)


def update(conn: sqlite3.Connection, project_id: str, changes: Mapping[str, Any]) -> Document:
    """Check role ids belong to the Project, write the given columns, return the Project."""
    for field in _ROLE_ID_FIELDS:
        if changes.get(field) is not None:
            check_role_ids(conn, project_id, [changes[field]], field)
    if changes:
        # Column names come from COLUMNS, never from the request.
        assignments = ", ".join(f"{COLUMNS[key]} = ?" for key in changes)
        conn.execute(
            f"UPDATE project SET {assignments} WHERE id = ?", (*changes.values(), project_id)
        )
    return _document(conn.execute(_QUERY, (project_id,)).fetchone())


def hand_edit(
    conn: sqlite3.Connection, project_id: str, fields: Mapping[str, Any]
) -> dict[str, Any]:
    """The changes of `Store.set_project_fields`: role names resolved to ids."""
    changes: dict[str, Any] = {}
    for key, value in fields.items():
        if key in ("defaultPatientRole", "defaultSSOUserRole"):
            roles = conn.execute(
                "SELECT id, name FROM role WHERE project_id = ? ORDER BY rowid", (project_id,)
            ).fetchall()
            try:
                changes[key + "Id"] = None if value is None else resolve_role(value, roles)
            except ValueError as exc:
                raise Invalid(f"{key}: {exc}") from exc
        elif key in COLUMNS:
            changes[key] = value
        else:
            raise Invalid(f"unknown field {key!r}; known: {', '.join(COLUMNS)}")
    return changes


def _document(row: tuple[Any, ...]) -> Document:
    pid, name, description, signup, sandbox, fhir, patient_id, patient, sso_id, sso = row
    doc: Document = {
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
