"""Read and check the emulator's seed (SPEC sections 6, 9, 13, 14) before anything touches
the store.

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
        secrets:                                # name: letters, digits, - and _
          - {name: STRIPE_KEY, value: sk_test_1}
        buckets:                                # a name, or {name, id?, creationDate?}
          - visit-notes
          - {name: uploads, creationDate: "2024-01-02T03:04:05.000Z"}
        zambdas:                                # write fields of POST /v1/zambda, and
          - {name: check-in, runtime: nodejs22.x, triggerMethod: http_auth,
             executionRole: FrontDesk,          # a role name or id (or executionRoleId)
             status: Active,                    # default: Active with fileInfo, else Draft
             fileInfo: {name: 3f2a.zip, size: 1024, lastModified: "2024-..."}, id: ...}
        zambdaStatusAfterUpload:                # the status a code upload leaves a function
          check-in: Failed                      # in (default Active); '*': any other
    developers:
      - {accessToken: dev-token, projects: [fd9b1113-4bd2-4dad-8631-a95ba035dfda]}
    m2mPageSize: 100                            # the largest page of GET /v1/m2m/v2/list

A seeded M2M client with neither `roles` nor `accessPolicy` may do anything in
its Project; one with either is held to its policies (SPEC section 6).

A seed file may also be written as JSON (JSON is YAML): it loads much faster.
`demo` names the bundled demo seed (`reconciler emulator --seed demo`).

Every problem is a ConfigError of one line naming the source and the place,
e.g. `seed.yaml: projects[1] (CLINIC).defaultPatientRole: unknown role 'Nurse'`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from reconciler.emulator.bodies import TEXT, FieldType, check_fields, whole
from reconciler.emulator.iam import default_profile, new_client_id, seed_m2m_id
from reconciler.emulator.kinds import APPLICATION, BUCKET, M2M, ROLE, SECRET, ZAMBDA
from reconciler.emulator.objects import Kind
from reconciler.emulator.zambdas import STATUSES, rule_problem
from reconciler.errors import ConfigError

__all__ = [
    "Seed",
    "SeedDeveloper",
    "SeedObject",
    "SeedProject",
    "default_profile",
    "load_seed",
    "new_client_id",
    "parse_seed",
    "resolve_role",
    "resolve_seed_path",
    "seed_m2m_id",
]

# libyaml's loader is ~10x faster: it matters when a benchmark seeds 10,000 Projects.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# The seed every `--seed demo` means: the demo's three Projects.
DEMO_SEED = "demo"

_OBJECT_KEYS = ("roles", "applications", "m2mClients", "secrets", "buckets", "zambdas")
_PROJECT_KEYS = {
    "id",
    "name",
    "description",
    "signupEnabled",
    "sandbox",
    "fhirVersion",
    "defaultPatientRole",
    "defaultSSOUserRole",
    "zambdaStatusAfterUpload",
    *_OBJECT_KEYS,
}
_ROLE_KEYS = {"id", "members", "memberCount"}
_APPLICATION_KEYS = {"id", "clientId"}
_CLIENT_KEYS = {"id", "clientId", "clientSecret"}
_BUCKET_KEYS = {"id", "creationDate"}
_ZAMBDA_KEYS = {"id", "executionRole", "status", "fileInfo"}
_DEVELOPER_KEYS = {"accessToken", "projects"}
_FILE_INFO = {"name": TEXT, "size": whole(0), "lastModified": TEXT}


@dataclass(frozen=True)
class SeedObject:
    """One object to store as given: its kind's name, write fields, id and extra columns."""

    kind: str
    fields: Mapping[str, Any]
    id: str | None = None
    columns: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SeedProject:
    id: str
    name: str
    description: str
    signup_enabled: bool
    sandbox: bool
    fhir_version: str
    default_patient_role_id: str | None
    default_sso_user_role_id: str | None
    objects: Mapping[str, Sequence[SeedObject]] = field(default_factory=dict)  # by kind name
    zambda_upload_status: Mapping[str, str] = field(default_factory=dict)

    def of(self, kind: str) -> Sequence[SeedObject]:
        return self.objects.get(kind, ())


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


def resolve_seed_path(seed: str | Path) -> Path:
    """The seed file `--seed` names: `demo` is the bundled demo seed, from any folder."""
    if str(seed) == DEMO_SEED:
        return Path(str(resources.files("reconciler") / "data" / "demo" / "seed.yaml"))
    return Path(seed)


