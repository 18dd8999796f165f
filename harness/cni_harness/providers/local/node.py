"""Namespace nodes of the local provider: wiring, disks, and the per-node supervisor.

The supervisor (`python -m cni_harness.providers.local.node --state DIR --node NAME`) is
a node's "hypervisor": it builds the node's network namespace and uplink from the
addressing plan, starts `nodeinit` as PID 1 of fresh mount/UTS/IPC/PID namespaces, and
waits. When the node reboots (nodeinit exits asking for it, the harness sends SIGUSR1, or
the init dies) it kills what is left, deletes the namespace and builds it again from the
node's disk, which gives a fresh network stack, bpffs, /run and boot id like a real reboot.
SIGTERM powers the node off for good (cluster down).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time

from ...state import read_json, write_atomic
from ...timescale import scaled
from ..sshaccess import ensure_key
from .addressing import (
    CLIENT_IP,
    LB_POOL,
    ROUTER_IP,
    WORLD_IP,
    WORLD_ROUTER_IP,
    ClusterPlan,
    NodePlan,
    plan_cluster,
)
from .netns import (
    IP,
    add_netns,
    delete_netns,
    ip_batch,
    kill_and_wait,
    netns_pids,
    run,
    start_time,
    sysctl,
)
from .nodeinit import OVERLAY_DIRS, REBOOT_EXIT

SUPERVISOR_MODULE = "cni_harness.providers.local.node"
INIT_MODULE = "cni_harness.providers.local.nodeinit"
BOOT_TIMEOUT = 60.0
NO_IPV6 = {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"}
ROUTER_SYSCTLS = {"net.ipv4.ip_forward": "1", "net.ipv4.conf.all.rp_filter": "0",
                  "net.ipv4.conf.default.rp_filter": "0", **NO_IPV6}
# The fabric is a plain L2 switch: bridged frames skip netfilter. With br_netfilter in the
# kernel (built in, or loaded by anything on the host) every netns starts with these at 1,
# and each bridged IPv4 packet then pays an IP-level pass (header checks, a per-packet skb
# extension, the IPv4 hooks) that no switch does; the source guard is an nftables bridge
# table and needs none of it.
BRIDGE_NO_NETFILTER = {f"net.bridge.bridge-nf-call-{t}": "0"
                       for t in ("iptables", "ip6tables", "arptables")}
SSHD_CONFIG = """\
# sshd of a cni-harness namespace node (own host key, no PAM, root by key only)
Port 22
ListenAddress 0.0.0.0
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PidFile /run/sshd.pid
AuthorizedKeysFile .ssh/authorized_keys
AcceptEnv LANG LC_*
PrintMotd no
UseDNS no
MaxStartups 100:30:200
MaxSessions 64
Subsystem sftp internal-sftp
"""
SSHD_UNIT = """\
[Unit]
Description=OpenSSH server of this namespace node

[Service]
ExecStart={sshd} -D -e -f /etc/ssh/sshd_config
RuntimeDirectory=sshd
Restart=always
RestartSec=1
"""
NODECTL = """\
#!{python}
# nodectl: control units of this namespace node (written by cni-harness)
import sys

from cni_harness.providers.local.nodeinit import ctl_main

