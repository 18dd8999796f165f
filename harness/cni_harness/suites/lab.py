"""A traffic lab on a provider's cluster: pods running the peer server, services, and
commands run where traffic starts (a pod, a node, the external client, the world host).

Suites and benchmarks use this one facade, so "send N requests from X to Y and say who
answered and whom they saw" is written once. Tools run with the system Python: copied to
the nodes (any provider), used in place for the client and world namespaces.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from .. import tools
from ..timescale import scaled

TOOLS_DIR = os.path.dirname(os.path.abspath(tools.__file__))
NODE_TOOLS_DIR = "/opt/cni-harness/tools"
TOOLS = ("peer_server.py", "probe.py")
AGENT_CLI = "/opt/cni-cilium/venv/bin/cni-cilium"
AGENT_SOCKET = "/run/cni-cilium/agent.sock"   # on the node, whatever the controller's root
# The JSON documents `cni-cilium status|service list|policy get|identity list|egress list
# --json` print are the agent API's paths of the same name (impl/cni_cilium/nodecli.py).
AGENT_VIEWS = {"status": "/status", "services": "/services", "policy": "/policy",
               "identities": "/identities", "egress": "/egress"}
MODULE_CONFIG = "/etc/cni-cilium/config.yaml"   # docs/architecture.md, files on a node
PEER_PORT = 8080
DATAPATH_METRICS = "cni_cilium_datapath_"   # the agent's datapath_{events,drops}_total


class LabError(RuntimeError):
    """A lab command failed in a way that is not the traffic under test."""


class LabUnavailable(LabError):
    """The lab cannot run here (suites skip): the local provider's tools are missing, or the
    provider lacks something the lab needs; the message says what."""


class ProviderUnreachable(LabError):
    """The cluster a suite was asked to run against is absent or a node does not answer
    (suites fail: they never fall back to other nodes); the message names the provider
    and the node."""


# What `Lab` uses beyond the base Provider: the cluster's plan (client, world and fabric
# namespaces), host command lines into nodes, and a state directory for its pods.
LAB_NEEDS = ("plan", "exec_command", "state_dir", "cluster")
REACH_TIMEOUT = 30.0       # per node, at native speed (scaled for emulated guests)


def lab_provider(cluster: str, nodes: int = 3,
                 progress: Callable[[str], None] = lambda _m: None) -> Any:
    """The provider the environment selects (`providers.registry`): the local one unless
    CNI_HARNESS_PROVIDER names another. A wrong or missing choice is a LabError (the suite
    fails: it was asked for nodes it cannot have), never a fallback."""
    from ..providers.base import ProviderUnavailable
    from ..providers.registry import ProviderSelectionError, provider_from_env

    try:
        return provider_from_env(cluster, nodes=nodes, progress=progress)
    except (ProviderSelectionError, ProviderUnavailable, ValueError, OSError) as exc:
        raise LabError(f"cannot use the provider the environment selects: {exc}") from exc


def check_reachable(provider: Any) -> None:
    """Every node of an existing cluster answers a command; else ProviderUnreachable
    naming the provider, the cluster and the node."""
    from ..providers.base import NodeDown

    where = f"provider {provider.name}"
    if getattr(provider, "cluster", None):
        where += f", cluster {provider.cluster}"
    try:
        infos = provider.nodes()
    except (NodeDown, KeyError, ValueError, OSError, subprocess.SubprocessError) as exc:
        raise ProviderUnreachable(f"{where}: cannot list the nodes ({exc}); the suite runs "
                                  "only against the cluster it was asked for") from exc
    if not infos:
        raise ProviderUnreachable(f"{where}: the cluster has no nodes (is it up?)")
    for info in infos:
        try:
            provider.exec(info.name, ["true"], timeout=scaled(REACH_TIMEOUT))
        except (NodeDown, KeyError, OSError, subprocess.SubprocessError) as exc:
            detail = (getattr(exc, "stderr", "") or str(exc)).strip().splitlines()
            raise ProviderUnreachable(
                f"{where}: node {info.name} ({info.ip}) is unreachable: "
                f"{detail[-1] if detail else type(exc).__name__}; the suite runs only "
                "against the nodes it was asked for (no fallback to other nodes)") from exc


def missing_for_lab(provider: Any) -> list[str]:
    """What of LAB_NEEDS the provider lacks."""
    return [name for name in LAB_NEEDS if not hasattr(provider, name)]


def deployed_lab(cluster: str, config_text: str, nodes: int = 3,
                 progress: Callable[[str], None] = lambda _m: None,
                 provider: Any = None) -> tuple[Lab, bool]:
    """A running cluster with the module deployed with `config_text`, and whether it was
    created here (then the caller removes it).

    The provider is the environment's (`lab_provider`) unless given. The local provider
    reuses a running cluster of that name or creates one. Any other provider never creates
    nodes: its cluster (made by `matrix run`) must exist and every node answer
    (ProviderUnreachable otherwise); a provider without what the lab needs raises
    LabUnavailable naming it."""
    from ..deploy.playbook import run_playbook
    from ..providers.registry import SELF_CREATING

    if provider is None:
        provider = lab_provider(cluster, nodes, progress)
    created = False
    if provider.name in SELF_CREATING:
        available = provider.availability()
        if not available.ok:
            raise LabUnavailable(f"{provider.name} provider unavailable: "
                                 f"{available.reason()}")
        created = provider.status().get("state") != "running"
        if created:
            provider.down()          # whatever an earlier crashed run left
            provider.up()
    else:
        check_reachable(provider)
        missing = missing_for_lab(provider)
        if missing:
            raise LabUnavailable(f"provider {provider.name} has no {', '.join(missing)}: the "
                                 "lab runs commands in the cluster's client and world "
                                 "namespaces and on nodes through host command lines")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
        fh.write(config_text)
    try:
        result = run_playbook(provider, config=fh.name, progress=progress)
    finally:
        os.unlink(fh.name)
    if result.rc != 0:
        raise LabError(f"deploy to cluster {cluster} ({provider.name}) failed: "
                       f"{result.failed_tasks}")
    lab = Lab(provider, progress=progress)
    lab.created = created
    lab.install_tools()
    return lab, created


def programmed(frontends: list[dict], service: str,
               count_by_type: Mapping[str, int] | None = None) -> bool:
    """Whether an agent's frontends (`service list`) include the service's, each of a type
    in `count_by_type` with that many selected backends (pure)."""
    own = [f for f in frontends if f["service"] == service]
    return bool(own) and all(len(f["selected"]) == count_by_type[f["type"]]
                             for f in own if count_by_type and f["type"] in count_by_type)


def names(answers: list[dict]) -> Counter:
    """How many of `Lab.probe`'s tries each server answered ("error" for failed ones)."""
    return Counter(a.get("name", "error") for a in answers)


