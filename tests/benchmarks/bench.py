"""Benchmark the targets of SPEC section 7 against an emulator in its own process.

    python tests/benchmarks/bench.py [--projects 1000] [--latency-ms 20] [--concurrency 32]
                                     [--big 10000] [--apply-changes 50] [--repeat 5]
                                     [--fault-projects 200] [--object-projects 100]
                                     [--only ROWS] [--json FILE]

Everything runs as a user would run it: `reconciler emulator` and every
`reconciler` command are separate processes (the console scripts next to this
Python), timed on the wall clock from start to exit, start-up included. Every
figure is repeated `--repeat` times (the machine may be shared) and reported as
best and median; a target is judged on the best run. Only 127.0.0.1 is used.

Rows (each with its figure, its target and whether it is met):

- plan of N Projects at --latency-ms L, --concurrency C, against the floor N*L/C
  (target 2 x floor + 0.5 s), and the emulator's request counts for it
  (exactly N `GET /v1/project`, no `GET /v1/iam/role`: every role already matches);
- `apply --plan` of k changed Projects: time and requests (exactly k GET + k PATCH:
  the re-reads that verify the plan, then the writes);
- `reconciler validate` vs `check-jsonschema` on the same N files (ratio);
- peak RSS of a plan of --big Projects against a second emulator at latency 0;
- the fault drill: apply of --fault-projects Projects under --error-rate 0.3
  --rate-limit-every 5 with --retries 10 converges, and a second plan is clean.

Rows of SPEC section 9 (the whole Project as code), one Developer token for all:

- roles: plan of --object-projects Projects x 10 managed roles (description and
  policy each), in sync: exactly N x (project + role list + 10 role GETs) reads,
  time against the floor of those reads (target 2 x floor + 0.5 s);
- whole: the same with 10 roles, 3 applications and 5 M2M clients per Project,
  default roles among them: exactly N x 22 reads, 2 x floor + 0.5 s;
- new-project: a bare Project whose file declares those 18 objects: its plan's
  4 reads, then `apply --yes` makes exactly 18 creates + 1 settings PATCH (and
  `apply --plan` of a saved plan 1 GET + 3 lists + the same writes); a second plan exits 0.

Rows of SPEC section 14 (Zambda functions, 64 KiB zips), each timed beside a minimal
client in the same run:

- zambda-plan: one Project with 300 functions in sync plans with exactly GET
  /project + one GET /zambda (no per-function read); the same zips rebuilt with new
  timestamps plan clean;
- zambda-apply: 300 new functions with code make exactly 300 creates + 300
  s3-upload + 300 PUTs + 300 verifying reads after the plan's 2 reads, within 1.5 x a
  minimal client making the same requests in the same chain + start; a second plan
  shows no change.

`--only` picks rows by name (validate, plan, apply, memory, faults, roles, whole,
new-project, zambda-plan, zambda-apply, ...) or group (`settings` = section 7,
`objects` = section 9, `big` = section 11, `zambdas` = section 14).

Exit status: 0 when every target is met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
import uuid
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "schemas" / "project.schema.json"
BIN = Path(sys.executable).parent
DEV_TOKEN = "bench-developer-token"
TIMEOUT = 600  # seconds: no single command may run longer than this

# Runs a command and writes {"seconds", "returncode", "maxrss_kb"} to a file. As the
# only child of a fresh process, RUSAGE_CHILDREN's ru_maxrss is that command's peak RSS.
MEASURE = textwrap.dedent(
    """
    import json, resource, subprocess, sys, time
    start = time.perf_counter()
    code = subprocess.call(sys.argv[2:])
    seconds = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    with open(sys.argv[1], "w") as fh:
        json.dump({"seconds": seconds, "returncode": code, "maxrss_kb": rss}, fh)
    """
)


def compile_package() -> None:
    """Bytecode for the package, as `pip install` writes it: start-up is measured as a
    user meets it, not with every module compiled again (PYTHONDONTWRITEBYTECODE)."""
    import reconciler

    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(Path(reconciler.__file__).parent)],
        check=True,
    )


def tool(name: str) -> list[str]:
    """The console script installed next to this Python (no pyenv shim in the timing)."""
    script = BIN / name
    if script.exists():
        return [str(script)]
    module = {"reconciler": "reconciler", "check-jsonschema": "check_jsonschema"}[name]
    return [sys.executable, "-m", module]


# -- the fleet ----------------------------------------------------------------------


@dataclass
class Fleet:
    folder: Path
    seed: Path
    files: list[Path]
    ids: list[str]


def make_fleet(root: Path, count: int, rng: random.Random) -> Fleet:
    """`count` project files under root/projects and the emulator seed that matches them.

    Realistic Projects: a name, a description, signup on or off, r4 or r5, two or
    three roles, a default patient role named in the file that is already the live
    one (so no role look-up is needed), and on some an SSO role by name or null.
    """
    folder = root / "projects"
    folder.mkdir(parents=True)
    files, ids, seed_projects = [], [], []
    for index in range(count):
        project_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        role_ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(3)]
        name = f"Clinic {index:05d}"
        description = f"Outpatient clinic number {index}, managed by reconciler"
        signup = rng.random() < 0.3
        fhir = "r5" if rng.random() < 0.1 else "r4"
        sso = rng.choice(["Staff", None, "absent"])
        roles = [
            {"id": role_ids[0], "name": "Patient", "memberCount": rng.randint(0, 5000)},
            {"id": role_ids[1], "name": "Staff", "memberCount": rng.randint(0, 50)},
            {"id": role_ids[2], "name": "Provider"},
        ]
        seeded: dict[str, Any] = {
            "id": project_id,
            "name": name,
            "description": description,
            "signupEnabled": signup,
            "sandbox": index % 4 == 0,
            "fhirVersion": fhir,
            "roles": roles,
            "defaultPatientRole": role_ids[0],
        }
        lines = [
            "# yaml-language-server: $schema=../schemas/project.schema.json",
            f"id: {project_id}",
            f"name: {name}",
            f"description: {description}",
            f"signupEnabled: {'true' if signup else 'false'}",
            "defaultPatientRole: Patient",
        ]
        if sso == "Staff":
            seeded["defaultSSOUserRole"] = role_ids[1]
            lines.append("defaultSSOUserRole: Staff")
        elif sso is None:
            lines.append("defaultSSOUserRole: null")
        lines.append(f"fhirVersion: {fhir}")
        path = folder / f"clinic-{index:05d}.yaml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        files.append(path)
        ids.append(project_id)
        seed_projects.append(seeded)
    seed = root / "seed.yaml"
    # JSON is YAML, and dumps in a fraction of PyYAML's time for 10,000 Projects.
    doc = {"projects": seed_projects, "developers": [{"accessToken": DEV_TOKEN, "projects": ids}]}
    seed.write_text(json.dumps(doc), encoding="utf-8")
    return Fleet(folder, seed, files, ids)


def edit_descriptions(fleet: Fleet, count: int, revision: str) -> None:
    """Change the description of the first `count` files: `count` changed Projects."""
    for path in fleet.files[:count]:
        lines = path.read_text(encoding="utf-8").splitlines()
        lines = [
            f"description: Reviewed description, revision {revision}"
            if line.startswith("description:")
            else line
            for line in lines
        ]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# -- the whole-Project fleet (SPEC section 9) ---------------------------------------


@dataclass(frozen=True)
class Shape:
    """How many objects of each kind a Project's file manages; 0 leaves the kind out."""

    roles: int
    applications: int = 0
    m2m: int = 0

    def per_project_reads(self) -> dict[str, int]:
        """The reads of an in-sync plan of one such Project (SPEC section 9): the
        Project, each managed kind's list, and one GET per object (every object here
        manages a field its list does not carry)."""
        reads = {"GET /v1/project": 1}
        for count, path, item in (
            (self.roles, "/v1/iam/role", "/v1/iam/role/{id}"),
            (self.applications, "/v1/application", "/v1/application/{id}"),
            (self.m2m, "/v1/m2m/v2/list", "/v1/m2m/{id}"),
        ):
            if count:
                reads[f"GET {path}"] = 1
                reads[f"GET {item}"] = count
        return reads

    def creates(self) -> dict[str, int]:
        made = {
            "POST /v1/iam/role": self.roles,
            "POST /v1/application": self.applications,
            "POST /v1/m2m": self.m2m,
        }
        return {key: value for key, value in made.items() if value}

    def objects(self) -> int:
        return self.roles + self.applications + self.m2m


