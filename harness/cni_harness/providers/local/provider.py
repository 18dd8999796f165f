"""The local provider: a cluster of namespace nodes on this kernel, no VMs.

What `up` builds (names from `cni_harness.providers.local.addressing`):

- `<cluster>-fabric`: a bridge `br0` routing the node network 10.99.0.0/24 and the world
  subnet; every other namespace hangs off it by a veth;
- `<cluster>-client` (10.99.0.100) and `<cluster>-world` (203.0.113.10): external hosts;
- `<cluster>-nodeN`: one per node, uplink `eth0`, run by a supervisor process
  (`providers/localnode.py`) whose `nodeinit` is PID 1 of the node's own mount, UTS, IPC
  and PID namespaces, with the node's disk as overlays and one sshd per node;
- under the state dir: `inventory.yml` and `ssh_config` reaching the nodes through a
  ProxyCommand that enters the node's namespace, so the root namespace gets no address,
  route or link of the testbed.

Crash safety: each namespace and supervisor is journaled before it is created; `down`
replays the journal (also after `kill -9` of `up`) and removes exactly that.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from typing import Callable, Sequence

from ...state import cluster_lock, read_json
from ...timescale import scaled
from ..base import Availability, NodeDown, ProviderUnavailable
from ..sshaccess import SshHost, write_ssh_access
from .addressing import (
    DEFAULT_CLUSTER,
    DEFAULT_NODES,
    ClusterPlan,
    plan_cluster,
)
from .fabric import ClusterError, FabricProvider, progress_none
from .netns import (
    find_processes,
    kill_and_wait,
    pid_alive,
    start_time,
)
from .node import (
    SUPERVISOR_MODULE,
    prepare_disk,
    runtime_path,
)
from .nodeinit import BASE_ENV

REQUIRED_TOOLS = ("ip", "nsenter", "unshare", "setsid", "sysctl", "sshd", "ssh", "ssh-keygen",
                  "nc")
UP_TIMEOUT = 90.0
REBOOT_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0


class LocalProvider(FabricProvider):
    """Namespace nodes on this kernel (see the module docstring)."""

    name = "local"
    shares_host_files = True     # nodes see the host's files below their overlays

    def __init__(self, cluster: str = DEFAULT_CLUSTER, nodes: int = DEFAULT_NODES,
                 progress: Callable[[str], None] = progress_none):
        super().__init__(cluster, nodes, progress)

    # ------------------------------------------------------------ availability

    @classmethod
    def availability(cls) -> Availability:
        missing = [f"{tool} (PATH)" for tool in REQUIRED_TOOLS
                   if not shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")]
        if os.geteuid() != 0:
            missing.append("root (namespaces, mounts)")
        try:
            with open("/proc/filesystems", encoding="ascii") as fh:
                fs = fh.read()
        except OSError:
            fs = ""
        for needed in ("overlay", "bpf"):
            if needed not in fs.split():
                missing.append(f"{needed} file system in the kernel")
        return Availability(not missing, tuple(missing))

    # ------------------------------------------------------------ up / down

    def up(self) -> None:
        plan = plan_cluster(self.cluster, self.node_count)
        avail = self.availability()
        if not avail.ok:
            raise ProviderUnavailable(f"local provider: {avail.reason()}")
        with cluster_lock(self.cluster):
            if self._keep_or_clear():
                return
            self._check_no_clash(plan)
            started = time.monotonic()
            self._create(plan)
            self.progress(f"cluster {self.cluster}: {len(plan.nodes)} nodes up in "
                          f"{time.monotonic() - started:.2f} s")

    def _create(self, plan: ClusterPlan) -> None:
        pubkey = self._create_outside(plan)
        host_keys = {}
        for node in plan.nodes:
            host_keys[node.name] = prepare_disk(self.state_dir, plan, node, pubkey)
        self.progress(f"cluster {plan.name}: booting {len(plan.nodes)} nodes")
        for node in plan.nodes:
            self.journal.record("netns", name=node.netns)
            self.journal.record("supervisor", node=node.name)
            self._spawn_supervisor(node.name)
        self._write_access_files(plan, host_keys)
        self._wait_running([n.name for n in plan.nodes], {}, scaled(UP_TIMEOUT))
        self.journal.record("up_complete")

    def _spawn_supervisor(self, node: str) -> None:
        log = os.path.join(self.state_dir, "nodes", node, "supervisor.log")
        with open(log, "ab") as fh:
            # setsid -f: the supervisor outlives this process and is nobody's zombie.
            subprocess.run(["setsid", "-f", sys.executable, "-m", SUPERVISOR_MODULE,
                            "--state", self.state_dir, "--node", node],
                           stdin=subprocess.DEVNULL, stdout=fh, stderr=fh, cwd="/", check=True)

    def _wait_running(self, nodes: Sequence[str], after_generation: dict[str, int],
                      timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = list(nodes)
        while pending:
            for node in pending[:]:
                rt = read_json(runtime_path(self.state_dir, node), {})
                if rt.get("state") == "failed":
                    raise ClusterError(f"node {node} failed to boot: {rt.get('error')}")
                if rt.get("state") == "running" and \
                        rt.get("generation", 0) > after_generation.get(node, -1):
                    pending.remove(node)
            if pending and time.monotonic() > deadline:
                raise ClusterError(f"nodes {', '.join(pending)} did not boot within "
                                   f"{timeout:.0f} s; see {self.state_dir}/nodes/*/console.log")
            if pending:
                time.sleep(0.02)

    def _supervisors(self) -> list[int]:
        return find_processes(SUPERVISOR_MODULE, "--state", self.state_dir)

    def _stop_nodes(self, entries: list[dict]) -> None:
        sups = self._supervisors()
        # SIGTERM: each supervisor stops its node's services and deletes its namespace.
        if sups and not kill_and_wait(sups, signal.SIGTERM, STOP_TIMEOUT):
            kill_and_wait(sups, signal.SIGKILL)

    def _node_running(self, node: str) -> bool:
        return self._node_state(node)[0] == "running"

    # ------------------------------------------------------------ nodes

    def _node_state(self, node: str) -> tuple[str, dict]:
        rt = read_json(runtime_path(self.state_dir, node), {})
        state = rt.get("state", "absent")
        if state == "running":
            pid = rt.get("initPid", 0)
            if not pid or start_time(pid) != rt.get("initStartTime"):
                state = "dead"
            elif not pid_alive(rt.get("supervisorPid", 0)):
                state = "unsupervised"
        return state, rt

    def init_pid(self, node: str) -> int:
        """The host pid of the node's init, checked to be the same process."""
        self.plan().node(node)
        state, rt = self._node_state(node)
        if state not in ("running", "unsupervised"):
            raise NodeDown(f"node {node} of cluster {self.cluster} is not running ({state})")
        return int(rt["initPid"])

    def exec_command(self, node: str, argv: Sequence[str]) -> list[str]:
        """The host command line that runs `argv` as root inside a node (or in the client,
        world or router namespace: those share the host's file system)."""
        env = [f"{k}={v}" for k, v in BASE_ENV.items()]
        external = self.external_netns().get(node)
        if external:
            return ["nsenter", f"--net=/run/netns/{external}", "--", "env", "-i", *env, *argv]
        return ["nsenter", "-t", str(self.init_pid(node)), "-m", "-u", "-i", "-n", "-p",
                "--", "env", "-i", *env, *argv]

    def exec(self, node: str, argv: Sequence[str], *, input: str | bytes | None = None,
             timeout: float | None = 120, check: bool = True) -> subprocess.CompletedProcess:
        data = input.encode() if isinstance(input, str) else input
        res = subprocess.run(self.exec_command(node, argv), input=data, capture_output=True,
                             timeout=None if timeout is None else scaled(timeout), check=False)
        out = res.stdout.decode(errors="replace")
        err = res.stderr.decode(errors="replace")
        if check and res.returncode != 0:
            raise subprocess.CalledProcessError(res.returncode, list(argv), out, err)
        return subprocess.CompletedProcess(list(argv), res.returncode, out, err)

    def put_file(self, node: str, path: str, data: bytes, mode: int = 0o644) -> None:
        if not path.startswith("/"):
            raise ValueError(f"put_file: path must be absolute, got {path!r}")
        tmp = f"{path}.tmp.{os.getpid()}"
        script = (f"mkdir -p {shlex.quote(os.path.dirname(path))} && cat > {shlex.quote(tmp)}"
                  f" && chmod {mode:o} {shlex.quote(tmp)} && mv -f {shlex.quote(tmp)} "
                  f"{shlex.quote(path)}")
        self.exec(node, ["sh", "-c", script], input=data)

    def boot_id(self, node: str) -> str:
        return self._node_state(node)[1].get("bootId", "")

    def generation(self, node: str) -> int:
        """How many times the node has rebooted since `up`."""
        return int(self._node_state(node)[1].get("generation", 0))

    def wait_booted(self, node: str, after_generation: int, timeout: float = REBOOT_TIMEOUT
                    ) -> None:
        """Wait until a reboot (by any means, e.g. `nodectl reboot` inside) has completed."""
        self._wait_running([node], {node: after_generation}, scaled(timeout))

    def reboot(self, node: str, hard: bool = False) -> None:
        """Reboot a node: its processes are killed, its namespaces rebuilt from its disk,
        and its boot sequence (sshd, then enabled units such as the agent) runs again.
        `hard` kills everything at once instead of stopping services first."""
        self.plan().node(node)
        state, rt = self._node_state(node)
        sup = rt.get("supervisorPid", 0)
        if state not in ("running", "dead") or sup not in self._supervisors():
            raise NodeDown(f"node {node} cannot be rebooted: it is {state} without a supervisor")
        generation = rt.get("generation", 0)
        os.kill(sup, signal.SIGUSR2 if hard else signal.SIGUSR1)
        self.wait_booted(node, generation)

    def stop_node(self, node: str, timeout: float = STOP_TIMEOUT) -> None:
        """Shut a node down: its services stop, its processes and namespaces go, its disk
        stays (a powered-off machine). `start_node` boots it again."""
        self.plan().node(node)
        state, rt = self._node_state(node)
        sup = rt.get("supervisorPid", 0)
        if state != "running" or sup not in self._supervisors():
            raise NodeDown(f"node {node} cannot be stopped: it is {state}")
        os.kill(sup, signal.SIGTERM)
        deadline = time.monotonic() + scaled(timeout)
        while pid_alive(sup) or self._node_state(node)[0] not in ("stopped", "absent"):
            if time.monotonic() > deadline:
                raise ClusterError(f"node {node} did not stop within {scaled(timeout):.0f} s; "
                                   f"see {self.state_dir}/nodes/{node}/console.log")
            time.sleep(0.05)

    def start_node(self, node: str, timeout: float = REBOOT_TIMEOUT) -> None:
        """Boot a stopped node (its boot sequence runs as after a reboot)."""
        self.plan().node(node)
        state, _rt = self._node_state(node)
        if state not in ("stopped", "poweroff"):
            raise ClusterError(f"node {node} is {state}; only a stopped node can be started")
        with cluster_lock(self.cluster):
            self._spawn_supervisor(node)
        self._wait_running([node], {node: -1}, scaled(timeout))

    # ------------------------------------------------------------ access files

    def _write_access_files(self, plan: ClusterPlan, host_keys: dict[str, str]) -> None:
        hosts = [SshHost(node.name, node.netns, node.netns,
                         f"nsenter --net=/run/netns/{node.netns} nc 127.0.0.1 %p",
                         host_keys[node.name]) for node in plan.nodes]
        write_ssh_access(self.ssh_config_path, self.known_hosts_path, self.ssh_key_path, hosts)
        self._write_inventory(plan, {
            "cni_cilium_init": "nodeinit",
            "cni_cilium_manage_packages": False,   # the host's /usr (scripts/setup.sh)
            "cni_reboot_command": "/usr/local/sbin/nodectl reboot",
            "cni_boot_time_command": "cat /proc/sys/kernel/random/boot_id",
        }, {n.name: {"ansible_host": n.netns} for n in plan.nodes})

    # ------------------------------------------------------------ status

    def status(self) -> dict:
        plan = self.plan()
        exists = self.journal.exists()
        nodes = []
        for node in plan.nodes:
            state, rt = self._node_state(node.name) if exists else ("absent", {})
            nodes.append({"name": node.name, "ip": node.ip, "podCIDR": node.pod_cidr,
                          "labels": dict(node.labels), "netns": node.netns, "state": state,
                          "bootId": rt.get("bootId"), "initPid": rt.get("initPid"),
                          "boots": rt.get("generation", 0) + 1 if rt else 0})
        guard = self.source_guard() if exists else None
        return self._status(nodes, sourceGuard={"enabled": guard is not None,
                                                "drops": guard or {}})
