"""Kubernetes-shaped desired state: parse and validate Node, Pod, Service, EndpointSlice,
and CiliumClusterwideNetworkPolicy (`cni_cilium.policy.parse`), and the egress gateway
kinds (network.deckhouse.io/v1alpha1 EgressGateway and EgressGatewayPolicy, cluster-scoped).

Pure: takes YAML text or loaded documents, returns typed objects and one problem line per
fault, naming the object and the field ("Service default/web: spec.ports[0].port: ...").
An invalid object is refused on its own; every valid object in the same file is kept.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any, Union

import yaml

from .config import LB_ALGORITHM_ANNOTATION, LB_ALGORITHMS
from .policy.model import ClusterwideNetworkPolicy

PROTOCOLS = ("TCP", "UDP")
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
TRAFFIC_POLICIES = ("Cluster", "Local")
AFFINITIES = ("None", "ClientIP")
AFFINITY_TIMEOUT_DEFAULT = 10800     # seconds, Kubernetes' default for ClientIP
AFFINITY_TIMEOUT_MAX = 86400
NODE_PORT_RANGE = (30000, 32767)
SERVICE_NAME_LABEL = "kubernetes.io/service-name"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")


class ManifestError(ValueError):
    """One or more objects are invalid; `problems` has one line per fault."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class ServicePort:
    name: str
    protocol: str
    port: int
    target_port: int | str
    node_port: int | None = None


@dataclass(frozen=True)
class Service:
    namespace: str
    name: str
    type: str
    cluster_ip: str
    ports: tuple[ServicePort, ...]
    selector: dict[str, str] | None
    external_traffic_policy: str = "Cluster"
    health_check_node_port: int | None = None
    session_affinity: str = "None"
    load_balancer_ips: tuple[str, ...] = ()
    external_ips: tuple[str, ...] = ()
    source_ranges: tuple[str, ...] = ()
    annotations: dict[str, str] = field(default_factory=dict)
    affinity_timeout: int = AFFINITY_TIMEOUT_DEFAULT   # sessionAffinity ClientIP, seconds

    kind = "Service"

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)

    @property
    def lb_algorithm(self) -> str | None:
        """The algorithm the annotation asks for (honoured only when the option is on)."""
        return self.annotations.get(LB_ALGORITHM_ANNOTATION)


@dataclass(frozen=True)
class Endpoint:
    addresses: tuple[str, ...]
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node_name: str | None = None
    target_pod: str | None = None  # "namespace/name" of the pod behind it


@dataclass(frozen=True)
class EndpointPort:
    name: str
    port: int
    protocol: str = "TCP"


@dataclass(frozen=True)
class EndpointSlice:
    namespace: str
    name: str
    service_name: str
    endpoints: tuple[Endpoint, ...]
    ports: tuple[EndpointPort, ...]

    kind = "EndpointSlice"

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)


@dataclass(frozen=True)
class Node:
    name: str
    internal_ip: str
    pod_cidr: str
    labels: dict[str, str] = field(default_factory=dict)
    ready: bool = True          # status.conditions Ready; no conditions at all: ready

    kind = "Node"

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, "", self.name)


@dataclass(frozen=True)
class ContainerPort:
    container_port: int
    protocol: str = "TCP"
    host_port: int | None = None
    name: str = ""
    host_ip: str | None = None      # hostIP: bind the host port to this node address only


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    node_name: str
    pod_ip: str | None
    labels: dict[str, str] = field(default_factory=dict)
    host_network: bool = False
    ports: tuple[ContainerPort, ...] = ()

    kind = "Pod"

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)


EGRESS_API_VERSION = "network.deckhouse.io/v1alpha1"
SOURCE_IP_PRIMARY = "PrimaryIPFromEgressGatewayNodeInterface"
SOURCE_IP_VIRTUAL = "VirtualIPAddress"
SOURCE_IP_MODES = (SOURCE_IP_PRIMARY, SOURCE_IP_VIRTUAL)
# The pseudo-label that selects a pod's namespace in an EgressGatewayPolicy's podSelector.
POD_NAMESPACE_LABEL = "io.kubernetes.pod.namespace"
SELECTOR_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
_IFNAME = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")


