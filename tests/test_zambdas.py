"""Zambda functions as code (SPEC section 14), end to end against the emulator: what each
plan and apply sends (counted), code identity from the zip without state or build noise,
the upload to the signed URL, statuses, validation located at its line, and the zip
refusals (symlinks, bombs, corrupt zips)."""

from __future__ import annotations

import copy
import json
import os
import re
import struct
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from click.testing import CliRunner
from e2e import DEV_TOKEN, run, write
from objects_e2e import counts

from reconciler.cli import cli
from reconciler.client import ProjectApi
from reconciler.emulator import serve
from reconciler.errors import ApiError, ShapeError
from reconciler.urls import check_upload_url
from reconciler.zips import MAX_ZIP_BYTES, ZipError, read_code

PID = "6e1f2a3b-4c5d-4e6f-8a7b-9c0d1e2f3a4b"
RUNNER = "7f203b4c-5d6e-4f70-8b8c-0d1e2f3a4b5c"
SEED: dict[str, Any] = {
    "projects": [
        {
            "id": PID,
            "name": "Functions",
            "signupEnabled": False,
            "fhirVersion": "r4",
            "roles": [{"id": RUNNER, "name": "Zambdas Runner"}],
        }
    ],
    "developers": [{"accessToken": DEV_TOKEN, "projects": [PID]}],
}
CRON = {"expression": "cron(*/5 * * * ? *)", "retryPolicy": {"maximumRetry": 2}}
UPLOAD_URL = re.compile(r"_emulator/upload/[A-Za-z0-9_-]{16,}")


@contextmanager
def functions_emulator(*zambdas: dict[str, Any], **changes: Any) -> Iterator[Any]:
    seed = copy.deepcopy(SEED)
    seed["projects"][0].update(changes, zambdas=list(zambdas))
    with serve(seed) as emu:
        yield emu


@pytest.fixture
def emu() -> Iterator[Any]:
    with functions_emulator() as running:
        yield running


def build(repo: Path, name: str, files: dict[str, str], *, when=(2024, 1, 2, 3, 4, 6)) -> Path:
    """A zip as a build writes it: `.dist/zips/NAME.zip`, entries stamped `when`."""
    path = repo / ".dist" / "zips" / f"{name}.zip"
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for entry, text in files.items():
            archive.writestr(zipfile.ZipInfo(entry, date_time=when), text)
    return path


def functions(repo: Path, text: str) -> None:
    write(repo, "projects/functions.yaml", f"id: {PID}\nzambdas:\n" + text)


CHECK_IN = """\
  check-in:
    runtime: nodejs22.x
    triggerMethod: http_auth
    source: .dist/zips/check-in.zip
    sourceInputs: [src/check-in/**]
"""
CODE_V1 = {"index.mjs": "export const index = async () => ({statusCode: 200});\n"}
CODE_V2 = {"index.mjs": "export const index = async () => ({statusCode: 204});\n"}


def api(emu, method: str, path: str) -> Any:
    """The live API as a Developer sees it (stats are read before calling this)."""
    headers = {"authorization": f"Bearer {DEV_TOKEN}", "x-oystehr-project-id": PID}
    response = httpx.request(method, emu.api_url + path, headers=headers)
    response.raise_for_status()
    return response.json()


def live_function(emu, name: str) -> dict[str, Any]:
    return api(emu, "GET", f"/zambda/{name}")


def in_sync(repo: Path, emu, text: str = CHECK_IN, code: dict[str, str] = CODE_V1) -> str:
    """A function created and uploaded by apply, then the stats zeroed; its code hash."""
    build(repo, "check-in", code)
    functions(repo, text)
    assert run(["apply", "--yes"], emu).exit_code == 0
    emu.reset_stats()
    return read_code(str(repo), ".dist/zips/check-in.zip").hash


# -- plan and apply, counted ------------------------------------------------------------


