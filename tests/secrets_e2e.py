"""A Project with secrets and buckets, for the end-to-end tests of SPEC section 13
(`test_secrets.py`, `test_buckets.py`, `test_secret_drills.py`): fixed ids and values, so
tests can name them and scan every output for every value."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx
from click.testing import CliRunner, Result

from reconciler.cli import cli
from reconciler.init import READ_ONLY_POLICY

PID = "5e1c0a7e-3b2d-4f6a-9c8b-7d6e5f4a3b21"
RUNNER = "6f2d1b8f-4c3e-4a7b-8d9c-8e7f6a5b4c32"
DEV_TOKEN = "dev-token-secrets-3a9c"
CI_CLIENT, CI_SECRET = "secrets-ci", "secrets-ci-secret-7f3a9b"
READER, READER_SECRET = "secrets-reader", "secrets-reader-secret-2c8e"
EXISTING, EXISTING_ID, EXISTING_SECRET = "Existing Admin", "existing-admin", "existing-secret-51d0"

# Live values before any apply, and the values the files give (each one distinct, so an
# output holding any of them is caught).
OLD_STRIPE = "sk_live_old_8c1f2e9d"
OLD_URL = "https://old.clinic-7c2b.example.com"
OLD_GONE = "old-value-0f3c9a1e"
NEW_STRIPE = "sk_live_new_5d2e8a7c"
LITERAL = "env-literal-staging-91b2"
DOMAIN = "staging.clinic-4e1a.example.com"
NEW_URL = f"https://{DOMAIN}"

SEED: dict[str, Any] = {
    "projects": [
        {
            "id": PID,
            "name": "Clinic (staging)",
            "description": "Zambda functions need secrets",
            "signupEnabled": False,
            "fhirVersion": "r4",
            "roles": [{"id": RUNNER, "name": "Zambdas Runner"}],
            "m2mClients": [
                {"clientId": CI_CLIENT, "clientSecret": CI_SECRET, "name": "ci"},
                {
                    "clientId": READER,
                    "clientSecret": READER_SECRET,
                    "name": "plan reader",
                    "accessPolicy": READ_ONLY_POLICY,
                },
                {
                    "clientId": EXISTING_ID,
                    "clientSecret": EXISTING_SECRET,
                    "name": EXISTING,
                    "roles": ["Zambdas Runner"],
                },
            ],
            "secrets": [
                {"name": "STRIPE_KEY", "value": OLD_STRIPE},
                {"name": "WEBSITE_URL", "value": OLD_URL},
                {"name": "OLD", "value": OLD_GONE},
            ],
            "buckets": [f"{PID}-old-scans"],
        }
    ],
    "developers": [{"accessToken": DEV_TOKEN, "projects": [PID]}],
}

# Every source and action: a new literal, a literal that differs, an env value that
# differs, a new M2M client's id and secret, a bucket named after the Project, and
# prune deleting a secret and a bucket.
PROJECT = f"""\
id: {PID}
vars: {{ENV: STAGING, DOMAIN: {DOMAIN}}}
secrets:
  ENVIRONMENT: {{value: {LITERAL}}}
  WEBSITE_URL: {{value: "https://${{DOMAIN}}"}}
  STRIPE_KEY: {{valueFrom: {{env: "${{ENV}}_STRIPE_KEY"}}}}
  ZAMBDAS_CLIENT: {{valueFrom: {{m2mClient: Zambdas Admin, field: clientId}}}}
  ZAMBDAS_SECRET: {{valueFrom: {{m2mClient: Zambdas Admin, field: clientSecret}}}}
m2mClients:
  Zambdas Admin: {{roles: [Zambdas Runner]}}
buckets:
  ${{PROJECT_ID}}-visit-notes: {{}}
prune: [secrets, buckets]
"""
STRIPE_VARIABLE = "RECONCILER_SECRET_STAGING_STRIPE_KEY"


def seed() -> dict[str, Any]:
    return copy.deepcopy(SEED)


def write_project(folder: Path, text: str = PROJECT, name: str = "clinic.yaml") -> Path:
    path = folder / "projects" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def env_for(emu: Any, who: str = "dev", **extra: str | None) -> dict[str, str | None]:
    """The environment of a run as `who`: a Developer ("dev"), the CI client with full
    access ("ci", what apply runs as) or the read-only plan client ("reader")."""
    env: dict[str, str | None] = {
        "OYSTEHR_PROJECT_API_URL": emu.api_url,
        "OYSTEHR_AUTH_URL": emu.auth_url,
        "OYSTEHR_ACCESS_TOKEN": None,
        "OYSTEHR_CLIENT_ID": None,
        "OYSTEHR_CLIENT_SECRET": None,
        "GITHUB_STEP_SUMMARY": None,
        "NO_COLOR": "1",
        STRIPE_VARIABLE: NEW_STRIPE,
        "RECONCILER_ALLOW_BUCKET_DELETES": None,
    }
    if who == "dev":
        env["OYSTEHR_ACCESS_TOKEN"] = DEV_TOKEN
    else:
        client, secret = (CI_CLIENT, CI_SECRET) if who == "ci" else (READER, READER_SECRET)
        env["OYSTEHR_CLIENT_ID"], env["OYSTEHR_CLIENT_SECRET"] = client, secret
    env.update(extra)
    return env


def run(args: list[str], env: Mapping[str, str | None]) -> Result:
    return CliRunner().invoke(cli, args, env=dict(env), catch_exceptions=False)


def writes(stats: Mapping[str, int]) -> dict[str, int]:
    """The requests that write, by `METHOD path`."""
    return {
        key: count
        for key, count in stats.items()
        if key.split(" ")[0] in ("POST", "PUT", "PATCH", "DELETE") and key != "POST /oauth/token"
    }


def count(stats: Mapping[str, int], method: str, prefix: str) -> int:
    """Requests of `method` to paths starting with `prefix` (object ids vary)."""
    return sum(n for key, n in stats.items() if key.startswith(f"{method} {prefix}"))


def secret_value(emu: Any, name: str) -> str:
    """A live secret's value, read as a test reads it (not through reconciler)."""
    headers = {"authorization": f"Bearer {DEV_TOKEN}", "x-oystehr-project-id": PID}
    response = httpx.get(f"{emu.api_url}/secret/{name}", headers=headers)
    response.raise_for_status()
    return response.json()["value"]


def live_names(emu: Any, path: str) -> list[str]:
    headers = {"authorization": f"Bearer {DEV_TOKEN}", "x-oystehr-project-id": PID}
    response = httpx.get(f"{emu.api_url}{path}", headers=headers)
    response.raise_for_status()
    doc = response.json()
    items = doc["data"] if isinstance(doc, dict) else doc
    return sorted(item["name"] for item in items)


def token_status(emu: Any, client_id: str, client_secret: str) -> int:
    """What /oauth/token answers for these M2M credentials."""
    body = {
        "grant_type": "client_credentials",
        "client_id": client_id,
        "client_secret": client_secret,
        "audience": "https://api.zapehr.com",
    }
    return httpx.post(emu.auth_url, json=body).status_code


def leaks(texts: Iterable[str], values: Iterable[str]) -> list[tuple[int, str]]:
    """(index of the text, value) for each value found in a text."""
    return [(i, v) for i, text in enumerate(texts) for v in values if v and v in text]
