"""The wire: a thread-safe keep-alive connection pool over the standard library's
http.client, and nothing else.

Why not httpx here: a plan makes hundreds of requests from many threads, and start-up
counts (a plan of one big Project takes well under a second). httpx's import alone
costs about as much as reading that Project, and building its Request and Response
objects about half the client's CPU per request; this module sends the same bytes
with neither. httpx stays where it earns its keep: through a proxy
(``transport.ClientTransport``), and as the interface tests plug transports into
(``transport.PooledTransport`` adapts this pool to it).

Plain HTTP and HTTPS (certificates verified with the default SSL context). Bounds a
hostile server cannot stretch (SPEC section 5): the request's timeout bounds the
whole request, not each read (a server trickling a byte a second is cut by a watchdog
thread that shuts the socket at the deadline); a body over `MAX_BODY` bytes stops the
reading; redirects are never followed (a 3xx is an answer like any other); and
`abort()` (SIGINT/SIGTERM) cuts every request in flight and refuses new ones.

Errors carry httpx's names (ReadTimeout, ConnectError, RemoteProtocolError, …) in the
same tree, so messages read the same whichever way a request went.
"""

from __future__ import annotations

import contextlib
import heapq
import http.client
import itertools
import os
import socket
import ssl
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from urllib.parse import urlsplit

Origin = tuple[str, str, int]

MAX_BODY = 10 * 1024 * 1024


class WireError(Exception):
    """A request that got no usable answer."""


class TimeoutException(WireError):
    pass


class ConnectTimeout(TimeoutException):
    pass


class ReadTimeout(TimeoutException):
    pass


class NetworkError(WireError):
    pass


class ConnectError(NetworkError):
    pass


class ReadError(NetworkError):
    pass


class RemoteProtocolError(WireError):
    pass


class LocalProtocolError(WireError):
    pass


class BodyTooLarge(WireError):
    """The answer's body is over MAX_BODY bytes; it was not read further."""


class Abandoned(WireError):
    """The run was interrupted: the request was cut, or never sent."""


class Answer:
    """A response: status, headers (names in lower case), the whole body."""

    __slots__ = ("status_code", "headers", "content", "reason")

    def __init__(
        self, status: int, headers: Sequence[tuple[str, str]], content: bytes, reason: str = ""
    ) -> None:
        self.status_code = status
        self.headers: dict[str, str] = {}
        for name, value in headers:
            key = name.lower()
            self.headers[key] = f"{self.headers[key]}, {value}" if key in self.headers else value
        self.content = content
        self.reason = reason


def proxies_configured() -> bool:
    """Whether requests must go through a proxy (then httpx, which knows them, sends)."""
    if sys.platform in ("darwin", "win32"):  # proxies may live in the system's settings
        import urllib.request

        return any(key != "no" for key in urllib.request.getproxies())
    cgi = "REQUEST_METHOD" in os.environ  # as urllib: HTTP_PROXY may be a client's header
    return any(
        value
        for name, value in os.environ.items()
        if name.lower().endswith("_proxy")
        and name.lower() != "no_proxy"
        and not (cgi and name.lower() == "http_proxy")
    )


