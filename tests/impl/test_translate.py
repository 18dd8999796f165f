"""Desired state -> exact map entries, routes, health checks; diffs between map states."""

from __future__ import annotations

import itertools
import random

import pytest

from cni_cilium import maglev
from cni_cilium.bpfabi import (
    FE_EXTERNAL,
    FE_LOCAL_ONLY,
    FE_NODEPORT,
    FE_SOURCE_RANGES,
    LB_ALGORITHMS,
    LB_MODES,
    Backend,
    Frontend,
    FrontendValue,
    NodeConfig,
    TunnelConfig,
    TunnelEndpoint,
    index_key,
    lpm_key,
    slot_key,
    src_range_key,
)
from cni_cilium.config import settings_from_mapping
from cni_cilium.manifests import (
    Endpoint,
    EndpointPort,
    EndpointSlice,
    Node,
    Service,
    ServicePort,
)
from cni_cilium.translate import (
    DesiredState,
    HealthCheck,
    MapOp,
    apply_ops,
    diff_maps,
    diff_routes,
    owners,
    translate,
)

pytestmark = pytest.mark.unit

SNAT = settings_from_mapping({"bpfLBMode": "SNAT"})
NODES = [Node("node1", "10.99.0.11", "10.100.1.0/24"), Node("node2", "10.99.0.12",
                                                             "10.100.2.0/24")]


def svc(name="web", type="ClusterIP", ip="10.96.0.10", ports=None, etp="Cluster", hc=None,
        lb_ips=(), ext_ips=(), annotations=None, ns="default"):
    ports = ports or [ServicePort("http", "TCP", 80, 8080,
                                  30080 if type != "ClusterIP" else None)]
    return Service(ns, name, type, ip, tuple(ports), None, etp, hc, "None", tuple(lb_ips),
                   tuple(ext_ips), (), annotations or {})


def ep(addr, node=None, ready=True, serving=None, terminating=False):
    return Endpoint((addr,), ready=ready, serving=ready if serving is None else serving,
                    terminating=terminating, node_name=node)


def eps(service="web", endpoints=(), ports=(("http", 8080, "TCP"),), name=None, ns="default"):
    return EndpointSlice(ns, name or f"{service}-1", service, tuple(endpoints),
                         tuple(EndpointPort(n, p, proto) for n, p, proto in ports))


def run(*objects, settings=SNAT, node="node1", previous=None):
    return translate(DesiredState(settings, node, [*NODES, *objects],
                                  previous_owners=previous or {}))


def frontend_value(tr, fe):
    raw = tr.maps["lb_frontends"].get(fe.encode())
    return FrontendValue.decode(raw) if raw is not None else None


def slots(tr, fe):
    value = frontend_value(tr, fe)
    return [Backend.decode(tr.maps["lb_slots"][slot_key(fe, i)])
            for i in range(1, value.count + 1)]


# ------------------------------------------------------------------ frontends and backends

def test_clusterip_service_programs_one_frontend_with_every_ready_backend_in_order():
    tr = run(svc(), eps(endpoints=[ep("10.100.2.7", "node2"), ep("10.100.1.5", "node1")]))
    fe = Frontend("10.96.0.10", 80, "TCP")
    assert tr.problems == []
    assert tr.maps["lb_frontends"] == {
        fe.encode(): FrontendValue(2, 0, LB_ALGORITHMS["random"], LB_MODES["SNAT"]).encode()}
    assert tr.maps["lb_slots"] == {
        slot_key(fe, 1): Backend("10.100.1.5", 8080, local=True).encode(),
        slot_key(fe, 2): Backend("10.100.2.7", 8080, local=False).encode()}
    [view] = tr.frontends
    assert (view.type, view.lb_mode, view.traffic_policy) == ("ClusterIP", "-", "-")


def test_nodeport_adds_a_frontend_on_this_nodes_internal_ip():
    tr = run(svc(type="NodePort"), eps(endpoints=[ep("10.100.2.7", "node2")]))
    np = Frontend("10.99.0.11", 30080, "TCP")
    assert frontend_value(tr, np) == FrontendValue(1, FE_EXTERNAL | FE_NODEPORT)
    assert slots(tr, np) == [Backend("10.100.2.7", 8080, False)]
    on_node2 = run(svc(type="NodePort"), eps(endpoints=[ep("10.100.2.7", "node2")]),
                   node="node2")
    assert slots(on_node2, Frontend("10.99.0.12", 30080, "TCP")) == [
        Backend("10.100.2.7", 8080, True)]


