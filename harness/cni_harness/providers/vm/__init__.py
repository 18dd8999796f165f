"""The `vm` provider: full Debian systems under qemu on the local provider's fabric."""

from __future__ import annotations

from typing import Callable


def make_provider(cluster: str, nodes: int = 3, os_entry: str = "debian-12",
                  progress: Callable[[str], None] = lambda _m: None):
    """A VmProvider (imported lazily, so a registry can list the provider cheaply)."""
    from .provider import VmProvider

    return VmProvider(cluster, nodes=nodes, os_entry=os_entry, progress=progress)
