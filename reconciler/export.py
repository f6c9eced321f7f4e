"""A live Project (settings, roles, applications, M2M clients, secrets, buckets) -> the
text of a project file that plans with no change.

A secret's value is never exported (it is never read): each secret is written as
`valueFrom: {env: <SLUG>_<NAME>}` (SLUG from the Project's name, as `init` makes it; `-`
as `_`), so the file plans with no change once `RECONCILER_SECRET_<SLUG>_<NAME>` holds
the value. A bucket whose name starts with the Project's id is written with
`${PROJECT_ID}` there instead, so the file reads the same in every environment.

`export_project` reads what it needs through the client; `project_file_text` is pure.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from reconciler.errors import ConfigError
from reconciler.kinds import KINDS, M2M, ROLE, Kind
from reconciler.plan import MANAGED_KEYS, ROLE_FIELDS, normalise_live

# A literal `${` in a live value must survive the file's ${VAR} substitution.
from reconciler.substitution import as_written as _escape

SCHEMA_PATH = Path("schemas") / "project.schema.json"
# Names an `auth` block may not use: the runner's, and reconciler's own ${VAR} values.
RESERVED_ENV_PREFIXES = ("GITHUB_", "ACTIONS_", "RECONCILER_VAR_")


INCLUDE_WORDS = ("settings", *(kind.key for kind in KINDS))


def parse_include(text: str | None) -> tuple[str, ...]:
    """`--include settings,roles` -> its words; every word when not given."""
    if not text:
        return INCLUDE_WORDS
    words = tuple(word.strip() for word in text.split(",") if word.strip())
    unknown = [word for word in words if word not in INCLUDE_WORDS]
    if unknown or not words:
        raise ConfigError(
            f"--include takes a comma-separated list of {', '.join(INCLUDE_WORDS)}; got {text!r}"
        )
    return words


def export_project(
    api: Any,
    credentials: Any,
    project_id: str,
    *,
    schema_ref: str | None = None,
    include: Sequence[str] = INCLUDE_WORDS,
) -> str:
    """Read a live Project and every kind it includes, and return its file's text.

    Reads: GET /project; each included kind's list and one GET per object (its fields);
    the role list also when a default role or an M2M client's roles need names.
    """
    live = api.get_project(project_id, credentials)
    if not isinstance(live, dict) or "id" not in live:
        raise ConfigError("GET /project did not answer with a Project")
    kinds = [kind for kind in KINDS if kind.key in include]
    lists = {kind.name: api.list_objects(kind, project_id, credentials) for kind in kinds}
    has_role = "settings" in include and any(live.get(key) for key in ROLE_FIELDS)
    roles = lists.get(ROLE.name)
    if roles is None and (has_role or M2M in kinds):
        roles = api.list_objects(ROLE, project_id, credentials)
    objects = {
        kind.name: [
            # A kind with no GET of its fields (a secret's would answer its value): the list.
            api.get_object(kind, project_id, credentials, item["id"]) if kind.item_get else item
            for item in lists[kind.name]
            if _unique(item, lists[kind.name])
        ]
        for kind in kinds
    }
    return project_file_text(
        live,
        roles or [],
        schema_ref=schema_ref,
        settings="settings" in include,
        objects={kind.name: (objects[kind.name], lists[kind.name]) for kind in kinds},
    )


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


def secret_variable(prefix: str, name: str) -> str:
    """The variable NAME an exported secret reads (as RECONCILER_SECRET_NAME)."""
    return f"{prefix}_{name.replace('-', '_')}"


def project_file_text(
    live_project: Mapping[str, Any],
    roles: Sequence[Mapping[str, Any]] = (),
    *,
    schema_ref: str | None = None,
    settings: bool = True,
    objects: Mapping[str, tuple[Sequence[Mapping], Sequence[Mapping]]] | None = None,
) -> str:
    """A project file for a live Project: keys in canonical order, roles by name (by id
    when another role has the same name), an absent role as null, `${` escaped as `$${`;
    then each kind's objects by name with the fields they hold (never `prune`)."""
    live = normalise_live(live_project)
    doc: dict[str, Any] = {"id": live_project["id"]}
    if settings:
        for key in MANAGED_KEYS:
            value = live[key]
            if key in ROLE_FIELDS:
                value = _role_value(value, roles)
            doc[key] = _escape(value)
    skipped: list[str] = []
    project_id = str(live_project["id"])
    prefix = env_prefix(slug_for(live_project.get("name"), project_id, set()))
    for kind in KINDS:
        if objects is None or kind.name not in objects:
            continue
        details, listed = objects[kind.name]
        doc[kind.key] = {
            _object_name(kind, item["name"], project_id): (
                _object_fields(kind, item, roles, prefix) or None
            )
            for item in details
        }
        skipped += [
            f"# {kind.name} {item.get('name')!r} ({item.get('id')}) is not exported: another "
            f"{kind.name} has the same name, and names are identity here. Rename one, then "
            "export again."
            for item in listed
            if not _unique(item, listed)
        ]
    body = yaml.safe_dump(
        doc, sort_keys=False, allow_unicode=True, width=100, default_flow_style=None
    )
    lines = []
    if schema_ref:
        lines.append(f"# yaml-language-server: $schema={schema_ref}")
    lines.append(body.rstrip("\n"))
    lines += skipped
    lines += [
        "# Credentials: name the environment variables that hold them (never the values), e.g.",
        "# auth: {clientIdEnv: MY_PROJECT_CLIENT_ID, clientSecretEnv: MY_PROJECT_CLIENT_SECRET}",
    ]
    return "\n".join(lines) + "\n"


