"""The Oystehr Project API: credentials, tokens, headers, retries, errors.

Everything that leaves this module as an exception is one of ours (errors.py),
its message free of tokens and client secrets.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from reconciler import __version__
from reconciler.errors import (
    ApiError,
    AuthError,
    ConfigError,
    CredentialsError,
    ShapeError,
    TransportError,
    UncertainWriteError,
)
from reconciler.escape import add_secrets, plural, redact, without_userinfo
from reconciler.kinds import Kind
from reconciler.logs import debug
from reconciler.schedule import Budget, Interrupted
from reconciler.urls import AUDIENCE, DEFAULT_API_URL, DEFAULT_AUTH_URL
from reconciler.wire import Abandoned as Cut
from reconciler.wire import (
    Answer,
    ConnectError,
    NetworkError,
    RemoteProtocolError,
    TimeoutException,
    Wire,
    WireError,
    proxies_configured,
)

RETRYABLE_STATUS = frozenset({408, 500, 502, 503, 504})
MAX_RATE_LIMITED_IN_A_ROW = 10
BACKOFF_BASE = 0.25
BACKOFF_CAP = 8.0
USER_AGENT = f"reconciler/{__version__}"
PAGE_SIZE = 100
# A kind's list longer than this is an error, never an endless read (a server whose
# cursor never ends, or a list no Project really holds).
MAX_PAGES = 1_000
MAX_OBJECTS = 100_000


@dataclass(frozen=True)
class AccessToken:
    """A bearer token given directly (a Developer token, or one minted elsewhere)."""

    token: str = field(repr=False)
    source: str = "OYSTEHR_ACCESS_TOKEN"


@dataclass(frozen=True)
class ClientCredentials:
    """An M2M client: exchanged for a token once per (auth URL, client id) per run."""

    client_id: str = field(repr=False)
    client_secret: str = field(repr=False)
    source: str = "OYSTEHR_CLIENT_ID"  # the variable holding the id: messages name it


Credentials = AccessToken | ClientCredentials

GLOBAL_CREDENTIALS = ("OYSTEHR_ACCESS_TOKEN", "OYSTEHR_CLIENT_ID", "OYSTEHR_CLIENT_SECRET")
_UNSAFE_IN_CREDENTIAL = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")


def check_credentials(names: Iterable[str], env: Mapping[str, str]) -> None:
    """Refuse, naming the variable (never its value), a credential holding whitespace or
    a control character: a pasted newline would otherwise travel into a header."""
    bad = [name for name in names if _UNSAFE_IN_CREDENTIAL.search(env.get(name) or "")]
    if bad:
        raise ConfigError(
            f"{', '.join(bad)} {'holds' if len(bad) == 1 else 'hold'} whitespace or a control "
            "character (a pasted newline?); set the value alone"
        )


def resolve_credentials(auth: Mapping[str, str] | None, env: Mapping[str, str]) -> Credentials:
    """The credentials a Project's file points at; a name the file gives must be set.

    Without an `auth` block: OYSTEHR_ACCESS_TOKEN, else OYSTEHR_CLIENT_ID + OYSTEHR_CLIENT_SECRET.
    """
    if auth:
        missing = [name for name in auth.values() if not env.get(name)]
        if missing:
            names = ", ".join(missing)
            raise CredentialsError(f"auth names environment variable(s) that are not set: {names}")
        check_credentials(auth.values(), env)
        if "accessTokenEnv" in auth:
            return AccessToken(env[auth["accessTokenEnv"]], source=auth["accessTokenEnv"])
        return ClientCredentials(
            env[auth["clientIdEnv"]], env[auth["clientSecretEnv"]], source=auth["clientIdEnv"]
        )
    check_credentials(GLOBAL_CREDENTIALS, env)
    if env.get("OYSTEHR_ACCESS_TOKEN"):
        return AccessToken(env["OYSTEHR_ACCESS_TOKEN"])
    client_id, secret = env.get("OYSTEHR_CLIENT_ID"), env.get("OYSTEHR_CLIENT_SECRET")
    if client_id and secret:
        return ClientCredentials(client_id, secret)
    if client_id or secret:
        have, lack = (
            ("OYSTEHR_CLIENT_ID", "OYSTEHR_CLIENT_SECRET")
            if client_id
            else ("OYSTEHR_CLIENT_SECRET", "OYSTEHR_CLIENT_ID")
        )
        raise CredentialsError(f"{have} is set but {lack} is not: an M2M client needs both")
    raise CredentialsError(
        "no credentials: set OYSTEHR_ACCESS_TOKEN, or OYSTEHR_CLIENT_ID and "
        "OYSTEHR_CLIENT_SECRET, or name variables in the file's auth block"
    )


def auth_key(auth: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    """An auth block as a key: the Projects naming the same variables (or none) share
    their credentials, which a run resolves and checks once, not once per Project."""
    return tuple(sorted((auth or {}).items()))


def check_url(url: str, what: str) -> str:
    """`url` when it is https:// (or http:// to this machine) without user:pass@."""
    shown = without_userinfo(url)
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        parts, host = None, None
    if parts is None or parts.scheme not in ("http", "https") or not host:
        raise ConfigError(
            f"{what} {shown!r} must start with https:// (or http:// for loopback), "
            "like https://project-api.zapehr.com/v1"
        )
    if "@" in parts.netloc:
        raise ConfigError(
            f"{what} must not hold credentials (user:pass@): give them in the environment "
            "(OYSTEHR_ACCESS_TOKEN, or OYSTEHR_CLIENT_ID and OYSTEHR_CLIENT_SECRET)"
        )
    if parts.scheme == "http" and not _loopback(host):
        raise ConfigError(
            f"{what} {shown} must use https://: plain http:// is only for loopback "
            "(localhost, 127.0.0.0/8, ::1), so a token never crosses a network in the clear"
        )
    return url


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def same_url(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


class ProjectApi:
    """One run's connection to the Project API; safe to share between threads.

    Every request, token requests included, takes a slot of the run's `budget`
    (schedule.Budget) while it is in flight: that is what bounds the run's requests and
    shares a rate limit's pause between threads.
    """

    def __init__(
        self,
        api_url: str = DEFAULT_API_URL,
        *,
        auth_url: str = DEFAULT_AUTH_URL,
        timeout: float = 30.0,
        retries: int = 4,
        max_connections: int = 16,
        transport: Any = None,
        sleep: Callable[[float], Any] | None = None,
        budget: Budget | None = None,
    ) -> None:
        self.api_url = check_url(api_url, "--api-url (OYSTEHR_PROJECT_API_URL)").rstrip("/")
        self.auth_url = check_url(auth_url, "--auth-url (OYSTEHR_AUTH_URL)")
        self.retries = retries
        self._aborted = threading.Event()
        self.budget = budget or Budget(max_connections)
        self._api_origin, self._auth_origin = _origin(self.api_url), _origin(self.auth_url)
        # Backoff waits end early when the run is interrupted.
        self._sleep = sleep or self._aborted.wait
        # Requests go straight to the wire (standard library only; see wire.py), unless a
        # proxy is configured or an httpx transport is given (a test's, say): then httpx.
        if transport is None and not proxies_configured():
            self._sender: Any = Wire()
        else:
            from reconciler.transport import ClientTransport, HttpxSender

            self._sender = HttpxSender(
                transport or ClientTransport(max_connections=max_connections)
            )
        self._timeout = timeout
        self._tokens: dict[tuple[str, str], str] = {}
        self._remembered: set[str] = set()
        self._token_locks: dict[tuple[str, str], threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def __enter__(self) -> ProjectApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sender.close()

    def abort(self) -> None:
        """The run was interrupted: cut the requests in flight, send no more. Threads
        waiting on an answer get a TransportError at once."""
        self._aborted.set()
        self.budget.abort()
        self._sender.abort()

    # The Project API --------------------------------------------------------------

    def get_project(self, project_id: str, credentials: Credentials) -> dict[str, Any]:
        answer = self._call("GET", "/project", project_id, credentials)
        return expect_project(answer, f"GET {self.api_url}/project")

    def patch_project(
        self, project_id: str, credentials: Credentials, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        """PATCH /project. Once the PATCH has been answered 2xx, an answer that cannot be
        read says so: the write may have happened."""
        try:
            answer = self._call("PATCH", "/project", project_id, credentials, body=dict(body))
            return expect_project(answer, f"PATCH {self.api_url}/project")
        except (ShapeError, NotJson) as exc:
            raise type(exc)(
                f"{exc}; the PATCH was sent and may have been applied: plan again to see"
            ) from None

    def list_roles(self, project_id: str, credentials: Credentials) -> list[dict[str, Any]]:
        what = f"GET {self.api_url}/iam/role"
        roles = expect_list_of_objects(
            self._call("GET", "/iam/role", project_id, credentials), what
        )
        for index, role in enumerate(roles):
            expect_object(role, f"{what}[{index}]", required=("id",))
            expect(role["id"], str, f"{what}[{index}].id")
            expect(role.get("name"), (str, type(None)), f"{what}[{index}].name")
        return roles

    # Objects of a kind (SPEC section 9) ------------------------------------------------

    def list_objects(self, kind: Kind, project_id: str, credentials: Credentials) -> list[dict]:
        """Every live object of a kind: every page of a paged list, never more."""
        pages = Pages(f"GET {self.api_url}{kind.list_path}")
        cursor = None
        while True:
            items, cursor = self.list_page(kind, project_id, credentials, cursor)
            if not pages.add(items, cursor):
                return pages.items

    def list_page(
        self, kind: Kind, project_id: str, credentials: Credentials, cursor: str | None = None
    ) -> tuple[list[dict], str | None]:
        """One page of a kind's list and the cursor of the next (None: the last page; an
        unpaged list is one page). `Pages` bounds the whole."""
        what = f"GET {self.api_url}{kind.list_path}"
        if not kind.paged:
            return _objects(self._call("GET", kind.list_path, project_id, credentials), what), None
        query = f"?limit={PAGE_SIZE}"
        if cursor:
            query += f"&cursor={quote(cursor, safe='')}"
        page = self._call("GET", kind.list_path + query, project_id, credentials)
        page = expect_object(page, what, required=("data",))
        items = _objects(page["data"], f"{what}: data")
        metadata = expect(page.get("metadata") or {}, dict, f"{what}: metadata")
        cursor = expect(metadata.get("nextCursor"), (str, type(None)), f"{what}: nextCursor")
        return items, cursor or None

    def get_object(
        self, kind: Kind, project_id: str, credentials: Credentials, object_id: str
    ) -> dict:
        answer = self._call("GET", kind.path_of(object_id), project_id, credentials)
        return _object(answer, f"GET {self.api_url}{kind.item_path}")

    def create_object(
        self, kind: Kind, project_id: str, credentials: Credentials, body: Mapping[str, Any]
    ) -> dict:
        """POST once: a create that may have run is never retried here (the caller re-lists)."""
        answer = self._call(
            "POST", kind.create_path, project_id, credentials, body=dict(body), idempotent=False
        )
        return _object(answer, f"POST {self.api_url}{kind.create_path}")

    def update_object(
        self,
        kind: Kind,
        project_id: str,
        credentials: Credentials,
        object_id: str,
        body: Mapping[str, Any],
    ) -> dict:
        answer = self._call(
            "PATCH", kind.path_of(object_id), project_id, credentials, body=dict(body)
        )
        return _object(answer, f"PATCH {self.api_url}{kind.item_path}")

    def delete_object(
        self, kind: Kind, project_id: str, credentials: Credentials, object_id: str
    ) -> None:
        try:
            self._call("DELETE", kind.path_of(object_id), project_id, credentials)
        except ApiError as exc:
            if exc.status != 404:  # already gone (a retried DELETE that had run): done
                raise

    def m2m_me(self, project_id: str, credentials: Credentials) -> dict:
        """The M2M client these credentials belong to."""
        answer = self._call("GET", "/m2m/me", project_id, credentials)
        return _object(answer, f"GET {self.api_url}/m2m/me")

    # Plumbing ---------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        project_id: str,
        credentials: Credentials,
        *,
        body: Any = None,
        idempotent: bool = True,
    ) -> Any:
        """One API call; a 401 with an M2M token fetches a fresh token once."""
        for fresh_token in (False, True):
            token = self._token(credentials, fresh=fresh_token)
            headers = {
                "authorization": f"Bearer {token}",
                "x-oystehr-project-id": project_id,
                "x-zapehr-project-id": project_id,
                "content-type": "application/json",
            }
            response = self._send(
                method, self.api_url + path, headers=headers, json=body, idempotent=idempotent
            )
            expired = response.status_code == 401 and isinstance(credentials, ClientCredentials)
            if expired and not fresh_token:
                continue
            return self._decode(response, f"{method} {self.api_url}{path}")
        raise AssertionError("unreachable")

    def _token(self, credentials: Credentials, *, fresh: bool = False) -> str:
        if isinstance(credentials, AccessToken):
            self._remember_secret(credentials.token)
            return credentials.token
        self._remember_secret(credentials.client_secret)
        if same_url(self.auth_url, DEFAULT_AUTH_URL) and not same_url(
            self.api_url, DEFAULT_API_URL
        ):
            raise ConfigError(
                f"refusing to send an M2M client secret to {DEFAULT_AUTH_URL} while the API is "
                f"{self.api_url}: pass --auth-url (or OYSTEHR_AUTH_URL) for that API"
            )
        key = (self.auth_url, credentials.client_id)
        with self._locks_guard:
            lock = self._token_locks.setdefault(key, threading.Lock())
        # One fetch per client even when many Projects ask at once: the others wait here.
        with lock:
            if fresh:
                self._tokens.pop(key, None)
            if key not in self._tokens:
                self._tokens[key] = self._fetch_token(credentials)
            return self._tokens[key]

    def _fetch_token(self, credentials: ClientCredentials) -> str:
        body = {
            "grant_type": "client_credentials",
            "client_id": credentials.client_id,
            "client_secret": credentials.client_secret,
            "audience": AUDIENCE,
        }
        response = self._send(
            "POST", self.auth_url, headers={"content-type": "application/json"}, json=body
        )
        if response.status_code in (400, 401, 403):
            message = self._message(response)
            raise AuthError(
                f"token request for the M2M client in {credentials.source} refused "
                f"({response.status_code}): {message}",
                status=response.status_code,
            )
        doc = self._decode(response, f"POST {self.auth_url}", auth=True)
        token = doc.get("access_token") if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            raise TransportError(f"{self.auth_url} answered without an access_token")
        self._remember_secret(token)
        return token

    def _send(self, method: str, url: str, **kwargs: Any) -> Answer:
        """Send with retries: backoff with jitter on 408/5xx and connection errors,
        Retry-After on 429 (not counted against --retries, at most 10 in a row; the
        budget's shared pause does the waiting)."""
        headers = kwargs.pop("headers")
        idempotent = kwargs.pop("idempotent", True)
        doc = kwargs.pop("json", None)
        body = None
        if doc is not None:
            body = json.dumps(doc, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
            body = body.encode()
        attempt = 0
        rate_limited = 0
        while True:
            if self._aborted.is_set():
                raise TransportError(f"{method} {url}: not sent: the run was interrupted")
            request_id = _request_id()
            sent = [
                *headers.items(),
                ("user-agent", USER_AGENT),
                ("x-oystehr-request-id", request_id),
            ]
            try:
                origin = self._auth_origin if url == self.auth_url else self._api_origin
                with self.budget.slot(origin) as slot:
                    started = time.monotonic()
                    response = self._sender.send(
                        method,
                        url,
                        sent,
                        body,
                        timeout=self._timeout,
                        connect_timeout=self._timeout,
                    )
                    slot.answered(response.status_code, response.headers.get("retry-after"))
            except (Interrupted, Cut) as exc:
                raise TransportError(f"{method} {url}: {exc}") from None
            except (TimeoutException, NetworkError, RemoteProtocolError) as exc:
                if not idempotent and not isinstance(exc, ConnectError):
                    raise UncertainWriteError(
                        f"{method} {url}: {type(exc).__name__}; it may have been carried out"
                    ) from None
                if attempt >= self.retries:
                    raise TransportError(
                        f"{method} {url}: {self._redact(str(exc)) or type(exc).__name__} "
                        f"(after {plural(attempt + 1, 'attempt')})"
                    ) from None
                attempt += 1
                self._backoff(attempt, f"{method} {url}: {type(exc).__name__}")
                continue
            except WireError as exc:
                raise TransportError(f"{method} {url}: {self._redact(str(exc))}") from None
            debug(
                __name__,
                "%s %s -> %s in %.0f ms (request %s)",
                method,
                url,
                response.status_code,
                (time.monotonic() - started) * 1000,
                request_id,
            )
            if response.status_code == 429 and rate_limited < MAX_RATE_LIMITED_IN_A_ROW:
                # The budget holds every new request to this API until Retry-After: this
                # one too, once it asks for a slot again.
                rate_limited += 1
                continue
            rate_limited = 0
            if not idempotent and response.status_code in RETRYABLE_STATUS:
                raise UncertainWriteError(
                    f"{method} {url} answered {response.status_code}; it may have been carried out"
                )
            if response.status_code in RETRYABLE_STATUS and attempt < self.retries:
                attempt += 1
                self._backoff(attempt, f"{method} {url}: {response.status_code}")
                continue
            return response

    def _backoff(self, attempt: int, why: str) -> None:
        import random  # here, not at the top: most runs never retry

        # Full jitter: a fleet retrying in lockstep would hit the API in waves.
        delay = random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 1)))
        debug(__name__, "%s; retry %d of %d in %.2f s", why, attempt, self.retries, delay)
        self._sleep(delay)

    def _decode(self, response: Answer, what: str, *, auth: bool = False) -> Any:
        """The answer's JSON, or one line saying what went wrong: status, what was sent
        back (never an HTML page itself) and, where it helps, which URL to check."""
        status = response.status_code
        if 300 <= status < 400:
            raise ApiError(f"{what} answered {status}: redirects are not followed", status=status)
        doc = _json_or_none(response)
        if status >= 400:
            error = AuthError if status in (401, 403) else ApiError
            if isinstance(doc, dict) and isinstance(doc.get("message"), str):
                message = f"{what} answered {status}: {redact(doc['message'])}"
            else:
                message = f"{what} answered {status} with {self._content(response)}"
            raise error(
                message + self._hint(status, doc, auth),
                status=status,
                code=doc.get("code") if isinstance(doc, dict) else None,
            )
        if status == 204 and not response.content:
            return None  # a DELETE's answer: nothing to say
        if doc is None:
            raise NotJson(
                f"{what} answered {status} with {self._content(response)}, not JSON"
                + self._hint(status, doc, auth, always=True)
            )
        return doc

    @staticmethod
    def _content(response: Answer) -> str:
        kind = response.headers.get("content-type", "").split(";")[0].strip()
        if not response.content:
            return "an empty body"
        return f"a {kind} page" if kind else "a body of no content type"

    def _hint(self, status: int, doc: Any, auth: bool, *, always: bool = False) -> str:
        """Which URL to check, when the answer does not look like the API's."""
        foreign = always or not isinstance(doc, dict)
        if auth:
            if not foreign:
                return ""
            return (
                f"; is the auth URL right? {without_userinfo(self.auth_url)} should be the "
                "OAuth token endpoint (--auth-url)"
            )
        if status == 404 and not self.api_url.endswith("/v1"):
            return "; is the API URL right? it should end in /v1"
        if not foreign:
            return ""
        if status >= 500:
            return "; the server, or a proxy in front of it, failed"
        return "; is the API URL right? (--api-url)"

    def _message(self, response: Answer) -> str:
        doc = _json_or_none(response)
        if isinstance(doc, dict) and isinstance(doc.get("message"), str):
            return redact(doc["message"])
        return f"{response.status_code} with {self._content(response)}"

    def _remember_secret(self, secret: str) -> None:
        if secret not in self._remembered:  # once each: every request passes here
            add_secrets([secret])
            self._remembered.add(secret)

    def _redact(self, text: str) -> str:
        return redact(text)


