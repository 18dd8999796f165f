"""The lb suite: per-service LB algorithms, session affinity and source ranges, with real
traffic from the external client, the world host, nodes and pods.

One 3-node local cluster (reused when $CNI_HARNESS_CLUSTER already runs, else created and
removed), deployed with `svcSourceRangeCheck: true` and, where the matrix entry supports it
(kernel >= 5.15), `extraLoadBalancerAlgorithmsEnabled: true`. On an entry the matrix says
cannot run the extra algorithms (5.10), the maglev and least-conn cases first check that
the agents really refuse the option (status, log, preflight), then report
expected-unsupported; the other cases run there as everywhere.

Layout: rnd-1..3 (one per node) back `rnd` (random, NodePort); mg-1..5 (node1: 1, 4;
node2: 2, 5; node3: 3) back `mg` (maglev, NodePort); lc-1..3 back `lc` (least-conn,
NodePort TCP and UDP); af-1..3 back `af` (sessionAffinity ClientIP, NodePort) and
`af-short` (ClientIP with a 1 s timeout); src-1 (node2) backs `src` (LoadBalancer whose
loadBalancerSourceRanges admit only the external client); cl-1 (node1) and cl-3 (node3)
are client pods. Every case attaches what it observed as evidence.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter

import pytest
import yaml

pytest.importorskip("cni_harness.providers.local.provider",
                    reason="needs the local cluster provider")

from cni_cilium import maglev
from cni_cilium.bpfabi import Backend
from cni_cilium.config import settings_from_mapping
from cni_cilium.preflight import extra_lb_refusal
from cni_harness.matrix.entryjob import ENTRY_ENV
from cni_harness.matrix.matrix import load_matrix
from cni_harness.providers.local.addressing import CLIENT_IP, WORLD_IP
from cni_harness.suites.lab import (
    AGENT_CLI,
    CLIENT,
    FABRIC,
    WORLD,
    errors,
    names,
    node,
    pod,
    progress_log,
)
from cni_harness.testing import suite_cluster_name, suite_lab

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CLUSTER = suite_cluster_name("lb")
ALGORITHM = "service.cilium.io/lb-algorithm"
EXTRA_ON = {"extraLoadBalancerAlgorithmsEnabled": True, "svcSourceRangeCheck": True}
EXTRA_OFF = {"svcSourceRangeCheck": True}
NODES = ("node1", "node2", "node3")
# Chi-square bound for 3 equally likely backends (2 degrees of freedom, p = 0.001): a fair
# selector exceeds it once in a thousand runs; one stuck on two backends scores ~150.
CHI2_BOUND_DF2 = 13.82


def _matrix_entry():
    matrix = load_matrix()
    name = os.environ.get(ENTRY_ENV)
    if name:        # a kernel entry (qemu, local) or an OS entry (the nodes are VMs)
        for lookup in (matrix.kernel_entry, matrix.os_entry):
            try:
                return lookup(name)
            except KeyError:
                continue
        return None
    return matrix.entry_for_kernel(os.uname().release)


ENTRY = _matrix_entry()
if ENTRY is not None:
    EXTRA_SUPPORTED = ENTRY.expect.get("extra-lb") != "unsupported"
else:   # a kernel the matrix does not know: the module's own rule
    EXTRA_SUPPORTED = extra_lb_refusal(settings_from_mapping(EXTRA_ON),
                                       os.uname().release) is None
CONFIG = yaml.safe_dump(EXTRA_ON if EXTRA_SUPPORTED else EXTRA_OFF)


def evidence(record_property, **observed) -> None:
    record_property("evidence", json.dumps(observed, sort_keys=True, default=str))


def chi_square(counts: Counter, categories: list[str]) -> float:
    total = sum(counts[c] for c in categories)
    expected = total / len(categories)
    return sum((counts[c] - expected) ** 2 / expected for c in categories)


def service(name: str, app: str, type: str = "NodePort", algorithm: str | None = None,
            affinity_timeout: int | None = None, udp: bool = False,
            source_ranges: list[str] | None = None) -> dict:
    ports = [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]
    if udp:
        ports.append({"name": "dns", "port": 53, "targetPort": 8080, "protocol": "UDP"})
    spec: dict = {"type": type, "selector": {"app": app}, "ports": ports}
    if affinity_timeout is not None:
        spec["sessionAffinity"] = "ClientIP"
        spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": affinity_timeout}}
    if source_ranges:
        spec["loadBalancerSourceRanges"] = source_ranges
    meta: dict = {"name": name, "namespace": "default"}
    if algorithm:
        meta["annotations"] = {ALGORITHM: algorithm}
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec}


PODS = {  # name: (node, app)
    **{f"rnd-{i}": (f"node{i}", "rnd") for i in (1, 2, 3)},
    "mg-1": ("node1", "mg"), "mg-2": ("node2", "mg"), "mg-3": ("node3", "mg"),
    "mg-4": ("node1", "mg"), "mg-5": ("node2", "mg"),
    **{f"lc-{i}": (f"node{i}", "lc") for i in (1, 2, 3)},
    **{f"af-{i}": (f"node{i}", "af") for i in (1, 2, 3)},
    "src-1": ("node2", "src"),
    "cl-1": ("node1", "client"), "cl-3": ("node3", "client"),
}
SERVICES = [
    service("rnd", "rnd"),
    service("mg", "mg", algorithm="maglev"),
    service("lc", "lc", algorithm="least-conn", udp=True),
    service("af", "af", affinity_timeout=10800),
    service("af-short", "af", type="ClusterIP", affinity_timeout=1),
    service("src", "src", type="LoadBalancer", source_ranges=[f"{CLIENT_IP}/32"]),
]
BACKENDS = {"rnd": 3, "mg": 5, "lc": 3, "af": 3, "af-short": 3, "src": 1}


class Cluster:
    """The lab, its pods, and where each service answers."""

    def __init__(self, lab, pods: dict):
        self.lab = lab
        self.pods = pods
        self.nodes = {n.name: n for n in lab.provider.nodes()}

    def ip(self, node_name: str) -> str:
        return self.nodes[node_name].ip

    def svc(self, name: str) -> dict:
        return self.lab.service(name)

    def cluster_ip(self, name: str) -> str:
        return self.svc(name)["spec"]["clusterIP"]

    def node_port(self, name: str, port_name: str = "http") -> int:
        return next(p["nodePort"] for p in self.svc(name)["spec"]["ports"]
                    if p["name"] == port_name)

    def lb_ip(self, name: str) -> str:
        return self.svc(name)["status"]["loadBalancer"]["ingress"][0]["ip"]

    def frontends(self, node_name: str, service_name: str) -> list[dict]:
        return [f for f in self.lab.agent(node_name, "service", "list")["frontends"]
                if f["service"] == f"default/{service_name}"]

    def frontend(self, node_name: str, service_name: str, type: str = "NodePort",
                 protocol: str = "TCP") -> dict:
        return next(f for f in self.frontends(node_name, service_name)
                    if f["type"] == type and f["protocol"] == protocol)

    def pod_name(self, address: str) -> str:
        return next(n for n, rec in self.pods.items() if rec.ip == address)

    def restart_pod(self, name: str) -> None:
        node_name, app = PODS[name]
        if self.lab.pods.get("default", name):
            self.lab.pods.delete(name)
        self.pods[name] = self.lab.start_peer_pod(node_name, name, {"app": app})

    def counter(self, node_name: str, event: str) -> float:
        kind = "drops" if event.startswith("drop_") else "events"
        label = "reason" if kind == "drops" else "event"
        value = event[len("drop_"):] if kind == "drops" else event
        return self.lab.metric(node_name, f'cni_cilium_datapath_{kind}_total{{{label}="{value}"}}')


@pytest.fixture(scope="module")
def cluster():
    results = os.environ.get("CNI_HARNESS_RESULTS_DIR")
    progress = progress_log(os.path.join(results, "lab-progress.log") if results else None)
    with suite_lab(CLUSTER, CONFIG, progress=progress) as lab:
        for rec in lab.pods.list():          # a reused cluster: start from our own pods only
            lab.pods.delete(rec.name, rec.namespace)
        pods = {name: lab.start_peer_pod(node_name, name, {"app": app})
                for name, (node_name, app) in PODS.items()}
        lab.apply(SERVICES)
        for name, count in BACKENDS.items():
            lab.wait_programmed(f"default/{name}", {"ClusterIP": count})
        progress("lb suite: pods and services ready")
        yield Cluster(lab, pods)

@pytest.fixture(scope="module")
def extra_refused(cluster):
    """On an entry the matrix says cannot run the extra algorithms: the refusal, checked
    once (the running agents keep their config and say why; preflight fails); None where
    they are supported."""
    if EXTRA_SUPPORTED:
        return None
    lab = cluster.lab
    lab.provider.put_file("node1", "/root/extra-lb.yaml", yaml.safe_dump(EXTRA_ON).encode())
    preflight = lab.run(node("node1"), [AGENT_CLI, "preflight", "--json", "--config",
                                        "/root/extra-lb.yaml"], timeout=300)
    report = json.loads(preflight.stdout)
    lab.set_module_config(yaml.safe_dump(EXTRA_ON))
    try:
        problems = lab.wait_for("the agents to refuse extraLoadBalancerAlgorithmsEnabled", lambda: [
            p for p in lab.agent_view("node1", "status")["problems"]
            if "extraLoadBalancerAlgorithmsEnabled needs kernel >= 5.15" in p], timeout=20)
        log = lab.run(node("node1"), ["grep", "-c", "needs kernel >= 5.15",
                                      "/var/log/cni-cilium/agent.log"]).stdout.strip()
        in_effect = cluster.frontend("node1", "mg")["algorithm"]
    finally:
        lab.set_module_config(CONFIG)
    failed = [c for c in report["checks"] if c["status"] == "fail"]
    assert preflight.returncode == 1 and [c["name"] for c in failed] == ["extra-lb-algorithms"]
    assert in_effect == "random" and int(log or 0) >= 1
    return {"preflight": failed[0]["message"], "agentProblem": problems[0],
            "algorithmInEffect": in_effect}


def require_extra(extra_refused, record_property) -> None:
    """xfail (expected-unsupported) where the entry cannot run the extra algorithms: the
    refusal was checked by `extra_refused`."""
    if extra_refused is not None:
        evidence(record_property, refused=extra_refused, entry=ENTRY.name if ENTRY else None)
        pytest.xfail(f"{ENTRY.name if ENTRY else os.uname().release}: "
                     f"{extra_refused['agentProblem']}")


# ---------------------------------------------------------------- random

def test_random_spreads_connections_evenly(cluster, record_property):
    lab = cluster.lab
    external = lab.probe(CLIENT, "tcp", cluster.ip("node1"), cluster.node_port("rnd"), count=300)
    from_pod = lab.probe(pod("cl-3"), "tcp", cluster.cluster_ip("rnd"), 80, count=150)
    backends = ["rnd-1", "rnd-2", "rnd-3"]
    chi2 = {"external": chi_square(names(external), backends),
            "pod": chi_square(names(from_pod), backends)}
    evidence(record_property, external=names(external), from_pod=names(from_pod),
             chi_square=chi2, bound=CHI2_BOUND_DF2,
             algorithm=cluster.frontend("node1", "rnd")["algorithm"])
    assert not errors(external + from_pod)
    assert cluster.frontend("node1", "rnd")["algorithm"] == "random"
    assert chi2["external"] < CHI2_BOUND_DF2 and chi2["pod"] < CHI2_BOUND_DF2, chi2


# ---------------------------------------------------------------- maglev

def maglev_flows(cluster, via: str, first_sport: int, flows: int) -> list[str]:
    """The pod each of `flows` connections from the external client reached, with source
    ports counting up from `first_sport`, through `via`'s node port (each ended by a
    reset: the same 4-tuple reaches the backend again through another node right after)."""
    answers = cluster.lab.probe(CLIENT, "tcp", cluster.ip(via), cluster.node_port("mg"),
                                count=flows, sport=first_sport, rst=True)
    return [a.get("name", "error: " + a.get("error", "")) for a in answers]


def predicted(cluster, via: str, first_sport: int, flows: int) -> list[str]:
    """The pod each flow should reach per the agent's table (the Python model)."""
    fe = cluster.frontend(via, "mg")
    selected = []
    for name in fe["selected"]:
        addr, port = name.rsplit(":", 1)
        selected.append(Backend(addr, int(port)))
    return [cluster.pod_name(maglev.backend_for_flow(
        selected, CLIENT_IP, first_sport + i, cluster.node_port("mg"), "TCP",
        fe["maglev"]["tableSize"]).addr) for i in range(flows)]


