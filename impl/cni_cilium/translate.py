"""Desired state -> the exact contents of the datapath maps, and the diff between two (pure).

The agent hands in the module settings, its node name and the Kubernetes-shaped objects it
read; it gets back every key and value the service and node maps must hold (encoded by
`bpfabi`), the node routes, the health-check servers, and one problem line per object that
could not be honoured. `diff_maps` turns "what is programmed" and "what is wanted" into an
ordered list of single-entry writes that never exposes a frontend pointing at a slot that is
not written yet.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from . import maglev
from .bpfabi import (
    FE_EXTERNAL,
    FE_LOCAL_ONLY,
    FE_NODEPORT,
    FE_SOURCE_RANGES,
    LB_ALGORITHMS,
    LB_MODES,
    MAP_CAPACITY,
    NO_MASQ_VALUE,
    SRC_RANGE_VALUE,
    Backend,
    Frontend,
    FrontendValue,
    NodeConfig,
    TunnelConfig,
    TunnelEndpoint,
    index_key,
    ip_bytes,
    lpm_key,
    slot_key,
    src_range_key,
)
from .config import Settings
from .egress import EGRESS_MAPS, EgressTranslation, EgressView, translate_egress
from .hostport import HostPortFrontend, default_addresses, host_port_frontends
from .manifests import (
    EgressGateway,
    EgressGatewayPolicy,
    EndpointSlice,
    KubeObject,
    Node,
    Pod,
    Service,
    ServicePort,
)
from .policy.compute import POLICY_MAPS, PolicyTranslation, translate_policies
from .tunnel import VXLAN_VNI, uses_overlay

DEFAULT_CLUSTER_CIDR = "10.100.0.0/16"
DEFAULT_SERVICE_CIDR = "10.96.0.0/16"
# Source ports of SNAT and masquerade (bpf/lib/nat.h): below the NodePort range
# (30000-32767) and the kernel's default ephemeral range (32768-60999), so a translated
# tuple never collides with a connection the node opens itself; 28,976 ports, more than a
# Linux client's ephemeral range, so each of one client's ports has a NAT port of its own.
DEFAULT_NAT_PORTS = (1024, 29999)
MAX_BACKENDS = 65535

# What this datapath implements; anything else asked for falls back with a warning.
IMPLEMENTED_ALGORITHMS = ("random", "maglev", "least-conn")
# Why an lb-algorithm annotation is not in effect (status, `service list`, log).
REASON_OPTION_OFF = "extraLoadBalancerAlgorithmsEnabled is false"
REASON_MAGLEV_BUDGET = ("the maglev tables would exceed lb_maglev's {capacity} entries "
                        "(agent option --maglev-table-size picks smaller tables)")
REASON_RANGES_OFF = "not enforced: svcSourceRangeCheck is false"
# Why a service asked to use DSR is served by SNAT instead (status, `service list`, log).
HOST_NETWORK_FALLBACK = ("host-network endpoints (a node address) cannot answer by DSR "
                         "(cilium#10789)")

# Write order: a tunnel prefix exists before the device that makes it used (tunnel_cfg);
# slots, maglev tables and source ranges exist before the frontend that uses them;
# identities and verdicts before the default deny that needs them (policy.compute);
# an egress IP is reversed (egress_ips) before traffic is SNATed to it (egress_policy).
MANAGED_MAPS = ("node_cfg", "no_masq", "tunnel_map", "tunnel_cfg", "lb_slots", "lb_maglev",
                "lb_src_ranges", "lb_frontends", *POLICY_MAPS, *EGRESS_MAPS)
ARRAY_MAPS = ("node_cfg", "tunnel_cfg", "policy_cfg")

STATE_ACTIVE, STATE_TERMINATING, STATE_NOT_READY = "active", "terminating", "not-ready"
HOST_PORT = "HostPort"     # frontend type of a pod's hostPort (service: "Pod ns/name")


@dataclass(frozen=True)
class DesiredState:
    """Everything the translation depends on."""

    settings: Settings
    node_name: str
    objects: Sequence[KubeObject]
    cluster_cidr: str = DEFAULT_CLUSTER_CIDR
    nat_ports: tuple[int, int] = DEFAULT_NAT_PORTS
    # Who had each frontend last time: on a conflict the service already using it keeps
    # it, so a newly applied object never takes a frontend away from a working service.
    # Without a previous owner, the service listed first in `objects` (oldest) wins.
    previous_owners: Mapping[Frontend, str] = field(default_factory=dict)
    # The VXLAN device's ifindex when the overlay is in effect (0: not created yet).
    tunnel_ifindex: int = 0
    # Positions of every maglev table (the agent's --maglev-table-size; a prime).
    maglev_table_size: int = maglev.DEFAULT_TABLE_SIZE
    # Every IPv4 address of this node (hostPort binding); empty: the InternalIP only.
    node_addresses: tuple[str, ...] = ()
    # The agents' health as this agent sees them (egress gateway election); None: unknown.
    egress: EgressView | None = None


@dataclass(frozen=True)
class BackendView:
    addr: str
    port: int
    state: str          # active, terminating, not-ready
    local: bool
    node: str | None = None
    pod: str | None = None

    def to_dict(self) -> dict:
        return {"address": self.addr, "port": self.port, "state": self.state,
                "local": self.local, "node": self.node, "pod": self.pod}


@dataclass(frozen=True)
class FrontendView:
    """One programmed frontend, for status and `cni-cilium service list`."""

    service: str            # namespace/name
    port_name: str
    type: str               # ClusterIP, NodePort, LoadBalancer, ExternalIP
    frontend: Frontend
    flags: int
    backends: tuple[BackendView, ...]
    selected: tuple[Backend, ...]
    algorithm: str
    lb_mode: str            # "-" for ClusterIP
    traffic_policy: str
    lb_mode_fallback: str = ""   # why DSR was asked for but SNAT is used
    algorithm_requested: str | None = None   # the lb-algorithm annotation
    algorithm_reason: str = ""   # why the annotation is not in effect
    affinity_timeout: int = 0    # sessionAffinity ClientIP: seconds (0: none)
    source_ranges: tuple[str, ...] = ()
    source_range_check: str = ""  # "enforced", why not, or "" without ranges
    maglev_table_size: int = 0
    maglev_table: Frontend | None = None

    def to_dict(self) -> dict:
        return {
            "service": self.service, "port": self.port_name, "type": self.type,
            "frontend": str(self.frontend), "address": self.frontend.addr,
            "frontendPort": self.frontend.port, "protocol": self.frontend.proto,
            "backends": [b.to_dict() for b in self.backends],
            "selected": [f"{b.addr}:{b.port}" for b in self.selected],
            "algorithm": self.algorithm, "lbMode": self.lb_mode,
            "algorithmRequested": self.algorithm_requested,
            "algorithmReason": self.algorithm_reason or None,
            "lbModeFallback": self.lb_mode_fallback or None,
            "externalTrafficPolicy": self.traffic_policy,
            "sessionAffinity": ({"type": "ClientIP", "timeoutSeconds": self.affinity_timeout}
                                if self.affinity_timeout else None),
            "sourceRanges": list(self.source_ranges),
            "sourceRangeCheck": self.source_range_check or None,
            "maglev": ({"tableSize": self.maglev_table_size, "table": str(self.maglev_table)}
                       if self.maglev_table else None),
        }


@dataclass(frozen=True)
class HealthCheck:
    """kube-proxy's health-check node port for one externalTrafficPolicy: Local service."""

    namespace: str
    name: str
    local_endpoints: int

    def body(self) -> dict:
        return {"service": {"namespace": self.namespace, "name": self.name},
                "localEndpoints": self.local_endpoints, "serviceProxyHealthy": True}

    @property
    def status(self) -> int:
        return 200 if self.local_endpoints > 0 else 503


