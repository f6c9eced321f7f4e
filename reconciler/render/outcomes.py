"""What apply did, as values the renderers write: one :class:`Outcome` per Project,
one :class:`ObjectOutcome` per object."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from reconciler.plan import UNCHANGED

APPLIED, FAILED, SKIPPED = "applied", "failed", "skipped"
# A write was in flight when the run was interrupted: it may or may not have been applied.
UNKNOWN = "unknown"
# A delete apply would not do without an option saying so (a bucket's: it destroys every
# object in it); the Project's other writes are done.
BLOCKED = "blocked"
# What an applied object's action did, in the words of apply's output.
DONE = {
    "create": "created",
    "update": "updated",
    "rename": "renamed",
    "delete": "deleted",
    "compare": "compared: the value was right",
}


@dataclass(frozen=True)
class ObjectOutcome:
    """What apply did to one object of a Project."""

    kind: str  # role | application | m2m
    name: str
    action: str
    status: str  # applied | failed | skipped | unknown | blocked
    error: str | None = None
    # What else apply knows about it, read from the API's answers: `code uploaded;
    # status Pending` (a Zambda function is reported as it is, never waited for).
    detail: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Outcome:
    """What apply did to one Project."""

    file: str
    project_id: str
    status: str  # applied | unchanged | failed | unknown | skipped | blocked
    error: str | None = None
    name: str | None = None
    objects: tuple[ObjectOutcome, ...] = ()

    def to_dict(self) -> dict:
        return {
            "file": self.file,
            "projectId": self.project_id,
            "name": self.name,
            "status": self.status,
            "error": self.error,
            "objects": [outcome.to_dict() for outcome in self.objects],
        }


def apply_summary(outcomes: Sequence[Outcome]) -> dict[str, int]:
    counts = {APPLIED: 0, UNCHANGED: 0, FAILED: 0, UNKNOWN: 0, SKIPPED: 0, BLOCKED: 0}
    for outcome in outcomes:
        counts[outcome.status] += 1
    return counts


def apply_counts(outcomes: Sequence[Outcome]) -> str:
    """`N applied, N unchanged, N failed`, then unknown, skipped and blocked when there
    are any."""
    counts = apply_summary(outcomes)
    text = f"{counts[APPLIED]} applied, {counts[UNCHANGED]} unchanged, {counts[FAILED]} failed"
    for status in (UNKNOWN, SKIPPED, BLOCKED):
        if counts[status]:
            text += f", {counts[status]} {status}"
    return text


def result_word(result: ObjectOutcome) -> str:
    """`created` (what an applied object's action did), else its status: `failed`."""
    return DONE.get(result.action, result.action) if result.status == APPLIED else result.status
