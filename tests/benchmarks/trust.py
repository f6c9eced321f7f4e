"""The hostile inputs of the second trust review, each run as a user would run it, with
its wall time and peak RSS (each case is also a test in the default suite):

- a server whose M2M cursor never ends (`tests/test_schedule.py`)
- a 66 MB and a 5,000-deep plan file, to `apply --plan` and `github guard`
  (`tests/test_plan_file_caps.py`)
- a `GITHUB_TOKEN` holding a newline (`tests/test_github.py`)
- a credential split across two `RECONCILER_VAR_` values (`tests/test_environments.py`)
- live names that would mention, link or reference in the PR comment
  (`tests/test_trust_escape.py`)
- a foreign `Host` header at the emulator (`tests/test_emulator_guard.py`)

From the repository root, with the package installed (Linux: peak RSS from wait4):

    python tests/benchmarks/trust.py
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the hostile server
from hostile import HostileServer  # noqa: E402

from reconciler.emulator import serve  # noqa: E402

ID = "0b5e6a52-7d0e-4c61-9d1a-2f3c4b5a6d71"
TOKEN = "token-0123456789"


# Runs the command as its own child and reports its peak RSS on the last line of stderr.
# A child's peak RSS counts what it held before exec: forked from this process (tens of
# MB once the emulator is imported), every command would seem at least that big, so a
# small interpreter forks it instead, as /usr/bin/time does.
MEASURE = """
import os, subprocess, sys, time
started = time.perf_counter()
process = subprocess.Popen(sys.argv[1:])
_, status, usage = os.wait4(process.pid, 0)
process.returncode = os.waitstatus_to_exitcode(status)
sys.stderr.write(f"\\n{time.perf_counter() - started:.2f} s, {usage.ru_maxrss / 1024:.0f} MB\\n")
sys.exit(process.returncode)
"""


def run(args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None):
    """Exit code, "wall s, peak RSS MB", and the last lines it printed."""
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, *args],
        env={**os.environ, **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        errors="replace",
    )
    *printed, figure = (done.stdout + done.stderr).splitlines()
    shown = [line for line in printed if line][-2:]
    return done.returncode, figure, shown


def row(name: str, result) -> None:
    code, figure, shown = result
    print(f"| {name} | exit {code} | {figure} | {' / '.join(s[:160] for s in shown)} |")


def endless_cursor(request) -> bytes:
    """The Project, and M2M pages whose cursor is new every time."""
    if request.path.startswith("/v1/project"):
        body = json.dumps({"id": ID, "name": "Alpha", "fhirVersion": "r4"}).encode()
    else:
        body = json.dumps({"data": [], "metadata": {"nextCursor": os.urandom(8).hex()}}).encode()
    head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}"
    return head.encode() + b"\r\n\r\n" + body


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    projects = tmp / "projects"
    projects.mkdir()
    (projects / "alpha.yaml").write_text(f"id: {ID}\nname: Alpha\nm2mClients: {{}}\n")
    print("| case | exit | time, peak RSS | last lines |")
    print("| --- | --- | --- | --- |")

    with HostileServer(endless_cursor) as server:
        env = {
            "OYSTEHR_PROJECT_API_URL": server.api_url,
            "OYSTEHR_AUTH_URL": server.auth_url,
            "OYSTEHR_ACCESS_TOKEN": TOKEN,
        }
        row("plan against an M2M cursor that never ends", run(["reconciler", "plan"], env, tmp))

    big, deep = tmp / "big.json", tmp / "deep.json"
    with big.open("w") as file:  # in pieces: a child forked from this process starts at its size
        file.write('{"pad": "')
        for _ in range(66):
            file.write("a" * 1024 * 1024)
        file.write('"}')
    deep.write_text("[" * 5000 + "]" * 5000)
    github = {"GITHUB_TOKEN": "ghs_0123456789abcdef", "GITHUB_REPOSITORY": "acme/settings"}
    for path, label in ((big, "66 MB"), (deep, "5,000-deep")):
        apply = ["reconciler", "apply", "--plan", str(path), "--yes"]
        row(f"apply --plan of a {label} plan file", run(apply, cwd=tmp))
        guard = ["reconciler", "github", "guard", "--plan-file", str(path)]
        row(f"github guard of a {label} plan file", run(guard, github, tmp))

    newline = {**github, "GITHUB_TOKEN": "ghs_secret0123456789\n", "GITHUB_SHA": "0" * 40}
    check_tip = ["reconciler", "github", "check-tip", "--branch", "main"]
    row("github check-tip with a newline in GITHUB_TOKEN", run(check_tip, newline, tmp))

    (projects / "alpha.yaml").write_text(f'id: {ID}\nname: Alpha\ndescription: "${{A}}${{B}}"\n')
    split = {
        "OYSTEHR_CLIENT_ID": "ci",
        "OYSTEHR_CLIENT_SECRET": "supersecret-0123456789",
        "RECONCILER_VAR_A": "supersecret-",
        "RECONCILER_VAR_B": "0123456789",
    }
    row("validate: a credential split across ${A}${B}", run(["reconciler", "validate"], split, tmp))

    hostile = ["@org/security-team", "https://evil.example/x", "#123", "www.evil.example"]
    hostile += ["admin@example.com", "`@octocat`", "<img src=x onerror=alert(1)>"]
    seed = {
        "projects": [
            {
                "id": ID,
                "name": "@octocat #1 https://evil.example",
                "fhirVersion": "r4",
                "roles": [{"name": name} for name in hostile],
            }
        ],
        "developers": [{"accessToken": TOKEN, "projects": [ID]}],
    }
    (projects / "alpha.yaml").write_text(f"id: {ID}\nname: Alpha\nroles: {{}}\nprune: [roles]\n")
    with serve(seed) as emu:
        env = {
            "OYSTEHR_PROJECT_API_URL": emu.api_url,
            "OYSTEHR_AUTH_URL": emu.auth_url,
            "OYSTEHR_ACCESS_TOKEN": TOKEN,
        }
        markdown = ["reconciler", "plan", "--format", "markdown"]
        code, figure, _ = run(markdown, env, tmp)
        text = subprocess.run(
            markdown, env={**os.environ, **env}, cwd=tmp, capture_output=True, text=True
        ).stdout
        outside = re.sub(r"(`+).*?\1", "", text)  # what is not in a code span
        pings = [p for p in ("@org", "@octocat", "https://", "#123", "www.") if p in outside]
        said = f"{len(text)} characters; mention or link patterns outside code spans: "
        row(
            "plan --format markdown of hostile live names",
            (code, figure, [said + (", ".join(pings) or "none")]),
        )

        host, port = emu.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(
                b"GET /v1/project HTTP/1.1\r\nHost: evil.example\r\n"
                b"Authorization: Bearer " + TOKEN.encode() + b"\r\nConnection: close\r\n\r\n"
            )
            status = sock.recv(4096).decode().splitlines()[0]
        row("emulator: GET /v1/project with Host: evil.example", ("-", "-", [status]))


if __name__ == "__main__":
    main()
