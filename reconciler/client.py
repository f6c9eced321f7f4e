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
from reconciler.secretvalues import SecretValue
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
# ... nor one whose pages hold more JSON values than this in all (a page of fat objects
# behind a cursor that never ends grew a plan past 20 GB before the page bound).
MAX_LIST_VALUES = 4_000_000


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
            raise CredentialsError(
                f"auth names environment variable(s) that are not set: {names} (export the "
                "Project's credentials under those names; in CI the workflows map them from "
                "the secrets `reconciler init` lists)"
            )
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
        # A concealed kind's answer (secrets) may hold values: no message quotes it.
        quoted = not kind.concealed
        sizes: list[int] = []  # the answer's JSON values, which Pages bounds in all
        if not kind.paged:
            answer = self._call("GET", kind.list_path, project_id, credentials, sizes=sizes)
            items = _objects(answer, what, kind.key_field, quoted=quoted)
            return PageItems(items, sum(sizes)), None
        query = f"?limit={PAGE_SIZE}"
        if cursor:
            query += f"&cursor={quote(cursor, safe='')}"
        page = self._call("GET", kind.list_path + query, project_id, credentials, sizes=sizes)
        page = expect_object(page, what, required=("data",), quoted=quoted)
        items = _objects(page["data"], f"{what}: data", kind.key_field, quoted=quoted)
        metadata = expect(page.get("metadata") or {}, dict, f"{what}: metadata")
        cursor = expect(metadata.get("nextCursor"), (str, type(None)), f"{what}: nextCursor")
        return PageItems(items, sum(sizes)), cursor or None

    def get_object(
        self, kind: Kind, project_id: str, credentials: Credentials, object_id: str
    ) -> dict:
        answer = self._call("GET", kind.path_of(object_id), project_id, credentials)
        return _object(answer, f"GET {self.api_url}{kind.item_path}")

    def create_object(
        self, kind: Kind, project_id: str, credentials: Credentials, body: Mapping[str, Any]
    ) -> dict:
        """POST once: a create that may have run is never retried here (the caller re-lists).
        A kind created with PUT (a bucket) is PUT at its name, with no body: that may be
        retried, since a second PUT of the same name changes nothing."""
        if kind.create_put:
            path = kind.path_of(body["name"])
            answer = self._call("PUT", path, project_id, credentials)
            return _object(answer, f"PUT {self.api_url}{kind.item_path}", kind.key_field)
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

    # Values that are never shown (secrets: SPEC section 13) -----------------------------

    def read_value(
        self, kind: Kind, project_id: str, credentials: Credentials, name: str
    ) -> SecretValue:
        """A secret's live value (`GET /secret/{name}` → `{name, value}`), held as a
        SecretValue at once; no message about the answer ever quotes it."""
        what = f"GET {self.api_url}{kind.item_path}"
        answer = self._call("GET", kind.path_of(name), project_id, credentials)
        value = answer.get("value") if isinstance(answer, dict) else None
        if not isinstance(value, str) or answer.get("name") != name:
            raise ShapeError(f"{what} did not answer with that secret's name and a string value")
        return SecretValue(value)

    def write_value(
        self,
        kind: Kind,
        project_id: str,
        credentials: Credentials,
        name: str,
        value: SecretValue,
        *,
        retries: int | None = None,
    ) -> None:
        """`POST /secret` `{name, value}` (creates or replaces, so it may be retried with
        the same value). The answer echoes the value: only its name is checked, then it is
        dropped."""
        what = f"POST {self.api_url}{kind.create_path}"
        body = {"name": name, "value": value.reveal()}
        answer = self._call(
            "POST",
            kind.create_path,
            project_id,
            credentials,
            body=body,
            retries=retries,
            sent=value,
        )
        named = answer.get("name") if isinstance(answer, dict) else None
        del answer, body
        if named != name:
            raise ShapeError(f"{what} did not answer with the secret's name")

    def rotate_secret(
        self, kind: Kind, project_id: str, credentials: Credentials, object_id: str
    ) -> SecretValue:
        """`POST {item}/rotate-secret` → `{secret}`: the client's new secret, redacted
        from all output from now on. Never retried blindly: a rotation that may have run
        has already made the old secret useless."""
        path = kind.path_of(object_id) + "/rotate-secret"
        what = f"POST {self.api_url}{kind.item_path}/rotate-secret"
        answer = self._call("POST", path, project_id, credentials, idempotent=False)
        secret = answer.get("secret") if isinstance(answer, dict) else None
        if not isinstance(secret, str) or not secret:
            raise ShapeError(f"{what} did not answer with a secret")
        return SecretValue(secret).redact()

    def start_upload(
        self,
        kind: Kind,
        project_id: str,
        credentials: Credentials,
        object_id: str,
        filename: str,
    ) -> str:
        """POST {item}/s3-upload: a signed URL to PUT the object's code to. The URL is a
        bearer credential: it joins the redaction set before anything else is done with
        it, and no message or log ever holds it."""
        what = f"POST {self.api_url}{kind.item_path}/s3-upload"
        path = kind.path_of(object_id) + "/s3-upload"
        answer = self._call("POST", path, project_id, credentials, body={"filename": filename})
        url = answer.get("signedUrl") if isinstance(answer, dict) else None
        if not isinstance(url, str):
            raise ShapeError(f"{what}: expected an object with a signedUrl string")  # no value
        hide_signed_url(url)
        check_upload_url(url, self.api_url, what)
        return url

    def put_upload(self, url: str, data: bytes) -> None:
        """PUT the bytes to a signed URL: no Authorization header (the URL is the
        credential), redirects never followed, the URL never shown."""
        shown = "PUT <signed upload URL>"
        # Big zips take longer than a call: a second more per MB.
        timeout = self._timeout + len(data) / 2**20
        response = self._send(
            "PUT", url, headers={}, content=data, shown=shown, timeout=timeout, api=False
        )
        status = response.status_code
        if 300 <= status < 400:
            raise ApiError(f"{shown} answered {status}: redirects are not followed", status=status)
        if status >= 300:
            doc = _error_json(response)
            said = doc.get("message") if isinstance(doc, dict) else None
            detail = f": {redact(said)}" if isinstance(said, str) else ""
            raise ApiError(f"{shown} answered {status}{detail}", status=status)

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
        retries: int | None = None,
        sent: SecretValue | None = None,
        sizes: list[int] | None = None,
    ) -> Any:
        """One API call; a 401 with an M2M token fetches a fresh token once. `retries`
        overrides --retries for this call; `sent`: a secret value the body carries, which
        an error answer may echo (its message is then not shown); `sizes` gets the
        answer's count of JSON values."""
        for fresh_token in (False, True):
            token = self._token(credentials, fresh=fresh_token)
            headers = {
                "authorization": f"Bearer {token}",
                "x-oystehr-project-id": project_id,
                "x-zapehr-project-id": project_id,
                "content-type": "application/json",
            }
            response = self._send(
                method,
                self.api_url + path,
                headers=headers,
                json=body,
                idempotent=idempotent,
                retries=retries,
            )
            expired = response.status_code == 401 and isinstance(credentials, ClientCredentials)
            if expired and not fresh_token:
                continue
            if sizes is not None:
                sizes.append(json_values(response.content))
            return self._decode(response, f"{method} {self.api_url}{path}", sent=sent)
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
        retries = kwargs.pop("retries", None)
        retries = self.retries if retries is None else retries
        doc = kwargs.pop("json", None)
        body = kwargs.pop("content", None)
        # What messages and the log say instead of the URL (a signed URL is a credential).
        shown_url = kwargs.pop("shown", None)
        timeout = kwargs.pop("timeout", self._timeout)
        api = kwargs.pop("api", True)  # False: not the API (no request id; own origin)
        if doc is not None:
            body = json.dumps(doc, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
            body = body.encode()
        method_url = shown_url if shown_url is not None else f"{method} {url}"
        attempt = 0
        rate_limited = 0
        while True:
            if self._aborted.is_set():
                raise TransportError(f"{method_url}: not sent: the run was interrupted")
            request_id = _request_id()
            sent = [*headers.items(), ("user-agent", USER_AGENT)]
            if api:
                sent.append(("x-oystehr-request-id", request_id))
            try:
                if url == self.auth_url:
                    origin = self._auth_origin
                else:
                    origin = self._api_origin if api else _origin(url)
                with self.budget.slot(origin) as slot:
                    started = time.monotonic()
                    response = self._sender.send(
                        method,
                        url,
                        sent,
                        body,
                        timeout=timeout,
                        connect_timeout=self._timeout,
                    )
                    slot.answered(response.status_code, response.headers.get("retry-after"))
            except (Interrupted, Cut) as exc:
                raise TransportError(f"{method_url}: {exc}") from None
            except (TimeoutException, NetworkError, RemoteProtocolError) as exc:
                if not idempotent and not isinstance(exc, ConnectError):
                    raise UncertainWriteError(
                        f"{method_url}: {type(exc).__name__}; it may have been carried out"
                    ) from None
                if attempt >= retries:
                    raise TransportError(
                        f"{method_url}: {self._redact(str(exc)) or type(exc).__name__} "
                        f"(after {plural(attempt + 1, 'attempt')})"
                    ) from None
                attempt += 1
                self._backoff(attempt, retries, f"{method_url}: {type(exc).__name__}")
                continue
            except WireError as exc:
                raise TransportError(f"{method_url}: {self._redact(str(exc))}") from None
            debug(
                __name__,
                "%s -> %s in %.0f ms (request %s)",
                method_url,
                response.status_code,
                (time.monotonic() - started) * 1000,
                request_id if api else "-",
            )
            if response.status_code == 429 and rate_limited < MAX_RATE_LIMITED_IN_A_ROW:
                # The budget holds every new request to this API until Retry-After: this
                # one too, once it asks for a slot again.
                rate_limited += 1
                continue
            rate_limited = 0
            if not idempotent and response.status_code in RETRYABLE_STATUS:
                raise UncertainWriteError(
                    f"{method_url} answered {response.status_code}; it may have been carried out"
                )
            if response.status_code in RETRYABLE_STATUS and attempt < retries:
                attempt += 1
                self._backoff(attempt, retries, f"{method_url}: {response.status_code}")
                continue
            return response

    def _backoff(self, attempt: int, retries: int, why: str) -> None:
        import random  # here, not at the top: most runs never retry

        # Full jitter: a fleet retrying in lockstep would hit the API in waves.
        delay = random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 1)))
        debug(__name__, "%s; retry %d of %d in %.2f s", why, attempt, retries, delay)
        self._sleep(delay)

    def _decode(
        self, response: Answer, what: str, *, auth: bool = False, sent: SecretValue | None = None
    ) -> Any:
        """The answer's JSON, or one line saying what went wrong: status, what was sent
        back (never an HTML page itself) and, where it helps, which URL to check."""
        status = response.status_code
        if 300 <= status < 400:
            raise ApiError(f"{what} answered {status}: redirects are not followed", status=status)
        try:
            doc = _json_or_none(response)
        except UnusableJson as exc:
            raise UnusableJson(f"{what} answered {status} with JSON {exc}") from None
        if status >= 400:
            error = AuthError if status in (401, 403) else ApiError
            said = doc.get("message") if isinstance(doc, dict) else None
            if isinstance(said, str) and sent is not None and sent.quoted_in(said):
                # A server that echoes what it was sent would print the value.
                message = f"{what} answered {status} (its message quotes the value: not shown)"
            elif isinstance(said, str):
                message = f"{what} answered {status}: {redact(said)}"
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
        doc = _error_json(response)
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


