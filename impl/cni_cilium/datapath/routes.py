"""Routes the agent owns (edge): other nodes' pod CIDRs (via the node in native routing,
into the overlay through cilium_host in VXLAN mode) and the service range.

Every route carries the agent's routing protocol number, so the agent finds and removes
exactly its own routes and nothing an administrator added.
"""

from __future__ import annotations

import socket

RT_PROTO = 211  # "cni-cilium" in rt_protos terms; any unassigned number works
MAIN_TABLE = 254


def owned_routes(ipr) -> dict[str, dict]:
    """Our IPv4 routes in the main table: cidr -> {"gateway", "oif", "prefsrc", "mtu"}."""
    out: dict[str, dict] = {}
    for msg in ipr.get_routes(family=socket.AF_INET, table=MAIN_TABLE):
        if msg["proto"] != RT_PROTO:
            continue
        cidr = f"{msg.get_attr('RTA_DST') or '0.0.0.0'}/{msg['dst_len']}"
        metrics = msg.get_attr("RTA_METRICS")
        out[cidr] = {"gateway": msg.get_attr("RTA_GATEWAY"), "oif": msg.get_attr("RTA_OIF"),
                     "prefsrc": msg.get_attr("RTA_PREFSRC"),
                     "mtu": metrics.get_attr("RTAX_MTU") if metrics is not None else None}
    return out


def node_routes(ipr) -> dict[str, str]:
    """Our routes via a gateway (other nodes' pod CIDRs): cidr -> gateway."""
    return {cidr: r["gateway"] for cidr, r in owned_routes(ipr).items() if r["gateway"]}


def replace_via(ipr, cidr: str, gateway: str) -> None:
    ipr.route("replace", dst=cidr, gateway=gateway, proto=RT_PROTO, table=MAIN_TABLE)


def dev_routes(ipr, oif: int) -> dict[str, tuple[str | None, int | None]]:
    """Our routes out of a device without a gateway: cidr -> (prefsrc, mtu)."""
    return {cidr: (r["prefsrc"], r["mtu"]) for cidr, r in owned_routes(ipr).items()
            if r["oif"] == oif and not r["gateway"]}


def replace_dev(ipr, cidr: str, oif: int, prefsrc: str, mtu: int | None = None) -> None:
    """A route out of a device with a chosen source (the service range and, in VXLAN mode,
    other nodes' pod CIDRs via cilium_host), with an MTU when given."""
    extra = {"metrics": {"mtu": mtu}} if mtu else {}
    ipr.route("replace", dst=cidr, oif=oif, prefsrc=prefsrc, proto=RT_PROTO,
              table=MAIN_TABLE, scope=253, **extra)  # link scope: no gateway


def delete(ipr, cidr: str) -> None:
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        ipr.route("del", dst=cidr, proto=RT_PROTO, table=MAIN_TABLE)
    except NetlinkError as exc:
        if exc.code != 3:  # ESRCH: already gone
            raise
