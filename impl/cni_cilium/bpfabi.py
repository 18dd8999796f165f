"""The datapath's binary interface: byte layouts of every map key and value (pure).

Mirrors `bpf/lib/maps.h`; `tests/impl/test_bpfabi.py` checks the constants against the C
source and the sizes against what bcc compiled. Addresses and ports are kept in network
byte order exactly as the programs see them in packets; other integers are host order.
"""

from __future__ import annotations

import functools
import ipaddress
import struct
from dataclasses import dataclass

# Map names (pinned files) and their capacities, as declared in maps.h.
MAP_CAPACITY = {
    "lb_frontends": 65536,
    "lb_slots": 262144,
    "ct4": 262144,
    "node_cfg": 1,
    "no_masq": 1024,
    "stats": 28,
    "agent_state": 8,
    "tunnel_map": 4096,
    "tunnel_cfg": 1,
    "egress_policy": 16384,
    "egress_ips": 256,
}

PROTO_NUMBERS = {"TCP": 6, "UDP": 17}
PROTO_NAMES = {v: k for k, v in PROTO_NUMBERS.items()}

FE_EXTERNAL = 0x01
FE_NODEPORT = 0x02
FE_LOCAL_ONLY = 0x04

LB_ALGORITHMS = {"random": 0, "maglev": 1, "least-conn": 2}
LB_MODES = {"SNAT": 0, "DSR": 1}

BE_LOCAL = 0x01
BE_DSR = 0x02       # never stored: the datapath's mark of a DSR connection's backend

CT_SERVICE, CT_REPLY, CT_NAT_OUT, CT_NAT_IN = 1, 2, 3, 4
CT_KINDS = {CT_SERVICE: "service", CT_REPLY: "reply", CT_NAT_OUT: "nat-out", CT_NAT_IN: "nat-in"}

CT_F_REDIRECT = 0x01
CT_F_DSR = 0x02
CT_F_CLOSING = 0x04
CT_F_HOST = 0x08
CT_F_REPLIED = 0x20
CT_F_LOCAL_BACKEND = 0x40
CT_F_HAIRPIN = 0x80
CT_FLAG_NAMES = {
    CT_F_REDIRECT: "redirect",
    CT_F_DSR: "dsr",
    CT_F_CLOSING: "closing",
    CT_F_HOST: "host",
    CT_F_REPLIED: "replied",
    CT_F_LOCAL_BACKEND: "local-backend",
    CT_F_HAIRPIN: "hairpin",
}

CFG_F_MASQUERADE = 0x01

TUNNEL_F_NODE = 0x01

# egress_gw.action
EGW_EXCLUDED, EGW_SNAT, EGW_REDIRECT, EGW_NO_GATEWAY = 1, 2, 3, 4
EGW_ACTIONS = {EGW_EXCLUDED: "excluded", EGW_SNAT: "snat", EGW_REDIRECT: "redirect",
               EGW_NO_GATEWAY: "no-gateway"}

# enum stat_id, in order.
STAT_NAMES = (
    "svc_new", "svc_established", "rev_dnat", "snat_new", "snat", "rev_snat", "masq_new",
    "masq", "fib_redirect", "drop_no_backend", "drop_no_slot", "drop_nat_exhausted",
    "drop_fib", "drop_rewrite", "drop_not_service", "dsr_opt_added", "dsr_opt_received",
    "drop_dsr_too_big", "drop_dsr_option", "tunnel_encap", "tunnel_decap", "drop_tunnel",
    "drop_tunnel_source", "egw_snat_new", "egw_snat", "egw_redirect", "egw_rev_snat",
    "drop_no_egress_gw",
)

# agent_state slots (u64 each): bookkeeping that lives as long as the node's bpffs.
STATE_RESTARTS = 0      # agent starts since boot, minus one
STATE_SELF_HEALS = 1    # tc attachments restored since boot
STATE_TUNNEL_MODE = 2   # tunnel mode fixed at the first start after boot (TUNNEL_CODES)
TUNNEL_CODES = {"Disabled": 1, "VXLAN": 2}

_LB_KEY = struct.Struct("=4s2sBx")
_LB_FRONTEND = struct.Struct("=HBBB3x")
_LB_SLOT_KEY = struct.Struct("=4s2sBxH2x")
_LB_BACKEND = struct.Struct("=4s2sBx")
_CT_KEY = struct.Struct("=4s4s2s2sBBH")
_CT_ENTRY = struct.Struct("=4s2sHIIQQ")
_NODE_CONFIG = struct.Struct("=4s4s4sHHII")
_LPM_KEY = struct.Struct("=I4s")
_TUNNEL_ENDPOINT = struct.Struct("=4sB3x")
_TUNNEL_CONFIG = struct.Struct("=II")
_EGRESS_KEY = struct.Struct("=I4s4s")
_EGRESS_GW = struct.Struct("=4s4s6sBx")
U32 = struct.Struct("=I")
U64 = struct.Struct("=Q")