def test_loadbalancer_and_external_ips_are_external_frontends_on_the_service_port():
    tr = run(svc(type="LoadBalancer", lb_ips=["10.97.0.5"], ext_ips=["192.0.2.9"]),
             eps(endpoints=[ep("10.100.1.5", "node1")]))
    types = {(v.type, str(v.frontend)) for v in tr.frontends}
    assert types == {("ClusterIP", "10.96.0.10:80/TCP"), ("NodePort", "10.99.0.11:30080/TCP"),
                     ("LoadBalancer", "10.97.0.5:80/TCP"), ("ExternalIP", "192.0.2.9:80/TCP")}
    assert frontend_value(tr, Frontend("10.97.0.5", 80, "TCP")).flags == FE_EXTERNAL
    assert frontend_value(tr, Frontend("192.0.2.9", 80, "TCP")).flags == FE_EXTERNAL


def test_tcp_and_udp_ports_are_separate_frontends_with_their_own_backend_ports():
    ports = [ServicePort("http", "TCP", 80, 8080, None), ServicePort("dns", "UDP", 53, 5353)]
    tr = run(svc(ports=ports), eps(endpoints=[ep("10.100.1.5", "node1")],
                                   ports=[("http", 8080, "TCP"), ("dns", 5353, "UDP")]))
    assert slots(tr, Frontend("10.96.0.10", 53, "UDP")) == [Backend("10.100.1.5", 5353, True)]
    assert slots(tr, Frontend("10.96.0.10", 80, "TCP")) == [Backend("10.100.1.5", 8080, True)]


def test_backend_ports_come_from_the_slice_port_with_the_same_name_and_protocol():
    ports = [ServicePort("a", "TCP", 80, "web"), ServicePort("b", "TCP", 81, 9000)]
    tr = run(svc(ports=ports), eps(endpoints=[ep("10.100.1.5", "node1")],
                                   ports=[("b", 9001, "TCP"), ("a", 7000, "TCP"),
                                          ("a", 7001, "UDP")]))
    assert slots(tr, Frontend("10.96.0.10", 80, "TCP")) == [Backend("10.100.1.5", 7000, True)]
    assert slots(tr, Frontend("10.96.0.10", 81, "TCP")) == [Backend("10.100.1.5", 9001, True)]


def test_slices_without_ports_use_a_numeric_target_port_and_skip_a_named_one():
    numeric = run(svc(), eps(endpoints=[ep("10.100.1.5")], ports=()))
    assert slots(numeric, Frontend("10.96.0.10", 80, "TCP")) == [
        Backend("10.100.1.5", 8080, True)]
    named = run(svc(ports=[ServicePort("http", "TCP", 80, "web")]),
                eps(endpoints=[ep("10.100.1.5")], ports=()))
    assert frontend_value(named, Frontend("10.96.0.10", 80, "TCP")).count == 0


def test_endpoints_of_several_slices_merge_without_duplicates():
    tr = run(svc(), eps(endpoints=[ep("10.100.1.5", "node1"), ep("10.100.2.7", "node2")]),
             eps(name="web-2", endpoints=[ep("10.100.2.7", "node2"), ep("10.100.1.6", "node1")]),
             eps(service="other", endpoints=[ep("10.100.1.99", "node1")]))
    assert [b.addr for b in slots(tr, Frontend("10.96.0.10", 80, "TCP"))] == [
        "10.100.1.5", "10.100.1.6", "10.100.2.7"]


def test_slices_of_a_same_named_service_in_another_namespace_are_ignored():
    tr = run(svc(), eps(endpoints=[ep("10.100.1.5")], ns="other"))
    assert frontend_value(tr, Frontend("10.96.0.10", 80, "TCP")).count == 0


def test_locality_follows_node_name_else_the_nodes_pod_cidr():
    tr = run(svc(), eps(endpoints=[ep("10.100.2.7", "node1"), ep("10.100.1.5", "node2"),
                                   ep("10.100.1.6"), ep("10.100.3.3")]))
    local = {b.addr: b.local for b in slots(tr, Frontend("10.96.0.10", 80, "TCP"))}
    assert local == {"10.100.2.7": True, "10.100.1.5": False, "10.100.1.6": True,
                     "10.100.3.3": False}


