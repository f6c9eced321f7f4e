"""Every kind of object the emulator serves, one declaration each (SPEC sections 9, 13, 14).

A declaration gives the kind's API path, what its `{id}` names, its write
fields and their types, what a create requires, the access-policy action of
each verb, its table, and its quirks (`Hooks`). The app's routes, body checks,
isolation and access checks, and the store's reads and writes all come from
here: a new kind is a new declaration (and, if it has quirks, its hooks).

    verb            endpoint                          answers
    list            GET    {path}                     [item, ...]
    create          POST   {path}                     201 document (200 when replaced)
    put             PUT    {path}/{id}                201 document (200 when it exists)
    get             GET    {path}/{id}                document
    update          PATCH  {path}/{id}                document
    delete          DELETE {path}/{id}                204
    rotate-secret   POST   {path}/{id}/rotate-secret  {"secret"}
    s3-upload       POST   {path}/{id}/s3-upload      {"signedUrl"}
    me, v2/list     GET    {path}/me, {path}/v2/list  (M2M clients)

The field lists and types are @oystehr/sdk 4.2's `*CreateParams` /
`*UpdateParams`; the actions are those its doc comments name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from reconciler.emulator.bodies import (
    BUCKET_NAME,
    FLAG,
    IDS,
    KEY_NAME,
    NAME,
    POLICY,
    ROLE_ID,
    SCHEDULE,
    TEXT,
    TEXTS,
    one_of,
    whole,
)
from reconciler.emulator.iam import (
    MEMBER_COUNT,
    ApplicationHooks,
    M2MHooks,
    RoleHooks,
    m2m_create_rule,
)
from reconciler.emulator.objects import Hooks, Kind, Table
from reconciler.emulator.zambdas import RUNTIMES, TRIGGERS, ZambdaHooks, now_iso

ROLE = Kind(
    name="role",
    title="role",
    path="/v1/iam/role",
    fields={"name": NAME, "description": TEXT, "accessPolicy": POLICY},
    resource="IAM:Role",
    actions={
        "list": "IAM:ListAllRoles",
        "create": "IAM:CreateRole",
        "get": "IAM:GetRole",
        "update": "IAM:UpdateRole",
        "delete": "IAM:DeleteRole",
    },
    table=Table(
        "role",
        {"id": "id", "name": "name", "description": "description", "accessPolicy": "access_policy"},
        json=frozenset({"accessPolicy"}),
        hidden={"members": "member_count"},  # Users and Developers holding it (a hand edit)
        computed={"memberCount": MEMBER_COUNT},
    ),
    listed=("id", "name", "memberCount"),
    hooks=RoleHooks(),
)

_APPLICATION_FIELDS = {
    "name": NAME,
    "description": TEXT,
    "loginRedirectUri": TEXT,
    "logoUri": TEXT,
    "allowedCallbackUrls": TEXTS,
    "allowedLogoutUrls": TEXTS,
    "allowedWebOriginsUrls": TEXTS,
    "allowedCORSOriginsUrls": TEXTS,
    "loginWithEmailEnabled": FLAG,
    "passwordlessSMS": FLAG,
    "mfaEnabled": FLAG,
    "shouldSendInviteEmail": FLAG,
    "refreshTokenEnabled": FLAG,
}

APPLICATION = Kind(
    name="application",
    title="application",
    path="/v1/application",
    fields=_APPLICATION_FIELDS,
    required=("name", "allowedCallbackUrls"),
    resource="App:Application",
    actions={
        "list": "App:ListAllApplications",
        "create": "App:CreateApplication",
        "get": "App:GetApplication",
        "update": "App:UpdateApplication",
        "delete": "App:DeleteApplication",
        "rotate-secret": "App:RotateApplicationSecret",
    },
    table=Table(
        "application",
        {"id": "id", "clientId": "client_id", "connectionName": "connection_name"},
        blob="fields",
    ),
    listed=("id", "name", "clientId", "description"),
    # GET answers every write field: lists and flags that were never set are empty / false.
    defaults={
        key: [] if kind is TEXTS else False
        for key, kind in _APPLICATION_FIELDS.items()
        if kind in (TEXTS, FLAG)
    },
    hooks=ApplicationHooks(),
)

M2M = Kind(
    name="m2m",
    title="M2M client",
    path="/v1/m2m",
    # `profile` is in the SDK's create and update params, so the API takes it.
    fields={
        "name": NAME,
        "description": TEXT,
        "accessPolicy": POLICY,
        "roles": IDS,
        "jwksUrl": TEXT,
        "profile": TEXT,
    },
    resource="IAM:M2MClient",
    actions={
        "list": "App:ListAllM2MClients",  # deprecated: every client, without roles
        "v2/list": "App:ListAllM2MClients",
        "create": "App:CreateM2MClient",
        "me": "App:GetM2MClient",
        "get": "App:GetM2MClient",
        "update": "App:UpdateM2MClient",
        "delete": "App:DeleteM2MClient",
        "rotate-secret": "App:RotateM2MClientSecret",
    },
    table=Table(
        "m2m_client",
        {
            "id": "id",
            "name": "name",
            "description": "description",
            "clientId": "client_id",
            "profile": "profile",
            "accessPolicy": "access_policy",
            "jwksUrl": "jwks_url",
        },
        json=frozenset({"accessPolicy"}),
    ),
    # The deprecated GET /v1/m2m lists whole clients but without their roles.
    listed=("id", "name", "description", "clientId", "profile", "accessPolicy", "jwksUrl"),
    joined=frozenset({"roles"}),
    hooks=M2MHooks(),
    create_rule=m2m_create_rule,
)

SECRET = Kind(
    name="secret",
    title="secret",
    path="/v1/secret",
    fields={"name": KEY_NAME, "value": TEXT},
    required=("name", "value"),
    resource="Zambda:Secret",
    actions={
        "list": "Zambda:ListAllSecrets",
        "create": "Zambda:CreateSecret",
        "get": "Zambda:GetSecret",
        "delete": "Zambda:DeleteSecret",
    },
    table=Table("secret", {"name": "name", "value": "value"}, key="name"),
    listed=("name",),
    replace=True,  # POST of an existing name sets its value
)


class _BucketHooks(Hooks):
    def columns(
        self, project_id: str, object_id: str | None, now: float
    ) -> dict[str, Callable[[], Any]]:
        return {"creation_date": lambda: now_iso(now)}


BUCKET = Kind(
    name="bucket",
    title="bucket",
    path="/v1/z3",
    fields={"name": BUCKET_NAME},
    resource="Z3:BucketName",
    actions={
        "list": "Z3:ListBuckets",
        "put": ("Z3:CreateBucket", "Z3:*"),
        "delete": "Z3:DeleteBucket",
    },
    table=Table(
        "bucket", {"id": "id", "name": "name", "creationDate": "creation_date"}, key="name"
    ),
    created=("id", "name"),
    replace=True,  # PUT of a bucket the Project has answers it again, as S3 does
    hooks=_BucketHooks(),
)

ZAMBDA = Kind(
    name="zambda",
    title="Zambda Function",
    path="/v1/zambda",
    fields={
        "name": KEY_NAME,
        "runtime": one_of(*RUNTIMES),
        "triggerMethod": one_of(*TRIGGERS),
        "schedule": SCHEDULE,
        "memorySize": whole(128, 10240),
        "timeoutInSeconds": whole(1, 900),
        "executionRoleId": ROLE_ID,
    },
    required=("name", "runtime"),
    resource="Zambda:Function",
    actions={
        "list": "Zambda:ListAllFunctions",
        "create": "Zambda:CreateFunction",
        "get": "Zambda:GetFunction",
        "update": "Zambda:UpdateFunction",
        "delete": "Zambda:DeleteFunction",
        "s3-upload": "Zambda:UpdateFunction",
    },
    table=Table(
        "zambda",
        {
            "id": "id",
            "name": "name",
            "runtime": "runtime",
            "status": "status",
            "triggerMethod": "trigger_method",
            "schedule": "schedule",
            "memorySize": "memory_size",
            "timeoutInSeconds": "timeout_s",
            "executionRoleId": "execution_role_id",
        },
        json=frozenset({"schedule"}),
        hidden={"fileName": "file_name", "fileSize": "file_size", "fileModified": "file_modified"},
        key="id|name",
    ),
    defaults={"triggerMethod": "http_auth"},
    hooks=ZambdaHooks(),
)

# In the order a Project's objects depend on each other (roles first).
KINDS: tuple[Kind, ...] = (ROLE, APPLICATION, M2M, SECRET, BUCKET, ZAMBDA)
KINDS_BY_NAME = {kind.name: kind for kind in KINDS}

# Which action on which resource each endpoint needs, as @oystehr/sdk documents it.
ENDPOINT_ACTIONS: dict[tuple[str, str], tuple[str, str]] = {
    ("GET", "/v1/project"): ("Project:GetProjectInfo", "Project:Settings"),
    ("PATCH", "/v1/project"): ("Project:UpdateProjectInfo", "Project:Settings"),
    **{
        (method, template): (action, resource)
        for kind in KINDS
        for method, template, _, action, resource in kind.endpoints()
    },
}
