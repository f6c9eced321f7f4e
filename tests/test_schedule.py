"""One request budget for the whole run (SPEC section 11), end to end: a Project's reads
and writes overlap, apply's levels never do, a failure stops only its own Project, a 429
pauses the whole run once, --concurrency bounds every request (token requests too), and
files stream into the plan while later ones load. Request counts come from the
emulator's stats, overlaps from its request log."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from typing import Any

import pytest
from e2e import DEV_TOKEN, run, when_first, write
from hostile import HostileServer, Request, json_response, project_doc, project_files

from reconciler.emulator import Faults, serve
from reconciler.schedule import Budget

PID = "5d0b9f6e-2a4c-4e8d-9b1f-3c5a7e9d1b2f"
OTHER = "6e1cae7f-3b5d-4f9e-8c20-4d6b8fae2c30"


def uid(*parts: Any) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "schedule-" + "-".join(map(str, parts))))


def big_project(roles: int, apps: int, m2m: int, *, live: bool) -> tuple[str, dict[str, Any]]:
    """A file managing `roles` roles (each with a description: one GET each),
    `apps` applications and `m2m` M2M clients holding roles by name; and the seeded
    Project, holding them all (`live`) or none of them."""
    lines = [f"id: {PID}", "name: Big", "defaultPatientRole: role 0", "roles:"]
    seeded: dict[str, Any] = {"id": PID, "name": "Big", "fhirVersion": "r4"}
    for i in range(roles):
        lines.append(f"  role {i}: {{description: Role number {i}}}")
    lines.append("applications:")
    for i in range(apps):
        lines.append(f"  app {i}: {{allowedCallbackUrls: ['https://app{i}.example.com/cb']}}")
    lines.append("m2mClients:")
    for i in range(m2m):
        lines.append(f"  job {i}: {{description: Job {i}, roles: [role {i % roles}]}}")
    if live:
        seeded["roles"] = [
            {"id": uid("role", i), "name": f"role {i}", "description": f"Role number {i}"}
            for i in range(roles)
        ]
        seeded["defaultPatientRole"] = uid("role", 0)
        seeded["applications"] = [
            {
                "id": uid("app", i),
                "name": f"app {i}",
                "allowedCallbackUrls": [f"https://app{i}.example.com/cb"],
            }
            for i in range(apps)
        ]
        seeded["m2mClients"] = [
            {
                "clientId": f"job-{i}",
                "clientSecret": f"job-secret-{i}",
                "name": f"job {i}",
                "description": f"Job {i}",
                "roles": [f"role {i % roles}"],
            }
            for i in range(m2m)
        ]
    return "\n".join(lines) + "\n", seeded


def seed_of(*projects: dict[str, Any]) -> dict[str, Any]:
    return {
        "projects": list(projects),
        "developers": [{"accessToken": DEV_TOKEN, "projects": [p["id"] for p in projects]}],
    }


def spans(log: list[dict[str, Any]], method: str, prefix: str) -> list[tuple[float, float]]:
    return [
        (entry["start"], entry["end"])
        for entry in log
        if entry["method"] == method and entry["path"].startswith(prefix)
    ]


def overlapping(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    most = current = 0
    for _, step in events:
        current += step
        most = max(most, current)
    return most


def test_a_projects_reads_overlap_and_stay_exactly_the_minimum(repo):
    text, seeded = big_project(30, 4, 12, live=True)
    write(repo, "projects/big.yaml", text)
    with serve(seed_of(seeded), faults=Faults(latency_ms=50)) as emu:
        result = run(["plan", "--detailed-exitcode", "--concurrency", "8"], emu)
        assert result.exit_code == 0, result.output
        assert "Plan: 0 to change, 1 unchanged, 0 errors." in result.stdout
        reads = {}
        for key, value in emu.stats().items():
            folded = "/".join("{id}" if len(p) == 36 else p for p in key.split("/"))
            reads[folded] = reads.get(folded, 0) + value
        # SPEC section 9: the Project, 3 lists, one GET per object; nothing else.
        assert reads == {
            "GET /v1/project": 1,
            "GET /v1/iam/role": 1,
            "GET /v1/iam/role/{id}": 30,
            "GET /v1/application": 1,
            "GET /v1/application/{id}": 4,
            "GET /v1/m2m/v2/list": 1,
            "GET /v1/m2m/{id}": 12,
        }
        peak = emu.concurrency()["byProject"][PID]
        assert 1 < peak <= 8
        # The Project and the three lists start together: each before any has answered.
        first = [
            e
            for e in emu.requests()
            if e["path"] in ("/v1/project", "/v1/iam/role", "/v1/application", "/v1/m2m/v2/list")
        ]
        assert len(first) == 4
        assert max(e["start"] for e in first) < min(e["end"] for e in first)


def test_concurrency_1_never_has_two_requests_in_flight_token_requests_included(repo):
    text, seeded = big_project(6, 2, 3, live=True)
    seeded["m2mClients"].append({"clientId": "big-ci", "clientSecret": "big-ci-secret-value"})
    write(repo, "projects/big.yaml", text)
    env = {
        "OYSTEHR_ACCESS_TOKEN": None,
        "OYSTEHR_CLIENT_ID": "big-ci",
        "OYSTEHR_CLIENT_SECRET": "big-ci-secret-value",
    }
    with serve(seed_of(seeded), faults=Faults(latency_ms=2)) as emu:
        result = run(["plan", "--detailed-exitcode", "--concurrency", "1"], emu, env)
        assert result.exit_code == 0, result.output
        log = emu.requests()
        assert [e["path"] for e in log][0] == "/oauth/token"
        assert emu.concurrency()["peak"] == 1
        assert overlapping([(e["start"], e["end"]) for e in log]) == 1
        assert len(log) == 1 + 1 + 3 + 6 + 2 + 3  # token, project, lists, objects


def test_apply_writes_a_level_at_a_time_and_each_level_at_once(repo):
    text, seeded = big_project(16, 4, 8, live=False)
    write(repo, "projects/big.yaml", text + "signupEnabled: true\n")
    with serve(seed_of(seeded), faults=Faults(latency_ms=5)) as emu:
        emu.reset_stats()
        result = run(["apply", "--yes", "--concurrency", "8"], emu)
        assert result.exit_code == 0, result.output
        assert emu.stats() == {
            "GET /v1/project": 1,
            "GET /v1/iam/role": 1,
            "GET /v1/application": 1,
            "GET /v1/m2m/v2/list": 1,
            "POST /v1/iam/role": 16,
            "POST /v1/application": 4,
            "POST /v1/m2m": 8,
            "PATCH /v1/project": 1,
        }
        log = emu.requests()
        levels = [
            spans(log, "POST", "/v1/iam/role"),
            spans(log, "POST", "/v1/application"),
            spans(log, "POST", "/v1/m2m"),
            spans(log, "PATCH", "/v1/project"),
        ]
        for before, after in zip(levels, levels[1:], strict=False):
            # No write of a level starts before the last write of the one before ends.
            assert max(end for _, end in before) <= min(start for start, _ in after)
        assert overlapping(levels[0]) > 1 and overlapping(levels[2]) > 1
        assert emu.concurrency()["byProject"][PID] <= 8
        # The M2M clients hold the roles created in the first level, by their new ids.
        assert run(["plan", "--detailed-exitcode"], emu).exit_code == 0


def test_a_failure_mid_level_stops_its_project_and_the_others_apply(repo):
    # Both Projects create roles, then M2M clients holding the existing role "Old".
    # While the roles are created, "Old" goes from one of them: its first M2M create fails.
    projects = []
    for project_id in (PID, OTHER):
        projects.append(
            {
                "id": project_id,
                "name": "Before",
                "fhirVersion": "r4",
                "roles": [{"id": uid(project_id, "old"), "name": "Old"}],
            }
        )
        write(
            repo,
            f"projects/{project_id[:4]}.yaml",
            f"id: {project_id}\nname: After\nroles:\n  New 1: {{}}\n  New 2: {{}}\n"
            "m2mClients:\n" + "".join(f"  job {i}: {{roles: [Old]}}\n" for i in range(3)),
        )
    with serve(seed_of(*projects), faults=Faults(latency_ms=50)) as emu:
        assert run(["plan", "--out", "plan.json"], emu).exit_code == 0
        emu.reset_stats()
        gone = when_first(
            emu, "POST /v1/iam/role", lambda: emu.store.delete_role(PID, uid(PID, "old"))
        )
        result = run(
            ["apply", "--plan", "plan.json", "--yes", "--concurrency", "1", "--format", "json"],
            emu,
        )
        gone.join()
        assert result.exit_code == 1
        doc = json.loads(result.stdout)
        failed, applied = (
            doc["projects"] if doc["projects"][0]["projectId"] == PID else doc["projects"][::-1]
        )
        assert failed["status"] == "failed"
        assert failed["error"].startswith("m2m 'job 0': POST ")
        assert [(o["name"], o["status"]) for o in failed["objects"]] == [
            ("New 1", "applied"),
            ("New 2", "applied"),
            ("job 0", "failed"),
            ("job 1", "skipped"),
            ("job 2", "skipped"),
        ]
        assert failed["objects"][3]["error"] == "not started: an earlier write failed"
        assert applied["status"] == "applied"
        assert {o["status"] for o in applied["objects"]} == {"applied"}
        # The failed Project's settings PATCH and later M2M creates were never sent.
        patched = [e["project"] for e in emu.requests() if e["method"] == "PATCH"]
        assert patched == [OTHER]
        posts = [e for e in emu.requests() if e["path"] == "/v1/m2m" and e["project"] == PID]
        assert len(posts) == 1


def test_a_failure_lets_the_writes_in_flight_finish_and_reports_them(repo):
    projects = [
        {
            "id": PID,
            "name": "Before",
            "fhirVersion": "r4",
            "roles": [{"id": uid("old"), "name": "Old"}],
        }
    ]
    write(
        repo,
        "projects/one.yaml",
        f"id: {PID}\nm2mClients:\n" + "".join(f"  job {i}: {{roles: [Old]}}\n" for i in range(4)),
    )
    with serve(seed_of(*projects), faults=Faults(latency_ms=100)) as emu:
        assert run(["plan", "--out", "plan.json"], emu).exit_code == 0
        emu.reset_stats()
        gone = when_first(emu, "POST /v1/m2m", lambda: emu.store.delete_role(PID, uid("old")))
        result = run(["apply", "--plan", "plan.json", "--yes", "--format", "json"], emu)
        gone.join()
        assert result.exit_code == 1
        outcome = json.loads(result.stdout)["projects"][0]
        # All four were in flight at once: each answered, each reported failed.
        assert [o["status"] for o in outcome["objects"]] == ["failed"] * 4
        assert outcome["error"].startswith("m2m 'job 0': ")


def answer_429_then(after: int, retry_after: str, hold: int = 1):
    """A server answering its first `after` requests 429, then every Project; the first
    `hold` requests are answered only once `hold` have arrived (so they are in flight
    together), the 429s first."""
    lock = threading.Lock()
    arrived = threading.Condition(lock)
    seen = [0]

    def answer(request: Request) -> bytes:
        with arrived:
            seen[0] += 1
            number = seen[0]
            arrived.notify_all()
            if number <= hold:
                arrived.wait_for(lambda: seen[0] >= hold, timeout=5)
        if number <= after:
            return json_response(
                429, {"message": "slow down", "code": 429}, headers={"Retry-After": retry_after}
            )
        if number <= hold:
            time.sleep(0.1)  # the 429 is read before these answers
        return json_response(200, project_doc(request.headers["x-oystehr-project-id"]))

    return answer


def arrivals(server: HostileServer) -> list[float]:
    return [r.arrived for r in server.requests]


def test_eight_workers_hitting_429_pause_the_run_once(repo):
    project_files(repo, 8)
    with HostileServer(answer_429_then(8, "0.5", hold=8)) as server:
        started = time.monotonic()
        result = run(["plan", "--concurrency", "8", "-v"], server)
        seconds = time.monotonic() - started
        assert result.exit_code == 0, result.output
        times = arrivals(server)
    assert len(times) == 16  # 8 answered 429, each asked again once
    first, second = sorted(times[:8]), sorted(times[8:])
    assert second[0] - first[-1] >= 0.45  # nobody went before Retry-After
    assert second[-1] - first[-1] < 0.9  # and the pause was one, not one per worker
    assert seconds < 2.0
    assert "of 8 at the end (lowest 4)" in result.stderr
    assert "8 answered 429" in result.stderr


def test_one_429_holds_every_new_request_of_the_run(repo):
    # The first answer is a 429; the seven requests in flight beside it are answered
    # at once, and no new request goes until its Retry-After has passed.
    project_files(repo, 24)
    with HostileServer(answer_429_then(1, "0.4", hold=8)) as server:
        result = run(["plan", "--concurrency", "8"], server)
        assert result.exit_code == 0, result.output
        requests = list(server.requests)
    limited = requests[0].replied
    later = [r.arrived for r in requests if r.arrived > limited]
    assert later and min(later) - limited >= 0.35
    assert len(requests) == 25


def test_the_budget_halves_once_per_pause_and_grows_back_by_one_per_limit_successes():
    budget = Budget(8)
    slots = [budget.slot() for _ in range(8)]
    held = [slot.__enter__() for slot in slots]
    for slot, answer in zip(slots, held, strict=True):
        answer.answered(429, "0")
        slot.__exit__(None, None, None)
    assert (budget.limit, budget.rate_limited) == (4, 8)  # 8 answers, one halving
    for expected in (5, 6):
        for _ in range(budget.limit):
            with budget.slot() as answer:
                answer.answered(200)
        assert budget.limit == expected
    with budget.slot() as answer:
        answer.answered(429, "0")
    assert budget.limit == 3 and budget.lowest == 3


def test_a_list_that_never_ends_is_its_projects_error(repo):
    ids = project_files(repo, 2, body="name: Hostile\n")
    write(repo, "projects/p0.yaml", f"id: {ids[0]}\nm2mClients: {{}}\n")
    pages = [0]

    def answer(request: Request) -> bytes:
        if request.path.startswith("/v1/m2m/v2/list"):
            pages[0] += 1
            cursor = f"page-{pages[0]}"
            item = {"id": cursor, "name": cursor}
            return json_response(200, {"data": [item], "metadata": {"nextCursor": cursor}})
        return json_response(200, project_doc(request.headers["x-oystehr-project-id"]))

    with HostileServer(answer) as server:
        started = time.monotonic()
        result = run(["plan"], server)
        seconds = time.monotonic() - started
    print(f"an endless list: stopped after {pages[0]} pages in {seconds:.2f} s")
    assert result.exit_code == 1
    assert pages[0] == 1000
    assert (
        f"GET {server.api_url}/m2m/v2/list: more than 1,000 pages; refusing to read further"
    ) in result.stdout
    assert "Plan: 0 to change, 1 unchanged, 1 error." in result.stdout


def test_reads_start_while_later_files_are_still_loading(repo):
    # The second file is a pipe that is written only once the first Project was read
    # (or after 10 s): the plan streams when the first GET comes before that.
    ids = project_files(repo, 1)
    later = str(uuid.uuid4())
    os.mkfifo(repo / "projects" / "p1.yaml")

    def answer(request: Request) -> bytes:
        return json_response(200, project_doc(request.headers["x-oystehr-project-id"]))

    with HostileServer(answer) as server:

        def write_the_pipe() -> None:
            deadline = time.monotonic() + 10
            while not server.count("GET /v1/project") and time.monotonic() < deadline:
                time.sleep(0.01)
            streamed.append(bool(server.count("GET /v1/project")))
            with open(repo / "projects" / "p1.yaml", "w", encoding="utf-8") as pipe:
                pipe.write(f"id: {later}\nname: Later\n")

        streamed: list[bool] = []
        writer = threading.Thread(target=write_the_pipe)
        writer.start()
        result = run(["plan"], server)
        writer.join()
    assert result.exit_code == 0, result.output
    assert streamed == [True]
    assert result.stdout.index(ids[0]) < result.stdout.index(later)  # file order kept


def test_output_is_in_file_order_whatever_order_the_answers_come_in(repo):
    ids = project_files(repo, 6)
    delays = {project_id: 0.05 * (6 - index) for index, project_id in enumerate(ids)}

    def answer(request: Request) -> bytes:
        project_id = request.headers["x-oystehr-project-id"]
        time.sleep(delays[project_id])  # the first file's Project answers last
        return json_response(200, project_doc(project_id))

    with HostileServer(answer) as server:
        result = run(["plan", "--concurrency", "6"], server)
        done_order = [
            r.headers["x-oystehr-project-id"]
            for r in sorted(server.requests, key=lambda r: r.replied)
        ]
    assert result.exit_code == 0, result.output
    assert done_order == ids[::-1]
    positions = [result.stdout.index(project_id) for project_id in ids]
    assert positions == sorted(positions)


@pytest.mark.parametrize("slow", ["/v1/project", "/v1/iam/role"])
def test_a_projects_error_is_the_first_in_read_order_whichever_fails_first(repo, slow):
    [project_id] = project_files(repo, 1, body="roles: {}\n")

    def answer(request: Request) -> bytes:
        if request.path == slow:
            time.sleep(0.2)
        return json_response(500, {"message": f"{request.path} broke", "code": 500})

    with HostileServer(answer) as server:
        result = run(["plan", "--retries", "0"], server)
    assert result.exit_code == 1
    assert f"error: GET {server.api_url}/project answered 500: /v1/project broke" in result.stdout


def test_after_a_halving_requests_restart_one_at_a_time():
    budget = Budget(8)
    with budget.slot() as answer:
        answer.answered(429, "0")
    assert budget.limit == 4
    first = budget.slot().__enter__()
    second_sent = threading.Event()

    def second() -> None:
        with budget.slot() as answer:
            second_sent.set()
            answer.answered(200)

    waiting = threading.Thread(target=second)
    waiting.start()
    assert not second_sent.wait(0.2)  # one at a time until an answer comes back well
    first.answered(200)
    first.__exit__(None, None, None)
    assert second_sent.wait(5)
    waiting.join()
