"""The JSON renderers: the plan file of SPEC section 4 and apply's result document.

Redaction happens to the values, before anything is serialised: a credential value
inside a live value (a description holding a token) becomes ``***`` in the
document, and the checksum is computed over the redacted document, so the plan
file still verifies. Fingerprints and the checksum are hashes, never redacted.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TextIO

from reconciler.escape import redact_values
from reconciler.plan import Plan, checksum
from reconciler.render.outcomes import Outcome, apply_summary

# Hashes: never a credential, and redacting a run of hex digits would break them.
_HASHES = frozenset({"checksum", "liveFingerprint"})


def plan_document(plan: Plan) -> dict[str, Any]:
    """The plan file's document, every credential value redacted, checksum over the rest."""
    doc = redact_values(plan.to_dict(), _HASHES)
    doc["checksum"] = checksum(doc)
    return doc


def render_json(plan: Plan, fh: TextIO) -> None:
    # ASCII only: JSON escapes C0 controls itself, but a C1 control (a terminal's 8-bit
    # CSI) or a bidi override would otherwise reach a terminal or CI log raw.
    json.dump(plan_document(plan), fh, indent=2, ensure_ascii=True)
    fh.write("\n")


def render_apply_json(outcomes: Sequence[Outcome], fh: TextIO) -> None:
    doc = {
        "summary": apply_summary(outcomes),
        "projects": [outcome.to_dict() for outcome in outcomes],
    }
    json.dump(redact_values(doc), fh, indent=2, ensure_ascii=True)
    fh.write("\n")
