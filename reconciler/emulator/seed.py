"""Read and check the emulator's seed (SPEC section 6) before anything touches the store.

    projects:
      - id: fd9b1113-4bd2-4dad-8631-a95ba035dfda
        name: SANDBOX
        description: Sandbox Project            # optional, default ""
        signupEnabled: false                    # optional, default false
        sandbox: true                           # optional, default false
        fhirVersion: r4                         # optional, r4 or r5, default r4
        roles:                                  # id optional: a UUID is made
          - {id: ..., name: Patient, description: ..., accessPolicy: {rule: [...]}}
          - {name: FrontDesk, members: 3}       # members: users/developers holding it
        defaultPatientRole: Patient             # a role name or id, null, or absent
        defaultSSOUserRole: null
        applications:                           # write fields of POST /v1/application
          - {name: Portal, allowedCallbackUrls: [https://x/cb], id: ..., clientId: ...}
        m2mClients:                             # id optional: seed_m2m_id(clientId)
          - {clientId: sandbox-ci, clientSecret: sandbox-secret, name: CI,
             description: ..., roles: [FrontDesk], accessPolicy: ..., jwksUrl: ...}
    developers:
      - {accessToken: dev-token, projects: [fd9b1113-4bd2-4dad-8631-a95ba035dfda]}
    m2mPageSize: 100                            # the largest page of GET /v1/m2m/v2/list

A seeded M2M client with neither `roles` nor `accessPolicy` may do anything in
its Project; one with either is held to its policies (SPEC section 6).

A seed file may also be written as JSON (JSON is YAML): it loads much faster.

Every problem is a ConfigError of one line naming the source and the place,
e.g. `seed.yaml: projects[1] (CLINIC).defaultPatientRole: unknown role 'Nurse'`.
"""

from __future__ import annotations

import json
import secrets
import string
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from reconciler.emulator.bodies import APPLICATION_FIELDS, M2M_FIELDS, ROLE_FIELDS, check_fields
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
    "applications",
    "m2mClients",
}
_ROLE_KEYS = {"id", "name", "description", "accessPolicy", "members", "memberCount"}
_APPLICATION_KEYS = {"id", "clientId", *APPLICATION_FIELDS}
_CLIENT_KEYS = {"id", "clientId", "clientSecret", *M2M_FIELDS}
_DEVELOPER_KEYS = {"accessToken", "projects"}

# Ids derived from a clientId, so a test can know a seeded client's id in advance.
_ID_NAMESPACE = uuid.UUID("5b0e8f4e-4f0b-4f3e-9a61-6c1d2f7e8a90")


def seed_m2m_id(client_id: str) -> str:
    """The id a seeded M2M client gets when its seed entry gives none."""
    return str(uuid.uuid5(_ID_NAMESPACE, "m2m:" + client_id))


def default_profile(m2m_id: str) -> str:
    """The `profile` of an M2M client that was given none: a FHIR Device reference."""
    return f"Device/{uuid.uuid5(_ID_NAMESPACE, 'device:' + m2m_id)}"


@dataclass(frozen=True)
class SeedRole:
    id: str
    name: str
    description: str | None = None
    access_policy: Mapping[str, Any] | None = None
    member_count: int = 0  # the seed's `members`: Users and Developers holding the role


@dataclass(frozen=True)
class SeedApplication:
    id: str
    client_id: str
    fields: Mapping[str, Any]  # the write fields given (name, allowedCallbackUrls, ...)


@dataclass(frozen=True)
class SeedClient:
    client_id: str
    client_secret: str
    id: str = ""
    name: str = ""
    description: str | None = None
    role_ids: tuple[str, ...] = ()
    access_policy: Mapping[str, Any] | None = None
    jwks_url: str | None = None
    profile: str | None = None


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
    applications: tuple[SeedApplication, ...] = ()


@dataclass(frozen=True)
class SeedDeveloper:
    access_token: str
    projects: tuple[str, ...]


