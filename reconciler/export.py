"""Live settings -> the text of a project file that plans with no change.

`export_project` reads what it needs through the client; `project_file_text` is pure.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from reconciler.errors import ConfigError
from reconciler.plan import MANAGED_KEYS, ROLE_FIELDS, normalise_live

SCHEMA_PATH = Path("schemas") / "project.schema.json"


def export_project(
    api: Any, credentials: Any, project_id: str, *, schema_ref: str | None = None
) -> str:
    """Read a live Project (and its roles when one is a default) and return its file's text."""
    live = api.get_project(project_id, credentials)
    if not isinstance(live, dict) or "id" not in live:
        raise ConfigError("GET /project did not answer with a Project")
    # Roles are listed only to tell whether a role's name is shared (then it goes by id).
    has_role = any(live.get(key) for key in ROLE_FIELDS)
    roles = api.list_roles(project_id, credentials) if has_role else []
    return project_file_text(live, roles, schema_ref=schema_ref)


def project_file_text(
    live_project: Mapping[str, Any],
    roles: Sequence[Mapping[str, Any]] = (),
    *,
    schema_ref: str | None = None,
) -> str:
    """A project file for a live Project: keys in canonical order, roles by name (by id
    when another role has the same name), an absent role as null, `${` escaped as `$${`."""
    live = normalise_live(live_project)
    doc: dict[str, Any] = {"id": live_project["id"]}
    for key in MANAGED_KEYS:
        value = live[key]
        if key in ROLE_FIELDS:
            value = _role_value(value, roles)
        doc[key] = _escape(value)
    body = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=100)
    lines = []
    if schema_ref:
        lines.append(f"# yaml-language-server: $schema={schema_ref}")
    lines.append(body.rstrip("\n"))
    lines += [
        "# Credentials: name the environment variables that hold them (never the values), e.g.",
        "# auth: {clientIdEnv: MY_PROJECT_CLIENT_ID, clientSecretEnv: MY_PROJECT_CLIENT_SECRET}",
    ]
    return "\n".join(lines) + "\n"


def _role_value(role: Mapping[str, Any] | None, roles: Sequence[Mapping[str, Any]]) -> Any:
    if role is None:
        return None
    namesakes = [r for r in roles if r.get("name") == role["name"]]
    if not role.get("name") or len(namesakes) > 1:
        return {"id": role["id"]}
    return role["name"]


def _escape(value: Any) -> Any:
    """A literal `${` in a live value must survive the file's ${VAR} substitution."""
    if isinstance(value, str):
        return value.replace("${", "$${")
    if isinstance(value, dict):
        return {k: _escape(v) for k, v in value.items()}
    return value


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