def test_a_new_function_is_created_then_its_code_uploaded_and_checked(repo, emu):
    build(repo, "check-in", CODE_V1)
    functions(repo, CHECK_IN)
    code = read_code(str(repo), ".dist/zips/check-in.zip").hash
    plan = run(["plan"], emu)
    assert plan.exit_code == 0
    assert plan.stdout.endswith(
        "    # zambdas: 1 to add\n"
        "    + zambda check-in\n"
        '        + runtime: "nodejs22.x"\n'
        '        + triggerMethod: "http_auth"\n'
        f"        + code new → {code[:8]}…\n"
        "\n"
        "Plan: 1 to change, 0 unchanged, 0 errors. Objects: 1 to add, 0 to change, 0 to destroy.\n"
    )
    emu.reset_stats()
    result = run(["apply", "--yes"], emu)
    assert result.exit_code == 0, result.output
    assert "    + zambda check-in: created (code uploaded; status Active)\n" in result.stdout
    assert counts(emu) == {
        "GET /v1/project": 1,
        "GET /v1/zambda": 1,  # the plan's one read of every function
        "POST /v1/zambda": 1,
        "POST /v1/zambda/{id}/s3-upload": 1,
        "PUT /_emulator/upload": 1,
        "GET /v1/zambda/{id}": 1,  # the read that checks fileInfo.name
    }
    function = live_function(emu, "check-in")
    assert function["fileInfo"]["name"] == f"{code}.zip"
    assert emu.store.zambda_code(PID, "check-in") == (repo / ".dist/zips/check-in.zip").read_bytes()
    emu.reset_stats()
    again = run(["plan", "--detailed-exitcode"], emu)
    assert again.exit_code == 0 and again.stdout == "Plan: 0 to change, 1 unchanged, 0 errors.\n"
    assert counts(emu) == {"GET /v1/project": 1, "GET /v1/zambda": 1}


def test_a_configuration_change_is_one_patch_and_no_upload(repo, emu):
    in_sync(repo, emu)
    functions(repo, CHECK_IN + "    memorySize: 2048\n    timeoutInSeconds: 20\n")
    plan = run(["plan"], emu)
    assert (
        "    ~ zambda check-in\n"
        "        ~ memorySize: 1024 -> 2048\n"  # absent live: the API's default
        "        ~ timeoutInSeconds: 27 -> 20\n"
    ) in plan.stdout
    emu.reset_stats()
    result = run(["apply", "--yes"], emu)
    assert result.exit_code == 0, result.output
    assert "    ~ zambda check-in: updated (status Active)\n" in result.stdout
    assert counts(emu) == {"GET /v1/project": 1, "GET /v1/zambda": 1, "PATCH /v1/zambda/{id}": 1}
    assert (live_function(emu, "check-in")["memorySize"]) == 2048


def test_a_code_change_is_one_upload_and_no_patch(repo, emu):
    before = in_sync(repo, emu)
    build(repo, "check-in", CODE_V2)
    after = read_code(str(repo), ".dist/zips/check-in.zip").hash
    plan = run(["plan"], emu)
    assert f"    ~ zambda check-in: code {before[:8]}… → {after[:8]}…\n" in plan.stdout
    emu.reset_stats()
    result = run(["apply", "--yes"], emu)
    assert result.exit_code == 0, result.output
    assert "    ~ zambda check-in: updated (code uploaded; status Active)\n" in result.stdout
    assert counts(emu) == {
        "GET /v1/project": 1,
        "GET /v1/zambda": 1,
        "POST /v1/zambda/{id}/s3-upload": 1,
        "PUT /_emulator/upload": 1,
        "GET /v1/zambda/{id}": 1,
    }
    assert live_function(emu, "check-in")["fileInfo"]["name"] == f"{after}.zip"


def test_configuration_is_written_before_the_code_of_the_same_function(repo, emu):
    in_sync(repo, emu)
    build(repo, "check-in", CODE_V2)
    functions(repo, CHECK_IN + "    memorySize: 512\n")
    emu.reset_stats()
    assert run(["apply", "--yes"], emu).exit_code == 0
    log = [(r["method"], r["path"]) for r in emu.requests()]
    writes = [f"{m} {p.rsplit('/', 1)[-1]}" for m, p in log if m != "GET"]
    assert [w.split(" ")[0] for w in writes] == ["PATCH", "POST", "PUT"]
    assert writes[1].endswith("s3-upload")


