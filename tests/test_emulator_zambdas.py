"""Zambda Functions in the emulator over a real socket (SPEC section 14): shapes, the
SDK's rules, `{id}` as an id or a name, code uploads to a single-use signed URL on the
emulator itself, statuses (seedable `Failed`), seeds, latency and stats."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import DEV_TOKEN, SANDBOX_ID, SANDBOX_PROVIDER_ROLE_ID
from test_emulator import assert_error, http_client, scoped
from test_emulator_secrets import ISO_TIME, assert_seed_refused

from reconciler.emulator import Faults, RunningEmulator, serve

CRON = {"expression": "cron(*/5 * * * ? *)", "retryPolicy": {"maximumRetry": 2}}
ZIP = b"PK\x05\x06" + bytes(18)  # an empty zip archive


@pytest.fixture
def api(emulator: RunningEmulator) -> Iterator[httpx.Client]:
    """A Developer of every seeded Project, acting on SANDBOX."""
    with http_client(emulator.api_url) as http:
        http.headers.update(scoped(DEV_TOKEN, SANDBOX_ID))
        yield http


def create(api: httpx.Client, **fields: Any) -> dict[str, Any]:
    response = api.post("/zambda", json={"runtime": "nodejs22.x", **fields})
    assert response.status_code == 201, response.text
    return response.json()


def signed_url(api: httpx.Client, key: str, **body: Any) -> str:
    response = api.post(f"/zambda/{key}/s3-upload", json=body)
    assert response.status_code == 200, response.text
    (url,) = response.json().values()
    return url


# -- the function --------------------------------------------------------------


def test_create_get_update_delete_by_id_or_name(api, emulator):
    function = create(api, name="check-in")
    assert function == {
        "id": function["id"],
        "name": "check-in",
        "runtime": "nodejs22.x",
        "status": "Draft",
        "triggerMethod": "http_auth",
    }
    assert api.get(f"/zambda/{function['id']}").json() == function
    assert api.get("/zambda/check-in").json() == function
    updated = api.patch(
        "/zambda/check-in",
        json={
            "name": "check_in_v2",
            "memorySize": 2048,
            "executionRoleId": SANDBOX_PROVIDER_ROLE_ID,
        },
    ).json()
    assert updated == {
        **function,
        "name": "check_in_v2",
        "memorySize": 2048,
        "executionRoleId": SANDBOX_PROVIDER_ROLE_ID,
    }
    assert_error(api.get("/zambda/check-in"), 404, "Zambda Function check-in not found")
    assert api.get("/zambda").json() == [updated]
    assert api.delete("/zambda/check_in_v2").status_code == 204
    assert api.get("/zambda").json() == []
    assert emulator.stats()["GET /v1/zambda/check-in"] == 2


def test_a_cron_function_with_every_field(api):
    function = create(
        api,
        name="notifications-updater",
        triggerMethod="cron",
        schedule={**CRON, "start": "2025-01-01T00:00:00Z"},
        memorySize=10240,
        timeoutInSeconds=900,
        runtime="python3.13",
    )
    assert function["schedule"] == {**CRON, "start": "2025-01-01T00:00:00Z"}
    assert (function["memorySize"], function["timeoutInSeconds"]) == (10240, 900)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"name": "f"}, ["runtime is required"]),
        ({"runtime": "nodejs22.x"}, ["name is required"]),
        ({"name": "f", "runtime": "nodejs18.x"}, ["runtime must be one of nodejs20.x,"]),
        ({"name": "has space", "runtime": "java21"}, ["name must be letters"]),
        ({"name": "f", "runtime": "java21", "triggerMethod": "http"}, ["triggerMethod must be"]),
        ({"name": "f", "runtime": "java21", "triggerMethod": "cron"}, ["schedule is required"]),
        (
            {"name": "f", "runtime": "java21", "triggerMethod": "cron", "schedule": {}},
            ["schedule: expression must be cron("],
        ),
        (
            {
                "name": "f",
                "runtime": "java21",
                "triggerMethod": "cron",
                "schedule": {"expression": "cron(* * * *)"},
            },
            ["schedule: expression"],
        ),
        (
            {"name": "f", "runtime": "java21", "schedule": {**CRON, "every": 5}},
            ["schedule: unknown field 'every'"],
        ),
        (
            {
                "name": "f",
                "runtime": "java21",
                "schedule": {"expression": "rate(5 minutes)", "retryPolicy": {"maximumRetry": -1}},
            },
            ["retryPolicy.maximumRetry must be a whole number >= 0"],
        ),
        (
            {"name": "f", "runtime": "java21", "memorySize": 127},
            ["memorySize must be a whole number from 128 to 10240"],
        ),
        ({"name": "f", "runtime": "java21", "memorySize": 10241}, ["memorySize"]),
        ({"name": "f", "runtime": "java21", "memorySize": True}, ["memorySize"]),
        ({"name": "f", "runtime": "java21", "memorySize": "1024"}, ["memorySize"]),
        (
            {"name": "f", "runtime": "java21", "timeoutInSeconds": 0},
            ["timeoutInSeconds must be a whole number from 1 to 900"],
        ),
        (
            {
                "name": "f",
                "runtime": "java21",
                "triggerMethod": "subscription",
                "timeoutInSeconds": 901,
            },
            ["timeoutInSeconds"],
        ),
        ({"name": "f", "runtime": "java21", "timeoutInSeconds": 28}, ["at most 27 for http_auth"]),
        (
            {
                "name": "f",
                "runtime": "java21",
                "triggerMethod": "http_open",
                "timeoutInSeconds": 60,
            },
            ["at most 27 for http_open"],
        ),
        (
            {"name": "f", "runtime": "java21", "executionRoleId": "nope"},
            ["executionRoleId: 'nope' is not a role"],
        ),
        (
            {"name": "f", "runtime": "java21", "status": "Active"},
            ["unknown field 'status' (read-only)"],
        ),
        (
            {"name": "f", "runtime": "java21", "fileInfo": {}},
            ["unknown field 'fileInfo' (read-only)"],
        ),
        ({"name": "f", "runtime": "java21", "memorySize": None}, ["memorySize must not be null"]),
    ],
)
def test_create_rejections(api, body, words):
    assert_error(api.post("/zambda", json=body), 400, *words)
    assert api.get("/zambda").json() == []


def test_a_name_in_use_is_409(api):
    create(api, name="one")
    create(api, name="two")
    assert_error(
        api.post("/zambda", json={"name": "one", "runtime": "java21"}), 409, "'one' already exists"
    )
    assert_error(api.patch("/zambda/two", json={"name": "one"}), 409)
    assert api.patch("/zambda/two", json={"name": "two"}).status_code == 200  # its own name


def test_an_update_is_checked_against_the_whole_function(api):
    function = create(api, name="job", triggerMethod="cron", schedule=CRON, timeoutInSeconds=300)
    # Becoming an HTTP function with a 300 s timeout breaks the 27 s rule: refused, unchanged.
    assert_error(api.patch("/zambda/job", json={"triggerMethod": "http_auth"}), 400, "at most 27")
    assert api.get("/zambda/job").json() == function
    fixed = api.patch("/zambda/job", json={"triggerMethod": "http_auth", "timeoutInSeconds": 27})
    assert fixed.json()["triggerMethod"] == "http_auth"


def test_a_deleted_execution_role_leaves_the_function_without_one(api):
    role = api.post("/iam/role", json={"name": "Runner"}).json()
    create(api, name="job", executionRoleId=role["id"])
    assert api.delete(f"/iam/role/{role['id']}").status_code == 204
    assert "executionRoleId" not in api.get("/zambda/job").json()


# -- code ----------------------------------------------------------------------


def test_upload_to_the_signed_url(api, emulator):
    function = create(api, name="check-in")
    url = signed_url(api, "check-in", filename="3f2a9c01.zip")
    assert re.fullmatch(re.escape(emulator.url) + r"/_emulator/upload/[\w-]{40,}", url)
    # The SDK's uploadFile: a plain PUT of the bytes, no bearer token, no project header.
    with http_client() as plain:
        response = plain.put(url, content=ZIP, headers={"content-type": "application/zip"})
        assert (response.status_code, response.content) == (200, b"")
        assert response.headers["etag"]
        assert_error(plain.put(url, content=ZIP), 403, "not valid, or was used already")
    after = api.get("/zambda/check-in").json()
    assert after == {
        **function,
        "status": "Active",
        "fileInfo": {
            "name": "3f2a9c01.zip",
            "size": len(ZIP),
            "lastModified": after["fileInfo"]["lastModified"],
        },
    }
    assert ISO_TIME.fullmatch(after["fileInfo"]["lastModified"])
    assert emulator.store.zambda_code(SANDBOX_ID, "check-in") == ZIP
    stats = emulator.stats()
    assert stats["POST /v1/zambda/check-in/s3-upload"] == 1
    assert stats["PUT /_emulator/upload"] == 2
    assert not any(key.startswith("PUT /_emulator/upload/") for key in stats)


def test_upload_without_a_filename_gets_a_random_one(api):
    create(api, name="job")
    response = api.post("/zambda/job/s3-upload", content=b"")  # no body at all
    with http_client() as plain:
        assert plain.put(response.json()["signedUrl"], content=b"abc").status_code == 200
    name = api.get("/zambda/job").json()["fileInfo"]["name"]
    assert re.fullmatch(r"[0-9a-f-]{36}\.zip", name)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"filename": ""}, ["filename must be a non-empty string"]),
        ({"file": "x"}, ["unknown field 'file'"]),
    ],
)
def test_s3_upload_rejections(api, body, words):
    create(api, name="job")
    assert_error(api.post("/zambda/job/s3-upload", json=body), 400, *words)
    assert_error(api.post("/zambda/missing/s3-upload", json={}), 404)


def test_an_upload_with_a_bearer_token_is_refused_and_the_url_still_works(api, emulator):
    create(api, name="job")
    url = signed_url(api, "job")
    with http_client() as plain:
        leaked = plain.put(url, content=ZIP, headers={"Authorization": f"Bearer {DEV_TOKEN}"})
        assert_error(leaked, 400, "takes no Authorization header")
        assert plain.put(url, content=ZIP).status_code == 200


def test_a_signed_url_expires_after_5_minutes(api, emulator):
    create(api, name="job")
    url = signed_url(api, "job")
    emulator.store.clock = lambda: time.time() + 301
    with http_client() as plain:
        assert_error(plain.put(url, content=ZIP), 403, "expired")
    assert api.get("/zambda/job").json()["status"] == "Draft"


def test_an_upload_may_be_larger_than_an_api_body(api, emulator):
    create(api, name="big")
    data = bytes(3 << 20)  # 3 MiB; API bodies stop at 1 MiB
    with http_client() as plain:
        assert plain.put(signed_url(api, "big"), content=data).status_code == 200
    assert api.get("/zambda/big").json()["fileInfo"]["size"] == len(data)
    too_large = api.post("/secret", json={"name": "A", "value": "x" * (1 << 20)})
    assert_error(too_large, 413, "request body too large")


def test_the_log_hides_the_upload_token(seed_data, capsys):
    with serve(seed_data, quiet=False) as emu, http_client(emu.api_url) as api:
        api.headers.update(scoped(DEV_TOKEN, SANDBOX_ID))
        create(api, name="job")
        url = signed_url(api, "job")
        with http_client() as plain:
            plain.put(url, content=ZIP)
    err = capsys.readouterr().err
    token = url.rsplit("/", 1)[1]
    assert token not in err
    assert [line.rsplit(" ", 1)[0] for line in err.splitlines()][
        -1
    ] == "PUT /_emulator/upload/<token> 200"


def test_latency_and_faults_apply_to_the_upload(seed_data):
    with serve(seed_data, faults=Faults(latency_ms=150)) as emu, http_client(emu.api_url) as api:
        api.headers.update(scoped(DEV_TOKEN, SANDBOX_ID))
        create(api, name="job")
        url = signed_url(api, "job")
        started = time.perf_counter()
        with http_client() as plain:
            assert plain.put(url, content=ZIP).status_code == 200
        assert time.perf_counter() - started >= 0.15
    with serve(seed_data, faults=Faults(error_rate=1.0)) as emu:
        emu.store.create(
            "zambda", SANDBOX_ID, {"name": "job", "runtime": "java21", "triggerMethod": "http_auth"}
        )
        token = emu.store.start_upload(SANDBOX_ID, "job", "code.zip")
        with http_client() as plain:
            # A faulted upload is not executed: the URL stays unused, nothing is stored.
            assert plain.put(f"{emu.url}/_emulator/upload/{token}", content=ZIP).status_code == 503
        assert emu.store.zambda_code(SANDBOX_ID, "job") is None
        assert emu.stats() == {"PUT /_emulator/upload": 1}


# -- seeds ---------------------------------------------------------------------


def test_seeded_functions_and_the_status_after_upload(seed_data):
    sandbox = seed_data["projects"][0]
    sandbox["zambdas"] = [
        {
            "id": "7b0c3a52-0000-4000-8000-000000000001",
            "name": "check-in",
            "runtime": "nodejs22.x",
            "executionRole": "Provider",
            "fileInfo": {
                "name": "3f2a9c01.zip",
                "size": 1024,
                "lastModified": "2024-05-06T07:08:09.000Z",
            },
        },
        {"name": "broken", "runtime": "nodejs22.x"},
        {"name": "slow", "runtime": "nodejs22.x", "status": "Pending"},
        {"name": "nightly", "runtime": "python3.12", "triggerMethod": "cron", "schedule": CRON},
    ]
    sandbox["zambdaStatusAfterUpload"] = {"broken": "Failed", "*": "Validating"}
    with serve(seed_data) as emu, http_client(emu.api_url) as api:
        api.headers.update(scoped(DEV_TOKEN, SANDBOX_ID))
        listed = {f["name"]: f for f in api.get("/zambda").json()}
        assert listed["check-in"] == {
            "id": "7b0c3a52-0000-4000-8000-000000000001",
            "name": "check-in",
            "runtime": "nodejs22.x",
            "status": "Active",
            "triggerMethod": "http_auth",
            "fileInfo": {
                "name": "3f2a9c01.zip",
                "size": 1024,
                "lastModified": "2024-05-06T07:08:09.000Z",
            },
            "executionRoleId": SANDBOX_PROVIDER_ROLE_ID,
        }
        assert [f["status"] for f in listed.values()] == ["Active", "Draft", "Pending", "Draft"]
        with http_client() as plain:
            for name in ("broken", "nightly"):
                assert plain.put(signed_url(api, name), content=ZIP).status_code == 200
        assert api.get("/zambda/broken").json()["status"] == "Failed"
        assert api.get("/zambda/nightly").json()["status"] == "Validating"


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ({"name": "f"}, ["zambdas[0]: missing required key 'runtime'"]),
        ({"name": "f", "runtime": "go1.x"}, ["zambdas[0]: runtime must be one of"]),
        ({"name": "f", "runtime": "java21", "triggerMethod": "cron"}, ["schedule is required"]),
        (
            {"name": "f", "runtime": "java21", "executionRole": "Nurse"},
            ["executionRole: unknown role 'Nurse'"],
        ),
        (
            {"name": "f", "runtime": "java21", "executionRoleId": "x"},
            ["executionRoleId: not a role of this Project"],
        ),
        (
            {"name": "f", "runtime": "java21", "status": "Running"},
            ["status: must be one of Draft,"],
        ),
        (
            {"name": "f", "runtime": "java21", "fileInfo": {"size": -1}},
            ["fileInfo: size must be a whole number >= 0"],
        ),
        ({"name": "f", "runtime": "java21", "fileInfo": {"md5": "x"}}, ["unknown key 'md5'"]),
    ],
)
def test_malformed_zambda_seed_is_one_line(seed_data, entry, words):
    seed_data["projects"][0]["zambdas"] = [entry]
    assert_seed_refused(seed_data, *words)


def test_seed_rejects_two_functions_of_one_name_and_a_bad_status_map(seed_data):
    sandbox = seed_data["projects"][0]
    sandbox["zambdas"] = [{"name": "f", "runtime": "java21"}, {"name": "f", "runtime": "java21"}]
    assert_seed_refused(seed_data, "Zambda name 'f' appears more than once")
    sandbox["zambdas"] = []
    sandbox["zambdaStatusAfterUpload"] = {"f": "Broken"}
    assert_seed_refused(seed_data, "zambdaStatusAfterUpload.f: must be one of")
