"""The dependency levels of an apply, derived from the kinds' write order.

Within a Project, apply writes one level at a time: every write of a level runs
concurrently, and a level starts when the one before it has finished (a level
with no writes costs no round). The levels are

    each kind of ``kinds.KINDS`` in write order, each phase of it in turn
        (roles -> applications -> M2M clients -> ...);
    the settings PATCH (it may name roles the first level created);
    the deletes, kinds in reverse order (M2M clients before the roles they hold).

Adding a kind is a declaration in ``kinds.py``; it slots in here by its place in
``KINDS``. A kind whose writes need more than one round declares its phases::

    CODE = Phase("code", includes=lambda action, fields: "code" in fields)
    ZAMBDA = Kind(..., phases=(Phase("write", includes=config_changes), CODE))

and registers a writer for each new phase name in ``apply.PHASE_WRITERS``
(``PHASE_WRITERS["code"] = upload_code``: a function of the ProjectWriter, the
credentials and the ObjectChange). Each phase is then its own level, after the
phases before it: every function's configuration is written before any code is
uploaded.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from reconciler.kinds import KINDS, Kind, Phase

SETTINGS = "settings"
DELETE = Phase("delete", includes=lambda action, fields: action == "delete")


@dataclass(frozen=True)
class Level:
    """One round of a Project's writes: a kind's phase, the settings PATCH or a kind's
    deletes."""

    name: str  # "role", "zambda code", "settings", "delete m2m"
    kind: Kind | None = None  # None: the settings PATCH
    phase: Phase | None = None

    def takes(self, kind: str, action: str, fields: frozenset[str]) -> bool:
        """Whether this level writes an object change of `kind`."""
        if self.kind is None or self.phase is None or kind != self.kind.name:
            return False
        return self.phase.includes(action, fields)


def apply_levels(kinds: Sequence[Kind] = KINDS) -> tuple[Level, ...]:
    """The levels in the order apply runs them."""
    writes = [
        Level(kind.name if index == 0 else f"{kind.name} {phase.name}", kind, phase)
        for kind in kinds
        for index, phase in enumerate(kind.phases)
    ]
    deletes = [Level(f"delete {kind.name}", kind, DELETE) for kind in reversed(kinds)]
    return (*writes, Level(SETTINGS), *deletes)


LEVELS = apply_levels()
