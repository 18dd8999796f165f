"""The local cluster's addressing plan and names (docs/architecture.md), as pure functions.

Every local cluster uses the same address ranges: clusters never share a fabric, each lives
in its own namespaces, so the ranges never meet. Names are derived from the cluster name so
two clusters on one host never collide.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

NODE_NETWORK = "10.99.0.0/24"
ROUTER_IP = "10.99.0.1"
CLIENT_IP = "10.99.0.100"
WORLD_NETWORK = "203.0.113.0/24"
WORLD_ROUTER_IP = "203.0.113.1"
WORLD_IP = "203.0.113.10"
CLUSTER_POD_CIDR = "10.100.0.0/16"
SERVICE_CIDR = "10.96.0.0/16"
LB_POOL = "10.97.0.0/24"
NODE_PORT_RANGE = (30000, 32767)

DEFAULT_CLUSTER = "lab"
DEFAULT_NODES = 3
MAX_NODES = 50          # node i gets 10.99.0.(10+i); keeps clear of the client at .100
CONTROL_PLANE_LABEL = "node-role.kubernetes.io/control-plane"
WORKER_LABEL = "node-role.kubernetes.io/worker"

_CLUSTER_NAME = re.compile(r"^[a-z][a-z0-9]{0,11}$")


class PlanError(ValueError):
    """Bad cluster name or node count; the message says what is allowed."""


@dataclass(frozen=True)
class NodePlan:
    """One node: its name, namespace and addresses."""

    name: str
    index: int
    netns: str
    ip: str
    pod_cidr: str
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def pod_gateway(self) -> str:
        return str(ipaddress.IPv4Network(self.pod_cidr).network_address + 1)

    @property
    def fabric_port(self) -> str:
        """The node's veth end on the fabric bridge."""
        return self.name


@dataclass(frozen=True)
class ClusterPlan:
    """The whole local cluster: fabric, client, world and nodes."""

    name: str
    nodes: tuple[NodePlan, ...]

    @property
    def fabric_netns(self) -> str:
        return f"{self.name}-fabric"

    @property
    def client_netns(self) -> str:
        return f"{self.name}-client"

    @property
    def world_netns(self) -> str:
        return f"{self.name}-world"

    @property
    def all_netns(self) -> tuple[str, ...]:
        """Every host network namespace of the cluster, fabric first."""
        return (self.fabric_netns, self.client_netns, self.world_netns,
                *(n.netns for n in self.nodes))

    def node(self, name: str) -> NodePlan:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"no node {name!r} in cluster {self.name!r}; nodes: "
                       f"{', '.join(n.name for n in self.nodes)}")


def validate_cluster_name(name: str) -> None:
    """Raise PlanError unless the name is short lowercase letters and digits."""
    if not isinstance(name, str) or not _CLUSTER_NAME.match(name):
        raise PlanError(f"invalid cluster name {name!r}: use 1-12 lowercase letters and digits, "
                        "starting with a letter")


def node_plan(cluster: str, index: int) -> NodePlan:
    """Node `index` (1-based) of a cluster: node1 is the control plane."""
    name = f"node{index}"
    net = ipaddress.IPv4Network(NODE_NETWORK)
    pods = ipaddress.IPv4Network(CLUSTER_POD_CIDR)
    pod_cidr = ipaddress.IPv4Network((int(pods.network_address) + (index << 8), 24))
    labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}
    labels[CONTROL_PLANE_LABEL if index == 1 else WORKER_LABEL] = ""
    return NodePlan(name=name, index=index, netns=f"{cluster}-{name}",
                    ip=str(net.network_address + 10 + index), pod_cidr=str(pod_cidr),
                    labels=labels)


def plan_cluster(name: str = DEFAULT_CLUSTER, nodes: int = DEFAULT_NODES) -> ClusterPlan:
    """The plan for a cluster of `nodes` nodes; raises PlanError on bad input."""
    validate_cluster_name(name)
    if isinstance(nodes, bool) or not isinstance(nodes, int) or not 1 <= nodes <= MAX_NODES:
        raise PlanError(f"invalid node count {nodes!r}: must be 1-{MAX_NODES}")
    return ClusterPlan(name, tuple(node_plan(name, i) for i in range(1, nodes + 1)))
