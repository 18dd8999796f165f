"""The vm provider: a cluster of full Debian systems under qemu (real systemd, real apt,
real reboots), with the local provider's network around them.

What `up` builds:
- the local provider's fabric, client and world namespaces, built by its own functions
  (`providers/local/node.py`), so addresses and names are identical (`plan()` returns the
  same `ClusterPlan`);
- per node: a tap named like the local node's fabric port on the fabric bridge, a
  copy-on-write overlay of the cached image (`image.py`), an identity tar
  (`machine.identity_files`) and a qemu process started inside the fabric namespace;
- under the state dir: `ssh_config` (ProxyCommand `nsenter --net=<fabric> nc <node ip>
  22`: the root namespace gets no address, route or link of the testbed), `known_hosts`
  with each node's host key (made here, given to the node at boot) and `inventory.yml`
  (systemd init, packages managed, the reboot module's default reboot).

Crash safety as in the local provider: every namespace and VM is journaled before it is
made; `down` replays the journal (also after `kill -9` of `up`): it kills the VMs by the
pids their pidfiles give (checked to be those VMs), deletes the namespaces (which kills
whatever else ran in them) and the state dir with the overlays.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from typing import Callable, Sequence

from ...matrix.matrix import load_matrix
from ...state import cluster_lock, read_json, write_atomic
from ...timescale import ENV as TIME_SCALE_ENV
from ...timescale import TCG_SCALE, time_scale
from ..base import (
    Availability,
    NodeDown,
    ProviderUnavailable,
    put_file_script,
    run_text,
)
from ..local.addressing import (
    DEFAULT_CLUSTER,
    DEFAULT_NODES,
    ClusterPlan,
    plan_cluster,
)
from ..local.fabric import ClusterError, FabricProvider, progress_none
from ..local.node import uplink_mac
from ..qemu.provider import kvm_usable
from ..sshaccess import SshHost, ensure_key, write_ssh_access
from . import image as vm_image
from . import machine

DEFAULT_OS_ENTRY = "debian-12"
# Native-speed seconds; stretched by the time scale (a TCG boot took 81-320 s here at load
# 4-6, several VMs booting at once share the cores).
BOOT_TIMEOUT = 90.0
REBOOT_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0
SSH_CONNECT_TIMEOUT = 10
SSH_FAILED = 255          # ssh's own exit status for a connection it could not make or keep
REQUIRED_TOOLS = {
    machine.QEMU: "apt-get install qemu-system-x86",
    machine.QEMU_IMG: "apt-get install qemu-utils",
    "mkfs.ext4": "apt-get install e2fsprogs",
    "ssh": "apt-get install openssh-client",
    "ssh-keygen": "apt-get install openssh-client",
    "nc": "apt-get install netcat-openbsd",
    "nsenter": "apt-get install util-linux",
    "ip": "apt-get install iproute2",
}


def _which(tool: str) -> str | None:
    return shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


class VmProvider(FabricProvider):
    """Full Debian VMs under qemu on the local provider's fabric (module docstring)."""

    name = "vm"
    machines = "VMs"

    def __init__(self, cluster: str = DEFAULT_CLUSTER, nodes: int = DEFAULT_NODES,
                 os_entry: str = DEFAULT_OS_ENTRY,
                 progress: Callable[[str], None] = progress_none,
                 resources: machine.VmResources | None = None):
        super().__init__(cluster, nodes, progress)
        self.os_entry = os_entry
        self.resources = resources

    # ------------------------------------------------------------ paths and plan

    def files(self, node: str) -> machine.VmFiles:
        return machine.VmFiles(os.path.join(self.state_dir, "nodes", node))

    def image_spec(self) -> vm_image.ImageSpec:
        return vm_image.spec_for(load_matrix().os_entry(self.os_entry))

    # ------------------------------------------------------------ availability

    @classmethod
    def availability(cls) -> Availability:
        missing = [f"{tool} ({hint})" for tool, hint in REQUIRED_TOOLS.items()
                   if not _which(tool)]
        if not _which("mmdebstrap") and not _which("apt-get"):
            missing.append("mmdebstrap (apt-get install mmdebstrap), or apt-get to install it")
        if os.geteuid() != 0:
            missing.append("root (network namespaces, taps, image bake)")
        if not os.access("/dev/net/tun", os.R_OK | os.W_OK):
            missing.append("/dev/net/tun (the VMs' taps)")
        return Availability(not missing, tuple(missing))

    # ------------------------------------------------------------ time scale

    def time_scale(self) -> float:
        """The harness's time scale; when the environment gives none and the VMs are
        emulated (no usable KVM), TCG's factor."""
        if os.environ.get(TIME_SCALE_ENV, "").strip():
            return time_scale()
        return 1.0 if self._resources().kvm else TCG_SCALE

    def _resources(self) -> machine.VmResources:
        """The VMs' resources; whether they run under KVM is what `up` recorded, else a
        probe (`kvm_usable`, tens of seconds, once per process)."""
        if self.resources is None:
            recorded = read_json(os.path.join(self.state_dir, "cluster.json"), {}) or {}
            kvm = recorded["kvm"] if "kvm" in recorded else kvm_usable()[0]
            self.resources = machine.VmResources(kvm=bool(kvm))
        return self.resources

    # ------------------------------------------------------------ up / down

    def up(self) -> None:
        avail = self.availability()
        if not avail.ok:
            raise ProviderUnavailable(f"vm provider: {avail.reason()}")
        plan = plan_cluster(self.cluster, self.node_count)
        spec = self.image_spec()
        with cluster_lock(self.cluster):
            if self._keep_or_clear():
                return
            self._check_no_clash(plan)
            image = vm_image.ensure_image(spec, progress=self.progress)
            started = time.monotonic()
            self._create(plan, image)
            self.progress(f"cluster {self.cluster}: {len(plan.nodes)} VMs up in "
                          f"{time.monotonic() - started:.0f} s")

    def _create(self, plan: ClusterPlan, image: vm_image.BakedImage) -> None:
        res = self._resources()
        scale = self.time_scale()
        pubkey = self._create_outside(plan, osEntry=self.os_entry, image=image.key,
                                      kvm=res.kvm, timeScale=scale)
        host_keys = {}
        for node in plan.nodes:
            files = self.files(node.name)
            os.makedirs(files.directory, exist_ok=True)
            vm_name = machine.vm_name(plan.name, node.name)
            public = ensure_key(files.host_key, vm_name)
            with open(files.host_key, encoding="ascii") as fh:
                private = fh.read()
            host_keys[node.name] = public
            write_atomic(files.identity, machine.identity_tar(machine.identity_files(
                plan, node, pubkey, (private, public))))
            subprocess.run(machine.overlay_argv(image, files.overlay), check=True,
                           capture_output=True)
            machine.create_tap(plan.fabric_netns, node.fabric_port)
            self.journal.record("vm", node=node.name, name=vm_name, pidfile=files.pidfile)
        self._write_access_files(plan, host_keys, scale)
        self.progress(f"cluster {plan.name}: booting {len(plan.nodes)} VMs "
                      f"({'KVM' if res.kvm else 'TCG'}, kernel {image.kernel_release})")
        for node in plan.nodes:
            self._launch(plan, image, node.name)
        self._wait_booted([n.name for n in plan.nodes], {}, BOOT_TIMEOUT * scale)
        self.journal.record("up_complete")

    def _launch(self, plan: ClusterPlan, image: vm_image.BakedImage, node: str) -> int:
        info = plan.node(node)
        argv = machine.qemu_argv(machine.vm_name(plan.name, node), image, self.files(node),
                                 info.fabric_port, uplink_mac(info.ip), self._resources())
        return machine.launch(plan.fabric_netns, argv, self.files(node))

    def _owned_netns(self, plan: ClusterPlan) -> tuple[str, ...]:
        # Fabric, client and world: the nodes are VMs, not namespaces.
        return (plan.fabric_netns, plan.client_netns, plan.world_netns)

    def _stop_nodes(self, entries: list[dict]) -> None:
        # By pid, checked to be that VM; the fabric's deletion then takes the taps and
        # anything else left in it (a qemu whose pidfile was never written).
        for entry in entries:
            if entry["op"] == "vm":
                machine.kill_vm(machine.VmFiles(os.path.dirname(entry["pidfile"])),
                                entry["name"])

    def _node_running(self, node: str) -> bool:
        return self.vm_pid(node) is not None

    def leftovers(self) -> list[str]:
        """What of this cluster still exists on the host, described: each node's qemu,
        found by its `-name` among all processes (not through the pidfile or the journal,
        which `down` removes), and the state dir. Empty once `down` has done its work."""
        left = [f"VM {name} (pid {pid})" for name in
                (machine.vm_name(self.cluster, n.name) for n in self.plan().nodes)
                for pid in machine.vm_processes(name)]
        if os.path.exists(self.state_dir):
            left.append(f"state dir {self.state_dir}")
        return left

    # ------------------------------------------------------------ running commands

    def vm_pid(self, node: str) -> int | None:
        """The pid of the node's qemu, None when it is not running."""
        return machine.qemu_pid(self.files(node), machine.vm_name(self.cluster, node))

    def ssh_argv(self, node: str, connect_timeout: int = SSH_CONNECT_TIMEOUT) -> list[str]:
        """ssh to a node through the cluster's ssh_config (no command yet)."""
        self.plan().node(node)        # KeyError naming the nodes for an unknown one
        return ["ssh", "-F", self.ssh_config_path, "-o", "BatchMode=yes",
                "-o", f"ConnectTimeout={connect_timeout}", node]

    def exec_command(self, node: str, argv: Sequence[str]) -> list[str]:
        """The host command line that runs `argv` as root on a node (ssh), or in the
        client, world or router namespace."""
        external = self.external_netns().get(node)
        if external:
            return ["nsenter", f"--net=/run/netns/{external}", "--", *argv]
        return [*self.ssh_argv(node), "--", shlex.join(list(argv))]

    def exec(self, node: str, argv: Sequence[str], *, input: str | bytes | None = None,
             timeout: float | None = 120, check: bool = True) -> subprocess.CompletedProcess:
        external = node in self.external_netns()
        if not external and self.vm_pid(node) is None:
            raise NodeDown(f"node {node} of cluster {self.cluster} is not running")
        seconds = None if timeout is None else timeout * self.time_scale()
        res = run_text(self.exec_command(node, argv), input, seconds, False)
        if res.returncode == SSH_FAILED and not external:
            # ssh itself failed, typically through a shared connection to a VM that has
            # rebooted since: end that master and try once more on a fresh connection.
            self.drop_connection(node)
            res = run_text(self.exec_command(node, argv), input, seconds, False)
        if check and res.returncode != 0:
            raise subprocess.CalledProcessError(res.returncode, list(argv), res.stdout,
                                                res.stderr)
        return res

    def drop_connection(self, node: str) -> None:
        """End the shared ssh connection to a node (the next ssh makes a new one)."""
        subprocess.run([*self.ssh_argv(node)[:-1], "-O", "exit", node],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=30, check=False)

    def put_file(self, node: str, path: str, data: bytes, mode: int = 0o644) -> None:
        self.exec(node, ["sh", "-c", put_file_script(path, mode)], input=data)

    # ------------------------------------------------------------ boots

    def boot_id(self, node: str) -> str:
        """The node kernel's boot id (new at every boot)."""
        return self.exec(node, ["cat", "/proc/sys/kernel/random/boot_id"],
                         timeout=30).stdout.strip()

    def generation(self, node: str) -> int:
        """How many times the node has booted again since `up` (the identity unit records
        each boot's id on the node's disk)."""
        res = self.exec(node, ["cat", vm_image.BOOTS_FILE], timeout=30)
        return max(0, len(res.stdout.split()) - 1)

    def _booted(self, node: str, not_boot: str | None) -> bool:
        """Whether the node answers over ssh with another boot id than `not_boot` and its
        boot has finished (systemd's start-up jobs done: sshd, the agent if enabled)."""
        if self.vm_pid(node) is None:
            raise NodeDown(f"node {node}: its VM is not running; see "
                           f"{self.files(node).console}")
        script = ("cat /proc/sys/kernel/random/boot_id; "
                  "systemctl is-system-running --wait 2>/dev/null || true")
        try:
            res = subprocess.run([*self.ssh_argv(node, 5), script], capture_output=True,
                                 text=True, timeout=120 * self.time_scale(), check=False)
        except subprocess.TimeoutExpired:
            return False
        lines = res.stdout.split()
        return (res.returncode == 0 and len(lines) == 2 and lines[0] != not_boot
                and lines[1] in ("running", "degraded"))

    def _wait_booted(self, nodes: Sequence[str], old_boot: dict[str, str],
                     timeout: float) -> None:
        started = time.monotonic()
        deadline = started + timeout
        pending = list(nodes)
        while pending:
            for node in pending[:]:
                if self._booted(node, old_boot.get(node)):
                    pending.remove(node)
                    self.progress(f"node {node}: booted, ssh answers "
                                  f"({time.monotonic() - started:.0f} s)")
            if pending and time.monotonic() > deadline:
                raise ClusterError(f"VMs {', '.join(pending)} did not boot within "
                                   f"{timeout:.0f} s; see {self.state_dir}/nodes/*/console.log")
            if pending:
                time.sleep(2)

    def wait_booted(self, node: str, old_boot_id: str | None,
                    timeout: float = REBOOT_TIMEOUT) -> None:
        """Wait until the node runs a boot other than `old_boot_id`, its start-up done."""
        self._wait_booted([node], {node: old_boot_id or ""}, timeout * self.time_scale())

    def reboot(self, node: str) -> None:
        """A real reboot (`systemctl reboot` in the guest: the kernel boots again, with a
        new boot id); returns once the node's boot has finished."""
        old = self.boot_id(node)
        self._order(node, "reboot")
        self.wait_booted(node, old)

    def _order(self, node: str, verb: str) -> None:
        """`systemctl VERB` (reboot, poweroff) in the guest, once: not through `exec`,
        which would try again when the connection drops, as it does when the guest goes
        down. Then the shared connection, about to die with it, is ended."""
        if self.vm_pid(node) is None:
            raise NodeDown(f"node {node} of cluster {self.cluster} is not running")
        run_text(self.exec_command(node, ["systemctl", verb]), None, 30 * self.time_scale(),
                 False)
        self.drop_connection(node)

    def stop_node(self, node: str, timeout: float = STOP_TIMEOUT) -> None:
        """Power a node off (`systemctl poweroff`: qemu exits); its disk stays."""
        files, name = self.files(node), machine.vm_name(self.cluster, node)
        self._order(node, "poweroff")
        if not machine.wait_exit(files, name, timeout * self.time_scale()):
            machine.kill_vm(files, name, graceful_seconds=10)

    def start_node(self, node: str, timeout: float = BOOT_TIMEOUT) -> None:
        """Boot a stopped node again from its disk."""
        if self.vm_pid(node) is not None:
            raise ClusterError(f"node {node} is running; only a stopped node can be started")
        plan = self.plan()
        with cluster_lock(self.cluster):
            key = read_json(os.path.join(self.state_dir, "cluster.json"), {}).get("image", "")
            image = vm_image.load_image(os.path.join(vm_image.cache_root(), key))
            if image is None:
                raise ClusterError(f"image {key} is gone from {vm_image.cache_root()}")
            self._launch(plan, image, node)
        self._wait_booted([node], {}, timeout * self.time_scale())

    # ------------------------------------------------------------ access files

    def _write_access_files(self, plan: ClusterPlan, host_keys: dict[str, str],
                            scale: float) -> None:
        # stderr away: with connection sharing the proxy outlives the first ssh
        # (as the master's), and must not hold that ssh's stderr pipe open meanwhile.
        proxy = f"nsenter --net=/run/netns/{plan.fabric_netns} nc %h %p 2>/dev/null"
        hosts = [SshHost(n.name, n.netns, n.ip, proxy, host_keys[n.name]) for n in plan.nodes]
        # One connection per node carries every command: a new ssh handshake costs
        # emulated CPU seconds on a TCG guest.
        sharing = [f"ControlPath {os.path.join(self.state_dir, 'ssh', 'cm-%C')}",
                   "ControlMaster auto", "ControlPersist 120",
                   # A master whose VM went away (reboot, poweroff) is noticed and ends.
                   "ServerAliveInterval 5", "ServerAliveCountMax 4"]
        write_ssh_access(self.ssh_config_path, self.known_hosts_path, self.ssh_key_path, hosts,
                         sharing)
        self._write_inventory(plan, {
            "cni_os_entry": self.os_entry,
            "cni_cilium_init": "systemd",
            # A real apt run against the baked image, which holds every package already.
            "cni_cilium_manage_packages": True,
            "cni_reboot_command": "",           # the reboot module's own (shutdown -r)
            "cni_boot_time_command": "cat /proc/sys/kernel/random/boot_id",
            "cni_time_scale": scale,
        }, {n.name: {"ansible_host": n.name} for n in plan.nodes})

    # ------------------------------------------------------------ status

    def status(self) -> dict:
        exists = self.journal.exists()
        nodes = []
        for node in self.plan().nodes:
            pid = self.vm_pid(node.name) if exists else None
            nodes.append({"name": node.name, "ip": node.ip, "podCIDR": node.pod_cidr,
                          "labels": dict(node.labels), "state": "running" if pid else
                          ("stopped" if exists else "absent"), "qemuPid": pid,
                          "console": self.files(node.name).console})
        return self._status(nodes, osEntry=self.os_entry)
