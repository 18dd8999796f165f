"""The VXLAN overlay's fixed parameters and the MTU rule (pure).

In `tunnelMode: VXLAN` every node has one collect-metadata VXLAN device; the programs set
each packet's outer destination (the peer node's InternalIP) and VNI from BPF
(`bpf/lib/tunnel.h`), so the device needs no FDB entry and nothing changes on it when
nodes come and go: only the `tunnel_map` entries do.
"""

from __future__ import annotations

TUNNEL_MODES_WITH_OVERLAY = ("VXLAN",)
VXLAN_DEVICE = "cilium_vxlan"
VXLAN_PORT = 8472           # Cilium's (and the Linux kernel's historical) VXLAN port
VXLAN_VNI = 1               # one VNI for the whole cluster; checked on receipt
# Outer Ethernet (14) + IPv4 (20) + UDP (8) + VXLAN (8) headers.
VXLAN_OVERHEAD = 50
DEFAULT_UPLINK_MTU = 1500


def uses_overlay(tunnel_mode: str) -> bool:
    """Whether pod traffic between nodes is encapsulated in this mode."""
    return tunnel_mode in TUNNEL_MODES_WITH_OVERLAY


def pod_mtu(tunnel_mode: str, uplink_mtu: int = DEFAULT_UPLINK_MTU) -> int:
    """The MTU of pods (and of routes into the overlay): the uplink's, less the outer
    headers when packets are encapsulated, so an encapsulated full-size packet still fits
    the uplink without fragmentation."""
    return uplink_mtu - VXLAN_OVERHEAD if uses_overlay(tunnel_mode) else uplink_mtu
