"""A `virtiofsd` with the Rust daemon's command line, run by qemu 7.2's C daemon.

virtme-ng starts `virtiofsd --socket-path S --shared-dir D --cache C --sandbox none ...`
and waits for `S.pid`. Debian 12 ships only qemu's C daemon (`/usr/lib/qemu/virtiofsd`),
whose options are `--socket-path=S -o source=D -o cache=C`. This shim translates, starts it,
waits for the socket, then writes the daemon's pid to `S.pid` so virtme-ng can stop it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Sequence

C_DAEMON = "/usr/lib/qemu/virtiofsd"
VERSION = "virtiofsd shim for qemu's C virtiofsd (cni-harness)"
_VALUE_OPTIONS = ("--socket-path", "--shared-dir", "--cache", "--sandbox", "--socket-group",
                  "--thread-pool-size", "--log-level", "--fd", "--rlimit-nofile")
_CACHE_MODES = {"auto": "auto", "always": "always", "never": "none", "none": "none",
                "metadata": "auto"}


class ShimUsage(ValueError):
    """The command line cannot be translated."""


@dataclass(frozen=True)
class Translation:
    socket: str
    argv: list[str]


def translate(args: Sequence[str], daemon: str = C_DAEMON) -> Translation:
    """Rust-style options -> the C daemon's argv. Unknown flags are dropped (both daemons
    share defaults for what virtme-ng passes: syslog, submount and ACL flags)."""
    values: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, value = arg.partition("=")
        if name in _VALUE_OPTIONS:
            if not eq:
                if i + 1 >= len(args):
                    raise ShimUsage(f"{name} needs a value")
                i += 1
                value = args[i]
            values[name] = value
        i += 1
    socket, shared = values.get("--socket-path"), values.get("--shared-dir")
    if not socket or not shared:
        raise ShimUsage("--socket-path and --shared-dir are required")
    cache = _CACHE_MODES.get(values.get("--cache", "auto"), "auto")
    # The C daemon's namespace sandbox needs privileges a container may lack; chroot into
    # the shared directory is what it offers for that case (virtme-ng asks for none).
    argv = [daemon, f"--socket-path={socket}", "-o", f"source={shared}", "-o", f"cache={cache}",
            "-o", "sandbox=chroot", "-o", "log_level=warn"]
    return Translation(socket, argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("--version", "-V") for a in args):
        print(VERSION)
        return 0
    if any(a in ("--help", "-h") for a in args):
        print(f"usage: virtiofsd --socket-path PATH --shared-dir DIR [--cache MODE]\n{VERSION}")
        return 0
    try:
        plan = translate(args)
    except ShimUsage as exc:
        print(f"virtiofsd shim: {exc}", file=sys.stderr)
        return 2
    daemon = subprocess.Popen(plan.argv, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not os.path.exists(plan.socket):
        if daemon.poll() is not None or time.monotonic() > deadline:
            daemon.kill()
            print(f"virtiofsd shim: {C_DAEMON} did not create {plan.socket}", file=sys.stderr)
            return 1
        time.sleep(0.02)
    tmp = f"{plan.socket}.pid.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(f"{daemon.pid}\n")
    os.replace(tmp, f"{plan.socket}.pid")
    return daemon.wait()


if __name__ == "__main__":
    sys.exit(main())
