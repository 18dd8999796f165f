#!/usr/bin/env python3
"""A pod's server that reports the peer address it saw.

TCP (HTTP/1.0): `GET /` answers JSON {"name", "peer", "peerPort", "local", "localPort"};
`GET /stream?seconds=S&rate=BYTES_PER_S` sends S*rate bytes at that rate (a long-lived
stream for restart tests). UDP on the same port answers each datagram with the same JSON.
Standalone on purpose: it runs with the system Python inside a pod's network namespace.
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

CHUNK = 16384


def report(name: str, peer: tuple, local: tuple) -> bytes:
    return json.dumps({"name": name, "peer": peer[0], "peerPort": peer[1], "local": local[0],
                       "localPort": local[1]}).encode() + b"\n"


def make_handler(name: str):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlparse(self.path)
            if url.path == "/stream":
                query = parse_qs(url.query)
                seconds = float(query.get("seconds", ["5"])[0])
                rate = int(query.get("rate", ["262144"])[0])
                total = int(seconds * rate)
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(total))
                self.end_headers()
                sent, start, chunk = 0, time.monotonic(), b"x" * CHUNK
                while sent < total:
                    due = start + sent / rate
                    delay = due - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    n = min(CHUNK, total - sent)
                    self.wfile.write(chunk[:n])
                    sent += n
                return
            body = report(name, self.client_address, self.connection.getsockname())
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args) -> None:
            return

    return Handler


def serve_udp(name: str, port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    while True:
        _data, peer = sock.recvfrom(2048)
        sock.sendto(report(name, peer, sock.getsockname()), peer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="name reported in every answer")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    threading.Thread(target=serve_udp, args=(args.name, args.port), daemon=True).start()
    ThreadingHTTPServer.daemon_threads = True
    # socketserver's default listen backlog of 5 overflows under a burst of connections:
    # the kernel then drops SYNs, which would look like a datapath that loses them.
    ThreadingHTTPServer.request_queue_size = 1024
    ThreadingHTTPServer(("0.0.0.0", args.port), make_handler(args.name)).serve_forever()


if __name__ == "__main__":
    main()
