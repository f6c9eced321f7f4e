"""Issue 19, end to end: three Projects including one base, applied against the emulator;
then a one-line change to the base is planned in all three with its source, and apply
makes exactly those writes."""

from __future__ import annotations

import json

from e2e import ALPHA, BETA, GAMMA, run, write

BASE = """\
# base/clinic.yaml: what every clinic has
roles:
  Reviewer:
    description: Reads charts
    accessPolicy: {rule: [{resource: "FHIR:Patient:*", action: FHIR:Read, effect: Allow}]}
applications:
  Portal:
    allowedCallbackUrls: ["https://${DOMAIN}/callback"]
    mfaEnabled: false
"""


def three_projects(repo) -> None:
    write(repo, "base/clinic.yaml", BASE)
    for name, project_id in (("alpha", ALPHA), ("beta", BETA), ("gamma", GAMMA)):
        write(
            repo,
            f"projects/{name}.yaml",
            f"id: {project_id}\ninclude: [../base/clinic.yaml]\n"
            f"vars: {{DOMAIN: {name}.example.com}}\n",
        )


def writes(stats: dict[str, int]) -> dict[str, int]:
    """The write requests of a run, by method and kind of path (ids left out)."""
    found: dict[str, int] = {}
    for key, count in stats.items():
        method, path = key.split(" ", 1)
        if method != "GET" and path != "/oauth/token":
            shape = "/".join(part if len(part) < 32 else "{id}" for part in path.split("/"))
            found[f"{method} {shape}"] = found.get(f"{method} {shape}", 0) + count
    return found


def test_a_one_line_change_to_a_base_is_planned_and_applied_in_every_project(repo, emu):
    three_projects(repo)
    emu.reset_stats()
    first = run(["apply", "--yes"], emu)
    assert first.exit_code == 0, first.output
    assert first.stdout.count("    + role Reviewer (from base/clinic.yaml:3)\n") == 3
    assert first.stdout.count("    + application Portal (from base/clinic.yaml:7)\n") == 3
    assert writes(emu.stats()) == {"POST /v1/iam/role": 3, "POST /v1/application": 3}
    assert run(["plan", "--detailed-exitcode"], emu).exit_code == 0

    # The one-line change a pull request to the base makes.
    (repo / "base/clinic.yaml").write_text(BASE.replace("mfaEnabled: false", "mfaEnabled: true"))
    plan = run(["plan", "--detailed-exitcode"], emu)
    assert plan.exit_code == 2
    change = (
        "    # applications: 1 to change\n"
        "    ~ application Portal (from base/clinic.yaml:7)\n"
        "        ~ mfaEnabled: false -> true (from base/clinic.yaml:9)\n"
    )
    left_alone = "    = not managed (left alone; prune deletes them): role "
    assert plan.stdout == (
        f"~ Alpha Clinic ({ALPHA})  projects/alpha.yaml\n{change}"
        f"{left_alone}Patient, role Staff, role Staff, role Admin\n\n"
        f"~ Beta Sandbox ({BETA})  projects/beta.yaml\n{change}{left_alone}Patient\n\n"
        f"~ Gamma R5 ({GAMMA})  projects/gamma.yaml\n{change}\n"
    ) + (
        "Plan: 3 to change, 0 unchanged, 0 errors. Objects: 0 to add, 3 to change, 0 to destroy.\n"
    )
    doc = json.loads(run(["plan", "--format", "json"], emu).stdout)
    for project in doc["projects"]:
        [portal] = project["objects"]
        assert portal["source"] == "base/clinic.yaml:7"
        assert portal["changes"] == [
            {"field": "mfaEnabled", "before": False, "after": True, "source": "base/clinic.yaml:9"}
        ]

    emu.reset_stats()
    applied = run(["apply", "--yes"], emu)
    assert applied.exit_code == 0, applied.output
    assert applied.stdout.count("    ~ application Portal: updated\n") == 3
    assert writes(emu.stats()) == {"PATCH /v1/application/{id}": 3}
    assert run(["plan", "--detailed-exitcode"], emu).exit_code == 0
