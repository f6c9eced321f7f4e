"""How a Project's name becomes the names `init` and `export` write for it: the file
stem (`patient-portal-staging`) and the prefix of its variables
(`PATIENT_PORTAL_STAGING_CLIENT_ID`, `RECONCILER_SECRET_PATIENT_PORTAL_STAGING_KEY`).

Pure, and light to import (`init` starts fast).
"""

from __future__ import annotations

import re

# Names an `auth` block may not use: the runner's, and reconciler's own ${VAR} values.
RESERVED_ENV_PREFIXES = ("GITHUB_", "ACTIONS_", "RECONCILER_VAR_")


def slug_for(name: str | None, project_id: str, taken: set[str]) -> str:
    """A file stem for a Project: its name in lowercase words, else its id's first part."""
    slug = re.sub(r"[^a-z0-9]+", "-", (name or "").lower()).strip("-")
    if not slug or not slug[0].isalpha():
        slug = f"project-{project_id[:8]}"
    candidate, n = slug, 2
    while candidate in taken:
        candidate, n = f"{slug}-{n}", n + 1
    taken.add(candidate)
    return candidate


def env_prefix(slug: str) -> str:
    """`patient-portal-staging` -> `PATIENT_PORTAL_STAGING`: the start of the names of
    a Project's variables (its credentials, its secrets' values). GitHub and reconciler
    keep some prefixes for themselves: such a name starts with PROJECT_."""
    env = re.sub(r"[^A-Z0-9]+", "_", slug.upper()).strip("_")
    if env.startswith(RESERVED_ENV_PREFIXES) or f"{env}_".startswith(RESERVED_ENV_PREFIXES):
        env = f"PROJECT_{env}"
    return env
