"""Egress gateway: election, peer readiness, translation into the datapath's maps (pure).

Every agent runs the same election for every EgressGateway, so all of them agree on the
active node without a shared API: among the eligible nodes (selected by the gateway's
`nodeSelector`, Node Ready, agent ready as seen by this agent's health checks, and in
PrimaryIPFromEgressGatewayNodeInterface mode holding an IPv4 address on the named
interface) the active node is the one with the lowest sha256 of `<gateway>#<node>`
(Deckhouse's rule) - unless an eligible node is already active: every agent publishes whom
it elected, and a node some ready agent calls active keeps the role while it is eligible
(among several such claims, the lowest hash wins). So a failed node's return does not take
the role back (a second move would cut the flows again), and a restarted agent adopts
the role its peers agree on instead of electing from scratch. Agent readiness comes from
`ReadinessTracker`: a peer that missed `MISSES` polls in a row is not ready; one that
answered `HOLD` polls in a row is again. A starting agent elects nothing before `HOLD`
rounds of polls (it would see no peers, nor their claims, and elect itself).

`translate_egress` turns the gateways, policies, pods and the election into the contents
of `egress_policy` (LPM: pod address + destination prefix -> action) and `egress_ips`, the
VIPs this node must announce, and the status every CLI shows.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from .bpfabi import (
    EGRESS_IP_VALUE,
    EGW_EXCLUDED,
    EGW_NO_GATEWAY,
    EGW_REDIRECT,
    EGW_SNAT,
    EgressAction,
    EgressKey,
    egress_ip_key,
)
from .manifests import (
    POD_NAMESPACE_LABEL,
    SOURCE_IP_PRIMARY,
    SOURCE_IP_VIRTUAL,
    EgressGateway,
    EgressGatewayPolicy,
    Node,
    Pod,
    PodSelector,
)

HEALTH_PORT = 4240          # Cilium's health port: each agent serves its node's doc there
POLL_SECONDS = 0.5          # how often every agent polls every other node's agent
POLL_TIMEOUT = 0.4
MISSES = 3                  # consecutive failed polls: the peer is not ready
HOLD = 2                    # consecutive answered polls: the peer is ready again

REASON_SUCCEED = "ElectionSucceed"
REASON_ANNOUNCED = "ElectionSucceedAndVirtualIPAnnounced"
REASON_FAILED = "ElectionFailed"
REASON_PENDING = "ElectionPending"
MESSAGE_NO_NODES = "There aren't ready Nodes"

EGRESS_MAPS = ("egress_ips", "egress_policy")


# ---------------------------------------------------------------- peers

@dataclass(frozen=True)
class PeerState:
    """What one agent knows about a node's agent (itself included)."""

    node: str
    ready: bool
    mac: str = ""                                           # the node's uplink MAC
    interfaces: Mapping[str, str] = field(default_factory=dict)   # name -> primary IPv4
    announcing: tuple[str, ...] = ()                        # VIPs it answers ARP for
    active: Mapping[str, str] = field(default_factory=dict)  # gateway -> whom it elected
    reason: str = field(default="", compare=False)          # why not ready (status only)

    def to_dict(self) -> dict:
        return {"node": self.node, "ready": self.ready, "mac": self.mac,
                "interfaces": dict(self.interfaces), "announcing": list(self.announcing),
                "active": dict(self.active), "reason": self.reason}


@dataclass(frozen=True)
class EgressView:
    """This agent's view of every node's agent. Not `settled` until it has polled every peer
    `HOLD` times: until then it elects nothing (a starting agent would otherwise see no
    peers and elect itself)."""

    settled: bool
    peers: Mapping[str, PeerState] = field(default_factory=dict)

    def ready(self, node: str) -> bool:
        state = self.peers.get(node)
        return self.settled and state is not None and state.ready

    def claims(self, gateway: str) -> set[str]:
        """The nodes ready agents (this one included) say are `gateway`'s active node."""
        return {p.active[gateway] for p in self.peers.values()
                if p.ready and p.active.get(gateway)}


