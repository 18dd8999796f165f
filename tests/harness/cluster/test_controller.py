"""API-server logic: Service allocations and the endpoint controller (pure)."""

from __future__ import annotations

import pytest

from cni_cilium.manifests import parse_documents
from cni_harness.cluster.controller import (
    allocate_service,
    doc_key,
    endpoint_slices,
    manifest_filename,
    used_by,
)

pytestmark = pytest.mark.unit


def svc(name="web", stype="ClusterIP", selector=None, ports=None, **spec):
    doc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
           "spec": {"type": stype, "ports": ports or [{"name": "http", "port": 80,
                                                       "targetPort": 8080}], **spec}}
    if selector is not None:
        doc["spec"]["selector"] = selector
    return doc


def pod(name, ip, labels, node="node1", ns="default", ports=()):
    containers = [{"name": "main", "ports": list(ports)}]
    doc = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": ns, "labels": labels},
           "spec": {"nodeName": node, "containers": containers},
           "status": {"podIP": ip} if ip else {}}
    objs, problems = parse_documents([doc])
    assert not problems, problems
    return objs[0]


def parsed(doc):
    objs, problems = parse_documents([doc])
    assert not problems, problems
    return objs[0]


def test_cluster_ip_is_allocated_from_the_service_range_skipping_used_ones():
    out, problems = allocate_service(svc(), None, used_by([svc("a", clusterIP="10.96.0.2")]))
    assert not problems
    assert out["spec"]["clusterIP"] == "10.96.0.3"


def test_reapply_keeps_earlier_allocations():
    first, _ = allocate_service(svc(stype="NodePort"), None, used_by([]))
    again, problems = allocate_service(svc(stype="NodePort"), first, used_by([]))
    assert not problems
    assert again["spec"]["clusterIP"] == first["spec"]["clusterIP"]
    assert again["spec"]["ports"][0]["nodePort"] == first["spec"]["ports"][0]["nodePort"]


def test_node_ports_health_check_port_and_lb_ip_are_filled():
    other = svc("other", stype="NodePort", ports=[{"port": 1, "nodePort": 30000}],
                clusterIP="10.96.0.2")
    doc = svc("lb", stype="LoadBalancer", selector={"app": "web"},
              externalTrafficPolicy="Local",
              ports=[{"name": "tcp", "port": 80}, {"name": "udp", "port": 53,
                                                    "protocol": "UDP"}])
    out, problems = allocate_service(doc, None, used_by([other]))
    assert not problems
    assert [p["nodePort"] for p in out["spec"]["ports"]] == [30001, 30000]  # UDP 30000 is free
    assert out["spec"]["healthCheckNodePort"] == 30002
    assert out["status"]["loadBalancer"]["ingress"] == [{"ip": "10.97.0.1"}]
    assert isinstance(parsed(out).health_check_node_port, int)


def test_conflicts_are_refused_naming_object_and_field():
    taken = used_by([svc("a", stype="NodePort", clusterIP="10.96.0.5",
                         ports=[{"port": 80, "nodePort": 30080}])])
    _, problems = allocate_service(
        svc("b", stype="NodePort", clusterIP="10.96.0.5",
            ports=[{"port": 80, "nodePort": 30080}]), None, taken)
    assert "Service default/b: spec.clusterIP: 10.96.0.5 is already allocated" in problems[0]
    assert "Service default/b: spec.ports[0].nodePort: 30080/TCP is already allocated" \
        in problems[1]
    _, problems = allocate_service(svc("c", clusterIP="10.1.2.3"), None, used_by([]))
    assert problems == ["Service default/c: spec.clusterIP: 10.1.2.3 is outside the service "
                        "range 10.96.0.0/16"]


def test_malformed_specs_are_left_to_validation():
    out, problems = allocate_service({"kind": "Service", "metadata": {"name": "x"},
                                      "spec": "nonsense"}, None, used_by([]))
    assert problems == [] and out["spec"] == "nonsense"


