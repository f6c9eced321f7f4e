"""Applications and M2M clients as code (SPEC section 9), end to end against the emulator:
creates with what the API requires, roles by name, paging, prune keeping the calling
client, creates never blindly retried, the write order, and whole-Project export."""

import json
import threading
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest
import yaml
from e2e import run, write
from objects_e2e import (
    CI_CLIENT,
    CI_SECRET,
    M2M_ENV,
    PID,
    SEED,
    api,
    counts,
    objects_emulator,
    project,
)

from reconciler.emulator import serve
from reconciler.emulator.app import make_app
from reconciler.emulator.seed import load_seed, seed_m2m_id
from reconciler.emulator.store import Store

CI_ID = seed_m2m_id(CI_CLIENT)


@pytest.fixture
def emu():
    with objects_emulator() as running:
        yield running


def test_an_application_create_needs_its_callback_urls(repo, emu):
    project(repo, "applications:\n  Portal: {}\n  Intake: {mfaEnabled: true}\n")
    result = run(["plan"], emu)
    assert result.exit_code == 1
    assert "application 'Intake': creating it needs allowedCallbackUrls" in result.stdout


def test_an_application_update_sends_only_the_changed_fields(repo, emu):
    project(
        repo,
        "applications:\n  Portal:\n    allowedCallbackUrls: [https://portal.example.com/cb]\n"
        "    loginWithEmailEnabled: true\n    mfaEnabled: true\n",
    )
    plan = run(["plan"], emu)
    assert "    ~ application Portal\n        ~ mfaEnabled: false -> true\n" in plan.stdout
    emu.reset_stats()
    assert run(["apply", "--yes"], emu).exit_code == 0
    assert counts(emu) == {
        "GET /v1/project": 1,
        "GET /v1/application": 1,
        "GET /v1/application/{id}": 1,
        "PATCH /v1/application/{id}": 1,
    }
    assert run(["plan", "--detailed-exitcode"], emu).exit_code == 0


def test_callback_urls_compare_in_the_apis_order(repo, emu):
    api(emu, "PATCH", "/application/" + SEED["projects"][0]["applications"][0]["id"],
        {"allowedCallbackUrls": ["https://a/cb", "https://b/cb"]})  # fmt: skip
    project(repo, "applications:\n  Portal: {allowedCallbackUrls: [https://b/cb, https://a/cb]}\n")
    assert run(["plan", "--detailed-exitcode"], emu).exit_code == 2


def test_an_m2m_create_needs_roles_or_a_policy(repo, emu):
    project(repo, "m2mClients:\n  backend: {description: nightly}\n")
    result = run(["plan"], emu)
    assert result.exit_code == 1
    assert "m2m 'backend': creating it needs roles or accessPolicy (non-empty)" in result.stdout


def test_an_m2m_client_takes_roles_by_name_including_one_the_plan_creates(repo, emu):
    project(
        repo,
        "roles:\n  Nurse: {description: Nurses}\n"
        "m2mClients:\n  backend: {description: nightly, roles: [Staff, Nurse]}\n",
    )
    plan = run(["plan", "--format", "json"], emu)
    doc = json.loads(plan.stdout)["projects"][0]
    create = [o for o in doc["objects"] if o["kind"] == "m2m"][0]
    assert create["body"]["roles"][0] == {"ref": {"kind": "role", "name": "Nurse"}}
    text = run(["plan"], emu).stdout
    assert "+ roles: [Nurse (created by this plan), Staff (" in text
    emu.reset_stats()
    result = run(["apply", "--yes", "--format", "json"], emu)
    assert result.exit_code == 0, result.output
    outcome = json.loads(result.stdout)["projects"][0]
    assert [(o["kind"], o["action"], o["status"]) for o in outcome["objects"]] == [
        ("role", "create", "applied"),
        ("m2m", "create", "applied"),
    ]
    assert "secret" not in result.stdout.lower()
    backend = [c for c in api(emu, "GET", "/m2m/v2/list")["data"] if c["name"] == "backend"][0]
    held = {r["name"] for r in api(emu, "GET", f"/m2m/{backend['id']}")["roles"]}
    assert held == {"Staff", "Nurse"}
    # Roles compare as a set: the same roles in another order are no change.
    project(
        repo,
        "roles:\n  Nurse: {description: Nurses}\n"
        "m2mClients:\n  backend: {description: nightly, roles: [Nurse, Staff]}\n",
    )
    assert run(["plan", "--detailed-exitcode"], emu).exit_code == 0


def test_prune_under_m2m_credentials_keeps_the_calling_client(repo, emu):
    project(repo, "m2mClients: {}\nprune: [m2mClients]\n")
    emu.reset_stats()
    plan = run(["plan"], emu, env=M2M_ENV)
    assert plan.exit_code == 0, plan.output
    assert "    - m2m old-job\n" in plan.stdout
    assert "kept: m2m ci (the M2M client this run authenticates as)" in plan.stdout
    assert counts(emu) == {
        "POST /oauth/token": 1,
        "GET /v1/project": 1,
        "GET /v1/m2m/v2/list": 1,
        "GET /v1/m2m/me": 1,
    }
    emu.reset_stats()
    assert run(["apply", "--yes"], emu, env=M2M_ENV).exit_code == 0
    assert [c["name"] for c in api(emu, "GET", "/m2m/v2/list")["data"]] == ["ci"]
    assert counts(emu)["DELETE /v1/m2m/{id}"] == 1