RESOURCES = [
    "FHIR:Patient:*",
    "FHIR:Encounter:*",
    "FHIR:Appointment:*",
    "Z3:reports/*",
    "App:User:*",
]
ACTIONS = ["FHIR:Read", "FHIR:Update", "FHIR:Create", "FHIR:Search", "Z3:GetObject"]


def _policy(rng: random.Random) -> tuple[dict[str, Any], dict[str, Any]]:
    """An access policy as the file writes it and as the emulator is seeded with it:
    the same set of rules, written differently (rule order, list order, a string for
    a list of one), so an in-sync plan must compare policies as sets (SPEC section 9)."""
    rules = []
    for resource in rng.sample(RESOURCES, rng.randint(1, 3)):
        actions = rng.sample(ACTIONS, rng.randint(1, 3))
        rules.append(
            {
                "resource": resource,
                "action": actions[0] if len(actions) == 1 else actions,
                "effect": rng.choice(["Allow", "Allow", "Deny"]),
            }
        )
    seeded = [
        {
            "resource": [rule["resource"]],
            "action": [rule["action"]]
            if isinstance(rule["action"], str)
            else list(reversed(rule["action"])),
            "effect": rule["effect"],
        }
        for rule in reversed(rules)
    ]
    return {"rule": rules}, {"rule": seeded}


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def make_object_fleet(
    root: Path, count: int, shape: Shape, rng: random.Random, *, live: bool = True
) -> Fleet:
    """`count` project files managing `shape`'s objects, and the emulator seed.

    live=True: the seed holds every object exactly as its file declares it (policies
    written differently but equal as sets), so a plan is in sync. live=False: the seed
    holds the bare Projects (no roles, applications or M2M clients, no default roles)
    and every file declares its objects afresh: an apply creates them all.
    Each file names its default patient and SSO roles among its own roles.
    """
    folder = root / "projects"
    folder.mkdir(parents=True)
    files, ids, seed_projects = [], [], []
    for index in range(count):
        project_id = _uuid(rng)
        name = f"Practice {index:04d}"
        description = f"Practice number {index}, roles and apps as code"
        doc: dict[str, Any] = {"id": project_id, "name": name, "description": description}
        seeded: dict[str, Any] = dict(doc)
        role_names = [f"Role {i}" for i in range(shape.roles)]
        if role_names:
            doc["defaultPatientRole"] = role_names[0]
            doc["defaultSSOUserRole"] = role_names[min(1, len(role_names) - 1)]
            doc["roles"], seeded["roles"] = {}, []
        for i, role in enumerate(role_names):
            written, stored = _policy(rng)
            text = f"Role {i} of {name}: what it may read and write"
            doc["roles"][role] = {"description": text, "accessPolicy": written}
            seeded["roles"].append(
                {"id": _uuid(rng), "name": role, "description": text, "accessPolicy": stored}
            )
        if shape.applications:
            doc["applications"], seeded["applications"] = {}, []
        for i in range(shape.applications):
            host = f"https://app{i}.practice{index:04d}.example.com"
            fields = {
                "description": f"Application {i} of {name}",
                "allowedCallbackUrls": [f"{host}/callback", f"{host}/silent-callback"],
                "allowedLogoutUrls": [f"{host}/"],
                "loginWithEmailEnabled": True,
                "passwordlessSMS": i % 2 == 1,
                "mfaEnabled": i == 0,
            }
            doc["applications"][f"App {i}"] = fields
            seeded["applications"].append({"id": _uuid(rng), "name": f"App {i}", **fields})
        if shape.m2m:
            doc["m2mClients"], seeded["m2mClients"] = {}, []
        for i in range(shape.m2m):
            held = sorted({role_names[i % shape.roles], role_names[(i + 3) % shape.roles]})
            fields = {"description": f"back-end job {i}", "roles": held}
            if i == 0:
                fields["accessPolicy"] = _policy(rng)[0]
            doc["m2mClients"][f"job {i}"] = fields
            seeded["m2mClients"].append(
                {
                    "clientId": f"bench-{index:04d}-{i}",
                    "clientSecret": f"bench-secret-{index:04d}-{i}",
                    "name": f"job {i}",
                    **fields,
                    "roles": list(reversed(held)),  # roles compare as a set
                }
            )
        if role_names:
            seeded["defaultPatientRole"] = doc["defaultPatientRole"]
            seeded["defaultSSOUserRole"] = doc["defaultSSOUserRole"]
        path = folder / f"practice-{index:04d}.yaml"
        header = "# yaml-language-server: $schema=../schemas/project.schema.json\n"
        path.write_text(
            header + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8"
        )
        files.append(path)
        ids.append(project_id)
        seed_projects.append(
            seeded if live else {"id": project_id, "name": name, "description": description}
        )
    seed = root / "seed.json"
    doc = {"projects": seed_projects, "developers": [{"accessToken": DEV_TOKEN, "projects": ids}]}
    seed.write_text(json.dumps(doc), encoding="utf-8")
    return Fleet(folder, seed, files, ids)


# -- the emulator in its own process ------------------------------------------------