def test_only_ready_endpoints_get_new_connections_and_states_are_reported():
    tr = run(svc(), eps(endpoints=[ep("10.100.1.5"), ep("10.100.1.6", ready=False,
                                                        serving=True, terminating=True),
                                   ep("10.100.1.7", ready=False)]))
    assert [b.addr for b in slots(tr, Frontend("10.96.0.10", 80, "TCP"))] == ["10.100.1.5"]
    [view] = tr.frontends
    assert [(b.addr, b.state) for b in view.backends] == [
        ("10.100.1.5", "active"), ("10.100.1.6", "terminating"), ("10.100.1.7", "not-ready")]


def test_serving_terminating_endpoints_are_used_when_no_endpoint_is_ready():
    tr = run(svc(), eps(endpoints=[ep("10.100.1.6", ready=False, serving=True,
                                      terminating=True), ep("10.100.1.7", ready=False)]))
    assert [b.addr for b in slots(tr, Frontend("10.96.0.10", 80, "TCP"))] == ["10.100.1.6"]


def test_a_service_without_endpoints_has_a_frontend_with_no_backends():
    tr = run(svc(type="NodePort"))
    assert frontend_value(tr, Frontend("10.96.0.10", 80, "TCP")).count == 0
    assert tr.maps["lb_slots"] == {}


# ------------------------------------------------------------------ externalTrafficPolicy

def test_etp_local_external_frontends_hold_only_local_backends_clusterip_all():
    tr = run(svc(type="LoadBalancer", etp="Local", hc=30900, lb_ips=["10.97.0.5"]),
             eps(endpoints=[ep("10.100.1.5", "node1"), ep("10.100.2.7", "node2")]))
    for fe in (Frontend("10.99.0.11", 30080, "TCP"), Frontend("10.97.0.5", 80, "TCP")):
        assert frontend_value(tr, fe).flags & FE_LOCAL_ONLY
        assert slots(tr, fe) == [Backend("10.100.1.5", 8080, True)]
    cluster_ip = Frontend("10.96.0.10", 80, "TCP")
    assert not frontend_value(tr, cluster_ip).flags & FE_LOCAL_ONLY
    assert len(slots(tr, cluster_ip)) == 2
    assert tr.health_checks == {30900: HealthCheck("default", "web", 1)}
    assert tr.health_checks[30900].status == 200


def test_etp_local_without_local_backend_has_an_empty_frontend_and_a_503_health_check():
    tr = run(svc(type="NodePort", etp="Local", hc=30900),
             eps(endpoints=[ep("10.100.2.7", "node2")]))
    assert frontend_value(tr, Frontend("10.99.0.11", 30080, "TCP")).count == 0
    check = tr.health_checks[30900]
    assert check.status == 503
    assert check.body() == {"service": {"namespace": "default", "name": "web"},
                            "localEndpoints": 0, "serviceProxyHealthy": True}


def test_health_check_counts_local_ready_endpoint_addresses_once_across_ports():
    ports = [ServicePort("a", "TCP", 80, 8080, 30080), ServicePort("b", "UDP", 53, 53, 30053)]
    tr = run(svc(type="NodePort", etp="Local", hc=30900, ports=ports),
             eps(endpoints=[ep("10.100.1.5", "node1"), ep("10.100.1.6", "node1", ready=False),
                            ep("10.100.2.7", "node2")],
                 ports=[("a", 8080, "TCP"), ("b", 53, "UDP")]))
    assert tr.health_checks[30900].local_endpoints == 1


def test_cluster_policy_external_frontends_use_every_backend():
    tr = run(svc(type="NodePort"), eps(endpoints=[ep("10.100.1.5", "node1"),
                                                  ep("10.100.2.7", "node2")]))
    [np] = [v for v in tr.frontends if v.type == "NodePort"]
    assert np.traffic_policy == "Cluster" and len(np.selected) == 2
    assert tr.health_checks == {}


# ------------------------------------------------------------------ modes, algorithms

def _modes(tr):
    """(type, protocol) -> (mode shown, mode encoded in lb_frontends, fallback reason)."""
    return {(v.type, v.frontend.proto): (v.lb_mode, frontend_value(tr, v.frontend).lb_mode,
                                         v.lb_mode_fallback) for v in tr.frontends}


TCP_UDP = [ServicePort("http", "TCP", 80, 8080, 30080), ServicePort("dns", "UDP", 53, 8080, 30053)]
TCP_UDP_EPS = (("http", 8080, "TCP"), ("dns", 8080, "UDP"))
DSR_CODE, SNAT_CODE = LB_MODES["DSR"], LB_MODES["SNAT"]


