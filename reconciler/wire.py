"""The wire: a thread-safe pool of keep-alive HTTP/1.1 connections on plain sockets,
and nothing else.

Why not httpx here: a plan makes hundreds of requests from many threads, and start-up
counts (a plan of one big Project takes well under a second). httpx's import alone
costs about as much as reading that Project, and building its Request and Response
objects about half the client's CPU per request. Why not http.client either: it
parses every answer's headers with the email package (and imports it, with ssl),
and builds a response object and a file object per answer: about 0.25 ms of CPU per
request, three times what this module spends writing the request in one piece and
reading the answer's few lines (measured against the emulator). The requests are
the client's own (a handful of fixed headers) and the answers are JSON, so the
subset of HTTP/1.1 needed is small: a status line, headers, and a body framed by
Content-Length, chunks or the end of the connection. httpx stays where it earns its
keep: through a proxy (``transport.ClientTransport``), and as the interface tests plug
transports into (``transport.PooledTransport`` adapts this pool to it).

Plain HTTP and HTTPS (certificates verified with the default SSL context). Bounds a
hostile server cannot stretch (SPEC section 5): the request's timeout bounds the
whole request, not each read (a server trickling a byte a second is cut by a watchdog
thread that shuts the socket at the deadline); a body over `MAX_BODY` bytes stops the
reading, and a line over `MAX_LINE` bytes or more than `MAX_HEADERS` headers (the
limits http.client sets) end the answer; redirects are never followed (a 3xx is an
answer like any other); and `abort()` (SIGINT/SIGTERM) cuts every request in flight
and refuses new ones. A header or target that could split the request (a newline in
a token, say) is refused before anything is sent.

Errors carry httpx's names (ReadTimeout, ConnectError, RemoteProtocolError, …) in the
same tree, so messages read the same whichever way a request went.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import re
import socket
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import urlsplit

if TYPE_CHECKING:  # imported when the first https:// connection is made
    import ssl

Origin = tuple[str, str, int]

MAX_BODY = 10 * 1024 * 1024
MAX_LINE = 65536
MAX_HEADERS = 100


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
    """A response: status, headers (names in lower case, a repeated one's values joined
    by commas: see :func:`header_fields`), the whole body."""

    __slots__ = ("status_code", "headers", "content", "reason")

    def __init__(
        self, status: int, headers: dict[str, str], content: bytes, reason: str = ""
    ) -> None:
        self.status_code = status
        self.headers = headers
        self.content = content
        self.reason = reason


def header_fields(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Headers as (name, value) pairs -> {lower-case name: value}, as HTTP reads a
    repeated header: its values joined by commas."""
    fields: dict[str, str] = {}
    for name, value in pairs:
        key = name.lower()
        fields[key] = f"{fields[key]}, {value}" if key in fields else value
    return fields


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
        self._live: dict[int, Connection] = {}
        self._expired: set[int] = set()
        self._tokens = itertools.count()
        self._thread: threading.Thread | None = None
        self.aborted = False

    def watch(self, conn: Connection, deadline: float) -> int:
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


def _shut(conn: Connection) -> None:
    with contextlib.suppress(OSError):  # already closed by its own thread
        conn.sock.shutdown(socket.SHUT_RDWR)


class Connection:
    """One HTTP/1.1 connection: its socket and a buffered reader over it."""

    __slots__ = ("sock", "reader")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader: BinaryIO = sock.makefile("rb")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