@dataclass(frozen=True)
class EgressGateway:
    """A group of nodes in hot standby; the active one gives selected pods' traffic its
    source address (its interface's primary IP, or a virtual IP it announces)."""

    name: str
    node_selector: dict[str, str]
    mode: str                                   # SOURCE_IP_MODES
    interface_name: str = ""                    # PrimaryIPFromEgressGatewayNodeInterface
    virtual_ip: str = ""                        # VirtualIPAddress
    vip_interfaces: tuple[str, ...] = ()        # where the VIP is announced ("": uplink)

    kind = "EgressGateway"

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, "", self.name)


@dataclass(frozen=True)
class SelectorRequirement:
    key: str
    operator: str                   # SELECTOR_OPERATORS
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class PodSelector:
    """A label selector; `io.kubernetes.pod.namespace` matches the pod's namespace."""

    match_labels: dict[str, str] = field(default_factory=dict)
    match_expressions: tuple[SelectorRequirement, ...] = ()


@dataclass(frozen=True)
class EgressGatewayPolicy:
    """Which pods' traffic to which destinations leaves through an EgressGateway."""

    name: str
    gateway: str
    destination_cidrs: tuple[str, ...]
    excluded_cidrs: tuple[str, ...] = ()
    selectors: tuple[PodSelector, ...] = ()

    kind = "EgressGatewayPolicy"

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, "", self.name)


KubeObject = Union[Service, EndpointSlice, Node, Pod, ClusterwideNetworkPolicy,
                   EgressGateway, EgressGatewayPolicy]


class _Ctx:
    """Collects problems for one object, prefixed with its kind and name."""

    def __init__(self, label: str):
        self.label = label
        self.problems: list[str] = []

    def err(self, path: str, message: str) -> None:
        self.problems.append(f"{self.label}: {path}: {message}")