def errors(answers: list[dict]) -> list[str]:
    """The failed tries' errors."""
    return [a["error"] for a in answers if "error" in a]


def parse_samples(text: str) -> dict[str, float]:
    """Prometheus text exposition -> {sample name with its labels: value}."""
    samples = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            sample, _, value = line.rpartition(" ")
            samples[sample] = float(value)
    return samples


@dataclass(frozen=True)
class Where:
    """Where a command runs: a pod (namespace/name), a node, the client or the world."""

    kind: str
    name: str = ""

    def __str__(self) -> str:
        return f"{self.kind} {self.name}".strip()


CLIENT = Where("client")
WORLD = Where("world")
FABRIC = Where("fabric")    # the node network's bridge/router namespace


def pod(name: str) -> Where:
    return Where("pod", name)


def node(name: str) -> Where:
    return Where("node", name)


def progress_log(path: str | None) -> Callable[[str], None]:
    """A progress callback appending timestamped lines to `path` (flushed each line, so a
    host following a guest's results directory sees them live); a no-op without a path."""
    if not path:
        return lambda _m: None
    started = time.monotonic()

    def emit(message: str) -> None:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"[{time.monotonic() - started:7.1f}s] {message}\n")
    return emit


class Lab:
    """Commands, pods and objects on one provider's cluster."""

    def __init__(self, provider: Any, progress: Callable[[str], None] = lambda _m: None):
        from ..cluster.pods import PodRuntime

        self.provider = provider
        self.created = False           # deployed_lab: whether it made the cluster
        self.plan = provider.plan()
        self.pods = PodRuntime(provider, progress=progress)
        self.api = self.pods.api
        self.progress = progress

    # ------------------------------------------------------------ running commands

    def tool(self, where: Where, name: str) -> str:
        """Path of a tool as seen from `where`."""
        return (os.path.join(NODE_TOOLS_DIR, name) if where.kind in ("pod", "node")
                else os.path.join(TOOLS_DIR, name))

    def install_tools(self) -> None:
        for info in self.provider.nodes():
            for name in TOOLS:
                with open(os.path.join(TOOLS_DIR, name), "rb") as fh:
                    self.provider.put_file(info.name, os.path.join(NODE_TOOLS_DIR, name),
                                           fh.read(), mode=0o755)

    def argv(self, where: Where, argv: Sequence[str]) -> list[str]:
        """The host command line that runs argv at `where`."""
        if where.kind == "pod":               # "name" (namespace default) or "namespace/name"
            namespace, _, name = where.name.rpartition("/")
            node_name, inner = self.pods.exec_argv(name, list(argv), namespace or "default")
            return self.provider.exec_command(node_name, inner)
        if where.kind == "node":
            return self.provider.exec_command(where.name, list(argv))
        netns = {"client": self.plan.client_netns, "world": self.plan.world_netns,
                 "fabric": self.plan.fabric_netns}[where.kind]
        return ["ip", "netns", "exec", netns, *argv]

    def run(self, where: Where, argv: Sequence[str], timeout: float = 120, check: bool = False,
            input: str | None = None) -> subprocess.CompletedProcess:
        res = subprocess.run(self.argv(where, argv), capture_output=True, text=True,
                             timeout=scaled(timeout), check=False, input=input)
        if check and res.returncode != 0:
            raise LabError(f"{where}: {' '.join(argv)}: exit {res.returncode}: "
                           f"{(res.stderr or res.stdout).strip()[-400:]}")
        return res

    def popen(self, where: Where, argv: Sequence[str], **kwargs) -> subprocess.Popen:
        return subprocess.Popen(self.argv(where, argv), **kwargs)

    def stream(self, where: Where, host: str, port: int, seconds: int, rate: int,
               max_seconds: int) -> subprocess.Popen:
        """A long-lived HTTP download from the peer server's /stream (`seconds` at `rate`
        bytes/s) run by curl at `where`; its stdout ends as "CODE BYTES REMOTE_IP".
        `max_seconds` (native speed) is stretched by the time scale: an emulated guest's
        server and curl fall behind the rate while agents start, and a late stream that
        still delivers every byte is not a dropped connection."""
        url = f"http://{host}:{port}/stream?seconds={seconds}&rate={rate}"
        return self.popen(where, ["curl", "-sS", "-o", "/dev/null", "-w",
                                  "%{http_code} %{size_download} %{remote_ip}",
                                  "-m", str(round(scaled(max_seconds))), url],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def probe(self, where: Where, protocol: str, host: str, port: int, count: int = 1,
              timeout: float = 2.0, size: int | None = None, sport: int | None = None,
              rst: bool = False, source: str | None = None) -> list[dict]:
        """`count` tries from `where`: each the peer server's answer or {"error": ...}
        (`size`: UDP payload bytes; `sport`: source port of the first try, counting up;
        `rst`: TCP connections end with a reset, leaving no TIME_WAIT; `source`: source
        address)."""
        extra = ["--size", str(size)] if size is not None else []
        extra += ["--sport", str(sport)] if sport else []
        extra += ["--rst"] if rst else []
        extra += ["--source", source] if source else []
        res = self.run(where, ["python3", self.tool(where, "probe.py"), protocol.lower(), host,
                               str(port), "--count", str(count), "--timeout", str(timeout),
                               *extra], timeout=30 + count * (timeout + 1), check=True)
        return json.loads(res.stdout)

    def capture(self, where: Where, bpf_filter: str = "", label: str | None = None):
        """A packet capture on every interface at `where` (not started yet; `Captures`
        starts and stops several together)."""
        from ..evidence.capture import Capture

        return Capture(label or where.name or where.kind,
                       lambda argv: self.run(where, argv, timeout=60), bpf_filter)

    # ------------------------------------------------------------ the agent on a node

    def agent(self, node_name: str, *args: str, timeout: float = 30) -> Any:
        """`cni-cilium ARGS --json` on a node, parsed."""
        res = self.run(node(node_name), [AGENT_CLI, *args, "--json"], timeout=timeout,
                       check=True)
        return json.loads(res.stdout)

    def agent_view(self, node_name: str, view: str, timeout: float = 30) -> Any:
        """One of AGENT_VIEWS from a node's agent API, parsed: the document the CLI's
        `--json` prints, fetched by curl. The waits poll this: an emulated guest starts
        curl in a fraction of the seconds the CLI's Python start takes."""
        return json.loads(self._agent_get(node_name, AGENT_VIEWS[view], timeout))

    def _agent_get(self, node_name: str, path: str, timeout: float = 30) -> str:
        return self.run(node(node_name), [
            "curl", "-fsS", "--unix-socket", AGENT_SOCKET, f"http://agent{path}"],
            timeout=timeout, check=True).stdout

    def metrics(self, node_name: str) -> dict[str, float]:
        """Every sample of a node agent's Prometheus metrics: {sample with labels: value}."""
        return parse_samples(self._agent_get(node_name, "/metrics"))

    def metric(self, node_name: str, sample: str) -> float:
        """One sample of a node agent's Prometheus metrics (0 when absent)."""
        return self.metrics(node_name).get(sample, 0.0)

    def flows(self, nodes: Sequence[str] | None = None, last: int = 2000,
              **filters: str | int) -> list[dict]:
        """Flows the nodes' agents report (`cni-cilium observe --json`), every node's (or
        the named ones') merged oldest first; `filters`: verdict, from_ip, to_ip, to_port,
        protocol as `observe` takes them."""
        args = ["observe", "--json", "--last", str(last)]
        for name, value in sorted(filters.items()):
            args += [f"--{name.replace('_', '-')}", str(value)]
        found = []
        for name in nodes or [n.name for n in self.provider.nodes()]:
            res = self.run(node(name), [AGENT_CLI, *args], check=True)
            found += [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
        return sorted(found, key=lambda f: (f["time"], f["node"], f["seq"]))

    def wait_policies(self, policies: Mapping[str, str] | Sequence[str],
                      addresses: Sequence[str] = (), timeout: float = 20) -> None:
        """Until every node's agent has exactly `policies` in effect and knows the identity
        of each of `addresses` (pods it must tell apart). `policies`: names, or {name:
        digest} (`cni_cilium.policy.parse.policy_digest` of the document) when a policy
        was replaced under the same name and the new version is what must be in effect."""
        digests = dict(policies) if isinstance(policies, Mapping) else {}
        for info in self.provider.nodes():
            def ready(name=info.name) -> bool:
                doc = self.agent_view(name, "policy")
                in_effect = {p["name"]: p.get("digest", "") for p in doc["policies"]}
                if sorted(in_effect) != sorted(policies) or any(
                        in_effect[n] != d for n, d in digests.items()):
                    return False
                identities = self.agent_view(name, "identities")["identities"]
                known = {a.split("/")[0] for i in identities for a in i["addresses"]}
                return set(addresses) <= known
            self.wait_for(f"policies {sorted(policies)} on {info.name}", ready, timeout)

    def client_ssh_argv(self, node_name: str, command: str, timeout: int = 3) -> list[str]:
        """A real ssh from the external client namespace to a node's sshd on its address
        (the provider's key and host keys), running `command` there. `timeout` is ssh's
        ConnectTimeout at native speed, time-scaled: it covers the banner exchange, which
        an emulated guest's sshd (a fork and re-exec) can take seconds to reach."""
        key = getattr(self.provider, "ssh_key_path", None)
        if not key:
            raise LabError(f"provider {self.provider.name} has no ssh key for the client")
        known = os.path.join(os.path.dirname(key), "known_hosts")
        target = next(n for n in self.plan.nodes if n.name == node_name)
        return self.argv(CLIENT, [
            "ssh", "-i", key, "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={known}",
            "-o", f"HostKeyAlias={target.netns}", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", "-o", f"ConnectTimeout={round(scaled(timeout))}",
            "-o", "LogLevel=ERROR", f"root@{target.ip}", command])

    def datapath_counters(self) -> dict[str, dict[str, float]]:
        """Per node, the datapath's non-zero counters (events and drops by reason)."""
        return {info.name: {sample: value for sample, value in self.metrics(info.name).items()
                            if sample.startswith(DATAPATH_METRICS) and value}
                for info in self.provider.nodes()}

    def wait_for(self, what: str, predicate: Callable[[], Any], timeout: float = 20,
                 interval: float = 0.2) -> Any:
        """Poll until predicate() is truthy; returns its value, raises LabError on timeout.
        `timeout` is for native speed: stretched by the time scale (emulated guests)."""
        timeout = scaled(timeout)
        deadline = time.monotonic() + timeout
        last_error = ""
        while True:
            try:
                value = predicate()
                if value:
                    return value
            except (LabError, subprocess.SubprocessError, ValueError, KeyError) as exc:
                last_error = f" (last error: {exc})"
            if time.monotonic() > deadline:
                raise LabError(f"timed out after {timeout} s waiting for {what}{last_error}")
            time.sleep(interval)

    def set_module_config(self, text: str, lb_modes: dict[str, str] | None = None,
                          timeout: float = 20) -> None:
        """Write the module config every node's agent reads (the file `deploy --config`
        writes) and wait until each agent runs it (its status shows `lb_modes`, e.g.
        {"TCP": "DSR", "UDP": "SNAT"}, when given)."""
        for info in self.provider.nodes():
            self.provider.put_file(info.name, MODULE_CONFIG, text.encode())
        if lb_modes is None:
            return
        for info in self.provider.nodes():
            self.wait_for(f"LB modes {lb_modes} on {info.name}",
                          lambda n=info.name: self.agent_view(
                              n, "status")["modes"]["lbMode"] == lb_modes, timeout)

    def module_config(self, node_name: str) -> str:
        """The module config file on a node, as the agent reads it."""
        return self.run(node(node_name), ["cat", MODULE_CONFIG], check=True).stdout

    def wait_programmed(self, service: str, count_by_type: dict[str, int] | None = None,
                        nodes: Sequence[str] | None = None, timeout: float = 20) -> None:
        """Until every node's agent has the service's frontends (with `count_by_type`
        selected backends per frontend type when given)."""
        self.wait_all_programmed({service: count_by_type}, nodes, timeout)

    def wait_all_programmed(self, services: Mapping[str, dict[str, int] | None],
                            nodes: Sequence[str] | None = None, timeout: float = 20) -> None:
        """`wait_programmed` for several services at once ({service: count_by_type}): one
        `services` view per node and try, however many services."""
        for name in nodes or [n.name for n in self.provider.nodes()]:
            def ready(name=name) -> bool:
                frontends = self.agent_view(name, "services")["frontends"]
                return all(programmed(frontends, service, counts)
                           for service, counts in services.items())
            self.wait_for(f"{', '.join(services)} programmed on {name}", ready, timeout)

    def egress_status(self, gateway: str, nodes: Sequence[str] | None = None) -> dict:
        """An EgressGateway's status as the agents report it: every running agent's view
        (the `egress` view), the status they agree on (activeNodeName, readyNodes, the
        Ready condition as the active node's agent gives it), and whether they agree.
        Nodes whose agent does not answer (stopped, rebooting) are listed as such."""
        views: dict[str, dict] = {}
        down: dict[str, str] = {}
        for name in nodes or [n.name for n in self.provider.nodes()]:
            try:
                doc = self.agent_view(name, "egress", timeout=10)
            except (LabError, subprocess.SubprocessError, ValueError, RuntimeError) as exc:
                down[name] = str(exc).splitlines()[0][:200] if str(exc) else "no answer"
                continue
            gw = next((g for g in doc["gateways"] if g["name"] == gateway), None)
            if gw is not None:
                views[name] = gw
        actives = {v["status"]["activeNodeName"] for v in views.values()}
        active = actives.pop() if len(actives) == 1 else None
        authority = views.get(active) if active else None
        chosen = authority or next(iter(views.values()), None)
        return {
            "gateway": gateway, "agree": len({json.dumps(v["status"]["activeNodeName"])
                                              for v in views.values()}) == 1,
            "activeNodeName": active,
            "readyNodes": chosen["status"]["readyNodes"] if chosen else [],
            "conditions": chosen["status"]["conditions"] if chosen else [],
            "egressIP": chosen["egressIP"] if chosen else None,
            "byNode": {n: {"activeNodeName": v["status"]["activeNodeName"],
                           "readyNodes": v["status"]["readyNodes"],
                           "reason": v["status"]["conditions"][0]["reason"]}
                       for n, v in views.items()},
            "unreachable": down,
        }

    def neighbour_mac(self, where: Where, address: str) -> str | None:
        """The MAC `where`'s neighbour table holds for an address (None: no usable entry)."""
        res = self.run(where, ["ip", "-j", "neigh", "show", address], check=True)
        for entry in json.loads(res.stdout or "[]"):
            if entry.get("lladdr") and "FAILED" not in entry.get("state", []):
                return entry["lladdr"]
        return None

    # ------------------------------------------------------------ pods and objects

    def start_peer_pod(self, node_name: str, name: str, labels: dict[str, str] | None = None,
                       host_network: bool = False, port: int = PEER_PORT,
                       host_port: int | None = None, host_ip: str | None = None,
                       namespace: str = "default"):
        """A pod running the peer server on `port` (TCP and UDP); returns its record.
        `host_port` (and `host_ip`) publish both on that port of the node."""
        where = node(node_name)
        argv = ["python3", self.tool(where, "peer_server.py"), "--name", name,
                "--port", str(port)]
        ports = [{"name": "http", "containerPort": port, "protocol": "TCP"},
                 {"name": "dns", "containerPort": port, "protocol": "UDP"}]
        for entry in ports if host_port else ():
            entry["hostPort"] = host_port
            if host_ip:
                entry["hostIP"] = host_ip
        rec = self.pods.run(node_name, name, argv, namespace=namespace, labels=labels or {},
                            ports=ports, host_network=host_network)
        self.wait_for(f"pod {name} answering", lambda: "error" not in self.probe(
            node(node_name), "tcp", rec.ip, port, timeout=1)[0], timeout=15)
        return rec

    def apply(self, docs: list[dict]) -> None:
        report = self.api.apply(docs, "lab")
        if report.problems:
            raise LabError(f"apply refused: {report.problems}")

    def delete(self, docs: list[dict]) -> None:
        self.api.delete(docs, "lab")

    def service(self, name: str, namespace: str = "default") -> dict:
        """The stored Service object (with the allocated ClusterIP and ports)."""
        for key, doc in self.api.objects().items():
            if key == ("Service", namespace, name):
                return doc
        raise LabError(f"no Service {namespace}/{name}")
