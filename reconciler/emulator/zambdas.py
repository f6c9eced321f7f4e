"""The quirks of Zambda Functions (SPEC section 14): their rules, and code uploads.

Rules beyond each field's type: a name is unique within its Project (409);
`executionRoleId` is a role of the Project; `cron` needs a `schedule`;
`timeoutInSeconds` is at most 27 for `http_auth` and `http_open`.

Status: a new function is `Draft`; a code upload makes it `Active`, or what the
seed's `zambdaStatusAfterUpload` says for its name (`Failed`, `Pending`, ...).

Code: POST /zambda/{id}/s3-upload makes a signed URL on the emulator itself,
`/_emulator/upload/{token}`: single use, valid for UPLOAD_LIFETIME_S, no
bearer token. Only the token's sha256 is stored. Its PUT stores the bytes and
sets `fileInfo {name, size, lastModified}`.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

from reconciler.emulator.iam import check_role_ids
from reconciler.emulator.objects import Conflict, Document, Hooks, Invalid, StoreError

UPLOAD_LIFETIME_S = 300
RUNTIMES = ("nodejs20.x", "nodejs22.x", "python3.13", "python3.12", "java21", "dotnet8", "ruby3.3")
TRIGGERS = ("http_auth", "http_open", "subscription", "cron")
STATUSES = ("Draft", "Pending", "Validating", "Active", "Failed", "Inactive")
HTTP_TIMEOUT_MAX = 27


class Denied(StoreError, PermissionError):
    """A signed URL that is unknown, used or expired: 403, as S3 answers."""


def now_iso(now: float) -> str:
    """An ISO 8601 UTC time with milliseconds, as the API writes dates."""
    moment = datetime.fromtimestamp(now, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def rule_problem(doc: Mapping[str, Any]) -> str | None:
    """What breaks the rules between a function's fields (one phrase), or None."""
    trigger = doc.get("triggerMethod")
    if trigger == "cron" and "schedule" not in doc:
        return "schedule is required when triggerMethod is cron"
    timeout = doc.get("timeoutInSeconds")
    if trigger in ("http_auth", "http_open") and (timeout or 0) > HTTP_TIMEOUT_MAX:
        return (
            f"timeoutInSeconds must be at most {HTTP_TIMEOUT_MAX} for {trigger} functions "
            f"(not {timeout})"
        )
    return None


class ZambdaHooks(Hooks):
    def check(
        self,
        conn: sqlite3.Connection,
        project_id: str,
        doc: Document,
        fields: Mapping[str, Any],
        rowid: int | None,
    ) -> None:
        if "name" in fields:
            clash = conn.execute(
                "SELECT 1 FROM zambda WHERE project_id = ? AND name = ? AND rowid != ?",
                (project_id, fields["name"], rowid or -1),
            ).fetchone()
            if clash:
                raise Conflict(f"a Zambda Function named {fields['name']!r} already exists")
        if "executionRoleId" in fields:
            check_role_ids(conn, project_id, [fields["executionRoleId"]], "executionRoleId")
        problem = rule_problem(doc)
        if problem:
            raise Invalid(problem)

    def columns(
        self, project_id: str, object_id: str | None, now: float
    ) -> dict[str, Callable[[], Any]]:
        return {"status": lambda: "Draft"}

    def finish(
        self, conn: sqlite3.Connection, doc: Document, hidden: Mapping[str, Any]
    ) -> Document:
        info = {
            key: hidden[column]
            for key, column in (
                ("name", "fileName"),
                ("size", "fileSize"),
                ("lastModified", "fileModified"),
            )
            if hidden.get(column) is not None
        }
        if not info:
            return doc
        # The SDK's order: fileInfo after schedule, before memorySize.
        later = {
            key: doc.pop(key)
            for key in ("memorySize", "timeoutInSeconds", "executionRoleId")
            if key in doc
        }
        return {**doc, "fileInfo": info, **later}


def start_upload(conn: sqlite3.Connection, zambda_id: str, filename: str, now: float) -> str:
    """A new single-use upload token for the function's code (only its hash is kept)."""
    token = secrets.token_urlsafe(32)
    conn.execute("DELETE FROM zambda_upload WHERE expires_at <= ?", (now,))
    conn.execute(
        "INSERT INTO zambda_upload VALUES (?, ?, ?, ?)",
        (_hash(token), zambda_id, filename, now + UPLOAD_LIFETIME_S),
    )
    return token


def finish_upload(conn: sqlite3.Connection, token: str, data: bytes, now: float) -> str:
    """Store the code PUT to a signed URL; the token is used up. Returns the function's id.

    Denied for a token that is unknown, used (the two look the same) or expired.
    """
    row = conn.execute(
        "SELECT u.zambda_id, u.filename, u.expires_at, z.project_id, z.name "
        "FROM zambda_upload u JOIN zambda z ON z.id = u.zambda_id WHERE u.token_hash = ?",
        (_hash(token),),
    ).fetchone()
    if row is None:
        raise Denied("this upload URL is not valid, or was used already")
    zambda_id, filename, expires_at, project_id, name = row
    conn.execute("DELETE FROM zambda_upload WHERE token_hash = ?", (_hash(token),))
    if expires_at <= now:
        raise Denied("this upload URL has expired (they last 5 minutes)")
    status = conn.execute(
        "SELECT status FROM zambda_upload_status WHERE project_id = ? AND name IN (?, '*') "
        "ORDER BY name = '*' LIMIT 1",
        (project_id, name),
    ).fetchone()
    conn.execute(
        "UPDATE zambda SET code = ?, file_name = ?, file_size = ?, file_modified = ?, "
        "status = ? WHERE id = ?",
        (data, filename, len(data), now_iso(now), status[0] if status else "Active", zambda_id),
    )
    return zambda_id


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
