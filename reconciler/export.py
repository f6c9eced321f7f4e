"""A live Project (settings, roles, applications, M2M clients, secrets, buckets,
functions) -> the text of a project file that plans with no change.

A secret's value is never exported (it is never read): each secret is written as
`valueFrom: {env: <SLUG>_<NAME>}` (SLUG from the Project's name, as `init` makes it; `-`
as `_`), so the file plans with no change once `RECONCILER_SECRET_<SLUG>_<NAME>` holds
the value. A bucket whose name starts with the Project's id is written with
`${PROJECT_ID}` there instead, so the file reads the same in every environment.

`export_project` reads what it needs through the client; `project_file_text` is pure.
Over an existing project file for the same Project, `existing_project` reads what
the rewrite keeps (its leading comments and its `auth` block, whose credentials
also read the Project) and `keep_from` puts them into the new text.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from reconciler.differ import normalise_live
from reconciler.errors import ConfigError
from reconciler.kinds import KINDS, ROLE, Kind
from reconciler.plan import MANAGED_KEYS, ROLE_FIELDS
from reconciler.slugs import env_prefix, slug_for

# A literal `${` in a live value must survive the file's ${VAR} substitution.
from reconciler.substitution import as_written as _escape

SCHEMA_PATH = Path("schemas") / "project.schema.json"
MODELINE = "# yaml-language-server:"
# The hint an export ends with when it has no auth block to keep.
AUTH_HINT = (
    "# Credentials: name the environment variables that hold them (never the values), e.g.",
    "# auth: {clientIdEnv: MY_PROJECT_CLIENT_ID, clientSecretEnv: MY_PROJECT_CLIENT_SECRET}",
)


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

    Reads: GET /project; each included kind's list and one GET per object whose fields
    the list does not carry (a function's list carries them all); the role list also
    when a default role, an M2M client's roles or a function's role need names.
    """
    live = api.get_project(project_id, credentials)
    if not isinstance(live, dict) or "id" not in live:
        raise ConfigError("GET /project did not answer with a Project")
    kinds = [kind for kind in KINDS if kind.key in include]
    lists = {kind.name: api.list_objects(kind, project_id, credentials) for kind in kinds}
    has_role = "settings" in include and any(live.get(key) for key in ROLE_FIELDS)
    roles = lists.get(ROLE.name)
    if roles is None and (has_role or any(kind.role_fields for kind in kinds)):
        roles = api.list_objects(ROLE, project_id, credentials)
    objects = {
        kind.name: [
            # A kind with no GET of its fields (a secret's would answer its value), or
            # whose list carries them all (functions): the list.
            api.get_object(kind, project_id, credentials, item["id"])
            if kind.item_get and kind.needs_get(kind.write_fields)
            else item
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
                _object_fields(kind, item, roles, prefix) or {}  # `{}`: it exists
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
    body = yaml.dump(
        doc,
        Dumper=_FileDumper,
        sort_keys=False,
        allow_unicode=True,
        width=100,
        default_flow_style=None,
    )
    lines = []
    if schema_ref:
        lines.append(f"# yaml-language-server: $schema={schema_ref}")
    lines.append(body.rstrip("\n"))
    lines += skipped
    if any(kind.local_fields and (doc.get(kind.key) or {}) for kind in KINDS):
        lines += [
            "# Zambda functions: their configuration only. Add each one's source (its zip,",
            "# built in this repository, relative to its root) and sourceInputs to manage",
            "# its code too: without source, plan never compares or uploads code.",
        ]
    lines += AUTH_HINT
    return "\n".join(lines) + "\n"


class _FileDumper(yaml.SafeDumper):
    """Block style at the top level, always: with only scalar settings (`--include
    settings`) PyYAML would write the whole file as one `{...}` line. Below it, lists
    of scalars and leaf mappings stay on one line (`roles: [Staff]`)."""

    def represent(self, data: Any) -> None:
        node = self.represent_data(data)
        node.flow_style = False
        self.serialize(node)
        self.represented_objects = {}
        self.object_keeper = []
        self.alias_key = None


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
        value = item.get(kind.api_name(name))
        if name == "name" or value is None:
            continue
        if name in kind.role_fields and isinstance(value, str):  # one role, by its id
            named = [r for r in roles if r.get("id") == value]
            value = _role_value({"id": value, "name": (named or [{}])[0].get("name")}, roles)
        elif name in kind.role_fields:
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


@dataclass(frozen=True)
class Existing:
    """A project file already at the output: its id, and what a rewrite keeps, its first
    comment lines and its auth block (the lines as written, with the comment lines just
    above it)."""

    path: Path
    id: Any
    leading: tuple[str, ...]
    auth_lines: tuple[str, ...]
    auth: Mapping[str, str] | None
    auth_problem: str | None  # the auth block names the credentials to read with


def existing_project(path: Path) -> Existing | None:
    """What a rewrite of `path` keeps; None when it is not a project file at all."""
    from reconciler import schema
    from reconciler.files import parse_project

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    project, _ = parse_project(text, str(path), {})
    if project is None or "id" not in project.data:
        return None
    lines = text.splitlines()
    leading = tuple(_leading_comments(lines))
    auth, auth_lines, problem = project.data.get("auth"), (), None
    if auth is not None:
        line = project.key_location("auth")[0]
        auth_lines = tuple(_block(lines, line - 1, floor=len(leading)))
        findings = schema.check({"id": project.data["id"], "auth": auth})
        if findings:
            problem = (
                f"{path}:{line}: its auth block is not valid ({findings[0].message}); fix it "
                "(reconciler validate) or pass --force to overwrite the file"
            )
    return Existing(path, project.data["id"], leading, auth_lines, auth, problem)


def keep_from(existing: Existing, exported: str) -> str:
    """The export with the existing file's leading comments first (its own modeline
    replaced by theirs when they hold one) and its auth block last."""
    lines = exported.splitlines()
    if any(line.startswith(MODELINE) for line in existing.leading) and lines:
        lines = [line for line in lines if not line.startswith(MODELINE)]
    return with_auth_lines("\n".join([*existing.leading, *lines]) + "\n", existing.auth_lines)


def with_auth_lines(exported: str, auth_lines: Sequence[str]) -> str:
    """An exported file ending with these auth lines instead of the hint about auth."""
    lines = exported.splitlines()
    if auth_lines:
        lines = [line for line in lines if line not in AUTH_HINT]
    return "\n".join([*lines, *auth_lines]) + "\n"


_COMMENT_OR_BLANK = re.compile(r"\s*(#.*)?")


def _leading_comments(lines: Sequence[str]) -> list[str]:
    """The comment lines a file starts with (blank lines among them kept, not after)."""
    leading: list[str] = []
    for line in lines:
        if not _COMMENT_OR_BLANK.fullmatch(line):
            break
        leading.append(line)
    while leading and not leading[-1].strip():
        leading.pop()
    return leading


def _block(lines: Sequence[str], start: int, floor: int = 0) -> list[str]:
    """A top-level key's lines: the comment lines right above it (below `floor`), the key,
    and every line up to the next top-level key (trailing comments and blanks left out)."""
    first = start
    while first > floor and lines[first - 1].startswith("#"):
        first -= 1
    end = start + 1
    while end < len(lines) and (lines[end][:1] in (" ", "\t") or not lines[end].strip()):
        end += 1
    block = list(lines[first:end])
    while block and _COMMENT_OR_BLANK.fullmatch(block[-1]):
        block.pop()
    return block