def test_a_rebuild_with_new_timestamps_changes_nothing(repo, emu):
    in_sync(repo, emu)
    build(repo, "check-in", CODE_V1, when=(2031, 12, 31, 23, 59, 58))
    assert run(["plan", "--detailed-exitcode"], emu).exit_code == 0
    # Entry order and compression do not count either; content and names do.
    path = repo / ".dist/zips/check-in.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("README.txt", "")
        archive.writestr("index.mjs", CODE_V1["index.mjs"])
    assert run(["plan", "--detailed-exitcode"], emu).exit_code == 2


def test_a_rename_is_one_patch_of_the_name_and_keeps_the_code(repo, emu):
    in_sync(repo, emu)
    functions(repo, CHECK_IN.replace("  check-in:\n", "  arrival:\n    renamedFrom: check-in\n"))
    plan = run(["plan"], emu)
    assert "    ~ zambda arrival (renamed from check-in)\n\nPlan:" in plan.stdout
    emu.reset_stats()
    result = run(["apply", "--yes"], emu)
    assert result.exit_code == 0, result.output
    assert counts(emu) == {"GET /v1/project": 1, "GET /v1/zambda": 1, "PATCH /v1/zambda/{id}": 1}
    assert live_function(emu, "arrival")["fileInfo"]["name"].endswith(".zip")
    functions(repo, CHECK_IN.replace("  check-in:\n", "  arrival:\n"))
    assert run(["plan", "--detailed-exitcode"], emu).exit_code == 0


def test_prune_deletes_functions_the_file_does_not_name(repo):
    old = {"name": "legacy-export", "runtime": "nodejs20.x"}
    with functions_emulator(old) as emu:
        write(repo, "projects/functions.yaml", f"id: {PID}\nzambdas: {{}}\n")
        plan = run(["plan"], emu)
        assert "    = not managed (left alone; prune deletes them): zambda legacy-export\n" in (
            plan.stdout
        )
        write(repo, "projects/functions.yaml", f"id: {PID}\nzambdas: {{}}\nprune: [zambdas]\n")
        assert "    - zambda legacy-export\n" in run(["plan"], emu).stdout
        emu.reset_stats()
        result = run(["apply", "--yes"], emu)
        assert result.exit_code == 0, result.output
        assert counts(emu) == {
            "GET /v1/project": 1,
            "GET /v1/zambda": 1,
            "DELETE /v1/zambda/{id}": 1,
        }
        assert api(emu, "GET", "/zambda") == []


def test_a_plan_of_many_functions_reads_them_with_one_list(repo):
    live = [
        {"name": f"fn-{i}", "runtime": "nodejs22.x", "triggerMethod": "cron", "schedule": CRON,
         "memorySize": 512, "executionRole": "Zambdas Runner"}
        for i in range(12)
    ]  # fmt: skip
    with functions_emulator(*live) as emu:
        text = "".join(
            f"  fn-{i}:\n    runtime: nodejs22.x\n    triggerMethod: cron\n"
            f"    schedule: {json.dumps(CRON)}\n    memorySize: 512\n"
            "    timeoutInSeconds: 27\n    executionRole: Zambdas Runner\n"
            for i in range(12)
        )
        functions(repo, text)
        assert run(["plan", "--detailed-exitcode"], emu).exit_code == 0
        # The role list only because executionRole names a role; no per-function read.
        assert counts(emu) == {"GET /v1/project": 1, "GET /v1/zambda": 1, "GET /v1/iam/role": 1}


def test_an_execution_role_is_a_name_even_one_this_plan_creates(repo, emu):
    build(repo, "job", CODE_V1)
    write(
        repo,
        "projects/functions.yaml",
        f"""\
        id: {PID}
        roles:
          Zambdas Runner: {{}}
          Notifier: {{description: sends reminders}}
        zambdas:
          job:
            runtime: python3.12
            triggerMethod: cron
            schedule: {{expression: "rate(5 minutes)"}}
            executionRole: Notifier
            source: .dist/zips/job.zip
          other:
            runtime: java21
            executionRole: {{id: {RUNNER}}}
        """,
    )
    plan = run(["plan"], emu)
    assert "        + executionRole: Notifier (created by this plan)\n" in plan.stdout
    assert f"        + executionRole: Zambdas Runner ({RUNNER})\n" in plan.stdout
    assert run(["apply", "--yes"], emu).exit_code == 0
    notifier = next(r for r in api(emu, "GET", "/iam/role") if r["name"] == "Notifier")
    assert live_function(emu, "job")["executionRoleId"] == notifier["id"]
    assert live_function(emu, "other")["executionRoleId"] == RUNNER
    assert run(["plan", "--detailed-exitcode"], emu).exit_code == 0


