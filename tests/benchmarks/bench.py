"""Benchmark the targets of SPEC section 7 against an emulator in its own process.

    python tests/benchmarks/bench.py [--projects 1000] [--latency-ms 20] [--concurrency 32]
                                     [--big 10000] [--apply-changes 50] [--repeat 5]
                                     [--fault-projects 200] [--json FILE]

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

Exit status: 0 when every target is met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
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
        tail = (result.stdout[-1500:] + result.stderr[-1500:]).strip()
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
    n, latency, concurrency = len(fleet.files), args.latency_ms, args.concurrency
    floor = n * latency / 1000 / concurrency
    target = 2 * floor + 0.5
    command = [*tool("reconciler"), "plan", "--concurrency", str(concurrency), str(fleet.folder)]
    times, counts = [], []
    for _ in range(args.repeat):
        emu.reset_stats()
        result = measure(command, emu.env())
        expect(result, 0, "plan")
        if f"Plan: 0 to change, {n} unchanged, 0 errors." not in result.stdout:
            raise SystemExit("plan: unexpected summary\n" + result.stdout[-500:])
        times.append(result.seconds)
        counts.append(emu.stats())
    timing = spread(times)
    exact = all(
        c.get("GET /v1/project") == n and not c.get("GET /v1/iam/role") and len(c) == 1
        for c in counts
    )
    return [
        Row(
            f"plan {n} Projects, latency {latency} ms, concurrency {concurrency}",
            f"{timing['best']:.2f} s best, {timing['median']:.2f} s median "
            f"(floor {floor:.2f} s, {timing['best'] / floor:.1f}x)",
            f"<= {target:.2f} s (2 x floor + 0.5 s)",
            timing["best"] <= target,
            {**timing, "floor": round(floor, 3), "target": round(target, 3)},
        ),
        Row(
            f"plan {n} Projects: requests",
            ", ".join(f"{k}: {v}" for k, v in counts[-1].items()),
            f"exactly {n} GET /v1/project, 0 GET /v1/iam/role, nothing else (every run)",
            exact,
            {"runs": counts},
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--projects", type=int, default=1000)
    parser.add_argument("--latency-ms", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--big", type=int, default=10000, help="0 skips the memory row")
    parser.add_argument("--apply-changes", type=int, default=50)
    parser.add_argument("--fault-projects", type=int, default=200, help="0 skips the drill")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.apply_changes > args.projects or min(args.projects, args.repeat) < 1:
        parser.error("need --projects >= 1, --repeat >= 1, --apply-changes <= --projects")

    started = time.perf_counter()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="reconciler-bench-") as scratch:
        root = Path(scratch)
        fleet = make_fleet(root / "main", args.projects, random.Random(7))
        rows += bench_validate(fleet, args)
        with Emulator(fleet.seed, "--latency-ms", str(args.latency_ms)) as emu:
            rows += bench_plan(fleet, emu, args)
            rows += bench_apply(fleet, emu, args, root)
        if args.big:
            rows += bench_memory(root, args)
        if args.fault_projects:
            rows += bench_faults(root, args)

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
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "rows": [asdict(r) for r in rows],
            "seconds": round(elapsed, 1),
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return 0 if all(r.met is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
