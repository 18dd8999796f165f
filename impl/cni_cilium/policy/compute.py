"""Policies and the cluster's objects -> the contents of the policy maps of one node (pure).

- ipcache (LPM): every pod of every node -> its identity; every node's InternalIP and pod
  gateway -> host (this node) or remote-node; API server addresses (the `default/kubernetes`
  EndpointSlices and the control-plane nodes) -> kube-apiserver; each CIDR a policy names
  -> a CIDR identity. Anything else is the world.
- policy_map (LPM): per local subject (an identity of a pod on this node, or the host),
  direction and peer (or any peer): allow/deny entries by protocol and port block.
  A deny that covers an allow of the same peer key turns it into a deny (the datapath
  reads the longest match; across the two peer lookups it lets a deny win itself).
- policy_enforce: the subjects and directions in default deny.
- policy_cfg: audit mode and the flow event rate.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from ..bpfabi import (
    MAP_CAPACITY,
    POLICY_ALLOW,
    POLICY_DENY,
    POLICY_EGRESS,
    POLICY_INGRESS,
    POLICY_MATCH_ALL,
    POLICY_MATCH_L3_L4,
    POLICY_MATCH_L3_ONLY,
    POLICY_MATCH_L4_ONLY,
    PROTO_NUMBERS,
    U32,
    PolicyConfig,
    PolicyEntry,
    PolicyKey,
    index_key,
    ipcache_value,
    lpm_key,
    policy_enforce_key,
)
from ..manifests import EndpointSlice, Node, Pod
from .identity import (
    CIDR_RANGE,
    KIND_CIDR,
    KIND_ENDPOINT,
    LABEL_RANGE,
    Identity,
    allocate,
    reserved,
)
from .labels import LabelFilter
from .model import (
    CLUSTER_RESERVED,
    EGRESS,
    ID_HOST,
    ID_KUBE_APISERVER,
    ID_REMOTE_NODE,
    INGRESS,
    NAMESPACE_LABEL,
    RESERVED_IDENTITIES,
    CidrRule,
    ClusterwideNetworkPolicy,
    PolicyRule,
    PolicySpec,
)

POLICY_MAPS = ("policy_cfg", "ipcache", "policy_map", "policy_enforce")
FLOW_RATE = 1000        # flow events per second and CPU (lib/flow.h)
CONTROL_PLANE_LABEL = "node-role.kubernetes.io/control-plane"
API_SERVICE = ("default", "kubernetes")
ANY = 0                 # the peer of an entry that holds for any peer
WORLD_CIDR = "0.0.0.0/0"
DIRECTION_CODES = {INGRESS: POLICY_INGRESS, EGRESS: POLICY_EGRESS}


@dataclass(frozen=True)
class PortBlock:
    proto: int | None       # None: any protocol (and port)
    port: int = 0
    bits: int = 0           # leading bits of `port` that count

    def covers(self, other: PortBlock) -> bool:
        if self.proto is None:
            return True
        if other.proto != self.proto or other.bits < self.bits:
            return False
        shift = 16 - self.bits
        return (other.port >> shift) == (self.port >> shift) if self.bits else True


@dataclass(frozen=True)
class Verdict:
    action: int
    match: int
    rule: int


@dataclass
class SubjectView:
    identity: int
    pods: list[str]                    # ["host"] for the node itself
    enforced: dict[str, bool]          # direction -> default deny
    entries: int = 0
    policies: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"identity": self.identity, "endpoints": self.pods,
                "ingressEnforced": self.enforced[INGRESS],
                "egressEnforced": self.enforced[EGRESS], "entries": self.entries,
                "policies": sorted(set(self.policies))}


@dataclass
class PolicyTranslation:
    maps: dict[str, dict[bytes, bytes]]
    audit: bool
    identities: dict[int, Identity] = field(default_factory=dict)
    ipcache: dict[str, int] = field(default_factory=dict)     # prefix -> identity
    rules: dict[int, str] = field(default_factory=dict)       # rule id -> where it is
    subjects: list[SubjectView] = field(default_factory=list)
    policies: dict[str, list[str]] = field(default_factory=dict)   # name -> what it selects
    digests: dict[str, str] = field(default_factory=dict)     # name -> version in effect
    names: dict[str, str] = field(default_factory=dict)       # address -> pod or node name
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """The agent's /policy document."""
        return {"auditMode": self.audit,
                "policies": [{"name": n, "selects": s, "digest": self.digests.get(n, "")}
                             for n, s in sorted(self.policies.items())],
                "subjects": [s.to_dict() for s in self.subjects],
                "rules": {str(k): v for k, v in sorted(self.rules.items())},
                "identities": len(self.identities), "ipcache": len(self.ipcache),
                "entries": len(self.maps["policy_map"]), "problems": list(self.problems),
                "warnings": list(self.warnings)}

    def identity_list(self) -> list[dict]:
        """The agent's /identities document: each identity with the prefixes mapped to it."""
        prefixes: dict[int, list[str]] = defaultdict(list)
        for prefix, number in self.ipcache.items():
            prefixes[number].append(prefix)
        out = []
        for number, ident in sorted(self.identities.items()):
            doc = ident.to_dict()
            doc["addresses"] = sorted(prefixes.get(number, []), key=_prefix_order)
            doc["names"] = sorted({self.names[p.split("/")[0]] for p in doc["addresses"]
                                   if p.split("/")[0] in self.names})
            out.append(doc)
        return out


