"""Node host devices shared by the agent and the CNI plugin (edge: pyroute2, sysctl).

`cilium_host` <-> `cilium_net` is a veth pair (this project's kernels may lack the dummy
device). `cilium_host` holds the node's pod gateway address (first address of the pod CIDR),
so pods resolve their default gateway by ARP on their host-side veth, and host-originated
service traffic routed to it passes the BPF program on its egress.
"""

from __future__ import annotations

import ipaddress
import os

HOST_DEV = "cilium_host"
NET_DEV = "cilium_net"

NODE_SYSCTLS = {
    "net/ipv4/ip_forward": "1",
    "net/ipv4/conf/all/rp_filter": "0",
    "net/ipv4/conf/default/rp_filter": "0",
}


def gateway_of(pod_cidr: str) -> str:
    """The node's pod gateway: the first host address of its pod CIDR."""
    net = ipaddress.IPv4Network(pod_cidr)
    return str(net.network_address + 1)


def write_sysctl(key: str, value: str) -> None:
    with open(os.path.join("/proc/sys", key), "w", encoding="ascii") as fh:
        fh.write(value)


def ensure_node_sysctls() -> None:
    for key, value in NODE_SYSCTLS.items():
        write_sysctl(key, value)


def ensure_host_devices(pod_cidr: str) -> int:
    """Create cilium_host/cilium_net with the gateway (idempotent); returns its ifindex."""
    from pyroute2 import IPRoute

    gateway = gateway_of(pod_cidr)
    ensure_node_sysctls()
    with IPRoute() as ipr:
        if not ipr.link_lookup(ifname=HOST_DEV):
            try:
                ipr.link("add", ifname=HOST_DEV, kind="veth", peer=NET_DEV)
            except Exception:  # a concurrent creator won the race
                if not ipr.link_lookup(ifname=HOST_DEV):
                    raise
        host_idx = ipr.link_lookup(ifname=HOST_DEV)[0]
        net_idx = ipr.link_lookup(ifname=NET_DEV)[0]
        have = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=host_idx)}
        if gateway not in have:
            ipr.addr("add", index=host_idx, address=gateway, prefixlen=32)
        for idx in (host_idx, net_idx):
            ipr.link("set", index=idx, state="up")
    for dev in (HOST_DEV, NET_DEV):
        write_sysctl(f"net/ipv4/conf/{dev}/rp_filter", "0")
    return host_idx
