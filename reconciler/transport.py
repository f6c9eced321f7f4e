"""httpx transports over our wire, and the wire over any httpx transport.

The client sends through ``wire.Wire`` (standard library only) unless a proxy is
configured or a caller hands it an httpx transport (a test's ``WSGITransport``, say).
This module joins the two worlds:

- :class:`PooledTransport` is the wire as an ``httpx.BaseTransport``, for code that
  speaks httpx (the same bounds: whole-request timeout, body size, no redirects,
  abort);
- :class:`ClientTransport` is httpx's own client as a transport: it knows proxies
  from the environment (NO_PROXY too);
- :class:`HttpxSender` lets the client send through any httpx transport, with the
  wire's errors and answers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import httpx

from reconciler import wire
from reconciler.wire import MAX_BODY, Answer, header_fields

__all__ = [
    "MAX_BODY",
    "Abandoned",
    "BodyTooLarge",
    "ClientTransport",
    "HttpxSender",
    "PooledTransport",
]


class BodyTooLarge(httpx.TransportError):
    """The answer's body is over MAX_BODY bytes; it was not read further."""


class Abandoned(httpx.TransportError):
    """The run was interrupted: the request was cut, or never sent."""


# The wire's errors as httpx's (the same names), for PooledTransport's callers.
_AS_HTTPX: list[tuple[type[wire.WireError], type[httpx.HTTPError]]] = [
    (wire.Abandoned, Abandoned),
    (wire.BodyTooLarge, BodyTooLarge),
    (wire.ConnectTimeout, httpx.ConnectTimeout),
    (wire.ReadTimeout, httpx.ReadTimeout),
    (wire.ConnectError, httpx.ConnectError),
    (wire.ReadError, httpx.ReadError),
    (wire.RemoteProtocolError, httpx.RemoteProtocolError),
    (wire.LocalProtocolError, httpx.LocalProtocolError),
]


class PooledTransport(httpx.BaseTransport):
    """HTTP/1.1 keep-alive connections, one request per connection at a time, idle
    connections shared between threads: ``wire.Wire`` for httpx."""

    def __init__(self, *, ssl_context: Any = None) -> None:
        self.wire = wire.Wire(ssl_context=ssl_context)

    def abort(self) -> None:
        """Cut every request in flight and refuse new ones (the run was interrupted)."""
        self.wire.abort()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
        try:
            answer = self.wire.send(
                request.method,
                str(request.url),
                headers,
                request.read(),
                timeout=timeouts.get("read"),
                connect_timeout=timeouts.get("connect"),
            )
        except wire.WireError as exc:
            for ours, theirs in _AS_HTTPX:
                if isinstance(exc, ours):
                    raise theirs(str(exc), request=request) from exc
            raise httpx.TransportError(str(exc), request=request) from exc
        return httpx.Response(
            answer.status_code,
            headers=list(answer.headers.items()),
            stream=httpx.ByteStream(answer.content),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": answer.reason.encode()},
        )

    def close(self) -> None:
        self.wire.close()


def _timed_out(request: httpx.Request) -> httpx.ReadTimeout:
    seconds = request.extensions.get("timeout", {}).get("read")
    text = f"no complete answer within {seconds:g} s" if seconds else "timed out"
    return httpx.ReadTimeout(text, request=request)


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


# httpx's errors as the wire's (most specific first), for the client.
_AS_WIRE: list[tuple[type[Exception], type[wire.WireError]]] = [
    (Abandoned, wire.Abandoned),
    (BodyTooLarge, wire.BodyTooLarge),
    (httpx.ConnectTimeout, wire.ConnectTimeout),
    (httpx.TimeoutException, wire.ReadTimeout),
    (httpx.ConnectError, wire.ConnectError),
    (httpx.NetworkError, wire.ReadError),
    (httpx.RemoteProtocolError, wire.RemoteProtocolError),
    (httpx.LocalProtocolError, wire.LocalProtocolError),
    (httpx.HTTPError, wire.WireError),
]


class HttpxSender:
    """Any httpx transport, sending as ``wire.Wire`` does (the client's interface)."""

    def __init__(self, transport: httpx.BaseTransport) -> None:
        self.transport = transport

    def abort(self) -> None:
        abort = getattr(self.transport, "abort", None)
        if abort is not None:
            abort()

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
        request = httpx.Request(
            method,
            url,
            headers=list(headers),
            content=body,
            extensions={"timeout": httpx.Timeout(timeout, connect=connect_timeout).as_dict()},
        )
        try:
            response = self.transport.handle_request(request)
            try:
                response.read()
            finally:
                response.close()
        except httpx.HTTPError as exc:
            for theirs, ours in _AS_WIRE:
                if isinstance(exc, theirs):
                    raise ours(str(exc)) from exc
            raise
        return Answer(
            response.status_code,
            header_fields(response.headers.multi_items()),
            response.content,
            response.reason_phrase,
        )

    def close(self) -> None:
        self.transport.close()
