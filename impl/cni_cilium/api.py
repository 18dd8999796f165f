"""The agent API: HTTP over a unix socket (`/status`, `/services`, `/metrics`) (edge)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import socketserver
import threading
from http.server import BaseHTTPRequestHandler
from typing import Callable, Mapping, Tuple
from urllib.parse import parse_qs, urlsplit

from . import paths

Response = Tuple[int, str, bytes]     # status, content type, body
Route = Callable[..., Response]        # () or, marked by `with_query`, (query mapping)


def with_query(route: Callable[[Mapping[str, str]], Response]) -> Route:
    """A route that takes the request's query parameters (first value of each)."""
    def handler(query: Mapping[str, str]) -> Response:
        return route(query)

    handler.wants_query = True  # type: ignore[attr-defined]
    return handler


def json_response(doc: object, status: int = 200) -> Response:
    return status, "application/json", (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def serve(socket_path: str, routes: Mapping[str, Route]) -> _Server:
    """Serve `routes` (path -> handler) on a unix socket in a background thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            route = routes.get(url.path)
            if route is None:
                status, ctype, body = json_response(
                    {"error": f"no such path {self.path}", "paths": sorted(routes)}, 404)
            else:
                try:
                    if getattr(route, "wants_query", False):
                        query = {k: v[0] for k, v in parse_qs(url.query).items()}
                        status, ctype, body = route(query)
                    else:
                        status, ctype, body = route()
                except Exception as exc:  # report, keep serving
                    status, ctype, body = json_response({"error": repr(exc)}, 500)
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args) -> None:
            return

    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)
    os.makedirs(os.path.dirname(socket_path), exist_ok=True)
    server = _Server(socket_path, Handler)
    os.chmod(socket_path, 0o600)
    threading.Thread(target=server.serve_forever, name="agent-api", daemon=True).start()
    return server


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._socket_path)
        self.sock = sock


class AgentUnreachable(RuntimeError):
    """No agent answers on the socket."""


def get(path: str, socket_path: str = paths.AGENT_SOCKET, timeout: float = 10.0
        ) -> tuple[int, bytes]:
    """GET a path from the agent: (status, body)."""
    conn = _UnixConnection(socket_path, timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    except (FileNotFoundError, ConnectionRefusedError, socket.timeout) as exc:
        raise AgentUnreachable(f"no agent answers on {socket_path}: {exc}") from exc
    finally:
        conn.close()


def get_json(path: str, socket_path: str = paths.AGENT_SOCKET, timeout: float = 10.0) -> dict:
    status, body = get(path, socket_path, timeout)
    doc = json.loads(body)
    if status != 200:
        raise AgentUnreachable(f"agent answered {status} on {path}: {doc.get('error', doc)}")
    return doc