@dataclass
class Translation:
    node: Node | None
    maps: dict[str, dict[bytes, bytes]]
    frontends: list[FrontendView] = field(default_factory=list)
    health_checks: dict[int, HealthCheck] = field(default_factory=dict)
    node_routes: dict[str, str] = field(default_factory=dict)
    # VXLAN: other nodes' pod CIDRs -> their InternalIP; the node's own connections to them
    # are routed into the overlay (the pods' packets are redirected before routing).
    tunnel_routes: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    lb_mode: dict[str, str] = field(default_factory=dict)   # protocol -> mode in effect
    policy: PolicyTranslation | None = None
    egress: EgressTranslation | None = None
    host_port_addresses: tuple[str, ...] = ()   # where hostPorts without hostIP listen

    @property
    def services(self) -> int:
        return len({f.service for f in self.frontends if f.type != HOST_PORT})

    @property
    def host_ports(self) -> int:
        return sum(1 for f in self.frontends if f.type == HOST_PORT)


@dataclass(frozen=True)
class MapOp:
    map: str
    key: bytes
    value: bytes | None     # None = delete

    @property
    def is_delete(self) -> bool:
        return self.value is None


def _svc_id(svc: Service) -> str:
    return f"{svc.namespace}/{svc.name}"


def _cidr_test(cidr: str):
    """A fast membership test for one network (called for every endpoint)."""
    net = ipaddress.IPv4Network(cidr)
    base, mask = int(net.network_address), int(net.netmask)
    return lambda addr: int.from_bytes(ip_bytes(addr), "big") & mask == base


