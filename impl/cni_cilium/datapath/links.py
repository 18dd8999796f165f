"""Links and addresses (edge: pyroute2): the agent's netlink socket and the link queries and
changes it needs besides tc filters (`tc`), routes (`routes`) and the VXLAN device (`vxlan`).
"""

from __future__ import annotations

import socket

IFF_NOARP = 0x80


def open_netlink():
    """A netlink socket (pyroute2 IPRoute) for one thread; close it (or use `with`)."""
    from pyroute2 import IPRoute

    return IPRoute()


def ifindex(ipr, device: str) -> int | None:
    """The index of a device, or None when there is none of that name."""
    found = ipr.link_lookup(ifname=device)
    return found[0] if found else None


def device_with_address(ipr, address: str) -> str | None:
    """The name of the device holding an IPv4 address, or None."""
    for msg in ipr.get_addr(family=socket.AF_INET):
        if msg.get_attr("IFA_ADDRESS") == address:
            return ipr.get_links(msg["index"])[0].get_attr("IFLA_IFNAME")
    return None


def mtu(ipr, index: int) -> int:
    return ipr.get_links(index)[0].get_attr("IFLA_MTU")


def set_noarp(ipr, index: int) -> None:
    """No neighbour resolution on the device (addresses behind it have no neighbour)."""
    ipr.link("set", index=index, flags=IFF_NOARP, change=IFF_NOARP)


def all_links(ipr) -> list[tuple[int, str]]:
    """(index, name) of every device."""
    return [(link["index"], link.get_attr("IFLA_IFNAME")) for link in ipr.get_links()]


IFA_F_SECONDARY = 0x01
# Devices whose addresses are not the node's: loopback, the pod gateway pair, pods, tunnel.
NOT_NODE_DEVICES = ("lo", "cilium_", "lxc")


def node_interfaces(ipr) -> tuple[dict[str, str], tuple[str, ...]]:
    """({interface: its primary IPv4}, every IPv4 address of the node) in this network
    namespace, leaving out loopback, cilium_* and pods' lxc* devices."""
    names = dict(all_links(ipr))
    primary: dict[str, str] = {}
    addresses: list[str] = []
    for msg in ipr.get_addr(family=socket.AF_INET):
        name = names.get(msg["index"], "")
        addr = msg.get_attr("IFA_ADDRESS")
        if not name or not addr or name.startswith(NOT_NODE_DEVICES):
            continue
        addresses.append(addr)
        flags = msg.get_attr("IFA_FLAGS") or msg["flags"]
        if not flags & IFA_F_SECONDARY:
            primary.setdefault(name, addr)
    return primary, tuple(addresses)


def interface_mac(device: str) -> str:
    """A device's MAC address ("" when it has none or is gone)."""
    try:
        with open(f"/sys/class/net/{device}/address", encoding="ascii") as fh:
            return fh.read().strip()
    except OSError:
        return ""
