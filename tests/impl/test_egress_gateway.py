"""Egress gateway objects, readiness, election and the egress maps (pure)."""

from __future__ import annotations

import hashlib

import pytest

from cni_cilium.bpfabi import (
    EGW_EXCLUDED,
    EGW_NO_GATEWAY,
    EGW_REDIRECT,
    EGW_SNAT,
    EgressAction,
    EgressKey,
    egress_ip_key,
)
from cni_cilium.config import settings_from_mapping
from cni_cilium.egress import (
    MESSAGE_NO_NODES,
    REASON_ANNOUNCED,
    REASON_FAILED,
    REASON_PENDING,
    REASON_SUCCEED,
    EgressView,
    PeerState,
    ReadinessTracker,
    destination_prefixes,
    elect,
    election_hash,
    selector_matches,
    translate_egress,
)
from cni_cilium.manifests import (
    EgressGateway,
    EgressGatewayPolicy,
    Node,
    Pod,
    PodSelector,
    SelectorRequirement,
    parse_yaml,
)
from cni_cilium.translate import DesiredState, diff_maps, translate

pytestmark = pytest.mark.unit

WORKER = {"node-role.kubernetes.io/worker": ""}
NODES = [Node("node1", "10.99.0.11", "10.100.1.0/24", {"kubernetes.io/hostname": "node1"}),
         Node("node2", "10.99.0.12", "10.100.2.0/24", dict(WORKER)),
         Node("node3", "10.99.0.13", "10.100.3.0/24", dict(WORKER))]
MACS = {"node1": "02:00:0a:63:00:0b", "node2": "02:00:0a:63:00:0c", "node3": "02:00:0a:63:00:0d"}
PODS = [Pod("default", "app-1", "node1", "10.100.1.5", {"app": "egress"}),
        Pod("default", "app-2", "node2", "10.100.2.5", {"app": "egress"}),
        Pod("default", "other", "node1", "10.100.1.6", {"app": "other"}),
        Pod("prod", "app-3", "node3", "10.100.3.5", {"app": "egress"}),
        Pod("default", "host", "node1", "10.99.0.11", {"app": "egress"}, host_network=True)]
BASIC = EgressGateway("gw", dict(WORKER), "PrimaryIPFromEgressGatewayNodeInterface", "eth0")
VIP = EgressGateway("gw", dict(WORKER), "VirtualIPAddress", virtual_ip="10.99.0.250")
POLICY = EgressGatewayPolicy("pol", "gw", ("0.0.0.0/0",), ("198.51.100.0/24",),
                             (PodSelector({"app": "egress"}),))


def view(ready=("node1", "node2", "node3"), announcing=None, settled=True, claims=None):
    """Every node's agent as seen by one agent; `claims`: node -> whom it says is active."""
    peers = {n: PeerState(n, n in ready, MACS[n], {"eth0": node.internal_ip},
                          tuple((announcing or {}).get(n, ())),
                          {"gw": (claims or {})[n]} if n in (claims or {}) else {})
             for n, node in ((n.name, n) for n in NODES)}
    return EgressView(settled, peers)


def active_for(gateway: str, candidates) -> str:
    return min(candidates, key=lambda n: hashlib.sha256(f"{gateway}#{n}".encode()).hexdigest())


def entries(tr) -> dict[EgressKey, EgressAction]:
    return {EgressKey.decode(k): EgressAction.decode(v)
            for k, v in tr.maps["egress_policy"].items()}


# ---------------------------------------------------------------- objects

GATEWAY_YAML = """
apiVersion: network.deckhouse.io/v1alpha1
kind: EgressGateway
metadata: {name: egress-gw}
spec:
  nodeSelector: {node-role.kubernetes.io/worker: ""}
  sourceIP:
    mode: VirtualIPAddress
    virtualIPAddress: {ip: 10.99.0.250, interfaces: [eth0]}
---
apiVersion: network.deckhouse.io/v1alpha1
kind: EgressGatewayPolicy
metadata: {name: egress-policy}
spec:
  egressGatewayName: egress-gw
  destinationCIDRs: [203.0.113.0/24]
  excludedCIDRs: [203.0.113.128/25]
  selectors:
  - podSelector:
      matchLabels: {app: egress, io.kubernetes.pod.namespace: default}
      matchExpressions: [{key: tier, operator: NotIn, values: [db]}]
"""


