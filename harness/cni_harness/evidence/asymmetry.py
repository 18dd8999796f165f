"""Which way the replies went: DSR or SNAT, judged from packet captures (pure).

One `Observation` is a client talking to a NodePort (or LoadBalancer) frontend of a
receiving node whose only backend runs on another node, with captures in both nodes, the
client and the fabric. `check_dsr` and `check_snat` list what contradicts each mode (empty =
proven); `diagnose` says where an exchange that got no answer stopped and the likely cause.

DSR on the wire: the receiving node forwards the client's packets keeping the client's
source (the first one carrying the frontend in an IPv4 option); the backend's node sends the
replies straight to the client with the frontend as source; no reply touches the receiving
node. SNAT: the receiving node forwards with its own source, the replies come back to it and
it sends them to the client.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

from ..providers.local.sourceguard import CAUSE as SOURCE_GUARD_CAUSE
from .pcap import Packet, counts

REQUEST, REPLY = "request", "reply"


@dataclass(frozen=True)
class Flow:
    """The roles in one exchange. Capture labels: node names, "client", "fabric"."""

    protocol: str                   # TCP / UDP
    client: str
    frontend: tuple[str, int]       # the address the client used (receiving node or LB IP)
    backend: tuple[str, int]        # the pod
    receiving_node: str
    receiving_ip: str
    backend_node: str
    uplink: str = "eth0"

    def classify(self, p: Packet) -> str | None:
        """request (toward the service), reply (from it), or None (another flow)."""
        if p.proto != self.protocol:
            return None
        if (p.src, p.sport) in (self.frontend, self.backend):
            return REPLY
        if (p.dst, p.dport) in (self.frontend, self.backend):
            return REQUEST
        return None

    def to_dict(self) -> dict:
        return {"protocol": self.protocol, "client": self.client,
                "frontend": f"{self.frontend[0]}:{self.frontend[1]}",
                "backend": f"{self.backend[0]}:{self.backend[1]}",
                "receivingNode": self.receiving_node, "backendNode": self.backend_node}


@dataclass
class Observation:
    """What one exchange left on the wire and in the answers."""

    flow: Flow
    packets: dict[str, list[Packet]]
    answers: Sequence[dict]
    guard_drops: dict[str, int] = field(default_factory=dict)   # per node, during the exchange
    files: list[str] = field(default_factory=list)                # the captures, as saved

    def to_record(self) -> dict:
        """Everything needed to judge this observation again (`from_record`): the flow, the
        answers, the guard's drops and each capture's decoded packets."""
        return {"flow": asdict(self.flow), "answers": list(self.answers),
                "guardDrops": self.guard_drops,
                "captures": {label: [p.to_dict() for p in packets]
                             for label, packets in self.packets.items()}}

    @classmethod
    def from_record(cls, record: dict) -> Observation:
        flow = dict(record["flow"])
        flow["frontend"], flow["backend"] = tuple(flow["frontend"]), tuple(flow["backend"])
        packets = {label: [Packet.from_dict(p) for p in docs]
                   for label, docs in record["captures"].items()}
        return cls(Flow(**flow), packets, list(record["answers"]),
                   dict(record.get("guardDrops") or {}))

    def _uplink(self, label: str) -> list[Packet]:
        iface = self.flow.uplink
        return [p for p in self.packets.get(label, []) if p.iface == iface and
                self.flow.classify(p) is not None]

    def uplink(self, label: str, kind: str, direction: str) -> list[Packet]:
        """This flow's packets of one kind and direction on a capture point's uplink."""
        return [p for p in self._uplink(label)
                if self.flow.classify(p) == kind and p.direction == direction]

    def table(self) -> dict[str, dict[str, int]]:
        """Per capture point and interface: request/reply packets in and out."""
        out = {}
        for label, packets in sorted(self.packets.items()):
            for iface, tally in counts(packets, self.flow.classify).items():
                out[f"{label} {iface}"] = tally
        return out

    @property
    def failures(self) -> list[dict]:
        return [a for a in self.answers if "error" in a]

    def peers(self) -> set[str]:
        return {a.get("peer", "") for a in self.answers if "error" not in a}

    def evidence(self) -> dict:
        return {"flow": self.flow.to_dict(), "packetsPerInterface": self.table(),
                "answered": len(self.answers) - len(self.failures), "tries": len(self.answers),
                "backendSawPeers": sorted(self.peers()),
                "errors": sorted({a["error"] for a in self.failures}),
                "clientGotRepliesFrom": sorted({a["replyFrom"] for a in self.answers
                                                if "replyFrom" in a}),
                "sourceGuardDrops": self.guard_drops, "captureFiles": self.files}


def _fmt(endpoint: tuple[str, int | None]) -> str:
    return f"{endpoint[0]}:{endpoint[1]}"


def _answers(obs: Observation) -> list[str]:
    if not obs.answers:
        return ["no tries were made"]
    if obs.failures:
        return [f"{len(obs.failures)} of {len(obs.answers)} tries got no answer "
                f"({obs.failures[0]['error']}): {diagnose(obs)}"]
    return []


def _client_saw_frontend(obs: Observation) -> list[str]:
    f = obs.flow
    # Addressed to the client: a learning bridge floods frames for a MAC it has not learnt
    # yet to every port, so the client may also see copies of other hops' packets.
    replies = [p for p in obs.uplink("client", REPLY, "in") if p.dst == f.client]
    problems = []
    if not replies:
        problems.append("the client's capture shows no reply")
    others = sorted({_fmt(p.endpoint("src")) for p in replies} - {_fmt(f.frontend)})
    if others:
        problems.append(f"the client got replies from {', '.join(others)}, not only from "
                        f"the frontend {_fmt(f.frontend)}")
    wrong = sorted({a["replyFrom"] for a in obs.answers
                    if "replyFrom" in a and a["replyFrom"] != _fmt(f.frontend)})
    if wrong:
        problems.append(f"the client's socket got answers from {', '.join(wrong)}")
    return problems


def check_dsr(obs: Observation) -> list[str]:
    """What contradicts direct server return in this observation (empty: DSR proven)."""
    f = obs.flow
    problems = _answers(obs)
    if problems:
        return problems
    if obs.peers() != {f.client}:
        problems.append(f"the backend saw {sorted(obs.peers())}, not the client {f.client}")
    # A reply sent on by the receiving node, or one addressed to it; a flooded copy of a
    # direct reply (addressed to the client) arriving there passes nothing.
    r_replies = obs.uplink(f.receiving_node, REPLY, "out") + [
        p for p in obs.uplink(f.receiving_node, REPLY, "in") if p.dst != f.client]
    if r_replies:
        problems.append(f"{len(r_replies)} reply packets passed the receiving node's uplink "
                        f"({f.receiving_node} {f.uplink})")
    forwarded = obs.uplink(f.receiving_node, REQUEST, "out")
    if not forwarded:
        problems.append(f"{f.receiving_node} forwarded no request on {f.uplink}")
    if any(p.src != f.client for p in forwarded):
        problems.append(f"{f.receiving_node} forwarded requests with a source other than the "
                        "client's")
    must_carry = [p for p in forwarded if p.is_syn or f.protocol == "UDP"]
    if not must_carry or not all(p.has_dsr_option for p in must_carry):
        problems.append("the forwarded first packets (TCP SYN / every UDP datagram) do not all "
                        "carry the DSR option")
    if any(p.has_dsr_option for p in forwarded if p not in must_carry):
        problems.append("packets after the TCP SYN carry the DSR option")
    delivered = [p for p in obs.packets.get(f.backend_node, []) if p.iface != f.uplink and
                 f.classify(p) == REQUEST and p.direction == "out"]
    if any(p.has_dsr_option for p in delivered):
        problems.append("the backend pod received the DSR option (not stripped)")
    direct = obs.uplink(f.backend_node, REPLY, "out")
    if not direct:
        problems.append(f"no reply left the backend node's uplink ({f.backend_node} "
                        f"{f.uplink})")
    stray = sorted({f"{_fmt(p.endpoint('src'))} -> {p.dst}" for p in direct
                    if (p.src, p.sport) != f.frontend or p.dst != f.client})
    if stray:
        problems.append(f"{f.backend_node} sent replies other than frontend -> client: "
                        f"{', '.join(stray)}")
    return problems + _client_saw_frontend(obs)


def check_snat(obs: Observation) -> list[str]:
    """What contradicts SNAT through the receiving node (empty: SNAT proven)."""
    f = obs.flow
    problems = _answers(obs)
    if problems:
        return problems
    if obs.peers() != {f.receiving_ip}:
        problems.append(f"the backend saw {sorted(obs.peers())}, not the receiving node "
                        f"{f.receiving_ip}")
    if not obs.uplink(f.receiving_node, REPLY, "in"):
        problems.append(f"no reply came back to the receiving node ({f.receiving_node} "
                        f"{f.uplink})")
    to_client = [p for p in obs.uplink(f.receiving_node, REPLY, "out") if p.dst == f.client]
    if not to_client:
        problems.append(f"the receiving node sent no reply to the client ({f.receiving_node} "
                        f"{f.uplink})")
    # What DSR would put there: replies the backend's node sends to the client, requests
    # from the client addressed to the backend (flooded copies of frames to other nodes,
    # which a learning bridge sends to every port, are neither).
    direct = [p for p in obs.packets.get(f.backend_node, []) if p.iface == f.uplink and (
        (p.direction == "out" and p.dst == f.client) or
        (p.direction == "in" and p.src == f.client and p.dst == f.backend[0]))]
    if direct:
        problems.append(f"{len(direct)} packets to or from the client crossed the backend "
                        f"node's uplink ({f.backend_node} {f.uplink})")
    return problems + _client_saw_frontend(obs)


def diagnose(obs: Observation) -> str:
    """Where an exchange without an answer stopped, and the likely cause."""
    f = obs.flow
    r, b = f.receiving_node, f.backend_node
    sent = obs.uplink("client", REQUEST, "out")
    if not sent:
        return "the client sent nothing (no request in its capture)"
    if not obs.uplink(r, REQUEST, "in"):
        return _lost("client", r, "the requests", sent, obs)
    forwarded = obs.uplink(r, REQUEST, "out")
    if not forwarded:
        elsewhere = sorted({f"{p.dst}:{p.dport}" for p in obs.packets.get(r, [])
                            if p.iface == f.uplink and p.direction == "out" and
                            p.proto == f.protocol and p.src in (f.client, f.receiving_ip) and
                            p.dst != f.client})
        if elsewhere:
            return (f"{r} forwarded the requests to {', '.join(elsewhere)}, not to the "
                    f"backend {_fmt(f.backend)} (a conntrack entry of an earlier backend?)")
        return f"{r} received the requests but did not forward them (its datapath dropped them)"
    if not obs.uplink(b, REQUEST, "in"):
        return _lost(r, b, "the forwarded requests", forwarded, obs)
    replies = obs.uplink(b, REPLY, "out")
    if not replies:
        return f"{b} received the requests but sent no reply (the backend did not answer)"
    direct = [p for p in replies if p.dst == f.client]
    if direct and not obs.uplink("client", REPLY, "in"):
        return _lost(b, "client", "the direct replies", direct, obs)
    if not direct and not obs.uplink(r, REPLY, "in"):
        return _lost(b, r, "the replies", replies, obs)
    if not direct and not obs.uplink("client", REPLY, "in"):
        back = obs.uplink(r, REPLY, "out")
        if not back:
            return f"{r} got the replies but did not send them on to the client"
        return _lost(r, "client", "the replies", back, obs)
    return "the client got replies but its tries failed (see the errors)"


def _lost(sender: str, receiver: str, what: str, packets: list[Packet], obs: Observation) -> str:
    sources = sorted({p.src for p in packets})
    where = (f"{what} (source {', '.join(sources)}) left {sender} but never reached "
             f"{receiver}")
    fabric = [p for p in obs.packets.get("fabric", []) if p.iface == sender and
              p.direction == "in" and obs.flow.classify(p) is not None]
    if fabric:
        where += f"; the fabric received {len(fabric)} of them on {sender}'s port"
    drops = obs.guard_drops.get(sender, 0)
    if drops:
        return (f"{where}; likely cause: {SOURCE_GUARD_CAUSE}: it dropped {drops} packets "
                f"from {sender}'s port whose source is not {sender}'s own address")
    return f"{where}; likely cause: dropped on the fabric between them"