def expect(value: Any, types: type | tuple[type, ...], what: str, *, quoted: bool = True) -> Any:
    """`value` when it is one of `types` (a boolean is never taken for an integer). Not
    `quoted`, a message names only the type of what it got (an answer that may hold
    secret values)."""
    if isinstance(value, types) and (value.__class__ is not bool or _admits_bool(types)):
        return value
    wanted = types if isinstance(types, tuple) else (types,)
    names = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in wanted)
    got = describe_json(value) if quoted else _TYPE_NAMES.get(type(value), "something else")
    raise ShapeError(f"{what}: expected {names}, got {got}")


def _admits_bool(types: type | tuple[type, ...]) -> bool:
    return types is bool or (isinstance(types, tuple) and bool in types)


def expect_object(
    value: Any,
    what: str,
    *,
    required: tuple[str, ...] = (),
    only: tuple[str, ...] | None = None,
    quoted: bool = True,
) -> dict[str, Any]:
    """`value` when it is an object holding every `required` key (and, with `only`, no
    other key)."""
    expect(value, dict, what, quoted=quoted)
    if only is not None:
        unknown = [key for key in value if key not in only]
        if unknown:
            raise ShapeError(f"{what}: unknown key {describe_json(unknown[0])}")
    missing = [key for key in required if key not in value]
    if missing:
        raise ShapeError(f"{what}: missing key {missing[0]!r}")
    return value


