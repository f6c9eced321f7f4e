"""Roles, applications and M2M clients in the emulator over a real socket (SPEC section 9):
shapes, validation, isolation, memberCount and delete refusals, paging, secrets."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import (
    CLINIC_CLIENT_ID,
    CLINIC_CLIENT_SECRET,
    CLINIC_ID,
    CLINIC_PATIENT_ROLE_ID,
    CLINIC_STAFF_ROLE_ID,
    DEV_SANDBOX_TOKEN,
    DEV_TOKEN,
    RESEARCH_ID,
    RESEARCH_RESEARCHER_ROLE_ID,
    SANDBOX_CLIENT_ID,
    SANDBOX_CLIENT_SECRET,
    SANDBOX_ID,
    SANDBOX_PATIENT_ROLE_ID,
    SANDBOX_PROVIDER_ROLE_ID,
)
from test_emulator import assert_error, http_client, m2m_token, scoped

from reconciler.emulator import RunningEmulator, seed_m2m_id, serve
from reconciler.errors import ConfigError

ALLOW_ALL = {"rule": [{"resource": "*", "action": "*", "effect": "Allow"}]}
MISSING = "00000000-0000-4000-8000-000000000000"


@pytest.fixture
def api(emulator: RunningEmulator) -> Iterator[httpx.Client]:
    """A Developer of every seeded Project, acting on SANDBOX."""
    with http_client(emulator.api_url) as http:
        http.headers.update(scoped(DEV_TOKEN, SANDBOX_ID))
        yield http


def created(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    return response.json()


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


# -- roles ---------------------------------------------------------------------


def test_role_create_get_update_delete(api, emulator):
    role = created(api.post("/iam/role", json={"name": "Nurse"}))
    assert role == {"id": role["id"], "name": "Nurse", "accessPolicy": {"rule": []}}
    assert ok(api.get(f"/iam/role/{role['id']}")) == role
    policy = {"rule": [{"resource": ["FHIR:Patient:*"], "action": "FHIR:Read", "effect": "Allow"}]}
    updated = ok(
        api.patch(f"/iam/role/{role['id']}", json={"description": "ward", "accessPolicy": policy})
    )
    assert updated == {
        "id": role["id"],
        "name": "Nurse",
        "description": "ward",
        "accessPolicy": policy,
    }
    renamed = ok(api.patch(f"/iam/role/{role['id']}", json={"name": "Head Nurse"}))
    assert renamed == {**updated, "name": "Head Nurse"}
    assert ok(api.patch(f"/iam/role/{role['id']}", json={})) == renamed
    assert emulator.store.get_role(SANDBOX_ID, role["id"]) == renamed
    emulator.reset_stats()
    response = api.delete(f"/iam/role/{role['id']}")
    assert response.status_code == 204
    assert response.content == b""
    assert_error(api.get(f"/iam/role/{role['id']}"), 404, "not found")
    assert emulator.stats() == {
        f"DELETE /v1/iam/role/{role['id']}": 1,
        f"GET /v1/iam/role/{role['id']}": 1,
    }


def test_seeded_role_fields(seed_data):
    policy = {"rule": [{"resource": "*", "action": ["IAM:*"], "effect": "Deny"}]}
    seed_data["projects"][0]["roles"].append(
        {"name": "Auditor", "description": "reads", "accessPolicy": policy, "members": 4}
    )
    with serve(seed_data) as emu:
        auditor = emu.store.list_roles(SANDBOX_ID)[-1]
        assert auditor["memberCount"] == 4
        assert emu.store.get_role(SANDBOX_ID, auditor["id"]) == {
            "id": auditor["id"],
            "name": "Auditor",
            "description": "reads",
            "accessPolicy": policy,
        }


def test_member_count_counts_m2m_holders_and_members(api, emulator):
    client = created(api.post("/m2m", json={"name": "job", "roles": [SANDBOX_PROVIDER_ROLE_ID]}))
    counts = {r["id"]: r["memberCount"] for r in ok(api.get("/iam/role"))}
    assert counts == {SANDBOX_PATIENT_ROLE_ID: 0, SANDBOX_PROVIDER_ROLE_ID: 4}  # 3 seeded + 1
    ok(api.patch(f"/m2m/{client['id']}", json={"roles": [SANDBOX_PATIENT_ROLE_ID]}))
    counts = {r["id"]: r["memberCount"] for r in ok(api.get("/iam/role"))}
    assert counts == {SANDBOX_PATIENT_ROLE_ID: 1, SANDBOX_PROVIDER_ROLE_ID: 3}
    api.delete(f"/m2m/{client['id']}")
    assert emulator.store.list_roles(SANDBOX_ID)[0]["memberCount"] == 0


def test_role_delete_refused_while_held(api, emulator):
    role = created(api.post("/iam/role", json={"name": "Temp"}))
    client = created(api.post("/m2m", json={"name": "job", "roles": [role["id"]]}))
    assert_error(api.delete(f"/iam/role/{role['id']}"), 400, "'Temp'", "held by 1")
    emulator.store.update_role(SANDBOX_ID, role["id"], {"members": 2})
    ok(api.patch(f"/m2m/{client['id']}", json={"roles": [SANDBOX_PROVIDER_ROLE_ID]}))
    assert_error(api.delete(f"/iam/role/{role['id']}"), 400, "held by 2")
    emulator.store.update_role(SANDBOX_ID, role["id"], {"members": 0})
    assert api.delete(f"/iam/role/{role['id']}").status_code == 204


def test_role_delete_refused_while_a_default_role(emulator):
    with http_client(emulator.api_url) as http:
        patient = http.delete(
            f"/iam/role/{CLINIC_PATIENT_ROLE_ID}", headers=scoped(DEV_TOKEN, CLINIC_ID)
        )
        # Held by 1,200 users: that is said first.
        assert_error(patient, 400, "held by 1200")
        emulator.store.update_role(CLINIC_ID, CLINIC_PATIENT_ROLE_ID, {"members": 0})
        emulator.store.update_role(CLINIC_ID, CLINIC_STAFF_ROLE_ID, {"members": 0})
        patient = http.delete(
            f"/iam/role/{CLINIC_PATIENT_ROLE_ID}", headers=scoped(DEV_TOKEN, CLINIC_ID)
        )
        assert_error(patient, 400, "default patient role")
        staff = http.delete(
            f"/iam/role/{CLINIC_STAFF_ROLE_ID}", headers=scoped(DEV_TOKEN, CLINIC_ID)
        )
        assert_error(staff, 400, "default SSO user role")
    assert len(emulator.store.list_roles(CLINIC_ID)) == 4


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"name": ""}, ["name must be a non-empty string"]),
        ({"name": None}, ["name must not be null"]),
        ({"description": 3}, ["description must be a string"]),
        ({"description": None}, ["omit it"]),
        ({"accessPolicy": {"rule": "x"}}, ["accessPolicy: rule must be a list"]),
        ({"accessPolicy": {"rule": [{"resource": "*", "action": "*"}]}}, ["effect"]),
        (
            {"accessPolicy": {"rule": [{"resource": [], "action": "*", "effect": "Allow"}]}},
            ["resource"],
        ),
        ({"accessPolicy": {"rules": []}}, ["unknown field 'rules'"]),
        ({"memberCount": 3}, ["unknown field 'memberCount' (read-only)"]),
        ({"id": SANDBOX_PATIENT_ROLE_ID}, ["unknown field 'id' (read-only)"]),
        ([], ["JSON object"]),
    ],
)
def test_role_update_rejections(api, emulator, body, words):
    before = emulator.store.get_role(SANDBOX_ID, SANDBOX_PATIENT_ROLE_ID)
    assert_error(api.patch(f"/iam/role/{SANDBOX_PATIENT_ROLE_ID}", json=body), 400, *words)
    assert emulator.store.get_role(SANDBOX_ID, SANDBOX_PATIENT_ROLE_ID) == before


def test_role_create_reports_every_problem(api):
    response = api.post("/iam/role", json={"description": 1, "colour": "red"})
    assert_error(response, 400, "name is required", "description must be a string", "'colour'")


# -- applications --------------------------------------------------------------

APP = {"name": "Patient Portal", "allowedCallbackUrls": ["https://portal.example.com/cb"]}


def test_application_create_fills_every_write_field(api, emulator):
    app = created(api.post("/application", json={**APP, "description": "sign-up"}))
    assert app == {
        "id": app["id"],
        "name": "Patient Portal",
        "clientId": app["clientId"],
        "connectionName": app["connectionName"],
        "description": "sign-up",
        "allowedCallbackUrls": ["https://portal.example.com/cb"],
        "allowedLogoutUrls": [],
        "allowedWebOriginsUrls": [],
        "allowedCORSOriginsUrls": [],
        "loginWithEmailEnabled": False,
        "passwordlessSMS": False,
        "mfaEnabled": False,
        "shouldSendInviteEmail": False,
        "refreshTokenEnabled": False,
    }
    assert len(app["clientId"]) == 32 and app["clientId"].isalnum()
    assert ok(api.get(f"/application/{app['id']}")) == app
    assert emulator.store.get_application(SANDBOX_ID, app["id"]) == app
    assert ok(api.get("/application")) == [
        {
            "id": app["id"],
            "name": "Patient Portal",
            "clientId": app["clientId"],
            "description": "sign-up",
        }
    ]


def test_application_update_rotate_delete(api, emulator):
    app = created(api.post("/application", json=APP))
    changes = {
        "loginRedirectUri": "https://portal.example.com/login",
        "logoUri": "https://portal.example.com/logo.png",
        "allowedLogoutUrls": ["https://portal.example.com/bye"],
        "passwordlessSMS": True,
        "refreshTokenEnabled": True,
    }
    updated = ok(api.patch(f"/application/{app['id']}", json=changes))
    assert updated == {**app, **changes}
    assert ok(api.get(f"/application/{app['id']}")) == updated
    first = ok(api.post(f"/application/{app['id']}/rotate-secret", json={}))["secret"]
    second = ok(api.post(f"/application/{app['id']}/rotate-secret"))["secret"]
    assert len(first) >= 32 and first != second
    assert_error(api.post(f"/application/{app['id']}/rotate-secret", json={"x": 1}), 400)
    assert api.delete(f"/application/{app['id']}").status_code == 204
    assert ok(api.get("/application")) == []
    assert_error(api.delete(f"/application/{app['id']}"), 404)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"name": "x"}, ["allowedCallbackUrls is required"]),
        ({"allowedCallbackUrls": []}, ["name is required"]),
        ({**APP, "allowedCallbackUrls": "https://x"}, ["allowedCallbackUrls must be a list"]),
        ({**APP, "allowedLogoutUrls": [1]}, ["allowedLogoutUrls must be a list of strings"]),
        ({**APP, "mfaEnabled": "yes"}, ["mfaEnabled must be true or false"]),
        ({**APP, "logoUri": None}, ["logoUri must not be null"]),
        ({**APP, "clientId": "mine"}, ["'clientId' (read-only)"]),
        ({**APP, "connectionName": "c"}, ["'connectionName' (read-only)"]),
        ({**APP, "secret": "s"}, ["'secret' (read-only)"]),
    ],
)
def test_application_create_rejections(api, emulator, body, words):
    assert_error(api.post("/application", json=body), 400, *words)
    assert emulator.store.list_applications(SANDBOX_ID) == []


def test_seeded_applications(seed_data):
    seed_data["projects"][1]["applications"] = [
        {**APP, "id": "app-1", "clientId": "portal-client", "mfaEnabled": True},
        {"name": "Intake", "allowedCallbackUrls": []},
    ]
    with serve(seed_data) as emu:
        portal, intake = emu.store.list_applications(CLINIC_ID)
        assert portal == {"id": "app-1", "name": "Patient Portal", "clientId": "portal-client"}
        assert emu.store.get_application(CLINIC_ID, "app-1")["mfaEnabled"] is True
        assert intake["name"] == "Intake" and len(intake["id"]) == 36
        emu.store.update_application(CLINIC_ID, "app-1", {"name": "Portal (edited)"})
        assert emu.store.get_application(CLINIC_ID, "app-1")["name"] == "Portal (edited)"
        emu.store.delete_application(CLINIC_ID, "app-1")
        assert [a["name"] for a in emu.store.list_applications(CLINIC_ID)] == ["Intake"]


# -- M2M clients ---------------------------------------------------------------


def test_seeded_client_is_an_m2m_object(api):
    client_id = seed_m2m_id(SANDBOX_CLIENT_ID)
    assert ok(api.get("/m2m/v2/list")) == {
        "data": [{"id": client_id, "name": SANDBOX_CLIENT_ID}],
        "metadata": {"nextCursor": None},
    }
    client = ok(api.get(f"/m2m/{client_id}"))
    assert client == {
        "id": client_id,
        "name": SANDBOX_CLIENT_ID,
        "clientId": SANDBOX_CLIENT_ID,
        "profile": client["profile"],
        "roles": [],
    }
    assert client["profile"].startswith("Device/")
    assert "secret" not in json.dumps(client).lower()


def test_m2m_create_get_update_delete(api, emulator):
    body = {
        "name": "ehr-backend",
        "description": "Nightly sync",
        "roles": [SANDBOX_PROVIDER_ROLE_ID, SANDBOX_PATIENT_ROLE_ID, SANDBOX_PATIENT_ROLE_ID],
        "jwksUrl": "https://ehr.example.com/jwks",
    }
    client = created(api.post("/m2m", json=body))
    assert client == {
        "id": client["id"],
        "name": "ehr-backend",
        "description": "Nightly sync",
        "clientId": client["clientId"],
        "profile": client["profile"],
        # Role stubs in the Project's role order, each once.
        "roles": [
            {"id": SANDBOX_PATIENT_ROLE_ID, "name": "Patient"},
            {"id": SANDBOX_PROVIDER_ROLE_ID, "name": "Provider"},
        ],
        "jwksUrl": "https://ehr.example.com/jwks",
    }
    assert ok(api.get(f"/m2m/{client['id']}")) == client
    updated = ok(api.patch(f"/m2m/{client['id']}", json={"roles": [], "accessPolicy": ALLOW_ALL}))
    assert updated == {**client, "roles": [], "accessPolicy": ALLOW_ALL}
    assert emulator.store.get_m2m(SANDBOX_ID, client["id"]) == updated
    names = [item["name"] for item in emulator.store.list_m2m(SANDBOX_ID)]
    assert names == [SANDBOX_CLIENT_ID, "ehr-backend"]
    assert api.delete(f"/m2m/{client['id']}").status_code == 204
    assert_error(api.get(f"/m2m/{client['id']}"), 404, "M2M client")


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"name": "x"}, ["roles must name at least one role when accessPolicy is absent"]),
        ({"name": "x", "roles": []}, ["roles must name at least one role"]),
        ({"roles": [SANDBOX_PATIENT_ROLE_ID]}, ["name is required"]),
        ({"name": "x", "roles": SANDBOX_PATIENT_ROLE_ID}, ["roles must be a list of role ids"]),
        ({"name": "x", "roles": [CLINIC_STAFF_ROLE_ID]}, ["not a role of this Project"]),
        ({"name": "x", "roles": ["no-such-role"]}, ["'no-such-role' is not a role"]),
        ({"name": "x", "accessPolicy": []}, ["accessPolicy: must be an object"]),
        ({"name": "x", "accessPolicy": ALLOW_ALL, "secret": "s"}, ["'secret' (read-only)"]),
        ({"name": "x", "accessPolicy": ALLOW_ALL, "clientId": "c"}, ["'clientId' (read-only)"]),
        ({"name": "x", "accessPolicy": ALLOW_ALL, "jwksUrl": None}, ["jwksUrl must not be null"]),
    ],
)
def test_m2m_create_rejections(api, emulator, body, words):
    assert_error(api.post("/m2m", json=body), 400, *words)
    assert len(emulator.store.list_m2m(SANDBOX_ID)) == 1


def test_m2m_create_with_only_a_policy(api):
    client = created(api.post("/m2m", json={"name": "x", "accessPolicy": ALLOW_ALL}))
    assert client["roles"] == [] and client["accessPolicy"] == ALLOW_ALL


def test_m2m_update_rejects_foreign_roles_and_changes_nothing(api, emulator):
    client_id = seed_m2m_id(SANDBOX_CLIENT_ID)
    response = api.patch(
        f"/m2m/{client_id}", json={"name": "renamed", "roles": [RESEARCH_RESEARCHER_ROLE_ID]}
    )
    assert_error(response, 400, "not a role of this Project")
    assert emulator.store.get_m2m(SANDBOX_ID, client_id)["name"] == SANDBOX_CLIENT_ID


def test_rotate_secret_new_works_old_stops(api, emulator):
    client_id = seed_m2m_id(SANDBOX_CLIENT_ID)
    with http_client(emulator.url) as http:
        old_token = m2m_token(http, SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET)
        secret = ok(api.post(f"/m2m/{client_id}/rotate-secret", json={}))["secret"]
        assert len(secret) >= 32
        refused = http.post(
            "/oauth/token",
            json={
                "grant_type": "client_credentials",
                "client_id": SANDBOX_CLIENT_ID,
                "client_secret": SANDBOX_CLIENT_SECRET,
            },
        )
        assert_error(refused, 401)
        new_token = m2m_token(http, SANDBOX_CLIENT_ID, secret)
        # A token issued before the rotation stays valid until it expires.
        for token in (old_token, new_token):
            assert http.get("/v1/project", headers=scoped(token, SANDBOX_ID)).status_code == 200


def test_created_client_gets_its_secret_only_by_rotation(api, emulator):
    client = created(api.post("/m2m", json={"name": "job", "accessPolicy": ALLOW_ALL}))
    secret = ok(api.post(f"/m2m/{client['id']}/rotate-secret"))["secret"]
    with http_client(emulator.url) as http:
        token = m2m_token(http, client["clientId"], secret)
        me = http.get("/v1/m2m/me", headers=scoped(token, SANDBOX_ID))
        assert ok(me) == client
        # An M2M token without the project header acts on its own Project.
        me = http.get("/v1/m2m/me", headers={"Authorization": f"Bearer {token}"})
        assert ok(me)["id"] == client["id"]
        assert api.delete(f"/m2m/{client['id']}").status_code == 204
        assert_error(http.get("/v1/m2m/me", headers=scoped(token, SANDBOX_ID)), 401)
        response = http.post(
            "/oauth/token",
            json={
                "grant_type": "client_credentials",
                "client_id": client["clientId"],
                "client_secret": secret,
            },
        )
        assert_error(response, 401)


def test_m2m_me_with_a_developer_token_is_400(api):
    assert_error(api.get("/m2m/me"), 400, "M2M client's access token")


def test_deprecated_m2m_list(api):
    (item,) = ok(api.get("/m2m"))
    assert item["clientId"] == SANDBOX_CLIENT_ID
    assert "roles" not in item


# -- paging --------------------------------------------------------------------


def many_clients(seed_data: dict[str, Any], n: int) -> dict[str, Any]:
    seed_data["projects"][2]["m2mClients"] = [
        {"clientId": f"c{i:03d}", "clientSecret": "s", "name": f"client {i:03d}"} for i in range(n)
    ]
    return seed_data


def read_pages(http: httpx.Client, query: str = "") -> list[dict[str, Any]]:
    pages, cursor = [], None
    while True:
        suffix = f"&cursor={cursor}" if cursor else ""
        page = ok(http.get(f"/m2m/v2/list?{query}{suffix}", headers=scoped(DEV_TOKEN, RESEARCH_ID)))
        pages.append(page)
        cursor = page["metadata"]["nextCursor"]
        if cursor is None:
            return pages


def test_list_pages_of_100_by_default(seed_data):
    with serve(many_clients(seed_data, 250)) as emu, http_client(emu.api_url) as http:
        pages = read_pages(http)
        assert [len(p["data"]) for p in pages] == [100, 100, 50]
        names = [item["name"] for p in pages for item in p["data"]]
        assert names == [f"client {i:03d}" for i in range(250)]
        assert emu.stats() == {"GET /v1/m2m/v2/list": 3}
        # limit only lowers the page; above the page size it is the page size.
        assert [len(p["data"]) for p in read_pages(http, "limit=120")] == [100, 100, 50]
        assert [len(p["data"]) for p in read_pages(http, "limit=125")][:1] == [100]


def test_list_page_size_from_the_seed_and_from_the_option(seed_data):
    seed = many_clients(seed_data, 7)
    seed["m2mPageSize"] = 3
    with serve(seed) as emu, http_client(emu.api_url) as http:
        assert [len(p["data"]) for p in read_pages(http)] == [3, 3, 1]
        assert [len(p["data"]) for p in read_pages(http, "limit=2")] == [2, 2, 2, 1]
    with serve(seed, m2m_page_size=5) as emu, http_client(emu.api_url) as http:
        assert [len(p["data"]) for p in read_pages(http)] == [5, 2]


def test_list_exact_multiple_ends_with_a_null_cursor(seed_data):
    seed = many_clients(seed_data, 4)
    with serve(seed, m2m_page_size=2) as emu, http_client(emu.api_url) as http:
        pages = read_pages(http)
        assert [len(p["data"]) for p in pages] == [2, 2]
        assert emu.stats() == {"GET /v1/m2m/v2/list": 2}


def test_list_filters_and_sorts(seed_data):
    seed = many_clients(seed_data, 12)
    seed["projects"][2]["m2mClients"][5]["roles"] = ["Researcher"]
    with serve(seed, m2m_page_size=5) as emu, http_client(emu.api_url) as http:
        by_role = read_pages(http, f"roleId={RESEARCH_RESEARCHER_ROLE_ID}")
        assert [i["name"] for p in by_role for i in p["data"]] == ["client 005"]
        by_name = read_pages(http, "name=CLIENT 01")
        assert [i["name"] for p in by_name for i in p["data"]] == ["client 010", "client 011"]
        desc = read_pages(http, "sort=name&sortOrder=desc")
        names = [i["name"] for p in desc for i in p["data"]]
        assert names == [f"client {i:03d}" for i in reversed(range(12))]


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("limit=0", ["limit"]),
        ("limit=ten", ["limit"]),
        ("cursor=garbage", ["cursor"]),
        ("sort=email", ["sort must be"]),
        ("sortOrder=up", ["sortOrder"]),
        ("page=2", ["unknown query parameter 'page'"]),
    ],
)
def test_list_rejections(api, query, words):
    assert_error(api.get(f"/m2m/v2/list?{query}"), 400, *words)


def test_list_cursor_of_another_sort_is_refused(seed_data):
    with (
        serve(many_clients(seed_data, 3), m2m_page_size=1) as emu,
        http_client(emu.api_url) as http,
    ):
        headers = scoped(DEV_TOKEN, RESEARCH_ID)
        cursor = ok(http.get("/m2m/v2/list", headers=headers))["metadata"]["nextCursor"]
        response = http.get(f"/m2m/v2/list?sort=name&cursor={cursor}", headers=headers)
        assert_error(response, 400, "cursor")


# -- isolation -----------------------------------------------------------------

OBJECT_PATHS = [
    ("GET", "/iam/role/{id}"),
    ("PATCH", "/iam/role/{id}"),
    ("DELETE", "/iam/role/{id}"),
    ("GET", "/application/{id}"),
    ("PATCH", "/application/{id}"),
    ("DELETE", "/application/{id}"),
    ("POST", "/application/{id}/rotate-secret"),
    ("GET", "/m2m/{id}"),
    ("PATCH", "/m2m/{id}"),
    ("DELETE", "/m2m/{id}"),
    ("POST", "/m2m/{id}/rotate-secret"),
]


@pytest.mark.parametrize(("method", "path"), OBJECT_PATHS)
def test_another_projects_object_is_404(emulator, method, path):
    with http_client(emulator.api_url) as http:
        clinic = scoped(DEV_TOKEN, CLINIC_ID)
        ids = {
            "/iam/role": CLINIC_STAFF_ROLE_ID,
            "/application": created(http.post("/application", headers=clinic, json=APP))["id"],
            "/m2m": seed_m2m_id(CLINIC_CLIENT_ID),
        }
        object_id = next(v for k, v in ids.items() if path.startswith(k))
        body = {} if method in ("PATCH", "POST") else None
        for headers, status in (
            (scoped(DEV_TOKEN, SANDBOX_ID), 404),  # a member of both, asking the wrong Project
            (scoped(DEV_SANDBOX_TOKEN, CLINIC_ID), 403),  # not a member of CLINIC
        ):
            response = http.request(method, path.format(id=object_id), headers=headers, json=body)
            assert_error(response, status)
        for bad in (MISSING, "not-a-uuid", "%20"):
            response = http.request(method, path.format(id=bad), headers=clinic, json=body)
            assert_error(response, 404)
        response = http.request(method, path.format(id=object_id), headers=clinic, json=body)
        assert response.status_code in (200, 204, 400), response.text  # 400: held role


def test_lists_are_per_project(emulator):
    with http_client(emulator.url) as auth:
        token = m2m_token(auth, CLINIC_CLIENT_ID, CLINIC_CLIENT_SECRET)
    with http_client(emulator.api_url) as http:
        clinic = scoped(token, CLINIC_ID)
        created(http.post("/application", headers=clinic, json=APP))
        assert ok(http.get("/application", headers=scoped(DEV_TOKEN, SANDBOX_ID))) == []
        for path in ("/application", "/m2m/v2/list", "/iam/role"):
            assert_error(http.get(path, headers=scoped(token, SANDBOX_ID)), 403)
        listed = ok(http.get("/m2m/v2/list", headers=clinic))["data"]
        assert [item["name"] for item in listed] == [CLINIC_CLIENT_ID]


def test_wrong_method_on_an_object_path_is_405(api):
    response = api.put(f"/iam/role/{SANDBOX_PATIENT_ROLE_ID}", json={})
    assert_error(response, 405)
    assert response.headers["allow"] == "GET, PATCH, DELETE"
    assert_error(api.get(f"/iam/role/{SANDBOX_PATIENT_ROLE_ID}/more"), 404, "no such endpoint")


# -- persistence and seeds -----------------------------------------------------


def test_objects_survive_a_restart(tmp_path, seed_data):
    db = tmp_path / "emulator.db"
    seed_data["m2mPageSize"] = 1
    with serve(seed_data, db=db) as emu, http_client(emu.api_url) as http:
        http.headers.update(scoped(DEV_TOKEN, SANDBOX_ID))
        role = created(http.post("/iam/role", json={"name": "Ops", "accessPolicy": ALLOW_ALL}))
        app = created(http.post("/application", json=APP))
        client = created(http.post("/m2m", json={"name": "job", "roles": [role["id"]]}))
        secret = ok(http.post(f"/m2m/{client['id']}/rotate-secret"))["secret"]
    with serve(db=db) as emu, http_client(emu.url) as http:
        store = emu.store
        assert store.get_role(SANDBOX_ID, role["id"]) == role
        assert store.get_application(SANDBOX_ID, app["id"]) == app
        assert store.get_m2m(SANDBOX_ID, client["id"]) == client
        assert store.list_roles(SANDBOX_ID)[-1]["memberCount"] == 1
        token = m2m_token(http, client["clientId"], secret)
        page = ok(http.get("/v1/m2m/v2/list", headers=scoped(token, SANDBOX_ID)))
        assert len(page["data"]) == 1 and page["metadata"]["nextCursor"]  # m2mPageSize kept


VERSION_1_SCHEMA = """
CREATE TABLE project (id TEXT PRIMARY KEY, name TEXT NOT NULL, description TEXT NOT NULL,
    signup_enabled INTEGER NOT NULL, sandbox INTEGER NOT NULL, fhir_version TEXT NOT NULL,
    default_patient_role_id TEXT, default_sso_user_role_id TEXT);
