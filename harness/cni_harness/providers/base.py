"""The one interface every provider (local, qemu, vagrant, kind) implements.

Suites, deploy and evidence talk only to this interface, so the same test runs against
namespace nodes, VMs or kind nodes. Providers that cannot run on a host say why through
`availability()` instead of failing later with a traceback.
"""

from __future__ import annotations

import abc
import os
import shlex
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Sequence

# Exit status of a command whose provider cannot run on this host (tools missing).
EXIT_PROVIDER_UNAVAILABLE = 3


class ProviderUnavailable(RuntimeError):
    """The provider's tools or backends are missing here; the message says which."""


class NodeDown(RuntimeError):
    """The node is not running (rebooting, powered off, or its cluster is down)."""


@dataclass(frozen=True)
class Availability:
    ok: bool
    missing: tuple[str, ...] = ()

    def reason(self) -> str:
        return "available" if self.ok else "missing: " + "; ".join(self.missing)


@dataclass(frozen=True)
class NodeInfo:
    """A cluster node as suites and Ansible see it."""

    name: str
    ip: str                      # InternalIP on the node network
    pod_cidr: str
    labels: dict[str, str] = field(default_factory=dict)
    uplink: str = "eth0"          # the device facing the node network

    @property
    def is_control_plane(self) -> bool:
        return "node-role.kubernetes.io/control-plane" in self.labels

    def to_dict(self) -> dict:
        return asdict(self)


class Provider(abc.ABC):
    """Creates, drives and destroys the nodes of one cluster."""

    name: str = "abstract"

    @classmethod
    @abc.abstractmethod
    def availability(cls) -> Availability:
        """Whether this host has what the provider needs (no side effects)."""

    @abc.abstractmethod
    def up(self) -> None:
        """Create the cluster (idempotent for an existing healthy cluster)."""

    @abc.abstractmethod
    def down(self) -> None:
        """Remove everything the cluster made, also after a crash."""

    @abc.abstractmethod
    def nodes(self) -> list[NodeInfo]:
        """The nodes, control plane first."""

    @abc.abstractmethod
    def exec(self, node: str, argv: Sequence[str], *, input: str | bytes | None = None,
             timeout: float | None = 120, check: bool = True
             ) -> subprocess.CompletedProcess:
        """Run a command on a node as root; text output."""

    @abc.abstractmethod
    def put_file(self, node: str, path: str, data: bytes, mode: int = 0o644) -> None:
        """Write a file on a node (parents created)."""

    @abc.abstractmethod
    def reboot(self, node: str) -> None:
        """Reboot a node and wait until its boot sequence (sshd, agent) has run."""

    @abc.abstractmethod
    def inventory_path(self) -> str:
        """An Ansible inventory (YAML) reaching every node over ssh."""

    @abc.abstractmethod
    def status(self) -> dict:
        """A JSON-ready description: provider, nodes (name, ip, podCIDR, labels), state."""

    def node(self, name: str) -> NodeInfo:
        for info in self.nodes():
            if info.name == name:
                return info
        known = ", ".join(n.name for n in self.nodes())
        raise KeyError(f"no node {name!r}; nodes: {known}")


def put_file_script(path: str, mode: int) -> str:
    """The `sh -c` script a provider's put_file runs through its exec: stdin to `path`
    atomically (a temporary file renamed into place), parents created."""
    if not path.startswith("/"):
        raise ValueError(f"put_file: path must be absolute, got {path!r}")
    tmp = shlex.quote(f"{path}.tmp.cni")
    return (f"mkdir -p {shlex.quote(os.path.dirname(path))} && cat > {tmp} && "
            f"chmod {mode:o} {tmp} && mv -f {tmp} {shlex.quote(path)}")


def run_text(argv: Sequence[str], input: str | bytes | None, timeout: float | None,
             check: bool) -> subprocess.CompletedProcess:
    """Run a command that reaches a node (ssh, docker exec): text output, as exec promises."""
    data = input.encode() if isinstance(input, str) else input
    res = subprocess.run(list(argv), input=data, capture_output=True, timeout=timeout,
                         check=False)
    out = res.stdout.decode(errors="replace")
    err = res.stderr.decode(errors="replace")
    if check and res.returncode != 0:
        raise subprocess.CalledProcessError(res.returncode, list(argv), out, err)
    return subprocess.CompletedProcess(list(argv), res.returncode, out, err)
