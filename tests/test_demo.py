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
        "3 files and 1 fragment valid.\n",
        "$ reconciler render projects/staging.yaml\n# projects/staging.yaml: the effective "
        "document (includes merged, vars applied)\n",
        "# from base/clinic.yaml:21, projects/staging.yaml:11\napplications:\n",
        "    allowedCallbackUrls: ['https://staging.portal.example.com/callback']\n",
        "--- projects/production.yaml\n+++ projects/staging.yaml\n",
        "~ applications.Patient Portal.mfaEnabled: true -> false\n",
        "Compare: 7 differences (id, auth and vars aside).\n",
        "$ mkdir -p .dist/zips && python -m zipfile -c .dist/zips/notifications-updater.zip "
        "zambdas/notifications-updater/index.mjs\n",
        "Plan: 3 to change, 0 unchanged, 0 errors. Objects: 14 to add, 1 to change, 1 to destroy.",
        '    + zambda notifications-updater\n        + runtime: "nodejs22.x"\n',
        "        + executionRole: Zambdas Runner (created by this plan)\n        + code new → ",
        "    + zambda notifications-updater: created (code uploaded; status Active)\n",
        "    + secret STRIPE_SECRET_KEY (env RECONCILER_SECRET_SANDBOX_STRIPE_SECRET_KEY)\n",
        "    + secret ZAMBDAS_CLIENT_ID (m2m zambdas clientId)\n",
        "    + secret ZAMBDAS_CLIENT_SECRET (m2m zambdas clientSecret, rotated at apply)\n",
        "    + bucket fd9b1113-4bd2-4dad-8631-a95ba035dfda-visit-notes\n",
        "    ~ defaultPatientRole: Patient (",
        ") -> Self-registered Patient (created by this plan) (from base/clinic.yaml:7)\n",
        "    + role Self-registered Patient (from base/clinic.yaml:10)\n",
        "    + application Patient Portal (from base/clinic.yaml:22)\n",
        '        + allowedCallbackUrls: ["https://staging.portal.example.com/callback"] '
        "(from base/clinic.yaml:23)\n",
        "        + mfaEnabled: false\n",
        "    + m2m intake-sync (from base/clinic.yaml:29)\n",
        "    - m2m legacy-export (from base/clinic.yaml:32)\n",
        "    + role Self-registered Patient: created\n",
        "        - accessPolicy rule Allow FHIR:Create, FHIR:Delete, FHIR:Read, FHIR:Update on "
        "FHIR:* (live only) (from base/clinic.yaml:18)\n",
        "Apply: 3 applied, 0 unchanged, 0 failed.",
        "Drift: 0 drifted, 3 in sync, 0 errors.",
        "Drift: 1 drifted, 2 in sync, 0 errors.",
        "Done: every step behaved as expected.",
    ):
        assert line in out
    assert "demo-sandbox-secret" not in result.output
    assert "sk_test_" not in result.output  # the secret value the demo sets
    assert "production-ci" not in result.output  # a client id is a credential too
    assert list(tmp_path.iterdir()) == []  # works from any folder and leaves nothing behind


def test_bundled_demo_projects_are_the_repo_examples():
    for folder, files in (("projects", "*.yaml"), ("base", "*.yaml"), ("zambdas", "*/*")):
        bundled, examples = (
            {p.relative_to(top / folder): p.read_text() for p in (top / folder).glob(files)}
            for top in (BUNDLED.parent, ROOT)
        )
        assert bundled == examples and bundled
