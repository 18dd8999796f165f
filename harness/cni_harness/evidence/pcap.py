"""Packet captures as evidence (pure): read a pcap file's Ethernet/IPv4 packets, decode VXLAN
encapsulation, and summarise what the wire showed.

The reboot suite proves the tunnel mode from the fabric: in VXLAN mode pod traffic between
nodes is UDP between node IPs to the VXLAN port carrying our VNI, with the pod addresses
only inside; in native routing the pod addresses are on the wire as they are.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import Counter
from dataclasses import dataclass

VXLAN_PORTS = (8472, 4789)     # Linux's historical default (Cilium's) and the IANA port
ETH_P_IP = 0x0800
ETH_P_8021Q = 0x8100
LINKTYPE_ETHERNET = 1
LINKTYPE_LINUX_SLL = 113       # tcpdump -i any (older libpcap, or -y LINUX_SLL)
LINKTYPE_LINUX_SLL2 = 276      # tcpdump -i any (libpcap >= 1.10)
PACKET_OUTGOING = 4            # a cooked capture's "sent by us" (each bridged frame is also
                               # seen arriving on another port: counted once, there)
_MAGICS = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">",      # microseconds
           b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\x3c\x4d": ">"}      # nanoseconds


class CaptureError(ValueError):
    """The bytes are not a pcap file this module reads."""


@dataclass(frozen=True)
class Packet:
    """One IPv4 packet seen on the wire; `inner_*` set when it is VXLAN-encapsulated."""

    src: str
    dst: str
    proto: int
    sport: int | None = None
    dport: int | None = None
    vni: int | None = None
    inner_src: str | None = None
    inner_dst: str | None = None
    inner_proto: int | None = None

    @property
    def vxlan(self) -> bool:
        return self.vni is not None


def read_pcap(data: bytes) -> list[bytes]:
    """The frames of a classic pcap file as Ethernet frames. Cooked captures (`-i any`) are
    turned into Ethernet frames with zero MACs; their outgoing copies are left out."""
    if len(data) < 24 or data[:4] not in _MAGICS:
        raise CaptureError("not a pcap file (bad magic)")
    order = _MAGICS[data[:4]]
    linktype = struct.unpack_from(order + "I", data, 20)[0]
    if linktype not in (LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2):
        raise CaptureError(f"pcap link type {linktype}; read: Ethernet (1), Linux cooked "
                           "(113, 276)")
    frames, offset = [], 24
    while offset + 16 <= len(data):
        incl_len = struct.unpack_from(order + "I", data, offset + 8)[0]
        offset += 16
        frame = _as_ethernet(linktype, data[offset:offset + incl_len])
        if frame is not None:
            frames.append(frame)
        offset += incl_len
    return frames


def _as_ethernet(linktype: int, frame: bytes) -> bytes | None:
    if linktype == LINKTYPE_ETHERNET:
        return frame
    if linktype == LINKTYPE_LINUX_SLL and len(frame) >= 16:
        pkttype, proto, payload = struct.unpack_from("!H", frame, 0)[0], frame[14:16], \
            frame[16:]
    elif linktype == LINKTYPE_LINUX_SLL2 and len(frame) >= 20:
        pkttype, proto, payload = frame[10], frame[0:2], frame[20:]
    else:
        return None
    if pkttype == PACKET_OUTGOING:
        return None
    return b"\x00" * 12 + proto + payload


def _ipv4(frame: bytes) -> tuple[bytes, int] | None:
    """(the IPv4 packet, header length) of an Ethernet frame, or None."""
    if len(frame) < 14:
        return None
    ethertype, offset = struct.unpack_from("!H", frame, 12)[0], 14
    if ethertype == ETH_P_8021Q and len(frame) >= 18:
        ethertype, offset = struct.unpack_from("!H", frame, 16)[0], 18
    ip = frame[offset:]
    if ethertype != ETH_P_IP or len(ip) < 20 or ip[0] >> 4 != 4:
        return None
    return ip, (ip[0] & 0x0F) * 4


def decode(frame: bytes, vxlan_ports: tuple[int, ...] = VXLAN_PORTS) -> Packet | None:
    """The IPv4 packet in an Ethernet frame (None for anything else)."""
    parsed = _ipv4(frame)
    if parsed is None:
        return None
    ip, ihl = parsed
    src, dst = (str(ipaddress.IPv4Address(ip[12:16])), str(ipaddress.IPv4Address(ip[16:20])))
    proto = ip[9]
    l4 = ip[ihl:]
    if proto not in (6, 17) or len(l4) < 4:
        return Packet(src, dst, proto)
    sport, dport = struct.unpack_from("!HH", l4, 0)
    if proto == 17 and dport in vxlan_ports and len(l4) >= 16 and l4[8] & 0x08:
        vni = int.from_bytes(l4[12:15], "big")
        inner = _ipv4(l4[16:])
        if inner is not None:
            iip = inner[0]
            return Packet(src, dst, proto, sport, dport, vni,
                          str(ipaddress.IPv4Address(iip[12:16])),
                          str(ipaddress.IPv4Address(iip[16:20])), iip[9])
        return Packet(src, dst, proto, sport, dport, vni)
    return Packet(src, dst, proto, sport, dport)


def summarize(packets: list[Packet], pod_cidr: str) -> dict:
    """What the capture shows: VXLAN packets (ports, VNIs, the inner pod address pairs) and
    plain packets with a pod address as source or destination (native routing)."""
    pods = ipaddress.ip_network(pod_cidr)

    def is_pod(addr: str | None) -> bool:
        return addr is not None and ipaddress.ip_address(addr) in pods

    vxlan = [p for p in packets if p.vxlan]
    plain_pod = [p for p in packets if not p.vxlan and (is_pod(p.src) or is_pod(p.dst))]
    return {
        "packets": len(packets),
        "vxlan": {
            "packets": len(vxlan),
            "ports": sorted({p.dport for p in vxlan}),
            "vnis": sorted({p.vni for p in vxlan}),
            "outer": dict(Counter(f"{p.src}>{p.dst}" for p in vxlan).most_common(6)),
            "inner": dict(Counter(f"{p.inner_src}>{p.inner_dst}" for p in vxlan
                                  if is_pod(p.inner_src) or is_pod(p.inner_dst)
                                  ).most_common(6)),
        },
        "plainPod": {
            "packets": len(plain_pod),
            "pairs": dict(Counter(f"{p.src}>{p.dst}" for p in plain_pod).most_common(6)),
        },
    }


def summarize_pcap(data: bytes, pod_cidr: str) -> dict:
    """read_pcap + decode + summarize."""
    packets = [p for p in (decode(f) for f in read_pcap(data)) if p is not None]
    return summarize(packets, pod_cidr)