def test_both_kinds_parse_into_typed_objects():
    objects, problems = parse_yaml(GATEWAY_YAML)
    assert problems == []
    gateway, policy = objects
    assert gateway == EgressGateway("egress-gw", dict(WORKER), "VirtualIPAddress", "",
                                    "10.99.0.250", ("eth0",))
    assert gateway.key == ("EgressGateway", "", "egress-gw")
    assert policy == EgressGatewayPolicy(
        "egress-policy", "egress-gw", ("203.0.113.0/24",), ("203.0.113.128/25",),
        (PodSelector({"app": "egress", "io.kubernetes.pod.namespace": "default"},
                     (SelectorRequirement("tier", "NotIn", ("db",)),)),))


@pytest.mark.parametrize("spec,problem", [
    ("{nodeSelector: {}, sourceIP: {mode: Dynamic}}",
     "EgressGateway bad: spec.sourceIP.mode: invalid value 'Dynamic'; allowed: "
     "PrimaryIPFromEgressGatewayNodeInterface, VirtualIPAddress"),
    ("{sourceIP: {mode: VirtualIPAddress, virtualIPAddress: {ip: 10.99.0.250}}}",
     "EgressGateway bad: spec.nodeSelector: required: a mapping of node label to value "
     "(exact match; {} selects every node)"),
    ("{nodeSelector: {}, sourceIP: {mode: VirtualIPAddress, virtualIPAddress: {ip: 10.99.0}}}",
     "EgressGateway bad: spec.sourceIP.virtualIPAddress.ip: invalid IPv4 address '10.99.0'"),
    ("{nodeSelector: {}, sourceIP: {mode: VirtualIPAddress, virtualIPAddress: {ip: 0.0.0.0}}}",
     "EgressGateway bad: spec.sourceIP.virtualIPAddress.ip: 0.0.0.0 cannot be announced; use "
     "a unicast address of the network the gateway nodes are on"),
    ("{nodeSelector: {}, sourceIP: {mode: PrimaryIPFromEgressGatewayNodeInterface, "
     "primaryIPFromEgressGatewayNodeInterface: {interfaceName: 'a very long name'}}}",
     "EgressGateway bad: spec.sourceIP.primaryIPFromEgressGatewayNodeInterface.interfaceName: "
     "invalid interface name 'a very long name'; 1-15 letters, digits, '_.:-'"),
    ("{nodeSelector: {}, sourceIP: {mode: PrimaryIPFromEgressGatewayNodeInterface, "
     "primaryIPFromEgressGatewayNodeInterface: {interfaceName: eth0}, "
     "virtualIPAddress: {ip: 10.99.0.250}}}",
     "EgressGateway bad: spec.sourceIP.virtualIPAddress: only with mode VirtualIPAddress"),
])
def test_invalid_gateways_are_refused_naming_the_field(spec, problem):
    doc = f"apiVersion: network.deckhouse.io/v1alpha1\nkind: EgressGateway\n" \
          f"metadata: {{name: bad}}\nspec: {spec}\n"
    objects, problems = parse_yaml(doc)
    assert objects == [] and problems == [problem]


@pytest.mark.parametrize("spec,problem", [
    ("{egressGatewayName: gw, selectors: [{podSelector: {}}]}",
     "EgressGatewayPolicy bad: spec.destinationCIDRs: at least one IPv4 CIDR is required "
     "(0.0.0.0/0: everywhere outside the cluster)"),
    ("{egressGatewayName: gw, destinationCIDRs: [10.0.0.1/8], selectors: [{podSelector: {}}]}",
     "EgressGatewayPolicy bad: spec.destinationCIDRs[0]: invalid IPv4 CIDR '10.0.0.1/8'"),
    ("{destinationCIDRs: [0.0.0.0/0], selectors: [{podSelector: {}}]}",
     "EgressGatewayPolicy bad: spec.egressGatewayName: required: the name of an "
     "EgressGateway, got None"),
    ("{egressGatewayName: gw, destinationCIDRs: [0.0.0.0/0]}",
     "EgressGatewayPolicy bad: spec.selectors: at least one selector is required"),
    ("{egressGatewayName: gw, destinationCIDRs: [0.0.0.0/0], selectors: [{podSelector: "
     "{matchExpressions: [{key: a, operator: Like, values: [b]}]}}]}",
     "EgressGatewayPolicy bad: spec.selectors[0].podSelector.matchExpressions[0].operator: "
     "invalid value 'Like'; allowed: In, NotIn, Exists, DoesNotExist"),
])
def test_invalid_policies_are_refused_naming_the_field(spec, problem):
    doc = f"apiVersion: network.deckhouse.io/v1alpha1\nkind: EgressGatewayPolicy\n" \
          f"metadata: {{name: bad}}\nspec: {spec}\n"
    objects, problems = parse_yaml(doc)
    assert objects == [] and problems == [problem]