class ReadinessTracker:
    """Consecutive answers and misses per node -> ready or not (with hysteresis)."""

    def __init__(self, misses: int = MISSES, hold: int = HOLD):
        self.misses_needed, self.hold = misses, hold
        self._ok: dict[str, int] = {}
        self._missed: dict[str, int] = {}
        self._ready: dict[str, bool] = {}
        self._last_error: dict[str, str] = {}

    def record(self, node: str, answered: bool, error: str = "") -> bool:
        """Account one poll; True when the node's readiness changed."""
        before = self._ready.get(node, False)
        if answered:
            self._ok[node] = self._ok.get(node, 0) + 1
            self._missed[node] = 0
            self._last_error.pop(node, None)
            if self._ok[node] >= self.hold:
                self._ready[node] = True
        else:
            self._missed[node] = self._missed.get(node, 0) + 1
            self._ok[node] = 0
            self._last_error[node] = error
            if self._missed[node] >= self.misses_needed:
                self._ready[node] = False
        return self._ready.get(node, False) != before

    def ready(self, node: str) -> bool:
        return self._ready.get(node, False)

    def reason(self, node: str) -> str:
        if self.ready(node):
            return ""
        error = self._last_error.get(node)
        if error:
            return f"health check failed {self._missed.get(node, 0)} times: {error}"
        return f"answered {self._ok.get(node, 0)} of the {self.hold} polls needed"

    def forget(self, keep: Iterable[str]) -> None:
        keep = set(keep)
        for table in (self._ok, self._missed, self._ready, self._last_error):
            for node in list(table):
                if node not in keep:
                    del table[node]


# ---------------------------------------------------------------- election

def election_hash(gateway: str, node: str) -> str:
    """Deckhouse's ordering key: sha256 of `<gateway>#<node>`, hex."""
    return hashlib.sha256(f"{gateway}#{node}".encode()).hexdigest()


def elect(gateway: str, eligible: Iterable[str], incumbents: Iterable[str] = ()
          ) -> str | None:
    """The active node: an eligible incumbent (the lowest hash of those), else the eligible
    node with the lowest hash; None when no node is eligible."""
    eligible = set(eligible)
    pool = eligible & set(incumbents) or eligible
    return min(pool, key=lambda node: (election_hash(gateway, node), node), default=None)


def node_selected(gateway: EgressGateway, node: Node) -> bool:
    return all(node.labels.get(k) == v for k, v in gateway.node_selector.items())


def eligible_nodes(gateway: EgressGateway, nodes: Sequence[Node], view: EgressView
                   ) -> tuple[list[str], dict[str, str]]:
    """(eligible node names, {selected but not eligible node: why})."""
    eligible, why = [], {}
    for node in nodes:
        if not node_selected(gateway, node):
            continue
        peer = view.peers.get(node.name)
        if not node.ready:
            why[node.name] = "Node is not Ready"
        elif not view.settled:
            why[node.name] = "this agent has not finished its first health checks"
        elif peer is None or not peer.ready:
            why[node.name] = f"agent not ready ({peer.reason if peer else 'never answered'})"
        elif gateway.mode == SOURCE_IP_PRIMARY and not peer.interfaces.get(
                gateway.interface_name):
            why[node.name] = f"no IPv4 address on interface {gateway.interface_name}"
        else:
            eligible.append(node.name)
    return sorted(eligible), why


def egress_ip(gateway: EgressGateway, peer: PeerState | None) -> str:
    """The source address traffic gets on `peer`'s node ("" when it has none)."""
    if gateway.mode == SOURCE_IP_VIRTUAL:
        return gateway.virtual_ip
    return (peer.interfaces.get(gateway.interface_name, "") if peer else "")


# ---------------------------------------------------------------- selection

def selector_matches(selector: PodSelector, pod: Pod) -> bool:
    """Label selector semantics; the namespace is the label io.kubernetes.pod.namespace."""
    labels = {**pod.labels, POD_NAMESPACE_LABEL: pod.namespace}
    if any(labels.get(k) != v for k, v in selector.match_labels.items()):
        return False
    for req in selector.match_expressions:
        present = req.key in labels
        if req.operator == "In" and labels.get(req.key) not in req.values:
            return False
        if req.operator == "NotIn" and present and labels[req.key] in req.values:
            return False
        if req.operator == "Exists" and not present:
            return False
        if req.operator == "DoesNotExist" and present:
            return False
    return True


def selected_pods(policy: EgressGatewayPolicy, pods: Iterable[Pod]) -> list[Pod]:
    """Pods with an address of their own that a selector of the policy matches."""
    return sorted((p for p in pods if p.pod_ip and not p.host_network
                   and any(selector_matches(s, p) for s in policy.selectors)),
                  key=lambda p: (p.namespace, p.name))