sys.exit(ctl_main())
"""


def node_dir(state_dir: str, node: str) -> str:
    return os.path.join(state_dir, "nodes", node)


def disk_dir(state_dir: str, node: str) -> str:
    return os.path.join(node_dir(state_dir, node), "disk")


def runtime_path(state_dir: str, node: str) -> str:
    return os.path.join(node_dir(state_dir, node), "runtime.json")


def load_plan(state_dir: str) -> ClusterPlan:
    record = read_json(os.path.join(state_dir, "cluster.json"))
    if not record:
        raise FileNotFoundError(f"{state_dir}: no cluster.json")
    return plan_cluster(record["name"], record["nodes"])


# ---------------------------------------------------------------- wiring (fabric side)

def build_fabric(plan: ClusterPlan) -> None:
    """The node network: a bridge acting as router, in its own namespace. The bridge gets a
    fixed MAC: by default it takes the lowest MAC of its ports, so a node's reboot (a new
    port with a random MAC) could change the router's MAC under every neighbour entry that
    points at it, and traffic through the router stops until those entries are probed
    again (tens of seconds)."""
    add_netns(plan.fabric_netns)
    sysctl(plan.fabric_netns, ROUTER_SYSCTLS)
    ip_batch(plan.fabric_netns, ["link set lo up", "link add br0 type bridge",
                                 f"link set br0 address {uplink_mac(ROUTER_IP)}",
                                 "link set br0 up", f"addr add {ROUTER_IP}/24 dev br0"])
    if os.path.isdir("/proc/sys/net/bridge"):   # no br_netfilter in the kernel: nothing to do
        sysctl(plan.fabric_netns, BRIDGE_NO_NETFILTER)


def _attach(plan: ClusterPlan, port: str, netns: str, bridged: bool = True,
            mac: str | None = None) -> None:
    """A veth from the fabric (`port`) to `netns` (`eth0`, with `mac` when given)."""
    address = f" address {mac}" if mac else ""
    cmds = [f"link add {port} type veth peer name eth0{address} netns {netns}"]
    if bridged:
        cmds.append(f"link set {port} master br0")
    cmds.append(f"link set {port} up")
    ip_batch(plan.fabric_netns, cmds)


def build_client(plan: ClusterPlan) -> None:
    """The external client: on the node network, routes the LB pool to node1."""
    add_netns(plan.client_netns)
    sysctl(plan.client_netns, NO_IPV6)
    _attach(plan, "client", plan.client_netns)
    ip_batch(plan.client_netns, [
        "link set lo up", f"addr add {CLIENT_IP}/24 dev eth0", "link set eth0 up",
        f"route add default via {ROUTER_IP}", f"route add {LB_POOL} via {plan.nodes[0].ip}"])


def build_world(plan: ClusterPlan) -> None:
    """The world server: another subnet behind the fabric router."""
    add_netns(plan.world_netns)
    sysctl(plan.world_netns, NO_IPV6)
    _attach(plan, "world", plan.world_netns, bridged=False)
    ip_batch(plan.fabric_netns, [f"addr add {WORLD_ROUTER_IP}/24 dev world"])
    ip_batch(plan.world_netns, [
        "link set lo up", f"addr add {WORLD_IP}/24 dev eth0", "link set eth0 up",
        f"route add default via {WORLD_ROUTER_IP}"])


def uplink_mac(node_ip: str) -> str:
    """A node's uplink MAC, the same at every boot as a VM's NIC: locally administered,
    from its IP. A new random MAC per boot would leave the other nodes' neighbour entries
    pointing at the old one until they time out (seconds of lost packets after a reboot)."""
    return "02:00:" + ":".join(f"{int(octet):02x}" for octet in node_ip.split("."))


def _remove_stale_port(plan: ClusterPlan, port: str) -> None:
    """The kernel frees a deleted namespace (and the veth ends in it) asynchronously, later
    under load or with tunnel devices inside: the fabric end of the previous boot's uplink
    may still exist. Deleting it takes the whole pair, so the new one can be made."""
    if run([IP, "-n", plan.fabric_netns, "link", "show", port], check=False).returncode == 0:
        run([IP, "-n", plan.fabric_netns, "link", "del", port], check=False)


def build_node_netns(plan: ClusterPlan, node: NodePlan) -> None:
    """A node's network namespace with its uplink eth0 on the fabric."""
    delete_netns(node.netns)
    _remove_stale_port(plan, node.fabric_port)
    add_netns(node.netns)
    sysctl(node.netns, NO_IPV6)
    _attach(plan, node.fabric_port, node.netns, mac=uplink_mac(node.ip))
    ip_batch(node.netns, [
        "link set lo up", f"addr add {node.ip}/24 dev eth0", "link set eth0 up",
        f"route add default via {ROUTER_IP}"])


# ---------------------------------------------------------------- the node's disk

def _write(path: str, text: str, mode: int = 0o644) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_atomic(path, text, mode)