def test_a_wrong_api_version_is_refused():
    _objects, problems = parse_yaml(GATEWAY_YAML.replace("v1alpha1", "v2", 1))
    assert problems == ["EgressGateway egress-gw: apiVersion: invalid value "
                        "'network.deckhouse.io/v2'; allowed: network.deckhouse.io/v1alpha1"]


def test_node_ready_condition_and_host_ip_are_read():
    objects, problems = parse_yaml("""
kind: Node
metadata: {name: n1}
spec: {podCIDR: 10.100.1.0/24}
status:
  addresses: [{type: InternalIP, address: 10.99.0.11}]
  conditions: [{type: Ready, status: "False"}]
---
kind: Pod
metadata: {name: p}
spec:
  nodeName: n1
  containers: [{ports: [{containerPort: 80, hostPort: 8081, hostIP: 10.99.0.11}]}]
""")
    assert problems == []
    node, pod = objects
    assert node.ready is False
    assert pod.ports[0].host_ip == "10.99.0.11" and pod.ports[0].host_port == 8081
    _objects, problems = parse_yaml("kind: Pod\nmetadata: {name: p}\nspec: {nodeName: n1, "
                                    "containers: [{ports: [{containerPort: 80, "
                                    "hostIP: 10.99.0.11}]}]}\n")
    assert problems == ["Pod default/p: spec.containers[0].ports[0].hostIP: only with hostPort"]


# ---------------------------------------------------------------- readiness and election

def test_readiness_needs_consecutive_misses_to_fall_and_answers_to_rise():
    tracker = ReadinessTracker(misses=3, hold=2)
    assert not tracker.ready("n")
    assert tracker.record("n", True) is False and not tracker.ready("n")   # 1 of 2
    assert tracker.record("n", True) is True and tracker.ready("n")
    tracker.record("n", False, "timed out")
    tracker.record("n", False, "timed out")
    assert tracker.ready("n")                                 # two misses: still ready
    tracker.record("n", True)                                 # an answer resets the count
    tracker.record("n", False, "timed out")
    tracker.record("n", False, "timed out")
    assert tracker.record("n", False, "connection refused") is True
    assert not tracker.ready("n")
    assert tracker.reason("n") == "health check failed 3 times: connection refused"
    tracker.forget(["other"])
    assert tracker.reason("n") == "answered 0 of the 2 polls needed"


def test_election_is_the_lowest_sha256_of_gateway_hash_node():
    nodes = ["node1", "node2", "node3", "node4"]
    for gateway in ("gw", "egress-a", "egress-b"):
        expected = min(nodes, key=lambda n: hashlib.sha256(f"{gateway}#{n}".encode()).digest())
        assert elect(gateway, nodes) == expected
        assert elect(gateway, reversed(nodes)) == expected        # order does not matter
        assert election_hash(gateway, expected) == hashlib.sha256(
            f"{gateway}#{expected}".encode()).hexdigest()
    assert elect("gw", []) is None
    # Without the active node the next lowest takes over; back, it wins again.
    first = elect("gw", nodes)
    second = elect("gw", [n for n in nodes if n != first])
    assert second != first and elect("gw", [second, first]) == first


