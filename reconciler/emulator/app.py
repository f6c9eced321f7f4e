"""The emulator's WSGI app: routing, auth, access policies, validation, faults, stats, log.

    POST /oauth/token                          client credentials (JSON or form) -> token
    GET  /v1/version                           public
    GET|PATCH /v1/project                      the Project named by x-oystehr-project-id
    GET|POST /v1/iam/role                      [{id,name,memberCount}] | 201 role
    GET|PATCH|DELETE /v1/iam/role/{id}         {id,name,description?,accessPolicy} | 204
    GET|POST /v1/application                   [{id,name,clientId,description?}] | 201 app
    GET|PATCH|DELETE /v1/application/{id}      the application (every write field) | 204
    POST /v1/application/{id}/rotate-secret    {"secret"}
    GET  /v1/m2m/v2/list?cursor&limit&...      {"data":[{id,name,description?}],
                                                "metadata":{"nextCursor"}}
    GET|POST /v1/m2m                           (deprecated) list | 201 M2M client
    GET  /v1/m2m/me                            the calling M2M client
    GET|PATCH|DELETE /v1/m2m/{id}              {id,name,description?,clientId,profile,
                                                roles:[{id,name}],accessPolicy?,jwksUrl?}
    POST /v1/m2m/{id}/rotate-secret            {"secret"}: the new secret works at
                                                /oauth/token, the old one no longer
    GET  /_emulator/stats                      {"requests": {"GET /v1/project": n, ...}}
    GET  /_emulator/requests                   {"requests": [{method, path, project,
                                                start, end, status}, ...] (oldest first),
                                                "faults": {"429": n, "503": n},
                                                "concurrency": {"peak": n,
                                                                "byProject": {id: n}}}
    POST /_emulator/stats/reset                zeroes both

Every error is `{"message": str, "code": int}` with the HTTP status as code:
400 bad body or query, 401 no or unknown token, 403 another Project or refused
by an access policy (`... not allowed: ACTION on RESOURCE`), 404 no such
object in this Project (another Project's ids included).
"""

from __future__ import annotations

import json
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

from reconciler import __version__
from reconciler.emulator.bodies import APPLICATION_FIELDS, M2M_FIELDS, ROLE_FIELDS, check_fields
from reconciler.emulator.faults import (
    FaultInjector,
    Faults,
    RequestLog,
    RequestStats,
    TokenBuckets,
)
from reconciler.emulator.policy import ENDPOINT_ACTIONS, allows
from reconciler.emulator.store import Access, Caller, Invalid, NotFound, Store

MAX_BODY = 1 << 20
DEFAULT_LIMIT = 100

Headers = list[tuple[str, str]]
Response = tuple[int, Any, Headers]
StartResponse = Callable[..., Any]

_PROJECT_HEADERS = ("HTTP_X_OYSTEHR_PROJECT_ID", "HTTP_X_ZAPEHR_PROJECT_ID")
_READ_ONLY = ("id", "sandbox", "fhirVersion")
_LIST_V2_PARAMS = {"cursor", "limit", "name", "id", "profile", "roleId", "sort", "sortOrder"}