def expect_list_of_objects(value: Any, what: str, *, quoted: bool = True) -> list[dict[str, Any]]:
    """`value` when it is a list whose every item is an object."""
    for index, item in enumerate(expect(value, list, what, quoted=quoted)):
        expect(item, dict, f"{what}[{index}]", quoted=quoted)
    return value


def describe_json(value: Any, limit: int = 80) -> str:
    """A JSON value as a message shows it, shortened: the document may hold anything."""
    text = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _object(value: Any, what: str, key: str = "id", *, quoted: bool = True) -> dict:
    """An API object: a JSON object with a string id (or the field that addresses it)."""
    found = expect_object(value, what, required=(key,), quoted=quoted)[key]
    expect(found, str, f"{what}.{key}", quoted=quoted)
    return value


def _objects(value: Any, what: str, key: str = "id", *, quoted: bool = True) -> list[dict]:
    """An API list: objects each with a string id (or `key`) and a string name."""
    for index, item in enumerate(expect_list_of_objects(value, what, quoted=quoted)):
        _object(item, f"{what}[{index}]", key, quoted=quoted)
        expect(item.get("name"), str, f"{what}[{index}].name", quoted=quoted)
    return value


# An answer nested deeper than this is refused (ours are a few levels deep): past it the
# code that compares and shows values would recurse until Python gives up.
MAX_ANSWER_DEPTH = 64
# ... or holding more values than this: 10 MB of `[],` would take 200 MB once parsed.
MAX_ANSWER_VALUES = 1_000_000
_LONE_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class UnusableJson(ShapeError):
    """An answer in JSON that no code past the client may see: nested deeper than
    MAX_ANSWER_DEPTH, or holding a string that is not Unicode (a lone surrogate)."""