def test_an_eligible_incumbent_keeps_the_role():
    first = active_for("gw", ["node2", "node3"])
    second = ({"node2", "node3"} - {first}).pop()
    assert elect("gw", ["node2", "node3"], incumbents=[second]) == second
    assert elect("gw", ["node2", "node3"], incumbents=["node9"]) == first   # not eligible
    assert elect("gw", ["node2", "node3"], incumbents=["node2", "node3"]) == first
    # The first active node returns after its peers moved the role: it stays where it is,
    # on the returning node too (its own agent adopts what the ready peers say).
    back = view(claims={"node1": second, second: second})
    for node in NODES:
        assert translate_egress(node, NODES, PODS, [BASIC], [POLICY], back).gateways[0] \
            .active_node == second
    # Claims of agents that are not ready do not count.
    stale = view(ready=("node2", "node3"), claims={"node1": second})
    assert translate_egress(NODES[1], NODES, PODS, [BASIC], [POLICY], stale).gateways[0] \
        .active_node == first


def test_every_node_elects_the_same_active_gateway():
    results = {translate_egress(n, NODES, PODS, [BASIC], [POLICY], view()).gateways[0]
               .active_node for n in NODES}
    assert results == {active_for("gw", ["node2", "node3"])}


def test_eligibility_needs_selection_node_ready_agent_ready_and_the_interface():
    nodes = [NODES[0], NODES[1], Node("node3", "10.99.0.13", "10.100.3.0/24", dict(WORKER),
                                      ready=False)]
    tr = translate_egress(NODES[0], nodes, PODS, [BASIC], [POLICY], view(ready=("node1",)))
    status = tr.gateways[0]
    assert status.ready_nodes == () and status.active_node is None
    assert status.not_ready["node3"] == "Node is not Ready"
    assert status.not_ready["node2"].startswith("agent not ready")
    assert "node1" not in status.not_ready                      # not selected at all
    assert (status.ready.status, status.ready.reason, status.ready.message) == (
        "False", REASON_FAILED, MESSAGE_NO_NODES)
    no_iface = EgressGateway("gw", dict(WORKER), BASIC.mode, "eth1")
    status = translate_egress(NODES[0], NODES, PODS, [no_iface], [POLICY], view()).gateways[0]
    assert status.ready_nodes == ()
    assert status.not_ready["node2"] == "no IPv4 address on interface eth1"


def test_nothing_is_elected_before_the_first_health_checks():
    tr = translate_egress(NODES[1], NODES, PODS, [BASIC], [POLICY], view(settled=False))
    assert tr.gateways[0].active_node is None
    assert tr.gateways[0].ready.reason == REASON_PENDING
    # The node's own selected pod may not leave with another source: dropped until then.
    assert {a.action for a in entries(tr).values()} == {EGW_NO_GATEWAY, EGW_EXCLUDED}


# ---------------------------------------------------------------- maps

def test_the_pods_node_redirects_to_the_active_gateway_unmasqueraded():
    active = active_for("gw", ["node2", "node3"])
    tr = translate_egress(NODES[0], NODES, PODS, [BASIC], [POLICY], view())
    got = entries(tr)
    gateway_ip = next(n.internal_ip for n in NODES if n.name == active)
    redirect = EgressAction(EGW_REDIRECT, gateway_ip=gateway_ip, gateway_mac=MACS[active])
    # Only node1's selected pod (app-1): not "other", not the host-network pod.
    assert got == {EgressKey("10.100.1.5", "0.0.0.0/0"): redirect,
                   EgressKey("10.100.1.5", "198.51.100.0/24"): EgressAction(EGW_EXCLUDED)}
    assert tr.maps["egress_ips"] == {} and tr.announce == {}
    assert tr.policies[0].pods == ("default/app-1 10.100.1.5 node1",
                                   "default/app-2 10.100.2.5 node2",
                                   "prod/app-3 10.100.3.5 node3")


def test_the_active_gateway_snats_every_nodes_selected_pods_to_its_interface_ip():
    active = next(n for n in NODES if n.name == active_for("gw", ["node2", "node3"]))
    tr = translate_egress(active, NODES, PODS, [BASIC], [POLICY], view())
    snat = EgressAction(EGW_SNAT, egress_ip=active.internal_ip)
    got = entries(tr)
    assert {k.pod for k, a in got.items() if a == snat} == {"10.100.1.5", "10.100.2.5",
                                                            "10.100.3.5"}
    assert tr.maps["egress_ips"] == {}         # the InternalIP is reversed by snat_reverse
    status = tr.gateways[0]
    assert (status.ready.status, status.ready.reason) == ("True", REASON_SUCCEED)
    assert status.egress_ip == active.internal_ip


