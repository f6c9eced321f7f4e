"""A rotated M2M client's new secret exists only in memory until it is stored (SPEC
section 13): the store is retried with the same value, a store that still fails says the
old secret is gone and how to recover, and an interrupt lets a store in flight finish.
Drilled through a proxy in front of a real emulator that delays or fails the stores; and
the value type that keeps every value out of output."""

from __future__ import annotations

import copy
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest
from hostile import HostileServer, Reply, Request, json_response, response
from secrets_e2e import (
    PID,
    count,
    env_for,
    run,
    secret_value,
    seed,
    token_status,
    write_project,
)

from reconciler.answers import describe_json
from reconciler.emulator import serve
from reconciler.secretvalues import SecretValue

FILE = f"""\
id: {PID}
secrets:
  ZAMBDAS_ID: {{valueFrom: {{m2mClient: Zambdas Admin, field: clientId}}}}
  ZAMBDAS_SECRET: {{valueFrom: {{m2mClient: Zambdas Admin, field: clientSecret}}}}
m2mClients:
  Zambdas Admin: {{roles: [Zambdas Runner]}}
"""
STORE = "POST /v1/secret"


def proxy(emu: Any, tamper: Any) -> HostileServer:
    """A server in front of `emu` that forwards every request, except those `tamper`
    answers itself (it may also sleep first)."""

    def answer(request: Request) -> Reply:
        own = tamper(request)
        if own is not None:
            return own
        headers = {k: v for k, v in request.headers.items() if k not in ("host", "content-length")}
        got = httpx.request(
            request.method, emu.url + request.path, headers=headers, content=request.body
        )
        kind = got.headers.get("content-type", "application/json")
        return response(got.status_code, got.content, content_type=kind)

    return HostileServer(answer)


def stores(server: HostileServer) -> list[dict]:
    return [r.json() for r in server.requests if r.key == STORE]


def test_a_store_that_fails_is_retried_with_the_same_value(repo):
    write_project(repo, FILE)
    failures = [2]

    def tamper(request: Request) -> Reply | None:
        if request.key == STORE and request.json()["name"] == "ZAMBDAS_SECRET" and failures[0]:
            failures[0] -= 1
            return json_response(503, {"message": "unavailable", "code": 503})
        return None

    with serve(seed()) as emu, proxy(emu, tamper) as server:
        env = env_for(server)
        result = run(["apply", "--yes", "--retries", "0"], env)
        assert result.exit_code == 0, result.output
        tries = [s for s in stores(server) if s["name"] == "ZAMBDAS_SECRET"]
        assert len(tries) == 3 and len({t["value"] for t in tries}) == 1  # the same value
        assert count({r.key: 1 for r in server.requests}, "POST", "/v1/m2m/") == 1
        stored = secret_value(emu, "ZAMBDAS_SECRET")
        assert stored == tries[0]["value"]
        assert token_status(emu, secret_value(emu, "ZAMBDAS_ID"), stored) == 200
        assert stored not in result.output


def test_a_store_that_still_fails_says_the_old_secret_is_gone_and_how_to_recover(repo):
    write_project(repo, FILE)

    def tamper(request: Request) -> Reply | None:
        if request.key == STORE and request.json()["name"] == "ZAMBDAS_SECRET":
            return json_response(503, {"message": "unavailable", "code": 503})
        return None

    with serve(seed()) as emu, proxy(emu, tamper) as server:
        result = run(["apply", "--yes", "--retries", "0"], env_for(server))
        assert result.exit_code == 1
        tries = [s for s in stores(server) if s["name"] == "ZAMBDAS_SECRET"]
        assert len(tries) == 4 and len({t["value"] for t in tries}) == 1
        assert (
            "secret 'ZAMBDAS_SECRET': M2M client 'Zambdas Admin' was rotated, but its new "
            f"secret could not be stored in secret 'ZAMBDAS_SECRET' (POST {server.api_url}/"
            "secret answered 503: unavailable): the client's old secret no longer works and "
            "the new one is lost. Rotate it again and store it: reconciler apply --rotate "
            f"{PID}:ZAMBDAS_SECRET"
        ) in result.stdout
        assert tries[0]["value"] not in result.output

        # Recovering as the message says: plan asks for --rotate, apply with it stores.
        assert run(["plan"], env_for(emu)).exit_code == 1
        recovered = run(["apply", "--yes", "--rotate", f"{PID}:ZAMBDAS_SECRET"], env_for(emu))
        assert recovered.exit_code == 0, recovered.output
        stored = secret_value(emu, "ZAMBDAS_SECRET")
        assert token_status(emu, secret_value(emu, "ZAMBDAS_ID"), stored) == 200


def test_an_interrupt_lets_the_store_in_flight_finish(repo):
    """SIGTERM while the new secret is being stored (the store takes 2.5 s, more than the
    1 s grace): apply waits for it, reports it stored, and the secret works."""
    write_project(repo, FILE)

    def tamper(request: Request) -> Reply | None:
        if request.key == STORE and request.json()["name"] == "ZAMBDAS_SECRET":
            time.sleep(2.5)
        return None

    with serve(seed()) as emu, proxy(emu, tamper) as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OYSTEHR_", "GITHUB_"))}
        env.update({k: v for k, v in env_for(server).items() if v is not None})
        process = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "apply", "--yes", "--format", "json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            server.wait_for(STORE, 2)  # the client's id, then its new secret
            deadline = time.monotonic() + 10
            while not [s for s in stores(server) if s["name"] == "ZAMBDAS_SECRET"]:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            process.send_signal(signal.SIGTERM)
            started = time.monotonic()
            out, err = process.communicate(timeout=30)
            seconds = time.monotonic() - started
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        assert process.returncode == 0, out + err
        assert 1.5 < seconds < 10, seconds
        assert "Waiting for a rotated M2M client's new secret to be stored" in err
        [outcome] = json.loads(out)["projects"]
        assert [(o["name"], o["status"]) for o in outcome["objects"]] == [
            ("Zambdas Admin", "applied"),
            ("ZAMBDAS_ID", "applied"),
            ("ZAMBDAS_SECRET", "applied"),
        ]
        stored = secret_value(emu, "ZAMBDAS_SECRET")
        assert token_status(emu, secret_value(emu, "ZAMBDAS_ID"), stored) == 200
        assert stored not in out + err


# The value type ------------------------------------------------------------------------


def test_a_secret_value_shows_as_secret_and_is_never_pickled_serialised_or_hashed():
    value = SecretValue("sk_live_unit_0a1b2c")
    for shown in (str(value), repr(value), f"{value}", f"{value!r}", f"{value:>30}", str([value])):
        assert "sk_live" not in shown and "<secret>" in shown
    assert describe_json({"value": value}) == '{"value": "<secret>"}'
    with pytest.raises(TypeError):
        pickle.dumps(value)
    with pytest.raises(TypeError):
        json.dumps({"value": value})
    with pytest.raises(TypeError):
        hash(value)
    assert copy.deepcopy({"v": value})["v"] is value
    assert value == SecretValue("sk_live_unit_0a1b2c")
    assert value != SecretValue("sk_live_unit_0a1b2d")
    assert value != "sk_live_unit_0a1b2c"  # never equal to a plain string
    assert value.reveal() == "sk_live_unit_0a1b2c"
    with pytest.raises(TypeError):
        SecretValue(12345678)  # type: ignore[arg-type]