class Emulator:
    """`reconciler emulator --port 0` as a subprocess; the first stdout line is its URL."""

    def __init__(self, seed: Path, *flags: str) -> None:
        command = [*tool("reconciler"), "emulator", "--host", "127.0.0.1", "--port", "0"]
        command += ["--seed", str(seed), "--quiet", *flags]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.url = self.process.stdout.readline().strip()  # type: ignore[union-attr]
        if not self.url.startswith("http://127.0.0.1:"):
            self.close()
            raise SystemExit(f"the emulator did not start: {self.url!r}")

    def env(self) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("OYSTEHR_", "GITHUB_"))
        }
        env.update(
            OYSTEHR_PROJECT_API_URL=self.url + "/v1",
            OYSTEHR_AUTH_URL=self.url + "/oauth/token",
            OYSTEHR_ACCESS_TOKEN=DEV_TOKEN,
            NO_COLOR="1",
        )
        return env

    def _call(self, method: str, path: str) -> Any:
        request = urllib.request.Request(
            self.url + path, method=method, data=b"" if method == "POST" else None
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def reset_stats(self) -> None:
        self._call("POST", "/_emulator/stats/reset")

    def stats(self) -> dict[str, int]:
        return self._call("GET", "/_emulator/stats")["requests"]

    def faults(self) -> dict[str, int]:
        """The faults answered since the reset: {"429": n, "503": n}."""
        return self._call("GET", "/_emulator/requests")["faults"]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()

    def __enter__(self) -> Emulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- measuring -----------------------------------------------------------------------


@dataclass
class Measured:
    seconds: float
    returncode: int
    maxrss_mb: float
    stdout: str
    stderr: str


def measure(command: list[str], env: dict[str, str] | None = None) -> Measured:
    """Run a command to completion: wall time from spawn to exit, exit code, peak RSS."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "measure.json"
        out, err = Path(scratch) / "stdout", Path(scratch) / "stderr"
        with out.open("w") as out_fh, err.open("w") as err_fh:
            subprocess.run(
                [sys.executable, "-c", MEASURE, str(report), *command],
                stdout=out_fh,
                stderr=err_fh,
                env=env,
                timeout=TIMEOUT,
                check=False,
            )
        figures = json.loads(report.read_text())
        return Measured(
            figures["seconds"],
            figures["returncode"],
            figures["maxrss_kb"] / 1024,
            out.read_text(),
            err.read_text(),
        )


def expect(result: Measured, code: int, what: str) -> None:
    if result.returncode != code:
        # stderr's first lines say why (a refusal names every Project after them).
        err = result.stderr
        if len(err) > 3000:
            err = err[:1500] + " [...] " + err[-1500:]
        tail = (result.stdout[-1500:] + err).strip()
        raise SystemExit(f"{what}: exit {result.returncode}, expected {code}\n{tail}")


@dataclass
class Row:
    measure: str
    figure: str
    target: str
    met: bool | None  # None: reported, no target
    detail: dict[str, Any] = field(default_factory=dict)


def spread(values: list[float]) -> dict[str, float]:
    return {
        "best": round(min(values), 3),
        "median": round(statistics.median(values), 3),
        "runs": [round(v, 3) for v in values],
    }


# -- the minimal client (SPEC section 11) --------------------------------------------


@dataclass
class Req:
    """One request of the minimal client; `then` start when it has answered; `keep`
    takes its answer's bytes (only where a later request needs an id from it). A `raw`
    request (a code upload to a signed URL) sends those bytes with no header of ours."""

    method: str
    path: str | Callable[[], str]  # a function: known only when an answer came
    project: str
    body: Any = None  # JSON, or a function giving it at send time
    then: list[Req] = field(default_factory=list)
    keep: Callable[[bytes], None] | None = None
    raw: bytes | None = None


class Minimal:
    """The floor for the same requests: keep-alive `http.client` connections on
    `concurrency` threads, each request sent as soon as the one it depends on has
    answered, answers read whole and not parsed (but the ids of roles it creates).
    Levels run one after another, as apply's do."""

    def __init__(self, url: str, concurrency: int) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.concurrency = concurrency

    def run(self, levels: list[list[Req]]) -> float:
        """Seconds from the first request to the last answer."""
        local = threading.local()
        connections: list[http.client.HTTPConnection] = []

        def send(req: Req) -> None:
            conn = getattr(local, "conn", None)
            if conn is None:
                conn = local.conn = http.client.HTTPConnection(self.host, self.port)
                connections.append(conn)
            body = req.body() if callable(req.body) else req.body
            data = None if body is None else json.dumps(body).encode()
            headers = {
                "authorization": f"Bearer {DEV_TOKEN}",
                "x-oystehr-project-id": req.project,
                "content-type": "application/json",
            }
            if req.raw is not None:
                data, headers = req.raw, {}
            path = req.path() if callable(req.path) else req.path
            conn.request(req.method, path, body=data, headers=headers)
            response = conn.getresponse()
            content = response.read()
            if response.status >= 400:
                raise SystemExit(f"minimal client: {req.method} {path}: {response.status}")
            if req.keep is not None:
                req.keep(content)

        with ThreadPoolExecutor(self.concurrency) as pool:
            started = time.perf_counter()
            for level in levels:
                if level:
                    _run_level(pool, send, level)
            seconds = time.perf_counter() - started
        for conn in connections:
            conn.close()
        return seconds


def _run_level(pool: ThreadPoolExecutor, send: Callable[[Req], None], level: list[Req]) -> None:
    """Every request of a level and their follow-ups; returns when the last has answered."""
    pending = [0]
    lock = threading.Lock()
    done = threading.Event()
    errors: list[BaseException] = []

    def submit(req: Req) -> None:
        with lock:
            pending[0] += 1
        pool.submit(run, req)

    def run(req: Req) -> None:
        try:
            send(req)
            for follow in req.then:
                submit(follow)
        except BaseException as exc:
            errors.append(exc)
        with lock:
            pending[0] -= 1
            if pending[0] == 0:
                done.set()

    for req in level:
        submit(req)
    done.wait()
    if errors:
        raise errors[0]


def plan_reads(projects: list[dict[str, Any]], shape: Shape | None) -> list[Req]:
    """An in-sync plan's reads, as chains: each Project and its kinds' lists at once,
    each object's GET once its list has answered (ids from the seed, not parsed)."""
    from reconciler.emulator.seed import seed_m2m_id

    roots = []
    for project in projects:
        pid = project["id"]
        roots.append(Req("GET", "/v1/project", pid))
        if shape is None:
            continue
        kinds = (
            (shape.roles, "/v1/iam/role", "roles", "/v1/iam/role/{}"),
            (shape.applications, "/v1/application", "applications", "/v1/application/{}"),
            (shape.m2m, "/v1/m2m/v2/list?limit=100", "m2mClients", "/v1/m2m/{}"),
        )
        for count, list_path, key, item in kinds:
            if not count:
                continue
            ids = [o.get("id") or seed_m2m_id(o["clientId"]) for o in project.get(key, ())]
            gets = [Req("GET", item.format(object_id), pid) for object_id in ids]
            roots.append(Req("GET", list_path, pid, then=gets))
    return roots


def apply_writes(path: Path, project_id: str) -> list[list[Req]]:
    """What `apply --yes` of a new Project's file sends, level by level: its plan's reads
    (the Project and the 3 lists), the role creates, the application creates, the M2M
    creates (holding the new roles' ids), the settings PATCH (the default roles)."""
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    ids: dict[str, str] = {}

    def keep(name: str) -> Callable[[bytes], None]:
        def take(content: bytes) -> None:
            ids[name] = json.loads(content)["id"]

        return take

    def m2m_body(name: str, fields: dict[str, Any]) -> Callable[[], dict[str, Any]]:
        return lambda: {"name": name, **fields, "roles": [ids[r] for r in fields["roles"]]}

    reads = [
        Req("GET", path, project_id)
        for path in ("/v1/project", "/v1/iam/role", "/v1/application", "/v1/m2m/v2/list?limit=100")
    ]
    roles = [
        Req("POST", "/v1/iam/role", project_id, {"name": name, **fields}, keep=keep(name))
        for name, fields in doc.get("roles", {}).items()
    ]
    apps = [
        Req("POST", "/v1/application", project_id, {"name": name, **fields})
        for name, fields in doc.get("applications", {}).items()
    ]
    m2m = [
        Req("POST", "/v1/m2m", project_id, m2m_body(name, fields))
        for name, fields in doc.get("m2mClients", {}).items()
    ]
    patch = [
        Req(
            "PATCH",
            "/v1/project",
            project_id,
            lambda: {
                "defaultPatientRoleId": ids[doc["defaultPatientRole"]],
                "defaultSSOUserRoleId": ids[doc["defaultSSOUserRole"]],
            },
        )
    ]
    return [reads, roles, apps, m2m, patch]


_START: list[float] = []


def start_seconds(args: argparse.Namespace) -> float:
    """`start` of SPEC section 11: the wall time of `reconciler --version` (best of runs;
    measured once per benchmark run)."""
    if not _START:
        runs = [measure([*tool("reconciler"), "--version"]).seconds for _ in range(10)]
        _START.append(min(runs))
    return _START[0]


# -- the benchmarks ------------------------------------------------------------------


def bench_plan(fleet: Fleet, emu: Emulator, args: argparse.Namespace) -> list[Row]:
    n = len(fleet.files)
    return plan_rows(
        f"plan {n} Projects",
        fleet,
        emu,
        args,
        {"GET /v1/project": n},
        f"exactly {n} GET /v1/project, 0 GET /v1/iam/role, nothing else (every run)",
        against_minimal=True,
    )


def plan_rows(
    label: str,
    fleet: Fleet,
    emu: Emulator,
    args: argparse.Namespace,
    wanted: dict[str, int],
    wanted_text: str,
    *,
    shape: Shape | None = None,
    against_minimal: bool = False,
) -> list[Row]:
    """Time an in-sync `plan --detailed-exitcode` (exit 0, every Project unchanged)
    against the floor of its reads (sum(wanted) x L / C) and, in the same run, a minimal
    client making the same reads in the same chain; and check its requests.
    `against_minimal` adds SPEC section 11's target: <= 1.5 x minimal + start."""
    n, latency, concurrency = len(fleet.files), args.latency_ms, args.concurrency
    reads = sum(wanted.values())
    floor = reads * latency / 1000 / concurrency
    target = 2 * floor + 0.5
    command = [
        *tool("reconciler"),
        "plan",
        "--detailed-exitcode",
        "--concurrency",
        str(concurrency),
        str(fleet.folder),
    ]
    minimal = Minimal(emu.url, concurrency)
    levels = [plan_reads(json.loads(fleet.seed.read_text())["projects"], shape)]
    times, counts, minimal_times = [], [], []
    for _ in range(args.repeat):
        minimal_times.append(minimal.run(levels))
        emu.reset_stats()
        result = measure(command, emu.env())
        expect(result, 0, f"{label} (in sync)")
        if f"Plan: 0 to change, {n} unchanged, 0 errors" not in result.stdout:
            raise SystemExit(f"{label}: unexpected summary\n" + result.stdout[-500:])
        times.append(result.seconds)
        counts.append(by_template(emu.stats()))
    timing, floor_minimal = spread(times), spread(minimal_times)
    rows = [
        Row(
            f"{label}, latency {latency} ms, concurrency {concurrency}",
            f"{timing['best']:.2f} s best, {timing['median']:.2f} s median "
            f"(floor {floor:.2f} s = {reads:,} reads, {timing['best'] / floor:.1f}x); "
            f"minimal client {floor_minimal['best']:.2f} s",
            f"<= {target:.2f} s (2 x floor + 0.5 s)",
            timing["best"] <= target,
            {
                **timing,
                "minimal": floor_minimal,
                "reads": reads,
                "floor": round(floor, 3),
                "target": round(target, 3),
            },
        ),
        Row(
            f"{label}: requests",
            show_counts(counts[-1]),
            wanted_text,
            all(c == wanted for c in counts),
            {"wanted": wanted, "runs": counts},
        ),
    ]
    if against_minimal:
        rows.append(versus_minimal(label, timing, floor_minimal, args))
    return rows


def versus_minimal(
    label: str, timing: dict[str, Any], minimal: dict[str, Any], args: argparse.Namespace
) -> Row:
    """SPEC section 11: <= 1.5 x the minimal client's time + start (reconciler --version)."""
    start = start_seconds(args)
    target = 1.5 * minimal["best"] + start
    return Row(
        f"{label}: vs a minimal client (same requests, same chain, same run)",
        f"{timing['best']:.2f} s vs minimal {minimal['best']:.2f} s (median "
        f"{minimal['median']:.2f} s) + start {start:.3f} s",
        f"<= 1.5 x minimal + start = {target:.2f} s",
        timing["best"] <= target,
        {"reconciler": timing, "minimal": minimal, "start": start, "target": round(target, 3)},
    )


# A path segment that is an object's id: stats count `GET /v1/iam/role/<id>` per id.
_ID_SEGMENT = re.compile(
    r"/[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(?=/|$)"
)


def by_template(counts: dict[str, int]) -> dict[str, int]:
    """Request counts summed over ids: `GET /v1/iam/role/{id}` instead of one per role."""
    summed: dict[str, int] = {}
    for key, value in counts.items():
        template = _ID_SEGMENT.sub("/{id}", key)
        summed[template] = summed.get(template, 0) + value
    return summed


def show_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{key}: {value:,}" for key, value in counts.items()) or "none"


def per_fleet(per_project: dict[str, int], n: int) -> dict[str, int]:
    return {key: value * n for key, value in per_project.items()}


def check_valid(fleet: Fleet) -> None:
    """The generated files are what a user would write: `reconciler validate` passes."""
    expect(measure([*tool("reconciler"), "validate", str(fleet.folder)]), 0, "validate")


def object_plan_rows(
    root: Path,
    args: argparse.Namespace,
    name: str,
    n: int,
    shape: Shape,
    seed: int,
    label: str,
    *,
    against_minimal: bool = False,
) -> list[Row]:
    """An in-sync plan of `n` generated Projects managing `shape`'s objects: exactly
    n x (project + each managed kind's list + one GET per object), timed."""
    fleet = make_object_fleet(root / name, n, shape, random.Random(seed))
    check_valid(fleet)
    wanted = per_fleet(shape.per_project_reads(), n)
    lists = sum(1 for count in (shape.roles, shape.applications, shape.m2m) if count)
    reads = f"{n} x (1 project + {lists} list(s) + {shape.objects()} object GETs)"
    with Emulator(fleet.seed, "--latency-ms", str(args.latency_ms)) as emu:
        return plan_rows(
            label,
            fleet,
            emu,
            args,
            wanted,
            f"exactly {reads} = {sum(wanted.values()):,} reads, nothing else (every run)",
            shape=shape,
            against_minimal=against_minimal,
        )


def bench_roles(root: Path, args: argparse.Namespace) -> list[Row]:
    """Issue 12: N Projects x 10 managed roles (description + policy), all in sync."""
    n = args.object_projects
    return object_plan_rows(
        root, args, "roles", n, Shape(roles=10), 17, f"plan {n} Projects x 10 roles"
    )


def bench_whole(root: Path, args: argparse.Namespace) -> list[Row]:
    """Issue 13 / SPEC section 9 target: N Projects x (10 roles, 3 applications,
    5 M2M clients), default roles among them, all managed and in sync."""
    n, shape = args.object_projects, WHOLE
    label = (
        f"plan {n} whole Projects ({shape.roles} roles, {shape.applications} apps, {shape.m2m} M2M)"
    )
    return object_plan_rows(root, args, "whole", n, shape, 19, label)


WHOLE = Shape(roles=10, applications=3, m2m=5)


def bench_new_project(root: Path, args: argparse.Namespace) -> list[Row]:
    """SPEC section 9 target: apply of a new Project's file declaring 18 objects and
    its default roles among them. Two bare seeded Projects per run, so every run
    creates from nothing: for one, plan (exit 2), `apply --yes`, plan again (exit 0);
    for the other, `plan --out`, `apply --plan`, plan again (exit 0)."""
    shape = WHOLE
    # Two bare Projects per run for reconciler, one more for the minimal client.
    fleet = make_object_fleet(root / "new", 3 * args.repeat, shape, random.Random(23), live=False)
    ours, spare = fleet.files[: 2 * args.repeat], fleet.files[2 * args.repeat :]
    spare_ids = fleet.ids[2 * args.repeat :]
    check_valid(fleet)
    empty_reads = {key: 1 for key in shape.per_project_reads() if "{id}" not in key}
    writes = {**shape.creates(), "PATCH /v1/project": 1}
    wanted_apply = {**empty_reads, **writes}
    # A saved plan re-reads what it changes, to verify it: the Project, and the list of
    # each kind it creates in (a name it creates must still be free; the role list also
    # resolves the role references it checks), then writes what it verified.
    lists = {"GET /v1/iam/role": 1, "GET /v1/application": 1, "GET /v1/m2m/v2/list": 1}
    wanted_saved = {"GET /v1/project": 1, **lists, **writes}
    wanted_after = shape.per_project_reads()
    plan_file = root / "new" / "plan.json"
    # (seconds, requests) of each run's step
    plans: list[tuple[float, dict[str, int]]] = []
    applies: list[tuple[float, dict[str, int]]] = []
    saved: list[tuple[float, dict[str, int]]] = []
    afters: list[tuple[float, dict[str, int]]] = []
    with Emulator(fleet.seed, "--latency-ms", str(args.latency_ms)) as emu:

        def step(command: list[str], code: int, into: list[tuple[float, dict[str, int]]]) -> None:
            emu.reset_stats()
            options = ["--concurrency", str(args.concurrency)]
            result = measure([*tool("reconciler"), *command, *options], emu.env())
            expect(result, code, " ".join(command[:2]) + " of a new Project")
            into.append((result.seconds, by_template(emu.stats())))

        for path in ours[::2]:
            only = ["--project", path.stem, str(fleet.folder)]
            step(["plan", "--detailed-exitcode", *only], 2, plans)
            step(["apply", "--yes", *only], 0, applies)
            step(["plan", "--detailed-exitcode", *only], 0, afters)
        for path in ours[1::2]:
            only = ["--project", path.stem, str(fleet.folder)]
            step(["plan", "--detailed-exitcode", "--out", str(plan_file), *only], 2, plans)
            step(["apply", "--plan", str(plan_file), "--yes"], 0, saved)
            step(["plan", "--detailed-exitcode", *only], 0, afters)
        minimal = spread(
            [
                Minimal(emu.url, args.concurrency).run(apply_writes(path, pid))
                for path, pid in zip(spare, spare_ids, strict=True)
            ]
        )
    return [
        Row(
            f"plan of a new Project ({shape.objects()} objects to create)",
            show_counts(plans[-1][1]),
            f"exactly {sum(empty_reads.values())} reads (project + 3 lists), exit 2 (every run)",
            all(c == empty_reads for _, c in plans),
            {"wanted": empty_reads, "runs": [c for _, c in plans]},
        ),
        *apply_rows(
            "apply --yes of the new Project",
            applies,
            wanted_apply,
            f"its plan's {sum(empty_reads.values())} reads",
            minimal,
        ),
        *apply_rows(
            "apply --plan of the new Project",
            saved,
            wanted_saved,
            "1 GET /v1/project + 3 lists",
            minimal,
        ),
        Row(
            "plan after those applies",
            f"exit 0 (no change); {show_counts(afters[-1][1])}",
            f"exit 0 and {sum(wanted_after.values())} reads (every run)",
            all(c == wanted_after for _, c in afters),
            {"wanted": wanted_after, "runs": [c for _, c in afters]},
        ),
    ]


def apply_rows(
    label: str,
    runs: list[tuple[float, dict[str, int]]],
    wanted: dict[str, int],
    reads: str,
    minimal: dict[str, Any] | None = None,
) -> list[Row]:
    """An apply that creates a whole Project: its requests (exact) and its time, beside
    the minimal client's for the same requests in the same levels."""
    timing = spread([seconds for seconds, _ in runs])
    creates = sum(v for k, v in wanted.items() if k.startswith("POST "))
    beside = f"; minimal client {minimal['best']:.2f} s" if minimal else ""
    return [
        Row(
            f"{label}: requests",
            show_counts(runs[-1][1]),
            f"{reads} + exactly {creates} creates + 1 PATCH /v1/project, nothing else (every run)",
            all(c == wanted for _, c in runs),
            {"wanted": wanted, "runs": [c for _, c in runs]},
        ),
        Row(
            f"{label}: time",
            f"{timing['best']:.2f} s best, {timing['median']:.2f} s median{beside}",
            "(reported)",
            None,
            {**timing, "minimal": minimal},
        ),
    ]


def bench_apply(fleet: Fleet, emu: Emulator, args: argparse.Namespace, scratch: Path) -> list[Row]:
    k, concurrency = args.apply_changes, args.concurrency
    plan_file = scratch / "plan.json"
    times, counts, minimal_times = [], [], []
    for run in range(args.repeat):
        edit_descriptions(fleet, k, f"{run + 1}")
        planned = measure(
            [
                *tool("reconciler"),
                "plan",
                "--concurrency",
                str(concurrency),
                "--out",
                str(plan_file),
                "--detailed-exitcode",
                str(fleet.folder),
            ],
            emu.env(),
        )
        expect(planned, 2, "plan --out")
        emu.reset_stats()
        applied = measure(
            [
                *tool("reconciler"),
                "apply",
                "--plan",
                str(plan_file),
                "--yes",
                "--concurrency",
                str(concurrency),
            ],
            emu.env(),
        )
        expect(applied, 0, "apply --plan")
        if f"Apply: {k} applied" not in applied.stdout:
            raise SystemExit("apply: unexpected summary\n" + applied.stdout[-500:])
        times.append(applied.seconds)
        counts.append(emu.stats())
        # The same chain: every freshness read, then every PATCH (the same bodies again).
        body = {"description": f"Reviewed description, revision {run + 1}"}
        minimal_times.append(
            Minimal(emu.url, concurrency).run(
                [
                    [Req("GET", "/v1/project", pid) for pid in fleet.ids[:k]],
                    [Req("PATCH", "/v1/project", pid, body) for pid in fleet.ids[:k]],
                ]
            )
        )
    timing, minimal = spread(times), spread(minimal_times)
    wanted = {"GET /v1/project": k, "PATCH /v1/project": k}
    # Two round trips per Project (the freshness read, then the PATCH), C at a time.
    floor = 2 * k * args.latency_ms / 1000 / concurrency
    return [
        Row(
            f"apply --plan of {k} changed Projects",
            f"{timing['best']:.2f} s best, {timing['median']:.2f} s median (floor {floor:.2f} s); "
            f"minimal client {minimal['best']:.2f} s",
            "(reported)",
            None,
            {**timing, "floor": round(floor, 3), "minimal": minimal},
        ),
        Row(
            f"apply --plan of {k} changed Projects: requests",
            ", ".join(f"{key}: {value}" for key, value in counts[-1].items()),
            f"exactly {k} GET + {k} PATCH (every run)",
            all(c == wanted for c in counts),
            {"runs": counts},
        ),
    ]


def bench_validate(fleet: Fleet, args: argparse.Namespace) -> list[Row]:
    files = [str(p) for p in fleet.files]
    ours = [*tool("reconciler"), "validate", str(fleet.folder)]
    theirs = [*tool("check-jsonschema"), "--schemafile", str(SCHEMA), *files]
    our_times, their_times = [], []
    for _ in range(args.repeat):  # alternate, so both see the same machine load
        result = measure(ours)
        expect(result, 0, "reconciler validate")
        our_times.append(result.seconds)
        result = measure(theirs)
        expect(result, 0, "check-jsonschema")
        their_times.append(result.seconds)
    a, b = spread(our_times), spread(their_times)
    return [
        Row(
            f"validate {len(files)} files vs check-jsonschema",
            f"{a['best']:.2f} s vs {b['best']:.2f} s best ({b['best'] / a['best']:.1f}x faster); "
            f"medians {a['median']:.2f} s vs {b['median']:.2f} s",
            "faster than check-jsonschema",
            a["best"] < b["best"],
            {"reconciler": a, "check-jsonschema": b},
        )
    ]


def bench_memory(root: Path, args: argparse.Namespace) -> list[Row]:
    big = make_fleet(root / "big", args.big, random.Random(11))
    rss, times = [], []
    with Emulator(big.seed) as emu:
        command = [
            *tool("reconciler"),
            "plan",
            "--concurrency",
            str(args.concurrency),
            str(big.folder),
        ]
        for _ in range(min(args.repeat, 3)):
            result = measure(command, emu.env())
            expect(result, 0, f"plan of {args.big}")
            rss.append(result.maxrss_mb)
            times.append(result.seconds)
    return [
        Row(
            f"plan {args.big} Projects (latency 0): peak RSS",
            f"{min(rss):.0f} MB best, {statistics.median(rss):.0f} MB median "
            f"(wall {min(times):.1f} s best)",
            "<= 300 MB",
            max(rss) <= 300,
            {"rss_mb": [round(v, 1) for v in rss], "seconds": spread(times)},
        )
    ]


def bench_faults(root: Path, args: argparse.Namespace) -> list[Row]:
    n = args.fault_projects
    fleet = make_fleet(root / "faults", n, random.Random(13))
    edit_descriptions(fleet, n, "under faults")
    flags = ["--error-rate", "0.3", "--rate-limit-every", "5", "--fault-seed", "7"]
    with Emulator(fleet.seed, *flags) as emu:
        options = ["--retries", "10", "--concurrency", str(args.concurrency)]
        applied = measure(
            [*tool("reconciler"), "apply", "--yes", *options, str(fleet.folder)], emu.env()
        )
        stats = emu.stats()
        replanned = measure(
            [*tool("reconciler"), "plan", "--detailed-exitcode", *options, str(fleet.folder)],
            emu.env(),
        )
    converged = applied.returncode == 0 and f"Apply: {n} applied, 0 unchanged, 0 failed." in (
        applied.stdout
    )
    clean = replanned.returncode == 0
    summary = (applied.stdout.strip().splitlines() or ["(no output)"])[-1]
    return [
        Row(
            f"apply {n} Projects under --error-rate 0.3 --rate-limit-every 5, --retries 10",
            f"{summary} in {applied.seconds:.1f} s; second plan exit {replanned.returncode} "
            f"in {replanned.seconds:.1f} s",
            "every Project converges; second plan clean (exit 0)",
            converged and clean,
            {
                "apply_seconds": round(applied.seconds, 3),
                "apply_exit": applied.returncode,
                "plan_seconds": round(replanned.seconds, 3),
                "plan_exit": replanned.returncode,
                "requests": stats,
                "apply_stderr_tail": applied.stderr[-1000:],
            },
        )
    ]


# -- SPEC section 11: one big Project, start-up, shared rate limits --------------------

BIG = Shape(roles=200, applications=20, m2m=100)


def bench_startup(root: Path, args: argparse.Namespace) -> list[Row]:
    """`reconciler --version`, `--help` and `validate` of one small file against `python
    -c pass`, interleaved, each run many times (as hyperfine would); judged on the best."""
    one = root / "startup" / "one.yaml"
    one.parent.mkdir(parents=True)
    one.write_text(
        "id: fd9b1113-4bd2-4dad-8631-a95ba035dfda\nname: One\nsignupEnabled: false\n"
        "defaultPatientRole: Patient\nfhirVersion: r4\n",
        encoding="utf-8",
    )
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "reconciler --version": [*tool("reconciler"), "--version"],
        "reconciler --help": [*tool("reconciler"), "--help"],
        "reconciler validate (one file)": [*tool("reconciler"), "validate", str(one)],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(max(20, 4 * args.repeat)):
        for name, command in commands.items():
            result = measure(command)
            expect(result, 0, name)
            times[name].append(result.seconds)
    best = {name: min(values) for name, values in times.items()}
    median = {name: statistics.median(values) for name, values in times.items()}
    _START[:] = [best["reconciler --version"]]
    base = best["python -c pass"]
    rows = []
    for name, limit in (
        ("reconciler --version", 3),
        ("reconciler --help", None),
        ("reconciler validate (one file)", 5),
    ):
        ratio = best[name] / base
        rows.append(
            Row(
                f"start-up: {name}",
                f"{best[name] * 1000:.0f} ms best, {median[name] * 1000:.0f} ms median = "
                f"{ratio:.1f}x python -c pass ({base * 1000:.0f} ms best, "
                f"{median['python -c pass'] * 1000:.0f} ms median; median ratio "
                f"{median[name] / median['python -c pass']:.1f}x)",
                f"<= {limit}x python -c pass" if limit else "(reported)",
                ratio <= limit if limit else None,
                {"best": best, "median": median, "runs": times},
            )
        )
    return rows


def bench_big_plan(root: Path, args: argparse.Namespace) -> list[Row]:
    """One Project managing 200 roles, 20 applications and 100 M2M clients, in sync,
    each needing its GET: exactly project + 3 lists + 320 GETs; <= 1.5 x minimal + start."""
    label = f"plan of one Project ({BIG.roles} roles, {BIG.applications} apps, {BIG.m2m} M2M)"
    return object_plan_rows(root, args, "big-project", 1, BIG, 29, label, against_minimal=True)


def bench_big_apply(root: Path, args: argparse.Namespace) -> list[Row]:
    """That file applied to a bare Project: exactly 320 creates + 1 settings PATCH after
    its plan's 4 reads, <= 1.5 x a minimal client making the same POSTs in the same 3
    levels + start; then a second plan shows no change. Each run has its own bare
    Project, and the minimal client another."""
    fleet = make_object_fleet(
        root / "big-apply", 2 * args.repeat, BIG, random.Random(31), live=False
    )
    check_valid(fleet)
    reads = {key: 1 for key in BIG.per_project_reads() if "{id}" not in key}
    wanted = {**reads, **BIG.creates(), "PATCH /v1/project": 1}
    label = f"apply of that file to a bare Project ({BIG.objects()} creates)"
    return bare_apply_rows(
        fleet,
        root / "big-apply",
        apply_writes,
        ["--concurrency", str(args.concurrency)],
        wanted,
        f"its plan's 4 reads + exactly {BIG.objects()} creates + 1 PATCH, nothing else; "
        "second plan exit 0 (every run)",
        label,
        args,
    )


def bare_apply_rows(
    fleet: Fleet,
    folder: Path,
    writes: Callable[[Path, str], list[list[Req]]],
    options: list[str],
    wanted: dict[str, int],
    target: str,
    label: str,
    args: argparse.Namespace,
) -> list[Row]:
    """`apply --yes` of a file to a bare Project, each run its own (and the minimal
    client another, sending `writes(file, id)`): exactly `wanted`, a second plan clean,
    and the time beside the minimal client's."""
    times, counts, minimal_times, second = [], [], [], []
    with Emulator(fleet.seed, "--latency-ms", str(args.latency_ms)) as emu:
        for run in range(args.repeat):
            path, theirs, their_id = (
                fleet.files[2 * run],
                fleet.files[2 * run + 1],
                fleet.ids[2 * run + 1],
            )
            minimal_times.append(Minimal(emu.url, args.concurrency).run(writes(theirs, their_id)))
            # That file alone in its folder: the run reads (and validates) one file.
            alone = folder / f"run-{run}" / "projects"
            alone.mkdir(parents=True)
            (alone / path.name).write_bytes(path.read_bytes())
            only = [str(alone)]
            emu.reset_stats()
            result = measure([*tool("reconciler"), "apply", "--yes", *options, *only], emu.env())
            expect(result, 0, label)
            times.append(result.seconds)
            counts.append(by_template(emu.stats()))
            replan = measure(
                [*tool("reconciler"), "plan", "--detailed-exitcode", *options, *only], emu.env()
            )
            second.append(replan.returncode)
    timing, minimal = spread(times), spread(minimal_times)
    return [
        Row(
            f"{label}: requests",
            show_counts(counts[-1]),
            target,
            all(c == wanted for c in counts) and set(second) == {0},
            {"wanted": wanted, "runs": counts, "second_plan_exit": second},
        ),
        Row(
            f"{label}: time",
            f"{timing['best']:.2f} s best, {timing['median']:.2f} s median; "
            f"minimal client {minimal['best']:.2f} s",
            "(see next row)",
            None,
            {**timing, "minimal": minimal},
        ),
        versus_minimal(label, timing, minimal, args),
    ]


def bench_rate_limited(root: Path, args: argparse.Namespace) -> list[Row]:
    """The big plan against `--rate-limit-rps 100`: completes; 429s <= 10% of requests
    + C; <= 1.5 x (reads / 100 per second) + start. Each run starts with a full bucket."""
    rps = 100
    fleet = make_object_fleet(root / "big-limited", 1, BIG, random.Random(29))
    reads = sum(BIG.per_project_reads().values())
    command = [
        *tool("reconciler"),
        "plan",
        "--detailed-exitcode",
        "-v",
        "--concurrency",
        str(args.concurrency),
        str(fleet.folder),
    ]
    flags = ["--latency-ms", str(args.latency_ms), "--rate-limit-rps", str(rps)]
    times, limited, totals, budget = [], [], [], []
    with Emulator(fleet.seed, *flags) as emu:
        for _ in range(args.repeat):
            time.sleep(1.5)  # the bucket refills (R a second, burst R)
            emu.reset_stats()
            result = measure(command, emu.env())
            expect(result, 0, "the rate-limited plan")
            times.append(result.seconds)
            limited.append(emu.faults().get("429", 0))
            totals.append(sum(emu.stats().values()))
            budget.append(
                next((line for line in result.stderr.splitlines() if "request budget" in line), "")
            )
    timing = spread(times)
    start = start_seconds(args)
    target = 1.5 * reads / rps + start
    worst = max(range(len(times)), key=lambda i: limited[i] / totals[i])
    allowed = [0.1 * total + args.concurrency for total in totals]
    return [
        Row(
            f"plan of the big Project against --rate-limit-rps {rps}",
            f"{timing['best']:.2f} s best, {timing['median']:.2f} s median; "
            f"429s {limited[worst]} of {totals[worst]} requests "
            f"({limited[worst] / totals[worst]:.0%}); {budget[worst].strip()}",
            f"<= 1.5 x {reads} / {rps} s + start = {target:.2f} s; "
            f"429s <= 10% of requests + {args.concurrency}",
            timing["best"] <= target and all(n <= a for n, a in zip(limited, allowed, strict=True)),
            {
                **timing,
                "429s": limited,
                "requests": totals,
                "budget": budget,
                "target": round(target, 3),
                "start": start,
            },
        )
    ]


def bench_bounded(root: Path, args: argparse.Namespace) -> list[Row]:
    """A kind's list that never ends (a new cursor on every page) against a hostile server
    of the test suite: that Project's error after 1,000 pages; the other Project planned."""
    sys.path.insert(0, str(REPO / "tests"))
    from hostile import HostileServer, json_response, project_doc

    folder = root / "bounded" / "projects"
    folder.mkdir(parents=True)
    ids = [str(uuid.UUID(int=n + 1, version=4)) for n in range(2)]
    (folder / "a.yaml").write_text(f"id: {ids[0]}\nm2mClients: {{}}\n", encoding="utf-8")
    (folder / "b.yaml").write_text(f"id: {ids[1]}\nname: Hostile\n", encoding="utf-8")
    pages = [0]

    def answer(request: Any) -> bytes:
        if request.path.startswith("/v1/m2m/v2/list"):
            pages[0] += 1
            item = {"id": f"page-{pages[0]}", "name": f"client on page {pages[0]}"}
            return json_response(200, {"data": [item], "metadata": {"nextCursor": f"c{pages[0]}"}})
        return json_response(200, project_doc(request.headers["x-oystehr-project-id"]))

    with HostileServer(answer) as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OYSTEHR_", "GITHUB_"))}
        env.update(
            OYSTEHR_PROJECT_API_URL=server.api_url,
            OYSTEHR_AUTH_URL=server.auth_url,
            OYSTEHR_ACCESS_TOKEN=DEV_TOKEN,
            NO_COLOR="1",
        )
        result = measure([*tool("reconciler"), "plan", str(folder)], env)
    stopped = "more than 1,000 pages; refusing to read further" in result.stdout
    others = "Plan: 0 to change, 1 unchanged, 1 error." in result.stdout
    return [
        Row(
            "a list that never ends (a new cursor on every page)",
            f"that Project's error after {pages[0]:,} pages in {result.seconds:.2f} s, "
            f"peak RSS {result.maxrss_mb:.0f} MB; the other Project planned",
            "that Project's error; the others go on; exit 1",
            result.returncode == 1 and stopped and others and pages[0] == 1000,
            {"seconds": result.seconds, "rss_mb": result.maxrss_mb, "pages": pages[0]},
        )
    ]


# -- SPEC section 14: Zambda functions -------------------------------------------------

ZAMBDAS = 300
ZIP_BYTES = 64 * 1024


@dataclass
class Functions:
    """A repository of Projects that each declare the same functions, and their zips."""

    root: Path  # the repository root: zip paths start here
    fleet: Fleet
    zips: list[Path]


def build_zips(root: Path, count: int, rng: random.Random, *, when: tuple = (2024, 1, 2, 3, 4, 6)):
    """`count` zips of about 64 KiB each (one incompressible entry), as a build writes them."""
    folder = root / ".dist" / "zips"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"fn-{index:03d}.zip"
        content = rng.randbytes(ZIP_BYTES - 200)
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
            archive.writestr(zipfile.ZipInfo("index.mjs", date_time=when), content)
        paths.append(path)
    return paths


def make_functions(root: Path, projects: int, rng: random.Random, *, live: bool) -> Functions:
    """`projects` files each declaring ZAMBDAS functions with code (64 KiB zips), and the
    seed: live=True holds each function as declared, its code the zip's (in sync);
    live=False holds bare Projects (an apply creates and uploads everything)."""
    from reconciler.zips import read_code

    zips = build_zips(root, ZAMBDAS, rng)
    codes = [read_code(str(root), str(path.relative_to(root))).hash for path in zips]
    folder = root / "projects"
    folder.mkdir(parents=True)
    files, ids, seeded = [], [], []
    for index in range(projects):
        project_id = _uuid(rng)
        functions, live_functions = {}, []
        for number, code in enumerate(codes):
            fields = {"runtime": "nodejs22.x", "triggerMethod": "http_auth", "memorySize": 512}
            functions[f"fn-{number:03d}"] = {
                **fields,
                "source": f".dist/zips/fn-{number:03d}.zip",
                "sourceInputs": [f"packages/fn-{number:03d}/**"],
            }
            live_functions.append(
                {"name": f"fn-{number:03d}", **fields, "fileInfo": {"name": f"{code}.zip"}}
            )
        path = folder / f"functions-{index:02d}.yaml"
        doc = {"id": project_id, "name": f"Functions {index}", "zambdas": functions}
        path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        files.append(path)
        ids.append(project_id)
        project = {"id": project_id, "name": f"Functions {index}"}
        seeded.append({**project, "zambdas": live_functions} if live else project)
    seed = root / "seed.json"
    doc = {"projects": seeded, "developers": [{"accessToken": DEV_TOKEN, "projects": ids}]}
    seed.write_text(json.dumps(doc), encoding="utf-8")
    return Functions(root, Fleet(folder, seed, files, ids), zips)


def function_writes(path: Path, project_id: str, zips: list[Path]) -> list[list[Req]]:
    """What `apply --yes` of a file of new functions sends, level by level: its plan's
    reads, the creates, then for each function s3-upload -> PUT to the signed URL ->
    the read that checks it (a chain per function)."""
    from reconciler.zips import read_code

    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    ids: dict[str, str] = {}
    urls: dict[str, str] = {}

    def keep(into: dict[str, str], name: str, key: str) -> Callable[[bytes], None]:
        def take(content: bytes) -> None:
            into[name] = json.loads(content)[key]

        return take

    reads = [Req("GET", p, project_id) for p in ("/v1/project", "/v1/zambda")]
    creates, uploads = [], []
    for (name, fields), zip_path in zip(doc["zambdas"].items(), zips, strict=True):
        body = {"name": name, **{k: fields[k] for k in ("runtime", "triggerMethod", "memorySize")}}
        creates.append(Req("POST", "/v1/zambda", project_id, body, keep=keep(ids, name, "id")))
        code = read_code(str(zip_path.parents[2]), f".dist/zips/{zip_path.name}").hash
        check = Req("GET", lambda n=name: f"/v1/zambda/{ids[n]}", project_id)
        put = Req(
            "PUT",
            lambda n=name: urlsplit(urls[n]).path,
            project_id,
            raw=zip_path.read_bytes(),
            then=[check],
        )
        uploads.append(
            Req(
                "POST",
                lambda n=name: f"/v1/zambda/{ids[n]}/s3-upload",
                project_id,
                {"filename": f"{code}.zip"},
                then=[put],
                keep=keep(urls, name, "signedUrl"),
            )
        )
    return [reads, creates, uploads]


def bench_zambda_plan(root: Path, args: argparse.Namespace) -> list[Row]:
    """A Project with 300 functions in sync (64 KiB zips): exactly one GET /zambda beside
    its other reads (no per-function read); the same zips rebuilt with new timestamps
    plan clean. Time reported beside a minimal client's for the same two reads."""
    functions = make_functions(root / "zambda-plan", 1, random.Random(41), live=True)
    check_valid(functions.fleet)
    wanted = {"GET /v1/project": 1, "GET /v1/zambda": 1}
    command = [
        *tool("reconciler"),
        "plan",
        "--detailed-exitcode",
        "--concurrency",
        str(args.concurrency),
        str(functions.fleet.folder),
    ]
    times, counts, minimal_times, rebuilt = [], [], [], []
    pid = functions.fleet.ids[0]
    with Emulator(functions.fleet.seed, "--latency-ms", str(args.latency_ms)) as emu:
        for run in range(args.repeat):
            minimal_times.append(
                Minimal(emu.url, args.concurrency).run(
                    [[Req("GET", path, pid) for path in wanted_paths(wanted)]]
                )
            )
            emu.reset_stats()
            result = measure(command, emu.env())
            expect(result, 0, "the plan of 300 functions in sync")
            times.append(result.seconds)
            counts.append(by_template(emu.stats()))
            # Rebuilt: the same code, new timestamps (and so new zip bytes).
            build_zips(functions.root, ZAMBDAS, random.Random(41), when=(2030, 1, 1, 0, 0, run))
            again = measure(command, emu.env())
            rebuilt.append(again.returncode)
    label = f"plan of one Project with {ZAMBDAS} functions in sync (64 KiB zips)"
    timing, minimal = spread(times), spread(minimal_times)
    return [
        Row(
            f"{label}: requests",
            show_counts(counts[-1]),
            "exactly GET /project + one GET /zambda, no per-function read (every run)",
            all(c == wanted for c in counts),
            {"wanted": wanted, "runs": counts},
        ),
        Row(
            f"{label}: time",
            f"{timing['best']:.2f} s best, {timing['median']:.2f} s median (300 zips hashed); "
            f"minimal client {minimal['best']:.2f} s + start {start_seconds(args):.3f} s",
            "(reported)",
            None,
            {**timing, "minimal": minimal},
        ),
        Row(
            "the same zips rebuilt with new timestamps",
            f"plan exit {sorted(set(rebuilt))} (every run)",
            "no change: exit 0",
            set(rebuilt) == {0},
            {"exits": rebuilt},
        ),
    ]


def wanted_paths(wanted: dict[str, int]) -> list[str]:
    return [key.split(" ", 1)[1] for key in wanted]


def bench_zambda_apply(root: Path, args: argparse.Namespace) -> list[Row]:
    """Apply of 300 new functions with code to a bare Project: exactly 300 creates + 300
    s3-upload + 300 PUTs + 300 verifying reads after its plan's 2 reads, <= 1.5 x a
    minimal client making the same requests in the same chain + start; a second plan
    shows no change. Each run has its own bare Project, and the minimal client another."""
    functions = make_functions(
        root / "zambda-apply", 2 * args.repeat, random.Random(43), live=False
    )
    check_valid(functions.fleet)
    wanted = {
        "GET /v1/project": 1,
        "GET /v1/zambda": 1,
        "POST /v1/zambda": ZAMBDAS,
        "POST /v1/zambda/{id}/s3-upload": ZAMBDAS,
        "PUT /_emulator/upload": ZAMBDAS,
        "GET /v1/zambda/{id}": ZAMBDAS,
    }
    return bare_apply_rows(
        functions.fleet,
        functions.root,
        lambda path, pid: function_writes(path, pid, functions.zips),
        ["--concurrency", str(args.concurrency), "--root", str(functions.root)],
        wanted,
        f"its plan's 2 reads + exactly {ZAMBDAS} creates + {ZAMBDAS} s3-upload + "
        f"{ZAMBDAS} PUTs + {ZAMBDAS} verifying reads; second plan exit 0 (every run)",
        f"apply of {ZAMBDAS} new functions with code (64 KiB zips)",
        args,
    )


# -- output --------------------------------------------------------------------------


def print_table(rows: list[Row]) -> None:
    marks = {True: "met", False: "NOT MET", None: "-"}
    headers = ("measure", "figure", "target", "")
    table = [headers, *((r.measure, r.figure, r.target, marks[r.met]) for r in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(3)]
    for index, line in enumerate(table):
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(line[:3], widths, strict=True))
            + "  "
            + line[3]
        )
        if index == 0:
            print("  ".join("-" * width for width in widths) + "  -------")


