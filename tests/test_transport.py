"""The pooled transport over real sockets: keep-alive, stale connections, errors."""

import socket
import threading

import httpx
import pytest
from hostile import HostileServer, response

from reconciler.emulator import serve
from reconciler.transport import PooledTransport
from reconciler.wire import (
    MAX_BODY,
    BodyTooLarge,
    LocalProtocolError,
    RemoteProtocolError,
    Wire,
)


def test_requests_reuse_one_kept_alive_connection():
    with serve(None) as emu, httpx.Client(transport=PooledTransport()) as client:
        for _ in range(5):
            assert client.get(emu.api_url + "/version").status_code == 200
        transport = client._transport
        assert sum(len(idle) for idle in transport.wire._idle.values()) == 1


def _one_shot_server(replies: list[bytes]):
    """A server that answers each connection's first request with the next reply, then
    closes the connection (as a server dropping an idle keep-alive connection does)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve_replies():
        for reply in replies:
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(reply)
        listener.close()

    thread = threading.Thread(target=serve_replies)
    thread.start()
    return port, thread


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}"


def test_a_connection_the_server_dropped_is_retried_once_on_a_fresh_one():
    port, thread = _one_shot_server([OK, OK])
    with httpx.Client(transport=PooledTransport()) as client:
        assert client.get(f"http://127.0.0.1:{port}/a").json() == {}
        # The pooled connection was closed by the server; the transport notices and reconnects.
        assert client.get(f"http://127.0.0.1:{port}/b").json() == {}
    thread.join()


def test_connection_refused_is_httpx_connect_error():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with (
        httpx.Client(transport=PooledTransport()) as client,
        pytest.raises(httpx.ConnectError),
    ):
        client.get(f"http://127.0.0.1:{port}/")


def test_a_silent_server_is_a_read_timeout():
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        port = listener.getsockname()[1]
        with (
            httpx.Client(transport=PooledTransport(), timeout=0.2) as client,
            pytest.raises(httpx.ReadTimeout),
        ):
            client.get(f"http://127.0.0.1:{port}/")
    finally:
        listener.close()


# The wire's own HTTP/1.1 (wire.py reads answers itself, without http.client).


@pytest.fixture
def wire():
    wire = Wire()
    yield wire
    wire.close()


def _get(wire: Wire, url: str, **headers: str):
    return wire.send("GET", url, list(headers.items()), timeout=5, connect_timeout=5)


def test_a_chunked_body_is_joined_and_the_connection_kept(wire):
    chunks = b'4;ext=1\r\n{"a"\r\n3\r\n:1}\r\n0\r\nX-Trailer: t\r\n\r\n'
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks
    with HostileServer(lambda request: chunked) as server:
        for _ in range(2):
            assert _get(wire, server.url + "/x").content == b'{"a":1}'
    assert sum(len(idle) for idle in wire._idle.values()) == 1


@pytest.mark.parametrize(
    ("reply", "kept"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", True),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}", False),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n{}", True),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", True),
        (b"HTTP/1.1 204 No Content\r\n\r\n", True),
    ],
)
def test_an_answer_keeps_its_connection_only_when_http_says_so(wire, reply, kept):
    with HostileServer(lambda request: reply) as server:
        answer = _get(wire, server.url + "/x")
    assert answer.content == (b"" if answer.status_code == 204 else b"{}")
    assert sum(len(idle) for idle in wire._idle.values()) == (1 if kept else 0)


def test_a_body_without_a_length_ends_with_the_connection(wire):
    port, thread = _one_shot_server([b'HTTP/1.1 200 OK\r\nX-A:  b \r\n\r\n{"a": 1}'])
    answer = _get(wire, f"http://127.0.0.1:{port}/")
    assert (answer.content, answer.headers["x-a"]) == (b'{"a": 1}', "b")
    thread.join()


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (b"SPDY/3 200 OK\r\n\r\n", "not an HTTP/1.x status line"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "not an HTTP/1.x status line"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "not a header line"),
        (b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 101 + b"\r\n", "more than 100 headers"),
        (b"HTTP/1.1 200 OK\r\nX-A: " + b"b" * 70_000 + b"\r\n\r\n", "header line is too long"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "Content-Length is not a length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}", "ended after 2 of 10 bytes"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "chunked body is malformed",
        ),
    ],
)
def test_a_malformed_answer_is_a_protocol_error(wire, reply, message):
    port, thread = _one_shot_server([reply])
    with pytest.raises(RemoteProtocolError, match=message):
        _get(wire, f"http://127.0.0.1:{port}/")
    thread.join()


def test_a_body_over_the_limit_is_refused_by_its_length_or_as_it_comes(wire):
    huge = f"HTTP/1.1 200 OK\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n".encode()
    chunk = b"%x\r\n" % (MAX_BODY // 2) + b"x" * (MAX_BODY // 2) + b"\r\n"
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 3 + b"0\r\n\r\n"
    for reply in (huge, chunked):
        with (
            HostileServer(lambda request, reply=reply: reply) as server,
            pytest.raises(BodyTooLarge),
        ):
            _get(wire, server.url + "/x")


@pytest.mark.parametrize(
    "headers",
    [{"X-A": "b\r\nX-Injected: yes"}, {"X-A": "b\nc"}, {"X-A": "caf\u00e9\u2603"}, {"X A": "b"}],
)
def test_a_header_that_could_split_the_request_is_refused_before_sending(wire, headers):
    with HostileServer(lambda request: response(200, "{}")) as server:
        with pytest.raises(LocalProtocolError, match="a header holds a character"):
            _get(wire, server.url + "/x", **headers)
        with pytest.raises(LocalProtocolError, match="the URL holds a character"):
            _get(wire, server.url + "/x y")
        assert server.requests == []
