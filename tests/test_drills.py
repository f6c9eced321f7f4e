"""Fault drills (SPEC section 7): a flaky API, a rejected PATCH, an apply killed mid-way,
and --shard splitting a fleet. Each drill runs a fleet of Projects end to end against a
real emulator and is kept to a few seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from click.testing import CliRunner, Result
from e2e import when_first
from hostile import (
    HostileServer,
    Reply,
    Request,
    hang,
    json_response,
    project_doc,
    project_files,
    trickle,
)

from reconciler.cli import cli
from reconciler.emulator import Faults, load_seed, serve

TOKEN = "dev-token-drills"


def pid(index: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"drill-project-{index}"))


def role_id(index: int, name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"drill-role-{index}-{name}"))


def seeded_project(index: int, *, role_change: bool = True) -> dict[str, Any]:
    """Live state before any apply: name, description and signupEnabled differ from the
    file, and so does the default patient role with `role_change` (which costs each
    plan a role look-up)."""
    project = {
        "id": pid(index),
        "name": f"Old name {index}",
        "description": f"Old description {index}",
        "signupEnabled": False,
        "sandbox": True,
        "fhirVersion": "r4",
        "roles": [
            {"id": role_id(index, "Patient"), "name": "Patient"},
            {"id": role_id(index, "Staff"), "name": "Staff"},
        ],
    }
    if not role_change:
        project["defaultPatientRole"] = role_id(index, "Patient")
    return project


def old(index: int, *, role_change: bool = True) -> dict[str, Any]:
    """What GET /v1/project answers for a Project no apply has touched."""
    role = None if role_change else {"id": role_id(index, "Patient"), "name": "Patient"}
    return {
        "name": f"Old name {index}",
        "description": f"Old description {index}",
        "signupEnabled": False,
        "defaultPatientRole": role,
    }


def wanted(index: int) -> dict[str, Any]:
    """What the file asks for, as GET /v1/project will answer once applied."""
    return {
        "name": f"Clinic {index}",
        "description": f"Reviewed description {index}",
        "signupEnabled": True,
        "defaultPatientRole": {"id": role_id(index, "Patient"), "name": "Patient"},
    }


def make_fleet(folder: Path, count: int, *, role_change: bool = True) -> dict[str, Any]:
    """`count` project files, each changing three or four fields (one PATCH each), and
    the seed of the emulator they run against."""
    for index in range(count):
        (folder / "projects").mkdir(parents=True, exist_ok=True)
        (folder / "projects" / f"clinic-{index:02d}.yaml").write_text(
            f"id: {pid(index)}\n"
            f"name: Clinic {index}\n"
            f"description: Reviewed description {index}\n"
            "signupEnabled: true\n"
            "defaultPatientRole: Patient\n"
            "fhirVersion: r4\n",
            encoding="utf-8",
        )
    ids = [pid(i) for i in range(count)]
    return {
        "projects": [seeded_project(i, role_change=role_change) for i in range(count)],
        "developers": [{"accessToken": TOKEN, "projects": ids}],
    }


def env_for(api_url: str, auth_url: str) -> dict[str, str | None]:
    return {
        "OYSTEHR_PROJECT_API_URL": api_url,
        "OYSTEHR_AUTH_URL": auth_url,
        "OYSTEHR_ACCESS_TOKEN": TOKEN,
        "OYSTEHR_CLIENT_ID": None,
        "OYSTEHR_CLIENT_SECRET": None,
        "GITHUB_STEP_SUMMARY": None,
        "NO_COLOR": None,
    }


def run(args: list[str], api_url: str, auth_url: str) -> Result:
    return CliRunner().invoke(cli, args, env=env_for(api_url, auth_url), catch_exceptions=False)


def live(api_url: str, project_id: str) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {TOKEN}", "x-oystehr-project-id": project_id}
    response = httpx.get(api_url + "/project", headers=headers)
    response.raise_for_status()
    return response.json()


def read_all(api_url: str, count: int) -> list[dict[str, Any]]:
    """The managed fields of every Project, read in parallel (the emulator is slow on purpose)."""
    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(lambda i: managed(live(api_url, pid(i))), range(count)))


def managed(doc: dict[str, Any]) -> dict[str, Any]:
    return {key: doc.get(key) for key in ("name", "description", "signupEnabled")} | {
        "defaultPatientRole": doc.get("defaultPatientRole")
    }


# (a) a flaky API --------------------------------------------------------------------


def test_apply_under_503s_and_429s_converges_and_a_second_plan_is_clean(repo):
    # Every 429 (Retry-After: 1) pauses the whole run for a second: a dozen Projects and
    # a 429 every 10th request keep the drill to a few seconds.
    count = 12
    seed = make_fleet(repo, count, role_change=False)
    faults = Faults(error_rate=0.3, rate_limit_every=10, seed=3)
    with serve(seed, faults=faults) as emu:
        options = ["--retries", "10", "--concurrency", "12"]
        result = run(["apply", "--yes", *options], emu.api_url, emu.auth_url)
        assert result.exit_code == 0, result.output
        assert f"Apply: {count} applied, 0 unchanged, 0 failed." in result.stdout
        stats = emu.stats()
        # Faults really happened: more requests than the 2 per Project a clean run needs.
        assert stats["GET /v1/project"] + stats["PATCH /v1/project"] > 2 * count
        replan = run(["plan", "--detailed-exitcode", *options], emu.api_url, emu.auth_url)
        assert replan.exit_code == 0, replan.output
        assert f"Plan: 0 to change, {count} unchanged, 0 errors." in replan.stdout
        for index in range(count):
            assert managed(emu.store.get_project(pid(index))) == wanted(index)


# (b) one Project's PATCH is rejected ------------------------------------------------


def test_a_rejected_patch_fails_its_project_and_the_others_apply(repo):
    count = 6
    seed = make_fleet(repo, count)
    victim = 2
    with serve(seed, faults=Faults(latency_ms=50)) as emu:
        assert run(["plan", "--out", "plan.json"], emu.api_url, emu.auth_url).exit_code == 0
        # While the PATCHes are on their way (after apply verified the plan), someone
        # deletes the victim's Patient role: the API rejects its PATCH.
        without_roles = seeded_project(victim) | {
            "roles": [{"id": role_id(victim, "Staff"), "name": "Staff"}]
        }
        emu.reset_stats()
        gone = when_first(
            emu,
            "PATCH /v1/project",
            lambda: emu.store.load_seed(load_seed({"projects": [without_roles]})),
        )
        result = run(["apply", "--plan", "plan.json", "--yes"], emu.api_url, emu.auth_url)
        gone.join()
        assert result.exit_code == 1
        # Each re-read: the Project, and the role list its patient role is found in.
        assert emu.stats() == {
            "GET /v1/project": count,
            "GET /v1/iam/role": count,
            "PATCH /v1/project": count,
        }
        failed = [line for line in result.stdout.splitlines() if ": failed" in line]
        assert len(failed) == 1 and pid(victim) in failed[0] and "400" in failed[0]
        assert f"Apply: {count - 1} applied, 0 unchanged, 1 failed." in result.stdout
        for index in range(count):
            if index != victim:
                assert managed(emu.store.get_project(pid(index))) == wanted(index)
        # The rejected PATCH was one transaction: none of its four fields were written.
        assert managed(emu.store.get_project(pid(victim))) == old(victim)


# (c) an apply killed mid-way ---------------------------------------------------------


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class EmulatorProcess:
    """`reconciler emulator` in its own process (the apply under test is one too)."""

    def __init__(self, seed_file: Path, *flags: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "emulator", "--port", "0"]
            + ["--seed", str(seed_file), "--quiet", *flags],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.url = self.process.stdout.readline().strip()
        self.api_url, self.auth_url = self.url + "/v1", self.url + "/oauth/token"

    def stats(self) -> dict[str, int]:
        return httpx.get(self.url + "/_emulator/stats").json()["requests"]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()


def apply_until_sigterm(emu: EmulatorProcess, request: str, count: int) -> tuple[int, str, str]:
    """Run `reconciler apply --yes` in its own process and SIGTERM it once the emulator
    has seen `count` of `request` (polled, bounded). Returns (exit code, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OYSTEHR_", "GITHUB_"))}
    env.update({k: v for k, v in env_for(emu.api_url, emu.auth_url).items() if v})
    apply = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "apply", "--yes", "--concurrency", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while emu.stats().get(request, 0) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        apply.send_signal(signal.SIGTERM)
        out, err = apply.communicate(timeout=30)
    finally:
        if apply.poll() is None:
            apply.kill()
            apply.communicate()
    return apply.returncode, out, err


def test_an_apply_stopped_by_sigterm_reports_and_a_rerun_converges(repo):
    count = 20
    seed = make_fleet(repo, count, role_change=False)
    (repo / "seed.yaml").write_text(yaml.safe_dump(seed), encoding="utf-8")
    emu = EmulatorProcess(repo / "seed.yaml", "--latency-ms", "100")
    try:
        assert emu.url.startswith("http://127.0.0.1:")
        # SIGTERM once the PATCHes have begun (the plan reads come first).
        code, out, err = apply_until_sigterm(emu, "PATCH /v1/project", 2)
        assert code == 1, out + err
        assert "Stopping: no new writes will start" in err
        summary = re.search(r"Apply: (\d+) applied, 0 unchanged, 0 failed, (\d+) skipped\.", out)
        assert summary, out
        applied, skipped = int(summary[1]), int(summary[2])
        assert applied + skipped == count and applied >= 2 and skipped >= 1
        assert out.count(": skipped: not started: the apply was interrupted") == skipped

        # Each Project is either wholly applied or wholly untouched: never half-written.
        states = read_all(emu.api_url, count)
        done = [i for i, state in enumerate(states) if state == wanted(i)]
        untouched = [i for i, state in enumerate(states) if state == old(i, role_change=False)]
        assert (len(done), len(untouched)) == (applied, skipped)

        rerun = run(["apply", "--yes", "--concurrency", "8"], emu.api_url, emu.auth_url)
        assert rerun.exit_code == 0, rerun.output
        assert f"Apply: {skipped} applied, {applied} unchanged, 0 failed." in rerun.stdout
        assert read_all(emu.api_url, count) == [wanted(i) for i in range(count)]
    finally:
        emu.stop()


def test_sigterm_while_reading_stops_with_a_message_and_writes_nothing(repo):
    count = 40
    seed = make_fleet(repo, count, role_change=False)
    (repo / "seed.yaml").write_text(yaml.safe_dump(seed), encoding="utf-8")
    emu = EmulatorProcess(repo / "seed.yaml", "--latency-ms", "100")
    try:
        code, out, err = apply_until_sigterm(emu, "GET /v1/project", 4)
        assert code == 1, out + err
        assert err.strip().endswith("Interrupted; nothing more was started.")
        assert "Traceback" not in err
        assert "PATCH /v1/project" not in emu.stats()
    finally:
        emu.stop()


# (d) --shard I/N ---------------------------------------------------------------------


def shard_ids(folder: str, shard: str, emu) -> list[str]:
    result = run(["plan", "--shard", shard, "--format", "json", folder], emu.api_url, emu.auth_url)
    assert result.exit_code == 0, result.output
    return [p["projectId"] for p in json.loads(result.stdout)["projects"]]


def test_shards_split_the_fleet_exactly_and_stably(repo):
    count = 24
    seed = make_fleet(repo, count)
    # The same Projects again under other file names and folders: a shard goes by id only.
    moved = repo / "moved"
    for index, path in enumerate(sorted((repo / "projects").glob("*.yaml"))):
        target = moved / f"group-{index % 3}" / f"renamed-{count - index}.yaml"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    everything = {pid(i) for i in range(count)}
    with serve(seed) as emu:
        for n in (1, 2, 3, 5):
            shards = [shard_ids("projects", f"{i}/{n}", emu) for i in range(1, n + 1)]
            union = [project_id for shard in shards for project_id in shard]
            assert len(union) == len(set(union)) == count  # no overlap
            assert set(union) == everything  # nothing missing
            for i, shard in enumerate(shards, start=1):
                # SPEC section 4: shard I holds int(sha256(id), 16) % N == I - 1.
                for project_id in shard:
                    digest = int(hashlib.sha256(project_id.encode()).hexdigest(), 16)
                    assert digest % n == i - 1
                assert sorted(shard_ids("moved", f"{i}/{n}", emu)) == sorted(shard)
            if n > 1:
                assert all(shards), f"an empty shard of {n}: the split is not spread"


# (e) hostile servers: a hung PATCH and a trickle -------------------------------------


def sigterm_once(
    server: HostileServer,
    key: str,
    count: int,
    args: list[str],
    summary: Path,
    signum: int = signal.SIGTERM,
) -> tuple[int, str, str, float]:
    """Run reconciler ARGS against `server` in its own process, SIGTERM (or `signum`) it
    once the server has seen `count` requests `key`; (exit code, stdout, stderr, seconds
    to exit)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OYSTEHR_", "GITHUB_"))}
    env.update({k: v for k, v in env_for(server.api_url, server.auth_url).items() if v})
    env["GITHUB_STEP_SUMMARY"] = str(summary)
    process = subprocess.Popen(
        [sys.executable, "-m", "reconciler", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        # A test run started in the background (`cmd &` in a script, nohup) passes SIGINT
        # on ignored, and Python then never turns it into KeyboardInterrupt: the drill is
        # about a user's Ctrl-C, so the child starts with SIGINT's default.
        preexec_fn=_default_sigint,
    )
    try:
        server.wait_for(key, count)
        process.send_signal(signum)
        started = time.monotonic()
        out, err = process.communicate(timeout=10)
        seconds = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    print(f"{' '.join(args)}: exited {seconds:.2f} s after {signal.Signals(signum).name}")
    return process.returncode, out, err, seconds


def test_sigterm_during_a_hung_patch_ends_within_2_s_with_unknown_in_the_report(repo):
    ids = project_files(repo, 2)

    def answer(request: Request) -> Reply:
        if request.method == "PATCH":
            return hang()
        return json_response(200, project_doc(request.headers["x-oystehr-project-id"]))

    summary = repo / "summary.md"
    with HostileServer(answer) as server:
        code, out, err, seconds = sigterm_once(
            server, "PATCH /v1/project", 2, ["apply", "--yes"], summary
        )
        assert (code, "Traceback" in err) == (1, False), out + err
        assert seconds < 2.0
        assert out.endswith("Apply: 0 applied, 0 unchanged, 0 failed, 2 unknown.\n")
        for index, project_id in enumerate(ids):
            assert (
                f"? Hostile ({project_id})  projects/p{index}.yaml: unknown: the PATCH "
                "was in flight when the apply was interrupted; plan again to see "
                "whether it was applied\n"
            ) in out
        assert "### reconciler apply: 0 applied, 0 unchanged, 0 failed, 2 unknown" in (
            summary.read_text()
        )

        code, out, err, seconds = sigterm_once(
            server, "PATCH /v1/project", 4, ["apply", "--yes", "--format", "json"], summary
        )
        assert (code, seconds < 2.0) == (1, True), out + err
        doc = json.loads(out)
        assert doc["summary"]["unknown"] == 2
        assert [p["status"] for p in doc["projects"]] == ["unknown", "unknown"]
        assert server.count("PATCH /v1/project") == 4


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_a_hung_read_ends_within_2_s(repo, signum):
    project_files(repo, 3)
    with HostileServer(lambda request: hang()) as server:
        code, out, err, seconds = sigterm_once(
            server, "GET /v1/project", 3, ["plan"], repo / "summary.md", signum
        )
    assert (code, seconds < 2.0) == (1, True), out + err
    assert err.strip() == "Interrupted; nothing more was started."


def test_a_trickling_server_is_cut_at_the_timeout(repo):
    [project_id] = project_files(repo, 1)
    body = json_response(200, project_doc(project_id))

    with HostileServer(lambda request: trickle(body, every=1.0)) as server:
        started = time.monotonic()
        result = run(["plan", "--timeout", "2", "--retries", "0"], server.api_url, server.auth_url)
        seconds = time.monotonic() - started
    print(f"trickle cut after {seconds:.2f} s at --timeout 2")
    assert result.exit_code == 1
    assert 2.0 <= seconds < 3.0
    assert (
        f"    error: GET {server.api_url}/project: no complete answer within 2 s (after 1 attempt)"
        in result.stdout
    )


def test_sigterm_during_a_level_reports_each_write_in_flight_unknown(repo):
    # Three role creates run at once; the server answers A and never answers B or C.
    body = "roles:\n  A: {}\n  B: {}\n  C: {}\nm2mClients:\n  job: {roles: [A]}\n"
    project_files(repo, 1, body=body)

    def answer(request: Request) -> Reply:
        if request.method == "POST":
            name = request.json()["name"]
            if name != "A":
                return hang()
            return json_response(201, {"id": str(uuid.uuid4()), "name": name})
        if request.path == "/v1/iam/role":
            return json_response(200, [])
        if request.path == "/v1/m2m/v2/list":
            return json_response(200, {"data": [], "metadata": {"nextCursor": None}})
        return json_response(200, project_doc(request.headers["x-oystehr-project-id"]))

    with HostileServer(answer) as server:
        code, out, err, seconds = sigterm_once(
            server, "POST /v1/iam/role", 3, ["apply", "--yes", "--format", "json"], repo / "s.md"
        )
        assert server.count("POST /v1/m2m") == 0
    assert (code, seconds < 2.0, "Traceback" in err) == (1, True, False), out + err
    [outcome] = json.loads(out)["projects"]
    assert outcome["status"] == "unknown"
    assert outcome["error"] == (
        "the write of role 'B' (and 1 more) was in flight when the apply was interrupted; "
        "plan again to see whether it was applied"
    )
    assert [(o["name"], o["status"]) for o in outcome["objects"]] == [
        ("A", "applied"),
        ("B", "unknown"),
        ("C", "unknown"),
        ("job", "skipped"),
    ]
    assert outcome["objects"][3]["error"] == "not started: interrupted"
