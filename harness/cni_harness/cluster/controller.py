"""The harness's API-server logic, pure: allocations for Services and the endpoint controller.

- `allocate_service`: fills what Kubernetes fills for a Service - a ClusterIP from
  10.96.0.0/16, node ports and the health-check node port from 30000-32767, and (as a load
  balancer controller would) an ingress IP from the LB pool 10.97.0.0/24 - keeping earlier
  allocations when an object is applied again and refusing conflicts, naming the field.
- `endpoint_slices`: EndpointSlices for every Service with a selector, from the Pods whose
  labels match (named target ports resolved against the pods' container ports).
- `manifest_filename`: one file per object on every node.

No I/O here: `apiserver.py` stores objects and hands the files to the nodes.
"""

from __future__ import annotations

import copy
import hashlib
import ipaddress
from collections import Counter
from typing import Any, Iterable

from cni_cilium.manifests import Pod, Service

from ..providers.local.addressing import LB_POOL, NODE_PORT_RANGE, SERVICE_CIDR

MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
MANAGED_BY = "cni-harness"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
# Kinds that `apply` does not take, and where they come from instead.
NOT_APPLIED = {
    "Node": "Node objects come from the inventory (the configure role writes 00-nodes.yaml)",
    "Pod": "Pod objects come from `cni-harness pod run`",
}
CLUSTER_SCOPED = ("Node", "CiliumClusterwideNetworkPolicy", "EgressGateway",
                  "EgressGatewayPolicy")
RESERVED_CLUSTER_IPS = 1     # 10.96.0.1 is the kubernetes API service's, by convention

Key = tuple  # (kind, namespace, name)


def doc_key(doc: Any) -> Key | None:
    """(kind, namespace, name) of a raw document, or None when it has no kind/name."""
    if not isinstance(doc, dict) or not isinstance(doc.get("metadata"), dict):
        return None
    kind, name = doc.get("kind"), doc["metadata"].get("name")
    if not isinstance(kind, str) or not isinstance(name, str):
        return None
    ns = "" if kind in CLUSTER_SCOPED else str(doc["metadata"].get("namespace") or "default")
    return (kind, ns, name)


def describe(key: Key) -> str:
    kind, ns, name = key
    return f"{kind} {ns}/{name}" if ns else f"{kind} {name}"


def manifest_filename(key: Key) -> str:
    """`<kind>-<namespace>-<name>.yaml`, or `<kind>-<name>.yaml` for cluster-scoped kinds."""
    kind, ns, name = key
    return f"{kind.lower()}-{ns}-{name}.yaml" if ns else f"{kind.lower()}-{name}.yaml"


class Used:
    """Addresses and ports other Services hold, counted (a conflicting store may hold one
    twice), with the next free ClusterIP and LB address found from a cursor: applying N
    services costs O(N), not the O(N^2) of scanning the range from its start each time."""

    def __init__(self) -> None:
        self.cluster_ips: Counter[str] = Counter()
        self.node_ports: Counter[tuple[int, str]] = Counter()
        self.lb_ips: Counter[str] = Counter()
        self._cursor = {"cluster_ips": 0, "lb_ips": 0}

    def _fields(self, doc: dict) -> dict[str, list]:
        spec = doc.get("spec") if isinstance(doc.get("spec"), dict) else {}
        out: dict[str, list] = {"cluster_ips": [], "node_ports": [], "lb_ips": []}
        if spec.get("clusterIP"):
            out["cluster_ips"].append(str(spec["clusterIP"]))
        for port in spec.get("ports") or []:
            if isinstance(port, dict) and isinstance(port.get("nodePort"), int):
                out["node_ports"].append((port["nodePort"], port.get("protocol", "TCP")))
        if isinstance(spec.get("healthCheckNodePort"), int):
            out["node_ports"].append((spec["healthCheckNodePort"], "TCP"))
        status = doc.get("status") if isinstance(doc.get("status"), dict) else {}
        lb = status.get("loadBalancer") if isinstance(status.get("loadBalancer"), dict) else {}
        for ing in lb.get("ingress") or []:
            if isinstance(ing, dict) and ing.get("ip"):
                out["lb_ips"].append(str(ing["ip"]))
        return out

    def add(self, doc: dict) -> None:
        """Count what a Service holds."""
        for name, values in self._fields(doc).items():
            getattr(self, name).update(values)

    def remove(self, doc: dict) -> None:
        """Forget what a Service held (it is being replaced); freed addresses below a
        cursor move the cursor back, so the lowest free address is still found first."""
        for name, values in self._fields(doc).items():
            counter = getattr(self, name)
            for value in values:
                counter[value] -= 1
                if counter[value] <= 0:
                    del counter[value]
                    if name in self._cursor:
                        self._cursor[name] = 0

    def first_free(self, name: str, cidr: str, skip: int = 0) -> str | None:
        """The lowest address of `cidr` (after `skip` hosts) that no Service holds."""
        taken = getattr(self, name)
        net = ipaddress.IPv4Network(cidr)
        first = int(net.network_address) + 1 + skip
        hosts = net.num_addresses - 2 - skip
        for offset in range(self._cursor[name], hosts):
            addr = str(ipaddress.IPv4Address(first + offset))
            if addr not in taken:
                self._cursor[name] = offset
                return addr
        return None


