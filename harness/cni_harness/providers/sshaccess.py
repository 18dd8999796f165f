"""ssh access to nodes that live behind network namespaces (local and vm providers).

Both providers reach a node's sshd without any route in the root namespace: a
ProxyCommand enters a namespace of the cluster and connects from there. What differs is
only where (the node's own namespace, or the fabric holding the VMs' taps) and which
address; this module renders the shared `ssh_config` and `known_hosts` (pure) and makes
the keys (edge: ssh-keygen).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from typing import Sequence

from ..state import write_atomic


@dataclass(frozen=True)
class SshHost:
    """One node as ssh sees it."""

    name: str              # the node name (what Ansible and `ssh -F` use)
    alias: str             # a second name, and the host key's alias in known_hosts
    hostname: str          # what the ProxyCommand's %h becomes
    proxy: str             # the ProxyCommand
    host_key: str          # the node's public host key ("ssh-ed25519 AAAA... comment")


def render_ssh_config(hosts: Sequence[SshHost], key_path: str, known_hosts: str,
                      extra: Sequence[str] = ()) -> str:
    """An ssh_config: one block per node, then the options every node shares (`extra`:
    more of those, e.g. connection sharing)."""
    blocks = [f"Host {h.name} {h.alias}\n  HostName {h.hostname}\n  HostKeyAlias {h.alias}\n"
              f"  ProxyCommand {h.proxy}\n" for h in hosts]
    names = " ".join([h.name for h in hosts] + [h.alias for h in hosts])
    common = (f"Host {names}\n  User root\n  Port 22\n"
              f"  IdentityFile {key_path}\n  IdentitiesOnly yes\n"
              f"  UserKnownHostsFile {known_hosts}\n"
              "  StrictHostKeyChecking yes\n  LogLevel ERROR\n"
              + "".join(f"  {line}\n" for line in extra))
    return "\n".join(blocks) + "\n" + common


def render_known_hosts(hosts: Sequence[SshHost]) -> str:
    """known_hosts: each node's host key under its alias."""
    return "".join(f"{h.alias} {' '.join(h.host_key.split()[:2])}\n" for h in hosts)


def write_ssh_access(config_path: str, known_hosts: str, key_path: str,
                     hosts: Sequence[SshHost], extra: Sequence[str] = ()) -> None:
    """Write known_hosts and ssh_config (atomically)."""
    write_atomic(known_hosts, render_known_hosts(hosts))
    write_atomic(config_path, render_ssh_config(hosts, key_path, known_hosts, extra))


def ensure_key(path: str, comment: str) -> str:
    """An ed25519 key pair at `path` (made when absent); returns the public key line."""
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment,
                        "-f", path], check=True, capture_output=True)
    with open(path + ".pub", encoding="ascii") as fh:
        return fh.read().strip()