def _slice_port(eps: EndpointSlice, sp: ServicePort) -> int | None:
    """The backend port of service port `sp` in a slice: matched by port name and protocol,
    as Kubernetes' endpoint controller names them; slices without ports use a numeric
    targetPort."""
    if eps.ports:
        for p in eps.ports:
            if p.name == sp.name and p.protocol == sp.protocol:
                return p.port
        return None
    return sp.target_port if isinstance(sp.target_port, int) else None


def _backends(svc: Service, sp: ServicePort, slices: Iterable[EndpointSlice], node: Node,
              in_pod_cidr) -> tuple[BackendView, ...]:
    rank = {STATE_ACTIVE: 0, STATE_TERMINATING: 1, STATE_NOT_READY: 2}
    found: dict[tuple[str, int], BackendView] = {}
    for eps in slices:
        port = _slice_port(eps, sp)
        if port is None:
            continue
        for ep in eps.endpoints:
            if ep.ready:
                state = STATE_ACTIVE
            elif ep.serving and ep.terminating:
                state = STATE_TERMINATING
            else:
                state = STATE_NOT_READY
            for addr in ep.addresses:
                local = ep.node_name == node.name if ep.node_name else in_pod_cidr(addr)
                view = BackendView(addr, port, state, local, ep.node_name, ep.target_pod)
                old = found.get((addr, port))
                if old is None or rank[state] < rank[old.state]:
                    found[(addr, port)] = view
    return tuple(sorted(found.values(), key=lambda b: (ip_bytes(b.addr), b.port)))


def _selection(backends: Sequence[BackendView], local_only: bool) -> tuple[Backend, ...]:
    """Backends for new connections: ready ones, else serving-but-terminating ones (as
    kube-proxy does), restricted to this node's for externalTrafficPolicy Local."""
    pool = [b for b in backends if b.local] if local_only else list(backends)
    chosen = [b for b in pool if b.state == STATE_ACTIVE]
    if not chosen:
        chosen = [b for b in pool if b.state == STATE_TERMINATING]
    return tuple(Backend(b.addr, b.port, b.local) for b in chosen[:MAX_BACKENDS])


def _algorithm(svc: Service, settings: Settings, warnings: list[str]) -> tuple[str, str]:
    """(algorithm in effect, why the annotation's is not: "" when it is)."""
    asked = svc.lb_algorithm
    if asked is None:
        return "random", ""
    reason = ""
    if not settings.extraLoadBalancerAlgorithmsEnabled:
        reason = REASON_OPTION_OFF
    elif asked not in IMPLEMENTED_ALGORITHMS:
        reason = "not implemented by this datapath"
    if reason:
        warnings.append(f"Service {_svc_id(svc)}: lb-algorithm {asked!r} ignored ({reason}); "
                        "using random")
        return "random", reason
    return asked, ""