def _unique(item: Mapping[str, Any], items: Sequence[Mapping[str, Any]]) -> bool:
    return sum(1 for other in items if other.get("name") == item.get("name")) == 1


def _object_name(kind: Kind, name: str, project_id: str) -> str:
    """An object's name as the file writes it: `${PROJECT_ID}` back where a name that
    takes substitution (a bucket's) starts with the Project's id."""
    if kind.substitute_names and name.startswith(project_id):
        return "${PROJECT_ID}" + name[len(project_id) :]
    return name


def _object_fields(
    kind: Kind, item: Mapping[str, Any], roles: Sequence[Mapping[str, Any]], prefix: str = ""
) -> dict[str, Any]:
    """An object's write fields as a file holds them: null fields left out (unmanaged),
    role references by name (by id when the name is shared); a concealed value (a
    secret's) as the variable it is to be read from, never the value."""
    if kind.concealed:
        return {"valueFrom": {"env": secret_variable(prefix, str(item["name"]))}}
    fields: dict[str, Any] = {}
    for name in kind.write_fields:
        value = item.get(name)
        if name == "name" or value is None:
            continue
        if name in kind.role_fields:
            value = [
                _role_value({"id": r.get("id"), "name": r.get("name")}, roles)
                for r in value
                if isinstance(r, Mapping)
            ]
        fields[name] = _escape(value)
    return fields


def _role_value(role: Mapping[str, Any] | None, roles: Sequence[Mapping[str, Any]]) -> Any:
    if role is None:
        return None
    namesakes = [r for r in roles if r.get("name") == role["name"]]
    if not role.get("name") or len(namesakes) > 1:
        return {"id": role["id"]}
    return role["name"]


def schema_ref_for(output: Path | None, start: Path | None = None) -> str | None:
    """A relative path from the file's folder to the repo's schema, when there is one.

    Looks in the output's folder (or the current one) and each parent for
    schemas/project.schema.json.
    """
    folder = (output.parent if output else (start or Path.cwd())).resolve()
    for candidate in (folder, *folder.parents):
        if (candidate / SCHEMA_PATH).is_file():
            return Path(os.path.relpath(candidate / SCHEMA_PATH, folder)).as_posix()
    return None
