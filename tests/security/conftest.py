"""Fixtures for hostile-input and fault tests: a switchable TCP proxy in front of a real service."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from tests.conftest import free_port


class TcpProxy:
    """A loopback TCP proxy to `target` that a test switches between `up`, `refuse` (new connections
    are closed at once, live ones cut) and `hang` (connections accepted, nothing forwarded)."""

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.port = free_port()
        self.mode = "up"
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._server.settimeout(0.2)
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def set(self, mode: str) -> None:
        """Switch to `up`, `refuse` or `hang`; leaving `up` cuts the connections already open."""
        assert mode in ("up", "refuse", "hang")
        self.mode = mode
        if mode != "up":
            self._cut()

    def url(self, scheme: str, path: str = "") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self._stop.set()
        self._server.close()
        self._cut()

    def _cut(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except (TimeoutError, OSError):
                continue
            if self.mode == "refuse":
                client.close()
                continue
            if self.mode == "hang":
                with self._lock:
                    self._conns.append(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if self.mode != "up":
                    return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.fixture
def redis_proxy(redis_url: str) -> Iterator[TcpProxy]:
    """A switchable proxy in front of the test Redis; `proxy.url("redis", "/0")` reaches it."""
    from urllib.parse import urlparse

    parsed = urlparse(redis_url)
    proxy = TcpProxy(parsed.hostname or "127.0.0.1", parsed.port or 6379)
    yield proxy
    proxy.close()


@pytest.fixture
def postgres_proxy(postgres_url: str) -> Iterator[TcpProxy]:
    """A switchable proxy in front of the test PostgreSQL (the session's fresh database);
    `proxied(postgres_url, proxy)` is its URL through the proxy."""
    from urllib.parse import urlparse

    parsed = urlparse(postgres_url)
    proxy = TcpProxy(parsed.hostname or "127.0.0.1", parsed.port or 5432)
    yield proxy
    proxy.close()


def proxied(url: str, proxy: TcpProxy) -> str:
    """`url` with its host and port replaced by the proxy's."""
    import sqlalchemy as sa

    return sa.make_url(url).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