class HttpError(Exception):
    """An error answer: status and message become `{"message","code"}`."""

    def __init__(self, status: int, message: str, headers: Headers | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


@dataclass(frozen=True)
class Call:
    """One authorised API request: its environ, Project, caller and the {id} of its path."""

    environ: dict[str, Any]
    project_id: str
    caller: Caller | None
    id: str = ""

    def body(self) -> Any:
        return _json_body(self.environ)

    def query(self) -> dict[str, str]:
        fields = parse_qs(self.environ.get("QUERY_STRING", ""), keep_blank_values=True)
        return {key: values[-1] for key, values in fields.items()}


Handler = Callable[[Call], Response]


class EmulatorApp:
    """The WSGI callable. `stats` counts requests; `store` is the state behind it.

    m2m_page_size: the largest page of GET /v1/m2m/v2/list (default: the
    seed's `m2mPageSize`, else 100).
    """

    def __init__(
        self,
        store: Store,
        faults: Faults | None = None,
        quiet: bool = True,
        m2m_page_size: int | None = None,
    ) -> None:
        self.store = store
        self.faults = faults or Faults()
        self.quiet = quiet
        self.m2m_page_size = m2m_page_size
        self.stats = RequestStats()
        self.log = RequestLog()
        self._injector = FaultInjector(self.faults)
        self._buckets = TokenBuckets(self.faults.rate_limit_rps)
        public: dict[str, dict[str, Handler]] = {
            "/oauth/token": {"POST": self._token},
            "/v1/version": {"GET": self._version},
            "/_emulator/stats": {"GET": self._get_stats},
            "/_emulator/requests": {"GET": self._get_requests},
            "/_emulator/stats/reset": {"POST": self._reset_stats},
        }
        api: dict[str, dict[str, Handler]] = {
            "/v1/project": {"GET": self._get_project, "PATCH": self._patch_project},
            "/v1/iam/role": {"GET": self._list_roles, "POST": self._create_role},
            "/v1/iam/role/{id}": {
                "GET": self._get_role,
                "PATCH": self._update_role,
                "DELETE": self._delete_role,
            },
            "/v1/application": {"GET": self._list_applications, "POST": self._create_application},
            "/v1/application/{id}": {
                "GET": self._get_application,
                "PATCH": self._update_application,
                "DELETE": self._delete_application,
            },
            "/v1/application/{id}/rotate-secret": {"POST": self._rotate_application_secret},
            "/v1/m2m": {"GET": self._list_m2m_v1, "POST": self._create_m2m},
            "/v1/m2m/v2/list": {"GET": self._list_m2m},
            "/v1/m2m/me": {"GET": self._m2m_me},
            "/v1/m2m/{id}": {
                "GET": self._get_m2m,
                "PATCH": self._update_m2m,
                "DELETE": self._delete_m2m,
            },
            "/v1/m2m/{id}/rotate-secret": {"POST": self._rotate_m2m_secret},
        }
        # First match wins: /v1/m2m/me and /v1/m2m/v2/list come before /v1/m2m/{id}.
        self._routes = [
            (_template(path), path, methods, path not in public)
            for path, methods in {**public, **api}.items()
        ]

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO") or "/"
        logged = None
        if _metered(path):
            project = environ.get(_PROJECT_HEADERS[0]) or environ.get(_PROJECT_HEADERS[1]) or ""
            logged = self.log.begin(method, path, project.strip())
        try:
            status, body, headers = self._handle(environ, method, path)
        except HttpError as exc:
            status, body, headers = exc.status, _error(exc.status, exc.message), exc.headers
        except Exception:  # a bug in the emulator: say so, keep serving
            traceback.print_exc(file=sys.stderr)
            status, body, headers = 500, _error(500, "internal emulator error"), []
        if body is None:  # 204 No Content
            payload, headers = b"", [("Content-Length", "0"), *headers]
        else:
            payload = json.dumps(body, separators=(",", ":")).encode()
            headers = [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(payload))),
                *headers,
            ]
        if logged is not None:
            self.log.end(logged, status)
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
        if _metered(path):
            self.stats.count(method, path)
            if path != "/v1/version" and self.faults.active:
                self._inject(environ)
        match, template, methods, authorised = self._route(path)
        handler = methods.get(method)
        if handler is None:
            allowed = ", ".join(methods)
            raise HttpError(405, f"{method} not allowed on {path}", [("Allow", allowed)])
        if not authorised:
            return handler(Call(environ, "", None))
        project_id, caller = self._authorize(environ)
        action, resource = ENDPOINT_ACTIONS[(method, template)]
        if caller.policies is not None and not allows(caller.policies, action, resource):
            raise HttpError(
                403,
                f"denied by this M2M client's access policy: not allowed: {action} on {resource}",
            )
        try:
            return handler(Call(environ, project_id, caller, match.groupdict().get("id", "")))
        except Invalid as exc:
            raise HttpError(400, str(exc)) from None
        except NotFound as exc:
            raise HttpError(404, str(exc)) from None

    def _inject(self, environ: dict[str, Any]) -> None:
        """Latency, then the fault this request gets, if any (raised as its answer)."""
        fault = self._injector.decide()
        if self.faults.latency_ms:
            # No lock is held here: a sleeping request blocks nobody.
            time.sleep(self.faults.latency_ms / 1000)
        if fault is None and self.faults.rate_limit_rps:
            wait = self._buckets.take(environ.get("HTTP_AUTHORIZATION", ""))
            if wait is not None:
                self.stats.fault(429)
                raise HttpError(
                    429, "Too Many Requests (emulated rate limit)", [("Retry-After", f"{wait:.3f}")]
                )
        if fault is not None:
            self.stats.fault(fault)
        if fault == 429:
            raise HttpError(429, "Too Many Requests (emulated)", [("Retry-After", "1")])
        if fault == 503:
            raise HttpError(503, "Service Unavailable (emulated)")

    def _route(self, path: str) -> tuple[re.Match[str], str, dict[str, Handler], bool]:
        """The first route matching the path: its match, template, handlers, whether authorised."""
        for pattern, template, methods, authorised in self._routes:
            match = pattern.fullmatch(path)
            if match is not None:
                return match, template, methods, authorised
        raise HttpError(404, f"no such endpoint: {path}")

    # -- endpoints -------------------------------------------------------

    def _token(self, call: Call) -> Response:
        form = _token_form(call.environ)
        if form.get("grant_type") != "client_credentials":
            raise HttpError(400, "grant_type must be client_credentials")
        client_id, secret = form.get("client_id"), form.get("client_secret")
        if not isinstance(client_id, str) or not isinstance(secret, str):
            raise HttpError(401, "client_id and client_secret are required")
        token = self.store.issue_token(client_id, secret)
        if token is None:
            raise HttpError(401, "invalid client credentials")
        return 200, {"access_token": token, "token_type": "Bearer", "expires_in": 86400}, []

    def _version(self, call: Call) -> Response:
        return 200, {"version": f"reconciler-emulator {__version__}"}, []

    def _get_stats(self, call: Call) -> Response:
        return 200, {"requests": self.stats.snapshot()}, []

    def _get_requests(self, call: Call) -> Response:
        doc = {
            "requests": self.log.entries(),
            "faults": self.stats.faults(),
            "concurrency": self.log.concurrency(),
        }
        return 200, doc, []

    def _reset_stats(self, call: Call) -> Response:
        self.stats.reset()
        self.log.reset()
        return 200, {"requests": {}}, []

    def _get_project(self, call: Call) -> Response:
        project = self.store.get_project(call.project_id)
        if project is None:  # deleted between the access check and now
            raise HttpError(404, "Project not found")
        return 200, project, []

    def _patch_project(self, call: Call) -> Response:
        changes = check_patch(call.body())
        return 200, self.store.patch_project(call.project_id, changes), []

    # roles

    def _list_roles(self, call: Call) -> Response:
        return 200, self.store.list_roles(call.project_id), []

    def _create_role(self, call: Call) -> Response:
        fields = _checked(call.body(), ROLE_FIELDS, ("name",))
        role = self.store.add_role(
            call.project_id,
            fields["name"],
            description=fields.get("description"),
            access_policy=fields.get("accessPolicy"),
        )
        return 201, role, []

    def _get_role(self, call: Call) -> Response:
        return 200, self.store.get_role(call.project_id, call.id), []

    def _update_role(self, call: Call) -> Response:
        fields = _checked(call.body(), ROLE_FIELDS)
        return 200, self.store.update_role(call.project_id, call.id, fields), []

    def _delete_role(self, call: Call) -> Response:
        self.store.delete_role(call.project_id, call.id)
        return 204, None, []

    # applications

    def _list_applications(self, call: Call) -> Response:
        return 200, self.store.list_applications(call.project_id), []

    def _create_application(self, call: Call) -> Response:
        fields = _checked(call.body(), APPLICATION_FIELDS, ("name", "allowedCallbackUrls"))
        return 201, self.store.add_application(call.project_id, fields), []

    def _get_application(self, call: Call) -> Response:
        return 200, self.store.get_application(call.project_id, call.id), []

    def _update_application(self, call: Call) -> Response:
        fields = _checked(call.body(), APPLICATION_FIELDS)
        return 200, self.store.update_application(call.project_id, call.id, fields), []

    def _delete_application(self, call: Call) -> Response:
        self.store.delete_application(call.project_id, call.id)
        return 204, None, []

    def _rotate_application_secret(self, call: Call) -> Response:
        _empty_body(call)
        return 200, {"secret": self.store.rotate_application_secret(call.project_id, call.id)}, []

    # M2M clients

    def _list_m2m(self, call: Call) -> Response:
        query = call.query()
        unknown = sorted(set(query) - _LIST_V2_PARAMS)
        if unknown:
            raise HttpError(400, f"unknown query parameter {unknown[0]!r}")
        limit = query.get("limit") or str(DEFAULT_LIMIT)
        if not limit.isdigit() or int(limit) < 1:
            raise HttpError(400, "limit must be a whole number >= 1")
        sort = query.get("sort") or "createdAt"
        if sort not in ("createdAt", "name", "id"):
            raise HttpError(400, "sort must be createdAt, name or id")
        order = query.get("sortOrder") or "asc"
        if order not in ("asc", "desc"):
            raise HttpError(400, "sortOrder must be asc or desc")
        page_size = self.m2m_page_size or self.store.m2m_page_size
        items, next_cursor = self.store.page_m2m(
            call.project_id,
            limit=min(int(limit), page_size),
            cursor=query.get("cursor") or None,
            name=query.get("name"),
            m2m_id=query.get("id"),
            role_id=query.get("roleId"),
            profile=query.get("profile"),
            sort=sort,
            order=order,
        )
        return 200, {"data": items, "metadata": {"nextCursor": next_cursor}}, []

    def _list_m2m_v1(self, call: Call) -> Response:
        """The deprecated GET /v1/m2m: every client, without its roles."""
        items = []
        for item in self.store.list_m2m(call.project_id):
            doc = self.store.get_m2m(call.project_id, item["id"])
            doc.pop("roles")
            items.append(doc)
        return 200, items, []

    def _create_m2m(self, call: Call) -> Response:
        fields = _checked(call.body(), M2M_FIELDS, ("name",))
        if "accessPolicy" not in fields and not fields.get("roles"):
            raise HttpError(400, "roles must name at least one role when accessPolicy is absent")
        return 201, self.store.create_m2m(call.project_id, fields), []

    def _m2m_me(self, call: Call) -> Response:
        if call.caller is None or call.caller.m2m_id is None:
            raise HttpError(
                400, "GET /m2m/me needs an M2M client's access token, not a Developer's"
            )
        return 200, self.store.get_m2m(call.project_id, call.caller.m2m_id), []

    def _get_m2m(self, call: Call) -> Response:
        return 200, self.store.get_m2m(call.project_id, call.id), []

    def _update_m2m(self, call: Call) -> Response:
        fields = _checked(call.body(), M2M_FIELDS)
        return 200, self.store.update_m2m(call.project_id, call.id, fields), []

    def _delete_m2m(self, call: Call) -> Response:
        self.store.delete_m2m(call.project_id, call.id)
        return 204, None, []

    def _rotate_m2m_secret(self, call: Call) -> Response:
        _empty_body(call)
        return 200, {"secret": self.store.rotate_m2m_secret(call.project_id, call.id)}, []

    # -- auth ------------------------------------------------------------

    def _authorize(self, environ: dict[str, Any]) -> tuple[str, Caller]:
        """The Project id this request may act on and its caller, or the 401/400/403/404."""
        scheme, _, token = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise HttpError(401, "missing Authorization: Bearer token")
        ids = {environ[name].strip() for name in _PROJECT_HEADERS if environ.get(name, "").strip()}
        if len(ids) > 1:
            raise HttpError(400, "x-oystehr-project-id and x-zapehr-project-id differ")
        caller = self.store.caller(token, ids.pop() if ids else None)
        project_id = caller.project_id or ""
        if caller.access is Access.UNKNOWN_TOKEN:
            raise HttpError(401, "invalid or expired access token")
        if caller.access is Access.NO_PROJECT_HEADER:
            raise HttpError(400, "missing x-oystehr-project-id header (a Developer token needs it)")
        if caller.access is Access.FORBIDDEN:
            raise HttpError(403, f"this token may not act on Project {project_id}")
        if caller.access is Access.NO_SUCH_PROJECT:
            raise HttpError(404, f"Project {project_id} not found")
        return project_id, caller


def make_app(
    store: Store,
    faults: Faults | None = None,
    quiet: bool = True,
    m2m_page_size: int | None = None,
) -> EmulatorApp:
    """The WSGI app over a store (usable with `httpx.WSGITransport(app=...)`)."""
    return EmulatorApp(store, faults, quiet, m2m_page_size)


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


def _checked(body: Any, fields: dict[str, str], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The accepted fields of a create or update body, or HttpError 400 naming every problem."""
    values, problems = check_fields(body, fields, required)
    if problems:
        raise HttpError(400, "; ".join(problems))
    return values


def _empty_body(call: Call) -> None:
    """A body-less action (rotate-secret) accepts no body or `{}` (the SDK sends `{}`)."""
    raw = _read_body(call.environ).strip()
    if raw and raw != b"{}":
        raise HttpError(400, "this endpoint takes no request body")


def _metered(path: str) -> bool:
    """Counted in the stats and the request log, and subject to faults (but /v1/version)."""
    return path == "/oauth/token" or path == "/v1" or path.startswith("/v1/")


def _template(path: str) -> re.Pattern[str]:
    """A route's regex: `{id}` is one path segment."""
    return re.compile(re.escape(path).replace(r"\{id\}", "(?P<id>[^/]+)"))


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
