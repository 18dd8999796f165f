"""Flows: the datapath's policy verdict events as `cni-cilium observe` shows them (pure).

The agent decodes each ring buffer record (`bpfabi.FlowEvent`) with the identities, names
and rules of the translation in effect when it arrived (`describe`), keeps the most recent
ones numbered in a bounded buffer (`FlowBuffer`), and serves them filtered (`FlowFilter`).
`format_flow` prints one like `hubble observe` does.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from ..bpfabi import (
    DIRECTIONS,
    DROP_REASONS,
    MATCH_NAMES,
    POINT_NAMES,
    PROTO_NAMES,
    VERDICT_NAMES,
    FlowEvent,
)

BUFFER_FLOWS = 8192
VERDICTS = ("FORWARDED", "DROPPED", "AUDIT")
_TCP_FLAGS = ((0x02, "SYN"), (0x10, "ACK"), (0x01, "FIN"), (0x04, "RST"), (0x08, "PSH"))


def tcp_flag_names(flags: int) -> list[str]:
    return [name for bit, name in _TCP_FLAGS if flags & bit]


def describe(event: FlowEvent, wall_offset: float, identities: Mapping[int, Any],
             names: Mapping[str, str], rules: Mapping[int, str], node: str) -> dict:
    """A flow record. `wall_offset`: wall clock minus the monotonic clock, in seconds;
    `identities`: number -> something with `labels`."""

    def labels(number: int) -> list[str]:
        ident = identities.get(number)
        return list(ident.labels) if ident is not None else []

    proto = PROTO_NAMES.get(event.proto, str(event.proto))
    return {
        "time": round(event.ktime / 1e9 + wall_offset, 6),
        "node": node,
        "source": {"ip": event.saddr, "port": event.sport, "identity": event.src_identity,
                   "labels": labels(event.src_identity), "name": names.get(event.saddr, "")},
        "destination": {"ip": event.daddr, "port": event.dport,
                        "identity": event.dst_identity, "labels": labels(event.dst_identity),
                        "name": names.get(event.daddr, "")},
        "protocol": proto,
        "tcpFlags": tcp_flag_names(event.tcp_flags) if proto == "TCP" else [],
        "direction": DIRECTIONS.get(event.direction, "?").upper(),
        "verdict": VERDICT_NAMES.get(event.verdict, str(event.verdict)),
        "dropReason": DROP_REASONS.get(event.reason, str(event.reason)) if event.reason
        else "",
        "match": MATCH_NAMES.get(event.match, str(event.match)),
        "policy": rules.get(event.rule, "") if event.rule else "",
        "point": POINT_NAMES.get(event.point, str(event.point)),
        "ifindex": event.ifindex,
    }


@dataclass(frozen=True)
class FlowFilter:
    """What `observe` asked for; None/empty fields match everything."""

    verdict: str | None = None
    from_ip: str | None = None     # CIDR
    to_ip: str | None = None       # CIDR
    to_port: int | None = None
    protocol: str | None = None

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> FlowFilter:
        """From the API's query parameters; raises ValueError naming a bad one."""
        verdict = query.get("verdict") or None
        if verdict is not None and verdict not in VERDICTS:
            raise ValueError(f"verdict: invalid value {verdict!r}; allowed: "
                             f"{', '.join(VERDICTS)}")
        nets = {}
        for name in ("from_ip", "to_ip"):
            value = query.get(name) or None
            if value is not None:
                try:
                    value = str(ipaddress.IPv4Network(value, strict=False))
                except ValueError as exc:
                    raise ValueError(f"{name}: invalid IPv4 CIDR {value!r}") from exc
            nets[name] = value
        port = query.get("to_port") or None
        if port is not None:
            if not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"to_port: invalid port {port!r}; must be 1-65535")
            port = int(port)
        protocol = query.get("protocol") or None
        if protocol is not None and protocol not in ("TCP", "UDP"):
            raise ValueError(f"protocol: invalid value {protocol!r}; allowed: TCP, UDP")
        return cls(verdict, nets["from_ip"], nets["to_ip"], port, protocol)

    def matches(self, flow: Mapping) -> bool:
        if self.verdict and flow["verdict"] != self.verdict:
            return False
        if self.protocol and flow["protocol"] != self.protocol:
            return False
        if self.to_port and flow["destination"]["port"] != self.to_port:
            return False
        for cidr, side in ((self.from_ip, "source"), (self.to_ip, "destination")):
            if cidr and ipaddress.IPv4Address(flow[side]["ip"]) not in \
                    ipaddress.IPv4Network(cidr):
                return False
        return True


class FlowBuffer:
    """The most recent flows, numbered from 1 (thread-safe: one writer, many readers)."""

    def __init__(self, size: int = BUFFER_FLOWS):
        self._flows: deque[dict] = deque(maxlen=size)
        self._lock = threading.Lock()
        self.seen = 0

    def add(self, flows: Iterable[dict]) -> None:
        with self._lock:
            for flow in flows:
                self.seen += 1
                flow["seq"] = self.seen
                self._flows.append(flow)

    def query(self, flt: FlowFilter, since: int = 0, last: int | None = None) -> list[dict]:
        """Flows after sequence number `since` that match, oldest first (the last `last`)."""
        with self._lock:
            found = [f for f in self._flows if f["seq"] > since and flt.matches(f)]
        return found[-last:] if last else found

    def __len__(self) -> int:
        return len(self._flows)


def _endpoint(side: Mapping) -> str:
    who = side.get("name") or ",".join(side["labels"]) or f"ID:{side['identity']}"
    return f"{side['ip']}:{side['port']} ({who}, ID:{side['identity']})"


def format_flow(flow: Mapping) -> str:
    """One line, like `hubble observe`."""
    when = time.strftime("%b %d %H:%M:%S", time.localtime(flow["time"]))
    millis = f"{flow['time'] % 1:.3f}"[1:]
    verdict = flow["verdict"]
    what = (f"{flow['dropReason']} {verdict}" if verdict == "DROPPED" else
            f"policy-verdict:{flow['match']} {flow['direction']} {verdict}"
            + (f" ({flow['dropReason']})" if verdict == "AUDIT" else ""))
    flags = f" (TCP Flags: {', '.join(flow['tcpFlags'])})" if flow["tcpFlags"] else ""
    policy = f" [{flow['policy']}]" if flow["policy"] else ""
    return (f"{when}{millis} {flow['node']}: {_endpoint(flow['source'])} -> "
            f"{_endpoint(flow['destination'])} {flow['protocol']} {what}{flags}{policy}")
