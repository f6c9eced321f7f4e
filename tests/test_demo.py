"""`reconciler demo` runs the whole job, and its bundled files are the repo's examples."""

from pathlib import Path

from click.testing import CliRunner

from reconciler.cli import cli

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "reconciler" / "data" / "demo" / "projects"


def test_demo_walks_every_step_and_exits_0(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["demo"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = result.stdout
    for line in (
        "$ reconciler validate projects",
        "Plan: 3 to change, 0 unchanged, 0 errors. Objects: 3 to add, 1 to change, 1 to destroy.",
        "    ~ defaultPatientRole: Patient (",
        ") -> Self-registered Patient (created by this plan)\n",
        "    + role Self-registered Patient\n",
        "    + application Patient Portal (staging)\n",
        "    + m2m intake-sync\n",
        "    - m2m legacy-export\n",
        "    + role Self-registered Patient: created\n",
        "        - accessPolicy rule Allow FHIR:Create, FHIR:Delete, FHIR:Read, FHIR:Update on "
        "FHIR:* (live only)\n",
        "Apply: 3 applied, 0 unchanged, 0 failed.",
        "Drift: 0 drifted, 3 in sync, 0 errors.",
        "Drift: 1 drifted, 2 in sync, 0 errors.",
        "Done: every step behaved as expected.",
    ):
        assert line in out
    assert "demo-sandbox-secret" not in result.output
    assert list(tmp_path.iterdir()) == []  # works from any folder and leaves nothing behind


def test_bundled_demo_projects_are_the_repo_examples():
    bundled = {p.name: p.read_text() for p in BUNDLED.glob("*.yaml")}
    examples = {p.name: p.read_text() for p in (ROOT / "projects").glob("*.yaml")}
    assert bundled == examples and bundled