def test_maglev_sends_a_flow_to_the_same_backend_through_any_node(
        cluster, extra_refused, record_property):
    require_extra(extra_refused, record_property)
    sport, flows = 41000, 200
    picks = {via: maglev_flows(cluster, via, sport, flows) for via in ("node1", "node3")}
    differ = [i for i in range(flows) if picks["node1"][i] != picks["node3"][i]]
    model = predicted(cluster, "node1", sport, flows)
    off_model = [i for i in range(flows) if picks["node1"][i] != model[i]]
    fe = cluster.frontend("node1", "mg")
    evidence(record_property, node1=Counter(picks["node1"]), node3=Counter(picks["node3"]),
             flows_differing=len(differ), flows_off_the_model=len(off_model),
             table=fe["maglev"], algorithm=fe["algorithm"],
             first=[(sport + i, picks["node1"][i], picks["node3"][i]) for i in range(10)])
    assert not [p for p in picks["node1"] + picks["node3"] if p.startswith("error")]
    assert fe["algorithm"] == "maglev"
    assert differ == [], f"{len(differ)} flows reached another backend through node3"
    assert off_model == [], f"{len(off_model)} flows not where the table says"
    assert len(set(picks["node1"])) == 5


def test_maglev_removing_one_of_five_backends_moves_only_its_flows(
        cluster, extra_refused, record_property):
    require_extra(extra_refused, record_property)
    lab, sport, flows, gone = cluster.lab, 42000, 400, "mg-5"
    before = maglev_flows(cluster, "node1", sport, flows)
    lab.pods.delete(gone)
    lab.wait_programmed("default/mg", {"ClusterIP": 4})
    try:
        after = maglev_flows(cluster, "node1", sport, flows)
        model = predicted(cluster, "node1", sport, flows)
    finally:
        cluster.restart_pod(gone)
        lab.wait_programmed("default/mg", {"ClusterIP": 5})
    own = [i for i in range(flows) if before[i] == gone]
    moved = [i for i in range(flows) if before[i] != after[i]]
    extra = [i for i in moved if before[i] != gone]
    share = {"moved": len(moved) / flows, "ofRemovedBackend": len(own) / flows,
             "othersMoved": len(extra) / flows, "oneOverN": 1 / 5}
    evidence(record_property, removed=gone, flows=flows, before=Counter(before),
             after=Counter(after), share=share,
             extra_flows=[(sport + i, before[i], after[i]) for i in extra],
             off_model=sum(1 for i in range(flows) if after[i] != model[i]))
    assert not [p for p in before + after if p.startswith("error")]
    assert own and gone not in after and all(i in moved for i in own)
    assert share["moved"] <= share["ofRemovedBackend"] + 0.01, share
    assert after == model


