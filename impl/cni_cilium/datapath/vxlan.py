"""The node's VXLAN device for `tunnelMode: VXLAN` (edge: pyroute2).

One device in collect-metadata ("external") mode: it has no remote of its own; the BPF
programs give each packet its outer destination and VNI (`bpf_skb_set_tunnel_key`) and
redirect it here, and the device hands decapsulated packets, with their tunnel metadata,
to `from_overlay`. NOARP: no neighbour is ever resolved over the overlay (the receiving
program marks the inner frame as addressed to its node).
"""

from __future__ import annotations

from ..tunnel import VXLAN_DEVICE, VXLAN_PORT
from .links import IFF_NOARP, set_noarp


def _vxlan_data(link) -> dict:
    info = link.get_attr("IFLA_LINKINFO")
    if info is None or info.get_attr("IFLA_INFO_KIND") != "vxlan":
        return {}
    data = info.get_attr("IFLA_INFO_DATA")
    return {"port": data.get_attr("IFLA_VXLAN_PORT"),
            "external": bool(data.get_attr("IFLA_VXLAN_COLLECT_METADATA"))}


def ensure_device(ipr, mtu: int, name: str = VXLAN_DEVICE, port: int = VXLAN_PORT) -> int:
    """Create (or fix) the device: external mode, UDP `port`, no learning, NOARP, `mtu`,
    up. Returns its ifindex. A same-named device of another kind or port is replaced."""
    found = ipr.link_lookup(ifname=name)
    if found:
        link = ipr.get_links(found[0])[0]
        if _vxlan_data(link) != {"port": port, "external": True}:
            ipr.link("del", index=found[0])
            found = []
    if not found:
        ipr.link("add", ifname=name, kind="vxlan", vxlan_collect_metadata=1,
                 vxlan_port=port, vxlan_learning=0)
        found = ipr.link_lookup(ifname=name)
    index = found[0]
    link = ipr.get_links(index)[0]
    if link.get_attr("IFLA_MTU") != mtu:
        ipr.link("set", index=index, mtu=mtu)
    if not link["flags"] & IFF_NOARP:
        set_noarp(ipr, index)
    ipr.link("set", index=index, state="up")
    with open(f"/proc/sys/net/ipv4/conf/{name}/rp_filter", "w", encoding="ascii") as fh:
        fh.write("0")
    return index


def remove_device(ipr, name: str = VXLAN_DEVICE) -> bool:
    """Delete the device; False when there was none."""
    found = ipr.link_lookup(ifname=name)
    if not found:
        return False
    ipr.link("del", index=found[0])
    return True
