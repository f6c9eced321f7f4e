"""Benchmark: `reconciler validate` of 1,000 files against check-jsonschema (SPEC section 7).

    python tests/benchmarks/bench_validate.py [FILES]      # default 1000

Writes FILES realistic project files to a temporary folder, then times both
tools on them, best of three runs each, alternating so that both see the same
machine load. Prints the figures; exits 1 when reconciler is not faster.
"""

from __future__ import annotations

import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "schemas" / "project.schema.json"
RUNS = 3


def write_projects(folder: Path, count: int) -> list[str]:
    rng = random.Random(7)

    def new_id() -> uuid.UUID:
        return uuid.UUID(int=rng.getrandbits(128), version=4)

    roles = [
        lambda: "Patient",
        lambda: "null",
        lambda: f"{{id: {new_id()}}}",
        lambda: f"\n  id: {new_id()}\n  name: Staff",
    ]
    paths = []
    for index in range(count):
        path = folder / f"project-{index:05d}.yaml"
        path.write_text(
            "# yaml-language-server: $schema=../schemas/project.schema.json\n"
            f"id: {new_id()}\n"
            f"name: Project {index}\n"
            f"description: Generated Project number {index} for the validate benchmark\n"
            f"signupEnabled: {rng.choice(['true', 'false'])}\n"
            f"defaultPatientRole: {rng.choice(roles)()}\n"
            f"defaultSSOUserRole: {rng.choice(roles)()}\n"
            "fhirVersion: r4\n"
            "auth:\n"
            f"  clientIdEnv: PROJECT_{index}_CLIENT_ID\n"
            f"  clientSecretEnv: PROJECT_{index}_CLIENT_SECRET\n",
            encoding="utf-8",
        )
        paths.append(str(path))
    return paths


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if completed.returncode != 0:
        sys.exit(f"{command[0]} failed:\n{completed.stdout}{completed.stderr}")
    return elapsed


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    with tempfile.TemporaryDirectory() as folder:
        paths = write_projects(Path(folder), count)
        ours = [sys.executable, "-m", "reconciler", "validate", folder]
        theirs = [sys.executable, "-m", "check_jsonschema", "--schemafile", str(SCHEMA), *paths]
        reconciler_times, check_times = [], []
        for _ in range(RUNS):
            reconciler_times.append(timed(ours))
            check_times.append(timed(theirs))
    best_ours, best_theirs = min(reconciler_times), min(check_times)
    print(f"files:                {count}")
    print(f"reconciler validate:  {best_ours:.2f} s (best of {RUNS})")
    print(f"check-jsonschema:     {best_theirs:.2f} s (best of {RUNS})")
    print(f"speed-up:             {best_theirs / best_ours:.1f}x")
    return 0 if best_ours < best_theirs else 1


if __name__ == "__main__":
    sys.exit(main())
