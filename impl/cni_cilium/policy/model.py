"""The parsed shape of a CiliumClusterwideNetworkPolicy (cilium.io/v2), and the entities
and reserved identities as Cilium numbers them (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

API_VERSION = "cilium.io/v2"
KIND = "CiliumClusterwideNetworkPolicy"
NAMESPACE_LABEL = "io.kubernetes.pod.namespace"

# Reserved identities (Cilium's numbers) and the label each one carries.
RESERVED_IDENTITIES = {
    1: "host", 2: "world", 3: "unmanaged", 4: "health", 5: "init", 6: "remote-node",
    7: "kube-apiserver", 8: "ingress",
}
RESERVED_BY_NAME = {name: number for number, name in RESERVED_IDENTITIES.items()}
ID_HOST, ID_WORLD, ID_REMOTE_NODE, ID_KUBE_APISERVER = 1, 2, 6, 7

# Entities a rule may name (Cilium's list). `all` is any peer; `cluster` is every pod of
# the cluster and every reserved identity inside it; `world-ipv4` is `world` here (IPv4).
ENTITIES = ("all", "cluster", "host", "remote-node", "kube-apiserver", "world", "world-ipv4",
            "health", "init", "unmanaged", "ingress", "none")
CLUSTER_RESERVED = ("host", "remote-node", "kube-apiserver", "health", "init", "unmanaged",
                    "ingress")

PROTOCOLS = ("TCP", "UDP", "ANY")
INGRESS, EGRESS = "ingress", "egress"


@dataclass(frozen=True)
class Requirement:
    """One matchExpressions entry."""

    key: str
    operator: str            # In, NotIn, Exists, DoesNotExist
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.operator == "Exists":
            return present
        if self.operator == "DoesNotExist":
            return not present
        if self.operator == "In":
            return present and labels[self.key] in self.values
        return not present or labels[self.key] not in self.values   # NotIn


@dataclass(frozen=True)
class LabelSelector:
    """A Kubernetes label selector; keys may carry a source (`k8s:` is dropped, `reserved:`
    kept and matched against reserved labels)."""

    match_labels: tuple[tuple[str, str], ...] = ()
    expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return (all(labels.get(k) == v for k, v in self.match_labels)
                and all(r.matches(labels) for r in self.expressions))

    @property
    def empty(self) -> bool:
        return not self.match_labels and not self.expressions

    def label_keys(self) -> set[str]:
        return {k for k, _ in self.match_labels} | {r.key for r in self.expressions}


@dataclass(frozen=True)
class CidrRule:
    cidr: str
    excepts: tuple[str, ...] = ()


@dataclass(frozen=True)
class PortRule:
    """One toPorts port: `port` 0 is every port; `end_port` makes a range."""

    port: int
    end_port: int | None = None
    protocol: str = "ANY"

    def describe(self) -> str:
        ports = "any" if self.port == 0 else (
            f"{self.port}-{self.end_port}" if self.end_port else str(self.port))
        return f"{ports}/{self.protocol}"


@dataclass(frozen=True)
class PolicyRule:
    """One entry of ingress, ingressDeny, egress or egressDeny: peers (OR'ed) and ports
    (none: every port)."""

    endpoints: tuple[LabelSelector, ...] = ()
    entities: tuple[str, ...] = ()
    cidrs: tuple[CidrRule, ...] = ()
    ports: tuple[PortRule, ...] = ()

    @property
    def names_peers(self) -> bool:
        return bool(self.endpoints or self.entities or self.cidrs)


@dataclass(frozen=True)
class PolicySpec:
    """One rule object (`spec`, or an item of `specs`)."""

    path: str                                   # "spec" or "specs[i]"
    endpoint_selector: LabelSelector | None
    node_selector: LabelSelector | None
    ingress: tuple[PolicyRule, ...] = ()
    ingress_deny: tuple[PolicyRule, ...] = ()
    egress: tuple[PolicyRule, ...] = ()
    egress_deny: tuple[PolicyRule, ...] = ()
    # enableDefaultDeny per direction; None: on when the direction has rules.
    default_deny: tuple[bool | None, bool | None] = (None, None)
    description: str = ""

    @property
    def host(self) -> bool:
        return self.node_selector is not None

    def sections(self, direction: str) -> tuple[tuple[PolicyRule, ...], tuple[PolicyRule, ...]]:
        """(allow rules, deny rules) of a direction."""
        if direction == INGRESS:
            return self.ingress, self.ingress_deny
        return self.egress, self.egress_deny

    def enforces(self, direction: str) -> bool:
        """Whether it puts what it selects into default deny in that direction."""
        asked = self.default_deny[0 if direction == INGRESS else 1]
        if asked is not None:
            return asked
        allow, deny = self.sections(direction)
        return bool(allow or deny)


@dataclass(frozen=True)
class ClusterwideNetworkPolicy:
    name: str
    specs: tuple[PolicySpec, ...]
    labels: dict[str, str] = field(default_factory=dict)
    digest: str = ""               # parse.policy_digest: which version of the document

    kind = KIND

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, "", self.name)