class _Watchdog:
    """The requests in flight and their deadlines; one daemon thread shuts the socket of
    a request that outlives its deadline, and `abort()` shuts them all at once.

    Shutting a socket down wakes a thread blocked reading it (closing it does not)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int]] = []
        self._live: dict[int, http.client.HTTPConnection] = {}
        self._expired: set[int] = set()
        self._tokens = itertools.count()
        self._thread: threading.Thread | None = None
        self.aborted = False

    def watch(self, conn: http.client.HTTPConnection, deadline: float) -> int:
        with self._cond:
            if self.aborted:
                _shut(conn)
            token = next(self._tokens)
            self._live[token] = conn
            first = not self._heap or deadline < self._heap[0][0]
            heapq.heappush(self._heap, (deadline, token))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="deadlines", daemon=True)
                self._thread.start()
            elif first:
                self._cond.notify()
        return token

    def release(self, token: int) -> bool:
        """Stop watching; True when the deadline had already cut the request."""
        with self._cond:
            self._live.pop(token, None)
            if token in self._expired:
                self._expired.discard(token)
                return True
            return False

    def abort(self) -> None:
        with self._cond:
            self.aborted = True
            connections = list(self._live.values())
        for conn in connections:
            _shut(conn)

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                while self._heap and (self._heap[0][1] not in self._live):
                    heapq.heappop(self._heap)  # answered in time
                if not self._heap:
                    self._cond.wait()
                    continue
                deadline, token = self._heap[0]
                if deadline > now:
                    self._cond.wait(deadline - now)
                    continue
                heapq.heappop(self._heap)
                self._expired.add(token)
                _shut(self._live.pop(token))


def _shut(conn: http.client.HTTPConnection) -> None:
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed by its own thread
            sock.shutdown(socket.SHUT_RDWR)


class Wire:
    """HTTP/1.1 keep-alive connections, one request per connection at a time, idle
    connections shared between threads."""

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self._idle: defaultdict[Origin, list[http.client.HTTPConnection]] = defaultdict(list)
        self._lock = threading.Lock()
        self._ssl_context = ssl_context
        self._closed = False
        self._watchdog = _Watchdog()

    @property
    def aborted(self) -> bool:
        return self._watchdog.aborted

    def abort(self) -> None:
        """Cut every request in flight and refuse new ones (the run was interrupted)."""
        self._watchdog.abort()

    def send(
        self,
        method: str,
        url: str,
        headers: Sequence[tuple[str, str]],
        body: bytes | None = None,
        *,
        timeout: float | None = None,
        connect_timeout: float | None = None,
    ) -> Answer:
        """One request and its whole answer, within `timeout` seconds (None: no limit)."""
        if self._watchdog.aborted:
            raise Abandoned("not sent: the run was interrupted")
        parts = urlsplit(url)
        scheme, host = parts.scheme, parts.hostname or ""
        origin = (scheme, host, parts.port or (443 if scheme == "https" else 80))
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = list(headers)
        if not any(name.lower() == "host" for name, _ in headers):
            headers.insert(0, ("Host", parts.netloc.rpartition("@")[2]))
        has_body = body is not None or method in ("POST", "PUT", "PATCH")
        if has_body and not any(name.lower() == "content-length" for name, _ in headers):
            headers.append(("Content-Length", str(len(body or b""))))
        deadline = time.monotonic() + timeout if timeout is not None else None
        reused, conn = self._checkout(origin, timeout, connect_timeout)
        request = (method, target, headers, body)
        try:
            return self._exchange(origin, conn, request, deadline, timeout)
        except _Dropped as exc:
            if not reused:
                raise RemoteProtocolError(str(exc.__cause__)) from exc
        # A kept-alive connection the server had closed meanwhile: one fresh try.
        conn = self._connect(origin, timeout, connect_timeout)
        try:
            return self._exchange(origin, conn, request, deadline, timeout)
        except _Dropped as exc:
            raise RemoteProtocolError(str(exc.__cause__)) from exc

    def _exchange(
        self,
        origin: Origin,
        conn: http.client.HTTPConnection,
        request: tuple[str, str, list[tuple[str, str]], bytes | None],
        deadline: float | None,
        timeout: float | None,
    ) -> Answer:
        """One request and its response on `conn`, cut at `deadline`; the connection goes
        back to the pool unless the server closes it or anything goes wrong."""
        method, target, headers, body = request
        token = self._watchdog.watch(conn, deadline if deadline is not None else float("inf"))
        try:
            conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                conn.putheader(name, value)
            conn.endheaders(body or None)
            answer = conn.getresponse()
            content = answer.read(MAX_BODY + 1)
            if len(content) > MAX_BODY:
                raise BodyTooLarge(
                    f"the answer's body is over {MAX_BODY // (1024 * 1024)} MB; stopped reading"
                )
        except BaseException as exc:
            cut = self._watchdog.release(token)
            conn.close()
            if self._watchdog.aborted:
                raise Abandoned("abandoned: the run was interrupted") from exc
            if cut or isinstance(exc, TimeoutError):
                raise _timed_out(timeout) from exc
            if isinstance(exc, WireError):
                raise
            if isinstance(exc, (ValueError, UnicodeError)):
                # http.client's message would quote the header
                raise LocalProtocolError(
                    "a header or the URL holds a character HTTP does not allow"
                ) from None
            if isinstance(
                exc, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
            ):
                raise _Dropped() from exc
            if isinstance(exc, http.client.HTTPException):
                raise RemoteProtocolError(str(exc)) from exc
            if isinstance(exc, OSError):
                raise ReadError(str(exc)) from exc
            raise
        if self._watchdog.release(token):
            # Cut at the deadline: what was read (a body without a length ends at the cut)
            # may be partial.
            conn.close()
            raise _timed_out(timeout)
        if answer.will_close:
            conn.close()
        else:
            self._checkin(origin, conn)
        return Answer(answer.status, answer.getheaders(), content, answer.reason)

    def _checkout(
        self, origin: Origin, timeout: float | None, connect_timeout: float | None
    ) -> tuple[bool, http.client.HTTPConnection]:
        with self._lock:
            idle = self._idle[origin]
            if idle:
                conn = idle.pop()
                if conn.sock is not None:
                    conn.sock.settimeout(timeout)
                return True, conn
        return False, self._connect(origin, timeout, connect_timeout)

    def _checkin(self, origin: Origin, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if self._closed:
                conn.close()
            else:
                self._idle[origin].append(conn)

    def _connect(
        self, origin: Origin, timeout: float | None, connect_timeout: float | None
    ) -> http.client.HTTPConnection:
        scheme, host, port = origin
        if scheme == "https":
            if self._ssl_context is None:
                self._ssl_context = ssl.create_default_context()
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                host, port, timeout=connect_timeout, context=self._ssl_context
            )
        else:
            conn = http.client.HTTPConnection(host, port, timeout=connect_timeout)
        try:
            conn.connect()
        except TimeoutError as exc:
            conn.close()
            raise ConnectTimeout(f"connecting to {host}:{port} timed out") from exc
        except OSError as exc:
            conn.close()
            raise ConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sock.settimeout(timeout)
        return conn

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections = [conn for idle in self._idle.values() for conn in idle]
            self._idle.clear()
        for conn in connections:
            conn.close()


def _timed_out(seconds: float | None) -> ReadTimeout:
    return ReadTimeout(f"no complete answer within {seconds:g} s" if seconds else "timed out")


class _Dropped(Exception):
    """The server closed the connection before answering."""