def test_vip_mode_announces_the_vip_on_the_active_node_and_reverses_it():
    active_name = active_for("gw", ["node2", "node3"])
    active = next(n for n in NODES if n.name == active_name)
    tr = translate_egress(active, NODES, PODS, [VIP], [POLICY], view())
    assert tr.announce == {"10.99.0.250": ()}
    assert tr.maps["egress_ips"] == {egress_ip_key("10.99.0.250"): b"\x01"}
    assert EgressAction(EGW_SNAT, egress_ip="10.99.0.250") in entries(tr).values()
    assert tr.gateways[0].ready.reason == REASON_SUCCEED     # not yet said to be announced
    announced = translate_egress(NODES[0], NODES, PODS, [VIP], [POLICY],
                                 view(announcing={active_name: ["10.99.0.250"]}))
    assert announced.gateways[0].ready.reason == REASON_ANNOUNCED
    assert announced.gateways[0].announced_by == active_name
    assert announced.announce == {}


def test_failover_moves_every_entry_to_the_next_node():
    first = active_for("gw", ["node2", "node3"])
    second = ({"node2", "node3"} - {first}).pop()
    before = translate_egress(NODES[0], NODES, PODS, [VIP], [POLICY], view())
    after = translate_egress(NODES[0], NODES, PODS, [VIP], [POLICY],
                             view(ready=("node1", second)))
    assert after.gateways[0].active_node == second
    assert {a.gateway_mac for a in entries(after).values() if a.action == EGW_REDIRECT} == {
        MACS[second]}
    ops = diff_maps(before.maps, after.maps)
    assert [op.map for op in ops] == ["egress_policy"]          # one entry rewritten


def test_destination_prefixes_subtract_excluded_cidrs():
    pol = EgressGatewayPolicy("p", "gw", ("203.0.113.0/24", "198.51.100.0/25", "10.0.0.0/8"),
                              ("198.51.100.0/24", "203.0.113.64/26", "192.0.2.0/24"),
                              (PodSelector(),))
    assert destination_prefixes(pol) == (["10.0.0.0/8", "203.0.113.0/24"],
                                         ["203.0.113.64/26"])


def test_selectors_match_labels_namespace_and_expressions():
    pod = Pod("prod", "p", "node1", "10.100.1.9", {"app": "egress", "tier": "web"})
    assert selector_matches(PodSelector({"app": "egress"}), pod)
    assert selector_matches(PodSelector({"io.kubernetes.pod.namespace": "prod"}), pod)
    assert not selector_matches(PodSelector({"io.kubernetes.pod.namespace": "default"}), pod)
    exprs = [("tier", "In", ("web",), True), ("tier", "NotIn", ("web",), False),
             ("db", "DoesNotExist", (), True), ("db", "Exists", (), False)]
    for key, op, values, expected in exprs:
        assert selector_matches(PodSelector({}, (SelectorRequirement(key, op, values),)),
                                pod) is expected, (key, op)


def test_overlapping_policies_keep_the_first_by_name_and_say_so():
    other = EgressGateway("gw2", dict(WORKER), BASIC.mode, "eth0")
    second = EgressGatewayPolicy("zz", "gw2", ("0.0.0.0/0",), (), (PodSelector({"app":
                                                                               "egress"}),))
    tr = translate_egress(NODES[0], NODES, PODS, [BASIC, other], [second, POLICY], view())
    assert entries(tr)[EgressKey("10.100.1.5", "0.0.0.0/0")].gateway_ip == \
        next(n.internal_ip for n in NODES if n.name == active_for("gw", ["node2", "node3"]))
    assert tr.problems == ["EgressGatewayPolicy zz: pod default/app-1 to 0.0.0.0/0 is already "
                           "routed by EgressGatewayPolicy pol; not applied there"]