def test_a_failed_function_is_reported_failed_by_name_and_the_rest_as_they_are(repo):
    with functions_emulator(zambdaStatusAfterUpload={"broken": "Failed", "*": "Pending"}) as emu:
        build(repo, "broken", CODE_V1)
        build(repo, "fine", CODE_V2)
        functions(
            repo,
            "  broken: {runtime: nodejs22.x, source: .dist/zips/broken.zip}\n"
            "  fine: {runtime: nodejs22.x, source: .dist/zips/fine.zip}\n"
            "  draft: {runtime: nodejs22.x}\n",
        )
        result = run(["apply", "--yes"], emu)
        assert result.exit_code == 1
        assert result.stdout.splitlines()[-5:] == [
            f"! Functions ({PID})  projects/functions.yaml: failed: zambda 'broken': its "
            "status is Failed after apply",
            "    ! zambda broken: failed: its status is Failed after apply",
            "    + zambda draft: created (status Draft)",
            "    + zambda fine: created (code uploaded; status Pending)",
            "Apply: 0 applied, 0 unchanged, 1 failed.",
        ]
        # Every function was written: a Failed status is reported, never a stop.
        assert {f["name"] for f in api(emu, "GET", "/zambda")} == {"broken", "fine", "draft"}
        doc = json.loads(run(["apply", "--yes", "--format", "json"], emu).stdout)
        assert doc["summary"]["unchanged"] == 1


def test_an_upload_and_its_put_count_as_one_write_for_max_changes(repo, emu):
    build(repo, "check-in", CODE_V1)
    functions(repo, CHECK_IN)
    result = run(["apply", "--yes", "--max-changes", "1"], emu)
    assert result.exit_code == 1
    assert "the plan makes 2 writes (settings PATCHes and object writes)" in result.output
    emu.reset_stats()
    assert run(["apply", "--yes", "--max-changes", "2"], emu).exit_code == 0
    assert counts(emu)["PUT /_emulator/upload"] == 1


# -- a saved plan: the zips travel with it, and must be what was planned ----------------


def test_apply_plan_uploads_the_planned_zip_and_refuses_another(repo, emu):
    build(repo, "check-in", CODE_V1)
    functions(repo, CHECK_IN)
    assert run(["plan", "--out", "plan.json"], emu).exit_code == 0
    doc = json.loads((repo / "plan.json").read_text())
    (entry,) = doc["projects"][0]["objects"]
    code = read_code(str(repo), ".dist/zips/check-in.zip").hash
    assert entry["zip"] == ".dist/zips/check-in.zip"
    assert entry["changes"][-1] == {
        "field": "code",
        "before": None,
        "after": code,
        "source": "projects/functions.yaml:6",  # where `source` is
    }
    assert "code" not in entry["body"]
    # Another build of other code: apply never builds, and refuses before any write.
    build(repo, "check-in", CODE_V2)
    emu.reset_stats()
    refused = run(["apply", "--plan", "plan.json", "--yes"], emu)
    assert refused.exit_code == 1
    assert (
        f"projects/functions.yaml: zambda 'check-in': .dist/zips/check-in.zip holds code "
        f"{read_code(str(repo), '.dist/zips/check-in.zip').hash[:8]}…, not the {code[:8]}… "
        "the plan was made with"
    ) in refused.output
    assert emu.stats() == {}
    (repo / ".dist/zips/check-in.zip").unlink()
    missing = run(["apply", "--plan", "plan.json", "--yes"], emu)
    assert missing.exit_code == 1 and "check-in.zip does not exist" in missing.output
    build(repo, "check-in", CODE_V1, when=(2030, 1, 1, 0, 0, 0))  # the same code, rebuilt
    assert run(["apply", "--plan", "plan.json", "--yes"], emu).exit_code == 0
    assert live_function(emu, "check-in")["fileInfo"]["name"] == f"{code}.zip"


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda e: e.update(zip="../outside.zip"), "zip: '../outside.zip' leaves the repository"),
        (lambda e: e.update(zip=None), "zip: the code changes, so zip names the zip file"),
        (lambda e: e.pop("zip"), "missing key 'zip'"),
        (lambda e: e["changes"][-1].update(after="sha256:x"), "after is not a code hash"),
        (lambda e: e["body"].update(code="x"), 'body: "code" is not derived from any change'),
        (lambda e: e["changes"][-1].update(before="0" * 64), "a create's code has no before"),
    ],
)
def test_a_plan_file_with_a_doctored_function_entry_is_refused(repo, emu, edit, reason):
    from reconciler.plan import checksum

    build(repo, "check-in", CODE_V1)
    functions(repo, CHECK_IN)
    assert run(["plan", "--out", "plan.json"], emu).exit_code == 0
    doc = json.loads((repo / "plan.json").read_text())
    edit(doc["projects"][0]["objects"][0])
    doc["checksum"] = checksum(doc)
    (repo / "plan.json").write_text(json.dumps(doc))
    emu.reset_stats()
    result = run(["apply", "--plan", "plan.json", "--yes"], emu)
    assert result.exit_code == 1
    assert "plan.json: not a valid plan file: projects[0].objects[0]" in result.output
    assert reason in result.output
    assert emu.stats() == {}


