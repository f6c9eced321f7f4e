"""Read and check the emulator's seed (SPEC section 6) before anything touches the store.

    projects:
      - id: fd9b1113-4bd2-4dad-8631-a95ba035dfda
        name: SANDBOX
        description: Sandbox Project            # optional, default ""
        signupEnabled: false                    # optional, default false
        sandbox: true                           # optional, default false
        fhirVersion: r4                         # optional, r4 or r5, default r4
        roles: [{id: ..., name: Patient}, {name: FrontDesk}]   # id optional: a UUID is made
        defaultPatientRole: Patient             # a role name or id, null, or absent
        defaultSSOUserRole: null
        m2mClients: [{clientId: sandbox-ci, clientSecret: sandbox-secret}]
    developers:
      - {accessToken: dev-token, projects: [fd9b1113-4bd2-4dad-8631-a95ba035dfda]}

A seed file may also be written as JSON (JSON is YAML): it loads much faster.

Every problem is a ConfigError of one line naming the source and the place,
e.g. `seed.yaml: projects[1] (CLINIC).defaultPatientRole: unknown role 'Nurse'`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from reconciler.errors import ConfigError

# libyaml's loader is ~10x faster: it matters when a benchmark seeds 10,000 Projects.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_PROJECT_KEYS = {
    "id",
    "name",
    "description",
    "signupEnabled",
    "sandbox",
    "fhirVersion",
    "roles",
    "defaultPatientRole",
    "defaultSSOUserRole",
    "m2mClients",
}
_ROLE_KEYS = {"id", "name", "description", "accessPolicy", "memberCount"}
_CLIENT_KEYS = {"clientId", "clientSecret"}
_DEVELOPER_KEYS = {"accessToken", "projects"}


@dataclass(frozen=True)
class SeedRole:
    id: str
    name: str
    description: str | None = None
    access_policy: Mapping[str, Any] | None = None
    member_count: int = 0


@dataclass(frozen=True)
class SeedClient:
    client_id: str
    client_secret: str


@dataclass(frozen=True)
class SeedProject:
    id: str
    name: str
    description: str
    signup_enabled: bool
    sandbox: bool
    fhir_version: str
    roles: tuple[SeedRole, ...]
    default_patient_role_id: str | None
    default_sso_user_role_id: str | None
    clients: tuple[SeedClient, ...]


@dataclass(frozen=True)
class SeedDeveloper:
    access_token: str
    projects: tuple[str, ...]


@dataclass(frozen=True)
class Seed:
    """A checked seed: role ids filled in, default roles resolved to ids."""

    source: str
    projects: tuple[SeedProject, ...]
    developers: tuple[SeedDeveloper, ...]


def load_seed(seed: str | Path | Mapping[str, Any]) -> Seed:
    """Check a seed given as a YAML file path or as an already-parsed mapping."""
    if isinstance(seed, (str, Path)):
        return parse_seed(read_seed_file(seed), source=str(seed))
    return parse_seed(seed, source="seed")


def read_seed_file(path: str | Path) -> Any:
    """The YAML document of a seed file; ConfigError (one line) if unreadable or not YAML."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"{path}: cannot read seed file: {reason}") from exc
    if text.lstrip().startswith("{"):
        # JSON is YAML too, and json parses a 10,000-Project seed ~50x faster
        # than PyYAML: benchmarks write their seeds as JSON.
        try:
            return json.loads(text)
        except ValueError:
            pass  # not JSON after all: let YAML read it (and report its errors)
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: seed is not valid YAML: {problem}") from exc


def parse_seed(data: Any, *, source: str = "seed") -> Seed:
    """Check a parsed seed document and fill in what it leaves out."""
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{source}: a seed must be a mapping with 'projects' and/or 'developers', "
            f"not {_kind(data)}"
        )
    _no_unknown_keys(data, {"projects", "developers"}, source, "")
    projects = tuple(
        _project(item, source, f"projects[{i}]")
        for i, item in enumerate(_list(data, "projects", source, ""))
    )
    _no_duplicates([p.id for p in projects], source, "projects", "Project id")
    _no_duplicates([r.id for p in projects for r in p.roles], source, "projects", "role id")
    _no_duplicates(
        [c.client_id for p in projects for c in p.clients], source, "projects", "clientId"
    )
    developers = tuple(
        _developer(item, source, f"developers[{i}]")
        for i, item in enumerate(_list(data, "developers", source, ""))
    )
    seen: set[str] = set()
    for i, developer in enumerate(developers):
        if developer.access_token in seen:
            # Never echo the token itself: it is a credential.
            raise ConfigError(f"{source}: developers[{i}]: accessToken repeats an earlier one")
        seen.add(developer.access_token)
    return Seed(source=source, projects=projects, developers=developers)


def resolve_role(value: str, roles: Sequence[tuple[str, str]]) -> str:
    """A role id from a role id or name among (id, name) pairs; ValueError if none or several."""
    if any(rid == value for rid, _ in roles):
        return value
    matches = [rid for rid, name in roles if name == value]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ValueError(f"{len(matches)} roles are named {value!r}; give the role's id")
    known = ", ".join(sorted({name for _, name in roles})) or "none"
    raise ValueError(f"unknown role {value!r} (roles: {known})")


