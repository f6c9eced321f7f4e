"""The emulator's WSGI app: routing, auth, validation, faults, stats and the request log.

    POST /oauth/token            client credentials (JSON or form) -> access token
    GET  /v1/version             public
    GET  /v1/project             the Project named by x-oystehr-project-id
    PATCH /v1/project            name, description, signupEnabled, default*RoleId
    GET  /v1/iam/role            [{"id","name","memberCount"}]
    POST /v1/iam/role            {"name","description"?,"accessPolicy"?} -> 201
    GET  /_emulator/stats        {"requests": {"GET /v1/project": n, ...}}
    POST /_emulator/stats/reset

Every error is `{"message": str, "code": int}` with the HTTP status as code.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

from reconciler import __version__
from reconciler.emulator.faults import FaultInjector, Faults, RequestStats
from reconciler.emulator.store import Access, Invalid, NotFound, Store

MAX_BODY = 1 << 20

Headers = list[tuple[str, str]]
Response = tuple[int, Any, Headers]
StartResponse = Callable[..., Any]

_PROJECT_HEADERS = ("HTTP_X_OYSTEHR_PROJECT_ID", "HTTP_X_ZAPEHR_PROJECT_ID")
_READ_ONLY = ("id", "sandbox", "fhirVersion")


class HttpError(Exception):
    """An error answer: status and message become `{"message","code"}`."""

    def __init__(self, status: int, message: str, headers: Headers | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


class EmulatorApp:
    """The WSGI callable. `stats` counts requests; `store` is the state behind it."""

    def __init__(self, store: Store, faults: Faults | None = None, quiet: bool = True) -> None:
        self.store = store
        self.faults = faults or Faults()
        self.quiet = quiet
        self.stats = RequestStats()
        self._injector = FaultInjector(self.faults)
        self._routes: dict[str, dict[str, Callable[[dict[str, Any]], Response]]] = {
            "/oauth/token": {"POST": self._token},
            "/v1/version": {"GET": self._version},
            "/v1/project": {"GET": self._get_project, "PATCH": self._patch_project},
            "/v1/iam/role": {"GET": self._list_roles, "POST": self._create_role},
            "/_emulator/stats": {"GET": self._get_stats},
            "/_emulator/stats/reset": {"POST": self._reset_stats},
        }

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO") or "/"
        try:
            status, body, headers = self._handle(environ, method, path)
        except HttpError as exc:
            status, body, headers = exc.status, _error(exc.status, exc.message), exc.headers
        except Exception:  # a bug in the emulator: say so, keep serving
            traceback.print_exc(file=sys.stderr)
            status, body, headers = 500, _error(500, "internal emulator error"), []
        payload = json.dumps(body, separators=(",", ":")).encode()
        headers = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(payload))),
            *headers,
        ]
        request_id = environ.get("HTTP_X_OYSTEHR_REQUEST_ID")
        if request_id:
            headers.append(("x-oystehr-request-id", request_id[:100]))
        start_response(f"{status} {HTTPStatus(status).phrase}", headers)
        if not self.quiet:
            # Method, path (never the query string), status, time: nothing that
            # could hold a token or a secret, which live in headers and bodies.
            ms = (time.perf_counter() - started) * 1000
            sys.stderr.write(f"{method} {path} {status} {ms:.1f}ms\n")
        return [payload]

    def _handle(self, environ: dict[str, Any], method: str, path: str) -> Response:
        metered = path == "/oauth/token" or path == "/v1" or path.startswith("/v1/")
        if metered:
            self.stats.count(method, path)
            if path != "/v1/version" and self.faults.active:
                fault = self._injector.decide()
                if self.faults.latency_ms:
                    # No lock is held here: a sleeping request blocks nobody.
                    time.sleep(self.faults.latency_ms / 1000)
                if fault == 429:
                    raise HttpError(429, "Too Many Requests (emulated)", [("Retry-After", "1")])
                if fault == 503:
                    raise HttpError(503, "Service Unavailable (emulated)")
        methods = self._routes.get(path)
        if methods is None:
            raise HttpError(404, f"no such endpoint: {path}")
        handler = methods.get(method)
        if handler is None:
            allowed = ", ".join(methods)
            raise HttpError(405, f"{method} not allowed on {path}", [("Allow", allowed)])
        return handler(environ)

    # -- endpoints -------------------------------------------------------

    def _token(self, environ: dict[str, Any]) -> Response:
        form = _token_form(environ)
        if form.get("grant_type") != "client_credentials":
            raise HttpError(400, "grant_type must be client_credentials")
        client_id, secret = form.get("client_id"), form.get("client_secret")
        if not isinstance(client_id, str) or not isinstance(secret, str):
            raise HttpError(401, "client_id and client_secret are required")
        token = self.store.issue_token(client_id, secret)
        if token is None:
            raise HttpError(401, "invalid client credentials")
        return 200, {"access_token": token, "token_type": "Bearer", "expires_in": 86400}, []

    def _version(self, environ: dict[str, Any]) -> Response:
        return 200, {"version": f"reconciler-emulator {__version__}"}, []

    def _get_project(self, environ: dict[str, Any]) -> Response:
        project = self.store.get_project(self._authorize(environ))
        if project is None:  # deleted between the access check and now
            raise HttpError(404, "Project not found")
        return 200, project, []

    def _patch_project(self, environ: dict[str, Any]) -> Response:
        project_id = self._authorize(environ)
        changes = check_patch(_json_body(environ))
        try:
            return 200, self.store.patch_project(project_id, changes), []
        except Invalid as exc:
            raise HttpError(400, str(exc)) from None
        except NotFound as exc:
            raise HttpError(404, str(exc)) from None

    def _list_roles(self, environ: dict[str, Any]) -> Response:
        return 200, self.store.list_roles(self._authorize(environ)), []

    def _create_role(self, environ: dict[str, Any]) -> Response:
        project_id = self._authorize(environ)
        body = _json_body(environ)
        unknown = sorted(set(body) - {"name", "description", "accessPolicy"})
        if unknown:
            raise HttpError(400, f"unknown field {unknown[0]!r}")
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            raise HttpError(400, "name must be a non-empty string")
        description = body.get("description")
        if description is not None and not isinstance(description, str):
            raise HttpError(400, "description must be a string")
        policy = body.get("accessPolicy")
        if policy is not None and not isinstance(policy, dict):
            raise HttpError(400, "accessPolicy must be an object")
        try:
            role = self.store.add_role(
                project_id, name, description=description, access_policy=policy
            )
        except NotFound as exc:
            raise HttpError(404, str(exc)) from None
        return 201, role, []

    def _get_stats(self, environ: dict[str, Any]) -> Response:
        return 200, {"requests": self.stats.snapshot()}, []

    def _reset_stats(self, environ: dict[str, Any]) -> Response:
        self.stats.reset()
        return 200, {"requests": {}}, []

    # -- auth ------------------------------------------------------------

    def _authorize(self, environ: dict[str, Any]) -> str:
        """The Project id this request may act on, or the 401/400/403/404 it earns."""
        scheme, _, token = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise HttpError(401, "missing Authorization: Bearer token")
        ids = {environ[name].strip() for name in _PROJECT_HEADERS if environ.get(name, "").strip()}
        if not ids:
            raise HttpError(400, "missing x-oystehr-project-id header")
        if len(ids) > 1:
            raise HttpError(400, "x-oystehr-project-id and x-zapehr-project-id differ")
        (project_id,) = ids
        access = self.store.access(token, project_id)
        if access is Access.UNKNOWN_TOKEN:
            raise HttpError(401, "invalid or expired access token")
        if access is Access.FORBIDDEN:
            raise HttpError(403, f"this token may not act on Project {project_id}")
        if access is Access.NO_SUCH_PROJECT:
            raise HttpError(404, f"Project {project_id} not found")
        return project_id


def make_app(store: Store, faults: Faults | None = None, quiet: bool = True) -> EmulatorApp:
    """The WSGI app over a store (usable with `httpx.WSGITransport(app=...)`)."""
    return EmulatorApp(store, faults, quiet)


def check_patch(body: Any) -> dict[str, Any]:
    """Check a PATCH /v1/project body: the changes by API name, or HttpError 400.

    Role ids are only type-checked here; the store checks they are the Project's.
    """
    if not isinstance(body, dict):
        raise HttpError(400, "request body must be a JSON object")
    problems = []
    changes: dict[str, Any] = {}
    for key, value in body.items():
        if key in _READ_ONLY:
            problems.append(f"{key} is read-only")
        elif key == "name":
            if isinstance(value, str) and value.strip():
                changes[key] = value
            else:
                problems.append("name must be a non-empty string")
        elif key == "description":
            if isinstance(value, str):
                changes[key] = value
            else:
                problems.append("description must be a string")
        elif key == "signupEnabled":
            if isinstance(value, bool):
                changes[key] = value
            else:
                problems.append("signupEnabled must be true or false")
        elif key in ("defaultPatientRoleId", "defaultSSOUserRoleId"):
            if value is None or (isinstance(value, str) and value):
                changes[key] = value
            else:
                problems.append(f"{key} must be a role id (string) or null")
        elif key in ("defaultPatientRole", "defaultSSOUserRole"):
            # The GET shape sent back to PATCH: a common mistake, name the fix.
            problems.append(f"unknown field {key!r} (PATCH takes {key}Id)")
        else:
            problems.append(f"unknown field {key!r}")
    if problems:
        raise HttpError(400, "; ".join(problems))
    return changes


def _error(status: int, message: str) -> dict[str, Any]:
    return {"message": message, "code": status}


def _read_body(environ: dict[str, Any]) -> bytes:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise HttpError(400, "bad Content-Length") from None
    if length > MAX_BODY:
        raise HttpError(413, "request body too large")
    return environ["wsgi.input"].read(length) if length > 0 else b""


def _json_body(environ: dict[str, Any]) -> Any:
    raw = _read_body(environ)
    if not raw.strip():
        raise HttpError(400, "request body must be a JSON object")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        # ValueError's text is position info only, never the body itself.
        raise HttpError(400, f"request body is not valid JSON: {exc}") from None


def _token_form(environ: dict[str, Any]) -> dict[str, Any]:
    """The token request's fields from a JSON or a form-encoded body."""
    raw = _read_body(environ)
    content_type = environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
    if content_type == "application/x-www-form-urlencoded" or (
        content_type != "application/json" and not raw.lstrip().startswith(b"{")
    ):
        try:
            fields = parse_qs(raw.decode("utf-8"), keep_blank_values=True)
        except UnicodeDecodeError:
            raise HttpError(400, "form body is not UTF-8") from None
        return {key: values[-1] for key, values in fields.items()}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise HttpError(400, "request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise HttpError(400, "request body must be a JSON object")
    return body