@pytest.mark.parametrize("mode,tcp,udp", [("SNAT", "SNAT", "SNAT"), ("DSR", "DSR", "DSR"),
                                          ("Hybrid", "DSR", "SNAT")])
def test_lb_mode_per_protocol_on_external_frontends_only(mode, tcp, udp):
    tr = run(svc(type="LoadBalancer", ports=TCP_UDP, lb_ips=["10.97.0.5"]),
             eps(endpoints=[ep("10.100.2.7", "node2")], ports=TCP_UDP_EPS),
             settings=settings_from_mapping({"bpfLBMode": mode}))
    assert tr.lb_mode == {"TCP": tcp, "UDP": udp}
    assert tr.warnings == []
    code = {"DSR": DSR_CODE, "SNAT": SNAT_CODE}
    assert _modes(tr) == {
        ("ClusterIP", "TCP"): ("-", SNAT_CODE, ""), ("ClusterIP", "UDP"): ("-", SNAT_CODE, ""),
        ("NodePort", "TCP"): (tcp, code[tcp], ""), ("NodePort", "UDP"): (udp, code[udp], ""),
        ("LoadBalancer", "TCP"): (tcp, code[tcp], ""),
        ("LoadBalancer", "UDP"): (udp, code[udp], "")}


def test_vxlan_in_effect_makes_every_frontend_snat():
    tr = run(svc(type="NodePort", ports=TCP_UDP),
             settings=settings_from_mapping({"bpfLBMode": "DSR", "tunnelMode": "VXLAN"}))
    assert tr.lb_mode == {"TCP": "SNAT", "UDP": "SNAT"}
    assert {m[:2] for m in _modes(tr).values()} == {("-", SNAT_CODE), ("SNAT", SNAT_CODE)}


def test_host_network_endpoints_fall_back_to_snat_with_the_reason():
    dsr = settings_from_mapping({"bpfLBMode": "Hybrid"})
    host = run(svc("hostsvc", type="NodePort", ip="10.96.0.11", ports=TCP_UDP),
               eps("hostsvc", [ep("10.99.0.12", "node2"), ep("10.100.2.7", "node2")],
                   ports=TCP_UDP_EPS),
               svc("podsvc", type="NodePort", ip="10.96.0.12",
                   ports=[ServicePort("http", "TCP", 80, 8080, 30081)]),
               eps("podsvc", [ep("10.100.2.8", "node2")]), settings=dsr)
    by = {(v.service, v.type, v.frontend.proto): v for v in host.frontends}
    np_tcp = by[("default/hostsvc", "NodePort", "TCP")]
    assert (np_tcp.lb_mode, frontend_value(host, np_tcp.frontend).lb_mode) == ("SNAT", SNAT_CODE)
    assert "cilium#10789" in np_tcp.lb_mode_fallback
    assert np_tcp.to_dict()["lbModeFallback"] == np_tcp.lb_mode_fallback
    assert by[("default/hostsvc", "NodePort", "UDP")].lb_mode_fallback == ""  # SNAT anyway
    assert by[("default/podsvc", "NodePort", "TCP")].lb_mode == "DSR"
    assert by[("default/podsvc", "NodePort", "TCP")].to_dict()["lbModeFallback"] is None
    assert [w for w in host.warnings if "hostsvc" in w] == [
        "Service default/hostsvc: endpoints 10.99.0.12 are host-network: host-network "
        "endpoints (a node address) cannot answer by DSR (cilium#10789); its "
        "NodePort/LoadBalancer frontends use SNAT"]
    assert not any("podsvc" in w for w in host.warnings)
    snat = run(svc("hostsvc", type="NodePort", ports=TCP_UDP),
               eps("hostsvc", [ep("10.99.0.12", "node2")], ports=TCP_UDP_EPS))
    assert snat.warnings == []   # nothing to fall back from


EXTRA = settings_from_mapping({"extraLoadBalancerAlgorithmsEnabled": True, "bpfLBMode": "SNAT"})
MAGLEV = {"service.cilium.io/lb-algorithm": "maglev"}


