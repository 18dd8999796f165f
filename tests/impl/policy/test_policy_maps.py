"""CiliumClusterwideNetworkPolicy: parsing by field, identities, and the policy maps a node
gets, read the way the datapath reads them (tests/impl/policy/policy_datapath.py)."""

from __future__ import annotations

import pytest
import yaml
from policy_datapath import HOST, WORLD, PolicyMaps

from cni_cilium.bpfabi import index_key
from cni_cilium.config import settings_from_mapping
from cni_cilium.manifests import Endpoint, EndpointSlice, Node, Pod, parse_yaml
from cni_cilium.policy import identity as identity_mod
from cni_cilium.policy.compute import port_blocks, translate_policies
from cni_cilium.policy.identity import allocate
from cni_cilium.policy.labels import LabelFilter
from cni_cilium.policy.model import ClusterwideNetworkPolicy
from cni_cilium.translate import DesiredState, translate

pytestmark = pytest.mark.unit

CP = {"node-role.kubernetes.io/control-plane": ""}
NODES = [Node("node1", "10.99.0.11", "10.100.1.0/24", CP),
         Node("node2", "10.99.0.12", "10.100.2.0/24", {"node-role.kubernetes.io/worker": ""}),
         Node("node3", "10.99.0.13", "10.100.3.0/24", {"node-role.kubernetes.io/worker": ""})]
PODS = [Pod("default", "web", "node1", "10.100.1.10", {"app": "web", "pod-template-hash": "x"}),
        Pod("default", "client", "node1", "10.100.1.11", {"app": "client"}),
        Pod("default", "other", "node2", "10.100.2.10", {"app": "other", "tier": "be"}),
        Pod("prod", "client", "node2", "10.100.2.11", {"app": "client"}),
        Pod("default", "hostnet", "node1", "10.99.0.11", {"app": "hostnet"}, host_network=True)]
DEFAULT = settings_from_mapping({})


def policies(text: str) -> list[ClusterwideNetworkPolicy]:
    objects, problems = parse_yaml(text)
    assert problems == []
    return objects


def ccnp(name: str, spec: dict) -> str:
    return yaml.safe_dump({"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
                           "metadata": {"name": name}, "spec": spec})


def maps_for(node: str, *docs: str, settings=DEFAULT, extra=()) -> PolicyMaps:
    objects = [*NODES, *PODS, *extra, *(p for d in docs for p in policies(d))]
    this = next(n for n in NODES if n.name == node)
    return PolicyMaps(translate_policies(settings, this, NODES, objects).maps)


DOCS_RULE = """
apiVersion: "cilium.io/v2"
kind: CiliumClusterwideNetworkPolicy
metadata:
  name: "allow-control-plane-connectivity"
spec:
  ingress:
  - fromEntities:
    - kube-apiserver
  nodeSelector:
    matchLabels:
      node-role.kubernetes.io/control-plane: ""
"""


# ---------------------------------------------------------------- parsing

def test_the_docs_rule_parses_as_a_host_policy():
    [policy] = policies(DOCS_RULE)
    [spec] = policy.specs
    assert policy.name == "allow-control-plane-connectivity" and spec.host
    assert spec.node_selector.matches({"node-role.kubernetes.io/control-plane": ""})
    assert spec.ingress[0].entities == ("kube-apiserver",) and spec.enforces("ingress")
    assert not spec.enforces("egress")