def used_by(services: Iterable[dict]) -> Used:
    used = Used()
    for doc in services:
        used.add(doc)
    return used


def _first_free(candidates: Iterable[Any], taken: Any) -> Any:
    for item in candidates:
        if item not in taken:
            return item
    return None


def _port_match(old: dict, new: dict) -> bool:
    return (old.get("port"), old.get("protocol", "TCP")) == \
        (new.get("port"), new.get("protocol", "TCP"))


def allocate_service(doc: dict, previous: dict | None, used: Used) -> tuple[dict, list[str]]:
    """A copy of a Service with its allocations filled; problems name object and field.

    `previous` is the stored version (its allocations are kept when the new one leaves
    them out); `used` holds what the *other* Services have.
    """
    out = copy.deepcopy(doc)
    spec = out.get("spec")
    label = describe(doc_key(doc) or ("Service", "?", "?"))
    if not isinstance(spec, dict):
        return out, []
    problems: list[str] = []
    prev_spec = (previous or {}).get("spec") or {}
    stype = spec.get("type", "ClusterIP")

    ip = spec.get("clusterIP")
    if ip in (None, ""):
        ip = prev_spec.get("clusterIP") or used.first_free(
            "cluster_ips", SERVICE_CIDR, RESERVED_CLUSTER_IPS)
        if ip is None:
            problems.append(f"{label}: spec.clusterIP: the service range {SERVICE_CIDR} is full")
        spec["clusterIP"] = ip
    elif ip != "None":
        try:
            inside = ipaddress.IPv4Address(ip) in ipaddress.IPv4Network(SERVICE_CIDR)
        except ValueError:
            inside = True               # manifests reports the malformed address
        if not inside:
            problems.append(f"{label}: spec.clusterIP: {ip} is outside the service range "
                            f"{SERVICE_CIDR}")
        elif ip in used.cluster_ips:
            problems.append(f"{label}: spec.clusterIP: {ip} is already allocated to another "
                            "service")

    ports = spec.get("ports") if isinstance(spec.get("ports"), list) else []
    wants_node_ports = stype in ("NodePort", "LoadBalancer")
    # A copy only where ports are taken: with 10,000 services it is most of the cost.
    taken = set(used.node_ports) if wants_node_ports else set()
    for i, port in enumerate(ports):
        if not isinstance(port, dict) or not wants_node_ports:
            continue
        proto = port.get("protocol", "TCP")
        node_port = port.get("nodePort")
        if node_port is None:
            old = next((p for p in prev_spec.get("ports") or []
                        if isinstance(p, dict) and _port_match(p, port)), {})
            node_port = old.get("nodePort")
            if node_port is None or (node_port, proto) in taken:
                node_port = _first_free(range(NODE_PORT_RANGE[0], NODE_PORT_RANGE[1] + 1),
                                        {p for p, pr in taken if pr == proto})
            if node_port is None:
                problems.append(f"{label}: spec.ports[{i}].nodePort: no free node port")
                continue
            port["nodePort"] = node_port
        elif (node_port, proto) in taken:
            problems.append(f"{label}: spec.ports[{i}].nodePort: {node_port}/{proto} is "
                            "already allocated")
        taken.add((node_port, proto))

    if wants_node_ports and spec.get("externalTrafficPolicy") == "Local":
        hc = spec.get("healthCheckNodePort")
        if hc is None:
            hc = prev_spec.get("healthCheckNodePort")
            if hc is None or (hc, "TCP") in taken:
                hc = _first_free(range(NODE_PORT_RANGE[0], NODE_PORT_RANGE[1] + 1),
                                 {p for p, pr in taken if pr == "TCP"})
            spec["healthCheckNodePort"] = hc
        elif (hc, "TCP") in taken:
            problems.append(f"{label}: spec.healthCheckNodePort: {hc} is already allocated")

    if stype == "LoadBalancer":
        status = out.setdefault("status", {}) if isinstance(out.get("status", {}), dict) else {}
        lb = status.setdefault("loadBalancer", {}) if isinstance(
            status.get("loadBalancer", {}), dict) else {}
        if not lb.get("ingress") and not spec.get("loadBalancerIP"):
            prev_ing = (((previous or {}).get("status") or {}).get("loadBalancer") or {}
                        ).get("ingress")
            lb_ip = prev_ing[0].get("ip") if prev_ing else used.first_free("lb_ips", LB_POOL)
            if lb_ip is None:
                problems.append(f"{label}: status.loadBalancer.ingress: the pool {LB_POOL} "
                                "is full")
            else:
                lb["ingress"] = [{"ip": lb_ip}]
    return out, problems