def _frontends_of(svc: Service, sp: ServicePort, node: Node
                  ) -> list[tuple[str, Frontend, int, str]]:
    """(type, frontend, flags, field path) for each address a service port answers on."""
    index = svc.ports.index(sp)
    path = f"spec.ports[{index}]"
    local = FE_LOCAL_ONLY if svc.external_traffic_policy == "Local" else 0
    out = [("ClusterIP", Frontend(svc.cluster_ip, sp.port, sp.protocol), 0,
            "spec.clusterIP")]
    if svc.type in ("NodePort", "LoadBalancer") and sp.node_port:
        out.append(("NodePort", Frontend(node.internal_ip, sp.node_port, sp.protocol),
                    FE_EXTERNAL | FE_NODEPORT | local, f"{path}.nodePort"))
    if svc.type == "LoadBalancer":
        for i, ip in enumerate(svc.load_balancer_ips):
            out.append(("LoadBalancer", Frontend(ip, sp.port, sp.protocol),
                        FE_EXTERNAL | local, f"status.loadBalancer.ingress[{i}].ip"))
    for i, ip in enumerate(svc.external_ips):
        out.append(("ExternalIP", Frontend(ip, sp.port, sp.protocol), FE_EXTERNAL | local,
                    f"spec.externalIPs[{i}]"))
    return out


def translate(state: DesiredState) -> Translation:
    """Compute every map entry, route and health check the desired state asks for."""
    settings = state.settings
    nodes = sorted((o for o in state.objects if isinstance(o, Node)), key=lambda n: n.name)
    services = sorted((o for o in state.objects if isinstance(o, Service)),
                      key=lambda s: (s.namespace, s.name))
    slices: dict[tuple[str, str], list[EndpointSlice]] = defaultdict(list)
    for o in state.objects:
        if isinstance(o, EndpointSlice):
            slices[(o.namespace, o.service_name)].append(o)
    for group in slices.values():
        group.sort(key=lambda s: s.name)

    node = next((n for n in nodes if n.name == state.node_name), None)
    if node is None:
        return Translation(None, {name: {} for name in MANAGED_MAPS}, problems=[
            f"Node {state.node_name}: not found in the manifests; waiting for it"])
    out = Translation(node, {name: {} for name in MANAGED_MAPS})
    # VXLAN in effect makes every protocol SNAT (settings.lb_mode_for knows).
    out.lb_mode = {p: settings.lb_mode_for(p) for p in ("TCP", "UDP")}

    maps = out.maps
    maps["node_cfg"][index_key(0)] = NodeConfig(
        node.internal_ip, node.pod_cidr, state.nat_ports[0], state.nat_ports[1],
        settings.masqueradeMode == "BPF").encode()
    if settings.masqueradeMode != "BPF":
        out.warnings.append(f"masqueradeMode {settings.masqueradeMode}: pod -> world traffic "
                            "is not masqueraded by BPF (no netfilter rule is installed yet)")
    for cidr in [state.cluster_cidr] + [n.pod_cidr for n in nodes] + [
            f"{n.internal_ip}/32" for n in nodes]:
        maps["no_masq"][lpm_key(cidr)] = NO_MASQ_VALUE

    _peer_routing(state, nodes, node, out)

    claims: dict[Frontend, list[str]] = defaultdict(list)
    for svc in (o for o in state.objects if isinstance(o, Service)):  # given (age) order
        for sp in svc.ports:
            for _type, fe, _flags, _path in _frontends_of(svc, sp, node):
                claims[fe].append(_svc_id(svc))
    pods = [o for o in state.objects if isinstance(o, Pod)]
    host_ports, hp_problems = host_port_frontends(node, pods, state.node_addresses,
                                                  settings.hostPortAllAddresses)
    out.problems.extend(hp_problems)
    out.host_port_addresses = default_addresses(node, state.node_addresses,
                                                settings.hostPortAllAddresses)
    for hp in host_ports:                   # after every service: a service keeps its port
        claims[hp.frontend].append(hp.owner)
    owner = {}
    for fe, claimants in claims.items():
        previous = state.previous_owners.get(fe)
        owner[fe] = previous if previous in claimants else claimants[0]
    hc_owner: dict[int, str] = {}
    node_ips = frozenset(n.internal_ip for n in nodes)
    maglev.check_table_size(state.maglev_table_size)
    for svc in services:
        _translate_service(svc, slices.get((svc.namespace, svc.name), []), node, settings,
                           owner, hc_owner, node_ips, state.maglev_table_size, out)
    _program_host_ports(host_ports, owner, out)
    out.policy = translate_policies(settings, node, nodes, state.objects)
    out.maps.update(out.policy.maps)
    out.problems += out.policy.problems
    out.warnings += out.policy.warnings
    out.egress = translate_egress(
        node, nodes, pods, [o for o in state.objects if isinstance(o, EgressGateway)],
        [o for o in state.objects if isinstance(o, EgressGatewayPolicy)], state.egress)
    maps.update(out.egress.maps)
    out.problems.extend(out.egress.problems)
    return out