class NotJson(TransportError):
    """A 2xx answer whose body is not JSON."""


def expect_project(value: Any, what: str) -> dict[str, Any]:
    """A Project as GET/PATCH /project answers it: an object whose known fields have
    their types, roles as {id, name} objects or absent/null."""
    project = expect_object(value, what)
    for key, types in _PROJECT_TYPES.items():
        if key in project:
            expect(project[key], types, f"{what}: {key}")
    for key in ("defaultPatientRole", "defaultSSOUserRole"):
        role = project.get(key)
        if role is not None:
            expect_object(role, f"{what}: {key}", required=("id",))
            expect(role["id"], str, f"{what}: {key}.id")
            expect(role.get("name"), (str, type(None)), f"{what}: {key}.name")
    return project


_PROJECT_TYPES: dict[str, type | tuple[type, ...]] = {
    "id": str,
    "name": str,
    "description": (str, type(None)),
    "signupEnabled": bool,
    "sandbox": bool,
    "fhirVersion": str,
}


# Shape checks for JSON from outside (API answers, plan files) ------------------------
# Each returns the value when it has the shape, and raises ShapeError("WHAT: expected …,
# got …") otherwise, so a caller checks and uses in one line:
#     project = expect_object(answer, "GET /project", required=("id",))

_TYPE_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer"}
_TYPE_NAMES |= {bool: "a boolean", float: "a number", type(None): "null"}


