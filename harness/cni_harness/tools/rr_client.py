#!/usr/bin/env python3
"""Request rate: one new TCP connection per HTTP request, sequentially, for a bounded time.

Prints JSON {"requests", "errors", "seconds", "rate"}. Standalone (runs in a pod or a
namespace with the system Python).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time

MAX_SECONDS = 30.0


def one_request(host: str, port: int, timeout: float) -> bool:
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data.startswith(b"HTTP/1.") and b" 200 " in data.split(b"\r\n", 1)[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args()
    seconds = min(args.seconds, MAX_SECONDS)
    ok = errors = 0
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        try:
            if one_request(args.host, args.port, args.timeout):
                ok += 1
            else:
                errors += 1
        except OSError:
            errors += 1
    elapsed = time.monotonic() - start
    print(json.dumps({"requests": ok, "errors": errors, "seconds": round(elapsed, 3),
                      "rate": round(ok / elapsed, 1)}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