def destination_prefixes(policy: EgressGatewayPolicy) -> tuple[list[str], list[str]]:
    """(destination prefixes, excluded prefixes) as LPM entries: a destination inside an
    excluded CIDR is gone; an excluded CIDR matters only inside a destination."""
    excluded = [ipaddress.IPv4Network(c) for c in policy.excluded_cidrs]
    dests = [ipaddress.IPv4Network(c) for c in policy.destination_cidrs]
    kept = sorted({d for d in dests if not any(d.subnet_of(e) for e in excluded)})
    holes = sorted({e for e in excluded if any(e.subnet_of(d) for d in kept)})
    return [str(d) for d in kept], [str(e) for e in holes]


# ---------------------------------------------------------------- translation

@dataclass(frozen=True)
class Condition:
    type: str
    status: str          # True, False, Unknown
    reason: str
    message: str

    def to_dict(self) -> dict:
        return {"type": self.type, "status": self.status, "reason": self.reason,
                "message": self.message}


@dataclass(frozen=True)
class GatewayStatus:
    """An EgressGateway as this agent sees it (the shape of the object's status)."""

    name: str
    mode: str
    active_node: str | None
    ready_nodes: tuple[str, ...]
    not_ready: Mapping[str, str]
    egress_ip: str
    ready: Condition
    announced_by: str | None = None   # VIP mode: the node whose agent says it announces it

    def to_dict(self) -> dict:
        return {"name": self.name, "mode": self.mode, "egressIP": self.egress_ip or None,
                "status": {"activeNodeName": self.active_node,
                           "readyNodes": list(self.ready_nodes),
                           "conditions": [self.ready.to_dict()]},
                "notReadyNodes": dict(self.not_ready), "announcedBy": self.announced_by}


@dataclass(frozen=True)
class PolicyStatus:
    name: str
    gateway: str
    destinations: tuple[str, ...]
    excluded: tuple[str, ...]
    pods: tuple[str, ...]          # "namespace/name ip node"
    entries: int                   # egress_policy entries on this node

    def to_dict(self) -> dict:
        return {"name": self.name, "egressGatewayName": self.gateway,
                "destinationCIDRs": list(self.destinations),
                "excludedCIDRs": list(self.excluded), "selectedPods": list(self.pods),
                "entries": self.entries}


