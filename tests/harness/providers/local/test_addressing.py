"""The local cluster's addressing plan (pure)."""

from __future__ import annotations

import ipaddress

import pytest

from cni_harness.providers.local.addressing import (
    CLIENT_IP,
    CLUSTER_POD_CIDR,
    CONTROL_PLANE_LABEL,
    MAX_NODES,
    NODE_NETWORK,
    PlanError,
    plan_cluster,
)

pytestmark = pytest.mark.unit


def test_default_cluster_has_a_control_plane_and_two_workers():
    plan = plan_cluster()
    assert plan.name == "lab"
    assert [n.name for n in plan.nodes] == ["node1", "node2", "node3"]
    assert CONTROL_PLANE_LABEL in plan.nodes[0].labels
    assert all(CONTROL_PLANE_LABEL not in n.labels for n in plan.nodes[1:])


def test_addresses_follow_the_documented_plan():
    plan = plan_cluster("lc1", 10)
    assert [n.ip for n in plan.nodes][:3] == ["10.99.0.11", "10.99.0.12", "10.99.0.13"]
    assert plan.nodes[9].pod_cidr == "10.100.10.0/24"
    assert plan.nodes[1].pod_gateway == "10.100.2.1"
    assert plan.node("node2").netns == "lc1-node2"
    assert plan.all_netns[:3] == ("lc1-fabric", "lc1-client", "lc1-world")


def test_every_node_address_is_unique_and_inside_its_ranges():
    plan = plan_cluster("big", MAX_NODES)
    ips = [n.ip for n in plan.nodes]
    cidrs = [ipaddress.IPv4Network(n.pod_cidr) for n in plan.nodes]
    assert len(set(ips)) == len(ips) and CLIENT_IP not in ips
    assert all(ipaddress.IPv4Address(ip) in ipaddress.IPv4Network(NODE_NETWORK) for ip in ips)
    assert all(c.subnet_of(ipaddress.IPv4Network(CLUSTER_POD_CIDR)) for c in cidrs)
    assert not any(a.overlaps(b) for i, a in enumerate(cidrs) for b in cidrs[i + 1:])


@pytest.mark.parametrize("name", ["", "Lab", "1lab", "lab-x", "a" * 13, None])
def test_bad_cluster_names_are_refused_with_the_rule(name):
    with pytest.raises(PlanError, match="lowercase letters and digits"):
        plan_cluster(name, 3)


@pytest.mark.parametrize("count", [0, -1, MAX_NODES + 1, True, "3"])
def test_bad_node_counts_are_refused(count):
    with pytest.raises(PlanError, match=f"must be 1-{MAX_NODES}"):
        plan_cluster("lab", count)


@pytest.mark.unit
def test_node_uplink_mac_is_fixed_by_its_ip_and_locally_administered():
    from cni_harness.providers.local.node import uplink_mac

    assert uplink_mac("10.99.0.11") == "02:00:0a:63:00:0b"
    assert uplink_mac("10.99.0.12") != uplink_mac("10.99.0.11")
    assert int(uplink_mac("10.99.0.11")[:2], 16) & 0x02      # locally administered