def load_seed(seed: str | Path | Mapping[str, Any]) -> Seed:
    """Check a seed given as a YAML file path (or `demo`) or as an already-parsed mapping."""
    if isinstance(seed, (str, Path)):
        return parse_seed(read_seed_file(resolve_seed_path(seed)), source=str(seed))
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
    # Ids (and clientIds) are unique in the whole database, names within a Project.
    for kind, what in (
        ("role", "role id"),
        ("m2m", "M2M id"),
        ("application", "application id"),
        ("bucket", "bucket id"),
        ("zambda", "Zambda Function id"),
    ):
        ids = [o.id or "" for p in projects for o in p.of(kind)]
        _no_duplicates(ids, source, "projects", what)
    for kind, what in (("m2m", "clientId"), ("application", "application clientId")):
        ids = [o.columns["client_id"] for p in projects for o in p.of(kind)]
        _no_duplicates(ids, source, "projects", what)
    for p in projects:
        for kind, what in (("secret", "secret"), ("bucket", "bucket"), ("zambda", "Zambda")):
            names = [o.fields["name"] for o in p.of(kind)]
            _no_duplicates(names, source, f"projects ({p.name})", f"{what} name")
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
    found: dict[str, list[SeedObject]] = {}
    roles: list[tuple[str, str]] = []  # (id, name): what role references resolve against
    for key in _OBJECT_KEYS:
        for i, entry in enumerate(_list(item, key, source, label)):
            seeded = _PARSERS[key](entry, roles, source, f"{label}.{key}[{i}]")
            found.setdefault(seeded.kind, []).append(seeded)
            if seeded.kind == "role":
                roles.append((seeded.id or "", seeded.fields["name"]))
    return SeedProject(
        id=pid,
        name=name,
        description=_string(item, "description", source, label) or "",
        signup_enabled=_bool(item, "signupEnabled", source, label),
        sandbox=_bool(item, "sandbox", source, label),
        fhir_version=fhir,
        default_patient_role_id=_default_role(item, "defaultPatientRole", roles, source, label),
        default_sso_user_role_id=_default_role(item, "defaultSSOUserRole", roles, source, label),
        objects=found,
        zambda_upload_status=_upload_status(item, source, label),
    )


Roles = Sequence[tuple[str, str]]


def _role(item: Any, roles: Roles, source: str, where: str) -> SeedObject:
    fields = _object(ROLE, item, _ROLE_KEYS, source, where)
    if "members" in item and "memberCount" in item:
        raise ConfigError(f"{source}: {where}: give members or memberCount, not both")
    key = "memberCount" if "memberCount" in item else "members"
    count = item.get(key, 0)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ConfigError(f"{source}: {where}.{key}: must be a whole number >= 0")
    role_id = _string(item, "id", source, where) or str(uuid.uuid4())
    return SeedObject("role", fields, role_id, {"member_count": count})


def _application(item: Any, roles: Roles, source: str, where: str) -> SeedObject:
    fields = _object(APPLICATION, item, _APPLICATION_KEYS, source, where)
    app_id = _string(item, "id", source, where) or str(uuid.uuid4())
    client_id = _string(item, "clientId", source, where) or new_client_id()
    return SeedObject(
        "application", {**APPLICATION.defaults, **fields}, app_id, {"client_id": client_id}
    )


def _client(item: Any, roles: Roles, source: str, where: str) -> SeedObject:
    fields = _object(M2M, item, _CLIENT_KEYS, source, where, required=())
    client_id = _string(item, "clientId", source, where, required=True)
    secret = _string(item, "clientSecret", source, where, required=True)
    role_ids = []
    for i, role in enumerate(fields.pop("roles", ())):
        try:
            role_ids.append(resolve_role(role, roles))
        except ValueError as exc:
            raise ConfigError(f"{source}: {where}.roles[{i}]: {exc}") from exc
    if role_ids:
        fields["roles"] = list(dict.fromkeys(role_ids))
    fields.setdefault("name", client_id)
    m2m_id = _string(item, "id", source, where) or seed_m2m_id(client_id)
    unrestricted = not role_ids and "accessPolicy" not in fields
    columns = {"client_id": client_id, "client_secret": secret, "unrestricted": unrestricted}
    return SeedObject("m2m", fields, m2m_id, columns)


