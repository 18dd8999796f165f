#!/usr/bin/env python3
"""Ask a peer server (tools/peer_server.py) who it is and whom it saw.

`probe.py tcp|udp HOST PORT [--count N] [--timeout S] [--size BYTES] [--sport PORT]
[--rst] [--source ADDR]`
prints one JSON list: for each try either the server's answer ({"name", "peer", ...};
UDP answers add "replyFrom", the source the answer came from) or {"error": "..."}. Every
try is a new
connection (TCP) or a new socket (UDP), so each one is load-balanced afresh. (Rates are
measured with wrk: `cni-harness bench datapath`.)
`probe.py loop HOST PORT [--seconds S] [--interval I]` makes one TCP request every I seconds
until S seconds passed, MAX_LOOP requests were made or its stdin closes, printing one JSON
line per request as it ends: {"start", "end" (wall clock), and the answer or "error"}.
Standalone: it runs with the system Python in pods and namespaces.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import time

MAX_COUNT = 500
MAX_LOOP = 2000
MAX_LOOP_SECONDS = 300.0


def tcp_once(host: str, port: int, timeout: float, sport: int = 0, rst: bool = False,
             saddr: str = "") -> dict:
    """One HTTP/1.0 request on a new connection; `rst`: close it with a reset once the
    answer is in, so neither end keeps TIME_WAIT state for the 4-tuple (a fixed source
    port can be used again at once, even through another node to the same backend)."""
    source = (saddr or "0.0.0.0", sport) if sport or saddr else None
    with socket.create_connection((host, port), timeout=timeout,
                                  source_address=source) as sock:
        sock.settimeout(timeout)
        sock.sendall(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        if rst:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if b" 200 " not in status:
        return {"error": f"HTTP status line {status!r}"}
    return json.loads(body)


def udp_once(host: str, port: int, timeout: float, size: int = 3, sport: int = 0,
             saddr: str = "") -> dict:
    """One datagram of `size` bytes; the answer gets `replyFrom`, the address it came from
    (an unconnected socket takes answers from anywhere, so this is what the client saw)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        if sport or saddr:
            sock.bind((saddr or "0.0.0.0", sport))
        sock.sendto(b"who" + b"." * max(0, size - 3), (host, port))
        data, peer = sock.recvfrom(4096)
    answer = json.loads(data)
    answer["replyFrom"] = f"{peer[0]}:{peer[1]}"
    return answer


def request_loop(host: str, port: int, seconds: float, interval: float,
                 timeout: float) -> None:
    """A bounded loop of requests, one JSON line each; ends early when stdin closes (the
    caller is done), so nothing keeps running after a test."""
    import select

    started = time.monotonic()
    for _ in range(MAX_LOOP):
        if time.monotonic() - started > min(seconds, MAX_LOOP_SECONDS):
            break
        if select.select([sys.stdin], [], [], 0)[0] and not sys.stdin.read(1):
            break                                    # EOF: told to stop
        begin = time.time()
        try:
            line = tcp_once(host, port, timeout)
        except (OSError, ValueError) as exc:
            line = {"error": f"{type(exc).__name__}: {exc}"}
        line.update(start=round(begin, 3), end=round(time.time(), 3))
        print(json.dumps(line), flush=True)
        time.sleep(max(0.0, interval - (time.time() - begin)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("tcp", "udp", "loop"))
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--count", type=int, default=1, help="tries (tcp, udp)")
    parser.add_argument("--seconds", type=float, default=3.0, help="duration (loop)")
    parser.add_argument("--interval", type=float, default=0.2,
                        help="seconds from one request's start to the next one's (loop)")
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--size", type=int, default=3, help="UDP payload bytes (udp)")
    parser.add_argument("--sport", type=int, default=0,
                        help="source port of the first try, the next ones count up (default: "
                             "the kernel's choice); fresh tuples never meet old conntrack state")
    parser.add_argument("--rst", action="store_true",
                        help="tcp: end each connection with a reset (no TIME_WAIT anywhere)")
    parser.add_argument("--source", default="", metavar="ADDR",
                        help="source address (one of this host's; default: the route's)")
    args = parser.parse_args()
    if args.mode == "loop":
        request_loop(args.host, args.port, args.seconds, args.interval, args.timeout)
        return 0
    results = []
    for i in range(min(args.count, MAX_COUNT)):
        sport = args.sport + i if args.sport else 0
        try:
            if args.mode == "tcp":
                results.append(tcp_once(args.host, args.port, args.timeout, sport, args.rst,
                                        args.source))
            else:
                results.append(udp_once(args.host, args.port, args.timeout, args.size, sport,
                                        args.source))
        except (OSError, ValueError) as exc:
            results.append({"error": f"{type(exc).__name__}: {exc}"})
    json.dump(results, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
