"""Ansible inventories (pure)."""

from __future__ import annotations

import pytest
import yaml

from cni_harness.deploy.inventory import render_inventory
from cni_harness.providers.base import NodeInfo

pytestmark = pytest.mark.unit


def test_inventory_groups_nodes_and_carries_node_facts():
    nodes = [NodeInfo("node1", "10.99.0.11", "10.100.1.0/24",
                      {"node-role.kubernetes.io/control-plane": ""}),
             NodeInfo("node2", "10.99.0.12", "10.100.2.0/24", {})]
    doc = yaml.safe_load(render_inventory(nodes, {"cni_cilium_init": "systemd"},
                                          {"node2": {"ansible_host": "192.0.2.5"}}))
    assert doc["all"]["vars"] == {"cni_cilium_init": "systemd"}
    groups = doc["all"]["children"]
    assert list(groups["control_plane"]["hosts"]) == ["node1"]
    node2 = groups["workers"]["hosts"]["node2"]
    assert node2 == {"cni_node_ip": "10.99.0.12", "cni_pod_cidr": "10.100.2.0/24",
                     "cni_node_labels": {}, "ansible_host": "192.0.2.5"}
