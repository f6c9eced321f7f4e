"""Secrets and Z3 buckets in the emulator over a real socket (SPEC section 13): shapes,
create-or-replace, S3's bucket names, seeds, isolation per Project, access policies,
and a log that never shows a secret's value."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import (
    CLINIC_ID,
    DEV_SANDBOX_TOKEN,
    DEV_TOKEN,
    SANDBOX_CLIENT_ID,
    SANDBOX_ID,
)
from test_emulator import assert_error, http_client, m2m_token, scoped

from reconciler.emulator import RunningEmulator, serve
from reconciler.errors import ConfigError

ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
SECRET_VALUE = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"  # what a leak would look like


def with_objects(seed_data: dict[str, Any]) -> dict[str, Any]:
    """SANDBOX and CLINIC each with a secret, two buckets and a function."""
    sandbox, clinic = seed_data["projects"][:2]
    sandbox["secrets"] = [{"name": "STRIPE_KEY", "value": SECRET_VALUE}]
    sandbox["buckets"] = [
        "visit-notes",
        {"name": "uploads", "creationDate": "2024-01-02T03:04:05.000Z"},
    ]
    sandbox["zambdas"] = [{"name": "check-in", "runtime": "nodejs22.x"}]
    clinic["secrets"] = [{"name": "CLINIC_ONLY", "value": "clinic value"}]
    clinic["buckets"] = ["clinic-notes"]
    clinic["zambdas"] = [{"name": "clinic-job", "runtime": "python3.13"}]
    return seed_data


@pytest.fixture
def emu(seed_data: dict[str, Any]) -> Iterator[RunningEmulator]:
    with serve(with_objects(seed_data)) as running:
        yield running


@pytest.fixture
def api(emu: RunningEmulator) -> Iterator[httpx.Client]:
    """A Developer of every seeded Project, acting on SANDBOX."""
    with http_client(emu.api_url) as http:
        http.headers.update(scoped(DEV_TOKEN, SANDBOX_ID))
        yield http


# -- secrets -------------------------------------------------------------------


def test_secret_set_replace_get_list_delete(api, emu):
    created = api.post("/secret", json={"name": "WEBSITE_URL", "value": "https://a.example"})
    assert (created.status_code, created.json()) == (
        201,
        {"name": "WEBSITE_URL", "value": "https://a.example"},
    )
    replaced = api.post("/secret", json={"name": "WEBSITE_URL", "value": ""})
    assert (replaced.status_code, replaced.json()) == (200, {"name": "WEBSITE_URL", "value": ""})
    assert api.get("/secret").json() == [{"name": "STRIPE_KEY"}, {"name": "WEBSITE_URL"}]
    assert api.get("/secret/STRIPE_KEY").json() == {"name": "STRIPE_KEY", "value": SECRET_VALUE}
    assert api.delete("/secret/WEBSITE_URL").status_code == 204
    assert_error(api.get("/secret/WEBSITE_URL"), 404, "secret WEBSITE_URL not found")
    assert_error(api.delete("/secret/WEBSITE_URL"), 404)
    assert emu.stats()["POST /v1/secret"] == 2
    assert emu.stats()["GET /v1/secret/WEBSITE_URL"] == 1


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"name": "A"}, ["value is required"]),
        ({"value": "v"}, ["name is required"]),
        ({"name": "has space", "value": "v"}, ["name must be letters, digits, '-' and '_'"]),
        ({"name": "dot.ted", "value": "v"}, ["name must be letters"]),
        ({"name": "", "value": "v"}, ["name must be letters"]),
        ({"name": "A", "value": 3}, ["value must be a string"]),
        ({"name": "A", "value": None}, ["value must not be null"]),
        ({"name": "A", "value": "v", "shared": True}, ["unknown field 'shared'"]),
        (["A", "v"], ["JSON object"]),
    ],
)
def test_secret_rejections(api, body, words):
    assert_error(api.post("/secret", json=body), 400, *words)
    assert api.get("/secret").json() == [{"name": "STRIPE_KEY"}]


def test_secret_paths_have_no_update(api):
    response = api.patch("/secret/STRIPE_KEY", json={"value": "x"})
    assert_error(response, 405)
    assert response.headers["allow"] == "GET, DELETE"


def test_the_log_never_shows_a_secret_value(seed_data, capsys):
    with serve(with_objects(seed_data), quiet=False) as emu, http_client(emu.api_url) as http:
        http.headers.update(scoped(DEV_TOKEN, SANDBOX_ID))
        http.post("/secret", json={"name": "NEW", "value": SECRET_VALUE + "-2"})
        http.get("/secret/STRIPE_KEY")
    err = capsys.readouterr().err
    assert [line.rsplit(" ", 1)[0] for line in err.splitlines()] == [
        "POST /v1/secret 201",
        "GET /v1/secret/STRIPE_KEY 200",
    ]
    assert SECRET_VALUE not in err


def test_get_secret_needs_its_own_action(seed_data):
    # Plan credentials list names; reading a value is another action (SPEC section 13).
    names_only = {
        "clientId": "names-only",
        "clientSecret": "names-only-secret",
        "accessPolicy": {
            "rule": [
                {"resource": "Zambda:Secret", "action": "Zambda:ListAllSecrets", "effect": "Allow"}
            ]
        },
    }
    data = with_objects(seed_data)
    data["projects"][0]["m2mClients"].append(names_only)
    with serve(data) as emu, http_client(emu.url) as http:
        token = m2m_token(http, "names-only", "names-only-secret")
        headers = {"Authorization": f"Bearer {token}"}
        assert http.get("/v1/secret", headers=headers).json() == [{"name": "STRIPE_KEY"}]
        refused = http.get("/v1/secret/STRIPE_KEY", headers=headers)
        assert_error(refused, 403, "not allowed: Zambda:GetSecret on Zambda:Secret")
        assert SECRET_VALUE not in refused.text


# -- buckets -------------------------------------------------------------------


def test_bucket_put_list_delete(api, emu):
    created = api.put("/z3/intake-forms")
    assert created.status_code == 201
    bucket = created.json()
    assert bucket == {"id": bucket["id"], "name": "intake-forms"}
    # PUT again answers the same bucket (S3 in us-east-1 does too); nothing is added.
    again = api.put("/z3/intake-forms", json={})
    assert (again.status_code, again.json()) == (200, bucket)
    listed = api.get("/z3").json()
    assert [b["name"] for b in listed] == ["visit-notes", "uploads", "intake-forms"]
    assert listed[1]["creationDate"] == "2024-01-02T03:04:05.000Z"
    assert ISO_TIME.fullmatch(listed[2]["creationDate"])
    assert set(listed[2]) == {"id", "name", "creationDate"}
    assert api.delete("/z3/intake-forms").status_code == 204
    assert_error(api.delete("/z3/intake-forms"), 404, "bucket intake-forms not found")
    assert emu.stats()["PUT /v1/z3/intake-forms"] == 2


@pytest.mark.parametrize(
    "name", ["abc", "a.b-c", "123", "a" * 63, "visit-notes.2024", "x-s3aliasx"]
)
def test_bucket_names_s3_allows(api, name):
    assert api.put(f"/z3/{name}").status_code == 201


@pytest.mark.parametrize(
    "name",
    [
        "ab",
        "a" * 64,
        "Upper",
        "under_score",
        "-start",
        "end-",
        ".dot",
        "a..b",
        "192.168.1.1",
        "xn--punycode",
        "sthree-bucket",
        "bucket-s3alias",
        "bucket--ol-s3",
        "sp ace",
    ],
)
def test_bucket_names_s3_refuses(api, name):
    assert_error(api.put(f"/z3/{name}"), 400, "3 to 63 characters", "as S3 allows")
    assert [b["name"] for b in api.get("/z3").json()] == ["visit-notes", "uploads"]


def test_bucket_put_takes_no_body(api):
    assert_error(api.put("/z3/with-body", json={"name": "x"}), 400, "no request body")


# -- isolation -----------------------------------------------------------------

CLINIC_OBJECTS = [
    ("GET", "/secret/CLINIC_ONLY"),
    ("DELETE", "/secret/CLINIC_ONLY"),
    ("DELETE", "/z3/clinic-notes"),
    ("GET", "/zambda/clinic-job"),
    ("PATCH", "/zambda/clinic-job"),
    ("DELETE", "/zambda/clinic-job"),
    ("POST", "/zambda/clinic-job/s3-upload"),
]


@pytest.mark.parametrize(("method", "path"), CLINIC_OBJECTS)
def test_another_projects_object_is_404(emu, method, path):
    body = {} if method in ("PATCH", "POST") else None
    with http_client(emu.api_url) as http:
        # A member of both Projects, asking the wrong one: as if it did not exist.
        response = http.request(method, path, headers=scoped(DEV_TOKEN, SANDBOX_ID), json=body)
        assert_error(response, 404, "not found")
        response = http.request(
            method, path, headers=scoped(DEV_SANDBOX_TOKEN, CLINIC_ID), json=body
        )
        assert_error(response, 403)
        response = http.request(method, path, headers=scoped(DEV_TOKEN, CLINIC_ID), json=body)
        assert response.status_code in (200, 204), response.text


def test_lists_and_names_are_per_project(emu):
    with http_client(emu.url) as http:
        token = m2m_token(http, SANDBOX_CLIENT_ID, "sandbox-secret-5f2a9c")
        own = {"Authorization": f"Bearer {token}"}
        assert http.get("/v1/secret", headers=own).json() == [{"name": "STRIPE_KEY"}]
        assert [b["name"] for b in http.get("/v1/z3", headers=own).json()] == [
            "visit-notes",
            "uploads",
        ]
        assert [z["name"] for z in http.get("/v1/zambda", headers=own).json()] == ["check-in"]
        for path in ("/v1/secret", "/v1/z3", "/v1/zambda"):
            assert_error(http.get(path, headers=scoped(token, CLINIC_ID)), 403)
        # The same names in two Projects are two objects.
        clinic = scoped(DEV_TOKEN, CLINIC_ID)
        assert (
            http.post(
                "/v1/secret", headers=clinic, json={"name": "STRIPE_KEY", "value": "c"}
            ).status_code
            == 201
        )
        assert http.put("/v1/z3/visit-notes", headers=clinic).status_code == 201
        assert http.get("/v1/secret/STRIPE_KEY", headers=own).json()["value"] == SECRET_VALUE


# -- seeds and persistence -----------------------------------------------------


def test_objects_survive_a_restart(tmp_path, seed_data):
    db = tmp_path / "emulator.db"
    with serve(with_objects(seed_data), db=db) as emu:
        before = {kind: emu.store.list(kind, SANDBOX_ID) for kind in ("secret", "bucket", "zambda")}
    with serve(db=db) as emu:
        after = {kind: emu.store.list(kind, SANDBOX_ID) for kind in ("secret", "bucket", "zambda")}
        assert emu.store.get("secret", SANDBOX_ID, "STRIPE_KEY")["value"] == SECRET_VALUE
    assert after == before


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"secrets": [{"name": "A"}]}, ["secrets[0]: missing required key 'value'"]),
        ({"secrets": [{"name": "A B", "value": "v"}]}, ["secrets[0]: name must be letters"]),
        (
            {"secrets": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]},
            ["secret name 'A' appears more than once"],
        ),
        ({"buckets": ["UPPER"]}, ["buckets[0]: name must be 3 to 63 characters"]),
        ({"buckets": [{"name": "ok-name", "colour": "red"}]}, ["unknown key 'colour'"]),
        ({"buckets": ["same", "same"]}, ["bucket name 'same' appears more than once"]),
        ({"secrets": {"A": "v"}}, ["secrets: must be a list"]),
    ],
)
def test_malformed_secret_or_bucket_seed_is_one_line(seed_data, change, words):
    seed_data["projects"][0].update(change)
    assert_seed_refused(seed_data, *words)


def assert_seed_refused(seed_data: dict[str, Any], *words: str) -> None:
    """Starting with this seed fails with one line holding every word."""
    with pytest.raises(ConfigError) as caught, serve(seed_data):
        pass
    message = str(caught.value)
    assert "\n" not in message
    for word in words:
        assert word in message