@pytest.mark.parametrize("spec,problem", [
    ({"endpointSelector": {}, "nodeSelector": {}}, "spec: exactly one of endpointSelector"),
    ({"ingress": [{}]}, "spec: exactly one of endpointSelector"),
    ({"endpointSelector": {}, "ingress": [{"fromEntities": ["wrld"]}]},
     "spec.ingress[0].fromEntities[0]: unknown entity 'wrld'; allowed: all, cluster"),
    ({"endpointSelector": {}, "egress": [{"toCIDR": ["10.0.0.1/24"]}]},
     "spec.egress[0].toCIDR[0]: invalid IPv4 CIDR '10.0.0.1/24'"),
    ({"endpointSelector": {}, "egress": [{"toCIDRSet": [{"cidr": "10.0.0.0/16",
                                                         "except": ["10.1.0.0/24"]}]}]},
     "spec.egress[0].toCIDRSet[0].except[0]: 10.1.0.0/24 is not inside cidr 10.0.0.0/16"),
    ({"nodeSelector": {}, "ingress": [{"toPorts": [{"ports": [{"port": "70000"}]}]}]},
     "spec.ingress[0].toPorts[0].ports[0].port: invalid port 70000"),
    ({"nodeSelector": {}, "ingress": [{"toPorts": [{"ports": [{"port": "ssh"}]}]}]},
     "ports[0].port: named port 'ssh' is not supported"),
    ({"nodeSelector": {}, "ingress": [{"toPorts": [{"ports": [{"port": 90, "endPort": 80}]}]}]},
     "ports[0].endPort: endPort 80 is below port 90"),
    ({"nodeSelector": {}, "ingress": [{"toPorts": [{"ports": [{"port": 0, "endPort": 80}]}]}]},
     "ports[0].endPort: needs a non-zero port"),
    ({"nodeSelector": {}, "ingress": [{"toPorts": [{"ports": [{"port": 53,
                                                                "protocol": "SCTP"}]}]}]},
     "ports[0].protocol: invalid protocol 'SCTP'; allowed: TCP, UDP, ANY"),
    ({"endpointSelector": {}, "egress": [{"toFQDNs": [{"matchName": "x"}]}]},
     "spec.egress[0].toFQDNs: not supported by this datapath"),
    ({"endpointSelector": {}, "ingress": [{"toPorts": [{"ports": [{"port": 80}],
                                                        "rules": {"http": []}}]}]},
     "spec.ingress[0].toPorts[0].rules: not supported by this datapath"),
    ({"endpointSelector": {"matchExpressions": [{"key": "app", "operator": "Near"}]}},
     "spec.endpointSelector.matchExpressions[0].operator: invalid operator 'Near'"),
    ({"endpointSelector": {}, "ingres": []}, "spec.ingres: unknown field"),
    ({"endpointSelector": {}, "enableDefaultDeny": {"ingress": "yes"}},
     "spec.enableDefaultDeny.ingress: must be a boolean"),
])
def test_invalid_policies_are_refused_by_field(spec, problem):
    objects, problems = parse_yaml(ccnp("bad", spec))
    assert objects == []
    assert any(problem in p for p in problems), problems
    assert all(p.startswith("CiliumClusterwideNetworkPolicy bad: ") for p in problems)


def test_a_bad_policy_does_not_take_the_valid_ones_with_it():
    text = DOCS_RULE + "---\n" + ccnp("bad", {"nodeSelector": {}, "endpointSelector": {}})
    objects, problems = parse_yaml(text)
    assert [o.name for o in objects] == ["allow-control-plane-connectivity"]
    assert len(problems) == 1


def test_api_version_specs_ports_and_selectors():
    doc = {"apiVersion": "cilium.io/v1", "kind": "CiliumClusterwideNetworkPolicy",
           "metadata": {"name": "x"}, "spec": {"endpointSelector": {}}}
    assert "apiVersion: invalid value 'cilium.io/v1'" in parse_yaml(yaml.safe_dump(doc))[1][0]
    doc = {"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
           "metadata": {"name": "two"}, "specs": [
               {"endpointSelector": {"matchLabels": {"k8s:app": "web"},
                                     "matchExpressions": [{"key": "tier", "operator": "NotIn",
                                                           "values": ["db"]}]},
                "ingress": [{"toPorts": [{"ports": [{"port": "8000", "endPort": 8100,
                                                     "protocol": "TCP"}]}]}]},
               {"nodeSelector": {}, "egressDeny": [{"toEntities": ["world"]}]}]}
    [policy] = parse_yaml(yaml.safe_dump(doc))[0]
    first, second = policy.specs
    assert first.endpoint_selector.matches({"app": "web", "tier": "fe"})
    assert not first.endpoint_selector.matches({"app": "web", "tier": "db"})
    assert first.ingress[0].ports[0].describe() == "8000-8100/TCP"
    assert second.host and second.egress_deny[0].entities == ("world",)
    assert second.enforces("egress") and not second.enforces("ingress")


# ---------------------------------------------------------------- labels and identities

