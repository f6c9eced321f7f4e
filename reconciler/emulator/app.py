"""The emulator's WSGI app: routing, auth, access policies, validation, faults, stats, log.

    POST /oauth/token                          client credentials (JSON or form) -> token
    GET  /v1/version                           public
    GET|PATCH /v1/project                      the Project named by x-oystehr-project-id
    GET  /_emulator/stats                      {"requests": {"GET /v1/project": n, ...}}
    PUT  /_emulator/upload/{token}             a Zambda's code, to the URL s3-upload gave
                                               (no bearer token; counted as
                                               PUT /_emulator/upload; the log hides the token)

and, for every kind of `kinds.py` (roles, applications, M2M clients, secrets,
buckets, Zambda Functions), the endpoints of its verbs:

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
    GET|POST /v1/secret                        [{name}] | {name,value}: 201 new, 200 replaced
    GET|DELETE /v1/secret/{name}               {name,value} | 204
    GET  /v1/z3                                [{id,name,creationDate}]
    PUT|DELETE /v1/z3/{bucketName}             {id,name}: 201 new, 200 already there | 204
    GET|POST /v1/zambda                        [ZambdaFunction] | 201 ZambdaFunction
    GET|PATCH|DELETE /v1/zambda/{id or name}   ZambdaFunction | 204
    POST /v1/zambda/{id or name}/s3-upload     {"signedUrl"}: {filename?} in the body
    GET  /_emulator/requests                   {"requests": [{method, path, project,
                                                start, end, status}, ...] (oldest first),
                                                "faults": {"429": n, "503": n},
                                                "concurrency": {"peak": n,
                                                                "byProject": {id: n}}}
    POST /_emulator/stats/reset                zeroes both

Every error is `{"message": str, "code": int}` with the HTTP status as code:
400 bad body or query, 401 no or unknown token, 403 another Project or refused
by an access policy (`... not allowed: ACTION on RESOURCE`), 404 no such
object in this Project (another Project's included), 409 a name in use, 421
a Host header this emulator does not answer to (DNS rebinding).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

from reconciler import __version__
from reconciler.emulator.bodies import NAME, check_fields
from reconciler.emulator.faults import (
    FaultInjector,
    Faults,
    RequestLog,
    RequestStats,
    TokenBuckets,
)
from reconciler.emulator.iam import M2M_SORTS
from reconciler.emulator.kinds import KINDS, M2M
from reconciler.emulator.objects import Conflict, Kind
from reconciler.emulator.policy import ENDPOINT_ACTIONS, allows
from reconciler.emulator.request import (
    MAX_BODY,
    MAX_UPLOAD,
    Headers,
    HttpError,
    check_patch,
    host_name,
    is_loopback,
    json_body,
    read_body,
    token_form,
)
from reconciler.emulator.store import Access, Caller, Invalid, NotFound, Store
from reconciler.emulator.zambdas import Denied
from reconciler.escape import term

DEFAULT_LIMIT = 100
UPLOAD_PATH = "/_emulator/upload"

Response = tuple[int, Any, Headers]
StartResponse = Callable[..., Any]

_PROJECT_HEADERS = ("HTTP_X_OYSTEHR_PROJECT_ID", "HTTP_X_ZAPEHR_PROJECT_ID")
_LIST_V2_PARAMS = {"cursor", "limit", "name", "id", "profile", "roleId", "sort", "sortOrder"}
_STATUS = {Invalid: 400, NotFound: 404, Conflict: 409}


@dataclass(frozen=True)
class Call:
    """One request: its environ, Project, caller, the {id} of its path and the kind it is of."""

    environ: dict[str, Any]
    project_id: str
    caller: Caller | None
    id: str = ""
    kind: Kind | None = None

    def body(self) -> Any:
        return json_body(self.environ)

    def optional_body(self) -> Any:
        """The JSON body, or {} for none (the SDK sends none with PUT and DELETE)."""
        return json_body(self.environ, optional=True)

    def no_body(self) -> None:
        """400 unless the body is absent or `{}` (the SDK sends `{}` to body-less actions)."""
        if self.optional_body() != {}:
            raise HttpError(400, "this endpoint takes no request body")

    def query(self) -> dict[str, str]:
        fields = parse_qs(self.environ.get("QUERY_STRING", ""), keep_blank_values=True)
        return {key: values[-1] for key, values in fields.items()}

    @property
    def object_kind(self) -> Kind:
        assert self.kind is not None
        return self.kind


Handler = Callable[[Call], Response]


class EmulatorApp:
    """The WSGI callable. `stats` counts requests; `store` is the state behind it.

    m2m_page_size: the largest page of GET /v1/m2m/v2/list (default: the
    seed's `m2mPageSize`, else 100). allowed_hosts: the Host names it answers
    besides `localhost` and loopback addresses (None: any, for an app used
    without a socket); `serve()` sets it to the address it listens on.
    """

    def __init__(
        self,
        store: Store,
        faults: Faults | None = None,
        quiet: bool = True,
        m2m_page_size: int | None = None,
        allowed_hosts: Iterable[str] | None = None,
    ) -> None:
        self.store = store
        self.faults = faults or Faults()
        self.quiet = quiet
        self.m2m_page_size = m2m_page_size
        self.allowed_hosts = None if allowed_hosts is None else frozenset(allowed_hosts)
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
            UPLOAD_PATH + "/{id}": {"PUT": self._upload},
        }
        api: dict[str, dict[str, Handler]] = {
            "/v1/project": {"GET": self._get_project, "PATCH": self._patch_project},
        }
        verbs: dict[str, Handler] = {
            "list": self._list,
            "create": self._create,
            "put": self._put,
            "get": self._get,
            "update": self._update,
            "delete": self._delete,
            "rotate-secret": self._rotate_secret,
            "s3-upload": self._s3_upload,
            "me": self._m2m_me,
            "v2/list": self._list_m2m,
        }
        kinds: dict[str, Kind] = {}
        for kind in KINDS:
            for method, template, verb, _, _ in kind.endpoints():
                api.setdefault(template, {})[method] = verbs[verb]
                kinds[template] = kind
        # First match wins: literal paths (/v1/m2m/me, /v1/m2m/v2/list) before {id} ones.
        routes = {**public, **api}
        self._routes = [
            (_template(path), path, routes[path], path not in public, kinds.get(path))
            for path in sorted(routes, key=lambda path: "{id}" in path)
        ]

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO") or "/"
        logged = None
        metered = _metered(path)
        if metered:  # logged under the path stats count it by (never an upload's token)
            project = environ.get(_PROJECT_HEADERS[0]) or environ.get(_PROJECT_HEADERS[1]) or ""
            logged = self.log.begin(method, metered, project.strip())
        try:
            status, body, headers = self._handle(environ, method, path, metered)
        except HttpError as exc:
            status, body, headers = exc.status, _error(exc.status, exc.message), exc.headers
        except Exception:  # a bug in the emulator: say so, keep serving
            traceback.print_exc(file=sys.stderr)
            status, body, headers = 500, _error(500, "internal emulator error"), []
        if body is None:  # 204 No Content, or an upload's empty 200
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
            # Method, path (never the query string, an upload's token hidden), status,
            # time: nothing that could hold a token or a secret. Any web page can make a
            # browser send a path here (<img src>): escaped, it cannot drive the terminal.
            ms = (time.perf_counter() - started) * 1000
            sys.stderr.write(f"{term(method)} {term(_logged(path))} {status} {ms:.1f}ms\n")
        return [payload]

    def _handle(
        self, environ: dict[str, Any], method: str, path: str, metered: str | None
    ) -> Response:
        self._check_host(environ)
        if metered:
            self.stats.count(method, metered)
            if path != "/v1/version" and self.faults.active:
                self._inject(environ)
        match, template, methods, authorised, kind = self._route(path)
        handler = methods.get(method)
        if handler is None:
            allowed = ", ".join(methods)
            raise HttpError(405, f"{method} not allowed on {path}", [("Allow", allowed)])
        object_id = match.groupdict().get("id", "")
        if not authorised:
            return handler(Call(environ, "", None, object_id))
        project_id, caller = self._authorize(environ)
        action, resource = ENDPOINT_ACTIONS[(method, template)]
        if caller.policies is not None and not allows(caller.policies, action, resource):
            raise HttpError(
                403,
                f"denied by this M2M client's access policy: not allowed: {action} on {resource}",
            )
        try:
            return handler(Call(environ, project_id, caller, object_id, kind))
        except (Invalid, NotFound, Conflict) as exc:
            raise HttpError(_STATUS[type(exc)], str(exc)) from None

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

    def _route(self, path: str) -> tuple[re.Match[str], str, dict[str, Handler], bool, Kind | None]:
        """The first route matching the path: match, template, handlers, authorised?, kind."""
        for pattern, template, methods, authorised, kind in self._routes:
            match = pattern.fullmatch(path)
            if match is not None:
                return match, template, methods, authorised, kind
        raise HttpError(404, f"no such endpoint: {path}")

    def _check_host(self, environ: dict[str, Any]) -> None:
        """421 for a Host this emulator does not answer to: a page the browser loaded from
        another name (DNS rebinding) must not reach it with the public seed tokens."""
        host = environ.get("HTTP_HOST")
        if self.allowed_hosts is None or host is None:
            return
        name = host_name(host)
        if name == "localhost" or name in self.allowed_hosts or is_loopback(name):
            return
        raise HttpError(
            421,
            "this emulator answers only to localhost, a loopback address or the address "
            "it listens on (start it with --host NAME to serve another name)",
        )

    # -- endpoints -------------------------------------------------------

    def _token(self, call: Call) -> Response:
        form = token_form(call.environ)
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

    # -- every kind ------------------------------------------------------

    def _list(self, call: Call) -> Response:
        return 200, self.store.list(call.object_kind, call.project_id), []

    def _create(self, call: Call) -> Response:
        kind = call.object_kind
        fields = _checked(call.body(), kind.fields, kind.required)
        problem = kind.create_rule(fields) if kind.create_rule else None
        if problem:
            raise HttpError(400, problem)
        return self._created(kind, *self.store.create(kind, call.project_id, fields))

    def _put(self, call: Call) -> Response:
        """PUT {path}/{name}: create by the name in the path (a Z3 bucket); no body."""
        kind = call.object_kind
        call.no_body()
        fields = _checked({"name": call.id}, kind.fields, kind.required)
        return self._created(kind, *self.store.create(kind, call.project_id, fields))

    @staticmethod
    def _created(kind: Kind, doc: dict[str, Any], created: bool) -> Response:
        if kind.created is not None:
            doc = {key: doc[key] for key in kind.created}
        return (201 if created else 200), doc, []

    def _get(self, call: Call) -> Response:
        return 200, self.store.get(call.object_kind, call.project_id, call.id), []

    def _update(self, call: Call) -> Response:
        kind = call.object_kind
        fields = _checked(call.body(), kind.fields)
        return 200, self.store.update(kind, call.project_id, call.id, fields), []

    def _delete(self, call: Call) -> Response:
        self.store.delete(call.object_kind, call.project_id, call.id)
        return 204, None, []

    def _rotate_secret(self, call: Call) -> Response:
        call.no_body()
        return 200, {"secret": self.store.rotate(call.object_kind, call.project_id, call.id)}, []

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
        if sort not in M2M_SORTS:
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

    def _m2m_me(self, call: Call) -> Response:
        if call.caller is None or call.caller.m2m_id is None:
            raise HttpError(
                400, "GET /m2m/me needs an M2M client's access token, not a Developer's"
            )
        return 200, self.store.get(M2M, call.project_id, call.caller.m2m_id), []

    # Zambda Functions' code

    def _s3_upload(self, call: Call) -> Response:
        """A single-use URL on this emulator to PUT the function's zip to."""
        values = _checked(call.optional_body(), {"filename": NAME})
        # The SDK: "If not provided, the filename will be randomized."
        filename = values.get("filename") or f"{uuid.uuid4()}.zip"
        token = self.store.start_upload(call.project_id, call.id, filename)
        environ = call.environ
        host = environ.get("HTTP_HOST") or f"{environ['SERVER_NAME']}:{environ['SERVER_PORT']}"
        url = f"{environ.get('wsgi.url_scheme', 'http')}://{host}{UPLOAD_PATH}/{token}"
        return 200, {"signedUrl": url}, []

    def _upload(self, call: Call) -> Response:
        """PUT of the zip to a signed URL: no bearer token (the URL is the credential)."""
        if call.environ.get("HTTP_AUTHORIZATION"):
            # As S3 refuses a presigned URL that also carries an Authorization header.
            raise HttpError(
                400, "a signed upload URL takes no Authorization header: its token is the URL"
            )
        data = read_body(call.environ, MAX_UPLOAD)
        try:
            self.store.finish_upload(call.id, data)
        except Denied as exc:
            raise HttpError(403, str(exc)) from None
        return 200, None, [("ETag", f'"{hashlib.md5(data).hexdigest()}"')]

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
    allowed_hosts: Iterable[str] | None = None,
) -> EmulatorApp:
    """The WSGI app over a store (usable with `httpx.WSGITransport(app=...)`)."""
    return EmulatorApp(store, faults, quiet, m2m_page_size, allowed_hosts)


