"""A lean httpx transport: a thread-safe keep-alive pool over the standard library's
http.client.

Why: a plan reads one Project per request, many threads at once. Measured on 1,000
GETs at 32 threads against the emulator, httpx's default transport (httpcore) spent
about 1.4 ms of CPU per request, most of it contending for its pool's locks; this
one spends about 0.6 ms, which is the difference between meeting the plan's time
target and missing it by 2x. httpx stays the client (requests, responses, timeouts,
errors, swappable transports in tests); only the wire moves.

Plain HTTP and HTTPS (certificates verified with the default SSL context). When a
proxy is configured in the environment, `default_transport()` returns httpx's own
client wrapped as a transport instead, which knows proxies.

Bounds a hostile server cannot stretch (SPEC section 5): the request's timeout bounds
the whole request, not each read (a server trickling a byte a second is cut by a
watchdog thread that shuts the socket at the deadline); a body over `MAX_BODY` bytes
stops the reading; redirects are never followed; and `abort()` (SIGINT/SIGTERM)
cuts every request in flight and refuses new ones.
"""

from __future__ import annotations

import contextlib
import heapq
import http.client
import itertools
import socket
import ssl
import threading
import time
import urllib.request
from collections import defaultdict
from typing import Any

import httpx

Origin = tuple[str, str, int]

MAX_BODY = 10 * 1024 * 1024


class BodyTooLarge(httpx.TransportError):
    """The answer's body is over MAX_BODY bytes; it was not read further."""


class Abandoned(httpx.TransportError):
    """The run was interrupted: the request was cut, or never sent."""


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


class PooledTransport(httpx.BaseTransport):
    """HTTP/1.1 keep-alive connections, one request per connection at a time, idle
    connections shared between threads."""

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self._idle: defaultdict[Origin, list[http.client.HTTPConnection]] = defaultdict(list)
        self._lock = threading.Lock()
        self._ssl_context = ssl_context
        self._closed = False
        self._watchdog = _Watchdog()

    def abort(self) -> None:
        """Cut every request in flight and refuse new ones (the run was interrupted)."""
        self._watchdog.abort()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self._watchdog.aborted:
            raise Abandoned("not sent: the run was interrupted", request=request)
        origin = _origin(request)
        timeouts = request.extensions.get("timeout", {})
        limit = timeouts.get("read")
        deadline = time.monotonic() + limit if limit is not None else None
        body = request.read()
        reused, conn = self._checkout(origin, timeouts)
        try:
            return self._exchange(origin, conn, request, body, deadline)
        except _Dropped as exc:
            if not reused:
                raise httpx.RemoteProtocolError(str(exc.__cause__), request=request) from exc
        # A kept-alive connection the server had closed meanwhile: one fresh try.
        conn = self._connect(origin, timeouts)
        try:
            return self._exchange(origin, conn, request, body, deadline)
        except _Dropped as exc:
            raise httpx.RemoteProtocolError(str(exc.__cause__), request=request) from exc

    def _exchange(
        self,
        origin: Origin,
        conn: http.client.HTTPConnection,
        request: httpx.Request,
        body: bytes,
        deadline: float | None,
    ) -> httpx.Response:
        """One request and its response on `conn`, cut at `deadline`; the connection goes
        back to the pool unless the server closes it or anything goes wrong."""
        token = self._watchdog.watch(conn, deadline if deadline is not None else float("inf"))
        try:
            conn.putrequest(
                request.method,
                request.url.raw_path.decode("ascii"),
                skip_host=True,
                skip_accept_encoding=True,
            )
            for name, value in request.headers.raw:
                conn.putheader(name.decode("latin-1"), value.decode("latin-1"))
            conn.endheaders(body or None)
            answer = conn.getresponse()
            content = answer.read(MAX_BODY + 1)
            if len(content) > MAX_BODY:
                raise BodyTooLarge(
                    f"the answer's body is over {MAX_BODY // (1024 * 1024)} MB; stopped reading",
                    request=request,
                )
        except BaseException as exc:
            cut = self._watchdog.release(token)
            conn.close()
            if self._watchdog.aborted:
                raise Abandoned("abandoned: the run was interrupted", request=request) from exc
            if cut or isinstance(exc, TimeoutError):
                raise _timed_out(request) from exc
            if isinstance(exc, httpx.HTTPError):
                raise
            if isinstance(exc, ValueError):  # http.client's message would quote the header
                raise httpx.LocalProtocolError(
                    "a header or the URL holds a character HTTP does not allow", request=request
                ) from None
            if isinstance(
                exc, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
            ):
                raise _Dropped() from exc
            if isinstance(exc, http.client.HTTPException):
                raise httpx.RemoteProtocolError(str(exc), request=request) from exc
            if isinstance(exc, OSError):
                raise httpx.ReadError(str(exc), request=request) from exc
            raise
        if self._watchdog.release(token):
            # Cut at the deadline: what was read (a body without a length ends at the cut)
            # may be partial.
            conn.close()
            raise _timed_out(request)
        if answer.will_close:
            conn.close()
        else:
            self._checkin(origin, conn)
        return httpx.Response(
            answer.status,
            headers=answer.getheaders(),
            stream=httpx.ByteStream(content),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": answer.reason.encode()},
        )

    def _checkout(self, origin: Origin, timeouts: dict) -> tuple[bool, http.client.HTTPConnection]:
        with self._lock:
            idle = self._idle[origin]
            if idle:
                conn = idle.pop()
                if conn.sock is not None:
                    conn.sock.settimeout(timeouts.get("read"))
                return True, conn
        return False, self._connect(origin, timeouts)

    def _checkin(self, origin: Origin, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if self._closed:
                conn.close()
            else:
                self._idle[origin].append(conn)

    def _connect(self, origin: Origin, timeouts: dict) -> http.client.HTTPConnection:
        scheme, host, port = origin
        connect_timeout = timeouts.get("connect")
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
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out") from exc
        except OSError as exc:
            conn.close()
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sock.settimeout(timeouts.get("read"))
        return conn

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections = [conn for idle in self._idle.values() for conn in idle]
            self._idle.clear()
        for conn in connections:
            conn.close()


def _timed_out(request: httpx.Request) -> httpx.ReadTimeout:
    seconds = request.extensions.get("timeout", {}).get("read")
    text = f"no complete answer within {seconds:g} s" if seconds else "timed out"
    return httpx.ReadTimeout(text, request=request)


class _Dropped(Exception):
    """The server closed the connection before answering."""


def _origin(request: httpx.Request) -> Origin:
    url = request.url
    return url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80)


