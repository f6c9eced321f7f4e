"""Plans as plain data: Change, ObjectChange, ProjectPlan and Plan, each with the
`to_dict()` of the plan file (SPEC section 4), the plan's checksum, and the settings a
project file can manage.

Pure: no I/O. ``differ.py`` makes a ProjectPlan (diff(desired, live)); ``planfile.py``
reads a saved plan back as untrusted input.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from reconciler import __version__
from reconciler.kinds import BY_NAME
from reconciler.objects import sha256_of

FORMAT_VERSION = 3

# The keys a project file can manage, in canonical order (the order of export and of changes).
MANAGED_KEYS = (
    "name",
    "description",
    "signupEnabled",
    "defaultPatientRole",
    "defaultSSOUserRole",
    "fhirVersion",
)
# Role fields: the file's key -> the key PATCH takes (GET returns {id, name}, PATCH takes an id).
ROLE_FIELDS = {
    "defaultPatientRole": "defaultPatientRoleId",
    "defaultSSOUserRole": "defaultSSOUserRoleId",
}
# Asserted, never written.
IMMUTABLE_KEYS = ("fhirVersion",)

UNCHANGED, CHANGED, ERROR = "unchanged", "changed", "error"
COMPARE = "compare"
VALUE_SOURCE = "valueSource"  # a secret's plan-file key: where its value comes from
# Terraform's words for what happens to objects (a `compare` is not counted).
OBJECT_COUNTS = {"create": "add", "update": "change", "rename": "change", "delete": "destroy"}


@dataclass(frozen=True)
class Change:
    """One managed key whose live value differs from the file's.

    `source` is where the desired value is written, "FILE:LINE" (the file as the user
    sees it: the project file, or a fragment it includes), or None.
    """

    field: str
    before: Any
    after: Any
    source: str | None = None

    def to_dict(self) -> dict:
        return {
            "field": self.field,
            "before": self.before,
            "after": self.after,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Change:
        return cls(doc["field"], doc["before"], doc["after"], doc.get("source"))


@dataclass(frozen=True)
class ObjectChange:
    """One object to create, update, rename or delete (SPEC section 9), with its API body.

    `changes` hold the file's view (roles as {id, name}, an id not yet known as a ref);
    `body` holds exactly what the write sends, derived from them. `source` is where the
    object is declared ("FILE:LINE" of its name; for a delete, of the `prune` entry).
    A secret (a concealed kind) has no field changes and an empty body: its
    `valueSource` (one of `extras`, :attr:`value_source`) says where its value comes from
    (`literal`, `env RECONCILER_SECRET_X`, `m2m NAME clientId`), and its action may be
    `compare` (it exists; its value is compared, and written if it differs, at apply).
    """

    kind: str
    name: str
    id: str | None
    action: str
    changes: tuple[Change, ...] = ()
    body: Mapping[str, Any] = field(default_factory=dict)
    live_fingerprint: str | None = None
    source: str | None = None
    # The plan-file keys its kind adds (`Kind.plan_keys`: a function's `zip`, a
    # secret's `valueSource`).
    extras: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "name": self.name,
            "id": self.id,
            "action": self.action,
            "changes": [change.to_dict() for change in self.changes],
            "body": dict(self.body),
            "liveFingerprint": self.live_fingerprint,
            "source": self.source,
            **self.extras,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ObjectChange:
        kind = BY_NAME.get(doc["kind"])
        return cls(
            kind=doc["kind"],
            name=doc["name"],
            id=doc.get("id"),
            action=doc["action"],
            changes=tuple(Change.from_dict(c) for c in doc["changes"]),
            body=dict(doc.get("body") or {}),
            live_fingerprint=doc.get("liveFingerprint"),
            source=doc.get("source"),
            extras={key: doc.get(key) for key in (kind.plan_keys if kind else ())},
        )

    def change_of(self, field_name: str) -> Change | None:
        return next((c for c in self.changes if c.field == field_name), None)

    @property
    def value_source(self) -> str | None:
        """Where a secret's value comes from (its `valueSource`), or None."""
        return self.extras.get(VALUE_SOURCE)

    @property
    def changes_anything(self) -> bool:
        """Whether it is a change (a `compare` is not: its value may already be right)."""
        return self.action != COMPARE

    @property
    def renamed_from(self) -> str | None:
        if self.action != "rename":
            return None
        return next((c.before for c in self.changes if c.field == "name"), None)