def test_policies_of_unknown_gateways_and_conflicting_vips_are_problems():
    clash = EgressGateway("gw0", dict(WORKER), "VirtualIPAddress", virtual_ip="10.99.0.11")
    dup = EgressGateway("gwz", dict(WORKER), "VirtualIPAddress", virtual_ip="10.99.0.250")
    orphan = EgressGatewayPolicy("orphan", "missing", ("0.0.0.0/0",), (), (PodSelector(),))
    tr = translate_egress(NODES[0], NODES, PODS, [VIP, clash, dup], [orphan], view())
    assert [g.name for g in tr.gateways] == ["gw"]
    assert tr.problems == [
        "EgressGateway gw0: spec.sourceIP.virtualIPAddress.ip: 10.99.0.11 is the InternalIP "
        "of Node node1; not used",
        "EgressGateway gwz: spec.sourceIP.virtualIPAddress.ip: 10.99.0.250 is already the VIP "
        "of EgressGateway gw; not used",
        "EgressGatewayPolicy orphan: spec.egressGatewayName: no usable EgressGateway "
        "'missing'; not applied"]
    assert tr.maps["egress_policy"] == {}


def test_translate_carries_the_egress_maps_and_status():
    state = DesiredState(settings_from_mapping({}), "node1", [*NODES, *PODS, VIP, POLICY],
                         egress=view())
    tr = translate(state)
    assert tr.maps["egress_policy"] and tr.egress.gateways[0].name == "gw"
    assert tr.problems == []


def test_metrics_cli_and_map_listing_show_the_agents_view(capsys):
    from cni_cilium.metrics import render_metrics
    from cni_cilium.nodecli import egress_rows, print_egress

    active = next(n for n in NODES if n.name == active_for("gw", ["node2", "node3"]))
    tr = translate_egress(active, NODES, PODS, [VIP], [POLICY],
                          view(announcing={active.name: ["10.99.0.250"]}))
    summary = {
        "gateways": [{**g.to_dict(), "moves": 1,
                      "lastMove": {"at": 0.0, "from": "node9", "to": active.name}}
                     for g in tr.gateways],
        "entries": tr.entries_by_action(),
        "announcing": {"vips": {"10.99.0.250": {"interfaces": ["eth0"],
                                                "macs": [MACS[active.name]]}},
                       "arpReplies": 3, "gratuitousArpSent": 6, "takeovers": 1,
                       "errors": {}},
        "health": {"port": 4240, "settled": True,
                   "peers": {n: p.to_dict() for n, p in view().peers.items()}}}
    lines = set(render_metrics({"egress": summary, "hostPorts": {"frontends": 2}},
                               {}).splitlines())
    for expected in (
            f'cni_cilium_egress_gateway_active{{gateway="gw",node="{active.name}"}} 1',
            'cni_cilium_egress_gateway_ready_nodes{gateway="gw"} 2',
            'cni_cilium_egress_gateway_ready{gateway="gw",'
            'reason="ElectionSucceedAndVirtualIPAnnounced"} 1',
            'cni_cilium_egress_gateway_moves_total{gateway="gw"} 1',
            'cni_cilium_egress_policy_entries{action="snat"} 3',
            'cni_cilium_egress_vip_announced{vip="10.99.0.250"} 1',
            "cni_cilium_egress_gratuitous_arp_total 6",
            'cni_cilium_agent_peer_ready{node="node2"} 1',
            "cni_cilium_host_port_frontends 2"):
        assert expected in lines, expected
    print_egress({**summary, "policies": [p.to_dict() for p in tr.policies]})
    out = capsys.readouterr().out
    assert f"10.99.0.250     {active.name}" in out
    assert "True/ElectionSucceedAndVirtualIPAnnounced" in out
    assert f"moves seen by this agent: 1 (last node9 -> {active.name}" in out
    assert "  prod/app-3 10.100.3.5 node3" in out
    assert "announcing 10.99.0.250 on eth0" in out
    rows = egress_rows(tr.maps["egress_policy"].items())
    assert {r["action"] for r in rows} == {"snat", "excluded"}
    assert {r["egressIP"] for r in rows if r["action"] == "snat"} == {"10.99.0.250"}