# ---------------------------------------------------------------- least-conn

def active_connections(cluster, node_name: str = "node1", protocol: str = "TCP") -> dict:
    fe = cluster.frontend(node_name, "lc", protocol=protocol)
    return {cluster.pod_name(k.split(":")[0]): v for k, v in fe["activeConnections"].items()}


def test_least_conn_puts_new_connections_on_the_idle_backend(
        cluster, extra_refused, record_property):
    require_extra(extra_refused, record_property)
    lab = cluster.lab
    host, port = cluster.ip("node1"), cluster.node_port("lc")
    streams = []
    try:
        for opened in (1, 2):   # one after the other: each choice sees the other counted
            streams.append(lab.stream(CLIENT, host, port, seconds=600, rate=20_000,
                                      max_seconds=700))
            held = lab.wait_for(f"{opened} held connection(s) counted on node1", lambda n=opened: (
                lambda c: c if sum(c.values()) == n else None)(active_connections(cluster)),
                timeout=20)
        idle = [name for name, count in held.items() if count == 0]
        short = lab.probe(CLIENT, "tcp", host, port, count=20)
        during = active_connections(cluster)
    finally:
        for stream in streams:
            stream.terminate()
            stream.communicate(timeout=30)
    released = lab.wait_for("the counts to go back to 0", lambda: (
        lambda c: c if sum(c.values()) == 0 else None)(active_connections(cluster)), timeout=20)
    evidence(record_property, held=held, short=names(short), during=during,
             released=released, algorithm=cluster.frontend("node1", "lc")["algorithm"])
    assert not errors(short)
    assert sorted(held.values()) == [0, 1, 1], held    # least-conn spread the two streams
    assert names(short) == Counter({idle[0]: 20}), (held, names(short))
    assert during == held