# -- the signed URL is a credential ------------------------------------------------------


def test_the_signed_url_is_never_shown(repo, emu):
    build(repo, "check-in", CODE_V1)
    functions(repo, CHECK_IN)
    assert run(["plan", "--out", "plan.json"], emu).exit_code == 0
    result = CliRunner().invoke(
        cli,
        ["apply", "--plan", "plan.json", "--yes", "-v", "--format", "json"],
        env={
            "OYSTEHR_PROJECT_API_URL": emu.api_url,
            "OYSTEHR_AUTH_URL": emu.auth_url,
            "OYSTEHR_ACCESS_TOKEN": DEV_TOKEN,
            "GITHUB_STEP_SUMMARY": str(repo / "summary.md"),
        },
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "PUT <signed upload URL> -> 200" in result.stderr
    for text in (result.stdout, result.stderr, (repo / "summary.md").read_text()):
        assert not UPLOAD_URL.search(text)
    assert live_function(emu, "check-in")["status"] == "Active"


def test_an_upload_error_never_quotes_the_url(emu):
    with ProjectApi(emu.api_url, auth_url=emu.auth_url, retries=0) as client:
        url = emu.url + "/_emulator/upload/" + "t" * 43  # a token the emulator never gave
        with pytest.raises(ApiError) as caught:
            client.put_upload(url, b"PK\x05\x06" + bytes(18))
    assert str(caught.value) == (
        "PUT <signed upload URL> answered 403: this upload URL is not valid, or was used already"
    )


def test_an_upload_never_follows_a_redirect():
    hits: list[str] = []

    class Redirect(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:  # noqa: N802
            hits.append(self.path)
            self.rfile.read(int(self.headers["content-length"]))
            assert "authorization" not in {k.lower() for k in self.headers}
            self.send_response(307)
            self.send_header("location", "http://127.0.0.1:9/elsewhere")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        client = ProjectApi(base + "/v1", auth_url=base + "/oauth/token", retries=0)
        with client, pytest.raises(ApiError, match="answered 307: redirects are not followed"):
            client.put_upload(base + "/upload/x?X-Amz-Signature=" + "s" * 64, b"zip")
    finally:
        server.shutdown()
        server.server_close()
    assert hits == ["/upload/x?X-Amz-Signature=" + "s" * 64]


@pytest.mark.parametrize(
    ("url", "api_url", "allowed"),
    [
        ("https://bucket.s3.amazonaws.com/x?sig=1", "https://project-api.zapehr.com/v1", True),
        ("http://bucket.s3.amazonaws.com/x?sig=1", "https://project-api.zapehr.com/v1", False),
        ("http://127.0.0.1:8000/_emulator/upload/t", "http://127.0.0.1:8000/v1", True),
        ("http://evil.example/t", "http://127.0.0.1:8000/v1", False),
        ("https://user:pw@bucket.s3.amazonaws.com/x", "https://project-api.zapehr.com/v1", False),
        ("ftp://bucket/x", "https://project-api.zapehr.com/v1", False),
    ],
)
def test_code_goes_only_to_an_https_url_or_over_loopback(url, api_url, allowed):
    if allowed:
        check_upload_url(url, api_url, "POST s3-upload")
        return
    with pytest.raises(ShapeError) as caught:
        check_upload_url(url, api_url, "POST s3-upload")
    assert url not in str(caught.value) and "nothing was uploaded" in str(caught.value)


# -- the zip: missing, linked, too big, corrupt -----------------------------------------


def test_a_missing_zip_fails_its_project_at_plan_and_validate_never_needs_it(repo, emu):
    functions(repo, CHECK_IN)
    assert run(["validate"], emu).exit_code == 0
    result = run(["plan"], emu)
    assert result.exit_code == 1
    assert (
        "    error: projects/functions.yaml:6:5: zambda 'check-in': source: "
        ".dist/zips/check-in.zip does not exist: zips are build outputs, so build them "
        "before planning (in CI: the action's build input, in the plan job, whose artifact "
        "carries them to apply)\n"
    ) in result.stdout


def test_a_symlinked_zip_or_folder_is_refused(repo, emu, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    build(outside, "check-in", CODE_V1)
    functions(repo, CHECK_IN)
    (repo / ".dist" / "zips").mkdir(parents=True)
    (repo / ".dist/zips/check-in.zip").symlink_to(outside / ".dist/zips/check-in.zip")
    refused = "zambda 'check-in': source: .dist/zips/check-in.zip: refused: the path goes through"
    assert refused in run(["plan"], emu).stdout
    (repo / ".dist/zips/check-in.zip").unlink()
    (repo / ".dist/zips").rmdir()
    (repo / ".dist/zips").symlink_to(outside / ".dist/zips")  # a linked folder, too
    assert refused in run(["plan"], emu).stdout
    assert emu.stats().get("POST /v1/zambda") is None


def test_a_zip_over_250_mb_is_refused_before_it_is_read(repo):
    path = repo / "big.zip"
    with open(path, "wb") as handle:
        handle.truncate(MAX_ZIP_BYTES + 1)  # sparse: no disk is used
    with pytest.raises(ZipError, match=r"big.zip is 250.0 MB, over the 250 MB"):
        read_code(str(repo), "big.zip")


def test_a_zip_bomb_is_refused_from_its_directory(repo):
    path = repo / "bomb.zip"
    archive = zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1)
    with archive, archive.open("zeros", "w", force_zip64=True) as entry:
        for _ in range(251):
            entry.write(bytes(1 << 20))
    assert path.stat().st_size < 2 << 20
    with pytest.raises(ZipError, match=r"bomb.zip unpacks to 251.0 MB, over the 250 MB .*bomb"):
        read_code(str(repo), "bomb.zip")


def test_a_corrupt_or_strange_zip_is_one_line(repo):
    (repo / "junk.zip").write_bytes(b"this is not a zip")
    with pytest.raises(ZipError, match=r"^junk.zip is not a valid zip \(File is not a zip file\)$"):
        read_code(str(repo), "junk.zip")
    good = build(repo, "good", CODE_V1).read_bytes()
    flipped = bytearray(good)
    flipped[40] ^= 0xFF  # inside the deflated data of the one entry
    (repo / "bad.zip").write_bytes(flipped)
    with pytest.raises(ZipError, match=r"^bad.zip is not a valid zip \("):
        read_code(str(repo), "bad.zip")
    # A zip64 directory claiming 200,000 entries: refused from its end records alone.
    end = good.rindex(b"PK\x05\x06")
    cd_size, cd_offset = struct.unpack("<LL", good[end + 12 : end + 20])
    record = struct.pack(
        "<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, 200_000, 200_000, cd_size, cd_offset
    )
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, end, 1)
    last = good[end : end + 8] + b"\xff\xff\xff\xff" + good[end + 12 :]
    (repo / "many.zip").write_bytes(good[:end] + record + locator + last)
    with pytest.raises(ZipError, match=r"^many.zip lists 200,000 entries, over the 100,000"):
        read_code(str(repo), "many.zip")
    os.mkfifo(repo / "fifo.zip")
    with pytest.raises(ZipError, match=r"fifo.zip is not a regular file"):
        read_code(str(repo), "fifo.zip")


# -- validate: every rule located at its line -------------------------------------------


def test_each_validation_rule_is_located_at_its_line(repo):
    write(
        repo,
        "projects/bad.yaml",
        f"""\
        id: {PID}
        zambdas:
          ok: {{runtime: nodejs22.x}}
          bad name: {{runtime: nodejs22.x}}
          f1:
            runtime: nodejs18.x
          f2:
            runtime: java21
            triggerMethod: cron
          f3:
            runtime: java21
            triggerMethod: http_open
            timeoutInSeconds: 60
          f4:
            runtime: java21
            memorySize: 64
            timeoutInSeconds: 901
          f5:
            runtime: java21
            source: /abs/f5.zip
          f6:
            runtime: java21
            source: ../f6.zip
          f7:
            runtime: java21
            source: .git/f7.zip
          f8:
            runtime: java21
            source: build/f8.tar.gz
          f9:
            runtime: java21
            sourceInputs: [src/**]
          f10:
            runtime: java21
            triggerMethod: cron
            schedule: {{expression: "every 5 minutes"}}
          f11:
            runtime: java21
            executionRoleId: {RUNNER}
            status: Active
          f12:
            runtime: java21
            memorySize: null
        prune: [zambdas]
        """,
    )
    result = CliRunner().invoke(cli, ["validate", "projects"])
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        "projects/bad.yaml:4:3: zambdas: 'bad name' is not a function name: letters, digits, "
        "- and _ only (as the API allows)",
        "projects/bad.yaml:6:14: zambdas.f1.runtime: expected nodejs20.x, nodejs22.x, "
        "python3.13, python3.12, java21, dotnet8 or ruby3.3, got 'nodejs18.x'",
        "projects/bad.yaml:9:20: zambdas.f2: a cron function needs a schedule "
        '(schedule: {expression: "cron(*/5 * * * ? *)"})',
        "projects/bad.yaml:13:23: zambdas.f3.timeoutInSeconds: at most 27 for an http_open "
        "function (not 60): an HTTP call cannot wait longer",
        "projects/bad.yaml:16:17: zambdas.f4.memorySize: memory is 128 to 10240 (MB), got "
        "integer 64",
        "projects/bad.yaml:17:23: zambdas.f4.timeoutInSeconds: a timeout is 1 to 900 seconds, "
        "got integer 901",
        "projects/bad.yaml:20:13: zambdas.f5.source: '/abs/f5.zip' is absolute: write it "
        "relative to the repository root",
        "projects/bad.yaml:23:13: zambdas.f6.source: '../f6.zip' leaves the repository (..): "
        "write it relative to the repository root",
        "projects/bad.yaml:26:13: zambdas.f7.source: '.git/f7.zip' is under .git/, which is "
        "git's, not the repository's files",
        "projects/bad.yaml:29:13: zambdas.f8.source: 'build/f8.tar.gz' must name a zip file "
        "(a name ending in .zip)",
        "projects/bad.yaml:32:19: zambdas.f9.sourceInputs: given without source (the zip)",
        "projects/bad.yaml:36:28: zambdas.f10.schedule.expression: expected cron(min hour day "
        "month weekday year), rate(N unit) or at(time), got 'every 5 minutes'",
        "projects/bad.yaml:39:5: zambdas.f11.executionRoleId is the API's write name: use "
        "executionRole: {id: ...} (or a role name)",
        "projects/bad.yaml:40:5: zambdas.f11.status is read-only: it is set by Oystehr and "
        "cannot be managed here",
        "projects/bad.yaml:43:17: zambdas.f12.memorySize: null is not a value here: omit the "
        "field to leave it unmanaged",
    ]