@dataclass
class EgressTranslation:
    maps: dict[str, dict[bytes, bytes]]
    gateways: list[GatewayStatus] = field(default_factory=list)
    policies: list[PolicyStatus] = field(default_factory=list)
    announce: dict[str, tuple[str, ...]] = field(default_factory=dict)  # VIP -> interfaces
    problems: list[str] = field(default_factory=list)

    def entries_by_action(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for raw in self.maps["egress_policy"].values():
            name = EgressAction.decode(raw).name
            counts[name] = counts.get(name, 0) + 1
        return counts


def _ready_condition(gateway: EgressGateway, active: str | None, settled: bool,
                     announced_by: str | None) -> Condition:
    if not settled:
        return Condition("Ready", "Unknown", REASON_PENDING,
                         "waiting for this agent's first health checks of the other nodes")
    if active is None:
        return Condition("Ready", "False", REASON_FAILED, MESSAGE_NO_NODES)
    if gateway.mode == SOURCE_IP_VIRTUAL and announced_by == active:
        return Condition("Ready", "True", REASON_ANNOUNCED,
                         f"node {active} is active and announces {gateway.virtual_ip}")
    return Condition("Ready", "True", REASON_SUCCEED, f"node {active} is active")


def _valid_gateways(gateways: Sequence[EgressGateway], nodes: Sequence[Node],
                    problems: list[str]) -> dict[str, EgressGateway]:
    """Gateways by name, without those whose VIP another one has or a node holds."""
    node_ips = {n.internal_ip: n.name for n in nodes}
    vip_owner: dict[str, str] = {}
    out = {}
    for gw in sorted(gateways, key=lambda g: g.name):
        if gw.mode == SOURCE_IP_VIRTUAL:
            path = f"EgressGateway {gw.name}: spec.sourceIP.virtualIPAddress.ip"
            if gw.virtual_ip in node_ips:
                problems.append(f"{path}: {gw.virtual_ip} is the InternalIP of Node "
                                f"{node_ips[gw.virtual_ip]}; not used")
                continue
            if gw.virtual_ip in vip_owner:
                problems.append(f"{path}: {gw.virtual_ip} is already the VIP of EgressGateway "
                                f"{vip_owner[gw.virtual_ip]}; not used")
                continue
            vip_owner[gw.virtual_ip] = gw.name
        out[gw.name] = gw
    return out


def translate_egress(node: Node, nodes: Sequence[Node], pods: Sequence[Pod],
                     gateways: Sequence[EgressGateway],
                     policies: Sequence[EgressGatewayPolicy],
                     view: EgressView | None) -> EgressTranslation:
    """Elect every gateway and compute this node's egress map entries."""
    view = view or EgressView(settled=False)
    out = EgressTranslation({name: {} for name in EGRESS_MAPS})
    by_name = _valid_gateways(gateways, nodes, out.problems)
    node_by_name = {n.name: n for n in nodes}
    actions: dict[str, EgressAction] = {}    # gateway -> action for its traffic here
    for gw in by_name.values():
        eligible, why = eligible_nodes(gw, nodes, view)
        active = elect(gw.name, eligible, view.claims(gw.name)) if view.settled else None
        active_peer = view.peers.get(active) if active else None
        announced_by = next((n for n, p in sorted(view.peers.items()) if p.ready
                             and gw.virtual_ip and gw.virtual_ip in p.announcing), None)
        ip = egress_ip(gw, active_peer) if active else ""
        out.gateways.append(GatewayStatus(
            gw.name, gw.mode, active, tuple(eligible), why, ip,
            _ready_condition(gw, active, view.settled, announced_by), announced_by))
        if active is None:
            actions[gw.name] = EgressAction(EGW_NO_GATEWAY)
        elif active == node.name:
            actions[gw.name] = EgressAction(EGW_SNAT, egress_ip=ip)
            if ip != node.internal_ip:
                out.maps["egress_ips"][egress_ip_key(ip)] = EGRESS_IP_VALUE
            if gw.mode == SOURCE_IP_VIRTUAL:
                out.announce[gw.virtual_ip] = gw.vip_interfaces
        else:
            actions[gw.name] = EgressAction(
                EGW_REDIRECT, gateway_ip=node_by_name[active].internal_ip,
                gateway_mac=active_peer.mac if active_peer else "00:00:00:00:00:00")
    owner: dict[bytes, str] = {}
    for policy in sorted(policies, key=lambda p: p.name):
        _translate_policy(policy, node, pods, by_name, actions, owner, out)
    return out


def _translate_policy(policy: EgressGatewayPolicy, node: Node, pods: Sequence[Pod],
                      gateways: Mapping[str, EgressGateway],
                      actions: Mapping[str, EgressAction], owner: dict[bytes, str],
                      out: EgressTranslation) -> None:
    dests, holes = destination_prefixes(policy)
    chosen = selected_pods(policy, pods)
    entries = 0
    gateway = gateways.get(policy.gateway)
    if gateway is None:
        out.problems.append(f"EgressGatewayPolicy {policy.name}: spec.egressGatewayName: no "
                            f"usable EgressGateway {policy.gateway!r}; not applied")
    else:
        action = actions[gateway.name]
        here_for_all = action.action == EGW_SNAT    # the gateway serves every node's pods
        for pod in chosen:
            if pod.node_name != node.name and not here_for_all:
                continue
            for prefix, value in [(d, action) for d in dests] + [
                    (h, EgressAction(EGW_EXCLUDED)) for h in holes]:
                key = EgressKey(pod.pod_ip, prefix).encode()
                previous = owner.get(key)
                if previous is not None:
                    if out.maps["egress_policy"][key] != value.encode():
                        out.problems.append(
                            f"EgressGatewayPolicy {policy.name}: pod {pod.namespace}/"
                            f"{pod.name} to {prefix} is already routed by "
                            f"EgressGatewayPolicy {previous}; not applied there")
                    continue
                owner[key] = policy.name
                out.maps["egress_policy"][key] = value.encode()
                entries += 1
    out.policies.append(PolicyStatus(
        policy.name, policy.gateway, policy.destination_cidrs, policy.excluded_cidrs,
        tuple(f"{p.namespace}/{p.name} {p.pod_ip} {p.node_name}" for p in chosen), entries))
