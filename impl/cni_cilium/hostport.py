"""HostPort: a pod's `hostPort` as a service frontend with one local backend (pure).

A container port with `hostPort` makes the pod reachable on that port of its node. Here it
is a frontend in `lb_frontends` like a NodePort with externalTrafficPolicy Local (flags
external, node address, local only) whose single slot is the pod, programmed only on the
pod's node: the same DNAT, reverse NAT and FIB redirect as a NodePort, in every LB mode
(the backend is local, so DSR and SNAT never apply).

Addresses (the documented limitation, deckhouse#3035): by default one node address,
preferring a private (RFC 1918) one when the node has several: the InternalIP when it is
private, else the first private address, else the InternalIP. `hostPortAllAddresses: true`
binds every address of the node; a port's `hostIP` binds that address only (it must be one
of the node's).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable, Sequence

from .bpfabi import Backend, Frontend, ip_bytes
from .manifests import Node, Pod

RFC1918 = tuple(ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12",
                                                    "192.168.0.0/16"))


def is_rfc1918(addr: str) -> bool:
    """A private address in RFC 1918's sense (not Python's wider `is_private`, which also
    counts the documentation ranges)."""
    ip = ipaddress.IPv4Address(addr)
    return any(ip in net for net in RFC1918)


def node_addresses(node: Node, found: Iterable[str]) -> tuple[str, ...]:
    """The node's IPv4 addresses, InternalIP first, the rest in address order."""
    rest = sorted({a for a in found if a != node.internal_ip}, key=ip_bytes)
    return (node.internal_ip, *rest)


def default_addresses(node: Node, addresses: Sequence[str], bind_all: bool) -> tuple[str, ...]:
    """Where a hostPort without hostIP listens on this node."""
    addresses = node_addresses(node, addresses)
    if bind_all:
        return addresses
    private = [a for a in addresses if is_rfc1918(a)]
    return (private[0] if private else node.internal_ip,)


@dataclass(frozen=True)
class HostPortFrontend:
    owner: str             # "Pod namespace/name"
    path: str              # the container port's field path
    port_name: str
    frontend: Frontend
    backend: Backend
    pod: Pod


def host_port_frontends(node: Node, pods: Iterable[Pod], addresses: Sequence[str],
                        bind_all: bool) -> tuple[list[HostPortFrontend], list[str]]:
    """(frontends of this node's pods' host ports, problem lines)."""
    out: list[HostPortFrontend] = []
    problems: list[str] = []
    known = node_addresses(node, addresses)
    default = default_addresses(node, addresses, bind_all)
    for pod in sorted(pods, key=lambda p: (p.namespace, p.name)):
        if pod.node_name != node.name or pod.host_network or not pod.pod_ip:
            continue
        owner = f"Pod {pod.namespace}/{pod.name}"
        for index, port in enumerate(pod.ports):
            if port.host_port is None:
                continue
            path = f"ports[{index}]"     # in the pod's flattened container port list
            if port.host_ip is not None and port.host_ip not in known:
                problems.append(f"{owner}: {path}.hostIP: {port.host_ip} is not an address "
                                f"of Node {node.name} ({', '.join(known)}); not bound")
                continue
            for addr in (port.host_ip,) if port.host_ip else default:
                out.append(HostPortFrontend(
                    owner, f"{path}.hostPort", port.name,
                    Frontend(addr, port.host_port, port.protocol),
                    Backend(pod.pod_ip, port.container_port, local=True), pod))
    return out, problems