# ---------------------------------------------------------------- endpoint controller

def _resolve(target: int | str, protocol: str, pod: Pod) -> int | None:
    if isinstance(target, int):
        return target
    for cport in pod.ports:
        if cport.name == target and cport.protocol == protocol:
            return cport.container_port
    return None


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def endpoint_slices(services: Iterable[Service], pods: Iterable[Pod]) -> list[dict]:
    """EndpointSlice documents for every Service with a selector.

    Pods with the same resolved port set share a slice named `<service>-<hash of ports>`;
    a Service no pod matches gets one empty slice, so nodes learn it has no backends.
    """
    pods = [p for p in pods if p.pod_ip]
    slices: list[dict] = []
    for svc in sorted(services, key=lambda s: (s.namespace, s.name)):
        if not svc.selector:
            continue
        groups: dict[tuple, list[Pod]] = {}
        for pod in pods:
            if pod.namespace != svc.namespace or not _matches(svc.selector, pod.labels):
                continue
            ports = tuple((sp.name, port, sp.protocol) for sp in svc.ports
                          if (port := _resolve(sp.target_port, sp.protocol, pod)) is not None)
            groups.setdefault(ports, []).append(pod)
        if not groups:
            groups[tuple((sp.name, sp.target_port, sp.protocol) for sp in svc.ports
                         if isinstance(sp.target_port, int))] = []
        for ports, members in sorted(groups.items()):
            digest = hashlib.sha256(repr(ports).encode()).hexdigest()[:8]
            endpoints = [{
                "addresses": [pod.pod_ip],
                "conditions": {"ready": True, "serving": True, "terminating": False},
                "nodeName": pod.node_name,
                "targetRef": {"kind": "Pod", "namespace": pod.namespace, "name": pod.name},
            } for pod in sorted(members, key=lambda p: ipaddress.IPv4Address(p.pod_ip))]
            slices.append({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {"name": f"{svc.name}-{digest}", "namespace": svc.namespace,
                             "labels": {SERVICE_NAME_LABEL: svc.name,
                                        MANAGED_BY_LABEL: MANAGED_BY}},
                "addressType": "IPv4",
                "endpoints": endpoints,
                "ports": [{"name": name, "port": port, "protocol": proto}
                          for name, port, proto in ports],
            })
    return slices