class ClientTransport(httpx.BaseTransport):
    """httpx's own client as a transport: proxies from the environment (NO_PROXY too)."""

    def __init__(self, *, max_connections: int = 16) -> None:
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._client = httpx.Client(limits=limits, trust_env=True, follow_redirects=False)
        self._aborted = False

    def abort(self) -> None:
        self._aborted = True

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Through a proxy there is no socket of ours to cut at the deadline, so the request
        runs in a daemon thread of its own and is given up at the deadline (or on abort)."""
        if self._aborted:
            raise Abandoned("not sent: the run was interrupted", request=request)
        limit = request.extensions.get("timeout", {}).get("read")
        deadline = time.monotonic() + limit if limit is not None else float("inf")
        outcome: dict[str, Any] = {}
        done = threading.Event()

        def run() -> None:
            try:
                outcome["response"] = self._read(request)
            except BaseException as exc:  # raised in the caller's thread below
                outcome["error"] = exc
            finally:
                done.set()

        threading.Thread(target=run, name="proxied-request", daemon=True).start()
        while not done.wait(min(0.1, max(0.0, deadline - time.monotonic()))):
            if self._aborted:
                raise Abandoned("abandoned: the run was interrupted", request=request)
            if time.monotonic() >= deadline:
                raise _timed_out(request)
        if "error" in outcome:
            raise outcome["error"]
        return outcome["response"]

    def _read(self, request: httpx.Request) -> httpx.Response:
        """The answer, its body read in chunks and stopped over MAX_BODY."""
        response = self._client.send(request, stream=True)
        chunks, size = [], 0
        try:
            for chunk in response.iter_raw():
                size += len(chunk)
                if size > MAX_BODY:
                    raise BodyTooLarge(
                        f"the answer's body is over {MAX_BODY // (1024 * 1024)} MB; "
                        "stopped reading",
                        request=request,
                    )
                chunks.append(chunk)
        finally:
            response.close()
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            content=b"".join(chunks),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._client.close()


def default_transport(*, max_connections: int = 16) -> httpx.BaseTransport:
    """The pooled transport, unless a proxy is configured (then httpx's, which knows them)."""
    if urllib.request.getproxies():
        return ClientTransport(max_connections=max_connections)
    return PooledTransport()