CREATE TABLE role (id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES project(id) ON DELETE CASCADE, name TEXT NOT NULL,
    description TEXT, access_policy TEXT, member_count INTEGER NOT NULL DEFAULT 0);
CREATE INDEX role_by_project ON role(project_id);
CREATE TABLE m2m_client (client_id TEXT PRIMARY KEY, client_secret TEXT NOT NULL,
    project_id TEXT NOT NULL REFERENCES project(id) ON DELETE CASCADE);
CREATE INDEX client_by_project ON m2m_client(project_id);
CREATE TABLE access_token (token TEXT PRIMARY KEY, client_id TEXT NOT NULL,
    expires_at REAL NOT NULL);
CREATE TABLE developer (access_token TEXT PRIMARY KEY);
CREATE TABLE developer_project (
    access_token TEXT NOT NULL REFERENCES developer(access_token) ON DELETE CASCADE,
    project_id TEXT NOT NULL, PRIMARY KEY (access_token, project_id));
INSERT INTO project VALUES ('p1', 'OLD', '', 0, 1, 'r4', 'r1', NULL);
INSERT INTO role VALUES ('r1', 'p1', 'Patient', NULL, NULL, 2);
INSERT INTO m2m_client VALUES ('old-ci', 'old-secret', 'p1');
INSERT INTO access_token VALUES ('old-token', 'old-ci', 9999999999);
PRAGMA user_version = 1;
"""


def test_a_version_1_database_is_migrated(tmp_path):
    db = tmp_path / "v1.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(VERSION_1_SCHEMA)
    conn.close()
    with serve(db=db) as emu, http_client(emu.url) as http:
        old_id = seed_m2m_id("old-ci")
        assert emu.store.list_m2m("p1") == [{"id": old_id, "name": "old-ci"}]
        # The old token and the old secret work, with the full access they had.
        for token in ("old-token", m2m_token(http, "old-ci", "old-secret")):
            headers = scoped(token, "p1")
            assert ok(http.get("/v1/m2m/me", headers=headers))["id"] == old_id
            assert http.patch("/v1/project", headers=headers, json={"name": "NEW"}).is_success
        assert emu.store.list_roles("p1") == [{"id": "r1", "name": "Patient", "memberCount": 2}]
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    conn.close()


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"m2mPageSize": 0}, ["m2mPageSize: must be a whole number >= 1"]),
        ({"m2mPageSize": True}, ["m2mPageSize"]),
        (
            {"roles": [{"name": "A", "members": 1, "memberCount": 1}]},
            ["roles[0]: give members or memberCount, not both"],
        ),
        ({"roles": [{"name": "A", "members": -1}]}, ["roles[0].members"]),
        ({"roles": [{"members": 1}]}, ["roles[0]: missing required key 'name'"]),
        (
            {"applications": [{"name": "A"}]},
            ["applications[0]: missing required key 'allowedCallbackUrls'"],
        ),
        (
            {"applications": [{**APP, "mfaEnabled": "no"}]},
            ["applications[0]: mfaEnabled must be true"],
        ),
        ({"applications": [{**APP, "connectionName": "c"}]}, ["unknown key 'connectionName'"]),
        ({"applications": {"A": APP}}, ["applications: must be a list"]),
        (
            {
                "m2mClients": [
                    {"clientId": "a", "clientSecret": "s", "id": "x"},
                    {"clientId": "b", "clientSecret": "s", "id": "x"},
                ]
            },
            ["M2M id 'x' appears more than once"],
        ),
    ],
)
def test_malformed_object_seed_is_one_line(seed_data, change, words):
    if "m2mPageSize" in change:
        seed_data.update(change)
    else:
        seed_data["projects"][0].update(change)
    with pytest.raises(ConfigError) as caught, serve(seed_data):
        pass
    message = str(caught.value)
    assert "\n" not in message
    for word in words:
        assert word in message
