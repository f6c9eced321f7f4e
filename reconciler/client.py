"""The Oystehr Project API: requests, tokens, headers, retries, errors.

Everything that leaves this module as an exception is one of ours (errors.py),
its message free of tokens and client secrets. The credentials it is given are
credentials.py's, the checks on what the server answers answers.py's, and the
checks on URLs urls.py's.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

from reconciler import __version__
from reconciler.answers import (
    NotJson,
    PageItems,
    Pages,
    UnusableJson,
    error_json,
    expect,
    expect_api_object,
    expect_api_objects,
    expect_list_of_objects,
    expect_object,
    expect_project,
    json_or_none,
    json_values,
)
from reconciler.credentials import AccessToken, ClientCredentials, Credentials
from reconciler.errors import (
    ApiError,
    AuthError,
    ConfigError,
    ShapeError,
    TransportError,
    UncertainWriteError,
)
from reconciler.escape import add_secrets, plural, redact, without_userinfo
from reconciler.kinds import Kind
from reconciler.logs import debug
from reconciler.schedule import Budget, Interrupted
from reconciler.secretvalues import SecretValue
from reconciler.urls import (
    AUDIENCE,
    DEFAULT_API_URL,
    DEFAULT_AUTH_URL,
    check_upload_url,
    check_url,
    hide_signed_url,
    origin_of,
    same_url,
)
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
        self._api_origin, self._auth_origin = origin_of(self.api_url), origin_of(self.auth_url)
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
            items = expect_api_objects(answer, what, kind.key_field, quoted=quoted)
            return PageItems(items, sum(sizes)), None
        query = f"?limit={PAGE_SIZE}"
        if cursor:
            query += f"&cursor={quote(cursor, safe='')}"
        page = self._call("GET", kind.list_path + query, project_id, credentials, sizes=sizes)
        page = expect_object(page, what, required=("data",), quoted=quoted)
        items = expect_api_objects(page["data"], f"{what}: data", kind.key_field, quoted=quoted)
        metadata = expect(page.get("metadata") or {}, dict, f"{what}: metadata")
        cursor = expect(metadata.get("nextCursor"), (str, type(None)), f"{what}: nextCursor")
        return PageItems(items, sum(sizes)), cursor or None

    def get_object(
        self, kind: Kind, project_id: str, credentials: Credentials, object_id: str
    ) -> dict:
        answer = self._call("GET", kind.path_of(object_id), project_id, credentials)
        return expect_api_object(answer, f"GET {self.api_url}{kind.item_path}")

    def create_object(
        self, kind: Kind, project_id: str, credentials: Credentials, body: Mapping[str, Any]
    ) -> dict:
        """POST once: a create that may have run is never retried here (the caller re-lists).
        A kind created with PUT (a bucket) is PUT at its name, with no body: that may be
        retried, since a second PUT of the same name changes nothing."""
        if kind.create_put:
            path = kind.path_of(body["name"])
            answer = self._call("PUT", path, project_id, credentials)
            return expect_api_object(answer, f"PUT {self.api_url}{kind.item_path}", kind.key_field)
        answer = self._call(
            "POST", kind.create_path, project_id, credentials, body=dict(body), idempotent=False
        )
        return expect_api_object(answer, f"POST {self.api_url}{kind.create_path}")

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
        return expect_api_object(answer, f"PATCH {self.api_url}{kind.item_path}")

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
            doc = error_json(response)
            said = doc.get("message") if isinstance(doc, dict) else None
            detail = f": {redact(said)}" if isinstance(said, str) else ""
            raise ApiError(f"{shown} answered {status}{detail}", status=status)

    def m2m_me(self, project_id: str, credentials: Credentials) -> dict:
        """The M2M client these credentials belong to."""
        answer = self._call("GET", "/m2m/me", project_id, credentials)
        return expect_api_object(answer, f"GET {self.api_url}/m2m/me")

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
                doc=body,
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
            "POST", self.auth_url, headers={"content-type": "application/json"}, doc=body
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

    def _send(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        doc: Any = None,
        content: bytes | None = None,
        idempotent: bool = True,
        retries: int | None = None,
        shown: str | None = None,
        timeout: float | None = None,
        api: bool = True,
    ) -> Answer:
        """Send with retries: backoff with jitter on 408/5xx and connection errors,
        Retry-After on 429 (not counted against --retries, at most 10 in a row; the
        budget's shared pause does the waiting). The body is `doc` as JSON, or
        `content`; `shown` is what messages and the log say instead of the URL (a
        signed URL is a credential); `api=False`: not the API (no request id; the URL's
        own origin)."""
        retries = self.retries if retries is None else retries
        timeout = self._timeout if timeout is None else timeout
        body = content
        if doc is not None:
            body = json.dumps(doc, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
            body = body.encode()
        method_url = shown if shown is not None else f"{method} {url}"
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
                    origin = self._api_origin if api else origin_of(url)
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
                        f"{method_url}: {redact(str(exc)) or type(exc).__name__} "
                        f"(after {plural(attempt + 1, 'attempt')})"
                    ) from None
                attempt += 1
                self._backoff(attempt, retries, f"{method_url}: {type(exc).__name__}")
                continue
            except WireError as exc:
                raise TransportError(f"{method_url}: {redact(str(exc))}") from None
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
            doc = json_or_none(response)
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
        doc = error_json(response)
        if isinstance(doc, dict) and isinstance(doc.get("message"), str):
            return redact(doc["message"])
        return f"{response.status_code} with {self._content(response)}"

    def _remember_secret(self, secret: str) -> None:
        if secret not in self._remembered:  # once each: every request passes here
            add_secrets([secret])
            self._remembered.add(secret)


def _request_id() -> str:
    """A random (version 4) UUID, without importing uuid (which imports platform)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
