"""The emulator over real HTTP: a threading wsgiref server with HTTP/1.1 keep-alive.

`serve()` runs it in a background thread for tests and the demo; `run_cli()`
runs it in the foreground for `reconciler emulator` until SIGINT or SIGTERM.
"""

from __future__ import annotations

import io
import signal
import socket
import socketserver
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType
from typing import Any
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer

from reconciler import __version__
from reconciler.emulator.app import EmulatorApp, body_limit, make_app
from reconciler.emulator.faults import Faults
from reconciler.emulator.seed import load_seed
from reconciler.emulator.store import Store
from reconciler.errors import ConfigError

SeedSource = str | Path | Mapping[str, Any] | None


class _Http11Handler(ServerHandler):
    """wsgiref's handler, but answering HTTP/1.1 so clients keep the connection."""

    http_version = "1.1"
    server_software = f"reconciler-emulator/{__version__}"


class _RequestHandler(WSGIRequestHandler):
    """Serves requests on one connection until the client closes it.

    wsgiref's handler answers one request per connection. Keep-alive is safe
    here because every response carries a Content-Length (the app always sets
    one) and every request body is read in full before the app runs, so the
    next request on the connection starts where this one ended.
    """

    protocol_version = "HTTP/1.1"
    # Idle keep-alive connections give up their thread after this long.
    timeout = 60
    # Headers and body leave in one send; Nagle would hold the second segment
    # back until the client's delayed ACK (40 ms on Linux).
    disable_nagle_algorithm = True
    wbufsize = 64 * 1024
    # Errors answered before the app runs (a body too large, a bad request line) are
    # JSON like the app's; http.server's messages hold no quotes or backslashes.
    error_content_type = "application/json"
    error_message_format = '{"message": "%(message)s", "code": %(code)d}'

    def handle(self) -> None:
        # BaseHTTPRequestHandler.handle: loop while the connection stays open
        # (wsgiref's override handles a single request).
        self.close_connection = True
        self.handle_one_request()
        while not self.close_connection:
            self.handle_one_request()

    def handle_one_request(self) -> None:
        try:
            self.raw_requestline = self.rfile.readline(65537)
        except (TimeoutError, ConnectionError):
            self.close_connection = True
            return
        if not self.raw_requestline:
            self.close_connection = True
            return
        if len(self.raw_requestline) > 65536:
            self.requestline, self.request_version, self.command = "", "", ""
            self.send_error(414)
            self.close_connection = True
            return
        if not self.parse_request():  # parse_request has answered the error
            return
        if self.headers.get("Transfer-Encoding"):
            # A body we cannot delimit: refuse it and drop the connection.
            self.send_error(411, "Content-Length required")
            self.close_connection = True
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > body_limit(self.path.partition("?")[0]):
            # Our own words: Python 3.13 renamed 413's phrase ("Content Too Large").
            if length < 0:
                self.send_error(400, "bad Content-Length")
            else:
                self.send_error(413, "request body too large")
            self.close_connection = True
            return
        body = self.rfile.read(length) if length else b""
        if len(body) < length:  # the client went away mid-body
            self.close_connection = True
            return
        handler = _Http11Handler(
            io.BytesIO(body), self.wfile, self.get_stderr(), self.get_environ(), multithread=True
        )
        handler.request_handler = self
        handler.run(self.server.get_app())
        self.wfile.flush()

    def log_message(self, format: str, *args: Any) -> None:
        # The app logs each request itself (method, path, status, ms); the
        # default line would include the query string.
        pass


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    """A thread per connection, a deep listen backlog, and a clean shutdown."""

    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True

    def __init__(self, host: str, port: int) -> None:
        if ":" in host:
            self.address_family = socket.AF_INET6
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__((host, port), _RequestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a DNS lookup that can
        # take seconds; the emulator only needs the address it bound.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = host, port
        self.setup_environ()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._connections_lock:
                self._connections.discard(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # a client hanging up is not the emulator's problem
        super().handle_error(request, client_address)

    def server_close(self) -> None:
        super().server_close()
        # Wake threads parked on idle keep-alive connections so they finish
        # and close their sockets now, not when the client gets round to it.
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            with suppress(OSError):  # already closed by its thread
                conn.shutdown(socket.SHUT_RDWR)


class RunningEmulator:
    """A started emulator: its URLs, its store, and its request counts."""

    def __init__(self, app: EmulatorApp, server: _Server) -> None:
        self.app = app
        self.store = app.store
        self._server = server
        host, port = server.server_address[:2]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{port}"
        self.api_url = self.url + "/v1"
        self.auth_url = self.url + "/oauth/token"

    def stats(self) -> dict[str, int]:
        """Request counts, as the "requests" mapping of GET /_emulator/stats."""
        return self.app.stats.snapshot()

    def reset_stats(self) -> None:
        """Zero the request counts and the request log."""
        self.app.stats.reset()
        self.app.log.reset()

    def requests(self) -> list[dict[str, Any]]:
        """The request log, as GET /_emulator/requests: method, path, project, start, end
        and status of each request, oldest first."""
        return self.app.log.entries()

    def concurrency(self) -> dict[str, Any]:
        """The most requests in flight at once, in all and per Project (since the reset)."""
        return self.app.log.concurrency()


@contextmanager
def serve(
    seed: SeedSource = None,
    *,
    db: str | Path | None = None,
    faults: Faults | None = None,
    quiet: bool = True,
    host: str = "127.0.0.1",
    port: int = 0,
    m2m_page_size: int | None = None,
) -> Iterator[RunningEmulator]:
    """Run an emulator in a background thread for the duration of a `with` block.

    seed: a YAML path, `demo` (the bundled demo seed) or an already-parsed
    mapping (SPEC section 6), loaded over whatever `db` holds. port=0 picks
    a free port; `.url` says which.
    m2m_page_size: the largest page of GET /v1/m2m/v2/list (default: the
    seed's m2mPageSize, else 100).
    """
    with _started(seed, db, faults, quiet, (host, port), m2m_page_size) as emu:
        thread = threading.Thread(
            target=emu._server.serve_forever,
            kwargs={"poll_interval": 0.01},  # shutdown() waits up to one interval
            name=f"emulator {emu.url}",
            daemon=True,
        )
        thread.start()
        try:
            yield emu
        finally:
            emu._server.shutdown()
            thread.join()


def run_cli(
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    db: str | None = None,
    seed: str | None = None,
    quiet: bool = False,
    latency_ms: int = 0,
    error_rate: float = 0.0,
    rate_limit_every: int = 0,
    fault_seed: int | None = None,
    m2m_page_size: int | None = None,
    rate_limit_rps: float = 0.0,
) -> None:
    """`reconciler emulator`: print the base URL first, serve until SIGINT/SIGTERM."""
    faults = Faults(latency_ms, error_rate, rate_limit_every, fault_seed, rate_limit_rps)
    if m2m_page_size is not None and m2m_page_size < 1:
        raise ConfigError("--m2m-page-size must be at least 1")
    with _started(seed, db, faults, quiet, (host, port), m2m_page_size) as emu:
        # Both signals, explicitly: a shell starts background jobs with SIGINT
        # ignored, and `kill -INT` should still stop the emulator. Installed
        # before the URL is printed: a caller may signal as soon as it reads it.
        previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            print(emu.url, flush=True)
            if not quiet:
                count = len(emu.store.project_ids())
                where = db or "memory"
                print(f"emulator: {count} Projects ({where}); Ctrl-C stops", file=sys.stderr)
            emu._server.serve_forever(poll_interval=0.1)
        except KeyboardInterrupt:
            pass  # SIGINT or SIGTERM: a clean stop, exit 0
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextmanager
def _started(
    seed: SeedSource,
    db: str | Path | None,
    faults: Faults | None,
    quiet: bool,
    address: tuple[str, int],
    m2m_page_size: int | None,
) -> Iterator[RunningEmulator]:
    """Store, seed, app and a bound (not yet serving) server; all closed on exit."""
    host, port = address
    checked = load_seed(seed) if seed is not None else None  # before touching the db
    store = Store(str(db) if db is not None else None)
    try:
        if checked is not None:
            store.load_seed(checked)
        # The Host names it answers to, besides localhost and loopback addresses (421
        # otherwise): the one it was asked to listen on.
        app = make_app(store, faults, quiet, m2m_page_size, allowed_hosts=[host.lower()])
        try:
            server = _Server(host, port)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        server.set_app(app)
        try:
            yield RunningEmulator(app, server)
        finally:
            server.server_close()
    finally:
        store.close()
