"""A Python reading of the policy maps, the way bpf/lib/policy.h reads them (for unit tests
of the translation: the maps' bytes are looked up bit by bit as the kernel's LPM does)."""

from __future__ import annotations

import ipaddress

from cni_cilium.bpfabi import (
    POLICY_DENY,
    POLICY_EGRESS,
    POLICY_INGRESS,
    PROTO_NUMBERS,
    U32,
    PolicyConfig,
    PolicyEntry,
    PolicyKey,
    decode_ipcache_value,
    decode_lpm_key,
    decode_policy_enforce_key,
    index_key,
)

HOST = 1
WORLD = 2


def _bits(data: bytes, n: int) -> str:
    return "".join(f"{b:08b}" for b in data)[:n]


class PolicyMaps:
    def __init__(self, maps: dict[str, dict[bytes, bytes]]):
        self.ipcache = {decode_lpm_key(k): decode_ipcache_value(v)
                        for k, v in maps["ipcache"].items()}
        self.entries = [(int.from_bytes(k[:4], "little"), k[4:], PolicyEntry.decode(v))
                        for k, v in maps["policy_map"].items()]
        self.enforce = {decode_policy_enforce_key(k): U32.unpack(v)[0]
                        for k, v in maps["policy_enforce"].items()}
        self.config = PolicyConfig.decode(maps["policy_cfg"][index_key(0)])

    def identity(self, addr: str) -> int:
        ip = ipaddress.IPv4Address(addr)
        best = None
        for prefix, number in self.ipcache.items():
            net = ipaddress.IPv4Network(prefix)
            if ip in net and (best is None or net.prefixlen > best[0]):
                best = (net.prefixlen, number)
        return best[1] if best else WORLD

    def _lpm(self, subject: int, direction: int, peer: int, proto: int, port: int):
        data = PolicyKey(subject, direction, peer, proto, port, 16).encode()[4:]
        best = None
        for prefixlen, key_data, entry in self.entries:
            if _bits(key_data, prefixlen) == _bits(data, prefixlen) and (
                    best is None or prefixlen > best[0]):
                best = (prefixlen, entry)
        return best[1] if best else None

    def verdict(self, subject: int, direction: int, peer: int, proto: str, port: int
                ) -> tuple[str, int]:
        """("allow" | "deny" | "denied" | "none", rule)."""
        number = PROTO_NUMBERS[proto]
        specific = self._lpm(subject, direction, peer, number, port)
        wildcard = self._lpm(subject, direction, 0, number, port)
        for entry in (specific, wildcard):
            if entry and entry.action == POLICY_DENY:
                return "deny", entry.rule
        for entry in (specific, wildcard):
            if entry:
                return "allow", entry.rule
        rule = self.enforce.get((subject, direction))
        return ("denied", rule) if rule is not None else ("none", 0)

    def judge(self, point: str, saddr: str, daddr: str, port: int, proto: str = "TCP"
              ) -> str:
        """policy_judge of a connection's first packet at a point ("pod-egress",
        "pod-ingress", "host-ingress", "host-egress"): "allow", "deny" or "denied"."""
        sends = point.endswith("egress")
        pod = point.startswith("pod")
        peer = self.identity(daddr if sends else saddr)
        subject = self.identity(saddr if sends else daddr) if pod else HOST
        direction = POLICY_EGRESS if sends else POLICY_INGRESS
        result = "none"
        if not (pod and peer == HOST and not sends):
            result = self.verdict(subject, direction, peer, proto, port)[0]
        if pod and peer == HOST and result in ("none", "allow"):
            node = self.verdict(HOST, POLICY_INGRESS if sends else POLICY_EGRESS, subject,
                                proto, port)[0]
            if node in ("deny", "denied") or result == "none":
                result = node
        return "allow" if result in ("none", "allow") else result
