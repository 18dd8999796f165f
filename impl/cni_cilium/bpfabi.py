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
from typing import Sequence

# Map names (pinned files) and their capacities, as declared in maps.h.
MAP_CAPACITY = {
    "lb_frontends": 65536,
    "lb_slots": 262144,
    "ct4": 262144,
    "node_cfg": 1,
    "no_masq": 1024,
    "stats": 38,
    "agent_state": 8,
    "tunnel_map": 4096,
    "tunnel_cfg": 1,
    "lb_maglev": 131072,
    "lb_conns": 65536,
    "lb_affinity": 65536,
    "lb_src_ranges": 16384,
    "ipcache": 65536,
    "policy_map": 65536,
    "policy_enforce": 4096,
    "policy_cfg": 1,
    "flow_limit": 1,
    "flow_events": 262144,      # bytes (a ring buffer)
    "egress_policy": 16384,
    "egress_ips": 256,
}

PROTO_NUMBERS = {"TCP": 6, "UDP": 17}
PROTO_NAMES = {v: k for k, v in PROTO_NUMBERS.items()}

FE_EXTERNAL = 0x01
FE_NODEPORT = 0x02
FE_LOCAL_ONLY = 0x04
FE_SOURCE_RANGES = 0x10

LB_ALGORITHMS = {"random": 0, "maglev": 1, "least-conn": 2}
LB_MODES = {"SNAT": 0, "DSR": 1}

BE_LOCAL = 0x01
BE_DSR = 0x02       # never stored: the datapath's mark of a DSR connection's backend

CT_SERVICE, CT_REPLY, CT_NAT_OUT, CT_NAT_IN = 1, 2, 3, 4
CT_POLICY_OUT, CT_POLICY_IN = 5, 6
CT_KINDS = {CT_SERVICE: "service", CT_REPLY: "reply", CT_NAT_OUT: "nat-out", CT_NAT_IN: "nat-in",
            CT_POLICY_OUT: "policy-out", CT_POLICY_IN: "policy-in"}

CT_F_REDIRECT = 0x01
CT_F_DSR = 0x02
CT_F_CLOSING = 0x04
CT_F_HOST = 0x08
CT_F_REPLIED = 0x20
CT_F_LOCAL_BACKEND = 0x40
CT_F_HAIRPIN = 0x80
CT_F_FIN_ORIG = 0x100
CT_F_FIN_REPLY = 0x200
CT_F_COUNTED = 0x0400
CT_F_AUDIT = 0x0800

# skb->mark of a packet an ingress program translated and redirected: the uplink's egress
# program lets it pass untouched (bpf/lib/fib.h, not part of the maps' layout).
MARK_TRANSLATED = 0x0C1C0000

CT_FLAG_NAMES = {
    CT_F_REDIRECT: "redirect",
    CT_F_DSR: "dsr",
    CT_F_CLOSING: "closing",
    CT_F_HOST: "host",
    CT_F_REPLIED: "replied",
    CT_F_LOCAL_BACKEND: "local-backend",
    CT_F_HAIRPIN: "hairpin",
    CT_F_FIN_ORIG: "fin-orig",
    CT_F_FIN_REPLY: "fin-reply",
    CT_F_COUNTED: "counted",
    CT_F_AUDIT: "audit",
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
    "drop_tunnel_source", "drop_source_range", "affinity_hit", "maglev_fallback",
    "policy_allowed", "policy_audit", "drop_policy_denied",
    "drop_policy_deny", "flow_events", "flow_suppressed", "flow_lost",
    "egw_snat_new", "egw_snat", "egw_redirect", "egw_rev_snat",
    "drop_no_egress_gw",
)

# agent_state slots (u64 each): bookkeeping that lives as long as the node's bpffs.
STATE_RESTARTS = 0      # agent starts since boot, minus one
STATE_SELF_HEALS = 1    # tc attachments restored since boot
STATE_TUNNEL_MODE = 2   # tunnel mode fixed at the first start after boot (TUNNEL_CODES)
TUNNEL_CODES = {"Disabled": 1, "VXLAN": 2}