def test_identity_labels_follow_cilium_defaults_and_labels_regex():
    labels = {"app": "web", "pod-template-hash": "abc", "io.kubernetes.pod.namespace": "ns",
              "kubernetes.io/hostname": "n1", "app.kubernetes.io/name": "w", "tier": "fe"}
    assert LabelFilter.from_settings(None).identity_labels(labels) == {
        "app": "web", "io.kubernetes.pod.namespace": "ns", "app.kubernetes.io/name": "w",
        "tier": "fe"}
    assert LabelFilter.from_settings([r"k8s:app$"]).identity_labels(labels) == {
        "app": "web", "io.kubernetes.pod.namespace": "ns", "app.kubernetes.io/name": "w"}
    assert LabelFilter.from_settings(["k8s:!tier"]).identity_labels(labels) == {
        "app": "web", "io.kubernetes.pod.namespace": "ns", "app.kubernetes.io/name": "w"}


def test_identities_are_the_same_on_every_node_and_in_any_order():
    numbers = {}
    for node in NODES:
        tr = translate_policies(DEFAULT, node, NODES, list(reversed(PODS)) if node.name ==
                                "node2" else PODS)
        numbers[node.name] = {tuple(i.labels): n for n, i in tr.identities.items()
                              if i.kind == "endpoint"}
    assert numbers["node1"] == numbers["node2"] == numbers["node3"]
    assert all(256 <= n <= 65535 for n in numbers["node1"].values())
    # pod-template-hash does not count: the template's pods share one identity
    assert ("k8s:app=web", "k8s:io.kubernetes.pod.namespace=default") in numbers["node1"]


def test_identity_collisions_are_resolved_the_same_way_and_reported(monkeypatch):
    monkeypatch.setattr(identity_mod, "_hash", lambda text, lo, hi: lo)
    first, warnings = allocate(["b", "a", "c"], (256, 300))
    again, _ = allocate(["c", "a", "b"], (256, 300))
    assert first == again == {"a": 256, "b": 257, "c": 258}
    assert len(warnings) == 2 and "'b' hashes to 256, which 'a' holds; it gets 257" in \
        warnings[0]


def test_the_ipcache_names_pods_nodes_the_api_server_and_cidrs():
    tr = translate_policies(DEFAULT, NODES[1], NODES, [*PODS, *policies(ccnp("c", {
        "endpointSelector": {}, "egress": [{"toCIDR": ["203.0.113.0/24"]}]}))])
    cache = tr.ipcache
    assert cache["10.99.0.12/32"] == HOST and cache["10.100.2.1/32"] == HOST
    assert cache["10.99.0.11/32"] == 7          # the control-plane node: kube-apiserver
    assert cache["10.99.0.13/32"] == 6 and cache["10.100.3.1/32"] == 6
    assert cache["10.100.1.10/32"] >= 256 and "10.99.0.11/32" in cache
    assert cache["203.0.113.0/24"] >= 1 << 24
    assert tr.identities[7].labels == ("reserved:kube-apiserver", "reserved:remote-node")
    on_cp = translate_policies(DEFAULT, NODES[0], NODES, PODS)
    assert on_cp.ipcache["10.99.0.11/32"] == HOST
    assert on_cp.identities[HOST].labels == ("reserved:host", "reserved:kube-apiserver")


# ---------------------------------------------------------------- verdicts

WEB, CLIENT, OTHER, PROD_CLIENT = "10.100.1.10", "10.100.1.11", "10.100.2.10", "10.100.2.11"


