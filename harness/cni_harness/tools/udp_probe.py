#!/usr/bin/env python3
"""Send one UDP datagram and print the answer (or exit 1 after a timeout)."""

from __future__ import annotations

import argparse
import socket
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(args.timeout)
    sock.sendto(b"ping", (args.host, args.port))
    try:
        data, _peer = sock.recvfrom(2048)
    except socket.timeout:
        print(f"no answer from {args.host}:{args.port}/udp in {args.timeout} s", file=sys.stderr)
        return 1
    sys.stdout.write(data.decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
