"""Pods, run the way a kubelet runs them: a network namespace on the node, CNI ADD through
the node's network configuration, then the process inside; the Pod object goes to the API
server (which derives EndpointSlices from it). Works on any provider (it only uses
`exec`); the records of running pods live under the cluster's state dir (`pods/`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

from cni_cilium.manifests import parse_documents

from ..providers.base import NodeDown
from ..state import cluster_lock, read_json, write_atomic
from ..timescale import scaled
from .apiserver import ApiServer
from .cniruntime import CniCallError, Network, invoke, load_network

POD_IFNAME = "eth0"
POD_LOG_DIR = "/var/log/pods"
POD_RUN_DIR = "/run/cni-harness/pods"
CNI_TRY_AGAIN = 11          # the CNI spec's "try again later" (the agent is not up yet)
RESTART_WAIT = 120.0        # how long a restarted node's pods wait for its agent
_PORT = re.compile(r"^(?:(?P<name>[a-z0-9-]+)=)?(?P<port>\d+)(?::(?P<host>\d+))?"
                   r"(?:@(?P<hostip>[0-9.]+))?(?:/(?P<proto>TCP|UDP|tcp|udp))?$")


class PodError(RuntimeError):
    """A pod cannot be created or removed; the message says why."""


@dataclass
class PodRecord:
    namespace: str
    name: str
    node: str
    command: list[str]
    labels: dict[str, str] = field(default_factory=dict)
    ports: list[dict] = field(default_factory=list)
    host_network: bool = False
    container_id: str = ""
    netns: str = ""                 # the pod's namespace name on the node ("" = host network)
    ip: str = ""
    pid: int = 0
    cni_result: dict | None = None
    created: float = 0.0

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.netns}" if self.netns else ""

    @property
    def log_path(self) -> str:
        return f"{POD_LOG_DIR}/{self.namespace}_{self.name}.log"

    def to_object(self, node_ip: str) -> dict:
        """The Pod object the API server keeps and distributes."""
        container: dict[str, Any] = {"name": "main", "command": list(self.command)}
        if self.ports:
            container["ports"] = [dict(p) for p in self.ports]
        return {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": self.name, "namespace": self.namespace,
                         "labels": dict(self.labels)},
            "spec": {"nodeName": self.node, "hostNetwork": self.host_network,
                     "containers": [container]},
            "status": {"phase": "Running", "hostIP": node_ip,
                       **({"podIP": self.ip} if self.ip else {})},
        }


def parse_port(text: str) -> dict:
    """`[NAME=]PORT[:HOSTPORT][@HOSTIP][/PROTO]` -> a container port."""
    m = _PORT.match(text)
    if not m or (m["hostip"] and not m["host"]):
        raise PodError(f"--port {text!r}: expected [NAME=]PORT[:HOSTPORT][@HOSTIP][/TCP|UDP] "
                       "(HOSTIP only with HOSTPORT)")
    port = {"containerPort": int(m["port"]), "protocol": (m["proto"] or "TCP").upper()}
    if m["name"]:
        port["name"] = m["name"]
    if m["host"]:
        port["hostPort"] = int(m["host"])
    if m["hostip"]:
        port["hostIP"] = m["hostip"]
    return port


def parse_labels(items: Sequence[str]) -> dict[str, str]:
    labels = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise PodError(f"--label {item!r}: expected KEY=VALUE")
        labels[key] = value
    return labels


class PodRuntime:
    """Creates and removes pods on a provider's nodes."""

    def __init__(self, provider: Any, api: ApiServer | None = None,
                 progress: Callable[[str], None] = lambda _m: None):
        self.provider = provider
        self.api = api or ApiServer.for_provider(provider)
        self.dir = os.path.join(provider.state_dir, "pods")
        self.progress = progress

    # ------------------------------------------------------------ records

    def _path(self, namespace: str, name: str) -> str:
        return os.path.join(self.dir, f"{namespace}_{name}.json")

    def get(self, namespace: str, name: str) -> PodRecord | None:
        doc = read_json(self._path(namespace, name))
        return PodRecord(**doc) if doc else None

    def list(self) -> list[PodRecord]:
        if not os.path.isdir(self.dir):
            return []
        out = []
        for fname in sorted(os.listdir(self.dir)):
            if fname.endswith(".json"):
                doc = read_json(os.path.join(self.dir, fname))
                if doc:
                    out.append(PodRecord(**doc))
        return out

    def _save(self, rec: PodRecord) -> None:
        write_atomic(self._path(rec.namespace, rec.name), json.dumps(asdict(rec), indent=2))

    # ------------------------------------------------------------ run / delete

    def run(self, node: str, name: str, command: Sequence[str], namespace: str = "default",
            labels: dict[str, str] | None = None, ports: Sequence[dict] = (),
            host_network: bool = False) -> PodRecord:
        """Create a pod and start its process; returns its record (with its IP)."""
        info = self.provider.node(node)
        if not command:
            raise PodError("a pod needs a command")
        rec = PodRecord(namespace=namespace, name=name, node=node, command=list(command),
                        labels=dict(labels or {}), ports=[dict(p) for p in ports],
                        host_network=host_network, created=time.time())
        problems = parse_documents([rec.to_object(info.ip)], "pod run")[1]
        if problems:
            raise PodError("; ".join(problems))
        with cluster_lock(self.provider.cluster):
            if self.get(namespace, name):
                raise PodError(f"pod {namespace}/{name} exists; delete it first")
            self._start(rec, info.ip, info.pod_cidr)
            self._save(rec)
            self.api.put_pod(rec.to_object(info.ip))
        return rec

    def _start(self, rec: PodRecord, node_ip: str, pod_cidr: str) -> None:
        """Sandbox, network and process for a record (fills container id, netns, ip, pid)."""
        rec.container_id = uuid.uuid4().hex + uuid.uuid4().hex
        if rec.host_network:
            rec.netns, rec.ip = "", node_ip
        else:
            rec.netns = f"cni-{rec.container_id[:12]}"
            self.provider.exec(rec.node, ["sh", "-c", (
                f"ip netns add {rec.netns} && ip -n {rec.netns} link set lo up && "
                f"ip netns exec {rec.netns} sysctl -qw net.ipv6.conf.all.disable_ipv6=1 "
                "net.ipv6.conf.default.disable_ipv6=1")])
            try:
                network = load_network(self.provider, rec.node, pod_cidr)
                result = invoke(self.provider, rec.node, network, "ADD", rec.container_id,
                                rec.netns_path, POD_IFNAME, rec.namespace, rec.name)
            except CniCallError:
                self.provider.exec(rec.node, ["ip", "netns", "delete", rec.netns], check=False)
                raise
            rec.cni_result = result
            rec.ip = (result or {}).get("ips", [{}])[0].get("address", "").split("/")[0]
        try:
            rec.pid = self._spawn(rec)
        except Exception:
            self._teardown(rec)
            raise

    def _start_when_ready(self, rec: PodRecord, node_ip: str, pod_cidr: str) -> None:
        """`_start`, tried again while the plugin says "try again later" (CNI code 11: the
        node's agent is still starting after a boot), as a kubelet retries a sandbox."""
        deadline = time.monotonic() + scaled(RESTART_WAIT)
        while True:
            try:
                return self._start(rec, node_ip, pod_cidr)
            except CniCallError as exc:
                if (exc.error or {}).get("code") != CNI_TRY_AGAIN or \
                        time.monotonic() > deadline:
                    raise
                self.progress(f"pod {rec.namespace}/{rec.name}: {exc}; trying again")
                time.sleep(2)

    def _spawn(self, rec: PodRecord) -> int:
        pidfile = f"{POD_RUN_DIR}/{rec.container_id}.pid"
        enter = ["ip", "netns", "exec", rec.netns] if rec.netns else []
        inner = f'echo $$ > {pidfile}; exec {" ".join(enter)} "$@"'
        script = (
            f"mkdir -p {POD_LOG_DIR} {POD_RUN_DIR} && "
            f"setsid -f sh -c {shlex.quote(inner)} pod-{rec.name} "
            f"{' '.join(shlex.quote(a) for a in rec.command)} "
            f"</dev/null >>{rec.log_path} 2>&1 && "
            f"for i in $(seq 250); do [ -s {pidfile} ] && break; sleep 0.02; done; "
            f"cat {pidfile}")
        res = self.provider.exec(rec.node, ["sh", "-c", script])
        try:
            return int(res.stdout.strip())
        except ValueError as exc:
            raise PodError(f"pod {rec.namespace}/{rec.name}: process did not start: "
                           f"{res.stdout} {res.stderr}") from exc

    def _teardown(self, rec: PodRecord) -> None:
        """Stop the process, CNI DEL, remove the namespace (each step tolerates absence)."""
        if rec.pid:
            self.provider.exec(rec.node, ["sh", "-c", (
                f"kill -TERM -{rec.pid} 2>/dev/null || kill -TERM {rec.pid} 2>/dev/null; "
                f"for i in $(seq 100); do kill -0 {rec.pid} 2>/dev/null || exit 0; "
                f"sleep 0.05; done; kill -KILL -{rec.pid} 2>/dev/null; "
                f"kill -KILL {rec.pid} 2>/dev/null; true")], check=False)
        if rec.netns:
            info = self.provider.node(rec.node)
            network = load_network(self.provider, rec.node, info.pod_cidr)
            invoke(self.provider, rec.node, network, "DEL", rec.container_id, rec.netns_path,
                   POD_IFNAME, rec.namespace, rec.name, prev_result=rec.cni_result)
            self.provider.exec(rec.node, ["ip", "netns", "delete", rec.netns], check=False)
        self.provider.exec(rec.node, ["rm", "-f", f"{POD_RUN_DIR}/{rec.container_id}.pid"],
                           check=False)

    def delete(self, name: str, namespace: str = "default") -> PodRecord:
        with cluster_lock(self.provider.cluster):
            rec = self.get(namespace, name)
            if rec is None:
                raise PodError(f"no pod {namespace}/{name}")
            # A pod on a node that is down died with it; its lease is reclaimed as stale.
            with contextlib.suppress(NodeDown):
                self._teardown(rec)
            os.unlink(self._path(namespace, name))
            self.api.remove_pod(namespace, name)
        return rec

    # ------------------------------------------------------------ state

    def running(self, records: Sequence[PodRecord]) -> dict[str, bool]:
        """Whether each pod's process is alive (one exec per node)."""
        alive: dict[str, bool] = {}
        by_node: dict[str, list[PodRecord]] = {}
        for rec in records:
            by_node.setdefault(rec.node, []).append(rec)
        for node, recs in by_node.items():
            script = "; ".join(f"kill -0 {r.pid} 2>/dev/null && echo {r.pid}" for r in recs)
            try:
                res = self.provider.exec(node, ["sh", "-c", script + "; true"])
                pids = set(res.stdout.split())
            except Exception:  # node down: its pods are not running
                pids = set()
            for rec in recs:
                alive[f"{rec.namespace}/{rec.name}"] = str(rec.pid) in pids
        return alive

    def exec_argv(self, name: str, argv: Sequence[str], namespace: str = "default"
                  ) -> tuple[str, list[str]]:
        """(node, argv on that node) that runs a command in a pod's network namespace."""
        rec = self.get(namespace, name)
        if rec is None:
            raise PodError(f"no pod {namespace}/{name}")
        enter = ["ip", "netns", "exec", rec.netns] if rec.netns else []
        return rec.node, [*enter, *argv]

    def restart_node(self, node: str) -> list[PodRecord]:
        """After a node reboot: the pods on it died with it; start each again in a new
        sandbox (new container id, address from the node's IPAM), as a kubelet would."""
        restarted = []
        with cluster_lock(self.provider.cluster):
            info = self.provider.node(node)
            for rec in self.list():
                if rec.node != node:
                    continue
                if rec.netns:
                    # Frees the old lease; the old veth and namespace died with the node.
                    network: Network = load_network(self.provider, node, info.pod_cidr)
                    invoke(self.provider, node, network, "DEL", rec.container_id,
                           rec.netns_path, POD_IFNAME, rec.namespace, rec.name,
                           prev_result=rec.cni_result)
                self._start_when_ready(rec, info.ip, info.pod_cidr)
                self._save(rec)
                self.progress(f"pod {rec.namespace}/{rec.name} restarted on {node}: {rec.ip}")
                restarted.append(rec)
                self.api.put_pod(rec.to_object(info.ip), sync=False)
            self.api.sync()        # the node may also have missed changes while it was down
        return restarted


def restart_node_pods(provider: Any, node: str, progress: Callable[[str], None]) -> None:
    """Start again the pods of a rebooted node (used by `node reboot`)."""
    PodRuntime(provider, progress=progress).restart_node(node)
