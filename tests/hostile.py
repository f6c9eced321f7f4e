"""A hostile (or broken) HTTP server for tests: a real socket, answers chosen per request.

    with HostileServer(answer) as server:      # answer(request) -> Reply
        server.url, server.api_url, server.auth_url
        server.count("PATCH /v1/project")      # requests seen, like the emulator's stats

A Reply is raw bytes to send, or one of the behaviours below: `hang()` (read the request,
never answer), `trickle(data, every)` (one byte every `every` seconds). Everything runs
in daemon threads; closing the server shuts every connection it holds.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    arrived: float = 0.0  # time.monotonic() when it was read
    replied: float = 0.0  # ... and when its answer was sent

    @property
    def key(self) -> str:
        return f"{self.method} {self.path}"

    def json(self) -> Any:
        return json.loads(self.body or b"null")


@dataclass
class Hang:
    """Read the request, never answer (until the server closes)."""


@dataclass
class Trickle:
    data: bytes
    every: float = 1.0


Reply = bytes | Hang | Trickle


def hang() -> Hang:
    return Hang()


def trickle(data: bytes, every: float = 1.0) -> Trickle:
    return Trickle(data, every)


def response(
    status: int,
    body: bytes | str = b"",
    *,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> bytes:
    """A raw HTTP/1.1 response with a Content-Length."""
    payload = body.encode() if isinstance(body, str) else body
    lines = [f"HTTP/1.1 {status} X", f"Content-Type: {content_type}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    lines.append(f"Content-Length: {len(payload)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


def json_response(status: int, doc: Any, **kwargs: Any) -> bytes:
    return response(status, json.dumps(doc), **kwargs)


@dataclass
class HostileServer:
    answer: Callable[[Request], Reply]
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_url, self.auth_url = self.url + "/v1", self.url + "/oauth/token"
        self._connections: list[socket.socket] = []
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self.seen = threading.Condition(self._lock)
        threading.Thread(target=self._accept, daemon=True).start()

    def __enter__(self) -> HostileServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def count(self, key: str) -> int:
        with self._lock:
            return Counter(r.key for r in self.requests)[key]

    def wait_for(self, key: str, count: int = 1, timeout: float = 30) -> None:
        """Block until `count` requests `key` have arrived."""
        with self.seen:
            ok = self.seen.wait_for(
                lambda: Counter(r.key for r in self.requests)[key] >= count, timeout
            )
        assert ok, f"no {key} within {timeout} s: {[r.key for r in self.requests]}"

    def close(self) -> None:
        self._closed.set()
        # Closing alone leaves the socket listening while the accept thread blocks in it:
        # the next connection to this port (a later test's emulator may be given it) would
        # still be answered here. Shutting it down wakes the accept first.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._connections.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        try:
            while True:
                request = _read_request(reader)
                if request is None:
                    return
                with self.seen:
                    self.requests.append(request)
                    self.seen.notify_all()
                reply = self.answer(request)
                if isinstance(reply, Hang):
                    self._closed.wait()
                    return
                if isinstance(reply, Trickle):
                    for index in range(len(reply.data)):
                        conn.sendall(reply.data[index : index + 1])
                        if self._closed.wait(reply.every):
                            return
                    return
                conn.sendall(reply)
                request.replied = time.monotonic()
        except OSError:
            return
        finally:
            conn.close()


def _read_request(reader: Any) -> Request | None:
    line = reader.readline()
    if not line:
        return None
    method, target, _ = line.decode("latin-1").split(" ", 2)
    headers = {}
    while (header := reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = header.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = reader.read(int(headers.get("content-length", 0)))
    return Request(method, target.split("?")[0], headers, body, arrived=time.monotonic())


def project_doc(project_id: str, **fields: Any) -> dict[str, Any]:
    """A Project as GET /project answers it."""
    return {
        "id": project_id,
        "name": "Hostile",
        "description": "",
        "signupEnabled": False,
        "sandbox": False,
        "fhirVersion": "r4",
    } | fields


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.monotonic()
    result = fn()
    return result, time.monotonic() - started


def project_files(folder: Any, count: int, body: str = "name: New name\n") -> list[str]:
    """`count` project files projects/p0.yaml… each asking for `body`; their ids."""
    import uuid

    ids = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"hostile-{index}")) for index in range(count)]
    for index, project_id in enumerate(ids):
        (folder / "projects").mkdir(parents=True, exist_ok=True)
        (folder / "projects" / f"p{index}.yaml").write_text(
            f"id: {project_id}\n{body}", encoding="utf-8"
        )
    return ids