def test_default_deny_on_ingress_only_for_selected_pods_with_an_ingress_section():
    m = maps_for("node1", ccnp("web-from-clients", {
        "endpointSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}]}]}))
    assert m.judge("pod-ingress", CLIENT, WEB, 8080) == "allow"
    assert m.judge("pod-ingress", PROD_CLIENT, WEB, 8080) == "allow"   # any namespace
    assert m.judge("pod-ingress", OTHER, WEB, 8080) == "denied"
    assert m.judge("pod-ingress", "203.0.113.10", WEB, 8080) == "denied"
    assert m.judge("pod-ingress", "10.99.0.11", WEB, 8080) == "allow"  # its own node
    assert m.judge("pod-egress", WEB, "203.0.113.10", 80) == "allow"   # no egress section
    assert m.judge("pod-ingress", WEB, CLIENT, 8080) == "allow"        # client not selected


def test_namespace_label_and_label_filter_in_selectors():
    ns_only = ccnp("prod-only", {
        "endpointSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"fromEndpoints": [{"matchLabels": {"io.kubernetes.pod.namespace":
                                                        "prod"}}]}]})
    m = maps_for("node1", ns_only)
    assert m.judge("pod-ingress", PROD_CLIENT, WEB, 80) == "allow"
    assert m.judge("pod-ingress", CLIENT, WEB, 80) == "denied"
    by_tier = ccnp("by-tier", {"endpointSelector": {"matchLabels": {"app": "web"}},
                               "ingress": [{"fromEndpoints": [{"matchLabels": {"tier": "be"}}]}]})
    assert maps_for("node1", by_tier).judge("pod-ingress", OTHER, WEB, 80) == "allow"
    filtered = settings_from_mapping({"labelsRegex": ["k8s:!tier"]})
    assert maps_for("node1", by_tier, settings=filtered).judge(
        "pod-ingress", OTHER, WEB, 80) == "denied"        # tier does not count: no match


def test_ports_ranges_and_protocols():
    m = maps_for("node1", ccnp("ports", {
        "endpointSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}],
                     "toPorts": [{"ports": [{"port": "8000", "endPort": 8100,
                                             "protocol": "TCP"}, {"port": "53"}]}]}]}))
    for port in (8000, 8063, 8064, 8099, 8100):
        assert m.judge("pod-ingress", CLIENT, WEB, port) == "allow", port
    for port in (7999, 8101, 9090):
        assert m.judge("pod-ingress", CLIENT, WEB, port) == "denied", port
    assert m.judge("pod-ingress", CLIENT, WEB, 8080, "UDP") == "denied"
    assert m.judge("pod-ingress", CLIENT, WEB, 53, "UDP") == "allow"  # ANY: TCP and UDP
    assert m.judge("pod-ingress", CLIENT, WEB, 53, "TCP") == "allow"
    assert m.judge("pod-ingress", OTHER, WEB, 8080) == "denied"


def test_port_blocks_cover_ranges_exactly():
    for lo, hi in ((1, 65535), (8000, 8100), (80, 80), (1024, 2047), (65535, 65535)):
        covered = set()
        for port, bits in port_blocks(lo, hi):
            size = 1 << (16 - bits)
            assert port % size == 0
            covered |= set(range(port, port + size))
        assert covered == set(range(lo, hi + 1))