def expect(value: Any, types: type | tuple[type, ...], what: str) -> Any:
    """`value` when it is one of `types` (a boolean is never taken for an integer)."""
    if isinstance(value, types) and (value.__class__ is not bool or _admits_bool(types)):
        return value
    wanted = types if isinstance(types, tuple) else (types,)
    names = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in wanted)
    raise ShapeError(f"{what}: expected {names}, got {describe_json(value)}")


def _admits_bool(types: type | tuple[type, ...]) -> bool:
    return types is bool or (isinstance(types, tuple) and bool in types)


def expect_object(
    value: Any,
    what: str,
    *,
    required: tuple[str, ...] = (),
    only: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """`value` when it is an object holding every `required` key (and, with `only`, no
    other key)."""
    expect(value, dict, what)
    if only is not None:
        unknown = [key for key in value if key not in only]
        if unknown:
            raise ShapeError(f"{what}: unknown key {describe_json(unknown[0])}")
    missing = [key for key in required if key not in value]
    if missing:
        raise ShapeError(f"{what}: missing key {missing[0]!r}")
    return value


def expect_list_of_objects(value: Any, what: str) -> list[dict[str, Any]]:
    """`value` when it is a list whose every item is an object."""
    for index, item in enumerate(expect(value, list, what)):
        expect(item, dict, f"{what}[{index}]")
    return value


def describe_json(value: Any, limit: int = 80) -> str:
    """A JSON value as a message shows it, shortened: the document may hold anything."""
    text = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _object(value: Any, what: str) -> dict:
    """An API object: a JSON object with a string id."""
    expect(expect_object(value, what, required=("id",))["id"], str, f"{what}.id")
    return value


def _objects(value: Any, what: str) -> list[dict]:
    """An API list: objects each with a string id and a string name."""
    for index, item in enumerate(expect_list_of_objects(value, what)):
        _object(item, f"{what}[{index}]")
        expect(item.get("name"), str, f"{what}[{index}].name")
    return value


def _json_or_none(response: Answer) -> Any:
    try:
        return json.loads(response.content)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _request_id() -> str:
    """A random (version 4) UUID, without importing uuid (which imports platform)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class Pages:
    """A kind's list as it is read, page after page: at most MAX_PAGES pages and
    MAX_OBJECTS objects, and a cursor that repeats is an error, not a loop."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.items: list[dict] = []
        self.pages = 0
        self._cursors: set[str] = set()

    def add(self, items: list[dict], cursor: str | None) -> bool:
        """Take in a page; True when there is a next one to read (at `cursor`)."""
        self.pages += 1
        self.items += items
        if len(self.items) > MAX_OBJECTS:
            raise ShapeError(
                f"{self.what}: more than {MAX_OBJECTS:,} objects; refusing to read further"
            )
        if not cursor:
            return False
        if cursor in self._cursors:
            raise ShapeError(f"{self.what}: nextCursor repeats; refusing to loop")
        if self.pages >= MAX_PAGES:
            raise ShapeError(
                f"{self.what}: more than {MAX_PAGES:,} pages; refusing to read further"
            )
        self._cursors.add(cursor)
        return True