_LB_KEY = struct.Struct("=4s2sBx")
_LB_FRONTEND = struct.Struct("=HBBB3xII8s")
_LB_SLOT_KEY = struct.Struct("=4s2sBxH2x")
_LB_BACKEND = struct.Struct("=4s2sBx")
_CT_KEY = struct.Struct("=4s4s2s2sBBH")
_CT_ENTRY = struct.Struct("=4s2sHIIQQ")
_NODE_CONFIG = struct.Struct("=4s4s4sHHII")
_LPM_KEY = struct.Struct("=I4s")
_TUNNEL_ENDPOINT = struct.Struct("=4sB3x")
_TUNNEL_CONFIG = struct.Struct("=II")
LB_MAGLEV_CHUNK = 16     # table entries per lb_maglev value
_LB_MAGLEV_KEY = struct.Struct("=8sI")
_LB_BACKEND_KEY = struct.Struct("=4s2sBx")
_LB_CONN_COUNT = struct.Struct("=q")
_LB_AFFINITY_KEY = struct.Struct("=8s4s")
_LB_AFFINITY = struct.Struct("=8sI")
_LB_SRC_RANGE_KEY = struct.Struct("=I8s4s")
SRC_RANGE_FE_BITS = 64   # the frontend part of an lb_src_ranges key always matches whole
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
    "lb_maglev_key": _LB_MAGLEV_KEY.size,
    "lb_maglev_chunk": _LB_BACKEND.size * LB_MAGLEV_CHUNK,
    "lb_backend_key": _LB_BACKEND_KEY.size,
    "lb_conn_count": _LB_CONN_COUNT.size,
    "lb_affinity_key": _LB_AFFINITY_KEY.size,
    "lb_affinity": _LB_AFFINITY.size,
    "lb_src_range_key": _LB_SRC_RANGE_KEY.size,


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


_NO_TABLE = b"\0" * _LB_KEY.size


@dataclass(frozen=True)
class FrontendValue:
    """lb_frontend: how many backends, and how to treat the frontend."""

    count: int
    flags: int
    algorithm: int = LB_ALGORITHMS["random"]
    lb_mode: int = LB_MODES["SNAT"]
    affinity_timeout: int = 0          # seconds; 0 = no session affinity
    maglev_size: int = 0               # table size M (maglev)
    maglev_table: Frontend | None = None   # the lb_maglev table it reads (maglev)

    def encode(self) -> bytes:
        table = self.maglev_table.encode() if self.maglev_table else _NO_TABLE
        return _LB_FRONTEND.pack(self.count, self.flags, self.algorithm, self.lb_mode,
                                 self.affinity_timeout, self.maglev_size, table)

    @classmethod
    def decode(cls, raw: bytes) -> FrontendValue:
        count, flags, algorithm, lb_mode, timeout, size, table = _LB_FRONTEND.unpack(raw)
        return cls(count, flags, algorithm, lb_mode, timeout, size,
                   Frontend.decode(table) if table != _NO_TABLE else None)


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


def maglev_key(table: Frontend, chunk: int) -> bytes:
    """lb_maglev_key: chunk `chunk` of the table named by a frontend."""
    return _LB_MAGLEV_KEY.pack(table.encode(), chunk)


def decode_maglev_key(raw: bytes) -> tuple[Frontend, int]:
    table, chunk = _LB_MAGLEV_KEY.unpack(raw)
    return Frontend.decode(table), chunk


def maglev_chunk(backends: Sequence[Backend | None]) -> bytes:
    """lb_maglev_chunk: up to LB_MAGLEV_CHUNK table entries (missing ones all zero)."""
    if len(backends) > LB_MAGLEV_CHUNK:
        raise ValueError(f"{len(backends)} entries; a chunk holds {LB_MAGLEV_CHUNK}")
    empty = b"\0" * _LB_BACKEND.size
    return b"".join(b.encode() if b else empty for b in backends).ljust(
        _LB_BACKEND.size * LB_MAGLEV_CHUNK, b"\0")


def decode_maglev_chunk(raw: bytes) -> list[Backend | None]:
    size = _LB_BACKEND.size
    return [Backend.decode(raw[i:i + size]) if raw[i:i + 4] != b"\0\0\0\0" else None
            for i in range(0, len(raw), size)]


@dataclass(frozen=True, order=True)
class BackendKey:
    """lb_backend_key: one backend of one protocol (least-conn counts)."""

    addr: str
    port: int
    proto: str

    def encode(self) -> bytes:
        return _LB_BACKEND_KEY.pack(ip_bytes(self.addr), port_bytes(self.port),
                                    PROTO_NUMBERS[self.proto])

    @classmethod
    def decode(cls, raw: bytes) -> BackendKey:
        addr, port, proto = _LB_BACKEND_KEY.unpack(raw)
        return cls(ip_str(addr), port_int(port), PROTO_NAMES.get(proto, str(proto)))


def conn_count(active: int) -> bytes:
    """lb_conn_count."""
    return _LB_CONN_COUNT.pack(active)