SIZES = {
    "lb_key": _LB_KEY.size,
    "lb_frontend": _LB_FRONTEND.size,
    "lb_slot_key": _LB_SLOT_KEY.size,
    "lb_backend": _LB_BACKEND.size,
    "ct_key": _CT_KEY.size,
    "ct_entry": _CT_ENTRY.size,
    "node_config": _NODE_CONFIG.size,
    "lpm_v4_key": _LPM_KEY.size,
    "tunnel_endpoint": _TUNNEL_ENDPOINT.size,
    "tunnel_config": _TUNNEL_CONFIG.size,
    "egress_key": _EGRESS_KEY.size,
    "egress_gw": _EGRESS_GW.size,
}


@functools.lru_cache(maxsize=1 << 16)
def ip_bytes(addr: str) -> bytes:
    """A dotted-quad IPv4 address in network order (addresses repeat: cached)."""
    try:
        raw = bytes(int(part) for part in addr.split("."))
    except ValueError:
        raw = b""
    if len(raw) != 4 or not addr.replace(".", "").isdigit():
        return ipaddress.IPv4Address(addr).packed  # raises with a clear message
    return raw


def ip_str(raw: bytes) -> str:
    return ".".join(str(b) for b in raw)


def port_bytes(port: int) -> bytes:
    return port.to_bytes(2, "big")


def port_int(raw: bytes) -> int:
    return int.from_bytes(raw, "big")


@dataclass(frozen=True, order=True)
class Frontend:
    """lb_key: an address clients connect to."""

    addr: str
    port: int
    proto: str

    def encode(self) -> bytes:
        return _LB_KEY.pack(ip_bytes(self.addr), port_bytes(self.port),
                            PROTO_NUMBERS[self.proto])

    @classmethod
    def decode(cls, raw: bytes) -> Frontend:
        addr, port, proto = _LB_KEY.unpack(raw)
        return cls(ip_str(addr), port_int(port), PROTO_NAMES.get(proto, str(proto)))

    def __str__(self) -> str:
        return f"{self.addr}:{self.port}/{self.proto}"


@dataclass(frozen=True)
class FrontendValue:
    """lb_frontend: how many backends, and how to treat the frontend."""

    count: int
    flags: int
    algorithm: int = LB_ALGORITHMS["random"]
    lb_mode: int = LB_MODES["SNAT"]

    def encode(self) -> bytes:
        return _LB_FRONTEND.pack(self.count, self.flags, self.algorithm, self.lb_mode)

    @classmethod
    def decode(cls, raw: bytes) -> FrontendValue:
        return cls(*_LB_FRONTEND.unpack(raw))


def slot_key(frontend: Frontend, slot: int) -> bytes:
    """lb_slot_key: backend `slot` (1-based) of a frontend."""
    return _LB_SLOT_KEY.pack(ip_bytes(frontend.addr), port_bytes(frontend.port),
                             PROTO_NUMBERS[frontend.proto], slot)


def decode_slot_key(raw: bytes) -> tuple[Frontend, int]:
    addr, port, proto, slot = _LB_SLOT_KEY.unpack(raw)
    return Frontend(ip_str(addr), port_int(port), PROTO_NAMES.get(proto, str(proto))), slot


@dataclass(frozen=True, order=True)
class Backend:
    """lb_backend: where a slot sends new connections."""

    addr: str
    port: int
    local: bool = False

    def encode(self) -> bytes:
        return _LB_BACKEND.pack(ip_bytes(self.addr), port_bytes(self.port),
                                BE_LOCAL if self.local else 0)

    @classmethod
    def decode(cls, raw: bytes) -> Backend:
        addr, port, flags = _LB_BACKEND.unpack(raw)
        return cls(ip_str(addr), port_int(port), bool(flags & BE_LOCAL))


@dataclass(frozen=True)
class CtKey:
    saddr: str
    daddr: str
    sport: int
    dport: int
    proto: str
    kind: int

    def encode(self) -> bytes:
        return _CT_KEY.pack(ip_bytes(self.saddr), ip_bytes(self.daddr), port_bytes(self.sport),
                            port_bytes(self.dport), PROTO_NUMBERS[self.proto], self.kind, 0)

    @classmethod
    def decode(cls, raw: bytes) -> CtKey:
        saddr, daddr, sport, dport, proto, kind, _pad = _CT_KEY.unpack(raw)
        return cls(ip_str(saddr), ip_str(daddr), port_int(sport), port_int(dport),
                   PROTO_NAMES.get(proto, str(proto)), kind)


@dataclass(frozen=True)
class CtEntry:
    nat_addr: str
    nat_port: int
    flags: int
    expires: int
    created: int
    packets: int
    bytes: int

    def encode(self) -> bytes:
        return _CT_ENTRY.pack(ip_bytes(self.nat_addr), port_bytes(self.nat_port), self.flags,
                              self.expires, self.created, self.packets, self.bytes)

    @classmethod
    def decode(cls, raw: bytes) -> CtEntry:
        nat_addr, nat_port, flags, expires, created, packets, nbytes = _CT_ENTRY.unpack(raw)
        return cls(ip_str(nat_addr), port_int(nat_port), flags, expires, created, packets,
                   nbytes)

    def flag_names(self) -> list[str]:
        return [name for bit, name in CT_FLAG_NAMES.items() if self.flags & bit]


