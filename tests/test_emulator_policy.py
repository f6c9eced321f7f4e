"""Access policies of M2M clients in the emulator (SPEC section 6): every endpoint needs
the action and resource the SDK documents; Deny wins; `*` and `Prefix:*` match; a
client's own policy and its roles' policies count; seeded clients with neither and
Developers may do anything."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from conftest import (
    DEV_TOKEN,
    SANDBOX_CLIENT_ID,
    SANDBOX_CLIENT_SECRET,
    SANDBOX_ID,
    SANDBOX_PATIENT_ROLE_ID,
    SANDBOX_PROVIDER_ROLE_ID,
)
from test_emulator import assert_error, http_client, m2m_token, scoped

from reconciler.emulator import seed_m2m_id, serve
from reconciler.emulator.policy import ENDPOINT_ACTIONS
from reconciler.errors import ConfigError

APP_ID = "6a1f0c2e-1111-4a5b-8c6d-000000000001"
ZAMBDA_ID = "6a1f0c2e-1111-4a5b-8c6d-000000000002"


def rule(action: Any, resource: Any = "*", effect: str = "Allow") -> dict[str, Any]:
    return {"resource": resource, "action": action, "effect": effect}


def client(client_id: str, **fields: Any) -> dict[str, Any]:
    return {"clientId": client_id, "clientSecret": f"{client_id}-secret", **fields}


def start(seed_data: dict[str, Any], *clients: dict[str, Any]) -> Any:
    sandbox = seed_data["projects"][0]
    sandbox["m2mClients"] += list(clients)
    sandbox["applications"] = [
        {"id": APP_ID, "name": "Portal", "allowedCallbackUrls": ["https://p/cb"]}
    ]
    sandbox["secrets"] = [{"name": "API_KEY", "value": "k-1"}]
    sandbox["buckets"] = ["visit-notes"]
    sandbox["zambdas"] = [{"id": ZAMBDA_ID, "name": "check-in", "runtime": "nodejs22.x"}]
    return serve(seed_data)


def as_client(emu: Any, client_id: str) -> httpx.Client:
    with http_client(emu.url) as http:
        token = m2m_token(http, client_id, f"{client_id}-secret")
    http = http_client(emu.api_url)
    http.headers.update(scoped(token, SANDBOX_ID))
    return http


def request_for(method: str, template: str) -> tuple[str, str, Any]:
    """A request that would succeed (or fail with 400/404, never 403) on the seeded SANDBOX."""
    ids = {
        "/v1/iam/role/": SANDBOX_PROVIDER_ROLE_ID,
        "/v1/application/": APP_ID,
        "/v1/m2m/": seed_m2m_id(SANDBOX_CLIENT_ID),
        "/v1/secret/": "API_KEY",
        "/v1/z3/": "visit-notes",
        "/v1/zambda/": ZAMBDA_ID,
    }
    path = template
    for prefix, object_id in ids.items():
        path = path.replace(prefix + "{id}", prefix + object_id)
    bodies = {
        ("PATCH", "/v1/project"): {"description": "changed"},
        ("POST", "/v1/iam/role"): {"name": "New"},
        ("POST", "/v1/application"): {"name": "New", "allowedCallbackUrls": []},
        ("POST", "/v1/m2m"): {"name": "new", "roles": [SANDBOX_PATIENT_ROLE_ID]},
        ("POST", "/v1/secret"): {"name": "NEW", "value": "v"},
        ("POST", "/v1/zambda"): {"name": "new", "runtime": "python3.13"},
    }
    body = bodies.get((method, template), {} if method in ("PATCH", "POST") else None)
    return method, path.removeprefix("/v1"), body


@pytest.mark.parametrize(("method", "template"), sorted(ENDPOINT_ACTIONS))
def test_each_endpoint_needs_its_action(seed_data, method, template):
    action, resource = ENDPOINT_ACTIONS[(method, template)]
    only = client("only", accessPolicy={"rule": [rule(action, resource)]})
    # Everything but this one action: a Deny beats the Allow of everything.
    but = client("but", accessPolicy={"rule": [rule("*"), rule([action], "*", "Deny")]})
    elsewhere = client("elsewhere", accessPolicy={"rule": [rule(action, "Other:Thing")]})
    with start(seed_data, only, but, elsewhere) as emu:
        method, path, body = request_for(method, template)
        with as_client(emu, "but") as http:
            response = http.request(method, path, json=body)
            assert_error(response, 403, f"not allowed: {action} on {resource}")
        with as_client(emu, "elsewhere") as http:
            assert_error(http.request(method, path, json=body), 403)
        with as_client(emu, "only") as http:
            response = http.request(method, path, json=body)
            # /m2m/me as "only" reads "only" itself; 400 is a held role's refusal.
            assert response.status_code in (200, 201, 204, 400), response.text


def test_read_only_client_reads_and_is_refused_writes(seed_data):
    read_only = {
        "rule": [
            rule("Project:GetProjectInfo", "Project:Settings"),
            rule(["IAM:ListAllRoles", "IAM:GetRole"], "IAM:Role"),
        ]
    }
    with start(seed_data, client("reader", accessPolicy=read_only)) as emu:
        with as_client(emu, "reader") as http:
            assert http.get("/project").status_code == 200
            assert http.get("/iam/role").status_code == 200
            emu.reset_stats()
            response = http.patch("/project", json={"description": "changed"})
            assert_error(
                response, 403, "not allowed: Project:UpdateProjectInfo on Project:Settings"
            )
            # Refused before the body is even read: a bad body is still a 403.
            assert_error(http.patch("/project", json={"colour": 1}), 403)
            assert_error(http.get("/application"), 403, "App:ListAllApplications")
        assert emu.stats() == {"PATCH /v1/project": 2, "GET /v1/application": 1}
        project = emu.store.get_project(SANDBOX_ID)
        assert project["description"] == "Sandbox Project for trying out Oystehr"


@pytest.mark.parametrize(
    ("rules", "allowed"),
    [
        ([rule("*")], True),
        ([rule("Project:*", "Project:*")], True),
        ([rule("Project:Get*", "Project:Settings")], True),
        ([rule(["IAM:GetRole", "Project:GetProjectInfo"], ["Project:Settings"])], True),
        ([rule("Project:GetProjectInfo", "Project:Setting")], False),
        ([rule("project:getprojectinfo", "project:settings")], False),  # case counts
        ([rule("IAM:*")], False),
        ([], False),
        ([rule("*"), rule("Project:GetProjectInfo", "*", "Deny")], False),
        ([rule("Project:*", "*", "Deny"), rule("*")], False),
    ],
)
def test_matching(seed_data, rules, allowed):
    with (
        start(seed_data, client("c", accessPolicy={"rule": rules})) as emu,
        as_client(emu, "c") as http,
    ):
        status = http.get("/project").status_code
    assert status == (200 if allowed else 403)


def test_roles_policies_count_and_deny_wins_across_them(seed_data):
    sandbox = seed_data["projects"][0]
    sandbox["roles"] += [
        {"name": "Reader", "accessPolicy": {"rule": [rule("Project:GetProjectInfo")]}},
        {"name": "Writer", "accessPolicy": {"rule": [rule("Project:UpdateProjectInfo")]}},
        {"name": "NoWrites", "accessPolicy": {"rule": [rule("*Update*", "*", "Deny")]}},
        {"name": "Empty"},
    ]
    clients = (
        client("reader", roles=["Reader"]),
        client("writer", roles=["Reader", "Writer"]),
        client("blocked", roles=["Writer", "NoWrites"], accessPolicy={"rule": [rule("*")]}),
        client("empty", roles=["Empty"]),
        client("own-deny", roles=["Writer"], accessPolicy={"rule": [rule("*", "*", "Deny")]}),
    )
    with start(seed_data, *clients) as emu:
        expected = {
            "reader": (200, 403),
            "writer": (200, 200),
            "blocked": (200, 403),
            "empty": (403, 403),
            "own-deny": (403, 403),
        }
        got = {}
        for name in expected:
            with as_client(emu, name) as http:
                got[name] = (
                    http.get("/project").status_code,
                    http.patch("/project", json={"name": f"by {name}"}).status_code,
                )
        assert got == expected


def test_role_policy_changes_apply_at_once(seed_data):
    seed_data["projects"][0]["roles"].append({"name": "Ops", "accessPolicy": {"rule": []}})
    with start(seed_data, client("ops", roles=["Ops"])) as emu, as_client(emu, "ops") as http:
        assert http.get("/project").status_code == 403
        ops = emu.store.list_roles(SANDBOX_ID)[-1]["id"]
        with http_client(emu.api_url) as dev:
            dev.patch(
                f"/iam/role/{ops}",
                headers=scoped(DEV_TOKEN, SANDBOX_ID),
                json={"accessPolicy": {"rule": [rule("Project:GetProjectInfo")]}},
            ).raise_for_status()
        assert http.get("/project").status_code == 200  # the same token, the new policy


def test_unrestricted_seeded_client_and_developers_may_do_anything(seed_data):
    with start(seed_data) as emu:
        with http_client(emu.url) as auth:
            token = m2m_token(auth, SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET)
        for headers in (scoped(token, SANDBOX_ID), scoped(DEV_TOKEN, SANDBOX_ID)):
            with http_client(emu.api_url) as http:
                http.headers.update(headers)
                assert http.patch("/project", json={"name": "X"}).status_code == 200
                assert http.post("/iam/role", json={"name": "R"}).status_code == 201
                assert http.get(f"/application/{APP_ID}").status_code == 200
        # Given roles once, the seeded client is held to them (Provider has no rules).
        client_id = seed_m2m_id(SANDBOX_CLIENT_ID)
        emu.store.update_m2m(SANDBOX_ID, client_id, {"roles": [SANDBOX_PROVIDER_ROLE_ID]})
        with http_client(emu.api_url) as http:
            assert_error(http.get("/project", headers=scoped(token, SANDBOX_ID)), 403)
            emu.store.update_m2m(SANDBOX_ID, client_id, {"roles": []})
            assert_error(http.get("/project", headers=scoped(token, SANDBOX_ID)), 403)


def test_me_needs_get_m2m_client_as_the_sdk_documents(seed_data):
    policy = {"rule": [rule("Project:GetProjectInfo", "Project:Settings")]}
    with start(seed_data, client("c", accessPolicy=policy)) as emu, as_client(emu, "c") as http:
        assert_error(http.get("/m2m/me"), 403, "App:GetM2MClient on IAM:M2MClient")


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        (client("x", accessPolicy={"rule": [{"action": "*", "effect": "Allow"}]}), ["resource"]),
        (client("x", accessPolicy={"rule": [rule("*", "*", "Maybe")]}), ["effect"]),
        (client("x", accessPolicy=[]), ["accessPolicy"]),
        (client("x", roles=["Nobody"]), ["roles[0]", "unknown role 'Nobody'"]),
        (client("x", roles="Patient"), ["roles must be a list"]),
        (client("x", colour="red"), ["unknown key 'colour'"]),
        (client("x", name=""), ["name must be a non-empty string"]),
    ],
)
def test_bad_client_in_a_seed_is_one_line(seed_data, entry, words):
    seed_data["projects"][0]["m2mClients"].append(entry)
    with pytest.raises(ConfigError) as caught, serve(seed_data):
        pass
    message = str(caught.value)
    assert "\n" not in message
    assert "projects[0] (SANDBOX).m2mClients[1]" in message
    for word in words:
        assert word in message
