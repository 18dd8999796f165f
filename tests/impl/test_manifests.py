"""Kubernetes-shaped objects: valid ones parse, invalid ones are named field by field."""

from __future__ import annotations

import pytest

from cni_cilium.manifests import EndpointSlice, Node, Pod, Service, parse_yaml

pytestmark = pytest.mark.unit

GOOD = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default,
           annotations: {service.cilium.io/lb-algorithm: maglev}}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  selector: {app: web}
  externalTrafficPolicy: Local
  healthCheckNodePort: 31000
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30080}
  - {name: dns, port: 53, protocol: UDP, nodePort: 30053}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints:
- addresses: [10.100.1.5]
  conditions: {ready: true}
  nodeName: node1
  targetRef: {kind: Pod, name: web-a}
- addresses: [10.100.2.7]
  conditions: {ready: false, terminating: true}
ports: [{name: http, port: 8080, protocol: TCP}]
---
apiVersion: v1
kind: Node
metadata: {name: node1, labels: {node-role.kubernetes.io/control-plane: ""}}
spec: {podCIDR: 10.100.1.0/24}
status: {addresses: [{type: InternalIP, address: 10.99.0.11}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-a, labels: {app: web}}
spec:
  nodeName: node1
  containers: [{name: c, ports: [{containerPort: 8080, hostPort: 8081}]}]
status: {podIP: 10.100.1.5}
"""


def test_valid_objects_parse_into_typed_objects():
    objects, problems = parse_yaml(GOOD)
    assert problems == []
    svc, eps, node, pod = objects
    assert isinstance(svc, Service) and svc.key == ("Service", "default", "web")
    assert svc.ports[0].target_port == 8080 and svc.ports[1].protocol == "UDP"
    assert svc.ports[1].target_port == 53
    assert svc.external_traffic_policy == "Local" and svc.lb_algorithm == "maglev"
    assert isinstance(eps, EndpointSlice) and eps.service_name == "web"
    assert eps.endpoints[0].target_pod == "default/web-a"
    assert eps.endpoints[1].ready is False and eps.endpoints[1].terminating is True
    assert isinstance(node, Node) and node.internal_ip == "10.99.0.11"
    assert isinstance(pod, Pod) and pod.ports[0].host_port == 8081


BAD = """
kind: Service
metadata: {name: bad}
spec:
  clusterIP: 10.96.0.11
  selector: {"app": "x y"}
  ports: [{port: 70000, protocol: SCTP}]
---
kind: Service
metadata: {name: ok}
spec: {clusterIP: 10.96.0.12, ports: [{port: 53, protocol: UDP}]}
---
kind: Frobnicator
metadata: {name: f}
"""


def test_invalid_objects_are_named_and_valid_ones_kept():
    objects, problems = parse_yaml(BAD)
    assert [o.name for o in objects] == ["ok"]
    text = "\n".join(problems)
    assert "Service default/bad: spec.ports[0].port: invalid port 70000" in text
    assert "Service default/bad: spec.ports[0].protocol: unsupported protocol 'SCTP'" in text
    assert "Service default/bad: spec.selector.app: invalid label value 'x y'" in text
    assert "Frobnicator f: kind: unsupported kind 'Frobnicator'" in text


@pytest.mark.parametrize(("spec", "needle"), [
    ("{type: NodePort, clusterIP: 10.96.0.1, ports: [{port: 80}]}", "nodePort: required"),
    ("{clusterIP: 10.96.0.1, ports: [{port: 80, nodePort: 30001}]}", "not allowed"),
    ("{type: NodePort, clusterIP: 10.96.0.1, externalTrafficPolicy: Local,"
     " ports: [{port: 80, nodePort: 30001}]}", "healthCheckNodePort: required"),
    ("{clusterIP: 1.2.3, ports: [{port: 80}]}", "invalid IPv4 address"),
    ("{clusterIP: 10.96.0.1, ports: [{port: 80}, {port: 81}]}", "name: required"),
    ("{clusterIP: 10.96.0.1, ports: []}", "at least one port"),
    ("{clusterIP: 10.96.0.1, selector: [], ports: [{port: 80}]}", "non-empty mapping"),
])
def test_service_field_errors(spec, needle):
    objects, problems = parse_yaml(f"kind: Service\nmetadata: {{name: s}}\nspec: {spec}\n")
    assert objects == []
    assert any(needle in p for p in problems), problems


def test_yaml_error_is_reported():
    objects, problems = parse_yaml("kind: [")
    assert objects == [] and "not valid YAML" in problems[0]


def affinity_service(extra: str) -> str:
    return ("apiVersion: v1\nkind: Service\nmetadata: {name: aff}\nspec:\n"
            "  clusterIP: 10.96.0.12\n  ports: [{port: 80}]\n" + extra)


def test_session_affinity_timeout_defaults_to_three_hours_and_is_read():
    (default,), problems = parse_yaml(affinity_service("  sessionAffinity: ClientIP\n"))
    assert problems == [] and default.session_affinity == "ClientIP"
    assert default.affinity_timeout == 10800
    (set_,), problems = parse_yaml(affinity_service(
        "  sessionAffinity: ClientIP\n"
        "  sessionAffinityConfig: {clientIP: {timeoutSeconds: 30}}\n"))
    assert problems == [] and set_.affinity_timeout == 30


@pytest.mark.parametrize("extra,message", [
    ("  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}\n",
     "spec.sessionAffinityConfig.clientIP.timeoutSeconds: invalid value 0; must be an "
     "integer 1-86400"),
    ("  sessionAffinity: ClientIP\n"
     "  sessionAffinityConfig: {clientIP: {timeoutSeconds: '60'}}\n",
     "spec.sessionAffinityConfig.clientIP.timeoutSeconds: invalid value '60'"),
    ("  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n",
     "spec.sessionAffinityConfig: only with sessionAffinity: ClientIP"),
])
def test_bad_session_affinity_config_is_refused_by_field(extra, message):
    objects, problems = parse_yaml(affinity_service(extra))
    assert objects == []
    assert len(problems) == 1 and problems[0].startswith("Service default/aff: " + message)
