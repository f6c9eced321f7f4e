"""The official SDK (`@oystehr/sdk` 4.x, npm) against the emulator: roles, applications,
M2M clients, secrets, Z3 buckets and Zambda Functions with the SDK's own calls and types
(SPEC sections 9, 13 and 14, "Targets").

The SDK is installed once into ~/.cache/reconciler-sdk-test (or $RECONCILER_SDK_DIR),
outside the repository; the test skips, saying why, where node or npm is missing or
the install fails. The calls are in tests/sdk/sdk_calls.mjs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import DEV_TOKEN, SANDBOX_CLIENT_ID, SANDBOX_ID

from reconciler.emulator import serve
from reconciler.emulator.policy import ENDPOINT_ACTIONS

SDK_DIR = Path(os.environ.get("RECONCILER_SDK_DIR") or Path.home() / ".cache/reconciler-sdk-test")
SCRIPT = Path(__file__).parent / "sdk" / "sdk_calls.mjs"


@pytest.fixture(scope="session")
def sdk_dir() -> Path:
    """A folder whose node_modules holds @oystehr/sdk 4.x (installed on first use)."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if not node or not npm:
        pytest.skip("node and npm are needed to run the official SDK")
    package = SDK_DIR / "node_modules" / "@oystehr" / "sdk" / "package.json"
    if not package.exists():
        SDK_DIR.mkdir(parents=True, exist_ok=True)
        manifest = SDK_DIR / "package.json"
        if not manifest.exists():
            manifest.write_text('{"name": "reconciler-sdk-test", "private": true}\n')
        try:
            result = subprocess.run(
                [npm, "install", "--no-audit", "--no-fund", "@oystehr/sdk@4"],
                cwd=SDK_DIR,
                capture_output=True,
                text=True,
                timeout=300,
            )
        except subprocess.TimeoutExpired:
            pytest.skip("npm install @oystehr/sdk@4 took more than 300 s")
        if result.returncode != 0 or not package.exists():
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            pytest.skip(f"npm install @oystehr/sdk@4 failed: {last}")
    version = json.loads(package.read_text())["version"]
    if not version.startswith("4."):
        pytest.skip(f"{SDK_DIR} holds @oystehr/sdk {version}, not 4.x")
    return SDK_DIR


