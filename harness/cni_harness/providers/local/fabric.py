"""What every provider whose nodes hang off the local fabric shares (local: namespace
nodes; vm: qemu VMs on taps): the state dir and journal, the plan and its nodes, the ssh
and inventory files' paths, the namespaces outside the nodes, the fabric's source guard,
`up`'s handling of a cluster that already exists, `down`, and the common part of `status`.

Subclasses say how nodes are made, checked and removed (`_create`, `_health`,
`_teardown`) and how they are reached (`exec_command`, ...).
"""

from __future__ import annotations

import abc
import json
import os
import shutil
import time
from typing import Any, Callable

from ...deploy.inventory import render_inventory
from ...state import Journal, cluster_dir, cluster_lock, write_atomic
from ...timescale import time_scale
from ..base import NodeInfo, Provider
from ..sshaccess import ensure_key
from . import sourceguard
from .addressing import CLIENT_IP, ROUTER_IP, WORLD_IP, ClusterPlan, plan_cluster
from .netns import CommandError, delete_netns, list_netns, nft
from .node import build_client, build_fabric, build_world, load_plan


class ClusterError(RuntimeError):
    """The cluster cannot be created or used as asked; the message says why and what to do."""


def progress_none(_msg: str) -> None:
    return None


class FabricProvider(Provider):
    """A cluster on the local fabric (see the module docstring)."""

    machines = "nodes"            # what messages call the nodes ("VMs" for the vm provider)

    def __init__(self, cluster: str, nodes: int, progress: Callable[[str], None]):
        self.cluster = cluster
        self.node_count = nodes
        self.progress = progress
        self.state_dir = cluster_dir(cluster)
        self.journal = Journal(os.path.join(self.state_dir, "journal.jsonl"))

    # ------------------------------------------------------------ paths and plan

    @property
    def ssh_config_path(self) -> str:
        return os.path.join(self.state_dir, "ssh_config")

    @property
    def ssh_key_path(self) -> str:
        return os.path.join(self.state_dir, "ssh", "id_ed25519")

    @property
    def known_hosts_path(self) -> str:
        return os.path.join(self.state_dir, "ssh", "known_hosts")

    def inventory_path(self) -> str:
        return os.path.join(self.state_dir, "inventory.yml")

    def plan(self) -> ClusterPlan:
        """The running cluster's plan, or the one `up` would build."""
        try:
            return load_plan(self.state_dir)
        except FileNotFoundError:
            return plan_cluster(self.cluster, self.node_count)

    def nodes(self) -> list[NodeInfo]:
        return [NodeInfo(n.name, n.ip, n.pod_cidr, dict(n.labels)) for n in self.plan().nodes]

    def external_netns(self) -> dict[str, str]:
        """The namespaces that are not nodes: client, world, router (the fabric)."""
        plan = self.plan()
        return {"client": plan.client_netns, "world": plan.world_netns,
                "router": plan.fabric_netns}

    # ------------------------------------------------------------ life cycle

    def _owned_netns(self, plan: ClusterPlan) -> tuple[str, ...]:
        """The host network namespaces this provider makes for a plan (all of them)."""
        return plan.all_netns

    @abc.abstractmethod
    def _node_running(self, node: str) -> bool:
        """Whether a node is up (its init or VM alive)."""

    @abc.abstractmethod
    def _stop_nodes(self, entries: list[dict]) -> None:
        """Stop every node the journal `entries` record (the first step of teardown)."""

    def _health(self) -> str:
        """running, degraded (something died or `up` never finished), or absent."""
        if not os.path.isdir(self.state_dir):
            return "absent"
        try:
            plan = load_plan(self.state_dir)
        except FileNotFoundError:
            return "degraded"
        if not any(e["op"] == "up_complete" for e in self.journal.entries()):
            return "degraded"
        if not set(self._owned_netns(plan)) <= list_netns():
            return "degraded"
        if not all(self._node_running(node.name) for node in plan.nodes):
            return "degraded"
        return "running"

    def _teardown(self) -> None:
        """Remove what the journal says was made: the nodes, the namespaces (and whatever
        still runs in them), the state dir."""
        entries = self.journal.entries()
        self._stop_nodes(entries)
        for entry in reversed(entries):
            if entry["op"] == "netns":
                delete_netns(entry["name"])
        if any(e["op"] == "state_dir" for e in entries) or not entries:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def _keep_or_clear(self) -> bool:
        """Under the cluster lock, before `up` creates anything: True when a healthy
        cluster of this size already runs (nothing to do); a stale one is removed; one of
        another size is an error."""
        if self.journal.exists():
            health = self._health()
            if health == "running":
                have = len(load_plan(self.state_dir).nodes)
                if have == self.node_count:
                    self.progress(f"cluster {self.cluster} is already up ({have} "
                                  f"{self.machines})")
                    return True
                raise ClusterError(
                    f"cluster {self.cluster} is up with {have} {self.machines}, not "
                    f"{self.node_count}; run `cni-harness cluster down --name "
                    f"{self.cluster}` first")
            self.progress(f"cluster {self.cluster}: removing a stale cluster ({health})")
            self._teardown()
        return False

    def _create_outside(self, plan: ClusterPlan, **record: Any) -> str:
        """The first steps of every `up`: the state dir (journaled), `cluster.json` (the
        plan's name and size, the provider, `record`), the harness's ssh key, and the
        fabric, client and world namespaces (each journaled before it is made). Returns
        the public key the nodes must accept."""
        os.makedirs(self.state_dir, exist_ok=True)
        self.journal.record("state_dir", path=self.state_dir)
        write_atomic(os.path.join(self.state_dir, "cluster.json"), json.dumps(
            {"name": plan.name, "nodes": len(plan.nodes), "provider": self.name, **record,
             "created": time.time()}) + "\n")
        pubkey = ensure_key(self.ssh_key_path, f"cni-harness@{plan.name}")
        self.progress(f"cluster {plan.name}: fabric, client, world")
        for netns, build in ((plan.fabric_netns, build_fabric), (plan.client_netns, build_client),
                             (plan.world_netns, build_world)):
            self.journal.record("netns", name=netns)
            build(plan)
        return pubkey

    def _check_no_clash(self, plan: ClusterPlan) -> None:
        clash = sorted(set(self._owned_netns(plan)) & list_netns())
        if clash:
            raise ClusterError(
                f"network namespaces {', '.join(clash)} exist but are not recorded in "
                f"{self.state_dir}: another cluster or tool owns them; not touching them")

    def down(self) -> None:
        with cluster_lock(self.cluster):
            if not self.journal.exists() and not os.path.isdir(self.state_dir):
                self.progress(f"cluster {self.cluster}: nothing to remove")
                return
            self._teardown()
            self.progress(f"cluster {self.cluster}: removed")

    # ------------------------------------------------------------ fabric source guard

    def set_source_guard(self, enabled: bool) -> None:
        """Turn the fabric's anti-spoofing on or off (see `sourceguard`)."""
        plan = self.plan()
        if plan.fabric_netns not in list_netns():
            raise ClusterError(f"cluster {self.cluster} is not up; run `cni-harness cluster up"
                               f" --name {self.cluster}` first")
        nft(plan.fabric_netns, sourceguard.ruleset(plan) if enabled else sourceguard.removal())
        self.progress(f"cluster {self.cluster}: source guard {'on' if enabled else 'off'}")

    def source_guard(self) -> dict[str, int] | None:
        """Packets the source guard dropped per node, or None when it is off."""
        netns = self.plan().fabric_netns
        if netns not in list_netns():
            return None
        try:
            res = nft(netns, None, "-j", "list", "table", "bridge", sourceguard.TABLE)
        except CommandError:
            return None          # no such table: the guard is off
        return sourceguard.parse_drops(res.stdout)

    # ------------------------------------------------------------ inventory and status

    def _write_inventory(self, plan: ClusterPlan, group_vars: dict[str, Any],
                         host_vars: dict[str, dict[str, Any]]) -> None:
        """inventory.yml: the variables every fabric provider sets, then `group_vars`."""
        common = {
            "ansible_user": "root",
            "ansible_python_interpreter": "/usr/bin/python3",
            "ansible_ssh_common_args": f"-F {self.ssh_config_path}",
            "ansible_ssh_pipelining": True,
            "cni_provider": self.name,
            "cni_cluster": plan.name,
            "cni_time_scale": time_scale(),
        }
        nodes = [NodeInfo(n.name, n.ip, n.pod_cidr, dict(n.labels)) for n in plan.nodes]
        write_atomic(self.inventory_path(), render_inventory(nodes, {**common, **group_vars},
                                                             host_vars))

    def _status(self, nodes: list[dict], **extra: Any) -> dict:
        """The status document around the provider's per-node entries."""
        plan = self.plan()
        exists = self.journal.exists()
        return {
            "provider": self.name,
            "cluster": self.cluster,
            "state": self._health() if exists else "absent",
            **extra,
            "stateDir": self.state_dir,
            "inventory": self.inventory_path(),
            "sshConfig": self.ssh_config_path,
            "router": {"netns": plan.fabric_netns, "ip": ROUTER_IP},
            "client": {"netns": plan.client_netns, "ip": CLIENT_IP},
            "world": {"netns": plan.world_netns, "ip": WORLD_IP},
            "nodes": nodes,
        }