def _program_host_ports(host_ports: Sequence[HostPortFrontend], owner: Mapping[Frontend, str],
                        out: Translation) -> None:
    """Each hostPort is a frontend of the node's own address with its pod as the only,
    local backend (see `hostport`)."""
    flags = FE_EXTERNAL | FE_NODEPORT | FE_LOCAL_ONLY
    for hp in host_ports:
        if owner[hp.frontend] != hp.owner:
            out.problems.append(f"{hp.owner}: {hp.path}: frontend {hp.frontend} is already "
                                f"used by {_claimant(owner[hp.frontend])}; not programmed")
            continue
        out.maps["lb_frontends"][hp.frontend.encode()] = FrontendValue(
            1, flags, LB_ALGORITHMS["random"], LB_MODES["SNAT"]).encode()
        out.maps["lb_slots"][slot_key(hp.frontend, 1)] = hp.backend.encode()
        view = BackendView(hp.backend.addr, hp.backend.port, STATE_ACTIVE, True,
                           hp.pod.node_name, f"{hp.pod.namespace}/{hp.pod.name}")
        out.frontends.append(FrontendView(hp.owner, hp.port_name, HOST_PORT, hp.frontend,
                                          flags, (view,), (hp.backend,), "random", "-",
                                          "Local"))


def _claimant(owner_id: str) -> str:
    return owner_id if owner_id.startswith("Pod ") else f"Service {owner_id}"


def owners(translation: Translation) -> dict[Frontend, str]:
    """Frontend -> owning service, to pass as the next `previous_owners`."""
    return {f.frontend: f.service for f in translation.frontends}


def _peers(nodes: list[Node], node: Node, out: Translation) -> list[Node]:
    """The other nodes whose pod CIDR overlaps no earlier one's (a problem line each else)."""
    seen: dict[str, str] = {node.pod_cidr: node.name}
    peers = []
    for other in nodes:
        if other.name == node.name:
            continue
        clash = next((name for cidr, name in seen.items()
                      if ipaddress.IPv4Network(cidr).overlaps(
                          ipaddress.IPv4Network(other.pod_cidr))), None)
        if clash is not None:
            out.problems.append(f"Node {other.name}: spec.podCIDR: {other.pod_cidr} overlaps "
                                f"the pod CIDR of Node {clash}; no route installed")
            continue
        seen[other.pod_cidr] = other.name
        peers.append(other)
    return peers


