"""kube-proxy's health-check node ports for externalTrafficPolicy: Local services (edge).

One thread serves every port: 200 when the node has local endpoints for the service, 503
when it has none, with kube-proxy's JSON body, so external load balancers send traffic only
to nodes that can answer it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import selectors
import socket
import threading
from typing import Mapping

from .translate import HealthCheck

log = logging.getLogger("cni-cilium.healthcheck")
_REASONS = {200: "OK", 503: "Service Unavailable"}


def http_response(check: HealthCheck) -> bytes:
    """The full HTTP/1.1 response for one check."""
    body = json.dumps(check.body(), separators=(",", ":")).encode()
    head = (f"HTTP/1.1 {check.status} {_REASONS[check.status]}\r\n"
            "Content-Type: application/json\r\n"
            "X-Content-Type-Options: nosniff\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n")
    return head.encode() + body


class HealthCheckServer:
    """Listens on bind_ip:<port> for every check handed to `update`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wanted: tuple[str, dict[int, HealthCheck]] = ("", {})
        self._listeners: dict[tuple[str, int], socket.socket] = {}
        self._selector = selectors.DefaultSelector()
        self._stop = threading.Event()
        self.errors: dict[int, str] = {}
        self._thread = threading.Thread(target=self._run, name="healthcheck", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def update(self, bind_ip: str, checks: Mapping[int, HealthCheck]) -> None:
        with self._lock:
            self._wanted = (bind_ip, dict(checks))

    def _sync_listeners(self) -> None:
        with self._lock:
            bind_ip, checks = self._wanted
        want = {(bind_ip, port) for port in checks} if bind_ip else set()
        for key in list(self._listeners):
            if key not in want:
                sock = self._listeners.pop(key)
                self._selector.unregister(sock)
                sock.close()
        for key in want - set(self._listeners):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(key)
                sock.listen(64)
            except OSError as exc:
                sock.close()
                if self.errors.get(key[1]) != str(exc):
                    log.error("health check port %s:%d: cannot listen: %s", *key, exc)
                self.errors[key[1]] = str(exc)
                continue
            self.errors.pop(key[1], None)
            sock.setblocking(False)
            self._selector.register(sock, selectors.EVENT_READ, key[1])
            self._listeners[key] = sock
            log.info("health check node port listening on %s:%d", *key)

    def _answer(self, conn: socket.socket, port: int) -> None:
        with self._lock:
            check = self._wanted[1].get(port)
        conn.settimeout(1.0)
        with contextlib.suppress(OSError):
            data = b""
            while b"\r\n\r\n" not in data and len(data) < 8192:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            if check is not None:
                conn.sendall(http_response(check))
        conn.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sync_listeners()
            for key, _ in self._selector.select(timeout=0.2):
                sock = key.fileobj
                try:
                    conn, _addr = sock.accept()  # type: ignore[union-attr]
                except OSError:
                    continue
                self._answer(conn, key.data)
        for sock in self._listeners.values():
            sock.close()