def test_lb_algorithm_annotation_needs_the_option():
    off = run(svc(annotations=MAGLEV))
    assert off.frontends[0].algorithm == "random"
    reason = off.frontends[0].to_dict()["algorithmReason"]
    assert reason == "extraLoadBalancerAlgorithmsEnabled is false"
    assert off.frontends[0].to_dict()["algorithmRequested"] == "maglev"
    assert off.warnings == ["Service default/web: lb-algorithm 'maglev' ignored "
                            "(extraLoadBalancerAlgorithmsEnabled is false); using random"]
    assert off.maps["lb_maglev"] == {}
    for name in ("maglev", "least-conn", "random"):
        on = run(svc(annotations={"service.cilium.io/lb-algorithm": name}), settings=EXTRA)
        assert [f.algorithm for f in on.frontends] == [name] and on.warnings == []
        assert frontend_value(on, on.frontends[0].frontend).algorithm == LB_ALGORITHMS[name]
        assert on.frontends[0].to_dict()["algorithmReason"] is None


def test_maglev_frontends_of_a_port_share_one_table_of_the_same_backends():
    backends = [ep("10.100.1.5", "node1"), ep("10.100.2.5", "node2"), ep("10.100.2.6", "node2")]
    tr = translate(DesiredState(EXTRA, "node1", [*NODES, svc(
        type="NodePort", annotations=MAGLEV, lb_ips=("10.97.0.3",)), eps(endpoints=backends)],
        maglev_table_size=251))
    cluster_ip = Frontend("10.96.0.10", 80, "TCP")
    values = {f.type: frontend_value(tr, f.frontend) for f in tr.frontends}
    assert {v.maglev_table for v in values.values()} == {cluster_ip}
    assert {v.maglev_size for v in values.values()} == {251}
    assert len(tr.maps["lb_maglev"]) == maglev.chunk_count(251) == 16
    selected = tr.frontends[0].selected
    assert dict(maglev.table_chunks(cluster_ip, selected, 251)) == tr.maps["lb_maglev"]
    assert tr.frontends[0].to_dict()["maglev"] == {"tableSize": 251,
                                                   "table": "10.96.0.10:80/TCP"}


def test_maglev_etp_local_frontends_get_their_own_table_of_local_backends():
    backends = [ep("10.100.1.5", "node1"), ep("10.100.2.5", "node2")]
    tr = translate(DesiredState(EXTRA, "node1", [*NODES, svc(
        type="NodePort", etp="Local", hc=31000, annotations=MAGLEV), eps(endpoints=backends)],
        maglev_table_size=251))
    node_port = Frontend("10.99.0.11", 30080, "TCP")
    assert frontend_value(tr, node_port).maglev_table == node_port
    assert len(tr.maps["lb_maglev"]) == 2 * 16
    local_table = maglev.table_for([Backend("10.100.1.5", 8080, True)], 251)
    assert set(local_table) == {Backend("10.100.1.5", 8080, True)}


def test_maglev_without_backends_has_no_table():
    tr = run(svc(annotations=MAGLEV), eps(endpoints=[]), settings=EXTRA)
    value = frontend_value(tr, tr.frontends[0].frontend)
    assert value.count == 0 and value.maglev_table is None and tr.maps["lb_maglev"] == {}


def test_maglev_tables_beyond_the_map_budget_fall_back_to_random(monkeypatch):
    from cni_cilium import translate as translate_module

    monkeypatch.setitem(translate_module.MAP_CAPACITY, "lb_maglev", 40)
    objects = [svc(f"m{i}", ip=f"10.96.0.{10 + i}", annotations=MAGLEV) for i in range(3)]
    objects += [eps(f"m{i}", [ep("10.100.1.5", "node1")]) for i in range(3)]
    tr = translate(DesiredState(EXTRA, "node1", [*NODES, *objects], maglev_table_size=251))
    assert [f.algorithm for f in tr.frontends] == ["maglev", "maglev", "random"]
    assert len(tr.maps["lb_maglev"]) == 32
    assert "exceed lb_maglev's 40 entries" in tr.frontends[2].algorithm_reason
    assert any("m2: lb-algorithm 'maglev' not in effect" in w for w in tr.warnings)


