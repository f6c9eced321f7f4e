"""The pooled transport over real sockets: keep-alive, stale connections, errors."""

import socket
import threading

import httpx
import pytest

from reconciler.emulator import serve
from reconciler.transport import PooledTransport


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