def _peer_routing(state: DesiredState, nodes: list[Node], node: Node, out: Translation
                  ) -> None:
    """How other nodes' pods are reached: node routes (native routing) or the tunnel map
    (VXLAN: each pod CIDR and node address -> the node to encapsulate to)."""
    settings = state.settings
    overlay = uses_overlay(settings.tunnelMode)
    out.maps["tunnel_cfg"][index_key(0)] = TunnelConfig(
        state.tunnel_ifindex if overlay else 0, VXLAN_VNI if overlay else 0).encode()
    native_routes = settings.effective_create_node_routes and not overlay
    if not (overlay or native_routes):
        return
    for peer in _peers(nodes, node, out):
        if native_routes:
            out.node_routes[peer.pod_cidr] = peer.internal_ip
            continue
        out.tunnel_routes[peer.pod_cidr] = peer.internal_ip
        out.maps["tunnel_map"][lpm_key(peer.pod_cidr)] = TunnelEndpoint(
            peer.internal_ip).encode()
        out.maps["tunnel_map"][lpm_key(f"{peer.internal_ip}/32")] = TunnelEndpoint(
            peer.internal_ip, node_address=True).encode()


def _host_network_fallback(svc: Service, backends: Mapping[ServicePort, tuple],
                           node_ips: frozenset[str], out: Translation) -> str:
    """The reason this service's DSR frontends must use SNAT, or "" when DSR works."""
    if svc.type == "ClusterIP" or "DSR" not in {out.lb_mode[sp.protocol] for sp in svc.ports}:
        return ""
    host = sorted({b.addr for views in backends.values() for b in views if b.addr in node_ips},
                  key=ip_bytes)
    if not host:
        return ""
    out.warnings.append(f"Service {_svc_id(svc)}: endpoints {', '.join(host)} are "
                        f"host-network: {HOST_NETWORK_FALLBACK}; its NodePort/LoadBalancer "
                        "frontends use SNAT")
    return HOST_NETWORK_FALLBACK


def _translate_service(svc: Service, slices: list[EndpointSlice], node: Node,
                       settings: Settings, owner: Mapping[Frontend, str],
                       hc_owner: dict[int, str], node_ips: frozenset[str], maglev_size: int,
                       out: Translation) -> None:
    sid = _svc_id(svc)
    algorithm, algorithm_reason = _algorithm(svc, settings, out.warnings)
    in_pod_cidr = _cidr_test(node.pod_cidr)
    local_addrs: set[str] = set()
    done: set[Frontend] = set()
    backends_of = {sp: _backends(svc, sp, slices, node, in_pod_cidr) for sp in svc.ports}
    fallback = _host_network_fallback(svc, backends_of, node_ips, out)
    programmed = [(sp, ftype, fe, flags, path) for sp in svc.ports
                  for ftype, fe, flags, path in _frontends_of(svc, sp, node)]
    selection_of = {fe: _selection(backends_of[sp], bool(flags & FE_LOCAL_ONLY))
                    for sp, _type, fe, flags, _path in programmed}
    if algorithm == "maglev":
        # One table per distinct backend set of a port (shared by its frontends).
        tables_needed = len({(sp, selection_of[fe]) for sp, _t, fe, _f, _p in programmed
                             if selection_of[fe]})
        capacity = MAP_CAPACITY["lb_maglev"]
        if (len(out.maps["lb_maglev"]) + tables_needed * maglev.chunk_count(maglev_size)
                > capacity):
            algorithm_reason = REASON_MAGLEV_BUDGET.format(capacity=capacity)
            algorithm = "random"
            out.warnings.append(f"Service {sid}: lb-algorithm 'maglev' not in effect "
                                f"({algorithm_reason}); using random")
    affinity = svc.affinity_timeout if svc.session_affinity == "ClientIP" else 0
    ranges_checked = settings.svcSourceRangeCheck and svc.type == "LoadBalancer"
    if svc.source_ranges and svc.type == "LoadBalancer" and not ranges_checked:
        out.warnings.append(f"Service {sid}: loadBalancerSourceRanges {REASON_RANGES_OFF}")
    tables: dict[tuple[ServicePort, tuple[Backend, ...]], Frontend] = {}
    for sp, ftype, fe, flags, path in programmed:
        backends = backends_of[sp]
        local_addrs.update(b.addr for b in backends if b.local and b.state == STATE_ACTIVE)
        if owner[fe] != sid or fe in done:
            other = _claimant(owner[fe]) if owner[fe] != sid else "itself"
            out.problems.append(f"Service {sid}: {path}: frontend {fe} is already used "
                                f"by {other}; not programmed")
            continue
        done.add(fe)
        selected = selection_of[fe]
        lb_mode = out.lb_mode[sp.protocol] if flags & FE_EXTERNAL else "-"
        mode_fallback = fallback if lb_mode == "DSR" else ""
        if mode_fallback:
            lb_mode = "SNAT"
        table = None
        if algorithm == "maglev" and selected:
            table = tables.get((sp, selected))
            if table is None:
                table = tables[(sp, selected)] = fe
                out.maps["lb_maglev"].update(maglev.table_chunks(fe, selected, maglev_size))
        check = ""
        if ftype == "LoadBalancer" and svc.source_ranges:
            check = "enforced" if ranges_checked else REASON_RANGES_OFF
        if check == "enforced":
            flags |= FE_SOURCE_RANGES
            for cidr in svc.source_ranges:
                out.maps["lb_src_ranges"][src_range_key(fe, cidr)] = SRC_RANGE_VALUE
        value = FrontendValue(len(selected), flags, LB_ALGORITHMS[algorithm],
                              LB_MODES.get(lb_mode, LB_MODES["SNAT"]), affinity,
                              maglev_size if table else 0, table)
        out.maps["lb_frontends"][fe.encode()] = value.encode()
        for slot, backend in enumerate(selected, 1):
            out.maps["lb_slots"][slot_key(fe, slot)] = backend.encode()
        out.frontends.append(FrontendView(
            sid, sp.name, ftype, fe, flags, backends, selected, algorithm, lb_mode,
            svc.external_traffic_policy if flags & FE_EXTERNAL else "-", mode_fallback,
            svc.lb_algorithm, algorithm_reason, affinity,
            svc.source_ranges if ftype == "LoadBalancer" else (), check,
            maglev_size if table else 0, table))
    if (svc.external_traffic_policy == "Local" and svc.type != "ClusterIP"
            and svc.health_check_node_port):
        port = svc.health_check_node_port
        if port in hc_owner:
            out.problems.append(f"Service {sid}: spec.healthCheckNodePort: {port} is already "
                                f"used by Service {hc_owner[port]}; not served")
        else:
            hc_owner[port] = sid
            out.health_checks[port] = HealthCheck(svc.namespace, svc.name, len(local_addrs))


