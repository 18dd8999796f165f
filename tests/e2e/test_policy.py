"""The policy suite: CiliumClusterwideNetworkPolicy with real traffic, host firewall, audit
mode and flows.

One 3-node local cluster ($CNI_HARNESS_CLUSTER, default `pol` + the run's suffix; reused
when it runs, else created and removed), deployed with `policyAuditMode: false`. Pods run
the peer server (TCP and UDP); clients are pods, nodes, the external client namespace
(also from a second address the suite gives it) and the world host. Every case applies
its policies with the harness's `apply` (the manifest directory, as any object), waits
until every agent has them, sends real packets, asserts on answers, ssh sessions, the
flows `cni-cilium observe` reports and the drop counters, attaches them as evidence, and
removes its policies.

Layout: web (app=web, node1, 8080) and web9 (app=web, node2, 9090); clients cli-1
(app=client, node1), cli-3 (app=client, node3), other-2 (app=other, node2); host-1 and
host-2 are host-network servers on node1 and node2 (port 8081); `web-np` is a NodePort of
web with externalTrafficPolicy Local (the client's address reaches the pod), `web-cl` one
with externalTrafficPolicy Cluster (forwarded by any node).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time

import pytest

pytest.importorskip("cni_harness.providers.local.provider",
                    reason="needs the local cluster provider")

from cni_cilium.policy.parse import policy_digest
from cni_harness.providers.local.addressing import CLIENT_IP, WORLD_IP
from cni_harness.suites.lab import (
    AGENT_CLI,
    CLIENT,
    WORLD,
    LabError,
    node,
    pod,
    progress_log,
)
from cni_harness.testing import require_provider, suite_cluster_name, suite_lab
from cni_harness.timescale import scaled

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CLUSTER = suite_cluster_name("pol")
CONFIG = "policyAuditMode: false\n"
AUDIT_CONFIG = "policyAuditMode: true\n"
CLIENT_2 = "10.99.0.101"          # a second address of the external client (added here)
HOST_PORT = 8081
WEB9_PORT = 9090
NODECTL = "/usr/local/sbin/nodectl"
AGENT_UNIT = "cni-cilium-agent.service"
DENIED = "policy denied"
DENY = "policy deny"


def evidence(record_property, **observed) -> None:
    record_property("evidence", json.dumps(observed, sort_keys=True, default=str))


def ccnp(name: str, **spec) -> dict:
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
            "metadata": {"name": name}, "spec": spec}


def ports(*items: tuple) -> list[dict]:
    """toPorts from (port, protocol) or (port, end port, protocol)."""
    out = []
    for item in items:
        port = {"port": str(item[0]), "protocol": item[-1]}
        if len(item) == 3:
            port["endPort"] = item[1]
        out.append(port)
    return [{"ports": out}]


def app(name: str) -> dict:
    return {"matchLabels": {"app": name}}


# The documentation's rule, verbatim.
DOCS_RULE = ccnp("allow-control-plane-connectivity",
                 ingress=[{"fromEntities": ["kube-apiserver"]}],
                 nodeSelector={"matchLabels": {"node-role.kubernetes.io/control-plane": ""}})


def ok(answers: list[dict]) -> bool:
    return bool(answers) and all("error" not in a for a in answers)


def failed(answers: list[dict]) -> bool:
    return bool(answers) and all("error" in a for a in answers)


class Cluster:
    def __init__(self, lab, pods: dict):
        self.lab = lab
        self.pods = pods
        self.nodes = {n.name: n for n in lab.provider.nodes()}
        self.applied: list[dict] = []

    def ip(self, name: str) -> str:
        return self.nodes[name].ip

    def pod_ip(self, name: str) -> str:
        return self.pods[name].ip

    def pod_ips(self) -> list[str]:
        return [r.ip for r in self.pods.values() if not r.host_network]

    def apply(self, *docs: dict) -> None:
        """Apply policies (replacing same-named ones) and wait until every agent has them."""
        self.lab.apply(list(docs))
        self.applied = [d for d in self.applied if d["metadata"]["name"] not in
                        {x["metadata"]["name"] for x in docs}] + list(docs)
        self.lab.wait_policies({d["metadata"]["name"]: policy_digest(d) for d in self.applied},
                               self.pod_ips())

    def remove_all(self) -> None:
        if self.applied:
            self.lab.delete(self.applied)
        self.applied = []
        self.lab.wait_policies([], self.pod_ips())

    def drops(self, node_name: str, reason: str) -> float:
        return self.lab.metric(node_name, f'cni_cilium_datapath_drops_total{{reason="{reason}"}}')

    def flows_since(self, started: float, **filters) -> list[dict]:
        return [f for f in self.lab.flows(**filters) if f["time"] >= started]

    def require_client_ssh(self) -> None:
        """Skip unless the provider gives the client an ssh key for the nodes (local)."""
        require_provider(self.lab.provider, "ssh_key_path",
                         why="ssh from the client namespace needs the provider's node key")

    def ssh(self, node_name: str, command: str = "echo $SSH_CONNECTION",
            timeout: float = 15) -> subprocess.CompletedProcess:
        """One ssh from the client; `timeout` (native speed, time-scaled) bounds the whole
        run, ssh's own connect timeout decides whether the node answered."""
        self.require_client_ssh()
        return subprocess.run(self.lab.client_ssh_argv(node_name, command), text=True,
                              capture_output=True, timeout=scaled(timeout), check=False)

    def ssh_session(self, node_name: str, seconds: int, stop_file: str = "") -> subprocess.Popen:
        """An ssh session from the client that reports its own connection, then ticks once
        a second (with the time) for `seconds`, or until `stop_file` exists on the node: it
        ends with exit 0 and every tick only if the connection lived throughout."""
        stop = f" [ -e {stop_file} ] && break;" if stop_file else ""
        self.require_client_ssh()
        command = (f"echo $SSH_CONNECTION; for i in $(seq {seconds}); do echo tick $i "
                   f"$(date +%s.%N);{stop} sleep 1; done")
        return subprocess.Popen(self.lab.client_ssh_argv(node_name, command, timeout=5),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def node_port_of(lab, service: str, port_name: str = "http") -> int:
    return next(p["nodePort"] for p in lab.service(service)["spec"]["ports"]
                if p["name"] == port_name)


def session_port(line: str) -> int:
    """The client's source port from `$SSH_CONNECTION` ("client port server port")."""
    return int(line.split()[1])


def finished(session: subprocess.Popen, seconds: int) -> dict:
    out, err = session.communicate(timeout=scaled(seconds + 60))
    lines = out.splitlines()
    ticks = [float(ln.split()[2]) for ln in lines if ln.startswith("tick")]
    return {"rc": session.returncode, "ticks": len(ticks), "lastTick": max(ticks, default=0),
            "port": session_port(lines[0]) if lines and lines[0].count(" ") == 3 else None,
            "stderr": err.strip()[-300:]}


@contextlib.contextmanager
def api_servers(cluster, *nodes: str):
    """The `default/kubernetes` Service with its EndpointSlice naming API servers on these
    nodes' addresses (the kube-apiserver entity, beside the control-plane node)."""
    docs = [{"apiVersion": "v1", "kind": "Service",
             "metadata": {"name": "kubernetes", "namespace": "default"},
             "spec": {"clusterIP": "10.96.0.1", "ports": [
                 {"name": "https", "port": 443, "targetPort": 6443, "protocol": "TCP"}]}},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "metadata": {"name": "kubernetes", "namespace": "default",
                          "labels": {"kubernetes.io/service-name": "kubernetes"}},
             "addressType": "IPv4",
             "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
             "endpoints": [{"addresses": [cluster.ip(n)]} for n in nodes]}]
    cluster.lab.apply(docs)
    try:
        yield
    finally:
        cluster.lab.delete(docs)