def test_endpoint_slices_select_pods_by_labels_and_namespace_and_resolve_named_ports():
    service = parsed(allocate_service(
        svc(selector={"app": "web"}, ports=[{"name": "http", "port": 80,
                                             "targetPort": "http"}]), None, used_by([]))[0])
    pods = [pod("b", "10.100.2.7", {"app": "web"}, node="node2",
                ports=[{"name": "http", "containerPort": 8080}]),
            pod("a", "10.100.1.9", {"app": "web", "x": "y"},
                ports=[{"name": "http", "containerPort": 8080}]),
            pod("other-ns", "10.100.1.10", {"app": "web"}, ns="prod",
                ports=[{"name": "http", "containerPort": 8080}]),
            pod("other-app", "10.100.1.11", {"app": "db"}),
            pod("no-ip-yet", None, {"app": "web"})]
    slices = endpoint_slices([service], pods)
    assert len(slices) == 1
    eps = slices[0]["endpoints"]
    assert [e["addresses"] for e in eps] == [["10.100.1.9"], ["10.100.2.7"]]
    assert [e["nodeName"] for e in eps] == ["node1", "node2"]
    assert eps[0]["targetRef"] == {"kind": "Pod", "namespace": "default", "name": "a"}
    assert slices[0]["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    parsed_slice = parsed(slices[0])               # the agent can read what we write
    assert parsed_slice.service_name == "web"


def test_pods_serving_a_named_port_differently_get_separate_slices():
    service = parsed(allocate_service(
        svc(selector={"app": "web"}, ports=[{"name": "http", "port": 80,
                                             "targetPort": "http"}]), None, used_by([]))[0])
    pods = [pod("a", "10.100.1.2", {"app": "web"}, ports=[{"name": "http",
                                                            "containerPort": 8080}]),
            pod("b", "10.100.1.3", {"app": "web"}, ports=[{"name": "http",
                                                            "containerPort": 9090}])]
    slices = endpoint_slices([service], pods)
    assert sorted(s["ports"][0]["port"] for s in slices) == [8080, 9090]
    assert len({s["metadata"]["name"] for s in slices}) == 2


def test_a_service_without_matching_pods_gets_an_empty_slice_and_one_without_selector_none():
    selected = parsed(allocate_service(svc(selector={"app": "none"}), None, used_by([]))[0])
    manual = parsed(allocate_service(svc("manual"), None, used_by([]))[0])
    slices = endpoint_slices([selected, manual], [pod("a", "10.100.1.2", {"app": "web"})])
    assert len(slices) == 1
    assert slices[0]["endpoints"] == []
    assert slices[0]["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]


def test_slice_names_are_stable_when_pods_come_and_go():
    service = parsed(allocate_service(svc(selector={"app": "web"}), None, used_by([]))[0])
    one = endpoint_slices([service], [pod("a", "10.100.1.2", {"app": "web"})])
    two = endpoint_slices([service], [pod("a", "10.100.1.2", {"app": "web"}),
                                      pod("b", "10.100.1.3", {"app": "web"})])
    assert one[0]["metadata"]["name"] == two[0]["metadata"]["name"]
    assert len(two[0]["endpoints"]) == 2


def test_keys_and_file_names():
    assert doc_key(svc()) == ("Service", "default", "web")
    assert doc_key({"kind": "CiliumClusterwideNetworkPolicy", "metadata": {"name": "p"}}) == \
        ("CiliumClusterwideNetworkPolicy", "", "p")
    assert doc_key({"kind": "Service"}) is None
    assert manifest_filename(("Service", "prod", "web")) == "service-prod-web.yaml"
    assert manifest_filename(("EgressGateway", "", "gw")) == "egressgateway-gw.yaml"


class Capture:
    """A distributor that keeps what each sync handed to the nodes."""

    def __init__(self) -> None:
        self.files: list[dict[str, str]] = []

    def sync(self, files, nodes=None):
        self.files.append(files)
        return {}


def test_apply_hands_nodes_what_a_fresh_read_of_the_store_derives(tmp_path, monkeypatch):
    """apply reuses the objects it parsed for the endpoint controller; the files must be
    exactly those derived from the store read back from disk."""
    from cni_harness.cluster.apiserver import ApiServer

    monkeypatch.setenv("CNI_HARNESS_STATE_DIR", str(tmp_path / "state"))
    nodes = Capture()
    api = ApiServer(str(tmp_path / "state" / "c"), "c", nodes)
    api.put_pod({"apiVersion": "v1", "kind": "Pod",
                 "metadata": {"name": "web-1", "namespace": "default", "labels": {"app": "web"}},
                 "spec": {"nodeName": "node1", "containers": [
                     {"name": "main", "ports": [{"name": "http", "containerPort": 8080}]}]},
                 "status": {"podIP": "10.100.1.5"}}, sync=False)
    api.apply([svc("old", selector={"app": "web"})])
    report = api.apply([svc(f"web-{i}", stype="NodePort", selector={"app": "web"},
                            ports=[{"name": "http", "port": 80, "targetPort": "http"}])
                        for i in range(3)])
    assert len(report.applied) == 3 and not report.problems
    sent = nodes.files[-1]
    assert sent == api.desired_files()
    slices = [text for name, text in sent.items()
              if name.startswith("endpointslice-default-web-2")]
    assert len(slices) == 1 and "10.100.1.5" in slices[0]     # the named port resolved