@dataclass(frozen=True)
class NodeConfig:
    """node_config: the node's own addresses and the NAT port range."""

    node_ip: str
    pod_cidr: str
    nat_port_min: int
    nat_port_max: int
    masquerade: bool

    def encode(self) -> bytes:
        net = ipaddress.IPv4Network(self.pod_cidr)
        return _NODE_CONFIG.pack(ip_bytes(self.node_ip), net.network_address.packed,
                                 net.netmask.packed, self.nat_port_min, self.nat_port_max,
                                 CFG_F_MASQUERADE if self.masquerade else 0, 0)

    @classmethod
    def decode(cls, raw: bytes) -> NodeConfig:
        node_ip, addr, mask, pmin, pmax, flags, _pad = _NODE_CONFIG.unpack(raw)
        net = ipaddress.IPv4Network(f"{ip_str(addr)}/{ip_str(mask)}")
        return cls(ip_str(node_ip), str(net), pmin, pmax, bool(flags & CFG_F_MASQUERADE))


def lpm_key(cidr: str) -> bytes:
    net = ipaddress.IPv4Network(cidr)
    return _LPM_KEY.pack(net.prefixlen, net.network_address.packed)


def decode_lpm_key(raw: bytes) -> str:
    prefixlen, addr = _LPM_KEY.unpack(raw)
    return f"{ip_str(addr)}/{prefixlen}"


@dataclass(frozen=True)
class TunnelEndpoint:
    """tunnel_endpoint: the node (InternalIP) behind a tunnel_map prefix."""

    node_ip: str
    node_address: bool = False   # the prefix is the node's own address (TUNNEL_F_NODE)

    def encode(self) -> bytes:
        return _TUNNEL_ENDPOINT.pack(ip_bytes(self.node_ip),
                                     TUNNEL_F_NODE if self.node_address else 0)

    @classmethod
    def decode(cls, raw: bytes) -> TunnelEndpoint:
        node_ip, flags = _TUNNEL_ENDPOINT.unpack(raw)
        return cls(ip_str(node_ip), bool(flags & TUNNEL_F_NODE))


@dataclass(frozen=True)
class TunnelConfig:
    """tunnel_config: the VXLAN device to send through (0: none) and the VNI."""

    ifindex: int
    vni: int

    def encode(self) -> bytes:
        return _TUNNEL_CONFIG.pack(self.ifindex, self.vni)

    @classmethod
    def decode(cls, raw: bytes) -> TunnelConfig:
        return cls(*_TUNNEL_CONFIG.unpack(raw))


@dataclass(frozen=True, order=True)
class EgressKey:
    """egress_key: a pod's address and one destination prefix."""

    pod: str
    destination: str     # CIDR

    def encode(self) -> bytes:
        net = ipaddress.IPv4Network(self.destination)
        return _EGRESS_KEY.pack(32 + net.prefixlen, ip_bytes(self.pod),
                                net.network_address.packed)

    @classmethod
    def decode(cls, raw: bytes) -> EgressKey:
        prefixlen, pod, dest = _EGRESS_KEY.unpack(raw)
        return cls(ip_str(pod), f"{ip_str(dest)}/{prefixlen - 32}")


@dataclass(frozen=True)
class EgressAction:
    """egress_gw: what to do with a pod's traffic to a destination prefix."""

    action: int                   # EGW_*
    egress_ip: str = "0.0.0.0"    # EGW_SNAT
    gateway_ip: str = "0.0.0.0"   # EGW_REDIRECT
    gateway_mac: str = "00:00:00:00:00:00"

    def encode(self) -> bytes:
        mac = bytes(int(part, 16) for part in self.gateway_mac.split(":"))
        return _EGRESS_GW.pack(ip_bytes(self.egress_ip), ip_bytes(self.gateway_ip), mac,
                               self.action)

    @classmethod
    def decode(cls, raw: bytes) -> EgressAction:
        egress_ip, gateway_ip, mac, action = _EGRESS_GW.unpack(raw)
        return cls(action, ip_str(egress_ip), ip_str(gateway_ip),
                   ":".join(f"{b:02x}" for b in mac))

    @property
    def name(self) -> str:
        return EGW_ACTIONS.get(self.action, str(self.action))


def egress_ip_key(addr: str) -> bytes:
    """egress_ips key: an address in network order."""
    return ip_bytes(addr)


EGRESS_IP_VALUE = b"\x01"


def index_key(index: int) -> bytes:
    """Key of an array map slot."""
    return U32.pack(index)


NO_MASQ_VALUE = b"\x01"