@dataclass(frozen=True)
class Seed:
    """A checked seed: ids filled in, role names resolved to ids."""

    source: str
    projects: tuple[SeedProject, ...]
    developers: tuple[SeedDeveloper, ...]
    m2m_page_size: int | None = None


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
    _no_unknown_keys(data, {"projects", "developers", "m2mPageSize"}, source, "")
    page_size = data.get("m2mPageSize")
    if page_size is not None and (
        isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1
    ):
        raise ConfigError(f"{source}: m2mPageSize: must be a whole number >= 1")
    projects = tuple(
        _project(item, source, f"projects[{i}]")
        for i, item in enumerate(_list(data, "projects", source, ""))
    )
    _no_duplicates([p.id for p in projects], source, "projects", "Project id")
    _no_duplicates([r.id for p in projects for r in p.roles], source, "projects", "role id")
    _no_duplicates(
        [c.client_id for p in projects for c in p.clients], source, "projects", "clientId"
    )
    _no_duplicates([c.id for p in projects for c in p.clients], source, "projects", "M2M id")
    _no_duplicates(
        [a.id for p in projects for a in p.applications], source, "projects", "application id"
    )
    _no_duplicates(
        [a.client_id for p in projects for a in p.applications],
        source,
        "projects",
        "application clientId",
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
    return Seed(source=source, projects=projects, developers=developers, m2m_page_size=page_size)


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
        _client(client, pairs, source, f"{label}.m2mClients[{i}]")
        for i, client in enumerate(_list(item, "m2mClients", source, label))
    )
    applications = tuple(
        _application(app, source, f"{label}.applications[{i}]")
        for i, app in enumerate(_list(item, "applications", source, label))
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
        applications=applications,
    )


def _role(item: Any, source: str, where: str) -> SeedRole:
    if not isinstance(item, Mapping):
        raise ConfigError(f"{source}: {where}: a role must be a mapping, not {_kind(item)}")
    _no_unknown_keys(item, _ROLE_KEYS, source, where)
    fields = _checked(item, ROLE_FIELDS, ("name",), source, where)
    if "members" in item and "memberCount" in item:
        raise ConfigError(f"{source}: {where}: give members or memberCount, not both")
    key = "memberCount" if "memberCount" in item else "members"
    count = item.get(key, 0)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ConfigError(f"{source}: {where}.{key}: must be a whole number >= 0")
    return SeedRole(
        id=_string(item, "id", source, where) or str(uuid.uuid4()),
        name=fields["name"],
        description=fields.get("description"),
        access_policy=fields.get("accessPolicy"),
        member_count=count,
    )


def _application(item: Any, source: str, where: str) -> SeedApplication:
    if not isinstance(item, Mapping):
        raise ConfigError(f"{source}: {where}: an application must be a mapping, not {_kind(item)}")
    _no_unknown_keys(item, _APPLICATION_KEYS, source, where)
    fields = _checked(item, APPLICATION_FIELDS, ("name", "allowedCallbackUrls"), source, where)
    return SeedApplication(
        id=_string(item, "id", source, where) or str(uuid.uuid4()),
        client_id=_string(item, "clientId", source, where) or new_client_id(),
        fields=fields,
    )


def _client(item: Any, roles: Sequence[tuple[str, str]], source: str, where: str) -> SeedClient:
    if not isinstance(item, Mapping):
        raise ConfigError(f"{source}: {where}: an M2M client must be a mapping, not {_kind(item)}")
    _no_unknown_keys(item, _CLIENT_KEYS, source, where)
    client_id = _string(item, "clientId", source, where, required=True)
    secret = _string(item, "clientSecret", source, where, required=True)
    fields = _checked(item, M2M_FIELDS, (), source, where)
    role_ids = []
    for i, role in enumerate(fields.get("roles", ())):
        try:
            role_ids.append(resolve_role(role, roles))
        except ValueError as exc:
            raise ConfigError(f"{source}: {where}.roles[{i}]: {exc}") from exc
    m2m_id = _string(item, "id", source, where) or seed_m2m_id(client_id)
    return SeedClient(
        client_id=client_id,
        client_secret=secret,
        id=m2m_id,
        name=fields.get("name", client_id),
        description=fields.get("description"),
        role_ids=tuple(dict.fromkeys(role_ids)),
        access_policy=fields.get("accessPolicy"),
        jwks_url=fields.get("jwksUrl"),
        profile=fields.get("profile") or default_profile(m2m_id),
    )


def new_client_id() -> str:
    """A fresh clientId: 32 letters and digits, as Oystehr's (Auth0's) look."""
    return "".join(secrets.choice(_ALNUM) for _ in range(32))


_ALNUM = string.ascii_letters + string.digits


def _checked(
    item: Mapping[str, Any],
    fields: Mapping[str, str],
    required: tuple[str, ...],
    source: str,
    where: str,
) -> dict[str, Any]:
    """The API's write fields of a seed entry, checked as the API checks them."""
    # A hand-written seed may write `key: null` for "not set".
    body = {key: value for key, value in item.items() if key in fields and value is not None}
    missing = [key for key in required if key not in body]
    if missing:
        raise ConfigError(f"{source}: {where}: missing required key {missing[0]!r}")
    values, problems = check_fields(body, fields)
    if problems:
        raise ConfigError(f"{source}: {where}: {problems[0]}")
    return values


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