def _mapping(ctx: _Ctx, value: Any, path: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        ctx.err(path, f"expected a mapping, got {type(value).__name__}")
        return {}
    return value


def _list(ctx: _Ctx, value: Any, path: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        ctx.err(path, f"expected a list, got {type(value).__name__}")
        return []
    return value


def _port(ctx: _Ctx, value: Any, path: str, lo: int = 1, hi: int = 65535) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        ctx.err(path, f"invalid port {value!r}; must be an integer {lo}-{hi}")
        return None
    if not lo <= value <= hi:
        ctx.err(path, f"invalid port {value}; must be {lo}-{hi}")
        return None
    return value


def _protocol(ctx: _Ctx, value: Any, path: str) -> str:
    if value is None:
        return "TCP"
    if value not in PROTOCOLS:
        ctx.err(path, f"unsupported protocol {value!r}; allowed: {', '.join(PROTOCOLS)}")
        return "TCP"
    return value


def _enum(ctx: _Ctx, value: Any, path: str, allowed: tuple[str, ...], default: str) -> str:
    if value is None:
        return default
    if value not in allowed:
        ctx.err(path, f"invalid value {value!r}; allowed: {', '.join(allowed)}")
        return default
    return value


@functools.lru_cache(maxsize=65536)
def _canonical_ipv4(value: str | int) -> str | None:
    """An address in dotted form, None when invalid. Cached: the same pod and node
    addresses come back in thousands of endpoints, and ipaddress is slow to parse."""
    try:
        return str(ipaddress.IPv4Address(value))
    except (ipaddress.AddressValueError, ValueError, TypeError):
        return None


def _ipv4(ctx: _Ctx, value: Any, path: str) -> str | None:
    canonical = _canonical_ipv4(value) if isinstance(value, (str, int)) else None
    if canonical is None:
        ctx.err(path, f"invalid IPv4 address {value!r}")
    return canonical


def _cidr(ctx: _Ctx, value: Any, path: str) -> str | None:
    try:
        return str(ipaddress.IPv4Network(value, strict=True))
    except (ipaddress.AddressValueError, ipaddress.NetmaskValueError, ValueError, TypeError):
        ctx.err(path, f"invalid IPv4 CIDR {value!r}")
        return None


def _labels(ctx: _Ctx, value: Any, path: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, val in _mapping(ctx, value, path).items():
        name = str(key).split("/")[-1]
        if not isinstance(key, str) or not _LABEL_NAME.match(name):
            ctx.err(f"{path}.{key}", "invalid label key")
            continue
        if val is None:
            val = ""
        if not isinstance(val, str) or not _LABEL_VALUE.match(val):
            ctx.err(f"{path}.{key}", f"invalid label value {val!r}")
            continue
        out[key] = val
    return out


def _meta(ctx: _Ctx, doc: dict, namespaced: bool) -> tuple[str, str, dict, dict]:
    meta = _mapping(ctx, doc.get("metadata"), "metadata")
    name = meta.get("name")
    if not isinstance(name, str) or not _DNS_SUBDOMAIN.match(name):
        ctx.err("metadata.name", f"invalid name {name!r}")
        name = str(name)
    namespace = meta.get("namespace", "default") if namespaced else ""
    if namespaced and (not isinstance(namespace, str) or not _DNS_LABEL.match(namespace)):
        ctx.err("metadata.namespace", f"invalid namespace {namespace!r}")
    labels = _labels(ctx, meta.get("labels"), "metadata.labels")
    annotations = {str(k): str(v) for k, v in _mapping(
        ctx, meta.get("annotations"), "metadata.annotations").items()}
    return str(namespace), name, labels, annotations


def _target_port(ctx: _Ctx, value: Any, path: str, default: int | None) -> int | str | None:
    if value is None:
        return default
    if isinstance(value, str) and not value.isdigit():
        if not _DNS_LABEL.match(value):
            ctx.err(path, f"invalid named port {value!r}")
        return value
    return _port(ctx, int(value) if isinstance(value, str) else value, path)


def parse_service(doc: dict, ctx: _Ctx) -> Service | None:
    namespace, name, _, annotations = _meta(ctx, doc, namespaced=True)
    spec = _mapping(ctx, doc.get("spec"), "spec")
    stype = _enum(ctx, spec.get("type"), "spec.type", SERVICE_TYPES, "ClusterIP")
    cluster_ip = spec.get("clusterIP")
    if cluster_ip in (None, "None"):
        ctx.err("spec.clusterIP", "required (headless services are not load-balanced)")
        cluster_ip = "0.0.0.0"
    else:
        cluster_ip = _ipv4(ctx, cluster_ip, "spec.clusterIP") or "0.0.0.0"
    selector = spec.get("selector")
    if selector is not None:
        if not isinstance(selector, dict) or not selector:
            ctx.err("spec.selector", "must be a non-empty mapping of label key to value")
            selector = None
        else:
            selector = _labels(ctx, selector, "spec.selector")
    ports: list[ServicePort] = []
    raw_ports = _list(ctx, spec.get("ports"), "spec.ports")
    if not raw_ports:
        ctx.err("spec.ports", "at least one port is required")
    seen: set[tuple[int, str]] = set()
    for i, raw in enumerate(raw_ports):
        path = f"spec.ports[{i}]"
        raw = _mapping(ctx, raw, path)
        port = _port(ctx, raw.get("port"), f"{path}.port")
        protocol = _protocol(ctx, raw.get("protocol"), f"{path}.protocol")
        target = _target_port(ctx, raw.get("targetPort"), f"{path}.targetPort", port)
        node_port = raw.get("nodePort")
        if stype == "ClusterIP" and node_port is not None:
            ctx.err(f"{path}.nodePort", "not allowed for type ClusterIP")
            node_port = None
        elif node_port is not None:
            node_port = _port(ctx, node_port, f"{path}.nodePort", *NODE_PORT_RANGE)
        elif stype != "ClusterIP":
            ctx.err(f"{path}.nodePort", f"required for type {stype} (allocated by apply)")
        pname = raw.get("name", "")
        if len(raw_ports) > 1 and not pname:
            ctx.err(f"{path}.name", "required when a service has several ports")
        if port is not None:
            if (port, protocol) in seen:
                ctx.err(f"{path}.port", f"duplicate port {port}/{protocol}")
            seen.add((port, protocol))
            ports.append(ServicePort(str(pname), protocol, port,
                                     target if target is not None else port, node_port))
    etp = _enum(ctx, spec.get("externalTrafficPolicy"), "spec.externalTrafficPolicy",
                TRAFFIC_POLICIES, "Cluster")
    if stype == "ClusterIP" and spec.get("externalTrafficPolicy") is not None:
        ctx.err("spec.externalTrafficPolicy", "only for type NodePort or LoadBalancer")
    hc_port = spec.get("healthCheckNodePort")
    if hc_port is not None:
        hc_port = _port(ctx, hc_port, "spec.healthCheckNodePort", *NODE_PORT_RANGE)
        if etp != "Local":
            ctx.err("spec.healthCheckNodePort", "only with externalTrafficPolicy: Local")
    elif etp == "Local" and stype != "ClusterIP":
        ctx.err("spec.healthCheckNodePort", "required with externalTrafficPolicy: Local "
                "(allocated by apply)")
    affinity = _enum(ctx, spec.get("sessionAffinity"), "spec.sessionAffinity", AFFINITIES,
                     "None")
    affinity_timeout = _affinity_timeout(ctx, spec, affinity)
    lb_ips: list[str] = []
    if stype == "LoadBalancer":
        status = _mapping(ctx, doc.get("status"), "status")
        lb = _mapping(ctx, status.get("loadBalancer"), "status.loadBalancer")
        for i, ing in enumerate(_list(ctx, lb.get("ingress"), "status.loadBalancer.ingress")):
            ip = _ipv4(ctx, _mapping(ctx, ing, f"status.loadBalancer.ingress[{i}]").get("ip"),
                       f"status.loadBalancer.ingress[{i}].ip")
            if ip:
                lb_ips.append(ip)
        if spec.get("loadBalancerIP"):
            ip = _ipv4(ctx, spec["loadBalancerIP"], "spec.loadBalancerIP")
            if ip and ip not in lb_ips:
                lb_ips.append(ip)
    ext_ips = [ip for i, v in enumerate(_list(ctx, spec.get("externalIPs"), "spec.externalIPs"))
               if (ip := _ipv4(ctx, v, f"spec.externalIPs[{i}]"))]
    ranges = [c for i, v in enumerate(_list(ctx, spec.get("loadBalancerSourceRanges"),
                                            "spec.loadBalancerSourceRanges"))
              if (c := _cidr(ctx, v, f"spec.loadBalancerSourceRanges[{i}]"))]
    algo = annotations.get(LB_ALGORITHM_ANNOTATION)
    if algo is not None and algo not in LB_ALGORITHMS:
        ctx.err(f"metadata.annotations.{LB_ALGORITHM_ANNOTATION}",
                f"invalid value {algo!r}; allowed: {', '.join(LB_ALGORITHMS)}")
    if ctx.problems:
        return None
    return Service(namespace, name, stype, cluster_ip, tuple(ports), selector, etp, hc_port,
                   affinity, tuple(lb_ips), tuple(ext_ips), tuple(ranges), annotations,
                   affinity_timeout)


def _affinity_timeout(ctx: _Ctx, spec: dict, affinity: str) -> int:
    """sessionAffinityConfig.clientIP.timeoutSeconds, validated as Kubernetes does."""
    config = _mapping(ctx, spec.get("sessionAffinityConfig"), "spec.sessionAffinityConfig")
    if not config:
        return AFFINITY_TIMEOUT_DEFAULT
    if affinity != "ClientIP":
        ctx.err("spec.sessionAffinityConfig", "only with sessionAffinity: ClientIP")
        return AFFINITY_TIMEOUT_DEFAULT
    path = "spec.sessionAffinityConfig.clientIP.timeoutSeconds"
    client_ip = _mapping(ctx, config.get("clientIP"), "spec.sessionAffinityConfig.clientIP")
    value = client_ip.get("timeoutSeconds")
    if value is None:
        return AFFINITY_TIMEOUT_DEFAULT
    if isinstance(value, bool) or not isinstance(value, int) or not (
            0 < value <= AFFINITY_TIMEOUT_MAX):
        ctx.err(path, f"invalid value {value!r}; must be an integer 1-{AFFINITY_TIMEOUT_MAX}")
        return AFFINITY_TIMEOUT_DEFAULT
    return value


def parse_endpoint_slice(doc: dict, ctx: _Ctx) -> EndpointSlice | None:
    namespace, name, labels, _ann = _meta(ctx, doc, namespaced=True)
    service_name = labels.get(SERVICE_NAME_LABEL)
    if not service_name:
        ctx.err(f"metadata.labels.{SERVICE_NAME_LABEL}", "required (the owning service)")
    address_type = doc.get("addressType", "IPv4")
    if address_type != "IPv4":
        ctx.err("addressType", f"unsupported {address_type!r}; allowed: IPv4")
    endpoints: list[Endpoint] = []
    for i, raw in enumerate(_list(ctx, doc.get("endpoints"), "endpoints")):
        path = f"endpoints[{i}]"
        raw = _mapping(ctx, raw, path)
        addrs = [a for j, v in enumerate(_list(ctx, raw.get("addresses"), f"{path}.addresses"))
                 if (a := _ipv4(ctx, v, f"{path}.addresses[{j}]"))]
        if not raw.get("addresses"):
            ctx.err(f"{path}.addresses", "at least one address is required")
        cond = _mapping(ctx, raw.get("conditions"), f"{path}.conditions")
        for key in ("ready", "serving", "terminating"):
            if key in cond and cond[key] is not None and not isinstance(cond[key], bool):
                ctx.err(f"{path}.conditions.{key}", f"must be a boolean, got {cond[key]!r}")
        ref = _mapping(ctx, raw.get("targetRef"), f"{path}.targetRef")
        target = None
        if ref.get("name"):
            target = f"{ref.get('namespace', namespace)}/{ref['name']}"
        ready = cond.get("ready")
        endpoints.append(Endpoint(
            tuple(addrs), ready=ready is not False,
            serving=cond.get("serving", ready) is not False,
            terminating=cond.get("terminating") is True,
            node_name=raw.get("nodeName"), target_pod=target))
    ports: list[EndpointPort] = []
    for i, raw in enumerate(_list(ctx, doc.get("ports"), "ports")):
        path = f"ports[{i}]"
        raw = _mapping(ctx, raw, path)
        port = _port(ctx, raw.get("port"), f"{path}.port")
        protocol = _protocol(ctx, raw.get("protocol"), f"{path}.protocol")
        if port is not None:
            ports.append(EndpointPort(str(raw.get("name", "") or ""), port, protocol))
    if ctx.problems:
        return None
    return EndpointSlice(namespace, name, str(service_name), tuple(endpoints), tuple(ports))


def parse_node(doc: dict, ctx: _Ctx) -> Node | None:
    _ns, name, labels, _ann = _meta(ctx, doc, namespaced=False)
    spec = _mapping(ctx, doc.get("spec"), "spec")
    pod_cidr = _cidr(ctx, spec.get("podCIDR"), "spec.podCIDR")
    status = _mapping(ctx, doc.get("status"), "status")
    internal = None
    for i, addr in enumerate(_list(ctx, status.get("addresses"), "status.addresses")):
        addr = _mapping(ctx, addr, f"status.addresses[{i}]")
        if addr.get("type") == "InternalIP":
            internal = _ipv4(ctx, addr.get("address"), f"status.addresses[{i}].address")
    if internal is None and not ctx.problems:
        ctx.err("status.addresses", "an InternalIP address is required")
    ready = True
    for i, cond in enumerate(_list(ctx, status.get("conditions"), "status.conditions")):
        cond = _mapping(ctx, cond, f"status.conditions[{i}]")
        if cond.get("type") == "Ready":
            ready = _enum(ctx, cond.get("status"), f"status.conditions[{i}].status",
                          ("True", "False", "Unknown"), "Unknown") == "True"
    if ctx.problems or pod_cidr is None or internal is None:
        return None
    return Node(name, internal, pod_cidr, labels, ready)


def parse_pod(doc: dict, ctx: _Ctx) -> Pod | None:
    namespace, name, labels, _ann = _meta(ctx, doc, namespaced=True)
    spec = _mapping(ctx, doc.get("spec"), "spec")
    node_name = spec.get("nodeName")
    if not isinstance(node_name, str) or not node_name:
        ctx.err("spec.nodeName", "required (the node the pod runs on)")
    host_network = spec.get("hostNetwork", False)
    if not isinstance(host_network, bool):
        ctx.err("spec.hostNetwork", f"must be a boolean, got {host_network!r}")
    ports: list[ContainerPort] = []
    for ci, container in enumerate(_list(ctx, spec.get("containers"), "spec.containers")):
        container = _mapping(ctx, container, f"spec.containers[{ci}]")
        for pi, raw in enumerate(_list(ctx, container.get("ports"),
                                       f"spec.containers[{ci}].ports")):
            path = f"spec.containers[{ci}].ports[{pi}]"
            raw = _mapping(ctx, raw, path)
            cport = _port(ctx, raw.get("containerPort"), f"{path}.containerPort")
            hport = raw.get("hostPort")
            if hport is not None:
                hport = _port(ctx, hport, f"{path}.hostPort")
            proto = _protocol(ctx, raw.get("protocol"), f"{path}.protocol")
            host_ip = raw.get("hostIP")
            if host_ip is not None:
                host_ip = _ipv4(ctx, host_ip, f"{path}.hostIP")
                if host_ip is not None and hport is None:
                    ctx.err(f"{path}.hostIP", "only with hostPort")
                if host_ip == "0.0.0.0":
                    host_ip = None      # every address the default binds
            if cport is not None:
                ports.append(ContainerPort(cport, proto, hport, str(raw.get("name", "") or ""),
                                           host_ip))
    status = _mapping(ctx, doc.get("status"), "status")
    pod_ip = status.get("podIP")
    if pod_ip is not None:
        pod_ip = _ipv4(ctx, pod_ip, "status.podIP")
    if ctx.problems:
        return None
    return Pod(namespace, name, str(node_name), pod_ip, labels, bool(host_network),
               tuple(ports))


def parse_clusterwide_policy(doc: dict, ctx: _Ctx) -> ClusterwideNetworkPolicy | None:
    from .policy.parse import parse_clusterwide_policy as parse  # it builds on this module

    return parse(doc, ctx)


def _api_version(ctx: _Ctx, doc: dict) -> None:
    if doc.get("apiVersion", EGRESS_API_VERSION) != EGRESS_API_VERSION:
        ctx.err("apiVersion", f"invalid value {doc.get('apiVersion')!r}; allowed: "
                f"{EGRESS_API_VERSION}")


def _ifname(ctx: _Ctx, value: Any, path: str) -> str | None:
    if not isinstance(value, str) or not _IFNAME.match(value):
        ctx.err(path, f"invalid interface name {value!r}; 1-15 letters, digits, '_.:-'")
        return None
    return value


def parse_egress_gateway(doc: dict, ctx: _Ctx) -> EgressGateway | None:
    _api_version(ctx, doc)
    _ns, name, _obj_labels, _ann = _meta(ctx, doc, namespaced=False)
    spec = _mapping(ctx, doc.get("spec"), "spec")
    if not isinstance(spec.get("nodeSelector"), dict):
        ctx.err("spec.nodeSelector", "required: a mapping of node label to value (exact "
                "match; {} selects every node)")
    selector = _labels(ctx, spec.get("nodeSelector"), "spec.nodeSelector")
    source = _mapping(ctx, spec.get("sourceIP"), "spec.sourceIP")
    mode = source.get("mode")
    if mode not in SOURCE_IP_MODES:
        ctx.err("spec.sourceIP.mode", f"invalid value {mode!r}; allowed: "
                f"{', '.join(SOURCE_IP_MODES)}")
    primary_path = "spec.sourceIP.primaryIPFromEgressGatewayNodeInterface"
    virtual_path = "spec.sourceIP.virtualIPAddress"
    primary = _mapping(ctx, source.get("primaryIPFromEgressGatewayNodeInterface"),
                       primary_path)
    virtual = _mapping(ctx, source.get("virtualIPAddress"), virtual_path)
    interface, vip, vip_ifaces = "", "", []
    if mode == SOURCE_IP_PRIMARY:
        if virtual:
            ctx.err(virtual_path, f"only with mode {SOURCE_IP_VIRTUAL}")
        interface = _ifname(ctx, primary.get("interfaceName"),
                            f"{primary_path}.interfaceName") or ""
    elif mode == SOURCE_IP_VIRTUAL:
        if primary:
            ctx.err(primary_path, f"only with mode {SOURCE_IP_PRIMARY}")
        vip = _ipv4(ctx, virtual.get("ip"), f"{virtual_path}.ip") or ""
        if vip and (ipaddress.IPv4Address(vip).is_unspecified
                    or ipaddress.IPv4Address(vip).is_loopback
                    or ipaddress.IPv4Address(vip).is_multicast):
            ctx.err(f"{virtual_path}.ip", f"{vip} cannot be announced; use a unicast address "
                    "of the network the gateway nodes are on")
        for i, iface in enumerate(_list(ctx, virtual.get("interfaces"),
                                        f"{virtual_path}.interfaces")):
            if (checked := _ifname(ctx, iface, f"{virtual_path}.interfaces[{i}]")):
                vip_ifaces.append(checked)
    if ctx.problems:
        return None
    return EgressGateway(name, selector, str(mode), interface, vip, tuple(vip_ifaces))


def _pod_selector(ctx: _Ctx, value: Any, path: str) -> PodSelector:
    raw = _mapping(ctx, value, path)
    for key in raw:
        if key not in ("matchLabels", "matchExpressions"):
            ctx.err(f"{path}.{key}", "unknown field; allowed: matchLabels, matchExpressions")
    labels = _labels(ctx, raw.get("matchLabels"), f"{path}.matchLabels")
    exprs = []
    for i, expr in enumerate(_list(ctx, raw.get("matchExpressions"),
                                   f"{path}.matchExpressions")):
        epath = f"{path}.matchExpressions[{i}]"
        expr = _mapping(ctx, expr, epath)
        key, op = expr.get("key"), expr.get("operator")
        if not isinstance(key, str) or not key:
            ctx.err(f"{epath}.key", "required: a label key")
        if op not in SELECTOR_OPERATORS:
            ctx.err(f"{epath}.operator", f"invalid value {op!r}; allowed: "
                    f"{', '.join(SELECTOR_OPERATORS)}")
        values = _list(ctx, expr.get("values"), f"{epath}.values")
        if op in ("In", "NotIn") and not values:
            ctx.err(f"{epath}.values", f"at least one value is required with {op}")
        if op in ("Exists", "DoesNotExist") and values:
            ctx.err(f"{epath}.values", f"must be empty with {op}")
        exprs.append(SelectorRequirement(str(key), str(op), tuple(str(v) for v in values)))
    return PodSelector(labels, tuple(exprs))


def _cidr_list(ctx: _Ctx, value: Any, path: str) -> list[str]:
    return [c for i, v in enumerate(_list(ctx, value, path))
            if (c := _cidr(ctx, v, f"{path}[{i}]"))]


def parse_egress_gateway_policy(doc: dict, ctx: _Ctx) -> EgressGatewayPolicy | None:
    _api_version(ctx, doc)
    _ns, name, _obj_labels, _ann = _meta(ctx, doc, namespaced=False)
    spec = _mapping(ctx, doc.get("spec"), "spec")
    gateway = spec.get("egressGatewayName")
    if not isinstance(gateway, str) or not _DNS_SUBDOMAIN.match(gateway):
        ctx.err("spec.egressGatewayName", f"required: the name of an EgressGateway, got "
                f"{gateway!r}")
    destinations = _cidr_list(ctx, spec.get("destinationCIDRs"), "spec.destinationCIDRs")
    if not spec.get("destinationCIDRs"):
        ctx.err("spec.destinationCIDRs", "at least one IPv4 CIDR is required (0.0.0.0/0: "
                "everywhere outside the cluster)")
    excluded = _cidr_list(ctx, spec.get("excludedCIDRs"), "spec.excludedCIDRs")
    raw_selectors = _list(ctx, spec.get("selectors"), "spec.selectors")
    if not raw_selectors:
        ctx.err("spec.selectors", "at least one selector is required")
    selectors = []
    for i, raw in enumerate(raw_selectors):
        raw = _mapping(ctx, raw, f"spec.selectors[{i}]")
        if "podSelector" not in raw:
            ctx.err(f"spec.selectors[{i}].podSelector", "required")
        selectors.append(_pod_selector(ctx, raw.get("podSelector"),
                                       f"spec.selectors[{i}].podSelector"))
    if ctx.problems:
        return None
    return EgressGatewayPolicy(name, str(gateway), tuple(destinations), tuple(excluded),
                               tuple(selectors))


PARSERS = {
    "Service": parse_service,
    "EndpointSlice": parse_endpoint_slice,
    "Node": parse_node,
    "Pod": parse_pod,
    "CiliumClusterwideNetworkPolicy": parse_clusterwide_policy,
    "EgressGateway": parse_egress_gateway,
    "EgressGatewayPolicy": parse_egress_gateway_policy,
}


def _label_of(doc: Any, index: int, source: str) -> str:
    if not isinstance(doc, dict):
        return f"{source} document {index}"
    kind = doc.get("kind", "<no kind>")
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    name = meta.get("name", "<no name>")
    ns = meta.get("namespace")
    if kind in ("Service", "EndpointSlice", "Pod"):
        ns = ns or "default"
    return f"{kind} {ns}/{name}" if ns else f"{kind} {name}"


def parse_documents(docs: list[Any], source: str = "<input>"
                    ) -> tuple[list[KubeObject], list[str]]:
    """Parse loaded documents: (valid objects, problems). Invalid objects are skipped."""
    objects: list[KubeObject] = []
    problems: list[str] = []
    for index, doc in enumerate(docs):
        if doc is None:
            continue
        ctx = _Ctx(_label_of(doc, index, source))
        if not isinstance(doc, dict):
            ctx.err("(document)", f"expected a mapping, got {type(doc).__name__}")
            problems.extend(ctx.problems)
            continue
        kind = doc.get("kind")
        if doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            sub_objects, sub_problems = parse_documents(doc["items"], source)
            objects.extend(sub_objects)
            problems.extend(sub_problems)
            continue
        parser = PARSERS.get(kind)
        if parser is None:
            ctx.err("kind", f"unsupported kind {kind!r}; supported: {', '.join(PARSERS)}")
            problems.extend(ctx.problems)
            continue
        obj = parser(doc, ctx)
        problems.extend(ctx.problems)
        if obj is not None:
            objects.append(obj)
    return objects, problems


# libyaml's loader parses several times faster than the pure-Python one.
_YAML_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_documents(text: str) -> list[Any]:
    """The documents of a manifest text. A file that is one JSON object (what the harness
    writes: JSON is YAML, and a JSON parser reads it ~30x faster than a YAML one) is read
    as JSON; anything else as (multi-document) YAML. Raises yaml.YAMLError."""
    if text.lstrip().startswith("{"):
        try:
            return [json.loads(text)]
        except ValueError:
            pass                     # YAML flow style, not JSON: the YAML parser decides
    return list(yaml.load_all(text, Loader=_YAML_LOADER))


def dump_document(doc: Any) -> str:
    """One object as manifest text (JSON, which every YAML reader reads too)."""
    return json.dumps(doc, separators=(",", ":")) + "\n"


def parse_yaml(text: str, source: str = "<input>") -> tuple[list[KubeObject], list[str]]:
    """Parse a (multi-document) YAML text: (valid objects, problems)."""
    try:
        docs = load_documents(text)
    except yaml.YAMLError as exc:
        return [], [f"{source}: not valid YAML: {exc}".replace("\n", " ")]
    return parse_documents(docs, source)