ROWS = (
    "startup",
    "big-plan",
    "big-apply",
    "rate-limited",
    "bounded",
    "validate",
    "plan",
    "apply",
    "memory",
    "faults",
    "roles",
    "whole",
    "new-project",
    "zambda-plan",
    "zambda-apply",
)
GROUPS = {
    "big": {"startup", "big-plan", "big-apply", "rate-limited", "bounded"},  # SPEC section 11
    "settings": {"validate", "plan", "apply", "memory", "faults"},  # SPEC section 7
    "objects": {"roles", "whole", "new-project"},  # SPEC section 9
    "zambdas": {"zambda-plan", "zambda-apply"},  # SPEC section 14
}


def only_rows(text: str) -> set[str]:
    """`--only objects,plan`: the rows named, groups expanded."""
    chosen: set[str] = set()
    for word in filter(None, (part.strip() for part in text.split(","))):
        if word in GROUPS:
            chosen |= GROUPS[word]
        elif word in ROWS:
            chosen.add(word)
        else:
            known = ", ".join([*GROUPS, *ROWS])
            raise argparse.ArgumentTypeError(f"unknown row {word!r} (rows: {known})")
    if not chosen:
        raise argparse.ArgumentTypeError("name at least one row")
    return chosen


def setting(value: Any) -> Any:
    """An option's value as JSON: paths as text, sets of rows as sorted lists."""
    if isinstance(value, Path):
        return str(value)
    return sorted(value) if isinstance(value, set) else value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--projects", type=int, default=1000)
    parser.add_argument("--latency-ms", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--big", type=int, default=10000, help="0 skips the memory row")
    parser.add_argument("--apply-changes", type=int, default=50)
    parser.add_argument("--fault-projects", type=int, default=200, help="0 skips the drill")
    parser.add_argument(
        "--object-projects",
        type=int,
        default=100,
        help="Projects in the roles and whole-Project rows",
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--only",
        type=only_rows,
        default=None,
        metavar="ROWS",
        help="comma-separated rows or groups: " + ", ".join([*GROUPS, *ROWS]),
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.apply_changes > args.projects or min(args.projects, args.repeat) < 1:
        parser.error("need --projects >= 1, --repeat >= 1, --apply-changes <= --projects")
    if args.object_projects < 1:
        parser.error("need --object-projects >= 1")
    chosen = args.only or set(ROWS)

    started = time.perf_counter()
    compile_package()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="reconciler-bench-") as scratch:
        root = Path(scratch)
        standalone = {
            "startup": bench_startup,
            "big-plan": bench_big_plan,
            "big-apply": bench_big_apply,
            "rate-limited": bench_rate_limited,
            "bounded": bench_bounded,
        }
        for name, bench in standalone.items():
            if name in chosen:
                rows += bench(root, args)
        if chosen & {"validate", "plan", "apply"}:
            fleet = make_fleet(root / "main", args.projects, random.Random(7))
            if "validate" in chosen:
                rows += bench_validate(fleet, args)
            with Emulator(fleet.seed, "--latency-ms", str(args.latency_ms)) as emu:
                if "plan" in chosen:
                    rows += bench_plan(fleet, emu, args)
                if "apply" in chosen:
                    rows += bench_apply(fleet, emu, args, root)
        later = {
            "memory": bench_memory if args.big else None,
            "faults": bench_faults if args.fault_projects else None,
            "roles": bench_roles,
            "whole": bench_whole,
            "new-project": bench_new_project,
            "zambda-plan": bench_zambda_plan,
            "zambda-apply": bench_zambda_apply,
        }
        for name, bench in later.items():
            if name in chosen and bench is not None:
                rows += bench(root, args)

    print_table(rows)
    elapsed = time.perf_counter() - started
    print(
        f"\n{sum(r.met is True for r in rows)} of {sum(r.met is not None for r in rows)} "
        f"targets met; {elapsed:.0f} s in all."
    )
    if args.json:
        doc = {
            "command": " ".join(
                [os.path.relpath(__file__), *(argv if argv is not None else sys.argv[1:])]
            ),
            "machine": {
                "python": platform.python_version(),
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "loadavg": os.getloadavg(),
            },
            "settings": {k: setting(v) for k, v in vars(args).items()},
            "rows": [asdict(r) for r in rows],
            "seconds": round(elapsed, 1),
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return 0 if all(r.met is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
