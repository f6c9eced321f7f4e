"""The emulator over a real socket: tokens, isolation, PATCH rules, roles, stats,
persistence, faults, concurrency and its log (SPEC sections 1 and 6)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import (
    CLINIC_CLIENT_ID,
    CLINIC_CLIENT_SECRET,
    CLINIC_ID,
    CLINIC_STAFF2_ROLE_ID,
    CLINIC_STAFF_ROLE_ID,
    DEV_SANDBOX_TOKEN,
    DEV_TOKEN,
    PROJECT_IDS,
    RESEARCH_ID,
    RESEARCH_PARTICIPANT_ROLE_ID,
    RESEARCH_RESEARCHER_ROLE_ID,
    SANDBOX_CLIENT_ID,
    SANDBOX_CLIENT_SECRET,
    SANDBOX_ID,
    SANDBOX_PATIENT_ROLE_ID,
    SANDBOX_PROVIDER_ROLE_ID,
)

from reconciler.emulator import Faults, RunningEmulator, Store, make_app, serve
from reconciler.errors import ConfigError

CLIENT_CREDENTIALS = {
    "grant_type": "client_credentials",
    "client_id": SANDBOX_CLIENT_ID,
    "client_secret": SANDBOX_CLIENT_SECRET,
    "audience": "https://api.zapehr.com",
}


def http_client(base_url: str = "") -> httpx.Client:
    """An httpx client for plain http: verify=False skips loading the CA bundle (~60 ms)."""
    return httpx.Client(base_url=base_url, verify=False)


def scoped(token: str, project_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "x-oystehr-project-id": project_id}


@pytest.fixture
def client(emulator: RunningEmulator) -> Iterator[httpx.Client]:
    with http_client(emulator.url) as http:
        yield http


def m2m_token(http: httpx.Client, client_id: str, secret: str) -> str:
    response = http.post(
        "/oauth/token",
        json={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
    )
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def assert_error(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"message", "code"}
    assert body["code"] == status
    for word in words:
        assert word in body["message"]


# -- tokens --------------------------------------------------------------------


def test_token_from_json_body(client):
    response = client.post("/oauth/token", json=CLIENT_CREDENTIALS)
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 86400
    got = client.get("/v1/project", headers=scoped(body["access_token"], SANDBOX_ID))
    assert got.json()["name"] == "SANDBOX"


def test_token_from_form_body(client):
    response = client.post("/oauth/token", data=CLIENT_CREDENTIALS)
    assert response.status_code == 200
    assert response.json()["access_token"]


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({"client_secret": "wrong"}, 401),
        ({"client_id": "nobody"}, 401),
        ({"client_secret": None}, 401),
        ({"grant_type": "password"}, 400),
    ],
)
def test_token_refused(client, change, status):
    body = {k: v for k, v in {**CLIENT_CREDENTIALS, **change}.items() if v is not None}
    response = client.post("/oauth/token", json=body)
    assert_error(response, status)
    assert "access_token" not in response.text


def test_token_rejects_bad_json(client):
    response = client.post(
        "/oauth/token", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_error(response, 400, "JSON")


# -- isolation -----------------------------------------------------------------


def test_version_is_public(client):
    response = client.get("/v1/version")
    assert response.status_code == 200
    assert "version" in response.json()


def test_missing_token_is_401(client):
    assert_error(client.get("/v1/project", headers={"x-oystehr-project-id": SANDBOX_ID}), 401)


def test_unknown_token_is_401(client):
    assert_error(client.get("/v1/project", headers=scoped("made-up", SANDBOX_ID)), 401)
    assert_error(client.get("/v1/iam/role", headers=scoped("made-up", SANDBOX_ID)), 401)


def test_missing_project_header_is_400(client):
    response = client.get("/v1/project", headers={"Authorization": f"Bearer {DEV_TOKEN}"})
    assert_error(response, 400, "x-oystehr-project-id")


def test_zapehr_project_header_is_accepted(client):
    headers = {"Authorization": f"Bearer {DEV_TOKEN}", "x-zapehr-project-id": CLINIC_ID}
    assert client.get("/v1/project", headers=headers).json()["id"] == CLINIC_ID


def test_m2m_token_only_for_its_own_project(client):
    token = m2m_token(client, SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET)
    assert client.get("/v1/project", headers=scoped(token, SANDBOX_ID)).status_code == 200
    for other in (CLINIC_ID, RESEARCH_ID, "00000000-0000-4000-8000-000000000000"):
        assert_error(client.get("/v1/project", headers=scoped(token, other)), 403)
        patch = client.patch("/v1/project", headers=scoped(token, other), json={"name": "x"})
        assert_error(patch, 403)
        assert_error(client.get("/v1/iam/role", headers=scoped(token, other)), 403)
    assert client.get("/v1/project", headers=scoped(DEV_TOKEN, CLINIC_ID)).json()["name"] == (
        "CLINIC"
    )


def test_developer_token_only_for_its_projects(client):
    for project_id in PROJECT_IDS:
        response = client.get("/v1/project", headers=scoped(DEV_TOKEN, project_id))
        assert response.status_code == 200
    assert client.get("/v1/project", headers=scoped(DEV_SANDBOX_TOKEN, SANDBOX_ID)).is_success
    assert_error(client.get("/v1/project", headers=scoped(DEV_SANDBOX_TOKEN, CLINIC_ID)), 403)
    patch = client.patch(
        "/v1/project", headers=scoped(DEV_SANDBOX_TOKEN, CLINIC_ID), json={"name": "x"}
    )
    assert_error(patch, 403)


def test_member_of_a_missing_project_gets_404(emulator, client):
    emulator.store.delete_project(RESEARCH_ID)
    assert_error(client.get("/v1/project", headers=scoped(DEV_TOKEN, RESEARCH_ID)), 404)


def test_unknown_path_and_wrong_method(client):
    assert_error(client.get("/v1/nothing"), 404)
    assert_error(client.get("/"), 404)
    response = client.delete("/v1/project", headers=scoped(DEV_TOKEN, SANDBOX_ID))
    assert_error(response, 405)
    assert "PATCH" in response.headers["allow"]


# -- GET and PATCH /v1/project -------------------------------------------------


def test_get_project_shape(client):
    response = client.get("/v1/project", headers=scoped(DEV_TOKEN, CLINIC_ID))
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "id": CLINIC_ID,
        "name": "CLINIC",
        "description": "Outpatient clinic, production",
        "signupEnabled": True,
        "sandbox": False,
        "defaultPatientRole": {"id": "a1b2c3d4-0001-4a5b-8c6d-7e8f9a0b1c2d", "name": "Patient"},
        "defaultSSOUserRole": {"id": CLINIC_STAFF_ROLE_ID, "name": "Staff"},
        "fhirVersion": "r4",
    }


def test_unset_roles_are_absent(client):
    project = client.get("/v1/project", headers=scoped(DEV_TOKEN, RESEARCH_ID)).json()
    assert "defaultPatientRole" not in project
    assert "defaultSSOUserRole" not in project
    assert project["fhirVersion"] == "r5"


def test_patch_subset_leaves_the_rest(client):
    headers = scoped(DEV_TOKEN, CLINIC_ID)
    before = client.get("/v1/project", headers=headers).json()
    response = client.patch("/v1/project", headers=headers, json={"description": "new words"})
    assert response.status_code == 200
    assert response.json() == {**before, "description": "new words"}
    assert client.get("/v1/project", headers=headers).json() == response.json()


def test_patch_every_writable_field(client):
    headers = scoped(DEV_TOKEN, SANDBOX_ID)
    body = {
        "name": "SANDBOX 2",
        "description": "",
        "signupEnabled": True,
        "defaultPatientRoleId": SANDBOX_PROVIDER_ROLE_ID,
        "defaultSSOUserRoleId": SANDBOX_PATIENT_ROLE_ID,
    }
    project = client.patch("/v1/project", headers=headers, json=body).json()
    assert project["name"] == "SANDBOX 2"
    assert project["description"] == ""
    assert project["signupEnabled"] is True
    assert project["defaultPatientRole"] == {"id": SANDBOX_PROVIDER_ROLE_ID, "name": "Provider"}
    assert project["defaultSSOUserRole"] == {"id": SANDBOX_PATIENT_ROLE_ID, "name": "Patient"}


def test_patch_null_clears_a_role(client):
    headers = scoped(DEV_TOKEN, CLINIC_ID)
    response = client.patch("/v1/project", headers=headers, json={"defaultSSOUserRoleId": None})
    assert "defaultSSOUserRole" not in response.json()
    project = client.get("/v1/project", headers=headers).json()
    assert "defaultSSOUserRole" not in project
    assert project["defaultPatientRole"]["name"] == "Patient"


def test_patch_empty_object_changes_nothing(client):
    headers = scoped(DEV_TOKEN, CLINIC_ID)
    before = client.get("/v1/project", headers=headers).json()
    assert client.patch("/v1/project", headers=headers, json={}).json() == before


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"sandbox": False}, ["sandbox", "read-only"]),
        ({"fhirVersion": "r5"}, ["fhirVersion", "read-only"]),
        ({"id": SANDBOX_ID}, ["id", "read-only"]),
        ({"colour": "blue"}, ["unknown", "colour"]),
        ({"defaultPatientRole": {"id": SANDBOX_PATIENT_ROLE_ID}}, ["defaultPatientRoleId"]),
        ({"name": ""}, ["name"]),
        ({"name": 7}, ["name"]),
        ({"description": None}, ["description"]),
        ({"signupEnabled": "true"}, ["signupEnabled"]),
        ({"signupEnabled": 1}, ["signupEnabled"]),
        ({"defaultPatientRoleId": 5}, ["defaultPatientRoleId"]),
        ({"defaultPatientRoleId": CLINIC_STAFF_ROLE_ID}, ["not a role of this Project"]),
        ({"defaultSSOUserRoleId": "no-such-role"}, ["not a role of this Project"]),
        (["name", "x"], ["JSON object"]),
        ("just a string", ["JSON object"]),
        (None, ["JSON object"]),
    ],
)
def test_patch_rejections(client, body, words):
    headers = scoped(DEV_TOKEN, SANDBOX_ID)
    before = client.get("/v1/project", headers=headers).json()
    response = client.patch("/v1/project", headers=headers, json=body)
    assert_error(response, 400, *words)
    assert client.get("/v1/project", headers=headers).json() == before


@pytest.mark.parametrize("raw", [b"", b"{", b"{'name': 'x'}", b"\xff\xfe"])
def test_patch_rejects_what_is_not_json(client, raw):
    response = client.patch("/v1/project", headers=scoped(DEV_TOKEN, SANDBOX_ID), content=raw)
    assert_error(response, 400, "JSON")


def test_patch_rejection_is_all_or_nothing(client):
    headers = scoped(DEV_TOKEN, SANDBOX_ID)
    response = client.patch("/v1/project", headers=headers, json={"name": "ok", "sandbox": False})
    assert_error(response, 400, "sandbox is read-only")
    assert client.get("/v1/project", headers=headers).json()["name"] == "SANDBOX"


# -- roles ---------------------------------------------------------------------


def test_list_roles(client):
    response = client.get("/v1/iam/role", headers=scoped(DEV_TOKEN, CLINIC_ID))
    assert response.status_code == 200
    roles = response.json()
    assert [role["name"] for role in roles] == ["Patient", "Staff", "Staff", "Provider"]
    assert roles[1] == {"id": CLINIC_STAFF_ROLE_ID, "name": "Staff", "memberCount": 14}
    assert roles[2]["id"] == CLINIC_STAFF2_ROLE_ID


def test_create_role_then_use_it(client):
    headers = scoped(DEV_TOKEN, RESEARCH_ID)
    policy = {"rule": [{"resource": ["*"], "action": ["*"], "effect": "Allow"}]}
    response = client.post(
        "/v1/iam/role",
        headers=headers,
        json={"name": "Auditor", "description": "reads everything", "accessPolicy": policy},
    )
    assert response.status_code == 201
    role = response.json()
    assert role["name"] == "Auditor"
    assert role["accessPolicy"] == policy
    assert len(role["id"]) == 36
    names = [r["name"] for r in client.get("/v1/iam/role", headers=headers).json()]
    assert names == ["Researcher", "Participant", "Auditor"]
    patched = client.patch(
        "/v1/project", headers=headers, json={"defaultPatientRoleId": role["id"]}
    )
    assert patched.json()["defaultPatientRole"] == {"id": role["id"], "name": "Auditor"}


def test_duplicate_role_names_are_allowed(client):
    headers = scoped(DEV_TOKEN, SANDBOX_ID)
    first = client.post("/v1/iam/role", headers=headers, json={"name": "Patient"}).json()
    second = client.post("/v1/iam/role", headers=headers, json={"name": "Patient"}).json()
    assert first["id"] != second["id"]
    names = [r["name"] for r in client.get("/v1/iam/role", headers=headers).json()]
    assert names.count("Patient") == 3


@pytest.mark.parametrize(
    "body",
    [{}, {"name": ""}, {"name": 3}, {"name": "x", "accessPolicy": []}, {"name": "x", "extra": 1}],
)
def test_create_role_rejections(client, body):
    assert_error(client.post("/v1/iam/role", headers=scoped(DEV_TOKEN, SANDBOX_ID), json=body), 400)


def test_roles_are_per_project(client):
    token = m2m_token(client, CLINIC_CLIENT_ID, CLINIC_CLIENT_SECRET)
    assert_error(client.get("/v1/iam/role", headers=scoped(token, SANDBOX_ID)), 403)
    post = client.post("/v1/iam/role", headers=scoped(token, SANDBOX_ID), json={"name": "x"})
    assert_error(post, 403)


# -- stats ---------------------------------------------------------------------


def test_stats_count_api_requests_only(emulator, client):
    headers = scoped(DEV_TOKEN, SANDBOX_ID)
    client.get("/v1/project", headers=headers)
    client.get("/v1/project?x=1", headers=headers)
    client.patch("/v1/project", headers=headers, json={"name": "N"})
    client.get("/v1/iam/role", headers=headers)
    client.post("/oauth/token", json=CLIENT_CREDENTIALS)
    client.get("/v1/version")
    client.get("/v1/nothing")
    client.get("/_emulator/stats")
    expected = {
        "GET /v1/project": 2,
        "PATCH /v1/project": 1,
        "GET /v1/iam/role": 1,
        "POST /oauth/token": 1,
        "GET /v1/version": 1,
        "GET /v1/nothing": 1,
    }
    assert client.get("/_emulator/stats").json() == {"requests": expected}
    assert emulator.stats() == expected
    assert client.post("/_emulator/stats/reset").status_code == 200
    assert client.get("/_emulator/stats").json() == {"requests": {}}
    client.get("/v1/version")
    emulator.reset_stats()
    assert emulator.stats() == {}


def test_stats_count_faulted_requests(seed_data):
    with serve(seed_data, faults=Faults(error_rate=1.0)) as emu, http_client() as http:
        headers = scoped(DEV_TOKEN, SANDBOX_ID)
        assert http.get(emu.api_url + "/project", headers=headers).status_code == 503
        assert http.post(emu.auth_url, json=CLIENT_CREDENTIALS).status_code == 503
        assert http.get(emu.api_url + "/version").status_code == 200
        assert http.get(emu.url + "/_emulator/stats").status_code == 200
        assert emu.stats() == {"GET /v1/project": 1, "POST /oauth/token": 1, "GET /v1/version": 1}


# -- faults --------------------------------------------------------------------


def test_latency(seed_data):
    with serve(seed_data, faults=Faults(latency_ms=100)) as emu, http_client() as http:
        headers = scoped(DEV_TOKEN, SANDBOX_ID)
        http.get(emu.url + "/v1/version")  # connect outside the timings

        def timed(url: str, **kwargs: Any) -> float:
            started = time.perf_counter()
            http.get(url, **kwargs).raise_for_status()
            return time.perf_counter() - started

        assert timed(emu.api_url + "/project", headers=headers) >= 0.1
        assert timed(emu.api_url + "/version") < 0.08
        assert timed(emu.url + "/_emulator/stats") < 0.08


def test_latency_holds_no_lock(seed_data):
    with serve(seed_data, faults=Faults(latency_ms=100)) as emu, http_client(emu.url) as http:
        headers = scoped(DEV_TOKEN, SANDBOX_ID)

        def get() -> None:  # one client, many connections: httpx's pool is thread-safe
            http.get("/v1/project", headers=headers).raise_for_status()

        started = time.perf_counter()
        threads = [threading.Thread(target=get) for _ in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert time.perf_counter() - started < 0.5  # 10 x 100 ms in parallel, not in series


def fault_statuses(seed_data: dict[str, Any], faults: Faults, n: int = 40) -> list[int]:
    with serve(seed_data, faults=faults) as emu, http_client() as http:
        headers = scoped(DEV_TOKEN, SANDBOX_ID)
        return [http.get(emu.api_url + "/project", headers=headers).status_code for _ in range(n)]


def test_error_rate_is_repeatable_with_a_fault_seed(seed_data):
    first = fault_statuses(seed_data, Faults(error_rate=0.3, seed=7))
    assert fault_statuses(seed_data, Faults(error_rate=0.3, seed=7)) == first
    assert set(first) == {200, 503}
    assert fault_statuses(seed_data, Faults(error_rate=0.3, seed=8)) != first


def test_error_rate_503_is_not_executed(seed_data):
    with serve(seed_data, faults=Faults(error_rate=1.0)) as emu, http_client() as http:
        response = http.patch(
            emu.api_url + "/project", headers=scoped(DEV_TOKEN, SANDBOX_ID), json={"name": "X"}
        )
        assert_error(response, 503)
        assert emu.store.get_project(SANDBOX_ID)["name"] == "SANDBOX"


def test_rate_limit_every(seed_data):
    with serve(seed_data, faults=Faults(rate_limit_every=3)) as emu, http_client() as http:
        headers = scoped(DEV_TOKEN, SANDBOX_ID)
        responses = []
        for _ in range(7):
            responses.append(http.get(emu.api_url + "/project", headers=headers))
            http.get(emu.url + "/_emulator/stats")  # never counted towards N
            http.get(emu.api_url + "/version")  # nor this
        assert [r.status_code for r in responses] == [200, 200, 429, 200, 200, 429, 200]
        assert responses[2].headers["retry-after"] == "1"
        assert_error(responses[5], 429)


# -- concurrency ---------------------------------------------------------------


def test_concurrent_patches_of_different_fields_lose_nothing(emulator):
    """15 threads (3 Projects x 5 fields) each PATCH their own field 10 times."""
    roles = {
        SANDBOX_ID: (SANDBOX_PATIENT_ROLE_ID, SANDBOX_PROVIDER_ROLE_ID),
        CLINIC_ID: (CLINIC_STAFF_ROLE_ID, CLINIC_STAFF2_ROLE_ID),
        RESEARCH_ID: (RESEARCH_RESEARCHER_ROLE_ID, RESEARCH_PARTICIPANT_ROLE_ID),
    }
    rounds = 10

    def value(project_id: str, field: str, i: int) -> Any:
        if field == "signupEnabled":
            return i % 2 == 0
        if field.endswith("RoleId"):
            return roles[project_id][i % 2]
        return f"{field} {i}"

    fields = [
        "name",
        "description",
        "signupEnabled",
        "defaultPatientRoleId",
        "defaultSSOUserRoleId",
    ]
    failures: list[str] = []
    start = threading.Barrier(len(roles) * len(fields))

    def writer(project_id: str, field: str) -> None:
        with http_client(emulator.api_url) as http:
            start.wait()
            for i in range(rounds):
                body = {field: value(project_id, field, i)}
                response = http.patch("/project", headers=scoped(DEV_TOKEN, project_id), json=body)
                if response.status_code != 200:
                    failures.append(response.text)

    threads = [threading.Thread(target=writer, args=(p, f)) for p in roles for f in fields]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    last = rounds - 1
    for project_id in roles:
        project = emulator.store.get_project(project_id)
        assert project["name"] == value(project_id, "name", last)
        assert project["description"] == value(project_id, "description", last)
        assert project["signupEnabled"] == value(project_id, "signupEnabled", last)
        assert project["defaultPatientRole"]["id"] == value(
            project_id, "defaultPatientRoleId", last
        )
        assert project["defaultSSOUserRole"]["id"] == value(
            project_id, "defaultSSOUserRoleId", last
        )
    assert emulator.stats() == {"PATCH /v1/project": len(threads) * rounds}


# -- store and seed ------------------------------------------------------------


def test_hand_edit_through_the_store(emulator, client):
    emulator.store.set_project_fields(
        CLINIC_ID,
        {"description": "edited by hand", "defaultPatientRole": None, "fhirVersion": "r5"},
    )
    project = client.get("/v1/project", headers=scoped(DEV_TOKEN, CLINIC_ID)).json()
    assert project["description"] == "edited by hand"
    assert "defaultPatientRole" not in project
    assert project["fhirVersion"] == "r5"
    emulator.store.set_project_fields(SANDBOX_ID, {"defaultSSOUserRole": "Provider"})
    sso = client.get("/v1/project", headers=scoped(DEV_TOKEN, SANDBOX_ID)).json()
    assert sso["defaultSSOUserRole"] == {"id": SANDBOX_PROVIDER_ROLE_ID, "name": "Provider"}
    with pytest.raises(ValueError, match="2 roles are named 'Staff'"):
        emulator.store.set_project_fields(CLINIC_ID, {"defaultSSOUserRole": "Staff"})


def test_seed_roles_without_ids_get_uuids(seed_data):
    seed_data["projects"][0]["roles"].append({"name": "FrontDesk"})
    seed_data["projects"][0]["defaultSSOUserRole"] = "FrontDesk"
    with serve(seed_data) as emu:
        project = emu.store.get_project(SANDBOX_ID)
        role_id = project["defaultSSOUserRole"]["id"]
        assert len(role_id) == 36
        assert emu.store.list_roles(SANDBOX_ID)[-1] == {
            "id": role_id,
            "name": "FrontDesk",
            "memberCount": 0,
        }


def write_seed(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def test_persistence_across_restart(tmp_path, seed_data):
    db = tmp_path / "emulator.db"
    with serve(seed_data, db=db) as emu, http_client(emu.url) as http:
        token = m2m_token(http, SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET)
        http.patch(emu.api_url + "/project", headers=scoped(token, SANDBOX_ID), json={"name": "S2"})
        http.post(
            emu.api_url + "/iam/role", headers=scoped(token, SANDBOX_ID), json={"name": "New"}
        )
    with serve(db=db) as emu, http_client(emu.url) as http:
        # The old token, the client secret and the Developer token all survive.
        assert (
            http.get(emu.api_url + "/project", headers=scoped(token, SANDBOX_ID)).json()["name"]
            == "S2"
        )
        assert m2m_token(http, SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET)
        roles = http.get(emu.api_url + "/iam/role", headers=scoped(DEV_TOKEN, SANDBOX_ID)).json()
        assert [r["name"] for r in roles] == ["Patient", "Provider", "New"]


def test_seed_on_existing_db_adds_or_replaces_and_leaves_the_rest(tmp_path, seed_data):
    db = tmp_path / "emulator.db"
    with serve(seed_data, db=db) as emu:
        emu.store.set_project_fields(CLINIC_ID, {"name": "CLINIC (edited)"})
    new_id = "11111111-2222-4333-8444-555555555555"
    second = {
        "projects": [
            {"id": SANDBOX_ID, "name": "SANDBOX v2", "roles": [{"name": "Only"}]},
            {
                "id": new_id,
                "name": "NEW",
                "m2mClients": [{"clientId": "new-ci", "clientSecret": "s"}],
            },
        ],
        "developers": [{"accessToken": DEV_SANDBOX_TOKEN, "projects": [SANDBOX_ID, new_id]}],
    }
    second_file = write_seed(tmp_path / "second.yaml", second)
    with serve(second_file, db=db) as emu, http_client(emu.url) as http:
        assert emu.store.project_ids() == sorted([*PROJECT_IDS, new_id])
        assert emu.store.get_project(CLINIC_ID)["name"] == "CLINIC (edited)"  # left alone
        sandbox = emu.store.get_project(SANDBOX_ID)
        assert sandbox["name"] == "SANDBOX v2"
        assert "defaultPatientRole" not in sandbox
        assert [r["name"] for r in emu.store.list_roles(SANDBOX_ID)] == ["Only"]
        # The replaced Project's old client is gone; other Projects' clients stay.
        response = http.post(emu.auth_url, json=CLIENT_CREDENTIALS)
        assert_error(response, 401)
        assert m2m_token(http, CLINIC_CLIENT_ID, CLINIC_CLIENT_SECRET)
        assert m2m_token(http, "new-ci", "s")
        # The re-seeded Developer gained NEW; the other Developer kept everything.
        assert http.get(
            emu.api_url + "/project", headers=scoped(DEV_SANDBOX_TOKEN, new_id)
        ).is_success
        assert http.get(emu.api_url + "/project", headers=scoped(DEV_TOKEN, CLINIC_ID)).is_success


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("projects: [\n  {id: x\n", ["not valid YAML"]),
        ("- 1\n- 2\n", ["must be a mapping"]),
        ("", ["must be a mapping"]),
        ("projects:\n  - name: NO ID\n", ["projects[0]", "missing required key 'id'"]),
        ("projects:\n  - {id: p, name: P, colour: red}\n", ["unknown key 'colour'"]),
        ("projects:\n  - {id: p, name: P, signupEnabled: 'yes'}\n", ["signupEnabled"]),
        ("projects:\n  - {id: p, name: P, fhirVersion: r3}\n", ["r4 or r5"]),
        (
            "projects:\n  - {id: p, name: P, roles: [{name: A}], defaultPatientRole: B}\n",
            ["defaultPatientRole", "unknown role 'B'", "roles: A"],
        ),
        (
            "projects:\n  - {id: p, name: P, roles: [{name: A}, {name: A}],"
            " defaultSSOUserRole: A}\n",
            ["2 roles are named 'A'"],
        ),
        ("projects:\n  - {id: p, name: P}\n  - {id: p, name: Q}\n", ["'p' appears more than once"]),
        ("developers:\n  - {accessToken: t, projects: p}\n", ["projects: must be a list"]),
        ("developers:\n  - {accessToken: t}\n  - {accessToken: t}\n", ["repeats"]),
        ("projects:\n  - {id: p, name: P, m2mClients: [{clientId: c}]}\n", ["clientSecret"]),
    ],
)
def test_malformed_seed_is_one_line_config_error(tmp_path, text, words):
    path = tmp_path / "bad-seed.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught, serve(path):
        pass
    message = str(caught.value)
    assert "\n" not in message
    assert str(path) in message
    for word in words:
        assert word in message


def test_missing_seed_file_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read seed file"), serve(tmp_path / "nope.yaml"):
        pass


def test_db_that_is_not_an_emulator_db(tmp_path):
    path = tmp_path / "not.db"
    path.write_text("hello, I am not SQLite " * 100)
    with pytest.raises(ConfigError, match="not an emulator database"), serve(db=path):
        pass


def test_seed_file_may_be_json(tmp_path, seed_data):
    path = tmp_path / "seed.json"
    path.write_text(json.dumps(seed_data), encoding="utf-8")
    with serve(path) as emu:
        assert emu.store.project_ids() == sorted(PROJECT_IDS)


def test_db_that_cannot_be_opened(tmp_path):
    db = tmp_path / "no-such-dir" / "emulator.db"
    with pytest.raises(ConfigError, match="cannot open database file"), serve(db=db):
        pass


def test_ten_thousand_projects_seed():
    # How fast is the benchmark's business (its memory row seeds 10,000 Projects):
    # a wall-clock bound here failed whenever the machine was busy.
    seed = {
        "projects": [
            {
                "id": f"00000000-0000-4000-8000-{i:012d}",
                "name": f"P{i}",
                "roles": [{"name": "Patient"}, {"name": "Staff"}],
                "defaultPatientRole": "Patient",
                "m2mClients": [{"clientId": f"c{i}", "clientSecret": "s"}],
            }
            for i in range(10_000)
        ]
    }
    with serve(seed) as emu:
        assert len(emu.store.project_ids()) == 10_000


# -- WSGI app without a socket ---------------------------------------------------


def test_app_over_wsgi_transport(seed_data):
    from reconciler.emulator import load_seed

    with Store() as store:
        store.load_seed(load_seed(seed_data))
        transport = httpx.WSGITransport(app=make_app(store))
        with httpx.Client(transport=transport, base_url="http://emulator") as http:
            response = http.get("/v1/project", headers=scoped(DEV_TOKEN, RESEARCH_ID))
            assert response.json()["name"] == "RESEARCH"


# -- keep-alive ----------------------------------------------------------------


def test_keep_alive_reuses_one_connection(emulator):
    connections = []
    with http_client(emulator.url) as http:
        for _ in range(5):
            response = http.get("/v1/project", headers=scoped(DEV_TOKEN, SANDBOX_ID))
            assert response.http_version == "HTTP/1.1"
            connections.append(response.extensions["network_stream"])
        # A request whose body the app never reads must not poison the next one.
        assert http.post("/v1/nothing", content=b"x" * 5000).status_code == 404
        assert http.get("/v1/version").status_code == 200
    assert len({id(c) for c in connections}) == 1


# -- the command and its log ---------------------------------------------------


def start_cli(*args: str, cwd: Path | None = None) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "emulator", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "error"},
        cwd=cwd,
    )
    url = process.stdout.readline().strip()
    return process, url


def stop_cli(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=10)
    return process.returncode, out, err


def test_cli_serves_until_sigterm(seed_file):
    process, url = start_cli("--seed", str(seed_file), "--quiet")
    try:
        assert url.startswith("http://127.0.0.1:")
        with http_client(url) as http:
            response = http.get("/v1/project", headers=scoped(DEV_TOKEN, CLINIC_ID))
        assert response.json()["name"] == "CLINIC"
    finally:
        code, out, err = stop_cli(process)
    assert code == 0
    assert out == ""
    assert err == ""


def test_cli_stops_on_sigint_too(seed_file):
    process, url = start_cli("--seed", str(seed_file), "--quiet")
    assert url.startswith("http://")
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=10) == 0
    process.stdout.close()
    process.stderr.close()


def test_cli_log_has_one_line_per_request_and_no_secret(seed_file):
    process, url = start_cli("--seed", str(seed_file))
    try:
        with http_client(url) as http:
            token = m2m_token(http, SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET)
            http.get("/v1/project", headers=scoped(token, SANDBOX_ID))
            http.get(f"/v1/project?access_token={token}", headers=scoped(DEV_TOKEN, SANDBOX_ID))
            http.patch("/v1/project", headers=scoped(DEV_TOKEN, CLINIC_ID), json={"name": "C"})
            http.get("/v1/project", headers=scoped("wrong-token", CLINIC_ID))
    finally:
        code, _, err = stop_cli(process)
    assert code == 0
    lines = [line for line in err.splitlines() if line.split()[0] in ("GET", "POST", "PATCH")]
    assert [line.rsplit(" ", 1)[0] for line in lines] == [
        "POST /oauth/token 200",
        "GET /v1/project 200",
        "GET /v1/project 200",
        "PATCH /v1/project 200",
        "GET /v1/project 401",
    ]
    for secret in (token, SANDBOX_CLIENT_SECRET, DEV_TOKEN, "wrong-token", "Bearer"):
        assert secret not in err


def test_cli_malformed_seed_exits_1(tmp_path):
    path = write_seed(tmp_path / "seed.yaml", {"projects": [{"name": "no id"}]})
    result = subprocess.run(
        [sys.executable, "-m", "reconciler", "emulator", "--port", "0", "--seed", str(path)],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"Error: {path}: projects[0]: missing required key 'id'")
    assert len(result.stderr.splitlines()) == 1