# -- export ------------------------------------------------------------------------------


def test_export_writes_functions_without_source_and_plans_clean(repo):
    live = [
        {"name": "nightly", "runtime": "python3.12", "triggerMethod": "cron", "schedule": CRON,
         "timeoutInSeconds": 300, "executionRole": "Zambdas Runner",
         "fileInfo": {"name": "a" * 64 + ".zip", "size": 10}},
        {"name": "check-in", "runtime": "nodejs22.x"},
    ]  # fmt: skip
    with functions_emulator(*live) as emu:
        result = run(["export", "--project-id", PID, "--include", "zambdas"], emu)
        assert result.exit_code == 0, result.output
        doc = yaml.safe_load(result.stdout)
        assert doc["zambdas"] == {
            "check-in": {"runtime": "nodejs22.x", "triggerMethod": "http_auth"},
            "nightly": {
                "runtime": "python3.12",
                "triggerMethod": "cron",
                "schedule": CRON,
                "timeoutInSeconds": 300,
                "executionRole": "Zambdas Runner",
            },
        }
        assert "# Zambda functions: their configuration only. Add each one's source" in (
            result.stdout
        )
        assert counts(emu) == {"GET /v1/project": 1, "GET /v1/zambda": 1, "GET /v1/iam/role": 1}
        write(repo, "projects/functions.yaml", result.stdout)
        assert run(["plan", "--detailed-exitcode"], emu).exit_code == 0


