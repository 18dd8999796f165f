"""Ansible inventories for any provider (pure).

Every provider describes its nodes with the same host variables, so `playbooks/site.yml`
runs unchanged against namespace nodes and VMs; only connection and init variables differ:

| variable | meaning |
|---|---|
| `cni_node_ip` | the node's InternalIP on the node network |
| `cni_pod_cidr` | the node's pod CIDR (CNI `ipam.subnet`) |
| `cni_node_labels` | the Node object's labels |
| `cni_cilium_init` | `systemd` (VMs) or `nodeinit` (namespace nodes): how services start at boot |
| `cni_reboot_command`, `cni_boot_time_command` | for `ansible.builtin.reboot` |
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import yaml

from ..providers.base import NodeInfo

CONTROL_PLANE_GROUP = "control_plane"
WORKER_GROUP = "workers"


def render_inventory(nodes: Sequence[NodeInfo], group_vars: Mapping[str, Any],
                     host_vars: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """A YAML inventory: groups control_plane and workers, node facts as host variables."""
    host_vars = host_vars or {}
    groups: dict[str, dict] = {CONTROL_PLANE_GROUP: {"hosts": {}}, WORKER_GROUP: {"hosts": {}}}
    for node in nodes:
        entry = {"cni_node_ip": node.ip, "cni_pod_cidr": node.pod_cidr,
                 "cni_node_labels": dict(node.labels), **host_vars.get(node.name, {})}
        group = CONTROL_PLANE_GROUP if node.is_control_plane else WORKER_GROUP
        groups[group]["hosts"][node.name] = entry
    doc = {"all": {"vars": dict(group_vars), "children": groups}}
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