def test_least_conn_counts_survive_an_agent_restart(cluster, extra_refused, record_property):
    require_extra(extra_refused, record_property)
    lab = cluster.lab
    host, port = cluster.ip("node1"), cluster.node_port("lc")
    stream = lab.stream(CLIENT, host, port, seconds=600, rate=20_000, max_seconds=700)
    try:
        held = lab.wait_for("the held connection counted", lambda: (
            lambda c: c if sum(c.values()) == 1 else None)(active_connections(cluster)),
            timeout=20)
        old = lab.agent_view("node1", "status")
        lab.run(node("node1"), ["kill", "-9", str(old["pid"])], check=True)
        new = lab.wait_for("node1's agent back", lambda: (
            lambda s: s if s["pid"] != old["pid"] and s["state"] == "running" else None)(
                lab.agent_view("node1", "status")), timeout=60)
        after = active_connections(cluster)
        short = lab.probe(CLIENT, "tcp", host, port, count=10)
    finally:
        stream.terminate()
        stream.communicate(timeout=30)
    busy = next(name for name, count in held.items() if count == 1)
    evidence(record_property, held=held, after_restart=after, least_conn=new["leastConn"],
             short=names(short))
    assert after == held
    assert new["leastConn"]["recounts"] >= 1 and new["leastConn"]["last"]["live"] >= 1
    assert not errors(short) and busy not in names(short)


