"""Which provider a suite or a matrix entry runs against, by name or from the environment.

`matrix run` creates a cluster with a provider and runs the suites with the environment
below; the suites (through `cni_harness.testing` and `suites.lab.deployed_lab`) build the
same provider back from it, so a suite asked to run on VMs talks to those VMs and never to
namespace nodes it made itself.

| variable | meaning |
|---|---|
| `CNI_HARNESS_PROVIDER` | `local` (default), `vm`, `vagrant` or `kind` |
| `CNI_HARNESS_CLUSTER` | the cluster's name (local, vm, kind); a suite's own name otherwise |
| `CNI_HARNESS_INVENTORY` | the nodes' Ansible inventory (vagrant: where its nodes come from) |
| `CNI_HARNESS_MATRIX_ENTRY` | the matrix entry (vm: the OS entry its nodes run) |

Providers other than `local` are imported only when asked for; a build without the `vm`
package says so plainly ("vm provider not in this build") instead of failing with an
ImportError.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Mapping

from ..matrix.entryjob import ENTRY_ENV
from .base import Provider, ProviderUnavailable

PROVIDER_ENV = "CNI_HARNESS_PROVIDER"
CLUSTER_ENV = "CNI_HARNESS_CLUSTER"
INVENTORY_ENV = "CNI_HARNESS_INVENTORY"
DEFAULT_PROVIDER = "local"
PROVIDER_NAMES = ("local", "vm", "vagrant", "kind")
# The providers whose nodes a suite may create itself; for every other one the cluster is
# made beforehand (by `matrix run`) and a suite only uses it.
SELF_CREATING = ("local",)
# matrix.yaml OS entries the vm provider boots (its images are Debian's cloud images).
VM_OS_ENTRIES = ("debian-11", "debian-12")

Progress = Callable[[str], None]


class ProviderSelectionError(ValueError):
    """The environment or the arguments name a provider wrongly; the message says how."""


class ProviderNotInBuild(ProviderUnavailable):
    """The provider's code is not part of this build (e.g. the vm provider)."""


@dataclass(frozen=True)
class Selection:
    """A provider choice: its name, cluster and inventory (as the environment gives them)."""

    name: str = DEFAULT_PROVIDER
    cluster: str | None = None
    inventory: str | None = None
    entry: str | None = None          # the matrix entry (CNI_HARNESS_MATRIX_ENTRY)

    @property
    def self_creating(self) -> bool:
        """Whether a suite may create this provider's nodes itself (only `local`)."""
        return self.name in SELF_CREATING

    def env(self) -> dict[str, str]:
        """The environment that selects this provider again in a suite's process."""
        out = {PROVIDER_ENV: self.name}
        for key, value in ((CLUSTER_ENV, self.cluster), (INVENTORY_ENV, self.inventory),
                           (ENTRY_ENV, self.entry)):
            if value:
                out[key] = value
        return out


def selection_from_env(environ: Mapping[str, str] | None = None) -> Selection:
    """The provider the environment asks for (pure); unknown names and a vagrant choice
    without an inventory are refused."""
    environ = os.environ if environ is None else environ
    name = (environ.get(PROVIDER_ENV) or DEFAULT_PROVIDER).strip()
    if name not in PROVIDER_NAMES:
        raise ProviderSelectionError(f"{PROVIDER_ENV}={name!r}: unknown provider; "
                                     f"known: {', '.join(PROVIDER_NAMES)}")
    inventory = environ.get(INVENTORY_ENV) or None
    if name == "vagrant" and not inventory:
        raise ProviderSelectionError(f"{PROVIDER_ENV}=vagrant needs {INVENTORY_ENV}: the "
                                     "Vagrant nodes come from the inventory `matrix run` "
                                     "wrote")
    return Selection(name, environ.get(CLUSTER_ENV) or None, inventory,
                     environ.get(ENTRY_ENV) or None)


def matrix_cluster_name(entry: str, suffix: str | None = None) -> str:
    """The cluster name of a matrix OS entry's vm cluster: `vm`, the OS's initial and
    version (debian-12 -> vmd12), then this run's suffix, so two runs on one host never
    share a cluster (names prefix network namespaces: 12 characters at most)."""
    if suffix is None:
        from ..testing import RUN_SUFFIX as suffix
    first, _, rest = entry.partition("-")
    short = (first[:1] + "".join(c for c in rest if c.isalnum()))[:5]
    return f"vm{short}{suffix}"[:12].lower()


def provider_class(name: str) -> type[Provider]:
    """The provider class of a name, imported now (ProviderNotInBuild when absent)."""
    if name == "local":
        from .local.provider import LocalProvider

        return LocalProvider
    if name == "vm":
        try:
            from .vm.provider import VmProvider
        except ModuleNotFoundError as exc:
            # Only the vm package itself missing means "not in this build"; a module the vm
            # provider imports being absent is a real error and propagates.
            if exc.name not in ("cni_harness.providers.vm", "cni_harness.providers.vm.provider"):
                raise
            raise ProviderNotInBuild("vm provider not in this build (no "
                                     "cni_harness.providers.vm.provider)") from exc
        return VmProvider
    if name == "vagrant":
        from .vagrant import VagrantProvider

        return VagrantProvider
    if name == "kind":
        from .kind import KindProvider

        return KindProvider
    raise ProviderSelectionError(f"unknown provider {name!r}; known: "
                                 f"{', '.join(PROVIDER_NAMES)}")


def make_provider(name: str, cluster: str, *, nodes: int = 3, inventory: str | None = None,
                  os_entry: str | None = None, progress: Progress = lambda _m: None
                  ) -> Provider:
    """A provider object for an existing or planned cluster. `inventory` is where vagrant's
    nodes come from; `os_entry` the matrix OS entry a vm cluster runs (default debian-12)."""
    cls = provider_class(name)
    if name == "local":
        return cls(cluster, nodes=nodes, progress=progress)
    if name == "vm":
        return cls(cluster, nodes=nodes, os_entry=os_entry or "debian-12", progress=progress)
    if name == "vagrant":
        if not inventory:
            raise ProviderSelectionError("the vagrant provider needs the inventory of its "
                                         f"nodes ({INVENTORY_ENV})")
        return cls.from_inventory(inventory)
    return cls(cluster=cluster, node_count=nodes)          # kind


def provider_from_env(cluster: str, *, nodes: int = 3, progress: Progress = lambda _m: None,
                      environ: Mapping[str, str] | None = None) -> Provider:
    """The provider the environment selects, for `cluster` unless CNI_HARNESS_CLUSTER names
    another one."""
    sel = selection_from_env(environ)
    return make_provider(sel.name, sel.cluster or cluster, nodes=nodes,
                         inventory=sel.inventory, os_entry=sel.entry, progress=progress)
