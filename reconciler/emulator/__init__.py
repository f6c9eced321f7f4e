"""The local Oystehr Project Service (SPEC sections 6, 9, 13, 14): a WSGI app over SQLite,
served over HTTP.

    from reconciler.emulator import serve, Faults

    with serve("seed.yaml", faults=Faults(latency_ms=20)) as emu:   # or serve("demo")
        emu.url, emu.api_url, emu.auth_url    # http://127.0.0.1:PORT[/v1|/oauth/token]
        emu.stats(); emu.reset_stats()        # the counts of GET /_emulator/stats
        emu.store.set_project_fields(pid, {"name": "edited by hand"})
        emu.store.get_m2m(pid, seed_m2m_id("sandbox-ci"))   # a seeded client's id
        emu.store.get("secret", pid, "STRIPE_KEY")          # any kind, by its API key
        emu.store.update("zambda", pid, "check-in", {"status": "Failed"})
        emu.store.zambda_code(pid, "check-in")              # the bytes last uploaded

    serve(seed, m2m_page_size=2)              # page GET /v1/m2m/v2/list 2 at a time

Modules: `kinds` declares every kind of object (path, fields, actions, table),
`objects` reads and writes any kind, `iam` and `zambdas` hold the quirks of
roles, applications, M2M clients and Zambda Functions (and code uploads),
`bodies` types the fields and checks request bodies, `policy` decides what an
access policy allows, `seed` checks the seed, `schema` and `projects` and
`store` keep the state in SQLite, `request` reads a request (body, JSON depth,
Host), `faults` injects latency/503/429 and counts requests, `app` is the WSGI
app, `server` serves it (`serve()` in a thread, `run_cli()` in the foreground).
"""

from reconciler.emulator.app import EmulatorApp, make_app
from reconciler.emulator.faults import Faults
from reconciler.emulator.seed import Seed, load_seed, seed_m2m_id
from reconciler.emulator.server import RunningEmulator, run_cli, serve
from reconciler.emulator.store import Store

__all__ = [
    "EmulatorApp",
    "Faults",
    "RunningEmulator",
    "Seed",
    "Store",
    "load_seed",
    "make_app",
    "run_cli",
    "seed_m2m_id",
    "serve",
]