def test_least_conn_udp_flows_that_expire_give_their_count_back(
        cluster, extra_refused, record_property):
    """UDP flows never close: their count comes back when the agent finds their conntrack
    entries expired (60 s idle), not when a packet says so."""
    require_extra(extra_refused, record_property)
    lab = cluster.lab
    answers = lab.probe(CLIENT, "udp", cluster.ip("node1"), cluster.node_port("lc", "dns"),
                        count=6)
    counted = active_connections(cluster, protocol="UDP")
    released = lab.wait_for("expired UDP flows to be recounted", lambda: (
        lambda c: c if sum(c.values()) == 0 else None)(
            active_connections(cluster, protocol="UDP")), timeout=120, interval=2)
    status = lab.agent_view("node1", "status")["leastConn"]
    evidence(record_property, answers=names(answers), counted=counted, released=released,
             least_conn=status)
    assert not errors(answers)
    assert sum(counted.values()) == 6 and max(counted.values()) - min(counted.values()) <= 1
    assert status["expiredRemoved"] >= 6


# ---------------------------------------------------------------- session affinity

def test_affinity_keeps_a_client_on_one_backend_and_moves_it_when_it_goes(
        cluster, record_property):
    lab = cluster.lab
    host, port = cluster.ip("node1"), cluster.node_port("af")
    external = lab.probe(CLIENT, "tcp", host, port, count=50)
    from_pod = lab.probe(pod("cl-3"), "tcp", cluster.cluster_ip("af"), 80, count=50)
    kept = names(external).most_common(1)[0][0]
    removed_before = lab.agent("node1", "status")["staleAffinityRemoved"]
    lab.pods.delete(kept)
    lab.wait_programmed("default/af", {"ClusterIP": 2})
    try:
        moved = lab.probe(CLIENT, "tcp", host, port, count=50)
        removed_after = lab.agent("node1", "status")["staleAffinityRemoved"]
        hits = cluster.counter("node1", "affinity_hit")
    finally:
        cluster.restart_pod(kept)
        lab.wait_programmed("default/af", {"ClusterIP": 3})
    evidence(record_property, external=names(external), from_pod=names(from_pod),
             after_removal=names(moved), removed=kept,
             affinity_entries_removed=[removed_before, removed_after], node1_hits=hits,
             frontend=cluster.frontend("node1", "af")["sessionAffinity"])
    assert not errors(external + from_pod + moved)
    assert len(names(external)) == 1 and len(names(from_pod)) == 1
    assert len(names(moved)) == 1 and kept not in names(moved)
    assert removed_after > removed_before
    assert hits >= 49 + 49


def test_affinity_ends_after_its_timeout(cluster, record_property):
    """af-short keeps a client for 1 s: connections 2.5 s apart choose afresh each time
    (all 8 on one backend by chance: 1 in 2187), connections in a burst do not."""
    lab = cluster.lab
    vip = cluster.cluster_ip("af-short")
    burst = lab.probe(pod("cl-1"), "tcp", vip, 80, count=10)
    spaced = []
    for _ in range(8):
        time.sleep(2.5)
        spaced += lab.probe(pod("cl-1"), "tcp", vip, 80)
    evidence(record_property, burst=names(burst), spaced=[a.get("name") for a in spaced])
    assert not errors(burst + spaced)
    assert len(names(burst)) == 1
    assert len(names(spaced)) >= 2