def _json_or_none(response: Answer) -> Any:
    """The answer's JSON; None when it is not JSON (a number of thousands of digits
    included); UnusableJson for JSON the run must not carry on with."""
    raw = response.content
    if json_values(raw) > MAX_ANSWER_VALUES:  # before parsing: each costs memory once parsed
        raise UnusableJson(f"holding more than {MAX_ANSWER_VALUES:,} values")
    try:
        doc = json.loads(raw)
    except RecursionError:
        raise UnusableJson(f"nested deeper than {MAX_ANSWER_DEPTH} levels") from None
    except ValueError:  # JSONDecodeError, UnicodeDecodeError, int digits over the limit
        return None
    if raw.count(b"[") + raw.count(b"{") > MAX_ANSWER_DEPTH and _deeper_than(doc, MAX_ANSWER_DEPTH):
        raise UnusableJson(f"nested deeper than {MAX_ANSWER_DEPTH} levels")
    if _LONE_SURROGATE_ESCAPE.search(raw):  # "\\ud83d\\ude00" is fine; a lone half is not
        try:
            json.dumps(doc, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise UnusableJson("holding a string that is not Unicode (a lone surrogate)") from None
    return doc


def json_values(raw: bytes) -> int:
    """About how many values a JSON text holds (its commas and opening brackets, strings
    not set apart: an overcount), in C: what parsing it would cost in memory."""
    return raw.count(b",") + raw.count(b"[") + raw.count(b"{")


class PageItems(list):
    """A page's objects, and how many JSON values its answer held (what Pages bounds)."""

    def __init__(self, items: list[dict], values: int = 0) -> None:
        super().__init__(items)
        self.values = values


def _error_json(response: Answer) -> Any:
    """An error answer's JSON, for its message: None when it is not usable JSON."""
    try:
        return _json_or_none(response)
    except UnusableJson:
        return None


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether arrays and objects nest more than `limit` levels in a parsed value (one
    level at a time, never recursing)."""
    level, depth = [value], 0
    while level:
        depth += 1
        if depth > limit:
            return True
        below = []
        for item in level:
            if isinstance(item, (dict, list)):
                below.extend(item.values() if isinstance(item, dict) else item)
        level = [item for item in below if isinstance(item, (dict, list))]
    return False


def _request_id() -> str:
    """A random (version 4) UUID, without importing uuid (which imports platform)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def check_upload_url(url: str, api_url: str, what: str) -> None:
    """A signed URL code may be sent to: https (plain http only to this machine, while the
    API itself is on it: the emulator), no user:pass@. The message never holds the URL."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        parts, host = None, None
    if parts is not None and host and "@" not in parts.netloc:
        if parts.scheme == "https":
            return
        if (
            parts.scheme == "http"
            and _loopback(host)
            and _loopback(urlsplit(api_url).hostname or "")
        ):
            return
    raise ShapeError(
        f"{what}: the signed URL is not https:// (plain http:// only while the API is on "
        "this machine); nothing was uploaded"
    )


def hide_signed_url(url: str) -> None:
    """A signed URL's credential joins the redaction set: each long query value (an S3
    signature, credential or session token) and a long last path segment (the
    emulator's token), so the URL, or any part of it quoted alone, shows them as ***;
    the whole URL when it has neither. (Its host and path say nothing secret, and a
    short set keeps every later redaction fast: a plan may upload hundreds.)"""
    parts = urlsplit(url)
    pieces = [value for _, _, value in (p.partition("=") for p in parts.query.split("&"))]
    pieces.append(parts.path.rsplit("/", 1)[-1])
    secret = [piece for piece in pieces if len(piece) >= 16]
    add_secrets(secret or [url])


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
        self.values = 0
        self._cursors: set[str] = set()

    def add(self, items: list[dict], cursor: str | None) -> bool:
        """Take in a page (its answer's values counted when it is `PageItems`); True when
        there is a next one to read (at `cursor`)."""
        self.pages += 1
        self.items += items
        self.values += getattr(items, "values", 0)
        if len(self.items) > MAX_OBJECTS:
            raise ShapeError(
                f"{self.what}: more than {MAX_OBJECTS:,} objects; refusing to read further"
            )
        if self.values > MAX_LIST_VALUES:
            raise ShapeError(
                f"{self.what}: more than {MAX_LIST_VALUES:,} values in its pages; refusing to "
                "read further"
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