def decode_conn_count(raw: bytes) -> int:
    return _LB_CONN_COUNT.unpack(raw)[0]


@dataclass(frozen=True)
class AffinityKey:
    """lb_affinity_key: a client of a frontend."""

    frontend: Frontend
    client: str

    def encode(self) -> bytes:
        return _LB_AFFINITY_KEY.pack(self.frontend.encode(), ip_bytes(self.client))

    @classmethod
    def decode(cls, raw: bytes) -> AffinityKey:
        fe, client = _LB_AFFINITY_KEY.unpack(raw)
        return cls(Frontend.decode(fe), ip_str(client))


@dataclass(frozen=True)
class Affinity:
    """lb_affinity: the client's backend and when it last opened a connection."""

    backend: Backend
    last_used: int

    def encode(self) -> bytes:
        return _LB_AFFINITY.pack(self.backend.encode(), self.last_used)

    @classmethod
    def decode(cls, raw: bytes) -> Affinity:
        backend, last_used = _LB_AFFINITY.unpack(raw)
        return cls(Backend.decode(backend), last_used)


def src_range_key(frontend: Frontend, cidr: str) -> bytes:
    """lb_src_range_key: clients in `cidr` may reach `frontend`."""
    net = ipaddress.IPv4Network(cidr)
    return _LB_SRC_RANGE_KEY.pack(SRC_RANGE_FE_BITS + net.prefixlen, frontend.encode(),
                                  net.network_address.packed)


def decode_src_range_key(raw: bytes) -> tuple[Frontend, str]:
    prefixlen, fe, addr = _LB_SRC_RANGE_KEY.unpack(raw)
    return Frontend.decode(fe), f"{ip_str(addr)}/{prefixlen - SRC_RANGE_FE_BITS}"


SRC_RANGE_VALUE = b"\x01"


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


# ---------------------------------------------------------------- network policy
# Identities are network byte order in every map and event (see maps.h).

ID_HOST, ID_WORLD, ID_UNMANAGED, ID_HEALTH, ID_INIT = 1, 2, 3, 4, 5
ID_REMOTE_NODE, ID_KUBE_APISERVER, ID_INGRESS = 6, 7, 8

POLICY_INGRESS, POLICY_EGRESS = 1, 2
DIRECTIONS = {POLICY_INGRESS: "ingress", POLICY_EGRESS: "egress"}
POLICY_PREFIX_PEER, POLICY_PREFIX_PROTO, POLICY_PREFIX_FULL = 96, 112, 128
POLICY_ALLOW, POLICY_DENY = 1, 2
POLICY_MATCH_NONE, POLICY_MATCH_L3_ONLY, POLICY_MATCH_L3_L4 = 0, 1, 2
POLICY_MATCH_L4_ONLY, POLICY_MATCH_ALL = 3, 4
MATCH_NAMES = {POLICY_MATCH_NONE: "none", POLICY_MATCH_L3_ONLY: "L3-Only",
               POLICY_MATCH_L3_L4: "L3-L4", POLICY_MATCH_L4_ONLY: "L4-Only",
               POLICY_MATCH_ALL: "all"}
POLICY_F_AUDIT = 0x01
FLOW_FORWARDED, FLOW_DROPPED, FLOW_AUDIT = 1, 2, 3
VERDICT_NAMES = {FLOW_FORWARDED: "FORWARDED", FLOW_DROPPED: "DROPPED", FLOW_AUDIT: "AUDIT"}
DROP_POLICY_DENIED, DROP_POLICY_DENY = 133, 181
DROP_REASONS = {DROP_POLICY_DENIED: "policy denied", DROP_POLICY_DENY: "policy deny"}
POLICY_POINT_POD_EGRESS, POLICY_POINT_POD_INGRESS = 1, 2
POLICY_POINT_HOST_INGRESS, POLICY_POINT_HOST_EGRESS = 3, 4
POINT_NAMES = {POLICY_POINT_POD_EGRESS: "from_container", POLICY_POINT_POD_INGRESS: "to_container",
               POLICY_POINT_HOST_INGRESS: "from_netdev", POLICY_POINT_HOST_EGRESS: "to_netdev"}

_IPCACHE_ENTRY = struct.Struct("=4sI")
_POLICY_KEY = struct.Struct("=I4sB3x4sBx2s")
_POLICY_ENTRY = struct.Struct("=BBxxI")
_POLICY_ENFORCE_KEY = struct.Struct("=4sB3x")
_POLICY_CONFIG = struct.Struct("=II")
_FLOW_EVENT = struct.Struct("=Q4s4s2s2s4s4sIIBBBBBBBx4x")
SIZES.update({
    "ipcache_entry": _IPCACHE_ENTRY.size,
    "policy_key": _POLICY_KEY.size,
    "policy_entry": _POLICY_ENTRY.size,
    "policy_enforce_key": _POLICY_ENFORCE_KEY.size,
    "policy_enforce": U32.size,
    "policy_config": _POLICY_CONFIG.size,
    "flow_event": _FLOW_EVENT.size,
    "flow_limit": 16,
})