# ---------------------------------------------------------------- source ranges

def test_source_ranges_drop_outsiders_and_admit_the_listed_and_cluster_clients(
        cluster, record_property):
    lab = cluster.lab
    lb_ip, via = cluster.lb_ip("src"), cluster.ip("node1")
    lab.run(CLIENT, ["ip", "route", "replace", f"{lb_ip}/32", "via", via], check=True)
    # The world host (outside every range) reaches the LoadBalancer IP through the router.
    lab.run(FABRIC, ["ip", "route", "replace", f"{lb_ip}/32", "via", via], check=True)
    try:
        drops_before = cluster.counter("node1", "drop_source_range")
        inside = lab.probe(CLIENT, "tcp", lb_ip, 80, count=5)
        outside = lab.probe(WORLD, "tcp", lb_ip, 80, count=4, timeout=1.0)
        from_pod = lab.probe(pod("cl-3"), "tcp", lb_ip, 80, count=3)
        from_node = lab.probe(node("node3"), "tcp", lb_ip, 80, count=3)
        drops_after = cluster.counter("node1", "drop_source_range")
        node_port_from_world = lab.probe(WORLD, "tcp", via, cluster.node_port("src"), count=2)
    finally:
        lab.run(FABRIC, ["ip", "route", "del", f"{lb_ip}/32"])
    fe = cluster.frontend("node1", "src", type="LoadBalancer")
    evidence(record_property, lb_ip=lb_ip, ranges=fe["sourceRanges"],
             check=fe["sourceRangeCheck"], inside=names(inside), outside=outside,
             from_pod=names(from_pod), from_node=names(from_node),
             drops=[drops_before, drops_after], node_port_from_world=names(node_port_from_world),
             world=WORLD_IP)
    assert fe["sourceRangeCheck"] == "enforced" and fe["sourceRanges"] == [f"{CLIENT_IP}/32"]
    assert names(inside) == Counter({"src-1": 5})
    assert all("timed out" in a.get("error", "") for a in outside), outside
    assert drops_after >= drops_before + 4
    assert names(from_pod) == Counter({"src-1": 3})
    assert names(from_node) == Counter({"src-1": 3})
    assert names(node_port_from_world) == Counter({"src-1": 2})   # ranges guard LB IPs only


# ---------------------------------------------------------------- the option

def test_with_the_option_off_the_annotation_has_no_effect_and_the_agent_says_so(
        cluster, record_property):
    lab = cluster.lab
    lab.set_module_config(yaml.safe_dump(EXTRA_OFF))
    try:
        fe = lab.wait_for("mg served by random on node1", lambda: (
            lambda f: f if f["algorithm"] == "random" else None)(cluster.frontend("node1", "mg")),
            timeout=20)
        log = lab.run(node("node1"), ["grep", "lb-algorithm 'maglev' ignored",
                                      "/var/log/cni-cilium/agent.log"]).stdout
        listing = lab.run(node("node1"), [AGENT_CLI, "service", "list"]).stdout
        answers = lab.probe(CLIENT, "tcp", cluster.ip("node1"), cluster.node_port("mg"),
                            count=30)
    finally:
        lab.set_module_config(CONFIG)
        if EXTRA_SUPPORTED:
            lab.wait_for("mg served by maglev again", lambda: cluster.frontend(
                "node1", "mg")["algorithm"] == "maglev", timeout=20)
    note = [line for line in listing.splitlines() if "default/mg:" in line]
    evidence(record_property, frontend={k: fe[k] for k in (
        "algorithm", "algorithmRequested", "algorithmReason")}, log=log.strip().splitlines()[-1:],
        service_list_note=note, answers=names(answers))
    assert fe["algorithmRequested"] == "maglev"
    assert fe["algorithmReason"] == "extraLoadBalancerAlgorithmsEnabled is false"
    assert "using random" in log
    assert note == ["* default/mg: lb-algorithm 'maglev' not in effect "
                    "(extraLoadBalancerAlgorithmsEnabled is false); random is used"]
    assert not errors(answers) and len(names(answers)) >= 3
