"""HostPort: which node addresses a host port binds and its frontend in lb terms (pure)."""

from __future__ import annotations

import pytest

from cni_cilium.bpfabi import (
    FE_EXTERNAL,
    FE_LOCAL_ONLY,
    FE_NODEPORT,
    Backend,
    Frontend,
    FrontendValue,
    slot_key,
)
from cni_cilium.config import settings_from_mapping
from cni_cilium.hostport import default_addresses, is_rfc1918
from cni_cilium.manifests import ContainerPort, Node, Pod, Service, ServicePort
from cni_cilium.translate import DesiredState, translate

pytestmark = pytest.mark.unit

NODE = Node("node2", "10.99.0.12", "10.100.2.0/24")
PUBLIC_NODE = Node("node2", "198.51.100.12", "10.100.2.0/24")
OTHER = Node("node1", "10.99.0.11", "10.100.1.0/24")


def pod(ports, name="hp", node="node2", ip="10.100.2.7"):
    return Pod("default", name, node, ip, {"app": "hp"}, ports=tuple(ports))


def run(*objects, addresses=(), settings=None, node="node2", nodes=(OTHER, NODE)):
    return translate(DesiredState(settings or settings_from_mapping({}), node,
                                  [*nodes, *objects], node_addresses=tuple(addresses)))


def test_rfc1918_is_not_pythons_is_private():
    assert is_rfc1918("10.99.0.12") and is_rfc1918("172.31.0.1") and is_rfc1918("192.168.1.1")
    assert not is_rfc1918("198.51.100.12") and not is_rfc1918("203.0.113.5")


@pytest.mark.parametrize("node,found,bind_all,expected", [
    (NODE, [], False, ("10.99.0.12",)),
    (NODE, ["198.51.100.12", "10.99.0.12"], False, ("10.99.0.12",)),
    (PUBLIC_NODE, ["198.51.100.12", "192.168.5.5", "10.1.1.1"], False, ("10.1.1.1",)),
    (PUBLIC_NODE, ["198.51.100.12"], False, ("198.51.100.12",)),
    (NODE, ["198.51.100.12", "10.99.0.12"], True, ("10.99.0.12", "198.51.100.12")),
])
def test_default_addresses_prefer_one_private_address_unless_all_are_asked(
        node, found, bind_all, expected):
    assert default_addresses(node, found, bind_all) == expected


def test_a_host_port_is_a_local_only_node_frontend_with_the_pod_as_its_slot():
    tr = run(pod([ContainerPort(8080, "TCP", 8081, "http"), ContainerPort(53, "UDP", 5353)]),
             addresses=["10.99.0.12", "198.51.100.12"])
    fe = Frontend("10.99.0.12", 8081, "TCP")
    assert FrontendValue.decode(tr.maps["lb_frontends"][fe.encode()]) == FrontendValue(
        1, FE_EXTERNAL | FE_NODEPORT | FE_LOCAL_ONLY)
    assert Backend.decode(tr.maps["lb_slots"][slot_key(fe, 1)]) == Backend(
        "10.100.2.7", 8080, True)
    assert Frontend("10.99.0.12", 5353, "UDP").encode() in tr.maps["lb_frontends"]
    assert Frontend("198.51.100.12", 8081, "TCP").encode() not in tr.maps["lb_frontends"]
    views = [f for f in tr.frontends if f.type == "HostPort"]
    assert {(v.service, str(v.frontend)) for v in views} == {
        ("Pod default/hp", "10.99.0.12:8081/TCP"), ("Pod default/hp", "10.99.0.12:5353/UDP")}
    assert tr.host_ports == 2 and tr.services == 0
    assert tr.host_port_addresses == ("10.99.0.12",)


def test_all_addresses_option_and_host_ip():
    all_on = settings_from_mapping({"hostPortAllAddresses": True})
    tr = run(pod([ContainerPort(8080, "TCP", 8081)]), addresses=["198.51.100.12"],
             settings=all_on)
    assert {str(f.frontend) for f in tr.frontends} == {"10.99.0.12:8081/TCP",
                                                       "198.51.100.12:8081/TCP"}
    pinned = run(pod([ContainerPort(8080, "TCP", 8081, host_ip="198.51.100.12")]),
                 addresses=["198.51.100.12"], settings=all_on)
    assert [str(f.frontend) for f in pinned.frontends] == ["198.51.100.12:8081/TCP"]
    elsewhere = run(pod([ContainerPort(8080, "TCP", 8081, host_ip="10.99.0.11")]))
    assert elsewhere.frontends == []
    assert elsewhere.problems == ["Pod default/hp: ports[0].hostIP: 10.99.0.11 is not an "
                                  "address of Node node2 (10.99.0.12); not bound"]


def test_only_the_pods_own_node_programs_it():
    assert run(pod([ContainerPort(8080, "TCP", 8081)]), node="node1").frontends == []


def test_a_node_port_keeps_its_frontend_over_a_host_port():
    svc = Service("default", "web", "NodePort", "10.96.0.10",
                  (ServicePort("http", "TCP", 80, 8080, 30080),), None)
    tr = run(svc, pod([ContainerPort(8080, "TCP", 30080)]))
    fe = Frontend("10.99.0.12", 30080, "TCP")
    owner = next(f.service for f in tr.frontends if f.frontend == fe)
    assert owner == "default/web"
    assert tr.problems == ["Pod default/hp: ports[0].hostPort: frontend 10.99.0.12:30080/TCP "
                           "is already used by Service default/web; not programmed"]