def _prefix_order(prefix: str) -> tuple:
    net = ipaddress.IPv4Network(prefix)
    return (int(net.network_address), net.prefixlen)


def port_blocks(lo: int, hi: int) -> list[tuple[int, int]]:
    """Aligned (port, leading bits) blocks covering lo..hi exactly."""
    out = []
    while lo <= hi:
        size = lo & -lo if lo else 1 << 16
        while lo + size - 1 > hi:
            size >>= 1
        out.append((lo, 16 - size.bit_length() + 1))
        lo += size
    return out


def rule_ports(rule: PolicyRule) -> list[PortBlock]:
    """The protocol/port blocks a rule covers (no toPorts: everything)."""
    if not rule.ports:
        return [PortBlock(None)]
    out = []
    for port in rule.ports:
        protos = ("TCP", "UDP") if port.protocol == "ANY" else (port.protocol,)
        blocks = [(0, 0)] if port.port == 0 else port_blocks(port.port,
                                                             port.end_port or port.port)
        out.extend(PortBlock(PROTO_NUMBERS[p], number, bits)
                   for p in protos for number, bits in blocks)
    return list(dict.fromkeys(out))


class Universe:
    """Every identity this node knows, and how selectors, entities and CIDRs resolve."""

    def __init__(self, identities: dict[int, Identity], cidr_ids: dict[str, int]):
        self.identities = identities
        self.cidr_ids = cidr_ids
        self.selector_labels = {n: i.selector_labels() for n, i in identities.items()}
        self.endpoints = [n for n, i in identities.items() if i.kind == KIND_ENDPOINT]

    def with_label(self, label: str) -> set[int]:
        return {n for n, i in self.identities.items() if i.has(label)}

    def entity(self, name: str) -> set[int] | None:
        """Identities of an entity; None for `all` (any peer)."""
        if name == "all":
            return None
        if name == "none":
            return set()
        if name in ("world", "world-ipv4"):
            return self.with_label("reserved:world") | set(self.cidr_ids.values())
        if name == "cluster":
            found = set(self.endpoints)
            for member in CLUSTER_RESERVED:
                found |= self.with_label(f"reserved:{member}")
            return found
        return self.with_label(f"reserved:{name}")

    def cidr(self, rule: CidrRule) -> set[int]:
        net = ipaddress.IPv4Network(rule.cidr)
        excepts = [ipaddress.IPv4Network(e) for e in rule.excepts]
        found = {number for prefix, number in self.cidr_ids.items()
                 if ipaddress.IPv4Network(prefix).subnet_of(net)
                 and not any(ipaddress.IPv4Network(prefix).subnet_of(e) for e in excepts)}
        if rule.cidr == WORLD_CIDR:
            found |= self.with_label("reserved:world")
        return found

    def peers(self, rule: PolicyRule) -> set[int] | None:
        """The peers a rule names (None: any peer). A rule naming none allows any peer on
        its ports; with neither peers nor ports it selects nothing (`ingress: [{}]`)."""
        if not rule.names_peers:
            return None if rule.ports else set()
        found: set[int] = set()
        for selector in rule.endpoints:
            reserved_keys = any(k.startswith("reserved:") for k in selector.label_keys())
            pool = self.identities if reserved_keys else self.endpoints
            found |= {n for n in pool if selector.matches(self.selector_labels[n])}
        for name in rule.entities:
            ids = self.entity(name)
            if ids is None:
                return None
            found |= ids
        for cidr in rule.cidrs:
            found |= self.cidr(cidr)
        return found


def _match_type(rule: PolicyRule, peers: set[int] | None) -> int:
    if peers is None:
        return POLICY_MATCH_L4_ONLY if rule.ports else POLICY_MATCH_ALL
    return POLICY_MATCH_L3_L4 if rule.ports else POLICY_MATCH_L3_ONLY