def body_limit(path: str) -> int:
    """The largest request body a path takes (the server refuses more before reading it)."""
    return MAX_UPLOAD if path.startswith(UPLOAD_PATH + "/") else MAX_BODY


def _checked(body: Any, fields: Any, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The accepted fields of a create or update body, or HttpError 400 naming every problem."""
    values, problems = check_fields(body, fields, required)
    if problems:
        raise HttpError(400, "; ".join(problems))
    return values


def _metered(path: str) -> str | None:
    """The path stats count a request under (None: not counted, never faulted)."""
    if path == "/oauth/token" or path == "/v1" or path.startswith("/v1/"):
        return path
    if path.startswith(UPLOAD_PATH + "/"):
        return UPLOAD_PATH  # never the token: it is the upload's credential
    return None


def _logged(path: str) -> str:
    """The path as the log shows it: an upload's token is a credential."""
    if path.startswith(UPLOAD_PATH + "/"):
        return UPLOAD_PATH + "/<token>"
    return path


def _error(status: int, message: str) -> dict[str, Any]:
    return {"message": message, "code": status}


def _template(path: str) -> re.Pattern[str]:
    """A route's regex: `{id}` is one path segment."""
    return re.compile(re.escape(path).replace(r"\{id\}", "(?P<id>[^/]+)"))
