"""The emulator defends itself (SPEC section 10): a foreign Host header is 421, so a web
page cannot reach it through DNS rebinding with the public seed tokens; a JSON body nested
deeper than 64 levels is 400, never a 500. And `--seed demo` works from any folder."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from typing import Any

import pytest
from conftest import DEV_TOKEN, SANDBOX_ID
from test_emulator import CLIENT_CREDENTIALS, assert_error, http_client, scoped, start_cli, stop_cli

from reconciler.emulator import serve


def raw_request(url: str, request: bytes) -> tuple[int, bytes]:
    """Send bytes as they are (no client fixes the Host up) and read the status and body."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host.strip("[]"), int(port)), timeout=5) as conn:
        conn.sendall(request)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def get(path: str, host: str | None, extra: str = "") -> bytes:
    host_line = f"Host: {host}\r\n" if host is not None else ""
    return f"GET {path} HTTP/1.1\r\n{host_line}{extra}Connection: close\r\n\r\n".encode()


@pytest.mark.parametrize("path", ["/v1/project", "/v1/version", "/_emulator/stats", "/v1/secret"])
def test_a_foreign_host_is_421(emulator, path):
    token = f"Authorization: Bearer {DEV_TOKEN}\r\nx-oystehr-project-id: {SANDBOX_ID}\r\n"
    for host in (
        "evil.example",
        "evil.example:80",
        f"evil.example:{emulator.url.rsplit(':', 1)[1]}",
    ):
        status, body = raw_request(emulator.url, get(path, host, token))
        assert status == 421
        message = json.loads(body)
        assert message["code"] == 421 and "localhost" in message["message"]
        assert "SANDBOX" not in body.decode()
    assert emulator.stats() == {}  # refused at the door: never counted, never run


def test_a_foreign_host_cannot_post_a_token_request(emulator):
    body = json.dumps(CLIENT_CREDENTIALS).encode()
    request = (
        b"POST /oauth/token HTTP/1.1\r\nHost: rebound.attacker.test\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
        % (len(body), body)
    )
    status, answer = raw_request(emulator.url, request)
    assert status == 421
    assert b"access_token" not in answer


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.0.0.1:{port}",
        "localhost:{port}",
        "LOCALHOST",
        "127.8.9.10:1",
        "[::1]:{port}",
        None,
    ],
)
def test_loopback_hosts_are_served(emulator, host):
    port = emulator.url.rsplit(":", 1)[1]
    shown = host.format(port=port) if host else None
    status, body = raw_request(emulator.url, get("/v1/version", shown))
    assert status == 200, body


def test_a_host_given_to_listen_on_is_served(seed_data):
    # --host 0.0.0.0 (say, in a container): that name is allowed, others still are not.
    with serve(seed_data, host="0.0.0.0") as emu:
        url = emu.url.replace("0.0.0.0", "127.0.0.1")
        port = url.rsplit(":", 1)[1]
        assert raw_request(url, get("/v1/version", f"0.0.0.0:{port}"))[0] == 200
        assert raw_request(url, get("/v1/version", "evil.example"))[0] == 421


def nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth - 1):
        value = [value]
    return {"name": value}


@pytest.mark.parametrize("depth", [65, 1_000, 100_000])
def test_a_body_nested_too_deep_is_400_never_500(api_client, depth):
    content = (
        json.dumps(nested(depth)) if depth < 900 else '{"name": ' + "[" * depth + "]" * depth + "}"
    )
    for method, path in (
        ("PATCH", "/v1/project"),
        ("POST", "/v1/iam/role"),
        ("POST", "/oauth/token"),
    ):
        response = api_client.request(
            method, path, content=content, headers={"content-type": "application/json"}
        )
        assert_error(response, 400, "nested deeper than 64 levels")


def test_a_body_64_levels_deep_is_read(api_client):
    response = api_client.post("/v1/iam/role", json=nested(64))
    assert_error(response, 400, "name must be a non-empty string")  # read, then refused


@pytest.fixture
def api_client(emulator):
    with http_client(emulator.url) as http:
        http.headers.update(scoped(DEV_TOKEN, SANDBOX_ID))
        yield http


# -- --seed demo ---------------------------------------------------------------

STAGING_ID = "31f7e0b1-b7ae-439d-a141-27b4e09ba6a1"


def test_seed_demo_is_the_bundled_seed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no seed file here: `demo` is the package's
    with serve("demo") as emu, http_client(emu.api_url) as http:
        project = http.get("/project", headers=scoped("demo-staging-token", STAGING_ID)).json()
        assert project["name"] == "Patient Portal (staging)"


def test_cli_seed_demo_from_any_folder(tmp_path):
    process, url = start_cli("--seed", "demo", "--quiet", cwd=tmp_path)
    try:
        with http_client(url) as http:
            response = http.get("/v1/project", headers=scoped("demo-staging-token", STAGING_ID))
        assert response.json()["id"] == STAGING_ID
    finally:
        code, out, err = stop_cli(process)
    assert (code, out, err) == (0, "", "")


def test_cli_seed_file_still_works_and_a_missing_one_is_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "reconciler", "emulator", "--port", "0", "--seed", "nope.yaml"],
        capture_output=True,
        text=True,
        timeout=10,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("Error: nope.yaml: cannot read seed file")