def resolve(group: Iterable[tuple[PortBlock, Verdict]]) -> dict[PortBlock, Verdict]:
    """One (subject, direction, peer) key's entries: an allow covered by a deny becomes
    that deny; on equal blocks a deny wins."""
    items = list(group)
    denies = [(b, v) for b, v in items if v.action == POLICY_DENY]
    out: dict[PortBlock, Verdict] = {}
    for block, verdict in sorted(items, key=lambda bv: bv[1].action):   # allows first
        if verdict.action == POLICY_ALLOW:
            cover = next((v for b, v in denies if b.covers(block)), None)
            verdict = cover or verdict
        old = out.get(block)
        if old is None or (verdict.action == POLICY_DENY and old.action == POLICY_ALLOW):
            out[block] = verdict
    return out


def _api_addresses(nodes: Sequence[Node], objects: Sequence) -> set[str]:
    found = {n.internal_ip for n in nodes if CONTROL_PLANE_LABEL in n.labels}
    for eps in objects:
        if isinstance(eps, EndpointSlice) and (eps.namespace, eps.service_name) == API_SERVICE:
            for endpoint in eps.endpoints:
                found.update(endpoint.addresses)
    return found


def _gateway(pod_cidr: str) -> str:
    return str(ipaddress.IPv4Network(pod_cidr).network_address + 1)


def _cidrs_of(policies: Sequence[ClusterwideNetworkPolicy]) -> set[str]:
    found = set()
    for policy in policies:
        for spec in policy.specs:
            for rules in (spec.ingress, spec.ingress_deny, spec.egress, spec.egress_deny):
                for rule in rules:
                    for cidr in rule.cidrs:
                        found.add(cidr.cidr)
                        found.update(cidr.excepts)
    found.discard(WORLD_CIDR)
    return found


def _identities(pods: Sequence[Pod], labels: LabelFilter, nodes: Sequence[Node], node: Node,
                api: set[str], cidrs: set[str], out: PolicyTranslation
                ) -> tuple[list[tuple[Pod, int]], dict[str, int]]:
    pod_keys = []
    for pod in pods:
        counted = labels.identity_labels(pod.labels)
        counted[NAMESPACE_LABEL] = pod.namespace
        pod_keys.append(";".join(sorted(f"k8s:{k}={v}" for k, v in counted.items())))
    pod_numbers, warnings = allocate(pod_keys, LABEL_RANGE)
    cidr_numbers, cidr_warnings = allocate(cidrs, CIDR_RANGE)
    out.warnings.extend(warnings + cidr_warnings)
    node_ips = {n.internal_ip for n in nodes}
    api_extra = []
    if api & (node_ips - {node.internal_ip}):
        api_extra.append("reserved:remote-node")
    if api - node_ips:
        api_extra.append("reserved:world")
    host_extra = ["reserved:kube-apiserver"] if node.internal_ip in api else []
    for number in RESERVED_IDENTITIES:
        extra = (host_extra if number == ID_HOST else
                 api_extra if number == ID_KUBE_APISERVER else [])
        out.identities[number] = reserved(number, *extra)
    for key, number in pod_numbers.items():
        out.identities[number] = Identity(number, KIND_ENDPOINT, tuple(key.split(";")))
    for cidr, number in cidr_numbers.items():
        out.identities[number] = Identity(number, KIND_CIDR,
                                          (f"cidr:{cidr}", "reserved:world"))
    return [(pod, pod_numbers[key]) for pod, key in zip(pods, pod_keys)], cidr_numbers


def _ipcache(pods: list[tuple[Pod, int]], nodes: Sequence[Node], node: Node, api: set[str],
             cidrs: dict[str, int], out: PolicyTranslation) -> None:
    """Later writes win: CIDRs, then API server addresses, then nodes, then pods."""
    cache = out.ipcache
    for cidr, number in cidrs.items():
        cache[cidr] = number
    for addr in sorted(api):
        cache[f"{addr}/32"] = ID_KUBE_APISERVER
    for other in nodes:
        own = other.name == node.name
        cache[f"{other.internal_ip}/32"] = (ID_HOST if own else ID_KUBE_APISERVER
                                            if other.internal_ip in api else ID_REMOTE_NODE)
        cache[f"{_gateway(other.pod_cidr)}/32"] = ID_HOST if own else ID_REMOTE_NODE
        out.names[other.internal_ip] = other.name
        out.names[_gateway(other.pod_cidr)] = f"{other.name} (cilium_host)"
    for pod, number in pods:
        cache[f"{pod.pod_ip}/32"] = number
        out.names[pod.pod_ip] = f"{pod.namespace}/{pod.name}"


class _Rules:
    """Rule numbering: every rule of every policy, in name order, so equal policy sets
    number equally on every node."""

    def __init__(self, out: PolicyTranslation):
        self.out = out

    def add(self, text: str) -> int:
        number = len(self.out.rules) + 1
        self.out.rules[number] = text
        return number