def _project(item: Any, source: str, where: str) -> SeedProject:
    if not isinstance(item, Mapping):
        raise ConfigError(f"{source}: {where}: a Project must be a mapping, not {_kind(item)}")
    if "id" not in item:
        raise ConfigError(f"{source}: {where}: missing required key 'id'")
    pid = _string(item, "id", source, where, required=True)
    label = f"{where} ({item.get('name') or pid})"
    _no_unknown_keys(item, _PROJECT_KEYS, source, label)
    name = _string(item, "name", source, label, required=True)
    fhir = item.get("fhirVersion", "r4")
    if fhir not in ("r4", "r5"):
        raise ConfigError(f"{source}: {label}.fhirVersion: must be r4 or r5, not {fhir!r}")
    roles = tuple(
        _role(role, source, f"{label}.roles[{i}]")
        for i, role in enumerate(_list(item, "roles", source, label))
    )
    pairs = [(r.id, r.name) for r in roles]
    clients = tuple(
        _client(client, source, f"{label}.m2mClients[{i}]")
        for i, client in enumerate(_list(item, "m2mClients", source, label))
    )
    return SeedProject(
        id=pid,
        name=name,
        description=_string(item, "description", source, label) or "",
        signup_enabled=_bool(item, "signupEnabled", source, label),
        sandbox=_bool(item, "sandbox", source, label),
        fhir_version=fhir,
        roles=roles,
        default_patient_role_id=_default_role(item, "defaultPatientRole", pairs, source, label),
        default_sso_user_role_id=_default_role(item, "defaultSSOUserRole", pairs, source, label),
        clients=clients,
    )


def _role(item: Any, source: str, where: str) -> SeedRole:
    if not isinstance(item, Mapping):
        raise ConfigError(f"{source}: {where}: a role must be a mapping, not {_kind(item)}")
    _no_unknown_keys(item, _ROLE_KEYS, source, where)
    policy = item.get("accessPolicy")
    if policy is not None and not isinstance(policy, Mapping):
        raise ConfigError(f"{source}: {where}.accessPolicy: must be a mapping")
    count = item.get("memberCount", 0)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ConfigError(f"{source}: {where}.memberCount: must be a whole number >= 0")
    return SeedRole(
        id=_string(item, "id", source, where) or str(uuid.uuid4()),
        name=_string(item, "name", source, where, required=True),
        description=_string(item, "description", source, where),
        access_policy=policy,
        member_count=count,
    )


def _client(item: Any, source: str, where: str) -> SeedClient:
    if not isinstance(item, Mapping):
        raise ConfigError(f"{source}: {where}: an M2M client must be a mapping, not {_kind(item)}")
    _no_unknown_keys(item, _CLIENT_KEYS, source, where)
    return SeedClient(
        client_id=_string(item, "clientId", source, where, required=True),
        client_secret=_string(item, "clientSecret", source, where, required=True),
    )


def _developer(item: Any, source: str, where: str) -> SeedDeveloper:
    if not isinstance(item, Mapping):
        raise ConfigError(f"{source}: {where}: a Developer must be a mapping, not {_kind(item)}")
    _no_unknown_keys(item, _DEVELOPER_KEYS, source, where)
    token = _string(item, "accessToken", source, where, required=True)
    projects = _list(item, "projects", source, where)
    for i, pid in enumerate(projects):
        if not isinstance(pid, str) or not pid:
            raise ConfigError(f"{source}: {where}.projects[{i}]: must be a Project id (a string)")
    return SeedDeveloper(access_token=token, projects=tuple(projects))


def _default_role(
    item: Mapping[str, Any],
    key: str,
    roles: Sequence[tuple[str, str]],
    source: str,
    where: str,
) -> str | None:
    value = item.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{source}: {where}.{key}: must be a role name or id, not {_kind(value)}")
    try:
        return resolve_role(value, roles)
    except ValueError as exc:
        raise ConfigError(f"{source}: {where}.{key}: {exc}") from exc


def _string(
    item: Mapping[str, Any], key: str, source: str, where: str, *, required: bool = False
) -> str | None:
    value = item.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        need = "a non-empty string" if required else "a string"
        got = "missing" if value is None else _kind(value)
        raise ConfigError(f"{source}: {where}.{key}: must be {need}, not {got}")
    return value


def _bool(item: Mapping[str, Any], key: str, source: str, where: str) -> bool:
    value = item.get(key, False)
    if not isinstance(value, bool):
        raise ConfigError(f"{source}: {where}.{key}: must be true or false, not {value!r}")
    return value


def _list(item: Mapping[str, Any], key: str, source: str, where: str) -> list[Any]:
    value = item.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        place = f"{where}.{key}" if where else key
        raise ConfigError(f"{source}: {place}: must be a list, not {_kind(value)}")
    return value


def _no_unknown_keys(item: Mapping[str, Any], known: set[str], source: str, where: str) -> None:
    unknown = sorted(str(key) for key in item if key not in known)
    if unknown:
        place = f"{where}: " if where else ""
        raise ConfigError(
            f"{source}: {place}unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})"
        )


def _no_duplicates(values: list[str], source: str, where: str, what: str) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ConfigError(f"{source}: {where}: {what} {value!r} appears more than once")
        seen.add(value)


def _kind(value: Any) -> str:
    if value is None:
        return "empty"
    if isinstance(value, Mapping):
        return "a mapping"
    names = {list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return names.get(type(value), type(value).__name__)