def run_sdk(sdk_dir: Path, emu: Any, project_id: str) -> dict[str, Any]:
    result = subprocess.run(
        [
            shutil.which("node") or "node",
            str(SCRIPT),
            str(sdk_dir),
            emu.api_url,
            emu.auth_url,
            project_id,
            DEV_TOKEN,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout, result.stderr
    output = json.loads(result.stdout)
    assert "failed" not in output, json.dumps(output, indent=2)
    assert result.returncode == 0, result.stderr
    return output


def test_the_official_sdk_against_the_emulator(sdk_dir, seed_data):
    # Three more clients, so that listV2 with limit 2 takes three pages.
    sandbox = seed_data["projects"][0]
    sandbox["m2mClients"] += [
        {"clientId": f"extra-{i}", "clientSecret": f"extra-secret-{i}"} for i in range(3)
    ]
    with serve(seed_data) as emu:
        out = run_sdk(sdk_dir, emu, SANDBOX_ID)
        stats = emu.stats()
        store = emu.store

        role = out["role.create"]
        policy = {
            "rule": [
                {"resource": ["IAM:Role"], "action": "IAM:ListAllRoles", "effect": "Allow"},
                {"resource": "IAM:M2MClient", "action": ["App:GetM2MClient"], "effect": "Allow"},
            ]
        }
        assert role == {
            "id": role["id"],
            "name": "SDK Role",
            "description": "made by the SDK",
            "accessPolicy": policy,
        }
        assert out["role.get"] == role
        assert out["role.update"] == {**role, "description": "updated"}
        listed = {r["name"]: r for r in out["role.list"]}
        assert listed["SDK Role"] == {"id": role["id"], "name": "SDK Role", "memberCount": 0}

        app = out["application.create"]
        assert app["name"] == "SDK App"
        assert app["allowedCallbackUrls"] == ["https://app.example.com/callback"]
        assert app["loginWithEmailEnabled"] is True
        assert app["mfaEnabled"] is False
        assert app["clientId"] and app["connectionName"]
        assert out["application.get"] == app
        assert out["application.update"] == {**app, "mfaEnabled": True}
        assert out["application.list"] == [
            {"id": app["id"], "name": "SDK App", "clientId": app["clientId"]}
        ]
        assert len(out["application.rotateSecret"]["secret"]) >= 32

        client = out["m2m.create"]
        assert "secret" not in json.dumps(client).lower()
        assert client == {
            "id": client["id"],
            "name": "sdk-client",
            "description": "made by the SDK",
            "clientId": client["clientId"],
            "profile": client["profile"],
            "roles": [{"id": role["id"], "name": "SDK Role"}],
        }
        assert out["m2m.get"] == client
        assert out["m2m.update"] == {**client, "jwksUrl": "https://x/jwks"}
        pages = out["m2m.listV2"]
        assert [len(page["data"]) for page in pages] == [2, 2, 1]
        assert pages[-1]["metadata"]["nextCursor"] is None
        names = [item["name"] for page in pages for item in page["data"]]
        assert names == [SANDBOX_CLIENT_ID, "extra-0", "extra-1", "extra-2", "sdk-client"]
        held = out["role.delete while held"]
        assert held["refused"] and held["code"] == 400
        assert "held by 1" in held["message"]

        assert out["token with the first secret"]["status"] == 200
        assert out["m2m.me"] == out["m2m.update"]
        assert [r["name"] for r in out["role.list as the client"]] == [
            "Patient",
            "Provider",
            "SDK Role",
        ]
        refused = out["application.list as the client"]
        assert refused["code"] == 403
        assert "not allowed: App:ListAllApplications on App:Application" in refused["message"]
        assert out["token with the old secret"]["status"] == 401
        assert out["token with the new secret"]["status"] == 200

        assert out["secret.set"] == {"name": "SDK_SECRET", "value": "first value"}
        assert out["secret.set again"] == {"name": "SDK_SECRET", "value": "second value"}
        assert out["secret.get"] == out["secret.set again"]
        assert out["secret.list"] == [{"name": "SDK_SECRET"}]
        assert out["secret.delete"] is None
        assert out["secret.get after delete"]["code"] == 404

        bucket = out["z3.createBucket"]
        assert bucket == {"id": bucket["id"], "name": "sdk-visit-notes"}
        (listed_bucket,) = out["z3.listBuckets"]
        assert listed_bucket == {**bucket, "creationDate": listed_bucket["creationDate"]}
        assert re.fullmatch(
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", listed_bucket["creationDate"]
        )
        assert out["z3.deleteBucket"] is None
        assert out["z3.listBuckets after delete"] == []

        function = out["zambda.create"]
        assert function == {
            "id": function["id"],
            "name": "sdk-function",
            "runtime": "nodejs22.x",
            "status": "Draft",
            "triggerMethod": "cron",
            "schedule": {"expression": "cron(*/5 * * * ? *)", "retryPolicy": {"maximumRetry": 2}},
            "timeoutInSeconds": 300,
            "executionRoleId": role["id"],
        }
        assert out["zambda.get"] == out["zambda.get by name"] == function
        assert out["zambda.update"] == {**function, "memorySize": 512}
        assert out["zambda.list"] == [out["zambda.update"]]
        assert out["zambda.uploadFile"] is None
        uploaded = out["zambda.get after upload"]
        assert uploaded["status"] == "Active"
        assert uploaded["fileInfo"] == {
            "name": "sdk-code.zip",
            "size": 22,
            "lastModified": uploaded["fileInfo"]["lastModified"],
        }
        again = out["zambda.get after the second upload"]["fileInfo"]
        assert re.fullmatch(r"[0-9a-f-]{36}\.zip", again["name"]) and again["size"] == 3
        assert out["zambda.create with a taken name"]["code"] == 409
        assert out["zambda.delete"] is None
        assert out["zambda.get after delete"]["code"] == 404

        assert out["m2m.delete"] is None
        assert out["application.delete"] is None
        assert out["role.delete"] is None
        assert out["role.get after delete"]["code"] == 404
        assert store.list_applications(SANDBOX_ID) == []
        assert [c["name"] for c in store.list_m2m(SANDBOX_ID)][-1] == "extra-2"
        # One request per SDK call: no retry, no hidden extra request.
        assert stats["POST /v1/iam/role"] == 1
        assert stats["GET /v1/m2m/v2/list"] == 3
        assert stats["POST /oauth/token"] == 3
        assert stats[f"DELETE /v1/iam/role/{role['id']}"] == 2
        assert stats["POST /v1/secret"] == 2
        assert stats["PUT /v1/z3/sdk-visit-notes"] == 1
        assert stats[f"POST /v1/zambda/{function['id']}/s3-upload"] == 1
        assert stats["POST /v1/zambda/sdk-function/s3-upload"] == 1
        # Each uploadFile PUTs once to the signed URL, with no bearer token.
        assert stats["PUT /_emulator/upload"] == 2


def sdk_documented_actions(sdk_dir: Path) -> dict[tuple[str, str], tuple[str, str]]:
    """(METHOD, /v1/path) -> (action, resource), read from the SDK's classes of the kinds
    the emulator serves (each method's doc comment names them)."""
    classes = sdk_dir / "node_modules" / "@oystehr" / "sdk" / "dist" / "esm" / "resources"
    method = re.compile(
        r"Access Policy Action: `([^`]+)`\s*\*\s*Access Policy Resource: `([^`]+)`"
        r".*?this\.request\('([^']+)', '(\w+)'",
        re.DOTALL,
    )
    documented = {}
    for name in ("project", "role", "application", "m2m", "secret", "z3", "zambda"):
        text = (classes / "classes" / f"{name}.js").read_text()
        for action, resource, path, verb in method.findall(text):
            path = re.sub(r"\{[\w+]+\}", "{id}", path)
            documented[(verb.upper(), "/v1" + path)] = (action, resource)
    return documented


def test_the_emulator_asks_for_the_actions_the_sdk_documents(sdk_dir):
    documented = sdk_documented_actions(sdk_dir)
    # Not part of the Project API the emulator serves: revoking users' tokens, Z3
    # objects (files in buckets) and running a Zambda Function.
    for key in (
        ("POST", "/v1/application/{id}/revoke-refresh-token"),
        ("POST", "/v1/application/{id}/revoke-access-token"),
        ("GET", "/v1/z3/{id}/{id}"),
        ("POST", "/v1/z3/{id}/{id}"),
        ("DELETE", "/v1/z3/{id}/{id}"),
        ("POST", "/v1/zambda/{id}/execute"),
    ):
        documented.pop(key, None)
    assert len(documented) == 34
    assert documented == ENDPOINT_ACTIONS