def translate_policies(settings, node: Node, nodes: Sequence[Node], objects: Sequence
                       ) -> PolicyTranslation:
    """Everything the policy maps of `node` must hold (see the module docstring)."""
    out = PolicyTranslation({name: {} for name in POLICY_MAPS}, settings.policyAuditMode)
    out.maps["policy_cfg"][index_key(0)] = PolicyConfig(settings.policyAuditMode,
                                                        FLOW_RATE).encode()
    policies = sorted((o for o in objects if isinstance(o, ClusterwideNetworkPolicy)),
                      key=lambda p: p.name)
    pods = [o for o in objects if isinstance(o, Pod) and o.pod_ip and not o.host_network]
    api = _api_addresses(nodes, objects)
    pod_ids, cidr_ids = _identities(pods, LabelFilter.from_settings(settings.labelsRegex),
                                    nodes, node, api, _cidrs_of(policies), out)
    _ipcache(pod_ids, nodes, node, api, cidr_ids, out)
    universe = Universe(out.identities, cidr_ids)
    local: dict[int, list[str]] = defaultdict(list)
    for pod, number in pod_ids:
        if pod.node_name == node.name:
            local[number].append(f"{pod.namespace}/{pod.name}")
    subjects = {number: SubjectView(number, sorted(names), {INGRESS: False, EGRESS: False})
                for number, names in sorted(local.items())}
    groups: dict[tuple[int, int, int], list[tuple[PortBlock, Verdict]]] = defaultdict(list)
    enforce: dict[tuple[int, int], int] = {}
    rules = _Rules(out)
    for policy in policies:
        selected: list[str] = []
        for spec in policy.specs:
            chosen = _subjects(spec, node, universe, subjects)
            selected += [", ".join(subjects[s].pods) for s in chosen]
            for s in chosen:
                subjects[s].policies.append(policy.name)
            _spec_entries(policy.name, spec, chosen, universe, rules, groups, enforce)
        out.policies[policy.name] = selected
        out.digests[policy.name] = policy.digest
    _write(groups, enforce, subjects, out)
    out.subjects = list(subjects.values())
    return out


def _subjects(spec: PolicySpec, node: Node, universe: Universe,
              subjects: dict[int, SubjectView]) -> list[int]:
    if spec.host:
        if not spec.node_selector.matches(node.labels):
            return []
        subjects.setdefault(ID_HOST, SubjectView(ID_HOST, ["host"],
                                                 {INGRESS: False, EGRESS: False}))
        return [ID_HOST]
    return [n for n in subjects if n != ID_HOST
            and spec.endpoint_selector.matches(universe.selector_labels[n])]


def _spec_entries(name: str, spec: PolicySpec, chosen: list[int], universe: Universe,
                  rules: _Rules, groups: dict, enforce: dict) -> None:
    for direction in (INGRESS, EGRESS):
        code = DIRECTION_CODES[direction]
        allow, deny = spec.sections(direction)
        if spec.enforces(direction):
            default_rule = rules.add(f"{name}: {spec.path} ({direction} default deny)")
            for s in chosen:
                enforce.setdefault((s, code), default_rule)
        for action, section, items in ((POLICY_ALLOW, direction, allow),
                                       (POLICY_DENY, f"{direction}Deny", deny)):
            for i, rule in enumerate(items):
                number = rules.add(f"{name}: {spec.path}.{section}[{i}]")
                if not chosen:
                    continue
                peers = universe.peers(rule)
                verdict = Verdict(action, _match_type(rule, peers), number)
                blocks = rule_ports(rule)
                for s in chosen:
                    for peer in sorted(peers) if peers is not None else [ANY]:
                        groups[(s, code, peer)].extend((b, verdict) for b in blocks)


def _write(groups: dict, enforce: dict, subjects: dict[int, SubjectView],
           out: PolicyTranslation) -> None:
    entries = out.maps["policy_map"]
    for (subject, code, peer), group in sorted(groups.items()):
        for block, verdict in resolve(group).items():
            key = PolicyKey(subject, code, peer, block.proto, block.port, block.bits)
            entries[key.encode()] = PolicyEntry(verdict.action, verdict.match,
                                                verdict.rule).encode()
            subjects[subject].entries += 1
    for (subject, code), rule in sorted(enforce.items()):
        out.maps["policy_enforce"][policy_enforce_key(subject, code)] = U32.pack(rule)
        direction = INGRESS if code == POLICY_INGRESS else EGRESS
        subjects[subject].enforced[direction] = True
    for prefix, number in out.ipcache.items():
        out.maps["ipcache"][lpm_key(prefix)] = ipcache_value(number)
    for name in ("policy_map", "ipcache", "policy_enforce"):
        if len(out.maps[name]) > MAP_CAPACITY[name]:
            out.problems.append(f"policy: {len(out.maps[name])} {name} entries exceed its "
                                f"capacity {MAP_CAPACITY[name]}; the rest are not programmed")
            out.maps[name] = dict(sorted(out.maps[name].items())[:MAP_CAPACITY[name]])
