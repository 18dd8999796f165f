"""Pod address management for one node's pod CIDR.

Leases are kept per subnet in one JSON file under /var/lib/cni-cilium/ipam/ (the node's
disk, so they survive a reboot), changed under an exclusive lock. The allocation itself is
pure (`allocate`, `release`, `collect`) and unit-tested; `LeaseStore` is the file edge.

Addresses rotate: a freed address is handed out again only after the rest of the range,
so a new pod does not inherit a recently deleted pod's conntrack entries.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
from typing import Callable, Iterable

from . import paths


class IpamError(RuntimeError):
    """No address can be given (range exhausted, bad subnet)."""


def empty_state() -> dict:
    return {"leases": {}, "last": None}


def usable_range(subnet: str) -> list[str]:
    """Addresses pods may get: the subnet's hosts minus the gateway (the first host)."""
    net = ipaddress.IPv4Network(subnet, strict=True)
    if net.prefixlen > 30:
        raise IpamError(f"subnet {subnet} is too small for pods (need /30 or larger)")
    hosts = [str(h) for h in net.hosts()]
    return hosts[1:]


def find_lease(state: dict, container_id: str, ifname: str) -> str | None:
    for ip, lease in state["leases"].items():
        if lease.get("containerID") == container_id and lease.get("ifname") == ifname:
            return ip
    return None


def allocate(state: dict, subnet: str, container_id: str, ifname: str, netns: str,
             netns_exists: Callable[[str], bool]) -> tuple[str, dict]:
    """Give `container_id` an address (the same one again if it has a lease).

    Leases whose network namespace is gone (the pod died with its node) are reclaimed
    first. Returns (address, new state); `state` is not modified.
    """
    new = {"leases": dict(state.get("leases", {})), "last": state.get("last")}
    existing = find_lease(new, container_id, ifname)
    if existing:
        return existing, new
    for ip, lease in list(new["leases"].items()):
        if not netns_exists(lease.get("netns", "")):
            del new["leases"][ip]
    candidates = usable_range(subnet)
    start = 0
    if new["last"] in candidates:
        start = candidates.index(new["last"]) + 1
    for offset in range(len(candidates)):
        ip = candidates[(start + offset) % len(candidates)]
        if ip not in new["leases"]:
            new["leases"][ip] = {"containerID": container_id, "ifname": ifname, "netns": netns}
            new["last"] = ip
            return ip, new
    raise IpamError(f"no free address in {subnet} ({len(candidates)} in use)")


def release(state: dict, container_id: str, ifname: str) -> tuple[str | None, dict]:
    """Free the container's address; (freed address or None, new state)."""
    new = {"leases": dict(state.get("leases", {})), "last": state.get("last")}
    ip = find_lease(new, container_id, ifname)
    if ip:
        del new["leases"][ip]
    return ip, new


def collect(state: dict, valid: Iterable[tuple[str, str]]) -> tuple[list[str], dict]:
    """Garbage collection (CNI GC): free every lease not in `valid` (containerID, ifname)."""
    keep = set(valid)
    new = {"leases": {}, "last": state.get("last")}
    freed = []
    for ip, lease in state.get("leases", {}).items():
        if (lease.get("containerID"), lease.get("ifname")) in keep:
            new["leases"][ip] = lease
        else:
            freed.append(ip)
    return freed, new


class LeaseStore:
    """The lease file of one subnet, used as `with LeaseStore(subnet) as store:`."""

    def __init__(self, subnet: str, directory: str = paths.IPAM_DIR):
        self.subnet = str(ipaddress.IPv4Network(subnet, strict=True))
        self.directory = directory
        self.path = os.path.join(directory, self.subnet.replace("/", "_") + ".json")
        self.state = empty_state()
        self._lock_fd: int | None = None

    def __enter__(self) -> LeaseStore:
        os.makedirs(self.directory, exist_ok=True)
        self._lock_fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        with contextlib.suppress(FileNotFoundError), open(self.path, encoding="utf-8") as fh:
            self.state = json.load(fh)
        return self

    def save(self, state: dict) -> None:
        tmp = f"{self.path}.tmp.{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(state, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        self.state = state

    def __exit__(self, *exc) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