def _secret(item: Any, roles: Roles, source: str, where: str) -> SeedObject:
    return SeedObject("secret", _object(SECRET, item, set(), source, where))


def _bucket(item: Any, roles: Roles, source: str, where: str) -> SeedObject:
    if isinstance(item, str):
        item = {"name": item}
    fields = _object(BUCKET, item, _BUCKET_KEYS, source, where)
    created = _string(item, "creationDate", source, where)
    columns = {"creation_date": created} if created else {}
    return SeedObject(
        "bucket", fields, _string(item, "id", source, where) or str(uuid.uuid4()), columns
    )


def _zambda(item: Any, roles: Roles, source: str, where: str) -> SeedObject:
    fields = _object(ZAMBDA, item, _ZAMBDA_KEYS, source, where)
    fields = {**ZAMBDA.defaults, **fields}
    role = _string(item, "executionRole", source, where)
    if role is not None:
        if "executionRoleId" in fields:
            raise ConfigError(f"{source}: {where}: give executionRole or executionRoleId, not both")
        try:
            fields["executionRoleId"] = resolve_role(role, roles)
        except ValueError as exc:
            raise ConfigError(f"{source}: {where}.executionRole: {exc}") from exc
    elif "executionRoleId" in fields and all(rid != fields["executionRoleId"] for rid, _ in roles):
        raise ConfigError(f"{source}: {where}.executionRoleId: not a role of this Project")
    problem = rule_problem(fields)
    if problem:
        raise ConfigError(f"{source}: {where}: {problem}")
    info = item.get("fileInfo")
    columns: dict[str, Any] = {}
    if info is not None:
        if not isinstance(info, Mapping):
            raise ConfigError(f"{source}: {where}.fileInfo: must be a mapping, not {_kind(info)}")
        checked = _checked(info, _FILE_INFO, (), source, f"{where}.fileInfo")
        _no_unknown_keys(info, set(_FILE_INFO), source, f"{where}.fileInfo")
        columns = {
            "file_name": checked.get("name"),
            "file_size": checked.get("size"),
            "file_modified": checked.get("lastModified"),
        }
    status = item.get("status", "Active" if info is not None else "Draft")
    if status not in STATUSES:
        raise ConfigError(f"{source}: {where}.status: must be one of {', '.join(STATUSES)}")
    columns["status"] = status
    return SeedObject(
        "zambda", fields, _string(item, "id", source, where) or str(uuid.uuid4()), columns
    )


_PARSERS = {
    "roles": _role,
    "applications": _application,
    "m2mClients": _client,
    "secrets": _secret,
    "buckets": _bucket,
    "zambdas": _zambda,
}


def _upload_status(item: Mapping[str, Any], source: str, where: str) -> dict[str, str]:
    value = item.get("zambdaStatusAfterUpload") or {}
    place = f"{source}: {where}.zambdaStatusAfterUpload"
    if not isinstance(value, Mapping):
        raise ConfigError(f"{place}: must be a mapping of function name to status")
    for name, status in value.items():
        if status not in STATUSES:
            raise ConfigError(f"{place}.{name}: must be one of {', '.join(STATUSES)}")
    return {str(name): status for name, status in value.items()}


def _object(
    kind: Kind,
    item: Any,
    extra_keys: set[str],
    source: str,
    where: str,
    required: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """The API write fields of one seeded object, checked as the API checks them."""
    if not isinstance(item, Mapping):
        what = f"{'an' if kind.title[0] in 'aeiouAEIOUM' else 'a'} {kind.title}"
        raise ConfigError(f"{source}: {where}: {what} must be a mapping, not {_kind(item)}")
    known = _KNOWN_KEYS.get(kind.name)
    if known is None:
        known = _KNOWN_KEYS[kind.name] = {*kind.fields, *extra_keys}
    if not known.issuperset(item):
        _no_unknown_keys(item, known, source, where)
    return _checked(
        item, kind.fields, kind.required if required is None else required, source, where
    )


_KNOWN_KEYS: dict[str, set[str]] = {}  # by kind: its fields and the seed's own keys


def _checked(
    item: Mapping[str, Any],
    fields: Mapping[str, FieldType],
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