# -- apply's private copies ---------------------------------------------------------------


def test_what_is_uploaded_is_the_copy_that_was_checked_never_the_path_again(repo):
    from reconciler.zips import PrivateCopies

    path = build(repo, "check-in", CODE_V1)
    planned = read_code(str(repo), ".dist/zips/check-in.zip").hash
    checked = path.read_bytes()
    with PrivateCopies() as copies:
        copies.check(str(repo), ".dist/zips/check-in.zip", planned)
        build(repo, "check-in", CODE_V2)  # the repository's file changes after the check
        with copies.bytes_of(str(repo), ".dist/zips/check-in.zip", planned) as data:
            assert data == checked


def test_copies_past_the_memory_budget_are_private_files_checked_again(repo, monkeypatch):
    from reconciler import zips

    monkeypatch.setattr(zips, "MEMORY_COPY_BYTES", 0)  # every copy goes to a file
    build(repo, "check-in", CODE_V1)
    planned = read_code(str(repo), ".dist/zips/check-in.zip").hash
    with zips.PrivateCopies() as copies:
        copies.check(str(repo), ".dist/zips/check-in.zip", planned)
        (copy,) = Path(copies._folder).iterdir()
        assert (copy.parent.stat().st_mode & 0o777, copy.stat().st_mode & 0o777) == (0o700, 0o600)
        with copies.bytes_of(str(repo), ".dist/zips/check-in.zip", planned) as data:
            assert data == (repo / ".dist/zips/check-in.zip").read_bytes()
        copy.write_bytes(copy.read_bytes()[:-1] + b"!")  # someone edits the private copy
        changed = pytest.raises(ZipError, match="changed: nothing was uploaded")
        with changed, copies.bytes_of(str(repo), ".dist/zips/check-in.zip", planned):
            pass
    assert not copy.parent.exists()


def test_a_saved_plan_uploads_only_the_zip_its_files_name(repo, emu):
    """The zip path and code hash are recomputed from the files at apply: a plan that
    names another zip (consistent with that zip's own code hash) is refused."""
    from reconciler.plan import checksum

    build(repo, "check-in", CODE_V1)
    other = build(repo, "other", CODE_V2)
    functions(repo, CHECK_IN)
    assert run(["plan", "--out", "plan.json"], emu).exit_code == 0
    doc = json.loads((repo / "plan.json").read_text())
    entry = doc["projects"][0]["objects"][0]
    entry["zip"] = ".dist/zips/other.zip"
    entry["changes"][-1]["after"] = read_code(str(repo), ".dist/zips/other.zip").hash
    doc["checksum"] = checksum(doc)
    (repo / "plan.json").write_text(json.dumps(doc))
    emu.reset_stats()
    result = run(["apply", "--plan", "plan.json", "--yes"], emu)
    assert result.exit_code == 1
    assert "plan.json: not a valid plan file: projects/functions.yaml" in result.output
    assert "zambda 'check-in': code: after is" in result.output
    assert not any(key.startswith(("POST", "PUT", "PATCH")) for key in emu.stats())
    assert other.exists()
