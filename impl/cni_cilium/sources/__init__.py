"""Where the agent's desired state comes from: one small interface, two sources.

- the manifest directory on the node (`/etc/cni-cilium/manifests`, written by the harness or
  Ansible), the default;
- the Kubernetes API (`sources.kube.KubeSource`), where a cluster exists (the kind provider).

Both hand the agent the same typed objects (`cni_cilium.manifests`: Node, Pod, Service,
EndpointSlice), so the translation and the datapath never know which one is in use.
"""

from __future__ import annotations

from typing import Hashable, List, Tuple

try:  # Python >= 3.8
    from typing import Protocol
except ImportError:  # pragma: no cover
    Protocol = object  # type: ignore[assignment,misc]

from ..manifests import KubeObject

Snapshot = Tuple[List[KubeObject], List[str]]


class DesiredStateSource(Protocol):
    """What the agent's reconcile loop needs from a source of desired state."""

    name: str

    def quick_signature(self) -> Hashable:
        """Cheap; changes at least when objects are added or removed (checked every tick)."""

    def signature(self) -> Hashable:
        """Changes whenever the desired state may have changed (may cost more)."""

    def writer_active(self) -> bool:
        """Whether a batch of changes is being written right now (read it after)."""

    def read(self) -> Snapshot:
        """Every valid object, oldest first (the older object wins a frontend conflict),
        and one problem line per invalid one."""

    def close(self) -> None:
        """Stop any background work."""