def diff_maps(current: Mapping[str, Mapping[bytes, bytes]],
              desired: Mapping[str, Mapping[bytes, bytes]]) -> list[MapOp]:
    """Single-entry writes turning `current` into `desired`.

    Writes go node config first and frontends last, deletions frontends first and slots
    last: a frontend never counts a slot that is not written, and a shrinking frontend
    stops using a slot before the slot goes. Array entries are never deleted.
    """
    ops: list[MapOp] = []
    for name in MANAGED_MAPS:
        have, want = current.get(name, {}), desired.get(name, {})
        ops.extend(MapOp(name, key, value) for key, value in sorted(want.items())
                   if have.get(key) != value)
    for name in reversed(MANAGED_MAPS):
        if name in ARRAY_MAPS:
            continue
        have, want = current.get(name, {}), desired.get(name, {})
        ops.extend(MapOp(name, key, None) for key in sorted(have) if key not in want)
    return ops


def apply_ops(state: Mapping[str, Mapping[bytes, bytes]], ops: Iterable[MapOp]
              ) -> dict[str, dict[bytes, bytes]]:
    """The map contents after `ops` (what the agent believes is programmed)."""
    out = {name: dict(entries) for name, entries in state.items()}
    for op in ops:
        entries = out.setdefault(op.map, {})
        if op.value is None:
            entries.pop(op.key, None)
        else:
            entries[op.key] = op.value
    return out


def diff_routes(current: Mapping[str, str], desired: Mapping[str, str]
                ) -> tuple[dict[str, str], list[str]]:
    """(routes to add or replace: cidr -> gateway, cidrs to delete)."""
    upsert = {cidr: via for cidr, via in sorted(desired.items()) if current.get(cidr) != via}
    delete = sorted(cidr for cidr in current if cidr not in desired)
    return upsert, delete