@dataclass(frozen=True)
class ProjectPlan:
    """What would happen to one Project: unchanged, changed (with the PATCH) or error."""

    file: str
    project_id: str
    status: str
    changes: tuple[Change, ...] = ()
    patch: Mapping[str, Any] = field(default_factory=dict)
    auth: Mapping[str, str] | None = None
    live_fingerprint: str | None = None
    managed_keys: tuple[str, ...] = ()
    name: str | None = None
    error: str | None = None
    objects: tuple[ObjectChange, ...] = ()
    prune: tuple[str, ...] = ()
    not_managed: tuple[tuple[str, str], ...] = ()  # (kind, name) left alone without prune
    kept: tuple[tuple[str, str], ...] = ()  # (kind, name) prune keeps: the calling client

    @classmethod
    def failed(
        cls, file: str, project_id: str, error: str, auth: Mapping[str, str] | None = None
    ) -> ProjectPlan:
        return cls(file=file, project_id=project_id, status=ERROR, auth=auth, error=error)

    @property
    def compares(self) -> tuple[ObjectChange, ...]:
        """The secrets whose value apply compares (and writes if it differs)."""
        return tuple(change for change in self.objects if not change.changes_anything)

    @property
    def has_work(self) -> bool:
        """Whether apply has anything to do here: changes, or values to compare. A
        Project whose only entries are compares is `unchanged` (nothing is known to
        differ), yet apply compares them and sets back a value changed by hand."""
        return self.status == CHANGED or (self.status == UNCHANGED and bool(self.objects))

    def to_dict(self) -> dict:
        return {
            "file": self.file,
            "projectId": self.project_id,
            "name": self.name,
            "status": self.status,
            "changes": [change.to_dict() for change in self.changes],
            "patch": dict(self.patch),
            "auth": dict(self.auth) if self.auth else None,
            "managedKeys": list(self.managed_keys),
            "liveFingerprint": self.live_fingerprint,
            "error": self.error,
            "prune": list(self.prune),
            "objects": [change.to_dict() for change in self.objects],
            "notManaged": [{"kind": k, "name": n} for k, n in self.not_managed],
            "kept": [{"kind": k, "name": n} for k, n in self.kept],
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ProjectPlan:
        return cls(
            file=doc["file"],
            project_id=doc["projectId"],
            status=doc["status"],
            changes=tuple(Change.from_dict(c) for c in doc.get("changes") or ()),
            patch=dict(doc.get("patch") or {}),
            auth=doc.get("auth"),
            live_fingerprint=doc.get("liveFingerprint"),
            managed_keys=tuple(doc.get("managedKeys") or ()),
            name=doc.get("name"),
            error=doc.get("error"),
            objects=tuple(ObjectChange.from_dict(o) for o in doc.get("objects") or ()),
            prune=tuple(doc.get("prune") or ()),
            not_managed=tuple((o["kind"], o["name"]) for o in doc.get("notManaged") or ()),
            kept=tuple((o["kind"], o["name"]) for o in doc.get("kept") or ()),
        )


@dataclass(frozen=True)
class Plan:
    """Every Project's plan, in file order, for one API.

    `commit` is the git HEAD the plan was made at, when every file it read is committed
    there; otherwise `files_hash` is the hash of those files (``provenance.py``).
    `apply --plan` loads the same files and checks the plan against them.
    """

    api_url: str
    projects: tuple[ProjectPlan, ...]
    created_at: str = ""
    tool: str = f"reconciler {__version__}"
    commit: str | None = None
    files_hash: str | None = None

    @property
    def summary(self) -> dict[str, int]:
        counts = {CHANGED: 0, UNCHANGED: 0, "errors": 0}
        for project in self.projects:
            counts["errors" if project.status == ERROR else project.status] += 1
        return counts

    @property
    def object_summary(self) -> dict[str, int]:
        """Objects as Terraform counts them: to add, to change (updates, renames), to destroy."""
        counts = {"add": 0, "change": 0, "destroy": 0}
        for project in self.projects:
            for change in project.objects:
                if change.action in OBJECT_COUNTS:
                    counts[OBJECT_COUNTS[change.action]] += 1
        return counts

    @property
    def compared(self) -> int:
        """How many secret values apply compares (not counted as changes)."""
        return sum(len(project.compares) for project in self.projects)

    @property
    def manages_objects(self) -> bool:
        return any(p.objects or p.not_managed or p.kept for p in self.projects)

    @property
    def changed(self) -> list[ProjectPlan]:
        return [p for p in self.projects if p.status == CHANGED]

    @property
    def to_apply(self) -> list[ProjectPlan]:
        """The Projects apply works on: the changed ones and those with values to compare."""
        return [p for p in self.projects if p.has_work]

    @property
    def errors(self) -> list[ProjectPlan]:
        return [p for p in self.projects if p.status == ERROR]

    def to_dict(self) -> dict:
        """The plan file of SPEC section 4, checksum included."""
        doc = {
            "formatVersion": FORMAT_VERSION,
            "tool": self.tool,
            "createdAt": self.created_at,
            "apiUrl": self.api_url,
            "commit": self.commit,
            "filesHash": self.files_hash,
            "summary": self.summary,
            "objectSummary": self.object_summary,
            "projects": [project.to_dict() for project in self.projects],
        }
        doc["checksum"] = checksum(doc)
        return doc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Plan:
        return cls(
            api_url=doc["apiUrl"],
            projects=tuple(ProjectPlan.from_dict(p) for p in doc["projects"]),
            created_at=doc.get("createdAt", ""),
            tool=doc.get("tool", ""),
            commit=doc.get("commit"),
            files_hash=doc.get("filesHash"),
        )


def now_utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def checksum(doc: Mapping[str, Any]) -> str:
    """sha256 over the plan document without its "checksum" key."""
    return sha256_of({k: v for k, v in doc.items() if k != "checksum"})


def fingerprint(live: Mapping[str, Any], keys: Iterable[str]) -> str:
    """sha256 over the normalised live values of the keys a file manages."""
    return sha256_of({key: live.get(key) for key in keys})
