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
- `apply --plan` of k changed Projects: time and requests (exactly k GET + k PATCH);
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

`--only` picks rows by name (validate, plan, apply, memory, faults, roles, whole,
new-project) or group (`settings` = section 7, `objects` = section 9).

Exit status: 0 when every target is met, 1 otherwise.
"""

from __future__ import annotations

import argparse
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
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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
    )


def plan_rows(
    label: str,
    fleet: Fleet,
    emu: Emulator,
    args: argparse.Namespace,
    wanted: dict[str, int],
    wanted_text: str,
) -> list[Row]:
    """Time an in-sync `plan --detailed-exitcode` (exit 0, every Project unchanged)
    against the floor of its reads (sum(wanted) x L / C), and check its requests."""
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
    times, counts = [], []
    for _ in range(args.repeat):
        emu.reset_stats()
        result = measure(command, emu.env())
        expect(result, 0, f"{label} (in sync)")
        if f"Plan: 0 to change, {n} unchanged, 0 errors" not in result.stdout:
            raise SystemExit(f"{label}: unexpected summary\n" + result.stdout[-500:])
        times.append(result.seconds)
        counts.append(by_template(emu.stats()))
    timing = spread(times)
    return [
        Row(
            f"{label}, latency {latency} ms, concurrency {concurrency}",
            f"{timing['best']:.2f} s best, {timing['median']:.2f} s median "
            f"(floor {floor:.2f} s = {reads:,} reads, {timing['best'] / floor:.1f}x)",
            f"<= {target:.2f} s (2 x floor + 0.5 s)",
            timing["best"] <= target,
            {
                **timing,
                "reads": reads,
                "floor": round(floor, 3),
                # A Project's reads go one after another, C Projects at a time.
                "chain_bound": round(-(-n // concurrency) * reads / n * latency / 1000, 3),
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


def bench_roles(root: Path, args: argparse.Namespace) -> list[Row]:
    """Issue 12: N Projects x 10 managed roles (description + policy), all in sync."""
    n, shape = args.object_projects, Shape(roles=10)
    fleet = make_object_fleet(root / "roles", n, shape, random.Random(17))
    check_valid(fleet)
    wanted = per_fleet(shape.per_project_reads(), n)
    with Emulator(fleet.seed, "--latency-ms", str(args.latency_ms)) as emu:
        return plan_rows(
            f"plan {n} Projects x {shape.roles} roles",
            fleet,
            emu,
            args,
            wanted,
            f"exactly {n} x (1 project + 1 role list + {shape.roles} role GETs) "
            f"= {sum(wanted.values()):,} reads, nothing else (every run)",
        )


def bench_whole(root: Path, args: argparse.Namespace) -> list[Row]:
    """Issue 13 / SPEC section 9 target: N Projects x (10 roles, 3 applications,
    5 M2M clients), default roles among them, all managed and in sync."""
    n, shape = args.object_projects, WHOLE
    fleet = make_object_fleet(root / "whole", n, shape, random.Random(19))
    check_valid(fleet)
    wanted = per_fleet(shape.per_project_reads(), n)
    with Emulator(fleet.seed, "--latency-ms", str(args.latency_ms)) as emu:
        return plan_rows(
            f"plan {n} whole Projects ({shape.roles} roles, {shape.applications} apps, "
            f"{shape.m2m} M2M)",
            fleet,
            emu,
            args,
            wanted,
            f"exactly {n} x (1 project + 3 lists + {shape.objects()} object GETs) "
            f"= {sum(wanted.values()):,} reads, nothing else (every run)",
        )


WHOLE = Shape(roles=10, applications=3, m2m=5)


def bench_new_project(root: Path, args: argparse.Namespace) -> list[Row]:
    """SPEC section 9 target: apply of a new Project's file declaring 18 objects and
    its default roles among them. Two bare seeded Projects per run, so every run
    creates from nothing: for one, plan (exit 2), `apply --yes`, plan again (exit 0);
    for the other, `plan --out`, `apply --plan`, plan again (exit 0)."""
    shape = WHOLE
    fleet = make_object_fleet(root / "new", 2 * args.repeat, shape, random.Random(23), live=False)
    check_valid(fleet)
    empty_reads = {key: 1 for key in shape.per_project_reads() if "{id}" not in key}
    writes = {**shape.creates(), "PATCH /v1/project": 1}
    wanted_apply = {**empty_reads, **writes}
    # A saved plan re-reads what it changes: the settings, and the list of each kind it
    # creates in (a name it creates must still be free).
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

        for path in fleet.files[::2]:
            only = ["--project", path.stem, str(fleet.folder)]
            step(["plan", "--detailed-exitcode", *only], 2, plans)
            step(["apply", "--yes", *only], 0, applies)
            step(["plan", "--detailed-exitcode", *only], 0, afters)
        for path in fleet.files[1::2]:
            only = ["--project", path.stem, str(fleet.folder)]
            step(["plan", "--detailed-exitcode", "--out", str(plan_file), *only], 2, plans)
            step(["apply", "--plan", str(plan_file), "--yes"], 0, saved)
            step(["plan", "--detailed-exitcode", *only], 0, afters)
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
        ),
        *apply_rows(
            "apply --plan of the new Project",
            saved,
            wanted_saved,
            "1 GET /v1/project + 3 lists",
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
    label: str, runs: list[tuple[float, dict[str, int]]], wanted: dict[str, int], reads: str
) -> list[Row]:
    """An apply that creates a whole Project: its requests (exact) and its time."""
    timing = spread([seconds for seconds, _ in runs])
    creates = sum(v for k, v in wanted.items() if k.startswith("POST "))
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
            f"{timing['best']:.2f} s best, {timing['median']:.2f} s median",
            "(reported)",
            None,
            timing,
        ),
    ]


def bench_apply(fleet: Fleet, emu: Emulator, args: argparse.Namespace, scratch: Path) -> list[Row]:
    k, concurrency = args.apply_changes, args.concurrency
    plan_file = scratch / "plan.json"
    times, counts = [], []
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
    timing = spread(times)
    wanted = {"GET /v1/project": k, "PATCH /v1/project": k}
    # Two round trips per Project (the freshness read, then the PATCH), C at a time.
    floor = 2 * k * args.latency_ms / 1000 / concurrency
    return [
        Row(
            f"apply --plan of {k} changed Projects",
            f"{timing['best']:.2f} s best, {timing['median']:.2f} s median (floor {floor:.2f} s)",
            "(reported)",
            None,
            {**timing, "floor": round(floor, 3)},
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


ROWS = ("validate", "plan", "apply", "memory", "faults", "roles", "whole", "new-project")
GROUPS = {
    "settings": {"validate", "plan", "apply", "memory", "faults"},  # SPEC section 7
    "objects": {"roles", "whole", "new-project"},  # SPEC section 9
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
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="reconciler-bench-") as scratch:
        root = Path(scratch)
        if chosen & {"validate", "plan", "apply"}:
            fleet = make_fleet(root / "main", args.projects, random.Random(7))
            if "validate" in chosen:
                rows += bench_validate(fleet, args)
            with Emulator(fleet.seed, "--latency-ms", str(args.latency_ms)) as emu:
                if "plan" in chosen:
                    rows += bench_plan(fleet, emu, args)
                if "apply" in chosen:
                    rows += bench_apply(fleet, emu, args, root)
        if args.big and "memory" in chosen:
            rows += bench_memory(root, args)
        if args.fault_projects and "faults" in chosen:
            rows += bench_faults(root, args)
        if "roles" in chosen:
            rows += bench_roles(root, args)
        if "whole" in chosen:
            rows += bench_whole(root, args)
        if "new-project" in chosen:
            rows += bench_new_project(root, args)

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
