"""Edge helpers for network namespaces and processes (iproute2, nsenter, /proc).

Everything that touches the kernel's namespaces from the harness side goes through here,
so the provider logic stays readable and the one place that runs `ip` is easy to audit:
links and addresses are only ever created inside a named namespace (`ip -n NS`), never in
the root namespace.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from typing import Iterable, Sequence

IP = "ip"


class CommandError(RuntimeError):
    """A command failed; the message has its argv and stderr."""


def run(argv: Sequence[str], *, input: str | None = None, check: bool = True,
        timeout: float = 60) -> subprocess.CompletedProcess:
    res = subprocess.run(list(argv), input=input, capture_output=True, text=True,
                         timeout=timeout, check=False)
    if check and res.returncode != 0:
        raise CommandError(f"{' '.join(argv)}: exit {res.returncode}: "
                           f"{(res.stderr or res.stdout).strip()}")
    return res


def list_netns() -> set[str]:
    """Names of the named network namespaces (`ip netns list`)."""
    out = run([IP, "netns", "list"]).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def add_netns(name: str) -> None:
    run([IP, "netns", "add", name])


def ip_batch(netns: str, commands: Iterable[str]) -> None:
    """Run iproute2 commands inside one namespace (`ip -n NS -batch -`)."""
    text = "\n".join(commands) + "\n"
    run([IP, "-n", netns, "-batch", "-"], input=text)


def nft(netns: str, script: str | None = None, *args: str) -> subprocess.CompletedProcess:
    """nftables inside a namespace: `script` through `nft -f -`, else `nft ARGS`."""
    base = ["nsenter", f"--net=/run/netns/{netns}", "nft"]
    if script is not None:
        return run([*base, "-f", "-"], input=script)
    return run([*base, *args])


def sysctl(netns: str, values: dict[str, str]) -> None:
    """Set network sysctls of a namespace (they are per namespace)."""
    args = [f"{k}={v}" for k, v in values.items()]
    run(["nsenter", f"--net=/run/netns/{netns}", "sysctl", "-qw", *args])


def netns_pids(name: str) -> list[int]:
    res = run([IP, "netns", "pids", name], check=False)
    return [int(p) for p in res.stdout.split() if p.isdigit()]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (identity beside the pid)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            raw = fh.read()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def find_processes(*required: str) -> list[int]:
    """Pids whose argv contains every `required` argument exactly (as whole arguments)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        args = cmdline(int(entry))
        if args and all(r in args for r in required):
            found.append(int(entry))
    return found


def kill_and_wait(pids: Iterable[int], sig: int = signal.SIGKILL, timeout: float = 10) -> bool:
    """Signal processes and wait until they are gone; returns whether all went."""
    pids = list(pids)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if pid_alive(p) and not _is_zombie(p)]
        if not alive:
            return True
        time.sleep(0.02)
    return False


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def delete_netns(name: str) -> bool:
    """Kill every process in a namespace, then delete it; False if it did not exist."""
    if name not in list_netns():
        return False
    for _ in range(5):
        pids = netns_pids(name)
        if not pids:
            break
        kill_and_wait(pids)
    run([IP, "netns", "delete", name])
    return True