class Wire:
    """HTTP/1.1 keep-alive connections, one request per connection at a time, idle
    connections shared between threads."""

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self._idle: defaultdict[Origin, list[Connection]] = defaultdict(list)
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
        request = _request_bytes(method, target, headers, body)
        deadline = time.monotonic() + timeout if timeout is not None else None
        reused, conn = self._checkout(origin, timeout, connect_timeout)
        try:
            return self._exchange(origin, conn, request, deadline, timeout)
        except _Dropped as exc:
            if not reused:
                raise RemoteProtocolError(str(exc.__cause__ or exc)) from exc
        # A kept-alive connection the server had closed meanwhile: one fresh try.
        conn = self._connect(origin, timeout, connect_timeout)
        try:
            return self._exchange(origin, conn, request, deadline, timeout)
        except _Dropped as exc:
            raise RemoteProtocolError(str(exc.__cause__ or exc)) from exc

    def _exchange(
        self,
        origin: Origin,
        conn: Connection,
        request: bytes,
        deadline: float | None,
        timeout: float | None,
    ) -> Answer:
        """One request and its answer on `conn`, cut at `deadline`; the connection goes
        back to the pool unless the server closes it or anything goes wrong."""
        token = self._watchdog.watch(conn, deadline if deadline is not None else float("inf"))
        try:
            conn.sock.sendall(request)
            answer, keep_alive = _read_answer(conn.reader)
        except BaseException as exc:
            cut = self._watchdog.release(token)
            conn.close()
            if self._watchdog.aborted:
                raise Abandoned("abandoned: the run was interrupted") from exc
            if cut or isinstance(exc, TimeoutError):
                raise _timed_out(timeout) from exc
            if isinstance(exc, (WireError, _Dropped)):
                raise
            if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
                raise _Dropped("the server closed the connection") from exc
            if isinstance(exc, OSError):
                raise ReadError(str(exc)) from exc
            raise
        if self._watchdog.release(token):
            # Cut at the deadline: what was read (a body without a length ends at the cut)
            # may be partial.
            conn.close()
            raise _timed_out(timeout)
        if keep_alive:
            self._checkin(origin, conn)
        else:
            conn.close()
        return answer

    def _checkout(
        self, origin: Origin, timeout: float | None, connect_timeout: float | None
    ) -> tuple[bool, Connection]:
        with self._lock:
            idle = self._idle[origin]
            if idle:
                conn = idle.pop()
                conn.sock.settimeout(timeout)
                return True, conn
        return False, self._connect(origin, timeout, connect_timeout)

    def _checkin(self, origin: Origin, conn: Connection) -> None:
        with self._lock:
            if self._closed:
                conn.close()
            else:
                self._idle[origin].append(conn)

    def _connect(
        self, origin: Origin, timeout: float | None, connect_timeout: float | None
    ) -> Connection:
        scheme, host, port = origin
        # An ASCII host as bytes: a str would be encoded with the idna codec, whose import
        # (with stringprep and unicodedata) costs more than connecting to this machine.
        address = host.encode() if host.isascii() else host
        try:
            sock = socket.create_connection((address, port), timeout=connect_timeout)
        except TimeoutError as exc:
            raise ConnectTimeout(f"connecting to {host}:{port} timed out") from exc
        except OSError as exc:
            raise ConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == "https":
                sock = self._tls().wrap_socket(sock, server_hostname=host)
        except TimeoutError as exc:
            sock.close()
            raise ConnectTimeout(f"connecting to {host}:{port} timed out") from exc
        except OSError as exc:  # ssl.SSLError (a certificate refused, say) is one
            sock.close()
            raise ConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
        sock.settimeout(timeout)
        return Connection(sock)

    def _tls(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            import ssl

            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections = [conn for idle in self._idle.values() for conn in idle]
            self._idle.clear()
        for conn in connections:
            conn.close()


# What may go in a request line and headers: nothing that could end a line (or the
# request) early, as http.client refuses.
_UNSAFE_IN_TARGET = re.compile(r"[\x00-\x20\x7f]")
_UNSAFE_IN_HEADER = re.compile(r"[\r\n\x00]")
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _request_bytes(
    method: str, target: str, headers: Sequence[tuple[str, str]], body: bytes | None
) -> bytes:
    """The request as sent: request line, headers, blank line, body."""
    if _UNSAFE_IN_TARGET.search(method + target):
        raise LocalProtocolError("the URL holds a character HTTP does not allow")
    lines = [f"{method} {target} HTTP/1.1"]
    for name, value in headers:
        if not _HEADER_NAME.fullmatch(name) or _UNSAFE_IN_HEADER.search(value):
            raise LocalProtocolError("a header holds a character HTTP does not allow")
        lines.append(f"{name}: {value}")
    lines.append("\r\n")
    try:
        head = "\r\n".join(lines).encode("latin-1")
    except UnicodeEncodeError:  # the message would quote the header
        raise LocalProtocolError("a header holds a character HTTP does not allow") from None
    return head + body if body else head


def _read_answer(reader: BinaryIO) -> tuple[Answer, bool]:
    """The answer to the request just sent, and whether the connection stays open."""
    while True:
        line = reader.readline(MAX_LINE + 1)
        if not line:
            raise _Dropped("the server closed the connection without answering")
        version, status, reason = _status_line(line)
        headers = _header_lines(reader)
        if status != 100:  # 100 Continue: the real answer follows
            break
    answer = Answer(status, headers, b"", reason)
    fields = headers
    connection = fields.get("connection", "").lower()
    if version == "HTTP/1.1":
        keep_alive = "close" not in connection
    else:  # HTTP/1.0 keeps a connection open only when it says so
        keep_alive = "keep-alive" in connection or "keep-alive" in fields
    if status in (204, 304) or status < 200:
        return answer, keep_alive
    if fields.get("transfer-encoding", "").lower() == "chunked":
        answer.content = _chunked_body(reader)
    elif "content-length" in fields:
        length = _content_length(fields["content-length"])
        if length > MAX_BODY:
            raise _too_large()
        answer.content = reader.read(length)
        if len(answer.content) < length:
            raise RemoteProtocolError(
                f"the answer ended after {len(answer.content)} of {length} bytes"
            )
    else:  # the body ends when the server closes the connection
        answer.content = reader.read(MAX_BODY + 1)
        keep_alive = False
        if len(answer.content) > MAX_BODY:
            raise _too_large()
    return answer, keep_alive


def _status_line(line: bytes) -> tuple[str, int, str]:
    """The version, status code and reason of a status line ("HTTP/1.1 200 OK")."""
    if len(line) > MAX_LINE:
        raise RemoteProtocolError("the answer's status line is too long")
    text = line.decode("latin-1").rstrip("\r\n")
    version, _, rest = text.partition(" ")
    code, _, reason = rest.partition(" ")
    well_formed = len(code) == 3 and code.isascii() and code.isdigit()
    if not version.startswith("HTTP/1.") or not well_formed:
        raise RemoteProtocolError(f"not an HTTP/1.x status line: {text[:80]!r}")
    return version, int(code), reason.strip()


def _header_lines(reader: BinaryIO) -> dict[str, str]:
    """The answer's headers, up to the blank line that ends them."""
    pairs: list[tuple[str, str]] = []
    while True:
        line = reader.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise RemoteProtocolError("an answer's header line is too long")
        if line in (b"\r\n", b"\n", b""):
            return header_fields(pairs)
        text = line.decode("latin-1")
        if text[0] in " \t" and pairs:  # a folded line continues the header before it
            name, value = pairs[-1]
            pairs[-1] = (name, f"{value} {text.strip()}")
            continue
        name, colon, value = text.partition(":")
        if not colon or not name or name[0] in " \t":
            raise RemoteProtocolError(f"not a header line: {text.strip()[:80]!r}")
        if len(pairs) >= MAX_HEADERS:
            raise RemoteProtocolError(f"the answer has more than {MAX_HEADERS} headers")
        pairs.append((name, value.strip()))


def _content_length(value: str) -> int:
    if not (value.isdigit() and value.isascii()):
        raise RemoteProtocolError(f"the answer's Content-Length is not a length: {value[:40]!r}")
    return int(value)


def _chunked_body(reader: BinaryIO) -> bytes:
    """A body sent in chunks (Transfer-Encoding: chunked), trailers discarded."""
    chunks: list[bytes] = []
    size = 0
    while True:
        line = reader.readline(MAX_LINE + 1)
        length_text = line.split(b";", 1)[0].strip()
        if (
            len(line) > MAX_LINE
            or not length_text
            or not all(c in b"0123456789abcdefABCDEF" for c in length_text)
        ):
            raise RemoteProtocolError("the answer's chunked body is malformed")
        length = int(length_text, 16)
        if length == 0:
            break
        size += length
        if size > MAX_BODY:
            raise _too_large()
        chunk = reader.read(length)
        if len(chunk) < length or reader.readline(MAX_LINE + 1) not in (b"\r\n", b"\n"):
            raise RemoteProtocolError("the answer's chunked body ended early")
        chunks.append(chunk)
    _header_lines(reader)  # trailers
    return b"".join(chunks)


def _too_large() -> BodyTooLarge:
    return BodyTooLarge(
        f"the answer's body is over {MAX_BODY // (1024 * 1024)} MB; stopped reading"
    )


def _timed_out(seconds: float | None) -> ReadTimeout:
    return ReadTimeout(f"no complete answer within {seconds:g} s" if seconds else "timed out")


class _Dropped(Exception):
    """The server closed the connection before answering (a kept-alive connection it
    had closed meanwhile: worth one fresh try)."""