def hosts_file(plan: ClusterPlan) -> str:
    lines = ["127.0.0.1\tlocalhost", f"{ROUTER_IP}\trouter"]
    lines += [f"{n.ip}\t{n.name}" for n in plan.nodes]
    lines += [f"{CLIENT_IP}\tclient", f"{WORLD_IP}\tworld"]
    return "\n".join(lines) + "\n"


def prepare_disk(state_dir: str, plan: ClusterPlan, node: NodePlan, authorized_key: str) -> str:
    """Create a node's disk (overlay upper dirs) with what a first boot needs; returns the
    node's ssh host public key."""
    disk = disk_dir(state_dir, node.name)
    for target in OVERLAY_DIRS:
        layer = os.path.join(disk, target.strip("/"))
        for part in ("upper", "work"):
            os.makedirs(os.path.join(layer, part), exist_ok=True)
        # The merged directory takes its mode from the upper dir (sshd checks /root's).
        st = os.stat(target)
        os.chmod(os.path.join(layer, "upper"), st.st_mode & 0o7777)
    etc = os.path.join(disk, "etc", "upper")
    _write(os.path.join(etc, "hostname"), node.name + "\n")
    _write(os.path.join(etc, "hosts"), hosts_file(plan))
    # No DNS server on the testbed: a local, refused resolver answers at once instead of
    # making every lookup (Ansible fact gathering) wait for a timeout.
    _write(os.path.join(etc, "resolv.conf"), "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    _write(os.path.join(etc, "machine-id"), os.urandom(16).hex() + "\n", 0o444)
    _write(os.path.join(etc, "ssh", "sshd_config"), SSHD_CONFIG)
    sshd = shutil.which("sshd", path="/usr/sbin:/usr/bin:/sbin") or "/usr/sbin/sshd"
    _write(os.path.join(etc, "nodeinit", "units", "sshd.service"), SSHD_UNIT.format(sshd=sshd))
    enabled = os.path.join(etc, "nodeinit", "enabled")
    os.makedirs(enabled, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.symlink("../units/sshd.service", os.path.join(enabled, "sshd.service"))
    host_key = ensure_key(os.path.join(etc, "ssh", "ssh_host_ed25519_key"), node.netns)
    # root's shell start-up files as a fresh machine has them, not the host's (which may
    # put another Python first on PATH for every ssh command).
    for name in (".bashrc", ".profile"):
        skel = os.path.join("/etc/skel", name)
        if os.path.exists(skel):
            shutil.copyfile(skel, os.path.join(disk, "root", "upper", name))
    ssh_dir = os.path.join(disk, "root", "upper", ".ssh")
    os.makedirs(ssh_dir, mode=0o700, exist_ok=True)
    _write(os.path.join(ssh_dir, "authorized_keys"), authorized_key.strip() + "\n", 0o600)
    _write(os.path.join(disk, "usr", "upper", "local", "sbin", "nodectl"),
           NODECTL.format(python=sys.executable), 0o755)
    return host_key


# ---------------------------------------------------------------- the supervisor

class Supervisor:
    """Runs one node through boots until told to stop."""

    def __init__(self, state_dir: str, node_name: str):
        self.state_dir = state_dir
        self.plan = load_plan(state_dir)
        self.node = self.plan.node(node_name)
        self.requests: list[str] = []
        self.generation = 0
        self.console = os.path.join(node_dir(state_dir, node_name), "console.log")

    def write_runtime(self, **fields) -> None:
        doc = {"node": self.node.name, "supervisorPid": os.getpid(),
               "generation": self.generation, "updated": time.time(), **fields}
        write_atomic(runtime_path(self.state_dir, self.node.name), json.dumps(doc, indent=2))

    def _on_signal(self, signum: int, _frame) -> None:
        self.requests.append({signal.SIGTERM: "stop", signal.SIGINT: "stop",
                              signal.SIGUSR1: "reboot", signal.SIGUSR2: "reset"}[signum])

    def boot(self) -> tuple[subprocess.Popen, int, str]:
        """Build the namespaces and start nodeinit; returns (process, init pid, boot id)."""
        build_node_netns(self.plan, self.node)
        read_fd, write_fd = os.pipe()
        argv = ["nsenter", f"--net=/run/netns/{self.node.netns}", "--",
                "unshare", "--mount", "--uts", "--ipc", "--pid", "--fork", "--kill-child",
                "--propagation", "private", "--",
                sys.executable, "-m", INIT_MODULE, "--hostname", self.node.name,
                "--disk", disk_dir(self.state_dir, self.node.name),
                "--report-fd", str(write_fd)]
        with open(self.console, "ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    pass_fds=(write_fd,), cwd="/")
        os.close(write_fd)
        init_pid, boot_id, buf = 0, "", b""
        deadline = time.monotonic() + scaled(BOOT_TIMEOUT)   # emulated guests: longer
        try:
            # nsenter/unshare keep the pipe's write end open: poll, do not wait for EOF.
            while not boot_id and time.monotonic() < deadline and proc.poll() is None:
                if select.select([read_fd], [], [], 0.2)[0]:
                    buf += os.read(read_fd, 4096)
                for line in buf.decode().splitlines():
                    word, _, value = line.partition(" ")
                    if word == "pid":
                        init_pid = int(value)
                    elif word == "booted":
                        boot_id = value
        finally:
            os.close(read_fd)
        if not boot_id:
            self.halt(proc, init_pid, graceful=False)
            raise RuntimeError(f"{self.node.name}: nodeinit did not boot; see {self.console}")
        return proc, init_pid, boot_id

    def halt(self, proc: subprocess.Popen, init_pid: int, graceful: bool) -> int:
        """Stop the node's init (gracefully or not) and everything in its namespace."""
        if proc.poll() is None:
            if graceful and init_pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(init_pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=15)
            if proc.poll() is None:
                if init_pid:
                    kill_and_wait([init_pid])
                proc.kill()
        code = proc.wait()
        kill_and_wait(netns_pids(self.node.netns))
        delete_netns(self.node.netns)
        return code

    def wait(self, proc: subprocess.Popen, wakeup_r: int) -> str:
        """Block until the init exits ("exited") or a request arrives."""
        pidfd = os.pidfd_open(proc.pid)
        try:
            while not self.requests:
                ready, _, _ = select.select([pidfd, wakeup_r], [], [], 5)
                if wakeup_r in ready:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wakeup_r, 64)
                if pidfd in ready:
                    return "exited"
            return self.requests.pop(0)
        finally:
            os.close(pidfd)

    def run(self) -> int:
        wakeup_r, wakeup_w = os.pipe()
        os.set_blocking(wakeup_r, False)
        os.set_blocking(wakeup_w, False)
        signal.set_wakeup_fd(wakeup_w)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(sig, self._on_signal)
        while True:
            self.write_runtime(state="booting")
            try:
                proc, init_pid, boot_id = self.boot()
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                self.write_runtime(state="failed", error=str(exc))
                delete_netns(self.node.netns)
                return 1
            self.write_runtime(state="running", initPid=init_pid,
                               initStartTime=start_time(init_pid), bootId=boot_id,
                               netns=self.node.netns)
            event = self.wait(proc, wakeup_r)
            if event == "stop":
                self.write_runtime(state="stopping")
                self.halt(proc, init_pid, graceful=True)
                self.write_runtime(state="stopped")
                return 0
            code = self.halt(proc, init_pid, graceful=(event == "reboot"))
            if event == "exited" and code == 0:       # powered off from inside
                self.write_runtime(state="poweroff")
                return 0
            if event == "exited" and code != REBOOT_EXIT:
                print(f"node {self.node.name}: init exited with {code}; rebooting",
                      file=sys.stderr, flush=True)
            self.generation += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="localnode", description=__doc__)
    parser.add_argument("--state", required=True, help="the cluster's state directory")
    parser.add_argument("--node", required=True)
    args = parser.parse_args(argv)
    return Supervisor(os.path.abspath(args.state), args.node).run()


if __name__ == "__main__":
    sys.exit(main())