def identity_bytes(identity: int) -> bytes:
    return identity.to_bytes(4, "big")


def ipcache_value(identity: int) -> bytes:
    """ipcache_entry: the identity of a prefix."""
    return _IPCACHE_ENTRY.pack(identity_bytes(identity), 0)


def decode_ipcache_value(raw: bytes) -> int:
    return int.from_bytes(_IPCACHE_ENTRY.unpack(raw)[0], "big")


@dataclass(frozen=True, order=True)
class PolicyKey:
    """policy_key: (subject, direction, peer, protocol, port prefix). `peer` 0 is any peer;
    `proto` None is any protocol (prefix POLICY_PREFIX_PEER); `port_bits` is how many
    leading bits of `port` count (16: that port, 0: any port)."""

    subject: int
    direction: int
    peer: int
    proto: int | None = None
    port: int = 0
    port_bits: int = 0

    @property
    def prefixlen(self) -> int:
        if self.proto is None:
            return POLICY_PREFIX_PEER
        return POLICY_PREFIX_PROTO + self.port_bits

    def encode(self) -> bytes:
        return _POLICY_KEY.pack(self.prefixlen, identity_bytes(self.subject), self.direction,
                                identity_bytes(self.peer), self.proto or 0,
                                port_bytes(self.port))

    @classmethod
    def decode(cls, raw: bytes) -> PolicyKey:
        prefixlen, subject, direction, peer, proto, port = _POLICY_KEY.unpack(raw)
        any_proto = prefixlen < POLICY_PREFIX_PROTO
        return cls(int.from_bytes(subject, "big"), direction, int.from_bytes(peer, "big"),
                   None if any_proto else proto, port_int(port),
                   0 if any_proto else prefixlen - POLICY_PREFIX_PROTO)


@dataclass(frozen=True)
class PolicyEntry:
    """policy_entry: allow or deny, how it matched, and the rule it comes from."""

    action: int
    match: int
    rule: int

    def encode(self) -> bytes:
        return _POLICY_ENTRY.pack(self.action, self.match, self.rule)

    @classmethod
    def decode(cls, raw: bytes) -> PolicyEntry:
        return cls(*_POLICY_ENTRY.unpack(raw))


def policy_enforce_key(subject: int, direction: int) -> bytes:
    """policy_enforce_key: a subject in default deny in a direction."""
    return _POLICY_ENFORCE_KEY.pack(identity_bytes(subject), direction)


def decode_policy_enforce_key(raw: bytes) -> tuple[int, int]:
    subject, direction = _POLICY_ENFORCE_KEY.unpack(raw)
    return int.from_bytes(subject, "big"), direction


@dataclass(frozen=True)
class PolicyConfig:
    """policy_config: audit mode and the flow event rate per CPU."""

    audit: bool
    flow_rate: int

    def encode(self) -> bytes:
        return _POLICY_CONFIG.pack(POLICY_F_AUDIT if self.audit else 0, self.flow_rate)

    @classmethod
    def decode(cls, raw: bytes) -> PolicyConfig:
        flags, rate = _POLICY_CONFIG.unpack(raw)
        return cls(bool(flags & POLICY_F_AUDIT), rate)


@dataclass(frozen=True)
class FlowEvent:
    """flow_event: one ring buffer record."""

    ktime: int
    saddr: str
    daddr: str
    sport: int
    dport: int
    src_identity: int
    dst_identity: int
    rule: int
    ifindex: int
    proto: int
    verdict: int
    reason: int
    direction: int
    point: int
    tcp_flags: int
    match: int

    @classmethod
    def decode(cls, raw: bytes) -> FlowEvent:
        (ktime, saddr, daddr, sport, dport, src_id, dst_id, rule, ifindex, proto, verdict,
         reason, direction, point, tcp_flags, match) = _FLOW_EVENT.unpack_from(raw)
        return cls(ktime, ip_str(saddr), ip_str(daddr), port_int(sport), port_int(dport),
                   int.from_bytes(src_id, "big"), int.from_bytes(dst_id, "big"), rule, ifindex,
                   proto, verdict, reason, direction, point, tcp_flags, match)