def test_deny_wins_over_allow_whatever_their_specificity():
    allow_all = ccnp("allow-cluster", {"endpointSelector": {"matchLabels": {"app": "web"}},
                                        "ingress": [{"fromEntities": ["cluster"]}]})
    deny_port = ccnp("deny-other-8080", {
        "endpointSelector": {"matchLabels": {"app": "web"}},
        "ingressDeny": [{"fromEndpoints": [{"matchLabels": {"app": "other"}}],
                         "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}]}]}]})
    m = maps_for("node1", allow_all, deny_port)
    assert m.judge("pod-ingress", OTHER, WEB, 8080) == "deny"
    assert m.judge("pod-ingress", OTHER, WEB, 9090) == "allow"
    assert m.judge("pod-ingress", CLIENT, WEB, 8080) == "allow"
    narrow_allow = ccnp("allow-8080", {
        "endpointSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}],
                     "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}]}]}]})
    wide_deny = ccnp("deny-client", {"endpointSelector": {"matchLabels": {"app": "web"}},
                                     "ingressDeny": [{"fromEndpoints": [
                                         {"matchLabels": {"app": "client"}}]}]})
    m = maps_for("node1", narrow_allow, wide_deny)
    assert m.judge("pod-ingress", CLIENT, WEB, 8080) == "deny"    # same peer, longer allow
    any_peer_deny = ccnp("deny-8080-any", {
        "endpointSelector": {"matchLabels": {"app": "web"}},
        "ingressDeny": [{"toPorts": [{"ports": [{"port": "8080"}]}]}]})
    m = maps_for("node1", narrow_allow, any_peer_deny)
    assert m.judge("pod-ingress", CLIENT, WEB, 8080) == "deny"    # across the two lookups


def test_cidr_with_except_and_the_world_entity():
    m = maps_for("node1", ccnp("from-net", {
        "endpointSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"fromCIDRSet": [{"cidr": "10.99.0.0/24", "except": ["10.99.0.100/32"]}]}]}))
    assert m.judge("pod-ingress", "10.99.0.101", WEB, 80) == "allow"
    assert m.judge("pod-ingress", "10.99.0.100", WEB, 80) == "denied"
    assert m.judge("pod-ingress", "10.99.0.12", WEB, 80) == "denied"   # a node: not a CIDR
    assert m.judge("pod-ingress", "203.0.113.10", WEB, 80) == "denied"
    m = maps_for("node1", ccnp("egress-world", {
        "endpointSelector": {"matchLabels": {"app": "client"}},
        "egress": [{"toEntities": ["world"]},
                   {"toCIDRSet": [{"cidr": "0.0.0.0/0", "except": ["203.0.113.0/24"]}]}],
        "egressDeny": [{"toCIDR": ["203.0.113.11/32"]}]}))
    assert m.judge("pod-egress", CLIENT, "203.0.113.10", 80) == "allow"
    assert m.judge("pod-egress", CLIENT, "203.0.113.11", 80) == "deny"
    assert m.judge("pod-egress", CLIENT, WEB, 80) == "denied"           # cluster: not world


def test_egress_to_the_cluster_but_not_the_world():
    m = maps_for("node1", ccnp("cluster-only", {
        "endpointSelector": {"matchLabels": {"app": "client"}},
        "egress": [{"toEntities": ["cluster"]}]}))
    assert m.judge("pod-egress", CLIENT, WEB, 80) == "allow"
    assert m.judge("pod-egress", CLIENT, "10.99.0.12", 22) == "allow"   # remote-node
    assert m.judge("pod-egress", CLIENT, "10.99.0.11", 22) == "allow"   # host
    assert m.judge("pod-egress", CLIENT, "203.0.113.10", 80) == "denied"


def test_the_docs_rule_on_the_control_plane_and_the_kube_apiserver_entity():
    api = EndpointSlice("default", "kubernetes", "kubernetes",
                        (Endpoint(("10.99.0.11", "10.99.0.13")),), ())
    cp = maps_for("node1", DOCS_RULE, extra=[api])
    assert cp.judge("host-ingress", "10.99.0.13", "10.99.0.11", 6443) == "allow"
    assert cp.judge("host-ingress", "10.99.0.12", "10.99.0.11", 6443) == "denied"
    assert cp.judge("host-ingress", "10.99.0.100", "10.99.0.11", 22) == "denied"
    assert cp.judge("host-egress", "10.99.0.11", "10.99.0.12", 10250) == "allow"
    worker = maps_for("node2", DOCS_RULE, extra=[api])
    assert worker.judge("host-ingress", "10.99.0.100", "10.99.0.12", 22) == "allow"
    assert worker.identity("10.99.0.13") == 7 and worker.identity("10.99.0.11") == 7


def test_host_firewall_and_a_pod_talking_to_its_own_node():
    m = maps_for("node1", ccnp("host", {
        "nodeSelector": {},
        "ingress": [{"fromEntities": ["remote-node"]},
                    {"fromCIDR": ["10.99.0.100/32"],
                     "toPorts": [{"ports": [{"port": 22, "protocol": "TCP"}]}]}],
        "egress": [{"toEntities": ["cluster"]}]}))
    assert m.judge("host-ingress", "10.99.0.100", "10.99.0.11", 22) == "allow"
    assert m.judge("host-ingress", "10.99.0.100", "10.99.0.11", 8081) == "denied"
    assert m.judge("host-ingress", "10.99.0.12", "10.99.0.11", 8081) == "allow"
    assert m.judge("host-egress", "10.99.0.11", "203.0.113.10", 80) == "denied"
    assert m.judge("host-egress", "10.99.0.11", OTHER, 8080) == "allow"
    # a local pod reaching its node: the node's ingress policy decides (pods: not allowed)
    assert m.judge("pod-egress", CLIENT, "10.99.0.11", 8081) == "denied"
    assert m.judge("pod-egress", CLIENT, "10.100.1.1", 8081) == "denied"   # cilium_host
    # the node reaching its pod: the node's egress policy (cluster: allowed)
    assert m.judge("pod-ingress", "10.99.0.11", WEB, 8080) == "allow"


def test_default_deny_switches_and_empty_rules():
    no_default = ccnp("no-default", {"endpointSelector": {"matchLabels": {"app": "web"}},
                                      "enableDefaultDeny": {"ingress": False},
                                      "ingressDeny": [{"fromEndpoints": [
                                          {"matchLabels": {"app": "other"}}]}]})
    m = maps_for("node1", no_default)
    assert m.judge("pod-ingress", OTHER, WEB, 80) == "deny"
    assert m.judge("pod-ingress", CLIENT, WEB, 80) == "allow"
    deny_all = ccnp("deny-all", {"endpointSelector": {"matchLabels": {"app": "web"}},
                                 "ingress": [{}]})
    m = maps_for("node1", deny_all)
    assert m.judge("pod-ingress", CLIENT, WEB, 80) == "denied"
    only_ports = ccnp("only-ports", {"endpointSelector": {"matchLabels": {"app": "web"}},
                                     "ingress": [{"toPorts": [{"ports": [{"port": 80}]}]}]})
    m = maps_for("node1", only_ports)
    assert m.judge("pod-ingress", "203.0.113.10", WEB, 80) == "allow"
    assert m.judge("pod-ingress", CLIENT, WEB, 81) == "denied"


def test_audit_mode_and_rule_numbers_are_in_the_maps_and_agree_between_nodes():
    doc = ccnp("web", {"endpointSelector": {"matchLabels": {"app": "web"}},
                       "ingress": [{"fromEntities": ["cluster"]}]})
    audit = settings_from_mapping({"policyAuditMode": True})
    assert maps_for("node1", doc, settings=audit).config.audit
    assert not maps_for("node1", doc).config.audit
    one = translate_policies(DEFAULT, NODES[0], NODES, [*PODS, *policies(DOCS_RULE + "---\n" +
                                                                           doc)])
    two = translate_policies(DEFAULT, NODES[1], NODES, [*PODS, *policies(DOCS_RULE + "---\n" +
                                                                           doc)])
    assert one.rules == two.rules
    assert one.rules[2] == "allow-control-plane-connectivity: spec.ingress[0]"
    assert one.policies["web"] == ["default/web"] and two.policies["web"] == []
    assert two.policies["allow-control-plane-connectivity"] == []
    assert one.policies["allow-control-plane-connectivity"] == ["host"]


def test_the_node_translation_carries_the_policy_maps_and_their_problems():
    state = DesiredState(DEFAULT, "node1", [*NODES, *PODS, *policies(DOCS_RULE)])
    out = translate(state)
    assert out.policy is not None and out.policy.subjects[-1].pods == ["host"]
    for name in ("policy_cfg", "ipcache", "policy_map", "policy_enforce"):
        assert out.maps[name] == out.policy.maps[name]
    assert index_key(0) in out.maps["policy_cfg"]
    assert PolicyMaps(out.maps).identity("10.100.2.11") >= 256
    assert PolicyMaps(out.maps).identity("198.51.100.1") == WORLD


def test_each_policy_in_effect_carries_the_digest_of_its_version():
    """/policy names each policy's version, so a caller that replaced a policy under the
    same name can wait for the new one (the harness's wait_policies)."""
    from cni_cilium.policy.parse import policy_digest

    first = {"nodeSelector": {}, "ingress": [{"fromEntities": ["cluster"]}]}
    second = {**first, "ingress": [*first["ingress"], {"fromCIDR": ["10.99.0.2/32"]}]}
    views = []
    for spec in (first, second):
        [policy] = policies(ccnp("nodes", spec))
        doc = translate_policies(DEFAULT, NODES[1], NODES, [*NODES, *PODS, policy]).to_dict()
        views.append(doc["policies"])
    assert views[0][0]["digest"] == policy_digest({"spec": first})
    assert views[1][0]["digest"] == policy_digest({"spec": second}) != views[0][0]["digest"]
    # the same spec whatever its key order or the metadata around it
    assert policy_digest({"spec": dict(reversed(list(first.items()))),
                          "metadata": {"name": "x"}}) == views[0][0]["digest"]