def test_m2m_me_is_read_only_when_pruning_under_m2m_credentials(repo, emu):
    project(repo, "m2mClients: {}\nprune: [m2mClients]\n")
    emu.reset_stats()
    plan = run(["plan"], emu)  # a Developer token: no client of its own to keep
    assert "    - m2m ci\n" in plan.stdout
    assert "GET /v1/m2m/me" not in emu.stats()
    project(repo, "m2mClients: {}\n")
    emu.reset_stats()
    run(["plan"], emu, env=M2M_ENV)
    assert "GET /v1/m2m/me" not in emu.stats()


def test_apply_checks_m2m_me_again_with_its_own_credentials(repo, emu):
    # Planned by a Developer, the plan deletes ci; applied as ci, it must refuse.
    project(repo, "m2mClients: {}\nprune: [m2mClients]\n")
    assert run(["plan", "--out", "plan.json"], emu).exit_code == 0
    emu.reset_stats()
    result = run(["apply", "--plan", "plan.json", "--yes"], emu, env=M2M_ENV)
    assert result.exit_code == 1
    assert "m2m 'ci' is the client this apply runs as; it is never deleted" in result.stdout
    assert not [k for k in emu.stats() if k.startswith(("DELETE", "PATCH", "POST /v1"))]


def test_deletes_run_last_m2m_clients_before_applications_before_roles(repo, emu):
    api(emu, "PATCH", "/project", {"defaultPatientRoleId": None})
    project(
        repo,
        "roles: {Staff: {}, FrontDesk: {}, Held: {}}\napplications: {}\n"
        "m2mClients: {ci: {}}\nprune: [roles, applications, m2mClients]\n"
        "signupEnabled: true\n",
    )
    result = run(["apply", "--yes", "--format", "json"], emu, env=M2M_ENV)
    assert result.exit_code == 0, result.output
    outcome = json.loads(result.stdout)["projects"][0]
    assert [(o["kind"], o["action"]) for o in outcome["objects"]] == [
        ("m2m", "delete"),
        ("application", "delete"),
        ("role", "delete"),
    ]


def test_every_page_of_the_m2m_list_is_read_and_no_more(repo):
    seed = json.loads(json.dumps(SEED))
    seed["projects"][0]["m2mClients"] += [
        {"clientId": f"bulk-{n:03}", "clientSecret": f"bulk-secret-{n:03}", "name": f"bulk {n:03}"}
        for n in range(120)
    ]
    project(repo, "m2mClients: {ci: {}}\n")
    with serve(seed) as emu:
        emu.reset_stats()
        result = run(["plan"], emu)
        assert result.exit_code == 0, result.output
        assert counts(emu)["GET /v1/m2m/v2/list"] == 2  # 122 clients, 100 a page
        assert "m2m old-job, m2m bulk 000" in result.stdout
    seed["m2mPageSize"] = 7
    with serve(seed) as emu:
        emu.reset_stats()
        assert run(["plan"], emu).exit_code == 0
        assert counts(emu)["GET /v1/m2m/v2/list"] == 18  # ceil(122 / 7)


def test_a_create_whose_answer_is_lost_is_found_in_the_list_not_made_twice(repo):
    store = Store()
    store.load_seed(load_seed(SEED))
    app = make_app(store)
    lost = []

    def drop_first_create_answer(environ, start_response):
        # The create runs, then the answer is lost as a 502 from a proxy would lose it.
        create = environ["REQUEST_METHOD"] == "POST" and environ["PATH_INFO"] == "/v1/iam/role"
        if create and not lost:
            lost.append(b"".join(app(environ, lambda *a, **k: None)))
            start_response("502 Bad Gateway", [("content-type", "text/plain")])
            return [b"bad gateway"]
        return app(environ, start_response)

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    server = make_server("127.0.0.1", 0, drop_first_create_answer, handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"

    class Emu:
        api_url, auth_url = url + "/v1", url + "/oauth/token"

    try:
        project(repo, "roles:\n  Nurse: {description: Nurses}\n")
        app.stats.reset()
        result = run(["apply", "--yes"], Emu)
        assert result.exit_code == 0, result.output
        stats = app.stats.snapshot()
        assert stats["POST /v1/iam/role"] == 1  # never sent twice
        assert stats["GET /v1/iam/role"] == 2  # the plan's list, then the list that found it
        assert [r["name"] for r in store.list_roles(PID)].count("Nurse") == 1
        assert run(["plan", "--detailed-exitcode"], Emu).exit_code == 0
    finally:
        server.shutdown()
        server.server_close()
        store.close()  # Python 3.13 warns about an unclosed database, and warnings are errors


def test_export_writes_every_kind_and_plans_clean(repo, emu):
    result = run(["export", "--project-id", PID], emu)
    assert result.exit_code == 0, result.output
    doc = yaml.safe_load(result.stdout)
    assert list(doc)[-6:] == [
        "roles",
        "applications",
        "m2mClients",
        "secrets",
        "buckets",
        "zambdas",
    ]
    assert doc["applications"]["Portal"]["allowedCallbackUrls"] == ["https://portal.example.com/cb"]
    assert doc["m2mClients"]["old-job"] == {"roles": ["Staff"]}
    assert "prune" not in doc and CI_SECRET not in result.stdout
    write(repo, "projects/objects.yaml", result.stdout)
    emu.reset_stats()
    assert run(["plan", "--detailed-exitcode"], emu).exit_code == 0
    listed = run(["export", "--project-id", PID, "--include", "applications"], emu)
    assert list(yaml.safe_load(listed.stdout)) == ["id", "applications"]


def test_an_m2m_role_that_resolves_nowhere_names_the_client_and_lists_the_roles(repo, emu):
    project(repo, "m2mClients:\n  backend: {roles: [Nurse]}\n")
    result = run(["plan"], emu)
    assert result.exit_code == 1
    assert (
        "m2m 'backend': roles: no role named 'Nurse' in this Project "
        "(roles: FrontDesk, Held, Legacy, Staff)"
    ) in result.stdout