def test_a_maglev_backend_change_rewrites_only_the_chunks_that_changed():
    many = [ep(f"10.100.{1 + i % 2}.{10 + i}", f"node{1 + i % 2}") for i in range(200)]
    before = run(svc(annotations=MAGLEV), eps(endpoints=many), settings=EXTRA)
    after = run(svc(annotations=MAGLEV), eps(endpoints=many[1:]), settings=EXTRA)
    ops = diff_maps(before.maps, after.maps)
    chunk_writes = [op for op in ops if op.map == "lb_maglev"]
    old = maglev.table_for(before.frontends[0].selected)
    new = maglev.table_for(after.frontends[0].selected)
    changed_chunks = {i // 16 for i, (a, b) in enumerate(zip(old, new)) if a != b}
    assert len(chunk_writes) == len(changed_chunks) < len(before.maps["lb_maglev"]) / 2
    assert all(not op.is_delete for op in chunk_writes)
    # Written before the frontend that reads them; a removed table goes after it.
    names = [op.map for op in ops]
    assert names.index("lb_maglev") < names.index("lb_frontends")
    gone = diff_maps(after.maps, run(settings=EXTRA).maps)
    names = [op.map for op in gone]
    assert names.index("lb_frontends") < names.index("lb_maglev")


def test_session_affinity_client_ip_sets_the_timeout_on_every_frontend():
    service = Service("default", "web", "NodePort", "10.96.0.10",
                      (ServicePort("http", "TCP", 80, 8080, 30080),), None,
                      session_affinity="ClientIP", affinity_timeout=60)
    tr = run(service, eps(endpoints=[ep("10.100.1.5", "node1")]))
    assert {frontend_value(tr, f.frontend).affinity_timeout for f in tr.frontends} == {60}
    assert tr.frontends[0].to_dict()["sessionAffinity"] == {"type": "ClientIP",
                                                            "timeoutSeconds": 60}
    plain = run(svc(), eps(endpoints=[ep("10.100.1.5", "node1")]))
    assert frontend_value(plain, plain.frontends[0].frontend).affinity_timeout == 0
    assert plain.frontends[0].to_dict()["sessionAffinity"] is None


def lb_with_ranges(ranges=("10.99.0.100/32", "192.0.2.0/24")):
    return Service("default", "web", "LoadBalancer", "10.96.0.10",
                   (ServicePort("http", "TCP", 80, 8080, 30080),), None,
                   load_balancer_ips=("10.97.0.3",), source_ranges=tuple(ranges))


def test_source_ranges_guard_only_load_balancer_frontends_when_the_check_is_on():
    checked = settings_from_mapping({"svcSourceRangeCheck": True, "bpfLBMode": "SNAT"})
    tr = run(lb_with_ranges(), eps(endpoints=[ep("10.100.1.5", "node1")]), settings=checked)
    lb_ip = Frontend("10.97.0.3", 80, "TCP")
    by_type = {f.type: f for f in tr.frontends}
    assert frontend_value(tr, lb_ip).flags & FE_SOURCE_RANGES
    assert not frontend_value(tr, by_type["NodePort"].frontend).flags & FE_SOURCE_RANGES
    assert set(tr.maps["lb_src_ranges"]) == {src_range_key(lb_ip, "10.99.0.100/32"),
                                             src_range_key(lb_ip, "192.0.2.0/24")}
    assert by_type["LoadBalancer"].to_dict()["sourceRangeCheck"] == "enforced"
    assert by_type["NodePort"].to_dict()["sourceRanges"] == []
    assert tr.warnings == []


def test_source_ranges_without_the_check_are_shown_and_not_programmed():
    tr = run(lb_with_ranges(), eps(endpoints=[ep("10.100.1.5", "node1")]))
    lb = next(f for f in tr.frontends if f.type == "LoadBalancer")
    assert tr.maps["lb_src_ranges"] == {}
    assert not frontend_value(tr, lb.frontend).flags & FE_SOURCE_RANGES
    assert lb.to_dict()["sourceRangeCheck"] == "not enforced: svcSourceRangeCheck is false"
    assert lb.to_dict()["sourceRanges"] == ["10.99.0.100/32", "192.0.2.0/24"]
    assert tr.warnings == ["Service default/web: loadBalancerSourceRanges not enforced: "
                           "svcSourceRangeCheck is false"]


# ------------------------------------------------------------------ conflicts

def test_a_conflicting_frontend_is_refused_naming_the_object_and_field():
    tr = run(svc("web"), svc("dup"))
    assert tr.problems == ["Service default/dup: spec.clusterIP: frontend 10.96.0.10:80/TCP "
                           "is already used by Service default/web; not programmed"]
    assert {v.service for v in tr.frontends} == {"default/web"}


def test_the_previous_owner_keeps_a_frontend_over_an_older_listed_claimant():
    first = run(svc("web"))
    tr = run(svc("dup"), svc("web"), previous=owners(first))
    assert {v.service for v in tr.frontends} == {"default/web"}
    assert "Service default/dup: spec.clusterIP" in tr.problems[0]


def test_nodeport_conflict_keeps_the_rest_of_the_service():
    tr = run(svc("a", type="NodePort", ip="10.96.0.1"), svc("b", type="NodePort", ip="10.96.0.2"))
    assert tr.problems == ["Service default/b: spec.ports[0].nodePort: frontend "
                           "10.99.0.11:30080/TCP is already used by Service default/a; "
                           "not programmed"]
    assert ("default/b", "ClusterIP") in {(v.service, v.type) for v in tr.frontends}


def test_a_frontend_repeated_within_one_service_is_programmed_once():
    tr = run(svc(type="LoadBalancer", lb_ips=["10.97.0.5"], ext_ips=["10.97.0.5"]))
    assert sum(v.type in ("LoadBalancer", "ExternalIP") for v in tr.frontends) == 1
    assert "spec.externalIPs[0]" in tr.problems[0] and "itself" in tr.problems[0]


def test_health_check_port_conflict_is_refused():
    tr = run(svc("a", type="NodePort", ip="10.96.0.1", etp="Local", hc=30900),
             svc("b", type="NodePort", ip="10.96.0.2", etp="Local", hc=30900,
                 ports=[ServicePort("http", "TCP", 80, 8080, 30081)]))
    assert list(tr.health_checks) == [30900]
    assert tr.health_checks[30900].name == "a"
    assert tr.problems == ["Service default/b: spec.healthCheckNodePort: 30900 is already used"
                           " by Service default/a; not served"]


# ------------------------------------------------------------------ node state

def test_node_config_and_no_masquerade_destinations():
    tr = run()
    assert tr.maps["node_cfg"] == {index_key(0): NodeConfig(
        "10.99.0.11", "10.100.1.0/24", 1024, 29999, True).encode()}
    assert set(tr.maps["no_masq"]) == {lpm_key(c) for c in (
        "10.100.0.0/16", "10.100.1.0/24", "10.100.2.0/24", "10.99.0.11/32", "10.99.0.12/32")}


def test_netfilter_masquerade_turns_bpf_masquerade_off_with_a_warning():
    tr = run(settings=settings_from_mapping({"bpfLBMode": "SNAT",
                                             "masqueradeMode": "Netfilter"}))
    assert not NodeConfig.decode(tr.maps["node_cfg"][index_key(0)]).masquerade
    assert any("masqueradeMode Netfilter" in w for w in tr.warnings)


def test_routes_to_other_nodes_pod_cidrs_in_native_routing():
    assert run().node_routes == {"10.100.2.0/24": "10.99.0.12"}
    assert run(node="node2").node_routes == {"10.100.1.0/24": "10.99.0.11"}
    off = settings_from_mapping({"bpfLBMode": "SNAT", "createNodeRoutes": False})
    assert run(settings=off).node_routes == {}
    vxlan = settings_from_mapping({"tunnelMode": "VXLAN", "bpfLBMode": "SNAT"})
    assert run(settings=vxlan).node_routes == {}


def test_vxlan_maps_other_nodes_pod_cidrs_and_addresses_to_the_tunnel():
    vxlan = settings_from_mapping({"tunnelMode": "VXLAN"})
    tr = translate(DesiredState(vxlan, "node1", NODES, tunnel_ifindex=7))
    assert tr.node_routes == {}
    assert tr.tunnel_routes == {"10.100.2.0/24": "10.99.0.12"}
    assert {k: TunnelEndpoint.decode(v) for k, v in tr.maps["tunnel_map"].items()} == {
        lpm_key("10.100.2.0/24"): TunnelEndpoint("10.99.0.12"),
        lpm_key("10.99.0.12/32"): TunnelEndpoint("10.99.0.12", node_address=True)}
    assert TunnelConfig.decode(tr.maps["tunnel_cfg"][index_key(0)]) == TunnelConfig(7, 1)
    assert tr.lb_mode == {"TCP": "SNAT", "UDP": "SNAT"}   # VXLAN forces SNAT


def test_native_routing_leaves_the_tunnel_maps_empty_and_off():
    tr = translate(DesiredState(SNAT, "node1", NODES, tunnel_ifindex=7))
    assert tr.maps["tunnel_map"] == {} and tr.tunnel_routes == {}
    assert TunnelConfig.decode(tr.maps["tunnel_cfg"][index_key(0)]) == TunnelConfig(0, 0)


def test_overlapping_pod_cidr_gets_no_route_and_a_problem():
    tr = run(Node("node3", "10.99.0.13", "10.100.1.0/25"))
    assert "10.100.1.0/25" not in tr.node_routes
    assert tr.problems == ["Node node3: spec.podCIDR: 10.100.1.0/25 overlaps the pod CIDR of "
                           "Node node1; no route installed"]


def test_without_its_own_node_object_nothing_is_programmed():
    tr = translate(DesiredState(SNAT, "node9", [*NODES, svc()]))
    assert tr.node is None
    assert all(entries == {} for entries in tr.maps.values())
    assert tr.problems == ["Node node9: not found in the manifests; waiting for it"]


# ------------------------------------------------------------------ diffs

def _ops_by_kind(ops):
    return [(op.map, op.is_delete) for op in ops]


def test_diff_writes_slots_before_frontends_and_deletes_frontends_before_slots():
    before = run(svc(), eps(endpoints=[ep("10.100.1.5"), ep("10.100.1.6")])).maps
    after = run(svc("api", ip="10.96.0.20"), eps("api", endpoints=[ep("10.100.1.7")])).maps
    ops = diff_maps(before, after)
    kinds = _ops_by_kind(ops)
    assert kinds == [("lb_slots", False), ("lb_frontends", False), ("lb_frontends", True),
                     ("lb_slots", True), ("lb_slots", True)]
    assert apply_ops(before, ops) == after


def test_diff_of_equal_states_is_empty_and_only_changes_are_written():
    state = run(svc(), eps(endpoints=[ep("10.100.1.5"), ep("10.100.1.6")])).maps
    assert diff_maps(state, state) == []
    grown = run(svc(), eps(endpoints=[ep("10.100.1.5"), ep("10.100.1.6"),
                                      ep("10.100.1.7")])).maps
    ops = diff_maps(state, grown)
    fe = Frontend("10.96.0.10", 80, "TCP")
    assert ops == [MapOp("lb_slots", slot_key(fe, 3), Backend("10.100.1.7", 8080, True).encode()),
                   MapOp("lb_frontends", fe.encode(), FrontendValue(3, 0).encode())]
    shrunk = diff_maps(grown, state)
    assert shrunk == [MapOp("lb_frontends", fe.encode(), FrontendValue(2, 0).encode()),
                      MapOp("lb_slots", slot_key(fe, 3), None)]


def test_array_entries_are_never_deleted():
    state = run().maps
    ops = diff_maps(state, {name: {} for name in state})
    assert all(op.map != "node_cfg" for op in ops)


def test_diff_then_apply_reaches_the_desired_state_for_random_changes():
    rng = random.Random(7)
    addrs = [f"10.100.{n}.{h}" for n, h in itertools.product((1, 2), range(2, 12))]

    def random_state():
        objects = []
        for i in range(rng.randint(0, 6)):
            kind = rng.choice(["ClusterIP", "NodePort", "LoadBalancer"])
            objects.append(svc(f"s{i}", type=kind, ip=f"10.96.0.{i + 1}",
                               etp=rng.choice(["Cluster", "Local"]), lb_ips=[f"10.97.0.{i}"],
                               ports=[ServicePort("http", "TCP", 80, 8080, 30000 + i)]))
            objects.append(eps(f"s{i}", endpoints=[
                ep(a, "node1" if a.startswith("10.100.1.") else "node2",
                   ready=rng.random() > 0.2) for a in rng.sample(addrs, rng.randint(0, 8))]))
        return run(*objects).maps

    current = random_state()
    for _ in range(40):
        desired = random_state()
        ops = diff_maps(current, desired)
        assert apply_ops(current, ops) == desired
        state = current
        for op in ops:  # after every single write, each frontend's slots all exist
            state = apply_ops(state, [op])
            assert _frontends_complete(state)
        current = desired


def _frontends_complete(state) -> bool:
    for raw_key, raw_value in state["lb_frontends"].items():
        fe, count = Frontend.decode(raw_key), FrontendValue.decode(raw_value).count
        if any(slot_key(fe, i) not in state["lb_slots"] for i in range(1, count + 1)):
            return False
    return True


def test_diff_routes_adds_changes_and_removes():
    upsert, delete = diff_routes({"10.100.2.0/24": "10.99.0.12", "10.100.3.0/24": "10.99.0.13"},
                                 {"10.100.2.0/24": "10.99.0.22", "10.100.4.0/24": "10.99.0.14"})
    assert upsert == {"10.100.2.0/24": "10.99.0.22", "10.100.4.0/24": "10.99.0.14"}
    assert delete == ["10.100.3.0/24"]