@pytest.fixture(scope="module")
def cluster():
    results = os.environ.get("CNI_HARNESS_RESULTS_DIR")
    progress = progress_log(os.path.join(results, "lab-progress.log") if results else None)
    with suite_lab(CLUSTER, CONFIG, progress=progress) as lab:
        for rec in lab.pods.list():
            lab.pods.delete(rec.name, rec.namespace)
        lab.delete([doc for key, doc in lab.api.objects().items()
                    if key[0] == "CiliumClusterwideNetworkPolicy"])
        pods = {
            "web": lab.start_peer_pod("node1", "web", {"app": "web", "np": "web"}),
            "web9": lab.start_peer_pod("node2", "web9", {"app": "web"}, port=WEB9_PORT),
            "cli-1": lab.start_peer_pod("node1", "cli-1", {"app": "client"}),
            "cli-3": lab.start_peer_pod("node3", "cli-3", {"app": "client"}),
            "other-2": lab.start_peer_pod("node2", "other-2", {"app": "other"}),
            "host-1": lab.start_peer_pod("node1", "host-1", {"app": "host"}, host_network=True,
                                         port=HOST_PORT),
            "host-2": lab.start_peer_pod("node2", "host-2", {"app": "host"}, host_network=True,
                                         port=HOST_PORT),
        }
        lab.apply([{"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": name, "namespace": "default"},
                    "spec": {"type": "NodePort", "selector": {"np": "web"},
                             "externalTrafficPolicy": etp,
                             "ports": [{"name": "http", "port": 80, "targetPort": 8080,
                                        "protocol": "TCP"},
                                       {"name": "dns", "port": 53, "targetPort": 8080,
                                        "protocol": "UDP"}]}}
                   for name, etp in (("web-np", "Local"), ("web-cl", "Cluster"))])
        lab.run(CLIENT, ["ip", "addr", "replace", f"{CLIENT_2}/24", "dev", "eth0"], check=True)
        world = lab.popen(WORLD, ["python3", lab.tool(WORLD, "peer_server.py"), "--name", "world",
                                  "--port", "8080"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        c = Cluster(lab, pods)
        lab.wait_programmed("default/web-np")
        lab.wait_programmed("default/web-cl", {"ClusterIP": 1})
        lab.wait_policies([], c.pod_ips())
        progress("pods, service and identities ready")
        try:
            yield c
        finally:
            world.terminate()
            world.wait(timeout=10)
            with contextlib.suppress(LabError, subprocess.SubprocessError):
                lab.run(CLIENT, ["ip", "addr", "del", f"{CLIENT_2}/24", "dev", "eth0"])


@pytest.fixture
def clean(cluster):
    """No policy before and after the case, and audit mode off."""
    cluster.remove_all()
    yield cluster
    cluster.remove_all()
    if "true" in cluster.lab.module_config("node1"):
        set_audit(cluster, False)


def set_audit(cluster, on: bool) -> None:
    cluster.lab.set_module_config(AUDIT_CONFIG if on else CONFIG)
    for name in cluster.nodes:
        cluster.lab.wait_for(f"audit mode {on} on {name}", lambda n=name: (
            cluster.lab.agent_view(n, "status")["policy"]["auditMode"] is on))


# ---------------------------------------------------------------- endpoints

def test_default_deny_on_a_pod_allows_by_labels_and_port(clean, record_property):
    c, lab = clean, clean.lab
    web = c.pod_ip("web")
    unselected_since = time.time()
    before = lab.probe(pod("other-2"), "tcp", web, 8080)
    started = time.time()
    c.apply(ccnp("web-from-clients", endpointSelector=app("web"),
                 ingress=[{"fromEndpoints": [app("client")], "toPorts": ports((8080, "TCP"))}]))
    denied_before = c.drops("node1", "policy_denied")
    same_node = lab.probe(pod("cli-1"), "tcp", web, 8080, count=3)
    across = lab.probe(pod("cli-3"), "tcp", web, 8080, count=3)
    other = lab.probe(pod("other-2"), "tcp", web, 8080, count=2, timeout=1)
    udp = lab.probe(pod("cli-1"), "udp", web, 8080, count=2, timeout=1)
    denied_after = c.drops("node1", "policy_denied")
    seen = c.flows_since(unselected_since, nodes=["node1"], to_ip=f"{web}/32")
    flows = [f for f in seen if f["time"] >= started]
    dropped = [f for f in flows if f["verdict"] == "DROPPED"]
    evidence(record_property, before=before, same_node=same_node, across=across, other=other,
             udp=udp, drops=[denied_before, denied_after], flows=flows)
    assert ok(before)                      # nothing selected web before the policy
    # ... so that connection had no verdict to report (no flow event to decode).
    assert [f for f in seen if f["time"] < started] == []
    assert ok(same_node) and ok(across)
    assert {a["peer"] for a in same_node + across} == {c.pod_ip("cli-1"), c.pod_ip("cli-3")}
    assert failed(other) and failed(udp)
    assert {(f["source"]["ip"], f["protocol"], f["dropReason"]) for f in dropped} == {
        (c.pod_ip("other-2"), "TCP", DENIED), (c.pod_ip("cli-1"), "UDP", DENIED)}
    assert all(f["direction"] == "INGRESS" and f["destination"]["labels"] == [
        "k8s:app=web", "k8s:io.kubernetes.pod.namespace=default", "k8s:np=web"]
        for f in dropped)
    allowed = [f for f in flows if f["verdict"] == "FORWARDED" and f["match"] == "L3-L4"]
    assert {f["source"]["ip"] for f in allowed} == {c.pod_ip("cli-1"), c.pod_ip("cli-3")}
    assert denied_after >= denied_before + 4


def test_port_ranges_and_endport(clean, record_property):
    c, lab = clean, clean.lab
    c.apply(ccnp("web-ports", endpointSelector=app("web"),
                 ingress=[{"fromEndpoints": [app("client")],
                           "toPorts": ports((8000, 8100, "TCP"))}]))
    in_range = lab.probe(pod("cli-3"), "tcp", c.pod_ip("web"), 8080)
    out_of_range = lab.probe(pod("cli-3"), "tcp", c.pod_ip("web9"), WEB9_PORT, timeout=1)
    c.apply(ccnp("web-ports", endpointSelector=app("web"),
                 ingress=[{"fromEndpoints": [app("client")],
                           "toPorts": ports((9000, 9100, "ANY"))}]))
    now_in = lab.probe(pod("cli-3"), "tcp", c.pod_ip("web9"), WEB9_PORT)
    now_udp = lab.probe(pod("cli-3"), "udp", c.pod_ip("web9"), WEB9_PORT)
    now_out = lab.probe(pod("cli-3"), "tcp", c.pod_ip("web"), 8080, timeout=1)
    evidence(record_property, in_range=in_range, out_of_range=out_of_range, now_in=now_in,
             now_udp=now_udp, now_out=now_out)
    assert ok(in_range) and failed(out_of_range)
    assert ok(now_in) and ok(now_udp) and failed(now_out)


def test_allow_by_entity(clean, record_property):
    c, lab = clean, clean.lab
    c.apply(ccnp("web-from-nodes", endpointSelector=app("web"),
                 ingress=[{"fromEntities": ["remote-node"]}]))
    from_node3 = lab.probe(node("node3"), "tcp", c.pod_ip("web"), 8080)
    from_pod3 = lab.probe(pod("cli-3"), "tcp", c.pod_ip("web"), 8080, timeout=1)
    from_own_node = lab.probe(node("node1"), "tcp", c.pod_ip("web"), 8080)
    flows = lab.flows(nodes=["node1"], to_ip=f"{c.pod_ip('web')}/32", last=50)
    evidence(record_property, from_node3=from_node3, from_pod3=from_pod3,
             from_own_node=from_own_node, flows=flows[-10:])
    assert ok(from_node3) and from_node3[0]["peer"] == c.ip("node3")
    assert failed(from_pod3)
    assert ok(from_own_node)               # a node always reaches its own pods
    assert any(f["source"]["labels"] == ["reserved:remote-node"] and
               f["verdict"] == "FORWARDED" for f in flows)


def test_allow_by_cidr_with_except(clean, record_property):
    c, lab = clean, clean.lab
    node_port = node_port_of(lab, "web-np")
    c.apply(ccnp("web-from-net", endpointSelector=app("web"),
                 ingress=[{"fromCIDRSet": [{"cidr": "10.99.0.0/24",
                                            "except": [f"{CLIENT_IP}/32"]}]}]))
    second = lab.probe(CLIENT, "tcp", c.ip("node1"), node_port, source=CLIENT_2)
    first = lab.probe(CLIENT, "tcp", c.ip("node1"), node_port, source=CLIENT_IP, timeout=1)
    flows = lab.flows(nodes=["node1"], to_ip=f"{c.pod_ip('web')}/32", last=20)
    evidence(record_property, from_second_address=second, from_excepted=first,
             flows=flows[-4:])
    assert ok(second) and second[0]["peer"] == CLIENT_2
    assert failed(first)
    allowed = [f for f in flows if f["source"]["ip"] == CLIENT_2 and f["verdict"] ==
               "FORWARDED"]
    assert allowed and "cidr:10.99.0.0/24" in allowed[-1]["source"]["labels"]
    dropped = [f for f in flows if f["source"]["ip"] == CLIENT_IP and f["verdict"] == "DROPPED"]
    assert dropped and dropped[-1]["source"]["labels"] == ["cidr:10.99.0.100/32",
                                                           "reserved:world"]


def test_deny_wins_over_allow(clean, record_property):
    c, lab = clean, clean.lab
    deny_before = c.drops("node1", "policy_deny")
    c.apply(ccnp("web-from-cluster", endpointSelector=app("web"),
                 ingress=[{"fromEntities": ["cluster"]}]),
            ccnp("web-no-udp-from-clients", endpointSelector=app("web"),
                 ingressDeny=[{"fromEndpoints": [app("client")], "toPorts": ports((8080,
                                                                                   "UDP"))}]))
    tcp = lab.probe(pod("cli-1"), "tcp", c.pod_ip("web"), 8080)
    udp = lab.probe(pod("cli-1"), "udp", c.pod_ip("web"), 8080, timeout=1)
    other_udp = lab.probe(pod("other-2"), "udp", c.pod_ip("web"), 8080)
    flows = lab.flows(nodes=["node1"], verdict="DROPPED", from_ip=f"{c.pod_ip('cli-1')}/32",
                      last=5)
    evidence(record_property, tcp=tcp, udp=udp, other_udp=other_udp, flows=flows,
             deny_drops=[deny_before, c.drops("node1", "policy_deny")])
    assert ok(tcp) and ok(other_udp) and failed(udp)
    assert flows and flows[-1]["dropReason"] == DENY and flows[-1]["protocol"] == "UDP"
    assert "web-no-udp-from-clients" in flows[-1]["policy"]
    assert c.drops("node1", "policy_deny") > deny_before


def test_egress_to_world_blocked_then_allowed(clean, record_property):
    c, lab = clean, clean.lab
    c.apply(ccnp("clients-in-cluster", endpointSelector=app("client"),
                 egress=[{"toEntities": ["cluster"]}]))
    world_blocked = lab.probe(pod("cli-1"), "tcp", WORLD_IP, 8080, timeout=1)
    cluster_ok = lab.probe(pod("cli-1"), "tcp", c.pod_ip("web9"), WEB9_PORT)
    blocked_flows = lab.flows(nodes=["node1"], to_ip=f"{WORLD_IP}/32", verdict="DROPPED",
                              last=3)
    c.apply(ccnp("clients-to-world-web", endpointSelector=app("client"),
                 egress=[{"toCIDR": [f"{WORLD_IP}/32"], "toPorts": ports((8080, "TCP"))}]))
    world_allowed = lab.probe(pod("cli-1"), "tcp", WORLD_IP, 8080)
    evidence(record_property, world_blocked=world_blocked, cluster_ok=cluster_ok,
             world_allowed=world_allowed, blocked_flows=blocked_flows)
    assert failed(world_blocked) and ok(cluster_ok)
    assert blocked_flows and blocked_flows[-1]["direction"] == "EGRESS"
    assert blocked_flows[-1]["dropReason"] == DENIED
    assert ok(world_allowed) and world_allowed[0]["peer"] == c.ip("node1")   # masqueraded


def test_a_policy_change_never_drops_an_established_allowed_connection(clean, record_property):
    c, lab = clean, clean.lab
    seconds, rate = 8, 200_000
    stream = lab.stream(pod("cli-3"), c.pod_ip("web"), 8080, seconds, rate, max_seconds=40)
    time.sleep(1.5)
    c.apply(ccnp("web-closed", endpointSelector=app("web"), ingress=[{}]))
    new = lab.probe(pod("cli-3"), "tcp", c.pod_ip("web"), 8080, timeout=1)
    out, err = stream.communicate(timeout=scaled(60))
    evidence(record_property, stream=[stream.returncode, out, err], new_connection=new)
    assert stream.returncode == 0 and out.split()[:2] == ["200", str(seconds * rate)], err
    assert failed(new)


# ---------------------------------------------------------------- the host firewall

def test_host_policy_without_ssh_blocks_new_ssh_but_not_an_established_session(
        clean, record_property):
    c, lab = clean, clean.lab
    session = c.ssh_session("node2", 10)
    time.sleep(2)
    started = time.time()
    c.apply(ccnp("node2-cluster-only", nodeSelector={"matchLabels": {
        "kubernetes.io/hostname": "node2"}}, ingress=[{"fromEntities": ["cluster"]}]))
    new = c.ssh("node2")
    from_node3 = lab.probe(node("node3"), "tcp", c.ip("node2"), HOST_PORT)
    other_node_ssh = c.ssh("node3")
    established = finished(session, 10)
    flows = c.flows_since(started, nodes=["node2"], from_ip=f"{CLIENT_IP}/32", to_port=22)
    evidence(record_property, established=established, new_ssh=[new.returncode, new.stderr],
             node3_to_node2=from_node3, ssh_to_node3=other_node_ssh.returncode, flows=flows)
    assert established["rc"] == 0 and established["ticks"] == 10, established
    assert new.returncode == 255 and "timed out" in new.stderr
    assert ok(from_node3) and other_node_ssh.returncode == 0
    assert flows and all(f["verdict"] == "DROPPED" and f["dropReason"] == DENIED
                         for f in flows)
    assert established["port"] not in {f["source"]["port"] for f in flows}


def test_host_egress_policy_judges_what_the_node_sends_not_what_it_forwards(
        clean, record_property):
    c, lab = clean, clean.lab
    started = time.time()
    c.apply(ccnp("node3-to-world-web-only", nodeSelector={"matchLabels": {
        "kubernetes.io/hostname": "node3"}},
        egress=[{"toCIDR": [f"{WORLD_IP}/32"], "toPorts": ports((8080, "TCP"))}]))
    web_cl = lab.service("web-cl")["spec"]["clusterIP"]
    observed = {
        "to_world": lab.probe(node("node3"), "tcp", WORLD_IP, 8080),
        "to_pod": lab.probe(node("node3"), "tcp", c.pod_ip("web"), 8080, timeout=1),
        "to_clusterip": lab.probe(node("node3"), "tcp", web_cl, 80, timeout=1),
        "to_node1": lab.probe(node("node3"), "tcp", c.ip("node1"), HOST_PORT, timeout=1),
        # forwarded by node3, not sent by it: TCP by DSR, UDP by SNAT (replies back via node3)
        "nodeport_tcp": lab.probe(CLIENT, "tcp", c.ip("node3"), node_port_of(lab, "web-cl"),
                                  count=3),
        "nodeport_udp": lab.probe(CLIENT, "udp", c.ip("node3"),
                                  node_port_of(lab, "web-cl", "dns"), count=3),
    }
    flows = c.flows_since(started, nodes=["node3"], verdict="DROPPED")
    evidence(record_property, flows=flows, **observed)
    assert ok(observed["to_world"]) and observed["to_world"][0]["peer"] == c.ip("node3")
    assert failed(observed["to_pod"]) and failed(observed["to_clusterip"])
    assert failed(observed["to_node1"])
    assert ok(observed["nodeport_tcp"]) and ok(observed["nodeport_udp"])
    assert {(f["destination"]["ip"], f["direction"]) for f in flows} >= {
        (c.pod_ip("web"), "EGRESS"), (c.ip("node1"), "EGRESS")}
    assert all(f["source"]["labels"][0] == "reserved:host" for f in flows)


def test_the_same_host_policy_in_audit_mode_blocks_nothing_and_reports_audit(
        clean, record_property):
    c, lab = clean, clean.lab
    set_audit(c, True)
    c.apply(ccnp("node2-cluster-only", nodeSelector={"matchLabels": {
        "kubernetes.io/hostname": "node2"}}, ingress=[{"fromEntities": ["cluster"]}]))
    started = time.time()
    denied_before = c.drops("node2", "policy_denied")
    sessions = [c.ssh("node2") for _ in range(3)]
    lab.wait_for("the AUDIT flows", lambda: len(c.flows_since(
        started, nodes=["node2"], to_port=22, verdict="AUDIT")) >= 3, timeout=10)
    flows = c.flows_since(started, nodes=["node2"], to_port=22)
    ports_seen = {session_port(s.stdout) for s in sessions if s.returncode == 0}
    evidence(record_property, sessions=[[s.returncode, s.stdout.strip()] for s in sessions],
             flows=flows, drops=[denied_before, c.drops("node2", "policy_denied")])
    assert [s.returncode for s in sessions] == [0, 0, 0]
    assert {f["verdict"] for f in flows} == {"AUDIT"}
    assert {f["source"]["port"] for f in flows} == ports_seen      # exactly those
    assert all(f["dropReason"] == DENIED and f["source"]["ip"] == CLIENT_IP for f in flows)
    assert c.drops("node2", "policy_denied") == denied_before      # nothing dropped


def test_the_docs_rule_keeps_the_control_plane_reachable_from_the_kube_apiserver(
        clean, record_property):
    """kube-apiserver is the control-plane node and the addresses of the `default/kubernetes`
    EndpointSlices: here a second API server endpoint on node3 (as an HA control plane
    lists), so the entity also sends to node1 over the wire."""
    c, lab = clean, clean.lab
    with api_servers(c, "node1", "node3"):
        c.apply(DOCS_RULE)
        from_apiserver = lab.probe(node("node3"), "tcp", c.ip("node1"), HOST_PORT, count=2)
        from_worker = lab.probe(node("node2"), "tcp", c.ip("node1"), HOST_PORT, timeout=1)
        from_client = lab.probe(CLIENT, "tcp", c.ip("node1"), HOST_PORT, timeout=1)
        node2_view = {i["identity"]: i for i in lab.agent("node2", "identity",
                                                           "list")["identities"]}
        flows = lab.flows(nodes=["node1"], to_ip=f"{c.ip('node1')}/32", to_port=HOST_PORT,
                          last=10)
    evidence(record_property, from_apiserver=from_apiserver, from_worker=from_worker,
             from_client=from_client, identity_7_on_node2=node2_view.get(7), flows=flows)
    assert ok(from_apiserver) and from_apiserver[0]["peer"] == c.ip("node3")
    assert failed(from_worker) and failed(from_client)
    assert {f"{c.ip('node1')}/32", f"{c.ip('node3')}/32"} <= set(node2_view[7]["addresses"])
    assert "reserved:kube-apiserver" in node2_view[7]["labels"]
    apiserver_flows = [f for f in flows if f["source"]["ip"] == c.ip("node3")]
    assert apiserver_flows and apiserver_flows[-1]["verdict"] == "FORWARDED"
    assert "reserved:kube-apiserver" in apiserver_flows[-1]["source"]["labels"]


def test_agent_kill_9_with_policies_on_drops_no_established_allowed_connection(
        clean, record_property):
    """cilium#19367: a restart reset conntrack and cut the control plane for a minute.
    Here conntrack and policies live in pinned maps: while both agents are dead and after
    they restart, established allowed connections go on, new allowed ones succeed and what
    the policies deny stays denied."""
    c, lab = clean, clean.lab
    with api_servers(c, "node1", "node3"):
        observed = _kill_agents_under_policies(c, lab)
    evidence(record_property, **observed)
    for phase in (observed["during"], observed["after"]):
        assert ok(phase["pod_allowed"]) and ok(phase["apiserver_allowed"])
        assert failed(phase["pod_denied"]) and failed(phase["worker_denied"])
        assert phase["new_ssh"] == 0
    for label, (rc, out, err) in observed["streams"].items():
        assert rc == 0 and out.split()[:2] == ["200", str(STREAM_SECONDS * STREAM_RATE)], (
            label, err)
    session = observed["established_ssh"]
    assert session["rc"] == 0 and session["lastTick"] > observed["agents_back_at"], session


STREAM_SECONDS, STREAM_RATE = 20, 200_000
STOP_SSH = "/tmp/policy-suite-stop-ssh"


def _kill_agents_under_policies(c, lab) -> dict:
    seconds, rate = STREAM_SECONDS, STREAM_RATE
    c.apply(DOCS_RULE,
            ccnp("web-from-clients", endpointSelector=app("web"),
                 ingress=[{"fromEndpoints": [app("client")]}]),
            ccnp("node2-ssh-from-client", nodeSelector={"matchLabels": {
                "kubernetes.io/hostname": "node2"}},
                ingress=[{"fromEntities": ["cluster"]},
                         {"fromCIDR": [f"{CLIENT_IP}/32"], "toPorts": ports((22, "TCP"))}]))
    pod_stream = lab.stream(pod("cli-3"), c.pod_ip("web"), 8080, seconds, rate, max_seconds=60)
    host_stream = lab.stream(node("node3"), c.ip("node1"), HOST_PORT, seconds, rate,
                             max_seconds=60)
    lab.run(node("node2"), ["rm", "-f", STOP_SSH], check=True)
    session = c.ssh_session("node2", 600, STOP_SSH)
    time.sleep(2)
    pids = {n: lab.agent(n, "status")["pid"] for n in ("node1", "node2")}
    for name, pid in pids.items():
        lab.run(node(name), ["kill", "-9", str(pid)], check=True)

    def check() -> dict:
        return {"pod_allowed": lab.probe(pod("cli-1"), "tcp", c.pod_ip("web"), 8080),
                "pod_denied": lab.probe(pod("other-2"), "tcp", c.pod_ip("web"), 8080,
                                        timeout=1),
                "apiserver_allowed": lab.probe(node("node3"), "tcp", c.ip("node1"), HOST_PORT),
                "worker_denied": lab.probe(node("node2"), "tcp", c.ip("node1"), HOST_PORT,
                                           timeout=1),
                "new_ssh": c.ssh("node2").returncode}

    during = check()
    dead = {n: lab.run(node(n), ["test", "-e", "/run/cni-cilium/agent.sock"]).returncode != 0
            or lab.run(node(n), [AGENT_CLI, "status"]).returncode != 0 for n in pids}
    for name, pid in pids.items():
        lab.wait_for(f"{name}'s agent back", lambda n=name, p=pid: lab.agent_view(
            n, "status")["pid"] != p, timeout=60)
    back_at = time.time()
    after = check()
    streams = {}
    for label, stream in (("pod", pod_stream), ("host", host_stream)):
        out, err = stream.communicate(timeout=scaled(90))
        streams[label] = [stream.returncode, out, err]
    time.sleep(2)                       # the session ticks on under the new agents
    lab.run(node("node2"), ["touch", STOP_SSH], check=True)
    return {"during": during, "after": after, "agents_dead_during": dead, "streams": streams,
            "agents_back_at": back_at, "established_ssh": finished(session, 10)}


# ---------------------------------------------------------------- bad input, floods

def test_invalid_policies_are_refused_by_field_and_the_rest_keeps_working(
        clean, record_property):
    c, lab = clean, clean.lab
    good = ccnp("web-from-clients", endpointSelector=app("web"),
                ingress=[{"fromEndpoints": [app("client")]}])
    bad = [ccnp("both-selectors", endpointSelector={}, nodeSelector={}),
           ccnp("bad-entity", nodeSelector={}, ingress=[{"fromEntities": ["wrld"]}]),
           ccnp("bad-cidr", endpointSelector={}, egress=[{"toCIDR": ["10.0.0.1/33"]}]),
           ccnp("bad-port", endpointSelector={}, ingress=[{"toPorts": ports((70000, "TCP"))}])]
    report = lab.api.apply([good, *bad], "policies.yaml")
    lab.wait_policies(["web-from-clients"], c.pod_ips())
    c.applied = [good]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as fh:
        fh.write(json.dumps(bad[1]))
        fh.flush()
        cli = subprocess.run([os.path.join(os.path.dirname(sys.executable), "cni-harness"),
                              "apply", "--name", CLUSTER, "-f", fh.name], capture_output=True,
                             text=True, timeout=120, check=False)
    path = "/etc/cni-cilium/manifests/zz-bad-policy.yaml"
    lab.provider.put_file("node1", path, json.dumps(bad[3]).encode())
    try:
        agent_problems = lab.wait_for("the agent's problem line", lambda: [
            p for p in lab.agent_view("node1", "status")["problems"] if "bad-port" in p])
        allowed = lab.probe(pod("cli-3"), "tcp", c.pod_ip("web"), 8080)
        denied = lab.probe(pod("other-2"), "tcp", c.pod_ip("web"), 8080, timeout=1)
    finally:
        lab.run(node("node1"), ["rm", "-f", path])
    evidence(record_property, apply_problems=report.problems, applied=report.applied,
             cli=[cli.returncode, cli.stderr.strip()], agent_problems=agent_problems,
             allowed=allowed, denied=denied)
    assert report.applied == ["CiliumClusterwideNetworkPolicy web-from-clients"]
    expected = ["both-selectors: spec: exactly one of endpointSelector",
                "bad-entity: spec.ingress[0].fromEntities[0]: unknown entity 'wrld'",
                "bad-cidr: spec.egress[0].toCIDR[0]: invalid IPv4 CIDR '10.0.0.1/33'",
                "bad-port: spec.ingress[0].toPorts[0].ports[0].port: invalid port 70000"]
    for line in expected:
        assert any(line in p for p in report.problems), (line, report.problems)
    assert cli.returncode == 2 and "unknown entity 'wrld'" in cli.stderr
    assert any("spec.ingress[0].toPorts[0].ports[0].port: invalid port 70000" in p
               for p in agent_problems)
    assert ok(allowed) and failed(denied)


def test_a_flood_of_denied_packets_is_rate_limited_not_stalling_the_node(
        clean, record_property):
    """Every datagram a policy drops is judged and reported; the per-CPU rate limit
    suppresses the flood's events and the agent keeps answering."""
    c, lab = clean, clean.lab
    count = 20000
    c.apply(ccnp("web-closed", endpointSelector=app("web"), ingress=[{}]))
    before = lab.agent("node1", "status")["policy"]["flows"]
    drops_before = c.drops("node1", "policy_denied")
    flood = ("import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
             f"end = time.monotonic() + 20\nfor i in range({count}):\n"
             f"    s.sendto(b'x', ('{c.pod_ip('web')}', 8080))\n"
             "    if time.monotonic() > end: break\n")
    lab.run(pod("other-2"), ["python3", "-c", flood], check=True, timeout=60)
    started = time.monotonic()
    status = lab.agent("node1", "status")
    answered_in = time.monotonic() - started
    after = lab.wait_for("the collector to catch up", lambda: (
        lambda f: f if f["seen"] - before["seen"] >= f["events"] - before["events"] else None)(
            lab.agent_view("node1", "status")["policy"]["flows"]), timeout=10)
    drops = c.drops("node1", "policy_denied") - drops_before
    allowed_after = lab.probe(pod("cli-1"), "tcp", c.pod_ip("other-2"), 8080)
    evidence(record_property, sent=count, drops=drops, flows_before=before, flows_after=after,
             status_answered_in_s=round(answered_in, 3), state=status["state"])
    events = after["events"] - before["events"]
    suppressed = after["suppressed"] - before["suppressed"]
    lost = after["lost"] - before["lost"]
    assert drops > 0 and suppressed > 0
    assert after["buffered"] <= 8192
    assert drops <= events + suppressed + lost     # every drop was reported or counted
    assert status["state"] == "running"
    assert ok(allowed_after)


# ---------------------------------------------------------------- the docs' procedure

def deploy(cluster, config: str) -> None:
    from cni_harness.deploy.playbook import run_playbook

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
        fh.write(config)
    try:
        result = run_playbook(cluster.lab.provider, config=fh.name)
    finally:
        os.unlink(fh.name)
    assert result.rc == 0, result.failed_tasks


def test_the_docs_procedure_audit_first_then_enforce(clean, record_property):
    """The documentation's procedure, as a user follows it with the Ansible path: audit mode
    on; a host policy that would cut ssh; the AUDIT flows for ssh in `cni-cilium observe`;
    the policy fixed; audit mode off. ssh keeps working (the session opened in audit mode
    included) and what the policy forbids is dropped, the reason shown."""
    c, lab = clean, clean.lab
    pids = {n: lab.agent(n, "status")["pid"] for n in c.nodes}
    deploy(c, AUDIT_CONFIG)                               # step 1: policyAuditMode: true
    for name in c.nodes:
        lab.wait_for(f"audit mode on {name}", lambda n=name: lab.agent_view(
            n, "status")["policy"]["auditMode"])
    lockdown = ccnp("nodes-cluster-only", nodeSelector={},
                    ingress=[{"fromEntities": ["cluster"]}])
    c.apply(lockdown)                                     # a host policy that cuts ssh
    started = time.time()
    lab.run(node("node2"), ["rm", "-f", STOP_SSH], check=True)
    long_session = c.ssh_session("node2", 600, STOP_SSH)
    audited_ssh = c.ssh("node2")
    lab.wait_for("AUDIT flows for ssh", lambda: c.flows_since(
        started, nodes=["node2"], to_port=22, verdict="AUDIT"), timeout=10)
    observe = lab.run(node("node2"), [AGENT_CLI, "observe", "--verdict", "AUDIT", "--to-port",
                                      "22", "--last", "5"], check=True).stdout
    fixed = ccnp("nodes-cluster-only", nodeSelector={},
                 ingress=[{"fromEntities": ["cluster"]},
                          {"fromCIDR": [f"{CLIENT_IP}/32"], "toPorts": ports((22, "TCP"))}])
    c.apply(fixed)                                        # the policy fixed
    fixed_at = time.time()
    checked_ssh = c.ssh("node2")
    lab.wait_for("the fixed policy's verdict", lambda: [
        f for f in c.flows_since(fixed_at, nodes=["node2"], to_port=22)
        if f["verdict"] == "FORWARDED" and f["match"] == "L3-L4"], timeout=10)
    deploy(c, CONFIG)                                     # policyAuditMode removed
    for name in c.nodes:
        lab.wait_for(f"audit mode off on {name}", lambda n=name: not lab.agent_view(
            n, "status")["policy"]["auditMode"])
    enforced_at = time.time()
    denied_before = c.drops("node2", "policy_denied")
    ssh_after = c.ssh("node2")
    forbidden = lab.probe(CLIENT, "tcp", c.ip("node2"), HOST_PORT, timeout=1)
    observed_drop = lab.run(node("node2"), [
        AGENT_CLI, "observe", "--verdict", "DROPPED", "--from-ip", CLIENT_IP, "--to-port",
        str(HOST_PORT), "--last", "3"], check=True).stdout
    lab.run(node("node2"), ["touch", STOP_SSH], check=True)
    session = finished(long_session, 10)
    drops = c.drops("node2", "policy_denied") - denied_before
    pids_after = {n: lab.agent(n, "status")["pid"] for n in c.nodes}
    drop_flows = c.flows_since(enforced_at, nodes=["node2"], verdict="DROPPED")
    evidence(record_property, audited_ssh=audited_ssh.returncode, observe_audit=observe,
             checked_ssh=checked_ssh.returncode, ssh_after=ssh_after.returncode,
             forbidden=forbidden, observe_dropped=observed_drop, long_session=session,
             drops=drops, agent_pids=[pids, pids_after], drop_flows=drop_flows)
    assert pids_after == pids                  # audit mode changed live, no restart
    assert audited_ssh.returncode == 0
    audit_lines = [ln for ln in observe.splitlines() if "AUDIT" in ln]
    assert audit_lines and all(f"{CLIENT_IP}:" in ln and ":22 " in ln and DENIED in ln
                               for ln in audit_lines)
    assert checked_ssh.returncode == 0 and ssh_after.returncode == 0
    assert session["rc"] == 0 and session["lastTick"] > enforced_at   # lived past audit off
    assert failed(forbidden)
    assert "policy denied DROPPED" in observed_drop and f":{HOST_PORT} " in observed_drop
    assert drops >= 1
    assert all(f["destination"]["port"] == HOST_PORT for f in drop_flows
               if f["source"]["ip"] == CLIENT_IP)
