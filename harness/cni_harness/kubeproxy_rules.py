"""kube-proxy's iptables-mode ruleset for a set of services, as `iptables-restore` text (pure).

The benchmark's peer (`cni-harness bench datapath --peer kube-proxy`) programs this on the
same nodes, with the module's programs detached, and measures the same paths. The shape
follows kube-proxy's iptables proxier:

    PREROUTING/OUTPUT -> KUBE-SERVICES -> per service port:
        -d ClusterIP --dport P             -> KUBE-SVC-<hash>
        -d LoadBalancer IP --dport P       -> KUBE-EXT-<hash>
      last rule: --dst-type LOCAL          -> KUBE-NODEPORTS (--dport nodePort -> KUBE-EXT)
    KUBE-EXT-<hash>: KUBE-MARK-MASQ, then KUBE-SVC-<hash> (externalTrafficPolicy Cluster)
    KUBE-SVC-<hash>: traffic from outside the pod CIDR -> KUBE-MARK-MASQ; then one
        `-m statistic --mode random --probability 1/(n-i)` jump per endpoint to
        KUBE-SEP-<hash> (the last one unconditional)
    KUBE-SEP-<hash>: hairpin source -> KUBE-MARK-MASQ; DNAT to the endpoint
    POSTROUTING -> KUBE-POSTROUTING: marked packets are masqueraded (--random-fully)
    filter KUBE-SERVICES (FORWARD/OUTPUT, new connections): a service port without
        endpoints is rejected

Chain names hash the service port name and protocol (and the endpoint) like kube-proxy's
(sha256, base32, 16 characters). Services are written in the order given: the caller
puts the measured service last, so every packet walks past the others' rules, the case
that makes iptables mode grow with the service count.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Iterable, Sequence

from cni_cilium.manifests import EndpointSlice, Service, ServicePort

MASQ_MARK = "0x4000/0x4000"


@dataclass(frozen=True)
class PeerServicePort:
    """One service port as kube-proxy sees it: where it answers and its ready endpoints."""

    service: str                    # namespace/name
    port_name: str
    protocol: str                   # TCP, UDP
    cluster_ip: str
    port: int
    node_port: int | None
    external_ips: tuple[str, ...]   # LoadBalancer ingress IPs and externalIPs
    endpoints: tuple[tuple[str, int], ...]

    @property
    def name(self) -> str:
        return f"{self.service}:{self.port_name}" if self.port_name else self.service


def _chain(prefix: str, *parts: str) -> str:
    digest = hashlib.sha256("/".join(parts).encode()).digest()
    return f"{prefix}-{base64.b32encode(digest).decode()[:16]}"


def _slice_port(eps: EndpointSlice, sp: ServicePort) -> int | None:
    if eps.ports:
        return next((p.port for p in eps.ports
                     if p.name == sp.name and p.protocol == sp.protocol), None)
    return sp.target_port if isinstance(sp.target_port, int) else None


def service_ports(services: Iterable[Service], slices: Iterable[EndpointSlice]
                  ) -> list[PeerServicePort]:
    """Every load-balanced service port with its ready endpoints (sorted, deduplicated)."""
    by_service: dict[tuple[str, str], list[EndpointSlice]] = {}
    for eps in slices:
        by_service.setdefault((eps.namespace, eps.service_name), []).append(eps)
    out = []
    for svc in services:
        if not svc.cluster_ip or svc.cluster_ip == "None":
            continue
        for sp in svc.ports:
            endpoints = set()
            for eps in by_service.get((svc.namespace, svc.name), []):
                port = _slice_port(eps, sp)
                if port is None:
                    continue
                for ep in eps.endpoints:
                    if ep.ready:
                        endpoints.update((addr, port) for addr in ep.addresses)
            node_port = sp.node_port if svc.type in ("NodePort", "LoadBalancer") else None
            external = (svc.load_balancer_ips if svc.type == "LoadBalancer" else ()) + \
                svc.external_ips
            out.append(PeerServicePort(f"{svc.namespace}/{svc.name}", sp.name, sp.protocol,
                                       svc.cluster_ip, sp.port, node_port, external,
                                       tuple(sorted(endpoints))))
    return out


def iptables_restore_text(ports: Sequence[PeerServicePort], cluster_cidr: str) -> str:
    """The nat table kube-proxy would program for `ports` (in that order), for
    `iptables-restore --noflush` (our chains are declared, hence flushed, first)."""
    chains = ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"]
    rules = [
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" '
        '-j KUBE-POSTROUTING',
        f"-A KUBE-MARK-MASQ -j MARK --set-xmark {MASQ_MARK}",
        f"-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK} -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring '
        'SNAT" -j MASQUERADE --random-fully',
    ]
    service_rules, nodeport_rules, chain_rules, reject_rules = [], [], [], []
    for sp in ports:
        proto = sp.protocol.lower()
        svc_chain = _chain("KUBE-SVC", sp.name, sp.protocol)
        ext_chain = _chain("KUBE-EXT", sp.name, sp.protocol)
        comment = f'-m comment --comment "{sp.name}'
        if not sp.endpoints:
            reject_rules.append(f"-A KUBE-SERVICES -d {sp.cluster_ip}/32 -p {proto} "
                                f'{comment} has no endpoints" -m {proto} --dport {sp.port} '
                                "-j REJECT --reject-with icmp-port-unreachable")
            continue
        chains.append(svc_chain)
        service_rules.append(f"-A KUBE-SERVICES -d {sp.cluster_ip}/32 -p {proto} "
                             f'{comment} cluster IP" -m {proto} --dport {sp.port} '
                             f"-j {svc_chain}")
        external = sp.node_port is not None or sp.external_ips
        if external:
            chains.append(ext_chain)
            chain_rules.append(f'-A {ext_chain} {comment} masquerade traffic for external '
                               f'destinations" -j KUBE-MARK-MASQ')
            chain_rules.append(f"-A {ext_chain} -j {svc_chain}")
        for ip in sp.external_ips:
            service_rules.append(f"-A KUBE-SERVICES -d {ip}/32 -p {proto} "
                                 f'{comment} loadbalancer IP" -m {proto} --dport {sp.port} '
                                 f"-j {ext_chain}")
        if sp.node_port is not None:
            nodeport_rules.append(f"-A KUBE-NODEPORTS -p {proto} {comment}\" -m {proto} "
                                  f"--dport {sp.node_port} -j {ext_chain}")
        chain_rules.append(f"-A {svc_chain} ! -s {cluster_cidr} -d {sp.cluster_ip}/32 "
                           f'-p {proto} {comment} cluster IP" -m {proto} --dport {sp.port} '
                           "-j KUBE-MARK-MASQ")
        count = len(sp.endpoints)
        for i, (addr, port) in enumerate(sp.endpoints):
            sep = _chain("KUBE-SEP", sp.name, sp.protocol, f"{addr}:{port}")
            chains.append(sep)
            chance = "" if i == count - 1 else (
                f"-m statistic --mode random --probability {1 / (count - i):.11f} ")
            chain_rules.append(f'-A {svc_chain} {comment} -> {addr}:{port}" {chance}-j {sep}')
            chain_rules.append(f"-A {sep} -s {addr}/32 {comment}\" -j KUBE-MARK-MASQ")
            chain_rules.append(f"-A {sep} -p {proto} {comment}\" -m {proto} "
                               f"-j DNAT --to-destination {addr}:{port}")
    service_rules.append('-A KUBE-SERVICES -m comment --comment "kubernetes service '
                         'nodeports; NOTE: this must be the last rule in this chain" '
                         "-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS")
    lines = ["*nat", *(f":{c} - [0:0]" for c in chains), *rules, *service_rules,
             *nodeport_rules, *chain_rules, "COMMIT"]
    if reject_rules:
        # REJECT exists in the filter table only: kube-proxy's filter KUBE-SERVICES, for
        # new connections being forwarded or sent by the node.
        lines += ["*filter", ":KUBE-SERVICES - [0:0]",
                  *(f"-A {hook} -m conntrack --ctstate NEW -m comment --comment "
                    f'"kubernetes service portals" -j KUBE-SERVICES'
                    for hook in ("FORWARD", "OUTPUT")),
                  *reject_rules, "COMMIT"]
    return "\n".join([*lines, ""])
